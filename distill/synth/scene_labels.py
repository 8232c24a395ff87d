"""What a scene of the shapes world shows, as class indices: the targets of `distill pretrain-vision`.

    labels = scene_labels(scene)   # {"colour": 2, "kind": 0, "count": 1, "word": 0, "cell 0": 1, ...}

One label per property an image question can ask about: the shapes' colour and kind, how many
there are, what each of the four cells holds (nothing, a shape, the sign) and the sign's word
(class 0: no sign).
"""

from __future__ import annotations

from distill.synth.world import COLOURS, POSITIONS, SHAPES, WORDS, Scene

CELL_CONTENTS = ("empty", "shape", "sign")
LABEL_CLASSES: dict[str, int] = {
    "colour": len(COLOURS),
    "kind": len(SHAPES),
    "count": 4,
    "word": 1 + len(WORDS),
    **{f"cell {cell}": len(CELL_CONTENTS) for cell in range(len(POSITIONS))},
}


def cell_content(scene: Scene, cell: int) -> int:
    if scene.at(cell) is not None:
        return CELL_CONTENTS.index("shape")
    return CELL_CONTENTS.index("sign" if scene.word_cell == cell else "empty")


def scene_labels(scene: Scene) -> dict[str, int]:
    labels = {
        "colour": list(COLOURS).index(scene.colour),
        "kind": SHAPES.index(scene.kind),
        "count": scene.count - 1,
        "word": 0 if scene.word is None else 1 + WORDS.index(scene.word),
    }
    labels.update({f"cell {cell}": cell_content(scene, cell) for cell in range(len(POSITIONS))})
    return labels
