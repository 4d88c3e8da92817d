"""Hook base-rewriting-init-save: PiSSA / OLoRA / CorDA adapters are saved as PEFT's conversion to a plain LoRA of
the original base, and load_adapter accepts that base."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_vision_ext as pve
from peft_vision_ext.compat.kinds import LayerKind
from peft_vision_ext.compat.verify import cell_config, example_input, perturb_adapter, run_cell, tiny_model
from peft_vision_ext.fingerprints import fingerprint
from peft_vision_ext.hub.metadata import METADATA_FILE
from peft_vision_ext.peft_hooks import ORIGINALS

VIT_ARGS = dict(img_size=32, patch_size=8, depth=2, num_classes=10)


def _local_vit(tmp_path):
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224", **VIT_ARGS)
    save_for_hf(model, str(tmp_path / "base"), model_args=VIT_ARGS, safe_serialization=True)
    return timm.create_model(f"local-dir:{tmp_path / 'base'}", pretrained=True)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_plain_save_is_converted_and_load_adapter_accepts_the_original_base(tmp_path, init):
    model = _local_vit(tmp_path)
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], init_lora_weights=init)
    peft_model = get_peft_model(model, config)
    assert not torch.equal(model.blocks[0].mlp.fc1.base_layer.weight, original["blocks.0.mlp.fc1.weight"])
    perturb_adapter(peft_model)  # stands in for training
    x = torch.randn(2, 3, 32, 32)
    reference = peft_model.eval()(x)
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["r"] == 8  # PEFT's conversion: rank 2r, plain init
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["adapters"]["default"]["rank"] == 8 and meta["adapters"]["default"]["converted_from"] == init
    assert f"LoRA (r=8), initialised with {init}" in (tmp_path / "adapter" / "README.md").read_text()
    assert meta["base_fingerprint"]["blocks.0.mlp.fc1.weight"] == fingerprint(
        {"blocks.0.mlp.fc1.weight": original["blocks.0.mlp.fc1.weight"]}, [])["blocks.0.mlp.fc1.weight"]
    loaded = pve.load_adapter(str(tmp_path / "adapter"))  # rebuilds the original base and checks its fingerprint
    torch.testing.assert_close(loaded(x), reference, atol=1e-5, rtol=1e-5)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(x), reference, atol=1e-5, rtol=1e-5)
    # ... and the model the user trains on is unchanged by the save: it still holds its residual and its factors
    torch.testing.assert_close(peft_model(x), reference, atol=0, rtol=0)


def test_corda_reloads_only_converted() -> None:
    """CorDA's own save keeps init 'corda': the reload needs its calibration again and raises (upstream)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_cell("lora-corda", LayerKind.LINEAR)  # plugin save, then a reload onto a fresh cell
        assert run.ok, run
        x = example_input(LayerKind.LINEAR)
        from peft.tuners.lora.corda import preprocess_corda

        model = tiny_model(LayerKind.LINEAR)
        config = cell_config("lora-corda")
        preprocess_corda(model, config, run_model=lambda: [model(sample[None]) for sample in x])
        adapted = get_peft_model(model, config)
        perturb_adapter(adapted)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ORIGINALS["base-rewriting-init-save"](adapted, folder)
        with pytest.raises(ValueError, match="preprocess_corda"):
            PeftModel.from_pretrained(tiny_model(LayerKind.LINEAR), folder)


def test_two_rewriting_adapters_are_saved_one_at_a_time(tmp_path) -> None:
    model = get_peft_model(tiny_model(LayerKind.LINEAR), cell_config("lora-pissa"))
    model.add_adapter("second", cell_config("lora-olora"))
    with pytest.raises(ValueError, match="selected_adapters"):
        model.save_pretrained(tmp_path / "both")
    model.save_pretrained(tmp_path / "one", selected_adapters=["second"])
    assert json.loads((tmp_path / "one" / "second" / "adapter_config.json").read_text())["r"] == 8


def test_a_merged_model_is_fingerprinted_as_merged(tmp_path) -> None:
    """After merge_and_unload the base holds new weights: a later adapter's card must not claim the originals."""
    model = _local_vit(tmp_path)
    peft_model = get_peft_model(model, peft.LoraConfig(r=4, target_modules=["fc1"], init_lora_weights="pissa"))
    perturb_adapter(peft_model)
    merged = peft_model.merge_and_unload()
    again = get_peft_model(merged, peft.LoraConfig(r=4, target_modules=["fc2"]))
    again.save_pretrained(tmp_path / "again")
    meta = json.loads((tmp_path / "again" / METADATA_FILE).read_text())
    weight = merged.blocks[0].mlp.fc1.weight
    assert meta["base_fingerprint"]["blocks.0.mlp.fc1.weight"] == fingerprint({"w": weight}, [])["w"]


def test_converted_save_keeps_the_trained_head(tmp_path) -> None:
    """PEFT's conversion (peft 0.17.1 to 0.21.2) returns only the converted factors: the head trained in full
    (modules_to_save) was not saved, and the adapter then failed to load (KeyError on the head's weight)."""
    model = _local_vit(tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], init_lora_weights="pissa",
                             modules_to_save=["head"])
    peft_model = get_peft_model(model, config)
    perturb_adapter(peft_model)
    with torch.no_grad():
        peft_model.base_model.model.head.modules_to_save["default"].weight.add_(0.5)  # stands in for training
    x = torch.randn(2, 3, 32, 32)
    reference = peft_model.eval()(x)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = pve.load_adapter(str(tmp_path / "adapter"))
    torch.testing.assert_close(loaded(x), reference, atol=1e-5, rtol=1e-5)
    import timm

    original = timm.create_model(f"local-dir:{tmp_path / 'base'}", pretrained=True)
    plain = PeftModel.from_pretrained(original, str(tmp_path / "adapter")).eval()  # PEFT alone
    torch.testing.assert_close(plain(x), reference, atol=1e-5, rtol=1e-5)
