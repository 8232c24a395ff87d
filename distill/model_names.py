"""Short display names for model folders, for tables and answer files.

model_name("runs/tiny/student-kd/final")                      # "student-kd"
unique_names([Path("a/kd/seed-0/final"), Path("a/sft/seed-0/final")])   # ["kd/seed-0", "sft/seed-0"]
"""

from __future__ import annotations

from pathlib import Path


def model_name(model_dir: str | Path) -> str:
    """runs/tiny/student-kd/final -> student-kd (the answer lines' model_id)."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "final" else path.name


def unique_names(model_dirs: list[Path]) -> list[str]:
    """Short names that tell the models apart: runs/ablate/kd/seed-0/final -> kd/seed-0 beside its siblings."""
    parts = [
        list((p.resolve().parent if p.resolve().name == "final" else p.resolve()).parts) for p in model_dirs
    ]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1
