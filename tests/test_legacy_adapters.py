"""An adapter trained on transformers 4.x (tests/data/vit_v4_lora, made by make_v4_adapter_fixture.py on the old
lane) loads on the installed transformers and reproduces the outputs it had on 4.x."""

import logging
import os

import peft
import torch
import transformers
from safetensors.torch import load_file

import peft_vision_ext  # noqa: F401 - installs the hooks

ROOT = os.path.join(os.path.dirname(__file__), "data", "vit_v4_lora")


def test_transformers4_adapter_loads_with_same_outputs(caplog):
    model = transformers.ViTForImageClassification.from_pretrained(os.path.join(ROOT, "base")).eval()
    expected = load_file(os.path.join(ROOT, "expected.safetensors"))
    with caplog.at_level(logging.WARNING, logger="peft_vision_ext"):
        peft_model = peft.PeftModel.from_pretrained(model, os.path.join(ROOT, "adapter")).eval()
    targeted = set(peft_model.base_model.targeted_module_names)
    assert len(targeted) == 8  # query, value, attention output and MLP output ("output.dense") of 2 layers
    with torch.no_grad():
        logits = peft_model(pixel_values=expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
    if transformers.__version__.startswith("4."):
        assert not caplog.records, "nothing to translate on transformers 4"
    else:
        assert "vit.layers.0.attention.q_proj" in targeted
        assert any("transformers 4.x" in r.getMessage() for r in caplog.records), "translation must be announced"


def test_current_adapters_are_not_translated(tmp_path, caplog):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2))
    peft_model.save_pretrained(tmp_path)
    fresh = transformers.ViTForImageClassification(config)
    fresh.load_state_dict(model.state_dict(), strict=False)
    with caplog.at_level(logging.WARNING, logger="peft_vision_ext"):
        peft.PeftModel.from_pretrained(fresh, tmp_path)
    assert not [r for r in caplog.records if "transformers 4.x" in r.getMessage()]


def test_renamed_modules_to_save_are_translated_and_existing_ones_kept():
    import pytest
    from peft.tuners.tuners_utils import check_target_module_exists

    from peft_vision_ext.legacy_names import translate_config

    if transformers.__version__.startswith("4."):
        pytest.skip("nothing is renamed on transformers 4")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config)
    lora = peft.LoraConfig(r=2, target_modules=["query"], modules_to_save=["intermediate.dense", "classifier"])
    assert translate_config(model, lora, check_target_module_exists)
    assert set(lora.target_modules) == {"vit.layers.0.attention.q_proj", "vit.layers.1.attention.q_proj"}
    assert lora.modules_to_save == ["vit.layers.0.mlp.fc1", "vit.layers.1.mlp.fc1", "classifier"]


def test_a_new_config_with_4x_names_is_told_what_happened_to_it(caplog):
    """A brand-new LoraConfig(target_modules=["query", "value"]) on transformers 5: the message speaks of this
    config (its new targets and the names to pass), not of a saved adapter or weights, which do not exist."""
    import pytest

    if transformers.__version__.startswith("4."):
        pytest.skip("nothing is renamed on transformers 4")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config)
    with caplog.at_level(logging.WARNING, logger="peft_vision_ext"):
        peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"]))
    messages = [r.getMessage() for r in caplog.records if "transformers 4.x" in r.getMessage()]
    assert len(messages) == 1
    assert "this config now targets 4 modules" in messages[0]
    assert "target_modules=['q_proj', 'v_proj']" in messages[0]
    assert "adapter" not in messages[0] and "weights" not in messages[0]
    assert set(peft_model.peft_config["default"].target_modules) == {
        f"vit.layers.{i}.attention.{p}_proj" for i in range(2) for p in "qv"}
