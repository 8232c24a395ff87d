"""LLaVA-format JSON -> tokenized, image-expanded training examples, and the padding collator.

    views = {"student": ModelView.from_processor(processor, model.config, max_length=512)}
    dataset = LlavaDataset("data/shapes/train.json", views)
    batch = PaddingCollator(pad_token_id)([dataset[0], dataset[1]])

Records are checked and tokenized once, up front (with a progress bar), so a malformed record,
a missing image or an image-token mismatch stops the run before any training step, with an error
naming the file and the record index; `skip_bad_records` skips them instead and counts them.
Images are decoded lazily; a corrupt one raises (or, when skipping, is replaced by the next
record and counted).

With `split_turns`, each question of a multi-turn record becomes an example of its own (the image,
if any, before the question): every answer must then come from the image and the question alone,
as at evaluation time, not from what earlier turns of the conversation already said.

When the teacher sees images differently from the student (another resolution or number of
visual tokens), each example carries a second set of tensors prefixed `teacher_`; the text tokens,
and therefore the supervised positions, are the same for both.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from distill.conversation import (
    IGNORE_INDEX,
    ConversationEncoder,
    DataError,
    expand_image_tokens,
    expand_mask,
)
from distill.pixel_cache import PixelCache
from distill.records import read_records


@dataclass
class ModelView:
    """How one model wants its inputs."""

    encoder: ConversationEncoder
    image_processor: Any
    num_image_tokens: int
    max_length: int

    @classmethod
    def from_processor(cls, processor: Any, num_image_tokens: int, max_length: int) -> ModelView:
        return cls(
            ConversationEncoder(processor.tokenizer), processor.image_processor, num_image_tokens, max_length
        )

    def image_signature(self) -> str:
        """Two views with the same signature produce the same pixel_values and image-token count."""
        return json.dumps(
            [self.image_processor.to_dict(), self.num_image_tokens], sort_keys=True, default=str
        )


def split_conversation(record: Any, image_token: str) -> list[dict[str, Any]]:
    """One single-turn record per (human, gpt) pair of `record`, each with the record's system turn
    if it has one and its image (the placeholder moved before the question). A record the checks
    would refuse (malformed, or not exactly one placeholder with an image) is returned whole, for
    them to name its fault."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return [record]
    system = turns[:1] if turns and turns[0].get("from") == "system" else []
    pairs = turns[len(system) :]
    if len(pairs) % 2 or not all(
        isinstance(t.get("value"), str) and t.get("from") == ("human" if i % 2 == 0 else "gpt")
        for i, t in enumerate(pairs)
    ):
        return [record]
    has_image = "image" in record
    if has_image and sum(t["value"].count(image_token) for t in pairs) != 1:
        return [record]
    parts = []
    for k in range(0, len(pairs), 2):
        question = pairs[k]["value"]
        if has_image:
            for placeholder in (f"{image_token}\n", f"\n{image_token}", image_token):
                question = question.replace(placeholder, "")
            question = f"{image_token}\n{question}"
        conversation = [*system, {"from": "human", "value": question}, pairs[k + 1]]
        parts.append({**record, "conversations": conversation})
    return parts


class LlavaDataset(Dataset):
    """Tokenized LLaVA records; item i is a dict of numpy arrays and an optional image path."""

    def __init__(
        self,
        json_path: str | Path,
        views: dict[str, ModelView],
        image_folder: str | Path | None = None,
        skip_bad_records: bool = False,
        max_records: int | None = None,
        progress: bool = True,
        split_turns: bool = False,
        image_cache_mib: float = 0.0,
    ) -> None:
        if "student" not in views:
            raise ValueError("views must contain a 'student' view")
        self.path = Path(json_path)
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.skip_bad_records = skip_bad_records
        self.views = views
        self.pixel_cache = PixelCache(image_cache_mib)  # distill/pixel_cache.py
        self.teacher_separate = "teacher" in views and (
            views["teacher"].image_signature() != views["student"].image_signature()
        )
        self.skipped: Counter[str] = Counter()
        records = read_records(self.path)[:max_records]
        image_token = views["student"].encoder.image_token
        # (input_ids, labels, instruction mask, image file, record index), before image expansion
        self.examples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str | None, int]] = []
        started = time.perf_counter()
        for index, record in enumerate(
            tqdm(records, desc=f"tokenize {self.path.name}", disable=not progress, leave=False)
        ):
            try:
                parts = split_conversation(record, image_token) if split_turns else [record]
                self.examples.extend([self._encode(part, index) for part in parts])  # all or none
            except DataError as error:
                if not skip_bad_records:
                    raise DataError(f"{self.path}, record {index}: {error}") from None
                self.skipped[str(error).split(":")[0]] += 1
        self.tokenize_seconds = time.perf_counter() - started
        if not self.examples:
            raise DataError(f"{self.path}: no usable records (skipped: {dict(self.skipped)})")
        # which examples' images turned out corrupt when read (images are decoded lazily); shared with the
        # DataLoader's worker processes, so each bad record counts once however often it is drawn
        self._bad_images = multiprocessing.Array("b", len(self.examples))

    # -- up-front checks and tokenization -----------------------------------------------------
    def _encode(self, record: Any, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None, int]:
        if not isinstance(record, dict) or "conversations" not in record:
            raise DataError("malformed record: expected an object with 'conversations'")
        image = record.get("image")
        student = self.views["student"]
        try:
            ids, labels, instruction = student.encoder.encode_with_instruction(record["conversations"])
        except (DataError, TemplateError) as error:  # TemplateError: the chat template's own refusal
            raise DataError(f"malformed record: {error}") from None
        placeholders = int((ids == student.encoder.image_token_id).sum())
        if any(
            t["from"] == "gpt" and student.encoder.image_token in t["value"] for t in record["conversations"]
        ):
            raise DataError(
                f"image-token mismatch: {student.encoder.image_token} in a gpt turn (images go in human turns)"
            )
        if image is not None:
            if not isinstance(image, str):
                raise DataError(f"image-token mismatch: 'image' must be one file name, got {image!r}")
            if placeholders != 1:
                raise DataError(
                    f"image-token mismatch: record has an image but {placeholders} <image> placeholders"
                )
            if not (self.image_folder / image).is_file():
                raise DataError(f"missing image: {self.image_folder / image}")
        elif placeholders:
            raise DataError(f"image-token mismatch: {placeholders} <image> placeholders but no 'image'")
        ids, labels = self._truncate(ids, labels, student)
        return ids, labels, instruction[: len(ids)], image, index

    def _truncate(
        self, ids: np.ndarray, labels: np.ndarray, view: ModelView
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut text tokens at the end so the expanded sequence fits; never cut the image block."""
        image_id = view.encoder.image_token_id
        has_image = bool((ids == image_id).any())
        budget = view.max_length - (view.num_image_tokens - 1 if has_image else 0)
        if has_image and int(np.flatnonzero(ids == image_id)[0]) >= budget:
            raise DataError(
                f"too long: the image tokens end beyond max_length={view.max_length}; raise data.max_length"
            )
        ids, labels = ids[:budget], labels[:budget]
        if not (labels != IGNORE_INDEX).any():
            raise DataError(f"too long: no response token left within max_length={view.max_length}")
        return ids, labels

    @property
    def lengths(self) -> list[int]:
        """Expanded (student) sequence length of each example."""
        n_image = self.views["student"].num_image_tokens - 1
        return [len(ids) + (n_image if name is not None else 0) for ids, _, _, name, _ in self.examples]

    # -- per-item work ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    @property
    def bad_images(self) -> int:
        """Records skipped so far for a corrupt image (each counted once)."""
        return sum(self._bad_images)

    def _load_image(self, name: str, index: int) -> Image.Image:
        path = self.image_folder / name
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{self.path}, record {index}: corrupt image {path} ({error})") from None

    def _pixels(self, image_name: str, index: int) -> dict[str, torch.Tensor]:
        """The example's image as each view's pixel_values (from the cache where it holds them)."""
        names = ["student", "teacher"] if self.teacher_separate else ["student"]
        pixels = {name: self.pixel_cache.get((name, image_name)) for name in names}
        missing = [name for name, tensor in pixels.items() if tensor is None]
        if missing:
            image = self._load_image(image_name, index)
            for name in missing:
                processed = self.views[name].image_processor(images=image, return_tensors="pt")
                pixels[name] = processed["pixel_values"][0]
                self.pixel_cache.put((name, image_name), pixels[name])
        return pixels

    def _view_tensors(
        self,
        view: ModelView,
        ids: np.ndarray,
        labels: np.ndarray,
        instruction: np.ndarray,
        pixels: torch.Tensor | None,
    ) -> dict:
        image_id, n_image = view.encoder.image_token_id, view.num_image_tokens
        instruction = expand_mask(instruction, ids, image_id, n_image)
        ids, labels = expand_image_tokens(ids, labels, image_id, n_image)
        item = {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "instruction_mask": torch.from_numpy(instruction),
        }
        if pixels is not None:
            item["pixel_values"] = pixels
        return item

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.examples)):
            position = (i + attempt) % len(self.examples)
            ids, labels, instruction, image_name, index = self.examples[position]
            try:
                pixels = self._pixels(image_name, index) if image_name is not None else {}
            except DataError:
                if not self.skip_bad_records:
                    raise
                self._bad_images[position] = 1  # its place in the batch goes to the next record
                continue
            item = self._view_tensors(self.views["student"], ids, labels, instruction, pixels.get("student"))
            if self.teacher_separate:
                teacher = self._view_tensors(
                    self.views["teacher"], ids, labels, instruction, pixels.get("teacher")
                )
                item.update({f"teacher_{k}": v for k, v in teacher.items()})
            return item
        raise DataError(f"{self.path}: every image is unreadable")

    def report(self) -> str:
        skipped = sum(self.skipped.values()) + self.bad_images
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        if self.bad_images:
            detail = ", ".join(filter(None, [detail, f"corrupt image: {self.bad_images}"]))
        used = len(self.examples) - self.bad_images
        return f"{used} records used, {skipped} skipped" + (f" ({detail})" if detail else "")


class PaddingCollator:
    """Right-pads input_ids/labels (and their teacher_ twins), stacks the images present."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _pad(self, rows: list[torch.Tensor], value: int) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)

    def pad_side(self, items: list[dict[str, torch.Tensor]], prefix: str) -> dict[str, torch.Tensor | None]:
        """One side's (student's, or `teacher_*`) items right-padded into a batch, with its attention mask."""
        ids = [item[f"{prefix}input_ids"] for item in items]
        batch: dict[str, torch.Tensor | None] = {
            f"{prefix}input_ids": self._pad(ids, self.pad_token_id),
            f"{prefix}attention_mask": self._pad([torch.ones_like(x) for x in ids], 0),
            f"{prefix}labels": self._pad([item[f"{prefix}labels"] for item in items], IGNORE_INDEX),
            f"{prefix}instruction_mask": self._pad(
                [item[f"{prefix}instruction_mask"] for item in items], False
            ),
        }
        images = [item[f"{prefix}pixel_values"] for item in items if f"{prefix}pixel_values" in item]
        if images:
            batch[f"{prefix}pixel_values"] = torch.stack(images)
        return batch

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = self.pad_side(items, "")
        if "teacher_input_ids" in items[0]:
            batch.update(self.pad_side(items, "teacher_"))
        return batch  # type: ignore[return-value]
