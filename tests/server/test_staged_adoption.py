"""An adoption's first checkpoint is staged beside the job's folder and takes its place only
once durable: a crash at any point leaves one whole copy, never none (what recovery does with
what it finds: pscluster.server.durability.staging.settle_staged)."""

from __future__ import annotations

from pathlib import Path

from pscluster.server.durability.staging import settle_staged, staged_folder


def _folder(root: Path, name: str, content: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "checkpoint-0").write_text(content)
    return folder


def test_a_staged_adoption_cut_short_before_the_swap_leaves_the_old_job(tmp_path: Path) -> None:
    # Prepare: the old job's folder is still there beside the staged one
    old = _folder(tmp_path, "j-1", "old")
    _folder(tmp_path, staged_folder(old).name, "new")

    # Execute
    settle_staged(tmp_path)

    # Assert
    assert (old / "checkpoint-0").read_text() == "old"
    assert not staged_folder(old).exists()


def test_a_staged_adoption_cut_short_after_the_old_files_went_becomes_the_job(
    tmp_path: Path,
) -> None:
    # Prepare: the old job's files were deleted, the staged folder not yet renamed
    staged = _folder(tmp_path, "j-1.staged", "new")

    # Execute
    settle_staged(tmp_path)

    # Assert
    assert (tmp_path / "j-1" / "checkpoint-0").read_text() == "new"
    assert not staged.exists()
