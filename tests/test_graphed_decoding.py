"""serve/graphed_decoding.py: the static-cache decoder gives the dynamic cache's logits, token after token,
across requests of different sizes and a bucket reused after a longer request; on a GPU, the CUDA-graph
replay gives the eager step's logits and the engine's greedy answers."""

import contextlib
import json
import shutil

import pytest
import torch
from PIL import Image

from distill import conversation
from serve.graphed_decoding import GraphedDecoder, bucket_length
from serve.sampling import Sampler
from serve.torch_engine import TorchEngine
from tests.conftest import save_lively_model

QUESTIONS = ["What color is the circle?", "How many shapes are there in the picture, and where is each one?"]


FAMILIES = {"qwen2": ("qwen2", "siglip"), "llama-clip": ("llama", "clip"), "qwen3": ("qwen3", "siglip")}


@pytest.fixture(scope="module", params=FAMILIES)
def lively_dir(request, tmp_path_factory, tokenizer):
    """Each LLM family the kit builds (LLaVA-1.5 itself is Llama + CLIP): their mask code differs."""
    text, vision = FAMILIES[request.param]
    out = tmp_path_factory.mktemp("models") / request.param
    return save_lively_model(tokenizer, out, text_model_type=text, vision_model_type=vision)


@pytest.fixture(scope="module")
def picture(shapes):
    return Image.open(next((shapes / "images" / "test").glob("*.png"))).convert("RGB")


def prompt_inputs(engine, question, picture):
    prompt = engine.prompt([{"role": "user", "content": f"{engine.image_text}\n{question}"}], [picture])
    return dict(conversation.prompt_inputs(engine.processor, [picture], [prompt.text]).to(engine.device))


def dynamic_logits(model, inputs, tokens):
    """The reference: transformers' own forward over a DynamicCache."""
    with torch.inference_mode():
        output = model(**inputs, use_cache=True, logits_to_keep=1)
        logits, cache = [output.logits[0, -1]], output.cache
        for token in tokens:
            ids = torch.tensor([[token]], device=inputs["input_ids"].device)
            output = model(input_ids=ids, cache=cache, use_cache=True)
            logits.append(output.logits[0, -1])
            cache = output.cache
    return torch.stack(logits)


def static_logits(decoder, inputs, tokens, new_tokens=None):
    logits = [decoder.prefill(inputs, new_tokens or len(tokens) + 1)]
    logits += [decoder.step(token) for token in tokens]
    return torch.stack(logits)


def test_buckets_are_powers_of_two_from_512_capped_at_the_context():
    assert [bucket_length(n, 4096) for n in (1, 512, 513, 1500, 4096)] == [512, 512, 1024, 2048, 4096]
    assert bucket_length(700, 600) == 600


def test_static_cache_steps_match_the_dynamic_cache(lively_dir, picture):
    engine = TorchEngine(lively_dir, device="cpu")
    decoder = GraphedDecoder(engine.model, 4096, capture=False)  # past the tiny model's 512: two buckets
    tokens = [5, 17, 3, 250, 9, 40]
    long_inputs = prompt_inputs(engine, QUESTIONS[1], picture)
    short_inputs = prompt_inputs(engine, QUESTIONS[0], picture)
    for inputs, room in ((long_inputs, 7), (short_inputs, 7), (short_inputs, 600)):
        reference = dynamic_logits(engine.model, inputs, tokens)
        got = static_logits(decoder, inputs, tokens, room)
        assert torch.allclose(got, reference, atol=1e-4), (got - reference).abs().max()
    assert sorted(decoder.buckets) == [512, 1024]  # the short request reused the long one's bucket


def test_the_static_cache_refuses_to_overflow(student_dir, picture):
    engine = TorchEngine(student_dir, device="cpu")
    decoder = GraphedDecoder(engine.model, engine.context, capture=False)
    inputs = prompt_inputs(engine, QUESTIONS[0], picture)
    with pytest.raises(ValueError, match="exceed the context"):
        decoder.prefill(inputs, engine.context)
    decoder.prefill(inputs, 1)
    decoder.position = decoder.current.length  # as if the bucket were full
    with pytest.raises(ValueError, match="is full"):
        decoder.step(1)


def test_engines_on_cpu_decode_eagerly_and_other_attention_is_refused(student_dir):
    engine = TorchEngine(student_dir, device="cpu")
    assert engine.graphed is None and engine.description == "torch float32 on cpu"
    engine.model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="SDPA"):
        GraphedDecoder(engine.model, engine.context)


def test_a_sliding_window_model_is_refused_also_without_layer_types(tmp_path, tokenizer):
    """A Mistral LLM (BakLLaVA-style) says its window in sliding_window alone, and StaticCache reads that."""
    llama = save_lively_model(
        tokenizer, tmp_path / "llama", text_model_type="llama", vision_model_type="clip"
    )
    mistral = tmp_path / "mistral"
    shutil.copytree(llama, mistral)
    config = json.loads((mistral / "config.json").read_text())
    config["text_config"].update(model_type="mistral", sliding_window=16)
    config["text_config"].pop("layer_types", None)
    (mistral / "config.json").write_text(json.dumps(config))
    engine = TorchEngine(mistral, device="cpu")
    with pytest.raises(ValueError, match="sliding window"):
        GraphedDecoder(engine.model, engine.context)


class NoStream:
    """torch.cuda's stream calls, as no-ops: the capture's warm-up then runs on the CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass


@pytest.mark.parametrize("failure", [RuntimeError("capture failed"), torch.OutOfMemoryError("out of memory")])
def test_a_warm_up_that_fails_part_way_leaves_the_cache_where_the_step_starts(
    student_dir, picture, monkeypatch, failure
):
    monkeypatch.setattr(torch.cuda, "Stream", NoStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: NoStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    engine = TorchEngine(student_dir, device="cpu")
    inputs = prompt_inputs(engine, QUESTIONS[0], picture)
    tokens = [5, 17, 3, 250]
    want = static_logits(GraphedDecoder(engine.model, engine.context, capture=False), inputs, tokens)
    armed = []

    def fail_once(module, args):  # in the second layer: the first has already written its keys
        if armed.pop() if armed else False:
            raise failure

    engine.model.model.language_model.layers[1].mlp.register_forward_pre_hook(fail_once)
    decoder = GraphedDecoder(engine.model, engine.context)
    got = [decoder.prefill(inputs, len(tokens) + 1)]
    armed.append(True)  # the first step's capture: its warm-up fails in the second layer
    if isinstance(failure, torch.OutOfMemoryError):  # raised: this request fails, graphs stay on
        with pytest.raises(torch.OutOfMemoryError):
            decoder.step(tokens[0])
        assert decoder.capture and [
            int(layer.cumulative_length) for layer in decoder.current.cache.layers
        ] == [decoder.position] * len(decoder.current.cache.layers)
        return
    with pytest.warns(UserWarning, match="capture failed"):
        got += [decoder.step(token) for token in tokens]
    assert not decoder.capture
    assert torch.allclose(torch.stack(got), want, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_replays_match_eager_steps_and_the_engines_answer_alike(lively_dir, picture):
    graphed = TorchEngine(lively_dir, device="cuda")
    eager = TorchEngine(lively_dir, device="cuda", cuda_graphs=False)
    assert graphed.graphed is not None and eager.graphed is None
    tokens = [5, 17, 3, 250, 9, 40]
    for question in QUESTIONS * 2:  # the second round replays graphs captured in the first
        inputs = prompt_inputs(graphed, question, picture)
        reference = dynamic_logits(eager.model, inputs, tokens)
        got = static_logits(graphed.graphed, inputs, tokens)
        assert torch.allclose(got.float(), reference.float(), atol=1e-3), (got - reference).abs().max()
    for question in QUESTIONS:
        messages = [{"role": "user", "content": f"{graphed.image_text}\n{question}"}]
        answers = [
            [piece.token_id for piece in engine.stream(engine.prompt(messages, [picture]), Sampler(0.0), 24)]
            for engine in (graphed, eager)
        ]
        assert answers[0] == answers[1]
