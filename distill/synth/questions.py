"""Question families of the shapes world, each mirroring one of the six benchmarks.

| family          | benchmark style | example                                              | answer        |
|-----------------|-----------------|------------------------------------------------------|---------------|
| colour          | GQA             | What color are the circles?                          | red           |
| shape           | GQA             | What shape is in the image?                          | square        |
| count           | GQA             | How many shapes are there?                           | 3             |
| position        | GQA             | Where is the blue triangle? / Where is the sign?     | bottom right  |
| reading         | TextVQA         | What word is written in the image?                   | cat           |
| yes/no          | POPE, MME       | Is there a red circle in the image?                  | Yes           |
| multiple-choice | ScienceQA, MMB  | Which shape is shown in the picture?\nA. circle ...  | B             |
| caption         | -               | Describe the image briefly.                          | Two red circles. |
| description     | -               | Describe the image in detail.                        | 30-80 tokens  |

Every generator takes a scene and a `random.Random` and returns a `Question` (or None when the
scene cannot support it, e.g. a reading question without a word).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from distill.synth.world import (
    COLOUR_PRIOR,
    COLOURS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPE_PRIOR,
    SHAPES,
    WORDS,
    Scene,
)

SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDE"
ALL_OBJECTS = [f"{c} {k}" for c in COLOURS for k in SHAPES]
OBJECT_PRIOR = {
    f"{c} {k}": pc * pk for c, pc in zip(COLOURS, COLOUR_PRIOR) for k, pk in zip(SHAPES, SHAPE_PRIOR)
}
POPULAR_OBJECTS = sorted(ALL_OBJECTS, key=lambda o: -OBJECT_PRIOR[o])


@dataclass
class Question:
    family: (
        str  # colour | shape | count | position | reading | yes/no | multiple-choice | caption | description
    )
    benchmark: str  # gqa | textvqa | pope | mme | sqa | mmbench | caption | description
    text: str  # the question without the answer-format suffix
    answer: str
    suffix: str = SHORT_SUFFIX
    n_choices: int = 0  # size of the answer space (chance = 1 / n_choices); 0 for open-ended text
    extra: dict[str, Any] = field(default_factory=dict)  # benchmark-specific fields

    @property
    def prompt(self) -> str:
        return self.text + self.suffix


def colour_question(scene: Scene, rng: random.Random) -> Question | None:
    if scene.count == 1:
        text = rng.choice([f"What color is the {scene.kind}?", "What color is the shape?"])
    else:
        text = rng.choice([f"What color are the {scene.kind}s?", "What color are the shapes?"])
    return Question("colour", "gqa", text, scene.colour, n_choices=len(COLOURS))


def shape_question(scene: Scene, rng: random.Random) -> Question | None:
    verb = "is" if scene.count == 1 else "are"
    text = rng.choice(
        [
            "What shape is in the image?",
            f"What shape {verb} {scene.colour}?",
            f"What is the shape of the {scene.colour} object{'s' if scene.count > 1 else ''}?",
        ]
    )
    return Question("shape", "gqa", text, scene.kind, n_choices=len(SHAPES))


def count_question(scene: Scene, rng: random.Random) -> Question | None:
    if rng.random() < 0.5:
        return Question("count", "gqa", "How many shapes are there?", str(scene.count), n_choices=4)
    kind = scene.kind if rng.random() < 0.6 else rng.choice([k for k in SHAPES if k != scene.kind])
    answer = str(scene.count if kind == scene.kind else 0)
    return Question("count", "gqa", f"How many {kind}s are there?", answer, n_choices=5)


def position_question(scene: Scene, rng: random.Random) -> Question | None:
    if scene.word is not None and rng.random() < 0.25:
        return Question("position", "gqa", "Where is the sign?", POSITIONS[scene.word_cell], n_choices=4)  # type: ignore[index]
    if scene.count != 1:
        return None
    text = rng.choice([f"Where is the {scene.object}?", f"Where is the {scene.kind}?"])
    return Question("position", "gqa", text, scene.shapes[0].position, n_choices=len(POSITIONS))


def reading_question(scene: Scene, rng: random.Random) -> Question | None:
    if scene.word is None:
        return None
    text = rng.choice(["What word is written in the image?", "What does the sign say?"])
    return Question("reading", "textvqa", text, scene.word, n_choices=len(WORDS))


def absent_object(scene: Scene, rng: random.Random, strategy: str) -> str:
    """A POPE negative: random (any absent object), popular (the most frequent absent objects) or
    adversarial (an absent object sharing the colour or the shape of the present one)."""
    absent = [o for o in ALL_OBJECTS if o != scene.object]
    if strategy == "popular":
        return rng.choice([o for o in POPULAR_OBJECTS if o != scene.object][:3])
    if strategy == "adversarial":
        return rng.choice([o for o in absent if set(o.split()) & {scene.colour, scene.kind}])
    return rng.choice(absent)


def pope_question(
    scene: Scene, rng: random.Random, category: str | None = None, label: bool | None = None
) -> Question:
    category = category or rng.choice(["random", "popular", "adversarial"])
    label = rng.random() < 0.5 if label is None else label
    obj = scene.object if label else absent_object(scene, rng, category)
    return Question(
        "yes/no",
        "pope",
        f"Is there {article(obj)} in the image?",
        "Yes" if label else "No",
        n_choices=2,
        extra={"category": category, "object": obj},
    )


def _mme_existence(scene: Scene, rng: random.Random, label: bool) -> str | None:
    obj = scene.object if label else absent_object(scene, rng, "adversarial")
    return f"Is there {article(obj)} in this image?"


def _mme_count(scene: Scene, rng: random.Random, label: bool) -> str | None:
    n = scene.count if label else rng.choice([k for k in range(1, 5) if k != scene.count])
    return (
        f"Are there {NUMBER_WORDS[n]} shapes in this image?"
        if n != 1
        else "Is there only one shape in this image?"
    )


def _mme_position(scene: Scene, rng: random.Random, label: bool) -> str | None:
    if scene.count != 1:
        return None
    actual = scene.shapes[0].position
    position = actual if label else rng.choice([p for p in POSITIONS if p != actual])
    return f"Is the {scene.object} at the {position} of the image?"


def _mme_color(scene: Scene, rng: random.Random, label: bool) -> str | None:
    colour = scene.colour if label else rng.choice([c for c in COLOURS if c != scene.colour])
    return (
        f"Is the {scene.kind} in this image {colour}?"
        if scene.count == 1
        else f"Are the {scene.kind}s in this image {colour}?"
    )


def _mme_ocr(scene: Scene, rng: random.Random, label: bool) -> str | None:
    if scene.word is None:
        return None
    word = scene.word if label else rng.choice([w for w in WORDS if w != scene.word])
    return f'Is the word in the image "{word}"?'


MME_CATEGORIES = {
    "existence": _mme_existence,
    "count": _mme_count,
    "position": _mme_position,
    "color": _mme_color,
    "OCR": _mme_ocr,
}


def mme_question(scene: Scene, rng: random.Random, category: str, label: bool) -> Question | None:
    text = MME_CATEGORIES[category](scene, rng, label)
    if text is None:
        return None
    return Question(
        "yes/no", "mme", text, "Yes" if label else "No", n_choices=2, extra={"category": category}
    )


def mme_pair(scene: Scene, rng: random.Random, category: str) -> list[Question] | None:
    """MME asks each image two questions of one category, the first answered yes, the second no."""
    pair = [mme_question(scene, rng, category, True), mme_question(scene, rng, category, False)]
    return None if None in pair else pair  # type: ignore[return-value]


def _choice_stem(scene: Scene, rng: random.Random) -> tuple[str, str, list[str]]:
    """A multiple-choice question: (question, correct option, option pool)."""
    skill = rng.choice(["colour", "shape", "count", "position"])
    if skill == "colour":
        return (
            f"Which color {'is the ' + scene.kind if scene.count == 1 else 'are the ' + scene.kind + 's'}?",
            scene.colour,
            list(COLOURS),
        )
    if skill == "count":
        return "How many shapes are in the picture?", str(scene.count), ["1", "2", "3", "4"]
    if skill == "position" and scene.count == 1:
        return f"Where is the {scene.object}?", scene.shapes[0].position, list(POSITIONS)
    return "Which shape is shown in the picture?", scene.kind, list(SHAPES)


def _options(correct: str, pool: list[str], n: int, rng: random.Random) -> list[str]:
    wrong = rng.sample([p for p in pool if p != correct], min(n - 1, len(pool) - 1))
    options = [correct, *wrong]
    rng.shuffle(options)
    return options


def format_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


SQA_HINTS = (
    "The picture shows shapes drawn on paper.",
    "Shapes can be told apart by their color and their corners.",
    "Look at each part of the picture.",
)


def sqa_question(scene: Scene, rng: random.Random) -> Question:
    question, correct, pool = _choice_stem(scene, rng)
    options = _options(correct, pool, rng.randint(2, 5), rng)
    hint = rng.choice(SQA_HINTS) if rng.random() < 0.5 else ""
    context = f"Context: {hint}\n" if hint else ""
    return Question(
        "multiple-choice",
        "sqa",
        f"{context}{question}\n{format_options(options)}",
        LETTERS[options.index(correct)],
        suffix=CHOICE_SUFFIX,
        n_choices=len(options),
        extra={
            "question": question,
            "hint": hint,
            "choices": options,
            "answer_index": options.index(correct),
        },
    )


def mmbench_question(scene: Scene, rng: random.Random) -> Question:
    question, correct, pool = _choice_stem(scene, rng)
    options = _options(correct, pool, 4, rng)
    hint = "Each corner of the picture may hold one shape." if rng.random() < 0.3 else ""
    return mmbench_prompt(question, hint, options, options.index(correct))


def mmbench_prompt(question: str, hint: str, options: list[str], answer_index: int) -> Question:
    prefix = f"{hint}\n" if hint else ""
    return Question(
        "multiple-choice",
        "mmbench",
        f"{prefix}{question}\n{format_options(options)}",
        LETTERS[answer_index],
        suffix=CHOICE_SUFFIX,
        n_choices=len(options),
        extra={"question": question, "hint": hint, "options": options, "answer_index": answer_index},
    )


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: random.Random) -> Question:
    prompt = rng.choice(
        ["Describe the image briefly.", "Write a short caption for the image.", "What is in the image?"]
    )
    n = scene.count
    text = (
        f"{article(scene.object).capitalize()}."
        if n == 1
        else f"{NUMBER_WORDS[n].capitalize()} {scene.object}s."
    )
    if scene.word is not None:
        text += f' The word "{scene.word}" is written on a sign.'
    return Question("caption", "caption", prompt, text, suffix="")


def description(scene: Scene, rng: random.Random) -> Question:
    prompt = rng.choice(["Describe the image in detail.", "Give a detailed description of the picture."])
    n = scene.count
    what = article(scene.object) if n == 1 else f"{NUMBER_WORDS[n]} {scene.object}s"
    sentences = [f"The image shows {what} on a light background."]
    for shape in scene.shapes:
        size = "large" if shape.size >= 23 else "small" if shape.size <= 20 else "medium"
        sentences.append(f"In the {shape.position} corner there is {article(size + ' ' + shape.name)}.")
    if scene.word is not None:
        position = POSITIONS[scene.word_cell]  # type: ignore[index]
        sentences.append(
            f'In the {position} corner the word "{scene.word}" is written in black on a gray sign.'
        )
    occupied = {s.cell for s in scene.shapes} | ({scene.word_cell} if scene.word is not None else set())
    empty = [POSITIONS[c] for c in range(4) if c not in occupied]
    if empty:
        sentences.append(f"The {_join(empty)} {'corner is' if len(empty) == 1 else 'corners are'} empty.")
    sentences.append(
        f"All the shapes are {scene.colour} {scene.kind}s."
        if n > 1
        else f"The only shape is {article(scene.kind)}."
    )
    return Question("description", "description", prompt, " ".join(sentences), suffix="")


TEXT_ONLY_QUESTIONS = (
    ("Which word names a color?", lambda rng: rng.choice(list(COLOURS)), list(SHAPES) + list(WORDS)),
    ("Which word names a shape?", lambda rng: rng.choice(SHAPES), list(COLOURS) + list(WORDS)),
    ("Which shape has three corners?", lambda rng: "triangle", ["circle", "square", "diamond"]),
    ("Which shape has no corners?", lambda rng: "circle", ["triangle", "square", "diamond"]),
)


def text_only_sqa_question(rng: random.Random) -> Question:
    """A ScienceQA-style question that needs no image (ScienceQA mixes both; SQA-IMG filters them out)."""
    question, pick, distractors = rng.choice(TEXT_ONLY_QUESTIONS)
    correct = pick(rng)
    options = [correct, *rng.sample(distractors, rng.randint(1, 3))]
    rng.shuffle(options)
    return Question(
        "multiple-choice",
        "sqa",
        f"{question}\n{format_options(options)}",
        LETTERS[options.index(correct)],
        suffix=CHOICE_SUFFIX,
        n_choices=len(options),
        extra={"question": question, "hint": "", "choices": options, "answer_index": options.index(correct)},
    )


SHORT_ANSWER_GENERATORS = {
    "colour": colour_question,
    "shape": shape_question,
    "count": count_question,
    "position": position_question,
    "reading": reading_question,
}


def random_questions(scene: Scene, rng: random.Random) -> list[Question]:
    """Training questions from a mixture of all families (LLaVA-665k style VQA turns): one
    question, or for yes/no a contrastive pair about the same image, one answered Yes and one No
    in random order (a model must read the question to tell them apart)."""
    while True:
        kind = rng.choices(
            ["colour", "shape", "count", "position", "reading", "pope", "mme", "sqa", "mmbench"],
            weights=[2, 2, 2, 2, 3, 2, 2, 3, 3],
        )[0]
        if kind in SHORT_ANSWER_GENERATORS:
            questions = [SHORT_ANSWER_GENERATORS[kind](scene, rng)]
        elif kind == "pope":
            category = rng.choice(["random", "popular", "adversarial"])
            questions = [
                pope_question(scene, rng, category, label=True),
                pope_question(scene, rng, category, label=False),
            ]
        elif kind == "mme":
            questions = mme_pair(scene, rng, rng.choice(list(MME_CATEGORIES))) or [None]
        elif kind == "sqa":
            questions = [sqa_question(scene, rng)]
        else:
            questions = [mmbench_question(scene, rng)]
        if None not in questions:
            rng.shuffle(questions)
            return questions  # type: ignore[return-value]
