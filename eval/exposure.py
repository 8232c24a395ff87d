"""`python -m eval exposure`: exposure bias of students against their teacher (Align-TI appendix B.4).

    python -m eval exposure --teacher runs/tiny/teacher/final \\
        --student runs/tiny/student-sft/final runs/tiny/student-kd/final runs/ablate/align-ti/final \\
        --data data/shapes/val.json --min-tokens 40 --length 40 --out runs/tiny/exposure

Every sample whose first reply has at least --min-tokens tokens is answered three ways, each
continued for exactly --length tokens: the reference reply (teacher forcing), a reply the student
samples, and a reply the teacher samples (pure sampling at temperature 1; end-of-sequence and the
image token are held back until the length is reached). Along each prefix, the per-step error is
KL(P_T || P_S) of the next-token distributions; summed over steps 1..l and averaged over samples:

    E_train(l)  on the reference prefix            (paper eq. 9)
    E_test(l) = R(l)  on the student's own prefix  (eq. 10 and 12)
    E(l)        on the teacher's prefix            (eq. 13)
    %ExAccErr(l) = (R(l) - E(l)) / E(l) * 100      (eq. 11; Arora et al. 2022)

It prints the figures at a few lengths, writes OUT/exposure.json (every curve and the mean KL per
step), OUT/accumulated_error.png (E_train and E_test against l, the paper's Fig. 2 right) and
OUT/excess_error.png (%ExAccErr against l, one line per student, Fig. 6).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from distill.conversation import generation_prompt, prompt_inputs
from distill.losses import per_position_divergence
from distill.model_names import model_name, unique_names
from distill.modeling import load_llava
from distill.pairing import PairError, check_pair
from distill.records import read_records
from distill.staging import save_figure, write_text_atomic
from eval.backends import default_device
from eval.records import ScoreError


@dataclass
class Sample:
    prompt: str  # the first human turn, "<image>\n..." included
    image: Path | None
    reply: list[int]  # the reference reply's token ids, cut to the analysed length


@dataclass
class Model:
    name: str
    model: Any
    processor: Any

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id


def load(path: Path, device: str, dtype: str, name: str | None = None) -> Model:
    model, processor = load_llava(path, dtype, device=device)
    processor.tokenizer.padding_side = "left"
    return Model(name or model_name(path), model.eval(), processor)


def long_reply_samples(data: Path, tokenizer: Any, min_tokens: int, length: int, limit: int) -> list[Sample]:
    """The records whose first reply has at least `min_tokens` tokens (at most `limit` of them)."""
    samples = []
    for record in read_records(data):
        turns = record.get("conversations") or []
        if len(turns) < 2 or turns[1].get("from") != "gpt":
            continue
        reply = tokenizer(turns[1]["value"], add_special_tokens=False).input_ids
        if len(reply) >= min_tokens:
            image = Path(data).parent / record["image"] if "image" in record else None
            samples.append(Sample(turns[0]["value"], image, reply[:length]))
        if len(samples) == limit:
            break
    if not samples:
        raise ScoreError(
            f"{data}: no record has a first reply of {min_tokens} or more tokens (see --min-tokens)"
        )
    return samples


def first_turn_inputs(model: Model, samples: list[Sample], device: str) -> dict[str, torch.Tensor]:
    """Each sample's first turn in the model's chat template and image size, left-padded."""
    tokenizer = model.processor.tokenizer
    texts = [generation_prompt(tokenizer, s.prompt) for s in samples]
    images = [Image.open(s.image).convert("RGB") for s in samples if s.image is not None]
    return prompt_inputs(model.processor, images, texts).to(device)


@torch.inference_mode()
def sampled_replies(model: Model, samples: list[Sample], length: int, device: str) -> torch.Tensor:
    """`length` tokens per sample, sampled from the model at temperature 1 ([n, length])."""
    inputs = first_turn_inputs(model, samples, device)
    output = model.model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_new_tokens=length,
        max_new_tokens=length,
        suppress_tokens=[model.image_token_id],
    )
    return output[:, inputs["input_ids"].shape[1] :]


@torch.inference_mode()
def reply_logits(model: Model, samples: list[Sample], replies: torch.Tensor, device: str) -> torch.Tensor:
    """The model's next-token logits at each reply step: position t predicts reply token t ([n, L, V])."""
    inputs = first_turn_inputs(model, samples, device)
    replies = replies.to(device)
    input_ids = torch.cat([inputs["input_ids"], replies], dim=1)
    attention = torch.cat([inputs["attention_mask"], torch.ones_like(replies)], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
    output = model.model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        pixel_values=inputs.get("pixel_values"),
        logits_to_keep=replies.shape[1] + 1,
    )
    return output.logits[:, :-1]


def step_kl(
    teacher: Model, student: Model, samples: list[Sample], replies: torch.Tensor, device: str
) -> torch.Tensor:
    """KL(P_T || P_S) of the next-token distributions at each reply step ([n, L]), over the tokenizer's rows."""
    vocab = len(student.processor.tokenizer)
    t_logits = reply_logits(teacher, samples, replies, device)[..., :vocab]
    s_logits = reply_logits(student, samples, replies, device)[..., :vocab]
    n, length, _ = t_logits.shape
    kl = per_position_divergence(
        "forward_kl", t_logits.reshape(n * length, -1), s_logits.reshape(n * length, -1)
    )
    return kl.reshape(n, length).cpu()


def batches(samples: list[Sample], size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, len(samples), size)]


def prefix_kl(
    teacher: Model,
    student: Model,
    samples: list[Sample],
    replies: dict[str, torch.Tensor],
    batch_size: int,
    device: str,
) -> dict[str, torch.Tensor]:
    """Per-step KL on each prefix source ({source: [n, L]})."""
    out = {}
    for source, tokens in replies.items():
        parts = [
            step_kl(teacher, student, samples[part], tokens[part], device)
            for part in batches(samples, batch_size)
        ]
        out[source] = torch.cat(parts)
    return out


def curves(kl: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Accumulated errors and %ExAccErr at l = 1..L, and the mean KL per step of each source."""
    accumulated = {source: values.cumsum(dim=1).mean(dim=0) for source, values in kl.items()}
    e_train, e_test, e_oracle = accumulated["reference"], accumulated["student"], accumulated["teacher"]
    excess = [(r - e) / e * 100 if e > 0 else None for r, e in zip(e_test.tolist(), e_oracle.tolist())]
    return {
        "E_train": e_train.tolist(),
        "E_test": e_test.tolist(),
        "E": e_oracle.tolist(),
        "ex_acc_err_percent": excess,  # None where E(l) = 0 (a student that equals its teacher there)
        **{f"kl_per_step_{source}": values.mean(dim=0).tolist() for source, values in kl.items()},
    }


def report_lines(results: dict[str, dict[str, list[float]]], length: int) -> list[str]:
    marks = sorted({1, max(1, length // 4), max(1, length // 2), length})
    lines = [
        "| student | l | E_train(l) | E_test(l) = R(l) | E(l) | %ExAccErr(l) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in results.items():
        for step in marks:
            i = step - 1
            excess = c["ex_acc_err_percent"][i]
            lines.append(
                f"| {name} | {step} | {c['E_train'][i]:.3f} | {c['E_test'][i]:.3f} | {c['E'][i]:.3f} | "
                + ("n/a (E = 0)" if excess is None else f"{excess:+.1f}")
                + " |"
            )
    return lines


def line_styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """One colour per method: runs named METHOD/SEED share their method's colour and one legend entry."""
    groups = list(dict.fromkeys(name.split("/")[0] for name in names))
    styles, labelled = {}, set()
    for name in names:
        group = name.split("/")[0]
        styles[name] = {
            "color": f"C{groups.index(group) % 10}",
            "label": None if group in labelled else group,
        }
        labelled.add(group)
    return styles


def plot(results: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = line_styles(list(results))
    steps = range(1, len(next(iter(results.values()))["E_train"]) + 1)
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, c in results.items():
        color, label = styles[name]["color"], styles[name]["label"]
        axis.plot(steps, c["E_test"], color=color, label=label and f"{label}: test-time E_test(l)")
        axis.plot(
            steps, c["E_train"], "--", color=color, label=label and f"{label}: training-time E_train(l)"
        )
    axis.set_xlabel("generation step l")
    axis.set_ylabel("accumulated KL(P_T || P_S)")
    axis.set_title("training-time vs test-time accumulated error")
    axis.legend(fontsize=7)
    save_figure(figure, out / "accumulated_error.png")
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, c in results.items():
        values = [float("nan") if v is None else v for v in c["ex_acc_err_percent"]]
        axis.plot(steps, values, **styles[name])
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel("generation step l")
    axis.set_ylabel("%ExAccErr(l)")
    axis.set_title("excess accumulated error (exposure bias)")
    axis.legend(fontsize=8)
    save_figure(figure, out / "excess_error.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, type=Path, help="the teacher model directory")
    parser.add_argument(
        "--student", required=True, nargs="+", type=Path, help="one or more student directories"
    )
    parser.add_argument("--data", required=True, type=Path, help="LLaVA-format JSON (held out from training)")
    parser.add_argument(
        "--min-tokens", type=int, default=100, help="keep samples whose first reply is this long"
    )
    parser.add_argument("--length", type=int, default=100, help="steps analysed (at most --min-tokens)")
    parser.add_argument("--samples", type=int, default=1000, help="at most this many samples")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward / generate call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled prefixes")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when there is one)")
    parser.add_argument("--out", type=Path, default=Path("runs/exposure"), help="JSON and plots go here")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.length <= args.min_tokens:
        raise ScoreError("--length must be between 1 and --min-tokens (every reference reply must reach it)")
    device = args.device or default_device()
    teacher = load(args.teacher, device, args.dtype)
    samples = long_reply_samples(
        args.data, teacher.processor.tokenizer, args.min_tokens, args.length, args.samples
    )
    print(f"{len(samples)} samples with a first reply of {args.min_tokens}+ tokens; {args.length} steps each")
    torch.manual_seed(args.seed)
    reference = torch.tensor([s.reply for s in samples])
    teacher_replies = torch.cat(
        [
            sampled_replies(teacher, samples[p], args.length, device).cpu()
            for p in batches(samples, args.batch_size)
        ]
    )
    results = {}
    for path, name in tqdm(
        list(zip(args.student, unique_names(args.student))), desc="students", unit="model"
    ):
        student = load(path, device, args.dtype, name)
        try:
            check_pair(student.model.config, student.processor, teacher.model.config, teacher.processor)
        except PairError as error:
            raise ScoreError(f"{path}: {error}") from None
        torch.manual_seed(args.seed)
        student_replies = torch.cat(
            [
                sampled_replies(student, samples[p], args.length, device).cpu()
                for p in batches(samples, args.batch_size)
            ]
        )
        replies = {"reference": reference, "student": student_replies, "teacher": teacher_replies}
        results[student.name] = curves(prefix_kl(teacher, student, samples, replies, args.batch_size, device))
    print("\n".join(report_lines(results, args.length)))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "teacher": str(args.teacher),
        "students": [str(p) for p in args.student],
        "data": str(args.data),
        "samples": len(samples),
        "min_tokens": args.min_tokens,
        "length": args.length,
        "seed": args.seed,
        "curves": results,
    }
    write_text_atomic(args.out / "exposure.json", json.dumps(summary, indent=1))
    plot(results, args.out)
    print(
        f"written: {args.out / 'exposure.json'}, {args.out / 'accumulated_error.png'}, {args.out / 'excess_error.png'}"
    )
    return 0
