"""`python -m export bench`: size, load time, time to first token, decode speed and memory of each format.

    python -m export bench --model runs/tiny/student-kd/final \\
        --export exports/student-kd-onnx-none exports/student-kd-onnx-int8 exports/student-kd-onnx-int4

Every format runs in its own process (so its peak RSS is its own) on the same image + question
prompt from the held-out split: load the model (timed), one warm-up generation, then --repeats
timed generations of exactly --new-tokens greedy tokens (end-of-sequence held back), each new token
time-stamped as it is chosen. Time to first token is the median time from the call to the first
token (image and prompt through the model); decode speed the median of (new tokens - 1) / (time from
the first token to the last), both from the same generations. Peak RSS is the
process's high-water mark, and "above imports" subtracts what the process held before loading the
model, its runtime imported. Each process imports only its runtime, as a deployment would: PyTorch
torch and transformers; ONNX Runtime the kit's runner, whose processor brings transformers and torch;
llama.cpp llama-cpp-python, numpy and Pillow (the prompt's chat text is rendered once in the parent
process). Ratios are against PyTorch fp32 measured in the same run.

The formats are loaded one after the other and then take their generations in turn
(distill/bench_workers.py): round r of every format runs before round r + 1 of any, so that a shared
VM's drift over minutes slows every format alike, and "decode / PyTorch" is the median of the
per-round ratios, the middle half of them in brackets. All formats are in memory at once;
--sequential measures one after another instead (a ratio of medians then).
A GGUF export gives one row per language-model file (llama.cpp through llama-cpp-python, the image
through the export's mmproj file: export/gguf_runner.py); its size counts the mmproj too. Should a
GGUF export have no mmproj (one written before the vision tower was exported), every format answers
the question without its image.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from distill.bench_workers import (
    TOUCH_BELOW_S,
    Worker,
    WorkerFailed,
    commands,
    protocol_channel,
    ratio_text,
    reply,
    take_turns,
)
from distill.process_memory import current_rss_mib, peak_rss_mib
from distill.staging import write_text_atomic


def first_held_out_prompt(data: Path) -> tuple[Path, str]:
    """The image and first question of the first held-out record with an image."""
    from distill.records import read_records

    for record in read_records(data):
        if "image" in record:
            return data.parent / record["image"], record["conversations"][0]["value"]
    raise ValueError(f"{data}: no record with an image")


def timed_generation(generate: Any, new_tokens: int) -> dict[str, float]:
    """One generation's seconds to the first token and decode tokens/s after it.

    `generate(tokens, mark)` must call `mark()` as each new token is chosen."""
    marks: list[float] = []
    start = time.perf_counter()
    generate(new_tokens, lambda: marks.append(time.perf_counter()))
    if len(marks) != new_tokens:
        raise RuntimeError(f"the generation made {len(marks)} tokens, not {new_tokens}")
    return {"first": marks[0] - start, "rate": (new_tokens - 1) / max(marks[-1] - marks[0], 1e-9)}


class _Marker:
    """A transformers streamer that calls `mark()` for each new token (its first put() is the prompt)."""

    def __init__(self, mark: Any) -> None:
        self.mark, self.prompt_seen = mark, False

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.mark()
        self.prompt_seen = True

    def end(self) -> None:
        pass


def chat_text(model_dir: Path, question: str) -> str:
    """The question as the checkpoint's chat template writes it (its processor's, in llava-hf's layout)."""
    from distill.conversation import generation_prompt
    from distill.modeling import load_processor

    return generation_prompt(load_processor(model_dir).tokenizer, question)


def prompt_job(args: argparse.Namespace, text_only: bool) -> dict[str, Any]:
    """The image and chat text every format is timed on, prepared once in the parent process."""
    image_path, question = first_held_out_prompt(args.data)
    if text_only:
        question = question.replace("<image>\n", "").replace("<image>", "")
    return {
        "image": None if text_only else str(image_path),
        "text": chat_text(args.model, question),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
    }


def import_runtime(kind: str, path: Path) -> None:
    """Import what one format runs on, so that "above imports" starts after it: for a checkpoint also
    its model families' modeling code, which transformers imports when the first model of a family is
    built (about 130 MiB for LLaVA + Qwen2 + SigLIP, the same for any model of those families)."""
    if kind == "pytorch":
        import torch  # noqa: F401

        import distill.modeling  # noqa: F401

        import_model_modules(path)
    elif kind == "onnx":
        import export.onnx_runner
    else:
        import llama_cpp.mtmd_cpp  # noqa: F401

        import export.gguf_runner  # noqa: F401


def import_model_modules(checkpoint: Path) -> None:
    """transformers' modeling modules of a LLaVA checkpoint: LLaVA's, its LLM's and its vision tower's."""
    import importlib

    from transformers.models.auto.configuration_auto import model_type_to_module_name

    config = json.loads((checkpoint / "config.json").read_text())
    for part in (config, config.get("text_config", {}), config.get("vision_config", {})):
        if part.get("model_type"):
            module = model_type_to_module_name(part["model_type"])
            importlib.import_module(f"transformers.models.{module}.modeling_{module}")


def load_format(kind: str, path: Path, job: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """In a fresh process: load one format; returns its `generate(tokens, mark)` and what is known of it
    so far (size, load time, the RSS before loading).

    Each format imports only what it runs on: PyTorch torch and transformers; ONNX Runtime its runner,
    whose processor comes from transformers (and so torch); llama.cpp llama-cpp-python, numpy and
    Pillow, as a deployment of the GGUF files would. The process's peak RSS is that runtime's."""
    from PIL import Image

    image = Image.open(job["image"]).convert("RGB") if job["image"] else None
    text, threads = job["text"], job["threads"]
    import_runtime(kind, path)
    before = current_rss_mib()
    start = time.perf_counter()
    if kind == "pytorch":
        import torch

        from distill.conversation import prompt_inputs
        from distill.modeling import load_llava

        torch.set_num_threads(threads)
        model, processor = load_llava(path)
        model.eval()
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))

        @torch.inference_mode()
        def generate(tokens: int, mark: Any) -> None:
            # the processor inside the timing, as the exports' runners process their inputs inside theirs
            inputs = prompt_inputs(processor, [image], [text])
            streamer = _Marker(mark)
            model.generate(
                **inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, streamer=streamer
            )
    elif kind == "onnx":
        from export.onnx_runner import OnnxLlava

        runner = OnnxLlava(path, threads=threads)
        size = sum(p.stat().st_size for p in runner.weight_files())

        def generate(tokens: int, mark: Any) -> None:
            runner.generate([image], [text], tokens, ignore_eos=True, on_step=lambda _: mark())
    else:
        from export.gguf_runner import GgufLlava

        gguf = GgufLlava(path, kind.removeprefix("gguf:"), threads=threads)
        size = sum(p.stat().st_size for p in gguf.weight_files())

        def generate(tokens: int, mark: Any) -> None:
            for _ in gguf.stream(image, text, tokens, ignore_eos=True):  # the prompt decoded afresh each call
                mark()

    return generate, {
        "size_mib": size / 2**20,
        "load_s": time.perf_counter() - start,
        "rss_before_mib": before,
    }


def worker(kind: str, path: Path, job: dict[str, Any]) -> int:
    """A worker process (distill/bench_workers.py): load and warm up, then one timed generation per
    "round", and the memory figures on "finish". With "round touch", a generation shorter than
    TOUCH_BELOW_S is preceded by an untimed one, so that a round taken after another format's starts on
    caches and thread pools of its own (llama.cpp's decoding of the tiny student, at 0.2 ms a token,
    otherwise shows its idle threads waking); a longer one is not worth repeating."""
    channel = protocol_channel()
    generate, known = load_format(kind, path, job)
    start = time.perf_counter()
    generate(job["new_tokens"], lambda: None)  # warm-up
    short = time.perf_counter() - start < TOUCH_BELOW_S
    reply(channel, {"load_s": known["load_s"]})
    for command in commands():
        if command in ("round", "round touch"):
            if command == "round touch" and short:
                generate(job["new_tokens"], lambda: None)
            reply(channel, timed_generation(generate, job["new_tokens"]))
        elif command == "finish":
            peak = peak_rss_mib()
            reply(
                channel,
                {
                    "size_mib": known["size_mib"],
                    "load_s": known["load_s"],
                    "peak_rss_mib": peak,
                    "peak_rss_above_imports_mib": peak - known["rss_before_mib"],
                    "torch_imported": "torch" in sys.modules,
                },
            )
            return 0
    return 0


def start_worker(name: str, kind: str, path: Path, job: dict[str, Any]) -> Worker:
    command = [sys.executable, "-m", "export.bench", "--worker", kind, str(path), json.dumps(job)]
    return Worker.started(command, f"{name} ({path})")


def measure_formats(
    todo: list[tuple[str, str, Path]], job: dict[str, Any], sequential: bool
) -> dict[str, dict[str, Any]]:
    """Every format's row: medians over its rounds, and each round's figures for per-round ratios
    (distill/bench_workers.take_turns: in turn, or one after another with `sequential`). A format that
    fails stops the bench with its error."""
    starters = [functools.partial(start_worker, name, kind, path, job) for name, kind, path in todo]
    rows = {}
    for (name, _, _), outcome in zip(todo, take_turns(starters, job["repeats"], sequential)):
        if isinstance(outcome, WorkerFailed):
            raise outcome
        final, rounds = outcome
        firsts = [r["first"] for r in rounds]
        rates = [r["rate"] for r in rounds]
        rows[name] = {
            **final,
            "first_token_s": statistics.median(firsts),
            "decode_tokens_per_s": statistics.median(rates),
            "rounds": {"first_token_s": firsts, "decode_tokens_per_s": rates},
        }
    return rows


def formats(exports: list[Path]) -> list[tuple[str, str, Path]]:
    """(row name, kind, path) for each export folder: one row per ONNX export, one per GGUF file."""
    from export.gguf_runner import gguf_file_label
    from export.onnx_export import label

    rows = []
    for folder in exports:
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{folder}: not an export folder (no manifest.json)")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") == "llava-gguf":
            rows += [
                (gguf_file_label(name, folder, manifest), f"gguf:{name}", folder)
                for name in manifest["files"]
            ]
        else:
            rows.append((f"onnx {label(manifest)} ({folder.name})", "onnx", folder))
    return rows


def has_mmproj(folder: Path) -> bool:
    return bool(json.loads((folder / "manifest.json").read_text()).get("vision"))


def decode_ratio(r: dict[str, Any], base: dict[str, Any], in_turn: bool) -> str:
    """r's decode speed against PyTorch's (distill/bench_workers.ratio_text)."""
    if r is base:
        return "1.00x"
    return ratio_text(r["rounds"]["decode_tokens_per_s"], base["rounds"]["decode_tokens_per_s"], in_turn)


def report(rows: dict[str, dict[str, Any]], args: argparse.Namespace, text_only: bool) -> str:
    base, in_turn = rows["pytorch fp32"], not args.sequential
    prompt = (
        "one question (text only: a GGUF export without mmproj is compared)"
        if text_only
        else "one image + question"
    )
    how = (
        "the formats taking their generations in turn; decode / PyTorch: median of the per-round ratios (middle half)"
        if in_turn
        else "one format after another"
    )
    lines = [
        f"{args.model}: {prompt} from {args.data}, {args.new_tokens} greedy tokens, median of "
        f"{args.repeats}, {args.threads} threads, each format in its own process, {how}:",
        "| format | size (MiB) | load (s) | first token (ms) | decode (tokens/s) | peak RSS (MiB) "
        "| above imports (MiB) | decode / PyTorch | peak RSS / PyTorch | RSS above imports / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['size_mib']:.2f} | {r['load_s']:.2f} | {1000 * r['first_token_s']:.1f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['peak_rss_above_imports_mib']:.0f} | "
            f"{decode_ratio(r, base, in_turn)} | "
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | "
            f"{r['peak_rss_above_imports_mib'] / max(base['peak_rss_above_imports_mib'], 1e-9):.2f}x |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the PyTorch checkpoint (the baseline)")
    parser.add_argument(
        "--export",
        nargs="*",
        default=[],
        type=Path,
        help="ONNX and GGUF export folders to time (every GGUF file)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/shapes/test.json"), help="held-out questions")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per format (median)")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="measure one format after another instead of in turn (formats that do not fit in memory together)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every format")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


def run(args: argparse.Namespace) -> int:
    todo = formats(args.export)
    text_only = any(kind.startswith("gguf") and not has_mmproj(path) for _, kind, path in todo)
    job = prompt_job(args, text_only)
    rows = measure_formats([("pytorch fp32", "pytorch", args.model), *todo], job, args.sequential)
    print(report(rows, args, text_only))
    if args.out:
        write_text_atomic(args.out, json.dumps({"model": str(args.model), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    kind, path, job = sys.argv[2:5]
    sys.exit(worker(kind, Path(path), json.loads(job)))
