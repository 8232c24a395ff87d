"""`python -m serve bench`: time to first token, decode speed, latency and peak memory per model and back end.

    python -m serve bench --models runs/tiny/student-kd/final runs/tiny/teacher/final --out runs/serve-bench
    python -m serve bench --models exports/student-kd-gguf --quant q4_k_m          # a GGUF export on llama.cpp
    python -m serve bench --url http://127.0.0.1:8000 --concurrency 16 --requests 200   # load on a server

Engine mode: each model (a checkpoint, or an ONNX / GGUF export: the back end follows, or --backends
names them for checkpoints) runs in a worker process of its own (serve/bench_worker.py), so its peak
memory is its own (RSS on CPU, CUDA peak allocated on GPU; for PyTorch on CPU also the peak of its
tensors, weights included), and serves the model over HTTP too (the real app on uvicorn, a local
port). After --warm-up untimed rounds, --requests timed rounds, each one completion of exactly
--new-tokens greedy tokens on one image + question from the engine, then the same request streamed
through the API: TTFT and decode speed (medians; each token time-stamped as it is chosen), end-to-end
latency p50 / p95, and the API's TTFT, so "API TTFT / engine TTFT" is the server's own overhead,
measured in alternation so that both see the machine in the same state.

The models are loaded one after the other and then take their rounds in turn (distill/bench_workers.py):
round r of every model runs before round r + 1 of any, a short round starting with an untimed
repeat so that its caches are its own (serve/bench_worker.py). A shared VM's speed drifts by tens of percent over
minutes, so each ratio to the first model is the median of the per-round ratios (the middle half
of them in brackets): neighbouring rounds, not moments minutes apart. All models are in memory at
once; --sequential measures one after another instead (ratios of medians then). LLaVA-1.5-7B is one of
the models when its llava-hf checkpoint folder is given; on CPU without it, the tiny teacher stands in.
Writes bench.json (every round's figures too), bench.md and bench.png to --out.

Load mode: --concurrency clients send --requests streaming completions to a running server; prints
throughput, latency percentiles, errors, and the server's resident memory (from its /metrics) after a
warm-up and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from distill.bench_workers import Worker, WorkerFailed, ratio_text, take_turns
from distill.staging import save_figure, write_text_atomic
from serve.bench_worker import WARM_UP, streaming_request
from serve.engines import DTYPES, add_cuda_graphs_argument

DEFAULT_MODELS = [Path("runs/tiny/student-kd/final"), Path("runs/tiny/teacher/final")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def probe_image_path(data: Path) -> Path:
    """The first held-out image (found by the parent, so a worker need not import the data pipeline)."""
    from export.bench import first_held_out_prompt

    return first_held_out_prompt(data)[0]


def worker_for(model: Path, backend: str | None, args: argparse.Namespace) -> Worker:
    """A worker process with the model loaded, served and warmed up (serve/bench_worker.py)."""
    spec = [
        str(model),
        backend,
        args.quant,
        str(probe_image_path(args.data)),
        args.new_tokens,
        args.threads,
        args.dtype,
        args.warm_up,
        args.cuda_graphs,
    ]
    command = [sys.executable, "-m", "serve.bench_worker", json.dumps(spec)]
    return Worker.started(command, f"{model} ({backend or 'auto'})")


def measure_models(
    args: argparse.Namespace, backends: list[str | None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every model's row and every failure's message (distill/bench_workers.take_turns: in turn, or
    one after another with --sequential). A model that fails costs its row, not the others'."""
    starters = [
        functools.partial(worker_for, model, backend, args) for model, backend in zip(args.models, backends)
    ]
    rows, failures = [], []
    for outcome in take_turns(starters, args.requests, args.sequential):
        if isinstance(outcome, WorkerFailed):
            failures.append(str(outcome))
            print(f"serve bench: {outcome}", file=sys.stderr, flush=True)
        else:
            rows.append(row(*outcome))
    return rows, failures


def row(final: dict[str, Any], rounds: list[dict[str, Any] | None]) -> dict[str, Any]:
    """A model's row: medians and percentiles over its rounds, and each round's figures (milliseconds,
    tokens/s; None for a round it did not take) for the per-round ratios."""
    taken = [r for r in rounds if r is not None]
    api = [r["api_ttft"] for r in taken if r["api_ttft"] is not None]
    latency = [r["latency"] for r in taken]
    return {
        **final,
        "ttft_ms": 1000 * statistics.median(r["ttft"] for r in taken),
        "decode_tokens_per_s": statistics.median(r["speed"] for r in taken),
        "latency_p50_ms": 1000 * percentile(latency, 50),
        "latency_p95_ms": 1000 * percentile(latency, 95),
        "api_ttft_ms": 1000 * statistics.median(api) if api else None,
        "rounds": {
            "ttft_ms": [None if r is None else 1000 * r["ttft"] for r in rounds],
            "decode_tokens_per_s": [None if r is None else r["speed"] for r in rounds],
        },
    }


def compared(r: dict[str, Any], base: dict[str, Any], key: str, in_turn: bool) -> str:
    """r's figure against the baseline's (distill/bench_workers.ratio_text)."""
    return "1.00x" if r is base else ratio_text(r["rounds"][key], base["rounds"][key], in_turn)


def label(row: dict[str, Any]) -> str:
    """The back end, with the weights' dtype for torch: "torch bfloat16", "torch bfloat16 + CUDA graphs"."""
    name = f"{row['backend']} {row['dtype']}" if row.get("dtype") else row["backend"]
    return name + (" + CUDA graphs" if row.get("cuda_graphs") else "")


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base, in_turn = rows[0], not args.sequential
    how = (
        "the models taking their rounds in turn; ratios against {}: median of the per-round ratios (middle half)"
        if in_turn
        else "one model after another; ratios of medians against {}"
    ).format(f"{base['model']} ({label(base)})")
    lines = [
        f"one image + question, {args.new_tokens} greedy tokens, {args.requests} rounds after {args.warm_up} warm-ups, "
        f"{args.threads} threads, each model in its own process, {how}:",
        "| model | back end | TTFT (ms) | decode (tokens/s) | latency p50 / p95 (ms) | API TTFT (ms) | API / engine TTFT (+ms) "
        f"| weight files (MiB) | {base['memory_kind']} (MiB) | peak tensors (MiB) | peak RSS, process (MiB) "
        "| TTFT vs first | decode vs first | memory vs first | tensors vs first | process RSS vs first |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        api = r["api_ttft_ms"]
        overhead = "n/a" if api is None else f"{api / r['ttft_ms']:.2f}x (+{api - r['ttft_ms']:.1f})"
        lines.append(
            f"| {r['model']} | {label(r)} | {r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['latency_p50_ms']:.1f} / {r['latency_p95_ms']:.1f} | {or_na(api)} | {overhead} | "
            f"{r['weights_mib']:.1f} | "
            f"{r['peak_memory_mib']:.0f} | {or_na(r.get('peak_tensor_mib'))} | {r['peak_rss_mib']:.0f} | "
            f"{compared(r, base, 'ttft_ms', in_turn)} | {compared(r, base, 'decode_tokens_per_s', in_turn)} | "
            f"{r['peak_memory_mib'] / base['peak_memory_mib']:.2f}x | "
            f"{ratio(r.get('peak_tensor_mib'), base.get('peak_tensor_mib'))} | "
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['model']}\n({label(r)})" for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(4 * 3, 3.6))
    for axis, key, title in zip(
        axes,
        ("ttft_ms", "decode_tokens_per_s", "peak_memory_mib"),
        ("time to first token (ms)", "decode (tokens/s)", f"{rows[0]['memory_kind']} (MiB)"),
    ):
        axis.bar(names, [r[key] for r in rows], color="#4477aa")
        axis.set_title(title)
        axis.tick_params(axis="x", labelsize=7)
    save_figure(figure, out)


async def load(
    url: str, concurrency: int, requests: int, new_tokens: int, image: Any, api_key: str | None
) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = streaming_request(image, new_tokens)
    latencies, errors, statuses = [], 0, {}

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                text = "".join([line async for line in response.aiter_lines()])
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code != 200 or "[DONE]" not in text or '"error"' in text:
                    errors += 1
                    return
        except httpx.HTTPError:
            errors += 1
            return
        latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        for _ in range(2):
            await one(client)  # warm-up: neither timed nor counted
        latencies.clear()
        statuses.clear()
        errors = 0
        warm_rss = await server_rss(client)
        queue = list(range(requests))
        start = time.perf_counter()

        async def worker() -> None:
            while queue:
                queue.pop()
                await one(client)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after_rss = await server_rss(client)
    return {
        "url": url,
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "statuses": statuses,
        "throughput_rps": len(latencies) / elapsed,
        "latency_p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "latency_p95_ms": 1000 * percentile(latencies, 95) if latencies else None,
        "latency_p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "server_rss_after_warmup_mib": warm_rss,
        "server_rss_after_run_mib": after_rss,
    }


async def server_rss(client: Any) -> float | None:
    response = await client.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


def load_report(r: dict[str, Any]) -> str:
    growth = ""
    if r["server_rss_after_warmup_mib"] and r["server_rss_after_run_mib"]:
        change = r["server_rss_after_run_mib"] / r["server_rss_after_warmup_mib"] - 1
        growth = (
            f"; server RSS {r['server_rss_after_warmup_mib']:.0f} MiB after warm-up, "
            f"{r['server_rss_after_run_mib']:.0f} MiB after the run ({100 * change:+.1f}%)"
        )
    return (
        f"{r['url']}: {r['requests']} streaming requests at concurrency {r['concurrency']}: {r['errors']} errors "
        f"(statuses {r['statuses']}), {r['throughput_rps']:.2f} requests/s, latency p50 "
        f"{or_na(r['latency_p50_ms'], 0, ' ms')}, p95 {or_na(r['latency_p95_ms'], 0, ' ms')}, "
        f"p99 {or_na(r['latency_p99_ms'], 0, ' ms')}{growth}"
    )


def or_na(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A figure that may be missing (no request succeeded, no tensor peak off PyTorch): "n/a" then."""
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def ratio(value: float | None, base: float | None) -> str:
    return "n/a" if value is None or not base else f"{value / base:.2f}x"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        type=Path,
        default=DEFAULT_MODELS,
        help="checkpoints or exports; the first is the baseline of the ratios",
    )
    parser.add_argument(
        "--backends", nargs="+", help="back ends per model, in order (default: what each folder holds)"
    )
    parser.add_argument("--quant", help="the file of GGUF exports (default: each export's first)")
    parser.add_argument(
        "--data", type=Path, default=Path("data/shapes/test.json"), help="held-out records (the image)"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--requests", type=int, default=5, help="timed rounds per model (engine mode) or requests (load mode)"
    )
    parser.add_argument(
        "--warm-up", type=int, default=WARM_UP, help="untimed completions before the timed ones"
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="checkpoints' precision (default: as saved)"
    )
    add_cuda_graphs_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="measure one model after another instead of in turn (models that do not fit in memory together)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/serve-bench"), help="bench.json, bench.md, bench.png"
    )
    parser.add_argument("--url", help="load mode: a running server's base URL")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--api-key")


def run(args: argparse.Namespace) -> int:
    if args.url:
        from PIL import Image

        result = asyncio.run(
            load(
                args.url.rstrip("/"),
                args.concurrency,
                args.requests,
                args.new_tokens,
                Image.open(probe_image_path(args.data)).convert("RGB"),
                args.api_key,
            )
        )
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "load.json", json.dumps(result, indent=1))
        print(load_report(result))
        return 0 if result["errors"] == 0 else 1
    backends = args.backends or [None] * len(args.models)
    if len(backends) != len(args.models):
        raise ValueError(f"{len(backends)} back ends for {len(args.models)} models")
    rows, failures = measure_models(args, backends)
    if not rows:
        raise RuntimeError(f"no model could be measured ({len(failures)} failed)")
    table = report(rows, args)
    if failures:
        table += f"\n{len(failures)} of {len(args.models)} models failed: " + "; ".join(
            f.splitlines()[0] for f in failures
        )
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.out / "bench.json",
        json.dumps({"rows": rows, "failed": failures, "new_tokens": args.new_tokens}, indent=1),
    )
    write_text_atomic(args.out / "bench.md", table + "\n")
    plot(rows, args.out / "bench.png")
    return 1 if failures else 0
