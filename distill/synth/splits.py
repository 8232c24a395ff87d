"""Turn scenes and questions into LLaVA-format records: multi-turn training conversations and
single-turn held-out questions carrying their family, benchmark, answer and chance level."""

from __future__ import annotations

import random
from typing import Any

from distill.synth.questions import (
    MME_CATEGORIES,
    SHORT_ANSWER_GENERATORS,
    Question,
    caption,
    description,
    mmbench_question,
    mme_pair,
    pope_question,
    random_questions,
    sqa_question,
    text_only_sqa_question,
)
from distill.synth.world import Scene

TURN_WORD_BUDGET = 90  # about 200 tokens with the chat template and the image tokens
TEXT_ONLY_SHARE = 0.03  # share of training records without an image (LLaVA-665k has text-only ShareGPT turns)


def _turns(questions: list[Question], with_image: bool) -> list[dict[str, str]]:
    turns = []
    for i, q in enumerate(questions):
        prefix = "<image>\n" if with_image and i == 0 else ""
        turns.append({"from": "human", "value": prefix + q.prompt})
        turns.append({"from": "gpt", "value": q.answer})
    return turns


def train_record(record_id: str, scene: Scene, image: str, rng: random.Random) -> dict[str, Any]:
    """One image, one conversation: sometimes a caption or a long description first, then VQA
    turns until the conversation holds about TURN_WORD_BUDGET words.

    Filling every record to a similar length keeps padding low, so a step spends its compute on
    answers rather than on pad tokens (a tiny model on CPU is compute-bound: time grows with tokens).
    """
    roll = rng.random()
    questions = [caption(scene, rng)] if roll < 0.05 else [description(scene, rng)] if roll < 0.12 else []
    words = sum(_word_count(q) for q in questions)
    while words < TURN_WORD_BUDGET:
        turns = random_questions(scene, rng)
        questions.extend(turns)
        words += sum(_word_count(q) for q in turns)
    return {"id": record_id, "image": image, "conversations": _turns(questions, with_image=True)}


def _word_count(question: Question) -> int:
    return len(question.prompt.split()) + len(question.answer.split())


def text_only_record(record_id: str, rng: random.Random) -> dict[str, Any]:
    return {"id": record_id, "conversations": _turns([text_only_sqa_question(rng)], with_image=False)}


def heldout_record(question_id: str, question: Question, image: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": question_id,
        "question_id": question_id,
        "conversations": _turns([question], with_image=image is not None),
        "family": question.family,
        "benchmark": question.benchmark,
        "answer": question.answer,
        "n_choices": question.n_choices,
        "extra": question.extra,
    }
    if image is not None:
        record["image"] = image
    return record


def heldout_questions(
    scenes: list[Scene], rng: random.Random, per_family: int
) -> list[tuple[int | None, Question]]:
    """Held-out questions, `per_family` of each (POPE: per category; MME: pairs per category).

    Each family walks the scenes from its own offset so that families see different images.
    Returns (scene index or None for text-only, question)."""
    out: list[tuple[int | None, Question]] = []
    n = len(scenes)

    def walk(offset: int):
        for k in range(n):
            yield (offset + k) % n

    for f, (_family, generate) in enumerate(SHORT_ANSWER_GENERATORS.items()):
        got = 0
        for i in walk(f * 37):
            if got == per_family:
                break
            question = generate(scenes[i], rng)
            if question is not None:
                out.append((i, question))
                got += 1
    for c, category in enumerate(["random", "popular", "adversarial"]):
        for k, i in enumerate(walk(200 + c * 53)):
            if k == per_family:
                break
            out.append((i, pope_question(scenes[i], rng, category=category, label=k % 2 == 0)))
    for c, category in enumerate(MME_CATEGORIES):
        got = 0
        for i in walk(400 + c * 29):
            if got == max(1, per_family // 5):
                break
            pair = mme_pair(scenes[i], rng, category)
            if pair is not None:
                out.extend((i, q) for q in pair)
                got += 1
    for k, i in enumerate(walk(600)):
        if k == per_family:
            break
        out.append((None, text_only_sqa_question(rng)) if k % 10 == 9 else (i, sqa_question(scenes[i], rng)))
    for k, i in enumerate(walk(700)):
        if k == per_family:
            break
        out.append((i, mmbench_question(scenes[i], rng)))
    return out
