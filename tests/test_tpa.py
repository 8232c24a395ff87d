"""TPA by kv-continuation and by the single-pass ribbon each equal a separate forward over
(x, y_<k, c) for every response position k and candidate c — logits and the gradients of a loss on
them — for tiny Qwen2 and Qwen3 students; the trainer's TPA term equals that naive reference."""

import pytest
import torch
import torch.nn.functional as F

from distill.continuation import (
    candidate_rows,
    continue_from_cache,
    flat_candidates,
    row_width,
    states_after_candidates,
    to_continue,
)
from distill.data import LlavaDataset, ModelView, PaddingCollator
from distill.modeling import image_token_count
from distill.tpa import (
    continuation_mask,
    draw_candidates,
    response_layout,
    slot_candidates,
)
from tests.conftest import make_model


def short_batch(model, processor, shapes, lengths=(40, 31)):
    """Two samples of different lengths (so the batch is right-padded), each truncated short."""
    items = []
    for i, max_length in enumerate(lengths):
        view = ModelView.from_processor(processor, image_token_count(model.config), max_length)
        dataset = LlavaDataset(shapes / "val.json", {"student": view}, skip_bad_records=True, progress=False)
        items.append(dataset[i])
    assert len(items[0]["input_ids"]) != len(items[1]["input_ids"])
    return PaddingCollator(processor.tokenizer.pad_token_id)(items)


def kv_continuation_logits(model, batch, candidates_per_token, d, width=None):
    """The trainer's path (states_after_candidates), or with `width` every candidate continued
    through rows of that width."""
    layout = response_layout(batch["labels"])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        use_cache=True,
        output_hidden_states=True,
    )
    language_model, embed = model.model.language_model, model.get_input_embeddings()
    if width is None:
        hidden = states_after_candidates(
            language_model,
            embed,
            out.cache,
            out.hidden_states[-1],
            batch["input_ids"],
            batch["attention_mask"],
            layout,
            candidates_per_token,
            to_continue(candidates_per_token, batch["input_ids"], layout),
        )
    else:
        sample, positions = flat_candidates(layout, d)
        rows = candidate_rows(sample, positions, batch["input_ids"].shape[1], width)
        hidden = continue_from_cache(
            language_model,
            embed,
            out.cache,
            candidates_per_token.flatten(),
            rows,
            batch["attention_mask"],
        )
    return model.lm_head(hidden).unflatten(0, (-1, d))  # [N, d, V]


def naive_logits(model, batch, candidates_per_token, d):
    layout = response_layout(batch["labels"])
    rows = []
    for b in range(batch["input_ids"].shape[0]):
        for t in layout.positions[b][layout.valid[b]].tolist():
            per_candidate = []
            for j in range(d):
                row = len(rows)
                ids = torch.cat([batch["input_ids"][b, :t], candidates_per_token[row, j : j + 1]])[None]
                logits = model(input_ids=ids, pixel_values=batch["pixel_values"][b : b + 1]).logits[0, -1]
                per_candidate.append(logits)
            rows.append(torch.stack(per_candidate))
    return torch.stack(rows)


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3"])
def test_kv_continuation_and_ribbon_equal_separate_forwards(tokenizer, shapes, text_model_type):
    model, processor = make_model(tokenizer, text_model_type=text_model_type, num_layers=2)
    batch = short_batch(model, processor, shapes)
    layout = response_layout(batch["labels"])
    d, n = 3, int(layout.valid.sum())
    candidates = torch.randint(5, len(tokenizer), (n, d), generator=torch.Generator().manual_seed(0))
    reference = batch["input_ids"][
        torch.arange(2)[:, None].expand_as(layout.valid)[layout.valid], layout.positions[layout.valid]
    ]
    candidates[::2, 1] = reference[::2]  # the token itself: read from the first pass, not continued
    target = torch.log_softmax(torch.randn(n, d, model.config.text_config.vocab_size), -1)

    def loss_and_grads(logits_fn):
        model.zero_grad()
        logits = logits_fn(model, batch, candidates, d)
        loss = F.kl_div(torch.log_softmax(logits, -1), target, reduction="sum", log_target=True)
        loss.backward()
        return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    slow, slow_grads = loss_and_grads(naive_logits)
    implementations = (
        kv_continuation_logits,  # the trainer's path
        lambda *a: kv_continuation_logits(*a, width=5),  # all continued, several rows per sample
        lambda *a: ribbon_logits(*a)[0],
    )
    for implementation in implementations:
        fast, fast_grads = loss_and_grads(implementation)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
        assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) > 0
        for name in fast_grads:
            torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_layout_skips_prompt_and_padding():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    layout = response_layout(labels)
    assert layout.positions.tolist() == [[2, 3], [1, 0]] and layout.valid.tolist() == [
        [True, True],
        [True, False],
    ]
    mask = continuation_mask(layout, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]), d=2)
    assert mask.shape == (2, 1, 4, 5 + 4)
    assert mask[0, 0, 0, :5].tolist() == [True, True, False, False, False]  # y at t=2 sees columns 0, 1
    assert mask[0, 0, 3, 5:].tolist() == [False, False, False, True]  # and only itself among candidates


def test_candidate_rows_hold_each_sample_in_rows_of_its_own_in_flat_order():
    labels = torch.full((2, 12), -100)
    labels[0, 3] = 1  # one response token at t=3
    labels[1, 4:11] = 1  # seven, at t=4..10
    sample, positions = flat_candidates(response_layout(labels), d=2)
    assert sample.tolist() == [0] * 2 + [1] * 14
    rows = candidate_rows(sample, positions, key_length=12, width=4)
    assert rows.sample.tolist() == [0, 1, 1, 1, 1]  # 2 candidates, then 14 in ceil(14 / 4) rows
    assert rows.valid.sum().item() == 16 and rows.valid[0].tolist() == [True, True, False, False]
    assert rows.positions[rows.valid].tolist() == [3, 3] + [t for t in range(4, 11) for _ in range(2)]
    assert rows.valid[-1].tolist() == [True, True, False, False]
    # neither the longest sample's count (most slots padding) nor 1 (a cache copy per candidate)
    assert row_width(torch.tensor([4, 4, 40]), key_length=100) == 10
    assert row_width(torch.tensor([8, 8, 8]), key_length=100) == 8


def test_candidates_are_distinct_and_greedy_takes_the_top():
    logits = torch.tensor([[5.0, 4.0, 3.0, -9.0, -9.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    greedy = draw_candidates(logits, 2, "greedy")
    assert greedy[0].tolist() == [0, 1] and greedy[1, 0].item() == 4
    picked = draw_candidates(logits, 3, "nucleus", top_p=0.5, generator=torch.Generator().manual_seed(1))
    assert all(len(set(row)) == 3 for row in picked.tolist())
    assert set(picked[1].tolist()) >= {4}  # a nucleus of one token is filled from the top


def test_nucleus_draws_stay_in_each_rows_nucleus_narrow_or_wide():
    torch.manual_seed(0)
    logits = torch.randn(200, 622) * torch.tensor([0.5, 12.0]).repeat(100)[:, None]  # flat and peaked rows
    sorted_probs, order = torch.softmax(logits, -1).sort(dim=-1, descending=True)
    in_nucleus = (sorted_probs.cumsum(-1) - sorted_probs) < 0.9
    in_nucleus[:, :4] |= in_nucleus.sum(-1, keepdim=True) < 4
    allowed = [set(order[row][in_nucleus[row]].tolist()) for row in range(200)]
    generator = torch.Generator().manual_seed(0)
    seen_beyond_64 = False
    for _ in range(5):
        picked = draw_candidates(logits, 4, "nucleus", top_p=0.9, generator=generator)
        for row in range(200):
            assert len(set(picked[row].tolist())) == 4 and set(picked[row].tolist()) <= allowed[row]
        rank = (order[:, None, :] == picked[:, :, None]).float().argmax(-1)  # [200, 4] rank of each draw
        seen_beyond_64 |= bool((rank[0::2] >= 64).any())
    assert seen_beyond_64  # a flat row draws from its whole nucleus, not only the 64 most likely tokens


def greedy_candidates(student, batch, d):
    """The top-d next tokens [N, d] at each response token, as the trainer draws them with greedy sampling."""
    layout = response_layout(batch["labels"])
    with torch.no_grad():
        logits = student(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        ).logits
    sample = torch.arange(len(layout.valid))[:, None].expand_as(layout.valid)[layout.valid]
    before = logits[sample, layout.positions[layout.valid] - 1]
    before[:, student.config.image_token_id] = float("-inf")  # never proposed
    return before.topk(d).indices


def naive_tpa(student, teacher, batch, candidates):
    """mean over response tokens and candidates [N, d] of KL(P_T || P_S) after (x, y_<t, c), one forward each."""
    layout = response_layout(batch["labels"])
    total, row = 0.0, 0
    for b in range(batch["input_ids"].shape[0]):
        for t in layout.positions[b][layout.valid[b]].tolist():
            for c in candidates[row].tolist():
                ids = torch.cat([batch["input_ids"][b, :t], torch.tensor([c])])[None]
                pixels = batch["pixel_values"][b : b + 1]
                s_log = torch.log_softmax(student(input_ids=ids, pixel_values=pixels).logits[0, -1], -1)
                with torch.no_grad():
                    t_log = torch.log_softmax(teacher(input_ids=ids, pixel_values=pixels).logits[0, -1], -1)
                total = total + F.kl_div(s_log, t_log, reduction="sum", log_target=True)
            row += 1
    return total / candidates.numel()


@pytest.mark.parametrize("implementation", ["kv", "ribbon"])
@pytest.mark.parametrize("with_reference", [False, True], ids=["drawn", "with-the-reference-token"])
def test_tpa_term_in_the_trainer_equals_the_naive_reference(
    tmp_path, shapes, teacher_dir, implementation, with_reference
):
    from distill.train import setup
    from tests.test_trainer import config

    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(teacher_dir)},
        data={"max_length": 40},
        loss={
            "w_sft": 0.0,
            "w_tpa": 1.0,
            "tpa_candidates": 2,
            "tpa_sampling": "greedy",
            "tpa_impl": implementation,
            "kl_chunk_size": 7,
        },
    )
    cfg.data.skip_bad_records = True
    s = setup(cfg)
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(2)])
    student = s.trainer.model.eval()
    teacher = s.trainer.accelerator.unwrap_model(s.trainer.teacher)
    candidates = greedy_candidates(student, batch, d=2)
    if with_reference:  # a trained student often proposes the token itself: kv reads it from the first pass
        layout = response_layout(batch["labels"])
        sample = torch.arange(2)[:, None].expand_as(layout.valid)[layout.valid]
        candidates[::2, 1] = batch["input_ids"][sample, layout.positions[layout.valid]][::2]
        s.trainer._draw_candidates = lambda model, hidden: candidates
    terms = s.trainer.loss_terms(student, batch)
    torch.testing.assert_close(
        terms["tpa"], naive_tpa(student, teacher, batch, candidates), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("implementation", ["kv", "ribbon"])
def test_a_tpa_run_logs_its_terms(tmp_path, shapes, teacher_dir, implementation):
    import json

    from distill.train import fit, setup
    from tests.test_trainer import config

    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(teacher_dir)},
        loss={"w_kd": 1.0, "w_iva": 1.0, "iva_weights": "uniform", "w_tpa": 1.0, "tpa_impl": implementation},
        train={"max_steps": 2},
    )
    final = fit(setup(cfg))
    logs = [e for e in json.loads((final / "train_summary.json").read_text())["log_history"] if "loss" in e]
    assert logs and all(e["loss_tpa"] > 0 and e["loss_kd"] > 0 and e["loss_iva"] > 0 for e in logs)


def test_tpa_refuses_gradient_checkpointing(tmp_path, shapes):
    from distill.configuration import ConfigError
    from tests.test_trainer import config

    with pytest.raises(ConfigError, match="gradient_checkpointing=false"):
        config(
            shapes,
            tmp_path / "run",
            teacher={"path": "t"},
            loss={"w_tpa": 1.0},
            train={"gradient_checkpointing": True},
        )


def ribbon_logits(model, batch, candidates_per_token, d):
    from distill.tpa import ribbon_inputs

    layout = response_layout(batch["labels"])
    candidates = slot_candidates(candidates_per_token, layout)
    ids, positions, mask = ribbon_inputs(batch["input_ids"], batch["attention_mask"], candidates, layout)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=batch["pixel_values"]
    )
    length = batch["input_ids"].shape[1]
    return out.logits[:, length:].reshape(*layout.valid.shape, d, -1)[layout.valid], out.logits[:, :length]


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3"])
def test_ribbon_equals_kv_continuation_and_leaves_the_sequence_unchanged(tokenizer, shapes, text_model_type):
    model, processor = make_model(tokenizer, text_model_type=text_model_type, num_layers=2)
    batch = short_batch(model, processor, shapes)
    d, n = 2, int(response_layout(batch["labels"]).valid.sum())
    candidates = torch.randint(5, len(tokenizer), (n, d), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ribbon, main = ribbon_logits(model, batch, candidates, d)
        kv = kv_continuation_logits(model, batch, candidates, d)
        plain = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        ).logits
        naive = naive_logits(model, batch, candidates, d)
    torch.testing.assert_close(ribbon, kv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ribbon, naive, atol=1e-5, rtol=1e-5)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(main[real], plain[real], atol=1e-5, rtol=1e-5)


def ribbon_case(tokenizer, shapes, seed):
    """A tiny model, a right-padded batch, d = 2 random candidates per response token and the
    ribbon's inputs (without a mask) and dense bool mask."""
    from distill.tpa import ribbon_inputs

    model, processor = make_model(tokenizer, num_layers=2)
    batch = short_batch(model, processor, shapes)
    layout = response_layout(batch["labels"])
    d, n = 2, int(layout.valid.sum())
    candidates = torch.randint(5, len(tokenizer), (n, d), generator=torch.Generator().manual_seed(seed))
    ids, positions, mask = ribbon_inputs(
        batch["input_ids"], batch["attention_mask"], slot_candidates(candidates, layout), layout
    )
    inputs = dict(input_ids=ids, position_ids=positions, pixel_values=batch["pixel_values"])
    return model, batch, layout, candidates, inputs, mask


def test_the_ribbon_under_flex_attention_equals_the_dense_mask(tokenizer, shapes):
    """On GPUs the ribbon's mask goes to FlexAttention as a BlockMask; same logits as the dense mask."""
    from distill.tpa import mask_for_attention

    model, _, _, _, inputs, mask = ribbon_case(tokenizer, shapes, seed=2)
    with torch.no_grad():
        dense = model(**inputs, attention_mask=mask_for_attention(model, mask)).logits
        model.set_attn_implementation({"text_config": "flex_attention"})
        block_mask = mask_for_attention(model, mask)
        assert type(block_mask).__name__ == "BlockMask"
        flex = model(**inputs, attention_mask=block_mask).logits
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def eager_flex_attention(query, key, value, training=False, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(query, key, value, **kwargs)


@pytest.mark.parametrize("implementation", ["flex_attention", "eager"])
def test_the_candidates_masks_equal_sdpa_under_other_attention_kernels(
    tokenizer, shapes, monkeypatch, implementation
):
    """The ribbon's and the continuation's bool masks reach FlexAttention as a BlockMask and eager
    attention as an additive mask: both kernels add a 4D tensor to their scores, where a bool
    would add 1 to the allowed ones instead of masking the others."""
    import transformers.integrations.flex_attention as flex_integration

    from distill.tpa import mask_for_attention

    model, batch, layout, candidates, ribbon, mask = ribbon_case(tokenizer, shapes, seed=3)
    d = candidates.shape[1]
    real = torch.cat([batch["attention_mask"].bool(), layout.valid.repeat_interleave(d, dim=1)], dim=1)
    with torch.no_grad():
        sdpa_kv = kv_continuation_logits(model, batch, candidates, d)  # the trainer's path
        sdpa_ribbon = model(**ribbon, attention_mask=mask_for_attention(model, mask)).logits
        model.set_attn_implementation({"text_config": implementation})
        # FlexAttention's eager reference: inductor's CPU template does not compile a query shorter
        # than its keys (PyTorch 2.13: cur_kvSplitSize5 undeclared); GPUs compile it with Triton
        monkeypatch.setattr(flex_integration, "compile_friendly_flex_attention", eager_flex_attention)
        kv = kv_continuation_logits(model, batch, candidates, d)
        other_ribbon = model(**ribbon, attention_mask=mask_for_attention(model, mask)).logits
    torch.testing.assert_close(kv, sdpa_kv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_ribbon[real], sdpa_ribbon[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tpa_impl", ["kv", "ribbon"])
def test_the_align_ti_objective_under_flex_attention_equals_sdpa(
    tmp_path, shapes, teacher_dir, monkeypatch, tpa_impl
):
    """The student's whole Align-TI objective (SFT + KD + IVA + TPA) on FlexAttention, as a run with
    model.attn_implementation=flex_attention has it, against SDPA: the same terms, the TPA candidates
    drawn alike. On a GPU (compiled FlexAttention) the gradients too; on a CPU the forward only, on
    FlexAttention's eager reference: it has no backward there."""
    import transformers.integrations.flex_attention as flex_integration

    from tests.test_packing import loss_and_gradients
    from tests.test_trainer import align_ti_on_one_batch

    trainer, model, batch = align_ti_on_one_batch(tmp_path, shapes, teacher_dir, tpa_impl=tpa_impl)
    on_gpu = model.device.type == "cuda"

    def objective() -> tuple[dict, dict]:
        torch.manual_seed(0)  # the same TPA candidates
        if on_gpu:
            return loss_and_gradients(trainer, model, batch)
        with torch.no_grad():
            return trainer.loss_terms(model, batch), {}

    sdpa_terms, sdpa_grads = objective()
    model.set_attn_implementation({"text_config": "flex_attention"})
    if not on_gpu:
        monkeypatch.setattr(flex_integration, "compile_friendly_flex_attention", eager_flex_attention)
    flex_terms, flex_grads = objective()
    assert set(flex_terms) == {"sft", "kd", "iva", "tpa"}
    close = 1e-6 if on_gpu else 1e-7  # within 3e-8 on a CPU; the bool masks of before moved tpa by 2e-5
    for name in sdpa_terms:
        torch.testing.assert_close(flex_terms[name], sdpa_terms[name], atol=close, rtol=1e-5)
    assert flex_grads.keys() == sdpa_grads.keys()
    for name in sdpa_grads:
        torch.testing.assert_close(flex_grads[name], sdpa_grads[name], atol=1e-5, rtol=1e-3)
