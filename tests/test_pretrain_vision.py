"""The tiny default's vision pretraining: scene labels, a tower that learns them, and model.vision_init."""

import random

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoImageProcessor

from distill.__main__ import main
from distill.configuration import ConfigError
from distill.modeling import ModelFormatError, build_image_processor
from distill.pretrain_vision import REPORT_NAME, pretrain, pretrain_to, scene_batch
from distill.run_config import ArchConfig
from distill.synth.scene_labels import LABEL_CLASSES, scene_labels
from distill.synth.world import Scene, Shape, render, sample_scene
from distill.vision_encoders import copy_vision_tower
from tests.conftest import TINY, make_model


def write_config(path, arch):
    path.write_text(yaml.safe_dump({"name": "t", "model": {"tokenizer": "unused", "arch": arch}}))
    return path


def test_scene_labels_name_what_the_image_shows():
    shapes = (Shape("blue", "triangle", 1, 20, 0, 0), Shape("blue", "triangle", 3, 22, 1, -1))
    scene = Scene(shapes, word="egg", word_cell=2, background=(250, 250, 250))
    assert scene_labels(scene) == {
        "colour": 1,
        "kind": 2,
        "count": 1,
        "word": 12,  # "egg", the last of the 12 words (0: no sign)
        "cell 0": 0,
        "cell 1": 1,
        "cell 2": 2,
        "cell 3": 1,
    }
    rng = random.Random(0)
    for _ in range(500):
        for name, label in scene_labels(sample_scene(rng)).items():
            assert 0 <= label < LABEL_CLASSES[name]


def test_the_tower_learns_the_scenes_and_reports_held_out_accuracy():
    # the tests' tiny shapes: 32 px, patch 16, 4 visual tokens
    _, image_processor, report = pretrain(ArchConfig(**TINY), 80, 32, 3e-3, seed=0, eval_scenes=300)
    accuracy = report["held_out_accuracy"]
    assert set(accuracy) == set(LABEL_CLASSES)
    assert accuracy["colour"] > 0.6 and accuracy["cell 0"] > 0.6  # chance: 0.26 and 0.5 for the commonest
    pixels, labels = scene_batch(random.Random(5), 4, image_processor)
    assert pixels.shape == (4, 3, 32, 32) and labels["word"].shape == (4,)


def test_the_saved_tower_initialises_a_llava_and_a_wrong_shape_is_named(tmp_path, tokenizer):
    config = write_config(tmp_path / "arch.yaml", TINY)
    final, report = pretrain_to(config, tmp_path / "vision", steps=2, batch_size=4)
    assert (final / REPORT_NAME).is_file() and report["steps"] == 2
    assert not list(tmp_path.glob("vision/.final.partial-*"))  # written whole, then renamed
    saved = load_file(final / "model.safetensors")

    model, _ = make_model(tokenizer)
    copy_vision_tower(model, final)
    tower = model.model.vision_tower.state_dict()
    assert saved.keys() == tower.keys() and all(torch.equal(saved[k], tower[k]) for k in saved)

    wider, _ = make_model(tokenizer, vision_hidden_size=64)
    with pytest.raises(ModelFormatError, match="vision tower does not match"):
        copy_vision_tower(wider, final)
    with pytest.raises(ModelFormatError, match="no config.json"):
        copy_vision_tower(model, tmp_path / "missing")


def test_the_saved_image_processor_prepares_images_as_llava_does(tmp_path):
    final, _ = pretrain_to(
        write_config(tmp_path / "arch.yaml", TINY), tmp_path / "vision", steps=1, batch_size=2
    )
    image = render(sample_scene(random.Random(3)))
    saved = AutoImageProcessor.from_pretrained(final)(image, return_tensors="pt")["pixel_values"]
    expected = build_image_processor(32)(image, return_tensors="pt")["pixel_values"]
    assert saved.shape == (1, 3, 32, 32) and torch.equal(saved, expected)


def test_cli_refuses_a_config_without_an_arch(tmp_path, capsys):
    config = tmp_path / "path.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "model": {"path": "runs/x"}}))
    assert main(["pretrain-vision", "--config", str(config), "--out", str(tmp_path / "v")]) == 2
    assert "model.arch is not set" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="at least 1"):
        pretrain_to(write_config(tmp_path / "a.yaml", TINY), tmp_path / "v", steps=0)


def test_a_clip_tower_is_pretrained_on_the_tokens_llava_reads_and_initialises_a_clip_llava(
    tmp_path, tokenizer
):
    clip = {**TINY, "vision_model_type": "clip"}
    _, _, report = pretrain(ArchConfig(**clip), 2, 4, 1e-3, seed=0, eval_scenes=8)
    assert set(report["held_out_accuracy"]) == set(LABEL_CLASSES)  # heads sized for 4 patches, CLS dropped
    final, _ = pretrain_to(
        write_config(tmp_path / "clip.yaml", clip), tmp_path / "vision", steps=1, batch_size=2
    )
    model, _ = make_model(tokenizer, vision_model_type="clip")
    copy_vision_tower(model, final)
    saved = load_file(final / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.model.vision_tower.state_dict().items())
