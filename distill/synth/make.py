"""`python -m distill synth`: write the synthetic shapes dataset, its benchmark files and tokenizer.

    python -m distill synth --out data/shapes --seed 0

writes, atomically (a temporary folder renamed when complete):

    data/shapes/images/{train,val,test}/*.png
    data/shapes/train.json, val.json        LLaVA format, multi-turn
    data/shapes/test.json                   single-turn held-out questions with family and answer
    data/shapes/benchmarks/...              the same questions in the six benchmarks' formats
    data/shapes/tokenizer/                  byte-level BPE + ChatML template
    data/shapes/manifest.json               seed, sizes and counts

The same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.staging import staged_directory
from distill.synth.benchmark_files import write_all
from distill.synth.splits import (
    TEXT_ONLY_SHARE,
    heldout_questions,
    heldout_record,
    text_only_record,
    train_record,
)
from distill.synth.world import render, sample_scene
from distill.tokenizer import chatml_turn_text, train_tokenizer

FORMAT_VERSION = 1
GENERATOR_SOURCES = [*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parents[1] / "tokenizer.py"]


def generator_fingerprint() -> str:
    """A hash of the generator's own source: data written by another version of it is not reused."""
    digest = hashlib.sha256()
    for path in GENERATOR_SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _render_split(scenes, folder: Path, name: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(tqdm(scenes, desc=f"render {name}", unit="img", leave=False)):
        path = folder / f"{i:06d}.png"
        render(scene).save(path, optimize=False)
        paths.append(f"images/{name}/{path.name}")
    return paths


def _conversation_texts(records: list[dict[str, Any]]):
    for record in records:
        for turn in record["conversations"]:
            yield chatml_turn_text(turn["from"], turn["value"])


def _build(
    out: Path, seed: int, n_train: int, n_val: int, n_test: int, per_family: int, vocab_size: int
) -> dict:
    rng = random.Random(seed)
    scenes = {
        name: [sample_scene(rng) for _ in range(n)]
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    images = {name: _render_split(s, out / "images" / name, name) for name, s in scenes.items()}

    splits: dict[str, list[dict[str, Any]]] = {}
    for name in ("train", "val"):
        records = [
            train_record(f"{name}-{i:06d}", s, images[name][i], rng) for i, s in enumerate(scenes[name])
        ]
        n_text = round(len(records) * TEXT_ONLY_SHARE)
        records += [text_only_record(f"{name}-text-{i:06d}", rng) for i in range(n_text)]
        rng.shuffle(records)
        splits[name] = records
    test = []
    for k, (index, question) in enumerate(heldout_questions(scenes["test"], rng, per_family)):
        image = None if index is None else images["test"][index]
        test.append(heldout_record(f"{question.benchmark}-{k:06d}", question, image))
    splits["test"] = test

    for name, records in splits.items():
        (out / f"{name}.json").write_text(json.dumps(records, indent=1))
    counts = write_all(test, out / "images" / "test", out / "benchmarks")

    tokenizer = train_tokenizer(_conversation_texts(splits["train"] + splits["val"] + test), vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": generator_fingerprint(),
        "seed": seed,
        "images": {name: len(s) for name, s in scenes.items()},
        "records": {name: len(r) for name, r in splits.items()},
        "benchmark_questions": counts,
        "heldout_per_family": per_family,
        "vocab_size": len(tokenizer),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def synthesize(
    out: str | Path,
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 200,
    n_test: int = 600,
    per_family: int = 100,
    vocab_size: int = 1024,
    force: bool = False,
) -> dict:
    """Write the dataset to `out` (atomically). An existing dataset made with the same arguments is kept."""
    out = Path(out)
    wanted = {
        "format_version": FORMAT_VERSION,
        "generator": generator_fingerprint(),
        "seed": seed,
        "images": {"train": n_train, "val": n_val, "test": n_test},
        "heldout_per_family": per_family,
    }
    manifest_path = out / "manifest.json"
    if out.exists() and not force:
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            differing = [k for k, v in wanted.items() if manifest.get(k) != v]
            if not differing:
                return manifest
            what = "another version of the generator" if differing == ["generator"] else "other settings"
            raise FileExistsError(
                f"{out} exists and was made by {what} ({', '.join(differing)} differ); replace it with "
                f"`python -m distill synth --out {out} --force` (and retrain what was trained on it)"
            )
        raise FileExistsError(f"{out} exists without a manifest.json; pass --force to replace it")
    with staged_directory(out) as staging:
        manifest = _build(staging, seed, n_train, n_val, n_test, per_family, vocab_size)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/shapes", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--train-images", type=int, default=4000, help="training images, one conversation each"
    )
    parser.add_argument("--val-images", type=int, default=200, help="validation images")
    parser.add_argument(
        "--test-images", type=int, default=600, help="held-out images the test questions are asked about"
    )
    parser.add_argument(
        "--per-family", type=int, default=100, help="held-out questions per family (default: %(default)s)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=1024, help="BPE vocabulary size (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing dataset")


def run(args: argparse.Namespace) -> int:
    manifest = synthesize(
        args.out,
        args.seed,
        args.train_images,
        args.val_images,
        args.test_images,
        args.per_family,
        args.vocab_size,
        args.force,
    )
    print(f"wrote {args.out}: {json.dumps(manifest['records'])} records, vocabulary {manifest['vocab_size']}")
    print(f"benchmark questions: {json.dumps(manifest['benchmark_questions'])}")
    return 0
