"""Vision presets: every registered family resolves a default preset that trains, on both lanes."""

import copy
import warnings

import peft
import pytest
import torch
from model_zoo import METHOD_CONFIGS, ZOO, adaptformer_refuses, all_models, model_output
from torch import nn

from peft_vision_ext import (
    EmptyPresetError,
    UnknownPresetError,
    VisionFamily,
    detect_family,
    list_presets,
    preset_config,
    register_family,
    resolve_targets,
)
from peft_vision_ext.families.registry import _FAMILIES
from peft_vision_ext.presets import PRESETS, SUPPORTED_METHODS, families, resolve_default
from peft_vision_ext.versions import peft_at_least

CASES = all_models()


def test_every_registered_family_has_a_test_model():
    assert set(ZOO) == {f.name for f in families() if f.task is None}


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()])


def _assert_untouched(model, snapshot):
    state, modules = snapshot
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_detection_and_presets(case):
    family, build, _ = CASES[case]
    model = build()
    detection = detect_family(model)
    assert detection is not None and detection.family.name == family
    presets = list_presets(model)
    assert presets, "no preset selects anything"
    for name, modules in presets.items():
        assert name in PRESETS
        assert modules == resolve_targets(model, name)
        assert not any(m == h or m.startswith(h + ".") for m in modules for h in detection.heads), \
            "a preset must never adapt the task head"
    assert "all" in presets


@pytest.mark.parametrize("method", SUPPORTED_METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_default_preset_trains_with_every_method(case, method):
    """get_peft_model(model, XConfig()) with no target_modules resolves the family default and trains."""
    family, build, shape = CASES[case]
    model = build()
    if method == "adaptformer" and adaptformer_refuses(model):  # AdaptFormer's blocks: no module holds such an MLP
        with pytest.raises(EmptyPresetError, match="selects no module"):
            peft.get_peft_model(model, METHOD_CONFIGS[method]())
        return
    expected = resolve_default(model, method)
    head_sizes = {h: sum(p.numel() for p in model.get_submodule(h).parameters()) for h in expected.modules_to_save}
    peft_model = peft.get_peft_model(model, METHOD_CONFIGS[method]())
    config = peft_model.peft_config["default"]
    # PEFT may compress a long target list to minimal suffixes; what matters is which modules it wrapped.
    assert set(peft_model.base_model.targeted_module_names) == set(expected.target_modules)
    assert (config.modules_to_save or []) == expected.modules_to_save
    if method == "ia3":
        assert set(config.feedforward_modules) == set(expected.feedforward_modules)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable
    for head, size in head_sizes.items():
        # Every parameter of the head has a trainable copy. (PEFT matches modules_to_save by suffix, so
        # DPT's "head" is wrapped at "head.head"; what counts is that all of it trains.)
        trained = sum(p.numel() for n, p in peft_model.named_parameters()
                      if p.requires_grad and n.startswith(f"base_model.model.{head}.") and "modules_to_save" in n)
        assert trained >= size, f"head {head} is not trained in full"
    peft_model.train()
    out = model_output(peft_model(torch.randn(*shape)))
    out.float().pow(2).mean().backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no adapter parameter received a gradient"


def test_preset_config_returns_ready_configs():
    _, build, shape = CASES["timm-vit"]
    model = build()
    config = preset_config(model, "lora", "attention-full", r=4)
    assert isinstance(config, peft.LoraConfig)
    assert set(config.target_modules) == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv",
                                          "blocks.1.attn.proj"}
    assert config.modules_to_save == ["head"]
    ia3 = preset_config(model, "ia3")
    assert set(ia3.feedforward_modules) == {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}
    explicit = preset_config(model, "lora", target_modules=["blocks.0.mlp.fc1"], modules_to_save=["norm"])
    assert explicit.target_modules == {"blocks.0.mlp.fc1"} and explicit.modules_to_save == ["norm"]
    with pytest.raises(ValueError, match="either preset"):
        preset_config(model, "lora", "mlp", target_modules=["x"])


def test_lora_presets_skip_dilated_convs_that_peft_lora_cannot_run(tmp_path):
    """Before peft 0.22 PEFT's LoRA conv ignores dilation (the presets leave those convs out); from 0.22 it passes the
    conv's dilation to lora_A, and the presets adapt them: merged and reloaded exactly."""

    _, build, shape = CASES["timm-skresnet"]
    model = build()
    dilated = {n for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.dilation != (1, 1) and m.groups == 1}
    assert dilated
    assert dilated <= set(resolve_targets(model, "conv", method="adalora"))
    if not peft_at_least("0.22"):
        assert not dilated & set(resolve_targets(model, "conv", method="lora"))
        return
    assert dilated <= set(resolve_targets(model, "conv", method="lora"))
    base = copy.deepcopy(model)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=sorted(dilated)))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)  # as if trained: the merge and the reload have something to carry
    x = torch.randn(shape)
    adapted.eval()
    with torch.no_grad():
        expected = adapted(x)
        with adapted.disable_adapter():
            assert (expected - adapted(x)).abs().max() > 1e-4  # the adapters on the dilated convs act
        adapted.save_pretrained(tmp_path)
        reloaded = peft.PeftModel.from_pretrained(base, tmp_path).eval()
        torch.testing.assert_close(reloaded(x), expected)
        torch.testing.assert_close(adapted.merge_and_unload()(x), expected, atol=1e-4, rtol=1e-4)


def test_transformers_presets_follow_the_installed_generation():
    import transformers

    _, build, _ = CASES["hf-vit"]
    targets = set(resolve_targets(build(), "attention-full"))
    if transformers.__version__.startswith("4."):
        assert "vit.encoder.layer.0.attention.attention.query" in targets
        assert "vit.encoder.layer.0.attention.output.dense" in targets
    else:
        assert "vit.layers.0.attention.q_proj" in targets
        assert "vit.layers.0.attention.o_proj" in targets
    assert len(targets) == 8


def test_unknown_preset_lists_valid_ones_and_leaves_model_untouched():
    _, build, _ = CASES["timm-resnet"]
    model = build()
    snapshot = _snapshot(model)
    with pytest.raises(UnknownPresetError, match="conv, conv\\+depthwise, all"):
        resolve_targets(model, "atention")
    with pytest.raises(UnknownPresetError):
        preset_config(model, "lora", "atention")
    _assert_untouched(model, snapshot)


def test_empty_preset_names_family_and_roles_and_leaves_model_untouched():
    _, build, _ = CASES["timm-resnet"]
    model = build()
    snapshot = _snapshot(model)
    with pytest.raises(EmptyPresetError, match="timm-resnet.*roles: conv x8"):
        resolve_targets(model, "attention")
    _assert_untouched(model, snapshot)


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = _MySelfAttention(dim)
        self.ffn_in = nn.Linear(dim, 4 * dim)
        self.ffn_out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.mixer(self.norm(x))
        return x + self.ffn_out(torch.relu(self.ffn_in(x)))


class _MySelfAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.to_qkv_fused = nn.Linear(dim, 3 * dim)
        self.final = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.to_qkv_fused(x).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.final(attn @ v)


class _UnknownViT(nn.Module):
    def __init__(self, dim=16, classes=3):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(_Block(dim), _Block(dim))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.classifier(self.blocks(x).mean(1))


def test_unregistered_model_gets_structural_preset():
    model = _UnknownViT()
    detection = detect_family(model)
    assert detection.family.name == "generic-transformer" and not detection.registered
    assert resolve_targets(model, "attention") == ["blocks.0.mixer.to_qkv_fused", "blocks.1.mixer.to_qkv_fused"]
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2))
    assert peft_model.peft_config["default"].modules_to_save == ["classifier"]
    peft_model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_registering_a_family_is_a_few_lines():
    family = VisionFamily("my-vit", "any", "transformer", classes=("_UnknownViT",),
                          defaults={"lora": "all-linear"})
    try:
        register_family(family)
        register_family(family)  # idempotent
        with pytest.raises(ValueError, match="already registered"):
            register_family(VisionFamily("my-vit", "any", "cnn", classes=("_UnknownViT",)))
        model = _UnknownViT()
        assert detect_family(model).family.name == "my-vit"
        peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2))
        assert len(peft_model.peft_config["default"].target_modules) == 8
    finally:
        _FAMILIES.pop("my-vit", None)


def test_docs_presets_table_is_rendered_from_the_data():
    import pathlib

    from peft_vision_ext.presets.catalog import presets_markdown

    page = (pathlib.Path(__file__).parent.parent / "docs" / "guides" / "presets.md").read_text()
    assert presets_markdown() in page, "docs/guides/presets.md differs from PRESETS: run `python docs/generate.py`"


class _UserWrapper(nn.Module):
    """A registered model inside the user's own module, as people write to give Trainer a model that returns a loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels=None):
        output = model_output(self.model(pixel_values))
        loss = output.float().pow(2).mean() if labels is not None else None
        return {"loss": loss, "logits": output}


@pytest.mark.parametrize("case", sorted(ZOO))
def test_heads_of_a_wrapped_registered_model_are_found(case):
    """The wrapper is unregistered (structural inference); its heads are the wrapped model's, by their path in it.
    Before, a wrapped model's new head was neither trained (no modules_to_save) nor kept out of quantization."""
    inner = ZOO[case][0]()
    expected = tuple(f"model.{name}" for name in detect_family(inner).heads)
    detection = detect_family(_UserWrapper(inner))
    assert not detection.registered and detection.heads == expected


def test_wrapped_vit_trains_its_head_and_keeps_it_out_of_quantization():
    import peft_vision_ext as pve

    build, shape = ZOO["timm-vit"]
    wrapped = _UserWrapper(build())
    assert pve.quantization.plan(wrapped).kept == ("model.head",)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the probe forward runs: the input size comes from inside
        peft_model = peft.get_peft_model(wrapped, peft.LoraConfig(r=2))
    assert peft_model.peft_config["default"].modules_to_save == ["model.head"]
    peft_model(torch.randn(*shape), labels=torch.zeros(shape[0]))["loss"].backward()
    head = peft_model.base_model.model.model.head.modules_to_save["default"]
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
