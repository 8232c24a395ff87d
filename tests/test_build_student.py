"""build-student: a SigLIP/CLIP encoder + a Qwen2/Llama LLM + a fresh projector -> one checkpoint."""

import pytest
import torch
import yaml
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from distill.__main__ import main
from distill.modeling import load_llava

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=16,
)


def save_vision(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**VISION))
    elif kind == "siglip-dual":
        model = SiglipModel(
            SiglipConfig(
                vision_config=VISION,
                text_config=dict(
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    vocab_size=64,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                ),
            )
        )
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**VISION))
    path = tmp_path / kind
    model.save_pretrained(path)
    SiglipImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    return path, model


def save_llm(tmp_path, tokenizer, family="qwen2"):
    torch.manual_seed(1)
    base = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    vocab = {name: i for name, i in base.get_vocab().items() if name != "<image>"}
    assert len(vocab) == len(base) - 1
    kwargs = dict(
        vocab_size=len(base) + 5,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = (
        Qwen2ForCausalLM(Qwen2Config(**kwargs))
        if family == "qwen2"
        else LlamaForCausalLM(LlamaConfig(**kwargs))
    )
    path = tmp_path / family
    model.save_pretrained(path)
    base.save_pretrained(path)
    return path, model


def build_student(vision_path, llm_path, out, *options):
    """Run `distill build-student` and load what it wrote."""
    command = ["build-student", "--vision", str(vision_path), "--llm", str(llm_path), "--out", str(out)]
    assert main([*command, *options]) == 0
    return load_llava(out)


@pytest.mark.parametrize("vision_kind", ["siglip", "siglip-dual", "clip"])
def test_assembled_student_keeps_both_halves(tmp_path, tokenizer, vision_kind):
    vision_path, vision = save_vision(tmp_path, vision_kind)
    llm_path, llm = save_llm(tmp_path, tokenizer)
    strategy = "default" if vision_kind == "clip" else "full"
    student, processor = build_student(vision_path, llm_path, tmp_path / "s", "--strategy", strategy)
    tower = vision.vision_model if vision_kind == "siglip-dual" else vision
    for name, value in tower.state_dict().items():
        assert torch.equal(student.model.vision_tower.state_dict()[name], value), name
    for name, value in llm.model.state_dict().items():
        assert torch.equal(student.model.language_model.state_dict()[name], value), name
    assert torch.equal(student.lm_head.weight, llm.lm_head.weight)
    assert student.config.image_seq_length == 4  # 2x2 patches (CLIP: + CLS - CLS)
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is it?"}], add_generation_prompt=True
    )
    inputs = processor(images=[Image.new("RGB", (40, 40), "red")], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == student.config.image_token_id).sum()) == 4
    output = student.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


WORDS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "what", "is", "it", "?", "\n"]


def save_word_level_llm(tmp_path):
    """A Qwen2 LLM whose tokenizer has no <image> token, no chat template and its own numbering."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    plain = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    llm_path = tmp_path / "llm"
    torch.manual_seed(1)
    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(WORDS),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(llm_path)
    plain.save_pretrained(llm_path)
    return llm_path


def test_the_image_token_is_added_when_the_llm_lacks_it(tmp_path):
    llm_path = save_word_level_llm(tmp_path)
    vision_path, _ = save_vision(tmp_path, "siglip")
    student, processor = build_student(vision_path, llm_path, tmp_path / "s")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == student.config.image_token_id == len(WORDS)
    assert student.config.text_config.vocab_size >= len(WORDS) + 1  # embeddings grew for the new token
    assert processor.tokenizer.chat_template is not None  # ChatML when the LLM had none


def test_unsupported_parts_are_refused(tmp_path, tokenizer, capsys):
    llm_path, _ = save_llm(tmp_path, tokenizer)
    assert (
        main(
            ["build-student", "--vision", str(llm_path), "--llm", str(llm_path), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "is not SigLIP or CLIP" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_student_takes_a_llava_hf_teachers_tokenizer_and_template(
    tmp_path, tokenizer, shapes, llava_hf_dir
):
    from distill.modeling import load_processor
    from distill.pairing import check_pair
    from tests.conftest import LLAVA_15_TEMPLATE

    vision_path, _ = save_vision(tmp_path, "siglip")
    llm_path, _ = save_llm(tmp_path, tokenizer)
    student, processor = build_student(
        vision_path, llm_path, tmp_path / "s", "--tokenizer-from", str(llava_hf_dir)
    )
    assert processor.tokenizer.chat_template == LLAVA_15_TEMPLATE  # the processor's, in llava-hf's layout
    teacher = load_processor(llava_hf_dir)
    teacher_config = load_llava(llava_hf_dir)[0].config
    report = check_pair(student.config, processor, teacher_config, teacher)
    assert report.vocab_size == len(teacher.tokenizer)
    assert student.config.image_token_id == teacher_config.image_token_id
    run = {  # and KD from it trains (the teacher sees its own CLIP crop of each image)
        "name": "from-llava-hf",
        "model": {"path": str(tmp_path / "s")},
        "teacher": {"path": str(llava_hf_dir)},
        "data": {"train_json": str(shapes / "train.json"), "max_length": 256},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "report_to": "none"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["check", str(tmp_path / "run.yaml")]) == 0
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_a_teacher_tokenizer_that_numbers_the_llms_tokens_otherwise_is_refused(
    tmp_path, llava_hf_dir, capsys
):
    vision_path, _ = save_vision(tmp_path, "siglip")
    llm_path = save_word_level_llm(tmp_path)
    command = [
        "build-student",
        "--vision",
        str(vision_path),
        "--llm",
        str(llm_path),
        "--out",
        str(tmp_path / "s"),
    ]
    assert main([*command, "--tokenizer-from", str(llava_hf_dir)]) == 2
    error = capsys.readouterr().err
    assert "numbers" in error and "the LLM's embeddings would be read for the wrong tokens" in error
    assert not (tmp_path / "s").exists()
