"""The Trainer examples (examples/*.py), run in-process through their ``main(argv)`` with tiny settings.

Each run trains for real on the offline data, saves the adapter, and the test reloads it with
``PeftModel.from_pretrained`` onto a base rebuilt from ``OUTPUT/base`` and compares with the logits the trained
model gave (``reference.safetensors``, written by the script).
"""

import importlib.util
import json
import os
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# 240 training digits at 32 px: seconds per run; the tests check plumbing and sanity, not final accuracy.
TINY = ["--train-size", "240", "--test-size", "100", "--image-size", "32", "--batch-size", "16", "--no-progress"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


classification = _load("image_classification")
segmentation = _load("semantic_segmentation")
detection = _load("object_detection")


pytestmark = pytest.mark.usefixtures("one_thread")


def _check_output_dir(out: Path, task: str, metric: str):
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json",
                 "reference.safetensors", "base/config.json", "base/model.safetensors"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.bin")), "safetensors only"
    assert not list(out.rglob("checkpoint-*"))
    card = (out / "README.md").read_text()
    assert task in card and metric in card


def _reload_and_compare(out: Path, base: torch.nn.Module, atol: float, call):
    reference = load_file(out / "reference.safetensors")
    reloaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        logits = call(reloaded, reference["pixel_values"])
    torch.testing.assert_close(logits, reference["logits"], atol=atol, rtol=0)


def _classify(model, x):
    outputs = model(x)
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def test_classification_lora_on_imagenet_mobilenet(tmp_path):
    summary = classification.main([*TINY, "--max-steps", "30", "--output-dir", str(tmp_path)])
    assert summary["method"] == "lora" and summary["preset"] == "conv" and summary["target_modules"] == 34
    assert summary["world_size"] == 1
    assert 0 < summary["trainable_share"] < 0.1
    assert summary["accuracy"] >= 0.2 and summary["accuracy"] > summary["accuracy_before"] + 0.05
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == summary["accuracy"]
    assert summary["reload_max_abs_diff"] <= 1e-5
    _check_output_dir(tmp_path, "image-classification", "accuracy")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]

    base = classification.load_base(str(tmp_path / "base"))
    assert base.pretrained_cfg["file"] == str(tmp_path / "base"), "timm metadata points to the saved base"
    _reload_and_compare(tmp_path, base, 1e-5, _classify)


def test_classification_adalora_allocates_ranks_on_convolutions(tmp_path):
    summary = classification.main([*TINY, "--method", "adalora", "--max-steps", "20",
                                   "--output-dir", str(tmp_path)])
    ranks = summary["adalora_ranks"]
    assert len(ranks) == 34
    assert min(ranks.values()) < summary["adalora_init_r"], "the callback pruned ranks"
    assert sum(ranks.values()) <= summary["adalora_target_r"] * len(ranks)
    assert summary["adalora_budget_logged"], "adalora_budget reached the logs"
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"]
    assert summary["accuracy"] > summary["accuracy_before"]
    _check_output_dir(tmp_path, "image-classification", "accuracy")
    _reload_and_compare(tmp_path, classification.load_base(str(tmp_path / "base")), 1e-4, _classify)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_classification_loha_lokr_on_tiny_transformers_vit(tmp_path, method):
    summary = classification.main([*TINY, "--model", "hf:vit", "--method", method, "--max-steps", "8",
                                   "--output-dir", str(tmp_path)])
    assert summary["preset"] == "attention" and summary["target_modules"] == 8
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["train_steps"] == 8
    _check_output_dir(tmp_path, "image-classification", "accuracy")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == method.upper()
    base = classification.load_base(str(tmp_path / "base"))
    assert base.config._name_or_path == str(tmp_path / "base"), "transformers metadata points to the saved base"
    _reload_and_compare(tmp_path, base, 1e-6, _classify)


def test_classification_4bit_lora_on_tiny_transformers_vit(tmp_path):
    import bitsandbytes as bnb

    summary = classification.main([*TINY, "--model", "hf:vit", "--quantization", "4bit", "--max-steps", "8",
                                   "--output-dir", str(tmp_path)])
    assert summary["quantization"] == "4bit" and 0.0 <= summary["accuracy"] <= 1.0
    _check_output_dir(tmp_path, "image-classification", "accuracy")
    base = classification.quantize_base(classification.load_base(str(tmp_path / "base")), "4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    _reload_and_compare(tmp_path, base, 1e-6, _classify)


def test_classification_quantization_of_a_cnn_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--quantization 4bit: .*ViT-style"):
        classification.main([*TINY, "--quantization", "4bit", "--max-steps", "1", "--no-save-base",
                             "--output-dir", str(tmp_path)])


def test_segmentation_lora_on_pretrained_tiny_segformer(tmp_path):
    summary = segmentation.main(["--pretrain-steps", "20", "--max-steps", "10", "--batch-size", "8",
                                 "--no-progress", "--output-dir", str(tmp_path)])
    for key in ("mean_iou", "pixel_accuracy", "iou_background", "iou_nucleus", "base_mean_iou"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["pixel_accuracy"] > 0.6, "nuclei cover about a third of the pixels"
    assert summary["preset"] == "attention" and summary["train_steps"] == 10
    assert "random init" in summary["base_weights"]
    _check_output_dir(tmp_path, "image-segmentation", "mean_iou")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["decode_head"]
    from transformers import SegformerForSemanticSegmentation

    base = SegformerForSemanticSegmentation.from_pretrained(str(tmp_path / "base"))
    assert base.config._name_or_path == str(tmp_path / "base")
    _reload_and_compare(tmp_path, base, 1e-6, lambda model, x: model(pixel_values=x).logits)


def test_segmentation_adalora(tmp_path):
    summary = segmentation.main(["--method", "adalora", "--pretrain-steps", "20", "--max-steps", "20",
                                 "--batch-size", "8", "--no-progress", "--output-dir", str(tmp_path)])
    assert min(summary["adalora_ranks"].values()) < 8
    assert 0.0 <= summary["mean_iou"] <= 1.0
    from transformers import SegformerForSemanticSegmentation

    base = SegformerForSemanticSegmentation.from_pretrained(str(tmp_path / "base"))
    _reload_and_compare(tmp_path, base, 1e-4, lambda model, x: model(pixel_values=x).logits)


def _check_detection_dir(out: Path):
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json",
                 "reference.safetensors", "peft_vision_ext.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "object-detection" in card and "map_50" in card


def test_detection_lora_on_imagenet_fcos_reloads_without_a_base(tmp_path):
    summary = detection.main(["--steps", "12", "--train-size", "48", "--test-size", "16", "--batch-size", "4",
                              "--no-progress", "--output-dir", str(tmp_path)])
    assert summary["preset"] == "backbone" and summary["target_modules"] == 34
    assert summary["modules_to_save"] == ["backbone.fpn", "head"]
    assert 0.05 < summary["trainable_share"] < 0.25
    assert summary["map_50_before"] < 0.02, "new heads detect nothing before training"
    assert summary["reload_max_abs_diff"] == 0.0, "load_adapter rebuilt the recipe's base exactly"
    assert summary["merge_max_abs_diff"] <= 1e-3
    _check_detection_dir(tmp_path)
    metadata = json.loads((tmp_path / "peft_vision_ext.json").read_text())
    assert metadata["base_model"]["library"] == "peft_vision_ext"
    assert metadata["base_model"]["builder"] == "fcos_mobilenet_v2"


@pytest.mark.parametrize("model", ["hf:detr", "hf:deformable_detr"])
def test_detection_transformers_detr_runs_the_same_path(tmp_path, model):
    summary = detection.main(["--model", model, "--steps", "3", "--train-size", "16", "--test-size", "8",
                              "--batch-size", "4", "--no-progress", "--output-dir", str(tmp_path)])
    assert summary["target_modules"] > 0 and 0.0 <= summary["map_50"] <= 1.0
    assert summary["reload_max_abs_diff"] <= 1e-5 and summary["merge_max_abs_diff"] <= 1e-3
    _check_detection_dir(tmp_path)
    metadata = json.loads((tmp_path / "peft_vision_ext.json").read_text())
    assert metadata["base_model"]["name_or_path"] == str(tmp_path / "base")


def test_examples_have_help():
    for module in (classification, segmentation, detection):
        with pytest.raises(SystemExit) as info:
            module.parse_args(["--help"])
        assert info.value.code == 0
    assert os.path.basename(classification.__file__) == "image_classification.py"
