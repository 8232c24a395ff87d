"""serve/: the three engines answer alike; the OpenAI-compatible app works with the official client,
streams, counts, times and refuses bad input with OpenAI-style errors; schemathesis finds no 5xx."""

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.app import Settings, create_app
from serve.engines import open_engine
from serve.generation import Completion, held_back
from serve.images import ImageLimits
from serve.sampling import Sampler

QUESTION = "What color is the circle?"


def data_url(image, kind="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(url, text=QUESTION):
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
    }


@pytest.fixture(scope="module")
def picture(shapes):
    return Image.open(next((shapes / "images" / "test").glob("*.png"))).convert("RGB")


@pytest.fixture(scope="module")
def engine(student_dir):
    return open_engine(student_dir)


def client_for(engine, **settings):
    return TestClient(create_app(engine, Settings(**settings)))


def test_sampler_is_greedy_at_zero_reproducible_with_a_seed_and_keeps_the_nucleus():
    logits = np.array([0.0, 3.0, 2.9, -5.0])
    assert Sampler(0.0)(logits) == 1
    draws = [Sampler(1.0, seed=7)(logits) for _ in range(3)]
    assert len(set(draws)) == 1
    nucleus = Sampler(1.0, top_p=0.5, seed=0)
    assert {nucleus(logits) for _ in range(50)} == {1}  # token 1 alone holds half the mass
    with pytest.raises(ValueError, match="top_p"):
        Sampler(1.0, top_p=0.0)
    assert Sampler(1e-310, seed=0)(logits) == 1  # a vanishing temperature is greedy, not NaN


def test_stop_strings_hold_back_only_what_could_still_become_a_stop():
    assert held_back("the end.\n", ["\n\n"]) == 1
    assert held_back("the end", ["\n\n", "END"]) == 0
    assert held_back("a <|st", ["<|stop|>"]) == 4


def test_the_first_yield_comes_with_the_first_token_even_when_its_text_is_held_back(engine, picture):
    """A streaming reply's first chunk must not wait for the first visible character: here the first
    token's text is held back as the possible start of a stop string."""
    messages = [{"role": "user", "content": f"{engine.image_text}\n{QUESTION}"}]
    prompt = engine.prompt(messages, [picture])
    first_text = next(piece.text for piece in engine.stream(prompt, Sampler(0.0), 4))
    assert first_text
    run = Completion(engine, prompt, Sampler(0.0), 4, [first_text + "\x00never"], started=0.0)
    texts, tokens_when_yielded = [], []
    for text in run:
        texts.append(text)
        tokens_when_yielded.append(run.completion_tokens)
    assert texts[0] == "" and tokens_when_yielded[0] == 1
    assert "".join(texts) == run.text and run.text.startswith(first_text) and "" not in texts[1:]


@pytest.mark.parametrize("export", ["onnx", "gguf"])
def test_engines_answer_like_the_torch_engine(student_dir, engine, picture, tmp_path, export):
    if export == "onnx":
        from export.onnx_export import export_onnx

        folder = export_onnx(student_dir, tmp_path / "onnx")
    else:
        pytest.importorskip("llama_cpp")
        from export.gguf_export import export_gguf

        export_gguf(student_dir, tmp_path / "gguf", ["f32"])
        folder = tmp_path / "gguf"
    other = open_engine(folder)
    with pytest.raises(ValueError, match="precision"):
        open_engine(folder, dtype="bfloat16")  # an export's precision is its files'
    messages = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    for sampler in (lambda: Sampler(0.0), lambda: Sampler(1.0, 0.9, seed=3)):
        expected = [p.token_id for p in engine.stream(engine.prompt(messages, [picture]), sampler(), 8)]
        got = [p.token_id for p in other.stream(other.prompt(messages, [picture]), sampler(), 8)]
        assert got == expected
    assert other.prompt(messages, [picture]).tokens == engine.prompt(messages, [picture]).tokens
    two = [{"role": "user", "content": f"<image>\n<image>\n{QUESTION}"}]
    mirrored = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    references = []
    for images in ([picture, mirrored], [mirrored, picture]):  # both images read, in the markers' order
        references.append(engine.start(engine.prompt(two, images), 1))
        assert np.abs(other.start(other.prompt(two, images), 1) - references[-1]).max() < 1e-3
    assert np.abs(references[0] - references[1]).max() > 1e-2
    files = other.weight_files()
    assert files and all(f.is_file() and (".onnx" if export == "onnx" else ".gguf") in f.name for f in files)
    if export == "gguf":
        assert {f.name.startswith("mmproj") for f in files} == {True, False}  # the LM and the vision tower
        typed = {"messages": [{"role": "user", "content": "say <__media__>"}], "max_tokens": 2}
        refused = client_for(other).post("/v1/chat/completions", json=typed)  # mtmd's own image marker
        assert refused.status_code == 400 and "reserves" in refused.json()["error"]["message"]


def test_the_torch_engine_loads_as_saved_or_in_the_asked_dtype(student_dir, engine, picture):
    import torch

    assert engine.model.dtype == torch.float32  # "auto": the tiny checkpoints are saved in float32
    half = open_engine(student_dir, dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    messages = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    reference = engine.start(engine.prompt(messages, [picture]), 1)
    logits = half.start(half.prompt(messages, [picture]), 1)
    assert logits.dtype == np.float32 and 0 < np.abs(logits - reference).max() < 0.5
    with pytest.raises(ValueError, match="unknown dtype"):
        open_engine(student_dir, dtype="float8")


def test_the_official_openai_client_works_unchanged(engine, picture):
    from openai import OpenAI

    client = OpenAI(
        base_url="http://testserver/v1", api_key="secret", http_client=client_for(engine, api_key="secret")
    )
    [model] = client.models.list().data
    reply = client.chat.completions.create(
        model=model.id, messages=[image_message(data_url(picture))], temperature=0, max_tokens=6
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 16
    assert reply.model_extra["timings"]["ttft_ms"] > 0

    def stream(**options):
        return list(
            client.chat.completions.create(
                model=model.id,
                messages=[image_message(data_url(picture))],
                temperature=0,
                max_tokens=6,
                stream=True,
                **options,
            )
        )

    chunks = stream()
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    with_usage = stream(stream_options={"include_usage": True})
    assert [c.usage for c in with_usage[:-1]] == [None] * (len(with_usage) - 1)
    assert with_usage[-1].choices == [] and with_usage[-1].usage == reply.usage  # OpenAI's usage chunk
    assert "".join(c.choices[0].delta.content or "" for c in with_usage[:-1]) == streamed


def test_stream_ends_with_done_and_a_stop_string_cuts_the_text(engine, picture):
    client = client_for(engine)
    body = {"messages": [image_message(data_url(picture))], "temperature": 0, "max_tokens": 12}
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert len(full) > 2
    stop = full[1:3]
    cut = client.post("/v1/chat/completions", json={**body, "stop": stop}).json()
    assert cut["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    openai_defaults = {"n": 1, "seed": -5, "temperature": 0.7, "tools": [], "logprobs": False}
    assert client.post("/v1/chat/completions", json={**body, **openai_defaults}).status_code == 200
    events = client.post("/v1/chat/completions", json={**body, "stream": True}).text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2].removeprefix("data: "))
    assert final["usage"]["total_tokens"] > 0 and "tokens_per_s" in final["timings"]


def test_models_health_and_metrics(engine, picture):
    client = client_for(engine)
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["id"] == engine.name
    client.post(
        "/v1/chat/completions", json={"messages": [image_message(data_url(picture))], "max_tokens": 3}
    )
    client.post("/v1/chat/completions", content=b"{not json")
    text = client.get("/metrics").text
    assert "serve_requests_total 1.0" in text and 'serve_errors_total{status="400"} 1.0' in text
    assert "serve_ttft_seconds_count 1.0" in text


def bomb_png():
    """A PNG whose header says 20000 x 20000 pixels (a few hundred KB compressed, 1.2 GB decoded)."""
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda b: {**b, "max_tokens": 5000}, 400, "cap of 1024"),
        (lambda b: {**b, "messages": [image_message("data:image/png;base64,%%%")]}, 400, "not valid base64"),
        (
            lambda b: {
                **b,
                "messages": [image_message("data:image/png;base64," + base64.b64encode(b"hello").decode())],
            },
            400,
            "not a readable image",
        ),
        (
            lambda b: {**b, "messages": [image_message("http://example.com/a.png")]},
            400,
            "--allow-remote-images",
        ),
        (lambda b: {**b, "messages": [image_message("file:///etc/passwd")]}, 400, "--allow-local-images"),
        (lambda b: {**b, "messages": [image_message(bomb_png())]}, 413, "16,777,216 pixels"),
        (lambda b: {**b, "temperature": -1}, 400, "temperature"),
        (lambda b: {**b, "messages": []}, 400, "messages"),
        (
            lambda b: {**b, "messages": [{**b["messages"][0], "content": b["messages"][0]["content"] * 2}]},
            400,
            "limit is 1",
        ),
        (lambda b: {**b, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context"),
        (lambda b: {**b, "n": 2}, 400, "n:"),  # what the server cannot honour is refused, not ignored
        (lambda b: {**b, "logprobs": True}, 400, "logprobs"),
        (lambda b: {**b, "response_format": {"type": "json_object"}}, 400, "response_format"),
        (lambda b: {**b, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        (lambda b: {**b, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        (lambda b: {**b, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ],
)
def test_bad_requests_get_openai_style_errors(engine, picture, change, status, words):
    client = client_for(engine)
    body = {"messages": [image_message(data_url(picture))], "max_tokens": 4}
    response = client.post("/v1/chat/completions", json=change(body))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"]


def test_size_key_and_queue_limits(engine, picture):
    client = client_for(engine, max_request_bytes=1000, images=ImageLimits(max_bytes=100))
    assert client.post("/v1/chat/completions", content=b"x" * 2000).status_code == 413
    small = client_for(engine, images=ImageLimits(max_bytes=100))
    answer = small.post("/v1/chat/completions", json={"messages": [image_message(data_url(picture))]})
    assert answer.status_code == 413 and "over the limit of 100" in answer.json()["error"]["message"]
    locked = client_for(engine, api_key="k")
    assert locked.get("/v1/models").status_code == 401
    assert locked.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        locked.get("/v1/models", headers={"Authorization": "Bearer sécret".encode("latin-1")}).status_code
        == 401
    )
    app = create_app(engine, Settings(max_queue=0))
    place = app.state.gate.admit()  # one request already in the engine, none may wait
    busy = TestClient(app).post(  # refused before its image is even read (these bytes are no image)
        "/v1/chat/completions", json={"messages": [image_message("data:image/png;base64,AAAA")]}
    )
    assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
    place.free()
    place.free()  # freed once, however often
    assert app.state.gate.admitted == 0
    capped = client_for(engine, max_tokens_cap=3)  # the default max_tokens (256) is capped too
    reply = capped.post("/v1/chat/completions", json={"messages": [image_message(data_url(picture))]})
    assert reply.json()["usage"]["completion_tokens"] <= 3


def test_a_client_that_leaves_the_queue_keeps_its_place_until_its_job_is_skipped(engine, picture):
    """Leaving must not make room while the job still waits on the engine thread, and the job, once
    it comes up, must not run the model for nobody."""
    import asyncio
    import threading

    from serve.app import Delivery, Gate
    from serve.generation import Completion

    gate, running = Gate(max_queue=1), threading.Event()
    gate.submit(gate.admit(), running.wait)  # the engine thread is busy
    prompts = []
    real_start = engine.start
    engine.start = lambda prompt: prompts.append(prompt) or real_start(prompt)
    try:
        prompt = engine.prompt([{"role": "user", "content": f"<image>\n{QUESTION}"}], [picture])
        completion = Completion(engine, prompt, Sampler(0.0), 4, [], 0.0)

        async def leave_while_queued() -> None:
            delivery = Delivery()
            gate.submit(gate.admit(), lambda: delivery.produce(completion))
            pieces = delivery.pieces()
            waiting = asyncio.ensure_future(pieces.__anext__())
            await asyncio.sleep(0.05)
            waiting.cancel()  # the client goes away
            await asyncio.gather(waiting, return_exceptions=True)
            await pieces.aclose()

        asyncio.run(leave_while_queued())
        assert gate.admitted == 2  # still queued: no room made yet
        running.set()
        gate.executor.submit(lambda: None).result(timeout=30)  # the queue has drained
        assert gate.admitted == 0 and prompts == []
    finally:
        engine.start = real_start


def test_a_stream_never_started_skips_its_job_and_frees_its_place(engine, picture):
    """Starlette never starts the reply's generator when the client is gone before the first chunk:
    collecting it must tell the already submitted job to skip, and the job then frees the place."""
    import asyncio
    import gc
    import threading

    from serve.app import Delivery, Gate, cancelled_on_collection, stream_events
    from serve.generation import Completion
    from serve.metrics import Metrics

    gate, running = Gate(max_queue=1), threading.Event()
    gate.submit(gate.admit(), running.wait)  # the engine thread is busy
    prompt = engine.prompt([{"role": "user", "content": f"<image>\n{QUESTION}"}], [picture])
    completion = Completion(engine, prompt, Sampler(0.0), 4, [], 0.0)

    metrics = Metrics()

    async def never_started() -> None:
        delivery = Delivery(metrics.cancelled)
        gate.submit(gate.admit(), lambda: delivery.produce(completion))
        events = cancelled_on_collection(stream_events(completion, delivery, metrics, "id", 0, "m"), delivery)
        del events
        gc.collect()
        assert delivery.cancelled.is_set()

    asyncio.run(never_started())
    assert gate.admitted == 2
    running.set()
    gate.executor.submit(lambda: None).result(timeout=30)
    assert gate.admitted == 0 and completion.completion_tokens == 0
    assert "serve_cancelled_total 1.0" in metrics.render()


def test_a_client_leaving_mid_stream_stops_the_generation_and_is_counted(engine, picture):
    import asyncio
    import threading

    from serve.app import Delivery
    from serve.generation import Completion
    from serve.metrics import Metrics

    prompt = engine.prompt([{"role": "user", "content": f"<image>\n{QUESTION}"}], [picture])
    metrics, finished = Metrics(), Metrics()
    ignore_eos = set(engine.eos_ids)
    engine.eos_ids = set()  # every completion runs its full length unless stopped
    try:

        async def read(on_cancel, completion, pieces):
            delivery = Delivery(on_cancel)  # made on the loop that reads it
            job = threading.Thread(target=delivery.produce, args=(completion,))
            job.start()
            stream = delivery.pieces()
            async for _ in stream:
                pieces -= 1
                if pieces == 0:
                    break
            await stream.aclose()  # the reply's writer stops reading: the client went away
            await asyncio.to_thread(job.join, 30)

        left = Completion(engine, prompt, Sampler(0.0), 64, [], 0.0)
        asyncio.run(read(metrics.cancelled, left, 2))
        whole = Completion(engine, prompt, Sampler(0.0), 8, [], 0.0)
        asyncio.run(read(finished.cancelled, whole, -1))  # read to the end
    finally:
        engine.eos_ids = ignore_eos
    assert left.completion_tokens < 64 and "serve_cancelled_total 1.0" in metrics.render()
    assert whole.completion_tokens == 8 and "serve_cancelled_total 0.0" in finished.render()


def test_a_bad_request_is_refused_at_once_behind_a_busy_engine_and_frees_its_place(engine, picture):
    """An idle engine thread prepares a request itself; behind a busy one a worker does, so a bad
    image is a 400 before the queue moves. Either way a refused request leaves no place taken."""
    import threading

    app = create_app(engine, Settings(max_queue=2))
    client, gate = TestClient(app), app.state.gate
    bad = {"messages": [image_message("data:image/png;base64,AAAA")]}
    assert client.post("/v1/chat/completions", json=bad).status_code == 400  # idle: the engine thread
    assert gate.admitted == 0
    running = threading.Event()
    gate.submit(gate.admit(), running.wait)  # the engine thread is busy until the end of the test
    try:
        assert client.post("/v1/chat/completions", json=bad).status_code == 400  # not stuck behind it
        assert gate.admitted == 1
    finally:
        running.set()
    gate.executor.submit(lambda: None).result(timeout=30)
    good = {"messages": [image_message(data_url(picture))], "max_tokens": 2, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=good) as reply:
        assert reply.status_code == 200 and "[DONE]" in "".join(reply.iter_text())
    assert gate.admitted == 0


def test_local_images_when_allowed(engine, picture, tmp_path):
    picture.save(tmp_path / "p.png")
    client = client_for(engine, images=ImageLimits(allow_local=True))
    body = {"messages": [image_message((tmp_path / "p.png").as_uri())], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_schemathesis_finds_no_server_error(engine):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(engine, Settings(max_tokens_cap=4, default_max_tokens=2))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} >= {
        ("POST", "/v1/chat/completions"),
        ("GET", "/metrics"),
    }
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(operation.as_strategy())
        def no_server_error(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        no_server_error()


class Scripted(Sampler):
    """Chooses the given tokens in turn (the engine still runs the model for each step)."""

    def __init__(self, tokens):
        super().__init__(0.0)
        self.tokens = list(tokens)

    def __call__(self, logits):
        return self.tokens.pop(0)


def test_every_token_is_counted_also_the_bytes_of_one_character(engine):
    ids = engine.chat.encode("🦙🦙🦙")
    assert len(ids) > 3  # byte-level pieces: most of them complete no character on their own
    eos = next(iter(engine.eos_ids))
    prompt = engine.prompt([{"role": "user", "content": "hi"}], [])
    run = Completion(engine, prompt, Scripted([*ids, eos]), 64, [], started=0.0)
    assert "".join(run) == "🦙🦙🦙"
    assert run.completion_tokens == len(ids) and run.finish_reason == "stop"


def test_images_16_bit_grey_is_scaled_not_clipped_and_the_scheme_is_case_insensitive(picture):
    from serve.images import decode_image, image_bytes

    ramp = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (8, 1))
    eight, sixteen = (
        np.asarray(decode_image(data, ImageLimits()))
        for data in (
            png_bytes(Image.fromarray(ramp)),
            png_bytes(Image.fromarray(ramp.astype(np.uint16) * 257)),
        )
    )
    assert np.array_equal(eight, sixteen)
    url = data_url(picture)
    raw = image_bytes(url, ImageLimits())
    assert image_bytes("DATA" + url[4:], ImageLimits()) == raw
    payload = base64.b64encode(raw).decode()
    wrapped = "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))  # as MIME writes it
    url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")  # and unpadded
    for other in (wrapped, url_safe):
        assert image_bytes("data:image/png;base64," + other, ImageLimits()) == raw
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(Exception, match="not a readable image"):
        decode_image(eps, ImageLimits())  # only the usual formats are decoded (EPS would run Ghostscript)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_image_parts_go_first_in_order_and_text_parts_are_joined_by_newlines():
    from serve.protocol import ChatRequest, template_messages

    parts = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:a"}},
        {"type": "text", "text": "with"},
        {"type": "image_url", "image_url": "data:b"},
    ]
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": parts}]})
    messages, urls = template_messages(request, "<image>")
    assert messages == [{"role": "user", "content": "<image>\n<image>\nCompare\nwith"}] and urls == [
        "data:a",
        "data:b",
    ]
