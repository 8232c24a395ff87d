"""`python -m distill check`: validate a teacher/student pair and a dataset without training.

    python -m distill check configs/tiny-student-kd.yaml                  # what a run config would use
    python -m distill check --student DIR --teacher DIR --data train.json --verify-images
    python -m distill check configs/tiny-student-kd.yaml --probe-teacher 200   # loads the teacher's weights

Reads configs and tokenizers, checks that the pair can be distilled (same vocabulary, chat template
and image token; visual-token counts reported), tokenizes every record with the same checks training
uses, and with --verify-images decodes every image. Only --probe-teacher N reads the teacher's
weights: it scores the teacher on N of the examples as training will see them (distill/teacher_fit.py),
and warns where its later replies fall far under its first. Prints a report and exits 0 when
everything can be used (a warning included), 2 with the first problem otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from transformers import AutoTokenizer

from distill.configuration import load_config
from distill.conversation import IGNORE_INDEX, DataError, reply_stop_warning
from distill.data import LlavaDataset, ModelView
from distill.modeling import build_llava, check_llava_dir, image_token_count, load_llava, load_processor
from distill.pairing import check_pair
from distill.run_config import RunConfig
from distill.teacher_fit import probe_teacher, report


def student_spec(cfg: RunConfig) -> tuple[Any, Any]:
    """(config, processor) of the model a run would train, without loading weights."""
    if cfg.model.path is not None:
        return check_llava_dir(cfg.model.path), load_processor(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer, local_files_only=True)
    model, processor = build_llava(cfg.model.arch, tokenizer)  # type: ignore[arg-type]
    return model.config, processor


def verify_images(dataset: LlavaDataset) -> int:
    """Decode every image once; returns how many are unreadable (raises unless skipping)."""
    bad = 0
    for _ids, _labels, _instruction, name, index in tqdm(dataset.examples, desc="decode images", leave=False):
        if name is None:
            continue
        path = dataset.image_folder / name
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError) as error:
            if not dataset.skip_bad_records:
                raise DataError(f"{dataset.path}, record {index}: corrupt image {path} ({error})") from None
            bad += 1
    return bad


def length_report(dataset: LlavaDataset, view: ModelView) -> str:
    lengths = np.array(dataset.lengths)
    supervised = np.array([(labels != IGNORE_INDEX).sum() for _, labels, _, _, _ in dataset.examples])
    return (
        f"tokens per record: mean {lengths.mean():.0f}, max {lengths.max()} (max_length {view.max_length}); "
        f"supervised tokens: {supervised.sum():,} in all"
    )


def check(
    student: tuple[Any, Any],
    teacher: tuple[Any, Any] | None,
    data: str | None,
    image_folder: str | None,
    max_length: int,
    skip_bad_records: bool,
    images: bool,
    split_turns: bool = False,
    probe: tuple[str, int] | None = None,
) -> list[str]:
    """The report's lines. `probe` = (teacher checkpoint, examples) scores the teacher on the data."""
    config, processor = student
    lines = [
        f"student: {type(processor.tokenizer).__name__}, {len(processor.tokenizer)} tokens, "
        f"{image_token_count(config)} visual tokens"
    ]
    lines += [warning] if (warning := reply_stop_warning(processor.tokenizer)) else []
    views = {"student": ModelView.from_processor(processor, image_token_count(config), max_length)}
    if teacher is not None:
        lines += check_pair(config, processor, teacher[0], teacher[1]).lines()
        views["teacher"] = ModelView.from_processor(teacher[1], image_token_count(teacher[0]), max_length)
    if data is not None:
        dataset = LlavaDataset(data, views, image_folder, skip_bad_records, split_turns=split_turns)
        lines.append(
            f"data: {dataset.report()}" + (" (one example per question: split_turns)" if split_turns else "")
        )
        lines.append(length_report(dataset, views["student"]))
        if images:
            lines.append(f"images: all decoded, {verify_images(dataset)} unreadable")
        if probe is not None:
            device = "cuda" if torch.cuda.is_available() else None
            teacher_model, teacher_processor = load_llava(probe[0], "auto", device=device)
            scores = probe_teacher(
                teacher_model.eval(), dataset, teacher_processor.tokenizer.pad_token_id, probe[1]
            )
            lines += report(scores, min(probe[1], len(dataset)))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a run config: check its model, teacher and data")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the config")
    parser.add_argument("--student", help="student checkpoint directory (instead of a config)")
    parser.add_argument("--teacher", help="teacher checkpoint directory")
    parser.add_argument("--data", help="LLaVA-format JSON to check")
    parser.add_argument("--image-folder", help="images are relative to this (default: the JSON's folder)")
    parser.add_argument(
        "--max-length", type=int, default=2048, help="sequence budget used for truncation checks"
    )
    parser.add_argument(
        "--skip-bad-records", action="store_true", help="count bad records instead of stopping"
    )
    parser.add_argument(
        "--verify-images", action="store_true", help="decode every image (slow on large sets)"
    )
    parser.add_argument(
        "--split-turns",
        action="store_true",
        help="one example per question, as data.split_turns does (with --data; a config says it itself)",
    )
    parser.add_argument(
        "--probe-teacher",
        type=int,
        default=0,
        metavar="N",
        help="load the teacher and score its replies on N examples of the data under teacher forcing, by "
        "their place in the conversation; warns when later replies score far under the first (a teacher "
        "that has not seen conversations of this form: KD would pass on its guesses)",
    )


def run(args: argparse.Namespace) -> int:
    if args.config:
        cfg = load_config(RunConfig, args.config, args.overrides)
        student = student_spec(cfg)
        teacher = (
            (check_llava_dir(cfg.teacher.path), load_processor(cfg.teacher.path))
            if cfg.teacher.path
            else None
        )
        data, folder, max_length, skip, split = (
            cfg.data.train_json,
            cfg.data.image_folder,
            cfg.data.max_length,
            cfg.data.skip_bad_records,
            cfg.data.split_turns,
        )
        teacher_path = cfg.teacher.path
    elif args.student:
        student = (check_llava_dir(args.student), load_processor(args.student))
        teacher = (check_llava_dir(args.teacher), load_processor(args.teacher)) if args.teacher else None
        data, folder, max_length, skip = args.data, args.image_folder, args.max_length, args.skip_bad_records
        split, teacher_path = args.split_turns, args.teacher
    else:
        raise SystemExit("check: give a run config or --student DIR")
    if args.probe_teacher and not (teacher_path and data):
        raise SystemExit(
            "check: --probe-teacher needs a teacher and data (a config with both, or --teacher and --data)"
        )
    probe = (str(teacher_path), args.probe_teacher) if args.probe_teacher else None
    for line in check(
        student,
        teacher,
        data,
        folder,
        max_length,
        skip or args.skip_bad_records,
        args.verify_images,
        split or args.split_turns,
        probe,
    ):
        print(line)
    print("ok: nothing found that would stop training")
    return 0
