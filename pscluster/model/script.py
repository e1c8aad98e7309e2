"""What a script must ship so that workers can rebuild its model, and nothing else.

A model class defined in a script (module ``__main__``) sits next to code that must never run
on a worker: data loading, the ``client.submit`` call, often inside ``if __name__ ==
"__main__":``. Running the whole file would repeat all of that on every worker, and running it
under another name would skip a class defined under the guard. So we keep only the statements
the requested definitions need, found by their free names, and emit them at their original line
numbers: a traceback on a worker then points at the user's own file and line.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
from collections.abc import Iterator, Sequence

from pscluster.errors import InvalidArgument

# The line breaks the tokenizer counts (str.splitlines also splits on form feeds and more,
# which would shift every line number after them).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_COMPOUND = (ast.If, ast.Try)


def extract_definitions(source: str, names: Sequence[str], filename: str) -> str:
    """The part of ``source`` that defines ``names``, line numbers kept.

    Starts from the module-level (or main-guard-level) statements binding ``names`` and adds,
    transitively, the imports, definitions and plain assignments binding a global name they
    use. Calls, loops and other top-level code are never kept. Kept statements under a main
    guard are dedented; the other lines are left blank so that line N is still line N.

    >>> extract_definitions("import os\\nclass A: pass\\nprint('hi')\\n", ["A"], "s.py")
    '\\nclass A: pass\\n'
    """
    tree = _parse(source, filename)
    statements = list(_top_statements(tree))
    binders: dict[str, list[int]] = {}
    for index, stmt in enumerate(statements):
        for name in _bound_names(stmt):
            binders.setdefault(name, []).append(index)
    missing = [n for n in names if n not in binders]
    if missing:
        raise InvalidArgument(_not_found(missing, tree, filename))
    lines = _LINE_BREAK.split(source)
    chosen = _closure(statements, binders, names, lines, filename)
    return _emit(statements, sorted(chosen), lines)


def _parse(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source, filename)
    except SyntaxError as e:
        raise InvalidArgument(
            f"{filename} line {e.lineno}: cannot parse the script: {e.msg}"
        ) from e


def _closure(
    statements: list[ast.stmt],
    binders: dict[str, list[int]],
    names: Sequence[str],
    lines: list[str],
    filename: str,
) -> set[int]:
    """The indexes of every statement the definitions of ``names`` need, transitively."""
    chosen = {i for n in names for i in binders[n]}
    chosen |= {i for i, s in enumerate(statements) if _is_future(s)}
    work = sorted(chosen)
    unresolved: set[str] = set()
    while work:
        index = work.pop()
        for name in _free_names(_segment(statements[index], lines), filename):
            found = binders.get(name, [])
            if not found and not hasattr(builtins, name):
                unresolved.add(name)
            for other in found:
                if other not in chosen:
                    chosen.add(other)
                    work.append(other)
    if unresolved:
        # A name nothing binds may come from `from x import *`: keep those imports then.
        chosen |= {i for i, s in enumerate(statements) if _is_star_import(s)}
    return chosen


def _top_statements(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, with those directly under a main guard in place of the guard."""
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and _is_main_guard(stmt):
            yield from stmt.body
        else:
            yield stmt


def _is_main_guard(stmt: ast.If) -> bool:
    if not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _bound_names(stmt: ast.stmt) -> set[str]:
    """The names ``stmt`` binds if it is a definition we may keep; empty for anything else."""
    if isinstance(stmt, _COMPOUND):
        # `try: import x / except ImportError: x = None` and `if TYPE_CHECKING:` blocks define
        # names the model may use; they are kept whole when everything inside is declarative.
        return _compound_names(stmt) if _declarative(stmt) else set()
    return _simple_names(stmt)


def _simple_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in stmt.names if a.name != "*"}
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and _has_value(stmt):
        targets = [stmt.target]
    names: set[str] = set()
    for target in targets:
        plain = _plain_names(target)
        if plain is None:
            return set()
        names |= plain
    return names


def _has_value(stmt: ast.AnnAssign | ast.AugAssign) -> bool:
    return not isinstance(stmt, ast.AnnAssign) or stmt.value is not None


def _plain_names(target: ast.expr) -> set[str] | None:
    """The names a target binds when it is only names (``a``, ``a, b``); None otherwise."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _plain_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        names: set[str] = set()
        for element in target.elts:
            inner = _plain_names(element)
            if inner is None:
                return None
            names |= inner
        return names
    return None


def _declarative(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Pass, ast.Raise)):
        return True
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value, ast.Constant)
    if isinstance(stmt, _COMPOUND):
        return all(_declarative(s) for s in _children(stmt))
    return bool(_simple_names(stmt)) or _is_star_import(stmt)


def _compound_names(stmt: ast.stmt) -> set[str]:
    names: set[str] = set()
    for child in _children(stmt):
        names |= _compound_names(child) if isinstance(child, _COMPOUND) else _simple_names(child)
    return names


def _children(stmt: ast.stmt) -> Iterator[ast.stmt]:
    if isinstance(stmt, ast.If):
        yield from stmt.body
        yield from stmt.orelse
    elif isinstance(stmt, ast.Try):
        yield from stmt.body
        for handler in stmt.handlers:
            yield from handler.body
        yield from stmt.orelse
        yield from stmt.finalbody


def _is_future(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"


def _is_star_import(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names)


def _free_names(code: str, filename: str) -> set[str]:
    """Global names ``code`` reads, nested scopes included (symtable knows Python's scoping:
    a local that happens to share a module-level name is not a use of it)."""
    try:
        top = symtable.symtable(code, filename, "exec")
    except SyntaxError as e:  # what ast.parse lets through and compile does not
        raise InvalidArgument(f"{filename}: cannot compile the script: {e.msg}") from e
    used = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    tables = list(top.get_children())
    while tables:
        table = tables.pop()
        used |= {s.get_name() for s in table.get_symbols() if s.is_referenced() and s.is_global()}
        tables.extend(table.get_children())
    return used


def _segment(stmt: ast.stmt, lines: list[str]) -> str:
    return "\n".join(text for _, text in _located_lines(stmt, lines))


def _located_lines(stmt: ast.stmt, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(0-based line, text) of ``stmt`` exactly as written, decorators included, dedented by the
    indentation of its block; lines inside a string that are indented less stay as they are."""
    decorators = getattr(stmt, "decorator_list", [])
    first = decorators[0].lineno if decorators else stmt.lineno
    last = stmt.end_lineno or stmt.lineno
    indent = re.match(r"[ \t]*", lines[first - 1])
    prefix = indent.group(0) if indent else ""
    for number in range(first, last + 1):
        raw = lines[number - 1].encode()
        if number == last and stmt.end_col_offset is not None:
            raw = raw[: stmt.end_col_offset]
        if number == first:
            # The statement may follow another one on its line (`import a; class M: ...`).
            start = len(prefix.encode()) if decorators else stmt.col_offset
            text = raw[start:].decode()
        else:
            text = raw.decode()
            text = text[len(prefix) :] if text.startswith(prefix) else text
        yield number - 1, text


def _emit(statements: list[ast.stmt], chosen: list[int], lines: list[str]) -> str:
    out = [""] * len(lines)
    for index in chosen:
        for number, text in _located_lines(statements[index], lines):
            # Two kept statements sharing a line (`import a; import b`) stay on it.
            out[number] = f"{out[number]}; {text}" if out[number] else text
    return "\n".join(out).rstrip("\n") + "\n"


def _not_found(missing: list[str], tree: ast.Module, filename: str) -> str:
    nested = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    where = [n for n in missing if n in nested]
    detail = f" ({', '.join(where)} is defined inside a function or a block)" if where else ""
    return (
        f"{filename} defines no {', '.join(missing)} at its top level{detail}: the class must "
        'be defined at module level or directly under `if __name__ == "__main__":` '
        "(not inside a function), so that workers can rebuild it from the file's source"
    )
