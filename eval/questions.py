"""Benchmark question files read into one shape: what to ask, which image, what the answer line keeps.

    questions = read_questions("gqa", "llava_gqa_testdev_balanced.jsonl", images="gqa/images")
    questions[0].prompt          # the text after the image, with the benchmark's answer-format suffix

The prompts follow LLaVA-1.5's generation scripts (../shared/eval-spec.md): the question files of
GQA, TextVQA, POPE and MME carry the short-answer suffix already (it is added where a line lacks
it); ScienceQA's prompt is its human turn without "<image>" plus the letter suffix
(model_vqa_science.py), and its recorded prompt starts with "<image>\\n" when the question has an
image, which is what the SQA-IMG filter looks for; MMBench's is the hint, the question and the
options up to the first empty one, then the letter suffix (model_vqa_mmbench.py, one round).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eval import mmbench
from eval.records import ScoreError, read_json, read_jsonl

SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
SHORT_ANSWER_BENCHES = ("gqa", "textvqa", "pope", "mme")
BENCHES = (*SHORT_ANSWER_BENCHES, "sqa", "mmbench")
MAX_NEW_TOKENS = {"sqa": 1024, "mmbench": 1024}  # model_vqa_science / model_vqa_mmbench; 128 elsewhere
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class BenchQuestion:
    """One question to answer. `key` identifies it for resumption (MME and TextVQA repeat question ids)."""

    question_id: Any
    prompt: str  # as asked, after the image, suffix included
    recorded_prompt: str  # the answer line's "prompt" field, as the official script writes it
    image: Callable[[], Image.Image] | None  # loads the image when it is needed
    extra: dict[str, Any] = field(default_factory=dict)  # more answer-line fields (MMBench)

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.question_id), self.recorded_prompt)


def image_file_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        if not path.is_file():
            raise ScoreError(f"{path}: image not found (is --images the benchmark's image folder?)")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ScoreError(f"{path}: not a readable image ({error})") from None

    return load


def base64_image_loader(data: str, where: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        try:
            with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ScoreError(f"{where}: the image column is not a base64-encoded image ({error})") from None

    return load


def with_suffix(text: str, suffix: str) -> str:
    return text if text.endswith(suffix) else text + suffix


def short_answer_questions(path: Path, images: Path) -> list[BenchQuestion]:
    """GQA, TextVQA, POPE and MME: LLaVA question lines {question_id, image, text[, category]}."""
    questions = []
    for row in read_jsonl(path, required=("question_id", "image", "text")):
        prompt = with_suffix(row["text"], SHORT_SUFFIX)
        questions.append(
            BenchQuestion(row["question_id"], prompt, prompt, image_file_loader(images / row["image"]))
        )
    return questions


def science_questions(path: Path, images: Path) -> list[BenchQuestion]:
    """ScienceQA: llava_test_CQM-A.json, a list of {id, conversations[, image]}."""
    records = read_json(path)
    if not isinstance(records, list):
        raise ScoreError(f"{path}: expected a JSON list of questions (llava_test_CQM-A.json)")
    questions = []
    for number, record in enumerate(records):
        try:
            text = record["conversations"][0]["value"].replace("<image>", "").strip()
            question_id = record["id"]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ScoreError(f"{path}, question {number}: needs 'id' and a first conversation turn") from None
        prompt = text + CHOICE_SUFFIX
        image = record.get("image")
        recorded = f"<image>\n{prompt}" if image else prompt
        loader = image_file_loader(images / image) if image else None
        questions.append(BenchQuestion(question_id, prompt, recorded, loader))
    return questions


def mmbench_prompt(question: str, hint: str | None, options: list[str]) -> str:
    """Hint, question and lettered options (model_vqa_mmbench.py, without the suffix)."""
    text = question if hint is None or hint in mmbench.PANDAS_NA else f"{hint}\n{question}"
    for letter, option in zip(mmbench.LETTERS, options):
        text += f"\n{letter}. {option}"
    return text


def mmbench_questions(path: Path) -> list[BenchQuestion]:
    """MMBench: the dev TSV, every row (circular shifts included), images inline as base64."""
    questions = []
    for row in mmbench.read_tsv(path, required=("index", "question", "A", "B", "image")):
        options = list(mmbench.options(row).values())
        text = mmbench_prompt(row["question"], row.get("hint"), options)
        where = f"{path}, index {row['index']}"
        extra = {"round_id": 0, "options": options, "option_char": list(mmbench.LETTERS[: len(options)])}
        questions.append(
            BenchQuestion(
                int(row["index"]), text + CHOICE_SUFFIX, text, base64_image_loader(row["image"], where), extra
            )
        )
    return questions


def read_questions(bench: str, path: str | Path, images: str | Path | None = None) -> list[BenchQuestion]:
    """The questions of one benchmark file, in file order."""
    path = Path(path)
    if bench == "mmbench":
        return mmbench_questions(path)
    if images is None:
        raise ScoreError(f"--bench {bench} needs --images, the folder its question file's images are in")
    if bench == "sqa":
        return science_questions(path, Path(images))
    if bench in SHORT_ANSWER_BENCHES:
        return short_answer_questions(path, Path(images))
    raise ScoreError(f"unknown benchmark {bench!r}; choose from {', '.join(BENCHES)}")
