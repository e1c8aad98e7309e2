"""Print pscluster's runtime requirements, one a line, from pyproject.toml.

pyproject.toml is the one list of dependencies; the image build (to install them before the
source is copied, so that editing code does not reinstall torch) and the offline wheel
download in docker-setup.sh both read it through this script.

    python3 runtime_requirements.py [path/to/pyproject.toml]
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def runtime_requirements(pyproject: Path) -> list[str]:
    """``[project] dependencies`` of ``pyproject``; raises ValueError if the table is missing."""
    with pyproject.open("rb") as f:
        data = tomllib.load(f)
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ValueError(f"{pyproject}: expected a [project] dependencies list of strings")
    return [str(d) for d in deps]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: runtime_requirements.py [path/to/pyproject.toml]", file=sys.stderr)
        return 2
    path = Path(argv[0] if argv else "pyproject.toml")
    try:
        print("\n".join(runtime_requirements(path)))
    except (OSError, ValueError) as e:
        print(f"runtime_requirements.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
