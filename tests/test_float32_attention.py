"""distill/float32_attention.py: under CPU bf16 autocast the LLM's SDPA runs in float32 and hands back
the autocast dtype; a bf16 CPU run gives it to the student and the teacher, and on a packed batch it
computes what transformers' "sdpa" computes."""

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from distill.float32_attention import FLOAT32_SDPA, float32_sdpa
from distill.packing import PackingCollator
from distill.train import setup
from tests.test_trainer import config


def test_attention_runs_in_float32_inside_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 9, 8, generator=generator).bfloat16() for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = float32_sdpa(module, query, key, value, None)
    expected, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), None)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected.bfloat16(), atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16, _ = sdpa_attention_forward(module, query, key, value, None)
    assert not torch.equal(in_bf16, output)  # what autocast alone would have computed differs


def test_a_bf16_cpu_run_gives_both_models_float32_attention_with_the_same_packed_loss(
    tmp_path, shapes, teacher_dir
):
    s = setup(
        config(
            shapes,
            tmp_path / "run",
            data={"split_turns": True},
            teacher={"path": str(teacher_dir)},
            loss={"w_kd": 1.0},
            train={"bf16": True},
        )
    )
    model, teacher = s.trainer.model, s.trainer.teacher
    assert model.config.get_text_config()._attn_implementation == FLOAT32_SDPA
    assert teacher.config.get_text_config()._attn_implementation == FLOAT32_SDPA
    batch = PackingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(10)])
    assert batch["input_ids"].shape[0] < 10  # several examples per row
    model.eval()
    with torch.no_grad():
        terms = s.trainer.loss_terms(model, batch)
        for each in (model, teacher):
            each.set_attn_implementation({"text_config": "sdpa"})
        expected = s.trainer.loss_terms(model, batch)
    assert set(terms) == {"sft", "kd"}
    for name in terms:
        torch.testing.assert_close(terms[name], expected[name], atol=1e-6, rtol=1e-6)
