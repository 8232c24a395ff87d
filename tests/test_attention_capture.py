"""The captured instruction-to-vision attention equals what eager attention returns, for Qwen2,
Qwen3 and Llama LLMs with grouped KV heads, on a right-padded batch, while the model's outputs stay
those of plain SDPA."""

import pytest
import torch

from distill.attention_capture import capture_instruction_attention
from tests.conftest import make_model


def batch(model, tokenizer, lengths=((3, 5), (2, 9))):
    """Two samples: [text, image tokens, instruction text], right-padded to one length."""
    torch.manual_seed(0)
    n_visual = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    image_id, pad_id = model.config.image_token_id, tokenizer.pad_token_id
    rows, instruction, visual = [], [], []
    total = max(a + n_visual + b for a, b in lengths)
    for before, after in lengths:
        ids = torch.randint(10, 200, (before + n_visual + after,))
        ids[before : before + n_visual] = image_id
        pad = total - len(ids)
        rows.append(torch.cat([ids, torch.full((pad,), pad_id)]))
        instruction.append(torch.tensor([False] * (before + n_visual) + [True] * after + [False] * pad))
        visual.append(torch.tensor([False] * before + [True] * n_visual + [False] * (after + pad)))
    input_ids = torch.stack(rows)
    attention_mask = (
        torch.arange(total)[None, :] < torch.tensor([sum(x) + n_visual for x in lengths])[:, None]
    ).long()
    pixel_values = torch.randn(
        len(lengths), 3, model.config.vision_config.image_size, model.config.vision_config.image_size
    )
    inputs = dict(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, use_cache=False
    )
    return inputs, torch.stack(instruction), torch.stack(visual)


def eager_alpha(model, inputs, instruction, visual):
    model.set_attn_implementation({"text_config": "eager"})
    try:
        attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    out = {}
    for layer, probs in enumerate(attentions):  # [B, H, T, T]
        per_sample = []
        for b in range(probs.shape[0]):
            rows = probs[b][:, instruction[b]][:, :, visual[b]]  # [H, I, Nv]
            per_sample.append(rows.mean(dim=(0, 1)))
        out[layer] = torch.stack(per_sample)
    return out


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3", "llama"])
def test_captured_rows_equal_eager_attention(tokenizer, text_model_type):
    model, _ = make_model(
        tokenizer, text_model_type=text_model_type, num_layers=3, num_heads=4, num_kv_heads=2
    )
    inputs, instruction, visual = batch(model, tokenizer)
    with torch.no_grad():
        expected = eager_alpha(model, inputs, instruction, visual)
        plain = model(**inputs).logits
        with capture_instruction_attention(model, [0, 2], instruction, visual) as alphas:
            captured_logits = model(**inputs).logits
    assert set(alphas) == {0, 2}
    for layer in (0, 2):
        assert alphas[layer].shape == (2, visual[0].sum())
        torch.testing.assert_close(alphas[layer], expected[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured_logits, plain, atol=1e-6, rtol=1e-6)  # outputs are SDPA's
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # restored


def test_more_visual_tokens_than_head_dim_are_captured_in_groups(tokenizer):
    model, _ = make_model(tokenizer, image_size=64, num_layers=2, num_heads=4, num_kv_heads=2)  # 16 > 8
    inputs, instruction, visual = batch(model, tokenizer)
    assert visual[0].sum() > model.config.text_config.hidden_size // 4
    with torch.no_grad():
        expected = eager_alpha(model, inputs, instruction, visual)
        with capture_instruction_attention(model, [1], instruction, visual) as alphas:
            model(**inputs)
    torch.testing.assert_close(alphas[1], expected[1], atol=1e-5, rtol=1e-5)


def test_unpadded_batch_uses_the_causal_path(tokenizer):
    model, _ = make_model(tokenizer, num_layers=2)
    inputs, instruction, visual = batch(model, tokenizer, lengths=((3, 5), (4, 4)))
    inputs["attention_mask"] = None
    with torch.no_grad():
        expected = eager_alpha(model, inputs, instruction, visual)
        with capture_instruction_attention(model, [1], instruction, visual) as alphas:
            model(**inputs)
    torch.testing.assert_close(alphas[1], expected[1], atol=1e-5, rtol=1e-5)


def test_refuses_unequal_visual_counts(tokenizer):
    model, _ = make_model(tokenizer)
    visual = torch.tensor([[True, True, False], [True, False, False]])
    with (
        pytest.raises(ValueError, match="same, non-zero number of visual tokens"),
        capture_instruction_attention(model, [0], torch.ones_like(visual), visual),
    ):
        pass


def test_a_sample_without_image_gets_zero_weights_and_leaves_the_others_exact(tokenizer):
    model, _ = make_model(tokenizer, num_layers=2)
    inputs, instruction, visual = batch(model, tokenizer)
    with torch.no_grad():
        expected = eager_alpha(model, inputs, instruction, visual)
        no_image = visual.clone()
        no_image[1] = False  # treat sample 1 as text-only for the capture
        with capture_instruction_attention(model, [1], instruction, no_image) as alphas:
            model(**inputs)
    torch.testing.assert_close(alphas[1][0], expected[1][0], atol=1e-5, rtol=1e-5)
    assert alphas[1][1].abs().sum() == 0
