"""`python -m serve bench`: time to first token, decode speed, latency and peak memory per model and back end.

    python -m serve bench --models runs/tiny/student-kd/final runs/tiny/teacher/final --out runs/serve-bench
    python -m serve bench --models exports/student-kd-gguf --quant q4_k_m          # a GGUF export on llama.cpp
    python -m serve bench --url http://127.0.0.1:8000 --concurrency 16 --requests 200   # load on a server

Engine mode: each model (a checkpoint, or an ONNX / GGUF export: the back end follows, or --backends
names them for checkpoints) runs in its own process, so its peak memory is its own (RSS on CPU, CUDA
peak allocated on GPU; for PyTorch on CPU also the peak of its tensors, weights included, from one
more completion under torch.profiler: serve/tensor_memory.py). The same process also serves the model over HTTP (the real app on uvicorn,
a local port). Three warm-up rounds, then --requests rounds, each one completion of exactly
--new-tokens greedy tokens on one image + question from the engine, then the same request streamed
through the API: TTFT and decode speed (medians; each token time-stamped as it is chosen),
end-to-end latency p50 / p95, and the API's TTFT, so "API TTFT / engine TTFT" is the server's own
overhead, measured in alternation so that both see the machine in the same state. Ratios are
against the first model, measured in the same run. LLaVA-1.5-7B is one of the models when its
llava-hf checkpoint folder is given; on CPU without it, the tiny teacher stands in. Writes
bench.json, bench.md and bench.png to --out.

Load mode: --concurrency clients send --requests streaming completions to a running server; prints
throughput, latency percentiles, errors, and the server's resident memory (from its /metrics) after a
warm-up and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.staging import save_figure, write_text_atomic
from serve.engines import DTYPES, add_cuda_graphs_argument

DEFAULT_MODELS = [Path("runs/tiny/student-kd/final"), Path("runs/tiny/teacher/final")]
JSON_HEADERS = {"Content-Type": "application/json"}
QUESTION = "What color is the circle? Describe the picture."
WARM_UP = (
    3  # untimed completions first: the first calls of a runtime (and of a fresh HTTP connection) are slow
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def probe_image_path(data: Path) -> Path:
    """The first held-out image (found by the parent, so a worker need not import the data pipeline)."""
    from export.bench import first_held_out_prompt

    return first_held_out_prompt(data)[0]


def streaming_request(image: Any, new_tokens: int) -> dict[str, Any]:
    """The benchmark's chat request: the image as a data: URL, the question, greedy, streamed."""
    from serve.images import to_data_url

    content = [
        {"type": "image_url", "image_url": {"url": to_data_url(image)}},
        {"type": "text", "text": QUESTION},
    ]
    return {
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": new_tokens,
        "stream": True,
    }


def peak_memory_mib(before_load: float) -> tuple[float, str]:
    """CUDA peak allocated on a GPU; on CPU the peak RSS above what the process held before loading the
    model (Python and the back end's runtime, imported first, so the ratios are the models')."""
    from distill.process_memory import peak_rss_mib

    torch = sys.modules.get("torch")  # only the torch engine imports it
    if torch is not None and torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20, "CUDA peak allocated"
    return peak_rss_mib() - before_load, "peak RSS above imports"


def engine_completion(engine: Any, image: Any, new_tokens: int) -> list[float]:
    """One completion of exactly new_tokens, timed from the chat messages (the prompt is rendered and
    measured inside the timing, as the API does): the start, then one time stamp per token."""
    from serve.sampling import Sampler

    messages = [{"role": "user", "content": f"{engine.image_text}\n{QUESTION}"}]
    ignore_eos = set(engine.eos_ids)
    engine.eos_ids = set()
    try:
        start = time.perf_counter()
        prompt = engine.prompt(messages, [image])
        return [start] + [time.perf_counter() for _ in engine.stream(prompt, Sampler(0.0), new_tokens)]
    finally:
        engine.eos_ids = ignore_eos


@contextlib.contextmanager
def local_server(engine: Any, new_tokens: int) -> Iterator[tuple[Any, http.client.HTTPConnection]]:
    """The real app on uvicorn on a free local port, in a thread; yields it and a keep-alive
    connection to it."""
    import uvicorn

    from serve.app import Settings, create_app

    app = create_app(engine, Settings(max_tokens_cap=max(new_tokens, 1024)))
    config = uvicorn.Config(app, port=0, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        yield app, connection
    finally:
        connection.close()
        server.should_exit = True
        thread.join(timeout=10)


def api_first_content(connection: http.client.HTTPConnection, payload: bytes) -> float | None:
    """Seconds from sending a streamed completion (its JSON body already encoded) to reading its first
    content chunk; None if none came. The client is the standard library's HTTP/1.1 connection, read
    line by line, so the figure is the server's: httpx's streaming reader added 1.4 ms to the tiny
    student's 5 ms here, more than the server's own overhead."""
    start = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=payload, headers=JSON_HEADERS)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the API answered {response.status}: {response.read()[:300]!r}")
    first = None
    for line in iter(response.readline, b""):
        if first is None and line.startswith(b"data: {") and b'"content"' in line:
            first = time.perf_counter() - start
    return first


def paired_runs(
    engine: Any, image: Any, new_tokens: int, requests: int, warm_up: int = WARM_UP
) -> dict[str, list[float]]:
    """Engine completions and the same completions through the API, alternated one of each per round,
    so both see the machine in the same state (a shared VM drifts by tens of percent over a run), and
    both on the server's engine thread (the runtimes' thread pools belong to the thread that calls
    them: switching threads between calls slowed llama.cpp's decoding fourfold here): TTFT, decode
    speed and latency from the engine's, TTFT from the API's."""
    ttft, speed, latency, api = [], [], [], []
    with local_server(engine, new_tokens) as (app, connection):
        payload = json.dumps(streaming_request(image, new_tokens)).encode()
        engine_thread = app.state.gate.executor
        for index in range(requests + warm_up):
            marks = engine_thread.submit(engine_completion, engine, image, new_tokens).result()
            first = api_first_content(connection, payload)
            if index < warm_up:
                continue
            ttft.append(marks[1] - marks[0])
            speed.append((len(marks) - 2) / max(marks[-1] - marks[1], 1e-9))
            latency.append(marks[-1] - marks[0])
            if first is not None:
                api.append(first)
    return {"ttft": ttft, "speed": speed, "latency": latency, "api_ttft": api}


def measure(
    model: str,
    backend: str | None,
    quant: str | None,
    data: str,
    new_tokens: int,
    requests: int,
    threads: int,
    dtype: str = "auto",
    warm_up: int = WARM_UP,
    cuda_graphs: bool = True,
) -> dict[str, Any]:
    """Run in a fresh process: one model on one back end. The process imports what that back end runs
    on and no more (a GGUF export: llama.cpp, no PyTorch or transformers), as its deployment would."""
    from PIL import Image

    from distill.process_memory import current_rss_mib, peak_rss_mib
    from serve.engines import detect_backend, open_engine

    image = Image.open(data).convert("RGB")
    import uvicorn  # noqa: F401

    import serve.app  # imported before the baseline, like every model's runtime
    from export.bench import import_runtime

    chosen = backend or detect_backend(Path(model))
    import_runtime({"torch": "pytorch", "onnx": "onnx"}.get(chosen, "gguf"), Path(model))
    if chosen == "torch":
        import serve.torch_engine  # noqa: F401

    before = current_rss_mib()
    start = time.perf_counter()
    on_torch = chosen == "torch"  # --dtype is the checkpoints' only
    engine = open_engine(model, backend, quant, threads, dtype if on_torch else "auto", cuda_graphs)
    load = time.perf_counter() - start
    runs = paired_runs(engine, image, new_tokens, requests, warm_up)
    api = runs["api_ttft"]
    memory, memory_kind = peak_memory_mib(before)
    process_peak = peak_rss_mib()
    tensors = None
    on_cpu = str(getattr(engine, "device", "cpu")).startswith("cpu")
    if engine.backend == "torch" and on_cpu:  # on a GPU, CUDA peak allocated is the tensors' peak
        from serve.tensor_memory import peak_tensor_mib

        tensors = peak_tensor_mib(engine.model, lambda: engine_completion(engine, image, new_tokens))
    return {
        "model": engine.name,
        "backend": engine.backend,
        "dtype": getattr(engine, "weights_dtype", None),
        "cuda_graphs": getattr(engine, "graphs_on", False),
        "load_s": load,
        "ttft_ms": 1000 * statistics.median(runs["ttft"]),
        "decode_tokens_per_s": statistics.median(runs["speed"]),
        "latency_p50_ms": 1000 * percentile(runs["latency"], 50),
        "latency_p95_ms": 1000 * percentile(runs["latency"], 95),
        "api_ttft_ms": 1000 * statistics.median(api) if api else None,
        "weights_mib": sum(f.stat().st_size for f in engine.weight_files()) / 2**20,
        "peak_memory_mib": memory,
        "memory_kind": memory_kind,
        "peak_tensor_mib": tensors,
        "peak_rss_mib": process_peak,  # the whole process: Python, the runtime, the server, the model
        "torch_imported": "torch" in sys.modules,
    }


def run_worker(model: Path, backend: str | None, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "serve.bench",
        "--worker",
        json.dumps(
            [
                str(model),
                backend,
                args.quant,
                str(probe_image_path(args.data)),
                args.new_tokens,
                args.requests,
                args.threads,
                args.dtype,
                args.warm_up,
                args.cuda_graphs,
            ]
        ),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {model} ({backend or 'auto'}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(row: dict[str, Any]) -> str:
    """The back end, with the weights' dtype for torch: "torch bfloat16", "torch bfloat16 + CUDA graphs"."""
    name = f"{row['backend']} {row['dtype']}" if row.get("dtype") else row["backend"]
    return name + (" + CUDA graphs" if row.get("cuda_graphs") else "")


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = rows[0]
    lines = [
        f"one image + question, {args.new_tokens} greedy tokens, {args.requests} requests after {args.warm_up} warm-ups, "
        f"{args.threads} threads, each model in its own process; ratios against {base['model']} ({label(base)}):",
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
            f"{r['ttft_ms'] / base['ttft_ms']:.2f}x | "
            f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x | {r['peak_memory_mib'] / base['peak_memory_mib']:.2f}x | "
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
        "--requests", type=int, default=5, help="timed completions per model (after a warm-up)"
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
    rows, failures = [], []
    for model, backend in zip(args.models, backends):  # a model that fails costs its row, not the others'
        try:
            rows.append(run_worker(model, backend, args))
        except RuntimeError as error:
            failures.append(str(error))
            print(f"serve bench: {error}", file=sys.stderr, flush=True)
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


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(measure(*json.loads(sys.argv[2]))))
