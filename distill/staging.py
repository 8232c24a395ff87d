"""Files and folders written whole or not at all: built under a temporary name beside the target, then renamed.

with staged_directory(Path("exports/student-onnx")) as staging:
    write_everything_into(staging)
# now exports/student-onnx holds it; had anything raised, neither folder would exist
write_text_atomic(Path("runs/eval/suite.md"), table)
save_figure(figure, Path("runs/eval/suite.png"))     # a matplotlib figure, closed afterwards
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private
        for path in staging.rglob("*"):  # so do some writers (ONNX's external data): umask rules
            if path.is_file():
                path.chmod(0o666 & ~_umask())
        if out.exists():  # the old folder steps aside first, and is deleted only once the new one is in
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(backup / out.name)
            try:
                staging.rename(out)
            except BaseException:
                (backup / out.name).rename(out)
                shutil.rmtree(backup, ignore_errors=True)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out, save (PNG through a temporary name) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    partial = path.with_name(path.stem + ".partial.png")
    figure.savefig(partial, dpi=dpi)
    plt.close(figure)
    partial.replace(path)
    return path
