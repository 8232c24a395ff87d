"""distill/staging.py: a folder is replaced whole or not at all, and its files get the umask's mode."""

import os
from pathlib import Path

import pytest

from distill.staging import staged_directory


def test_a_failed_build_or_swap_leaves_the_previous_folder_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "export"
    with staged_directory(out) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), staged_directory(out) as staging:
        (staging / "a.txt").write_text("second")
        raise RuntimeError("the build failed")
    assert (out / "a.txt").read_text() == "first"

    real_rename = Path.rename

    def staging_cannot_move(self, target):
        if ".partial-" in self.name:
            raise OSError("disk trouble")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", staging_cannot_move)
    with pytest.raises(OSError), staged_directory(out) as staging:
        (staging / "a.txt").write_text("third")
    assert (out / "a.txt").read_text() == "first"  # put back, not half-deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or backup left


def test_files_are_readable_as_the_umask_allows(tmp_path):
    with staged_directory(tmp_path / "out") as staging:
        (staging / "private").write_text("x")
        (staging / "private").chmod(0o600)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out" / "private").stat().st_mode & 0o777 == 0o666 & ~umask
