"""`python -m distill random-student`: a random-weight checkpoint of a named shape that loads and answers."""

import json

from distill.__main__ import main
from distill.bench_scale import LLM_SHAPES
from distill.modeling import load_llava


def test_random_student_has_the_named_shape_and_a_padded_lm_head(shapes, tmp_path, capsys):
    out = tmp_path / "random"
    args = ["random-student", "--llm", "tiny", "--vision", "tiny", "--vocab", "1024"]
    assert main([*args, "--tokenizer", str(shapes / "tokenizer"), "--out", str(out)]) == 0
    assert "random tiny + tiny" in capsys.readouterr().out
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["hidden_size"] == LLM_SHAPES["tiny"]["hidden_size"] and text["vocab_size"] == 1024
    model, processor = load_llava(out)
    assert model.lm_head.weight.shape[0] == 1024 and len(processor.tokenizer) < 1024
