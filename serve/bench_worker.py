"""One model under `python -m serve bench`, in a worker process of its own (distill/bench_workers.py).

    python -m serve.bench_worker '["runs/tiny/student-kd/final", null, null, "IMAGE.png", 32, 2]'
    # then, on standard input: "round" (or "round touch") per timed round, "finish" for the rest

The worker imports what the model's back end runs on and no more (a GGUF export: llama.cpp, no
PyTorch or transformers), as its deployment would, loads the model, serves it over HTTP (the real app
on uvicorn, a local port) and runs the warm-up rounds. Each round is one completion of exactly
`new_tokens` greedy tokens on the image + question from the engine, each token time-stamped, then the
same request streamed through the API, alternated so that both see the machine in the same state and
both on the server's engine thread. "round touch" first runs, untimed, the engine's completion and
a one-token one through the API, so that a round taken after another model's starts on caches and
thread pools of its own (llama.cpp decoding the tiny student at 0.2 ms a token otherwise shows its
idle threads waking); only where a round takes under TOUCH_BELOW_S: a longer one is not worth
repeating. "finish" replies
with the peak memory (RSS above imports on CPU, CUDA peak allocated on GPU; for PyTorch on CPU also
the peak of its tensors, from one more completion under torch.profiler: serve/tensor_memory.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.bench_workers import TOUCH_BELOW_S, commands, protocol_channel, reply

JSON_HEADERS = {"Content-Type": "application/json"}
QUESTION = "What color is the circle? Describe the picture."
WARM_UP = 3  # untimed rounds first: the first calls of a runtime (and of a fresh HTTP connection) are slow


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
    # the bench's one connection idles while the other models take their rounds: keep it open
    config = uvicorn.Config(app, port=0, log_level="error", timeout_keep_alive=24 * 3600)
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


class MeasuredModel:
    """One model on one back end, loaded, served and warmed up (see the module's docstring)."""

    def __init__(
        self,
        model: str,
        backend: str | None,
        quant: str | None,
        image_path: str,
        new_tokens: int,
        threads: int,
        dtype: str = "auto",
        warm_up: int = WARM_UP,
        cuda_graphs: bool = True,
    ) -> None:
        from PIL import Image

        from distill.process_memory import current_rss_mib
        from serve.engines import detect_backend, open_engine

        self.image = Image.open(image_path).convert("RGB")
        self.new_tokens = new_tokens
        import uvicorn  # noqa: F401

        import serve.app  # imported before the baseline, like every model's runtime
        from export.bench import import_runtime

        chosen = backend or detect_backend(Path(model))
        import_runtime({"torch": "pytorch", "onnx": "onnx"}.get(chosen, "gguf"), Path(model))
        if chosen == "torch":
            import serve.torch_engine  # noqa: F401

        self.before_load = current_rss_mib()
        start = time.perf_counter()
        on_torch = chosen == "torch"  # --dtype is the checkpoints' only
        self.engine = open_engine(model, backend, quant, threads, dtype if on_torch else "auto", cuda_graphs)
        self.load_s = time.perf_counter() - start
        self._server = contextlib.ExitStack()
        app, self.connection = self._server.enter_context(local_server(self.engine, new_tokens))
        self.engine_thread = app.state.gate.executor
        self.payload = json.dumps(streaming_request(self.image, new_tokens)).encode()
        self.touch_payload = json.dumps(streaming_request(self.image, 1)).encode()
        start = time.perf_counter()
        for _ in range(warm_up):
            self.round()
        self.short = warm_up == 0 or (time.perf_counter() - start) / warm_up < TOUCH_BELOW_S

    def completion(self, new_tokens: int) -> list[float]:
        return self.engine_thread.submit(engine_completion, self.engine, self.image, new_tokens).result()

    def round(self, touch: bool = False) -> dict[str, float | None]:
        """One engine completion and the same through the API: TTFT, decode speed and latency from the
        engine's time stamps, TTFT from the API's first content chunk (seconds; None if none came)."""
        if touch and self.short:
            self.completion(self.new_tokens)
            api_first_content(self.connection, self.touch_payload)
        marks = self.completion(self.new_tokens)
        return {
            "ttft": marks[1] - marks[0],
            "speed": (len(marks) - 2) / max(marks[-1] - marks[1], 1e-9),
            "latency": marks[-1] - marks[0],
            "api_ttft": api_first_content(self.connection, self.payload),
        }

    def finish(self) -> dict[str, Any]:
        """What the model is and what it held: weights, peak memory, the whole process's peak RSS."""
        from distill.process_memory import peak_rss_mib

        memory, memory_kind = peak_memory_mib(self.before_load)
        process_peak = peak_rss_mib()
        engine, tensors = self.engine, None
        on_cpu = str(getattr(engine, "device", "cpu")).startswith("cpu")
        if engine.backend == "torch" and on_cpu:  # on a GPU, CUDA peak allocated is the tensors' peak
            from serve.tensor_memory import peak_tensor_mib

            tensors = peak_tensor_mib(
                engine.model, lambda: engine_completion(engine, self.image, self.new_tokens)
            )
        self._server.close()
        return {
            "model": engine.name,
            "backend": engine.backend,
            "dtype": getattr(engine, "weights_dtype", None),
            "cuda_graphs": getattr(engine, "graphs_on", False),
            "load_s": self.load_s,
            "weights_mib": sum(f.stat().st_size for f in engine.weight_files()) / 2**20,
            "peak_memory_mib": memory,
            "memory_kind": memory_kind,
            "peak_tensor_mib": tensors,
            "peak_rss_mib": process_peak,  # the whole process: Python, the runtime, the server, the model
            "torch_imported": "torch" in sys.modules,
        }


def main(spec: str) -> int:
    channel = protocol_channel()
    model = MeasuredModel(*json.loads(spec))
    reply(channel, {"load_s": model.load_s})
    for command in commands():
        if command in ("round", "round touch"):
            reply(channel, model.round(touch=command == "round touch"))
        elif command == "finish":
            reply(channel, model.finish())
            return 0
        else:
            raise ValueError(f"unknown command {command!r} (known: round, round touch, finish)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
