"""SSF (scaling and shifting features) as a PEFT method: registered with PEFT, identity at the start, acting after a
step, exact merge / unmerge / reload on every family, the PEFT workflow (adapters, Trainer, quantized bases)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import pytest
import torch
from model_zoo import all_models, model_output
from model_zoo import awake_case as _build
from model_zoo import output_without_grad as _out
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.layers.kinds import LayerKind, layer_kind
from peft_vision_ext.matrix.verdicts import Operation
from peft_vision_ext.peft_hooks import active_hooks
from peft_vision_ext.tuners import SSFConfig, SSFLayer

CASES = list(all_models())
#: families whose default SSF preset reaches norm layers (transformers with LayerNorm, CNNs with plain BatchNorm)
TOLERANCE = 1e-5


def _ssf_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "ssf_" in n and p.requires_grad]


def _perturb(model: nn.Module, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in _ssf_parameters(model):
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= TOLERANCE * (1 + b.abs().max().item())


def test_ssf_is_a_peft_method_registered_through_the_hook() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    assert "vision-peft-methods" in active_hooks()
    assert PeftType.SSF == "SSF" and PeftType("SSF") is PeftType.SSF and PeftType.SSF in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.SSF] is SSFConfig
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.SSF] == "ssf_"
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.SSF].__name__ == "SSFModel"
    assert SSFConfig().peft_type is PeftType.SSF
    pve.register()  # installing again changes nothing
    assert list(PeftType).count(PeftType.SSF) == 1


@pytest.mark.parametrize("key", CASES)
def test_default_is_identity_then_merges_unmerges_and_reloads_exactly(key: str, tmp_path: Path,
                                                                        one_thread: None) -> None:
    """get_peft_model(model, SSFConfig()): the family's default (every Linear, Conv2d and norm of the backbone the
    scale and shift can merge into) starts as the base model, acts once trained, and merges, unmerges, saves and
    reloads to the same outputs."""
    model, x = _build(key)
    base = _out(model, x)
    adapted = get_peft_model(model, SSFConfig()).eval()
    wrapped = [m for m in adapted.modules() if isinstance(m, SSFLayer)]
    assert wrapped
    assert _close(_out(adapted, x), base), "SSF must start as the identity"
    _perturb(adapted)
    out = _out(adapted, x)
    assert not torch.equal(out, base)
    adapted.save_pretrained(tmp_path)
    fresh, _ = _build(key)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(_out(reloaded, x), out)
    adapted.merge_adapter()
    assert _close(_out(adapted, x), out)
    adapted.unmerge_adapter()
    assert _close(_out(adapted, x), out)
    merged = reloaded.merge_and_unload()
    assert not any(isinstance(m, SSFLayer) for m in merged.modules())
    assert _close(_out(merged, x), out), "merge after a reload"


@pytest.mark.parametrize(("key", "kinds"), [
    ("timm-vit", {LayerKind.NORM, LayerKind.LINEAR, LayerKind.CONV2D}),  # the patch embedding is a conv
    ("hf-vit", {LayerKind.NORM, LayerKind.LINEAR, LayerKind.CONV2D}),
    ("tv-vit", {LayerKind.NORM, LayerKind.LINEAR, LayerKind.MHA, LayerKind.CONV2D}),
    ("timm-convnext", {LayerKind.NORM, LayerKind.CONV2D_1X1}),  # hybrid: norms and the MLPs (1x1 convs in atto)
    ("hf-mobilenet", {LayerKind.NORM}),  # CNN: after each conv's norm (not after the conv as well)
    ("timm-resnet", {LayerKind.NORM}),
])
def test_default_reaches_what_ssf_follows_and_never_the_head(key: str, kinds: set[LayerKind]) -> None:
    """SSF's default: transformers: after every Linear, Conv2d and norm layer of the backbone; CNNs and hybrids:
    after every norm and Linear layer (a conv's norm follows it); never inside the task head."""
    model, _ = _build(key)
    adapted = get_peft_model(model, SSFConfig())
    found = {layer_kind(m.get_base_layer()) for m in adapted.modules() if isinstance(m, SSFLayer)}
    assert found == kinds
    heads = adapted.peft_config["default"].modules_to_save
    assert heads and not any(name.startswith(f"base_model.model.{head}.") and isinstance(m, SSFLayer)
                             for head in heads for name, m in adapted.named_modules())


def test_parents_that_pass_their_own_bias_are_left_out_of_the_default_and_refused_for_merging() -> None:
    """timm BEiT adds its own q/v biases in F.linear(x, qkv.weight, bias): the default leaves qkv out (and merges);
    targeted explicitly, qkv is routed for training and its merge is refused before anything changes."""
    model, x = _build("timm-beit")
    default = get_peft_model(copy.deepcopy(model), SSFConfig())
    assert not any(name.endswith("attn.qkv") for name in default.base_model.targeted_module_names)
    adapted = get_peft_model(model, SSFConfig(target_modules=["qkv"]))
    _perturb(adapted)
    out = _out(adapted.eval(), x)
    assert not torch.equal(out, _out(_build("timm-beit")[0], x)), "routed: the adapter acts"
    report = pve.check(_build("timm-beit")[0], SSFConfig(target_modules=["qkv"]))
    assert report.ok and report.refused(Operation.MERGE)
    with pytest.raises(UnsupportedCombinationError, match="its own bias"):
        adapted.merge_and_unload()
    assert torch.equal(_out(adapted, x), out), "a refused merge leaves the model as it was"


def test_timm_norm_activation_layers_get_ssf_between_the_norm_and_its_activation() -> None:
    """timm's BatchNormAct2d is act(drop(bn(x))): SSF after the norm goes before the activation, where it merges into
    the norm's affine parameters exactly."""
    model, x = _build("timm-efficientnet")
    adapted = get_peft_model(model, SSFConfig()).eval()
    layers = {name: m for name, m in adapted.named_modules()
              if isinstance(m, SSFLayer) and type(m.get_base_layer()).__name__ == "BatchNormAct2d"
              and not isinstance(m.get_base_layer().act, nn.Identity)}
    assert layers
    _perturb(adapted)
    layer = next(iter(layers.values()))
    norm = layer.get_base_layer()
    inputs = torch.randn(2, norm.num_features, 4, 4)
    normalised = nn.functional.batch_norm(inputs, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                          False, 0.0, norm.eps)
    scale, shift = layer.ssf_scale["default"], layer.ssf_shift["default"]
    expected = norm.act(normalised * scale[:, None, None] + shift[:, None, None])
    with torch.no_grad():
        assert torch.allclose(layer(inputs), expected, atol=1e-6)
    out = _out(adapted, x)
    assert _close(_out(adapted.merge_and_unload(), x), out)


def test_a_norm_that_does_more_than_normalise_trains_but_refuses_merging() -> None:
    class NormThenGelu(nn.LayerNorm):
        def __init__(self) -> None:
            super().__init__(4)
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(super().forward(x))

    holder = nn.Sequential(nn.Linear(4, 4), NormThenGelu())
    adapted = get_peft_model(holder, SSFConfig(target_modules=["1"]))
    _perturb(adapted)
    x = torch.randn(3, 4)
    out = _out(adapted, x)
    with pytest.raises(ValueError, match="NormThenGelu applies act after normalising"):
        adapted.merge_and_unload()
    assert torch.equal(_out(adapted, x), out), "a refused merge leaves the model as it was"


def test_saved_files_are_peft_files_and_the_card_says_what_loads_them(tmp_path: Path) -> None:
    model, x = _build("timm-vit")
    adapted = get_peft_model(model, SSFConfig())
    _perturb(adapted)
    adapted.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SSF" and config["init_weights"] is True
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert keys and all("ssf_scale" in k or "ssf_shift" in k or "head" in k for k in keys)
    assert peft.PeftConfig.from_pretrained(str(tmp_path)).__class__ is SSFConfig
    card = (tmp_path / "README.md").read_text()
    assert "| Method | SSF |" in card and "`import peft_vision_ext` before loading" in card
    loaded = pve.load_adapter(str(tmp_path), base_model=_build("timm-vit")[0])
    assert torch.equal(_out(loaded.eval(), x), _out(adapted.eval(), x))


def test_several_adapters_switch_disable_delete_and_load_like_lora(tmp_path: Path) -> None:
    model, x = _build("timm-vit")
    base = _out(model, x)
    adapted = get_peft_model(model, SSFConfig()).eval()
    _perturb(adapted, seed=3)
    first = _out(adapted, x)
    # the same targets (a second default on a model that already holds adapters is not resolved: pass them)
    adapted.add_adapter("second", SSFConfig(target_modules=adapted.peft_config["default"].target_modules))
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if ".second" in n)
    adapted.set_adapter("second")
    assert all(p.requires_grad for n, p in adapted.named_parameters() if "ssf_" in n and ".second" in n)
    assert _close(_out(adapted, x), base), "the new adapter starts as the identity"
    _perturb(adapted, seed=4)  # moves "second" only: the first one is frozen now
    second = _out(adapted, x)
    assert not torch.equal(second, first)
    with adapted.disable_adapter():
        assert torch.equal(_out(adapted, x), base)
    adapted.set_adapter("default")
    assert torch.equal(_out(adapted, x), first)
    adapted.save_pretrained(tmp_path)  # both adapters (the second in a sub-folder)
    fresh = PeftModel.from_pretrained(_build("timm-vit")[0], tmp_path).eval()
    fresh.load_adapter(str(tmp_path / "second"), adapter_name="second")
    fresh.set_adapter("second")
    assert torch.equal(_out(fresh, x), second)
    adapted.delete_adapter("second")
    assert not any(".second" in n for n, _ in adapted.named_parameters())
    assert torch.equal(_out(adapted, x), first)


def test_paper_initialisation_is_random_and_close_to_the_identity() -> None:
    model, x = _build("timm-vit")
    base = _out(model, x)
    adapted = get_peft_model(model, SSFConfig(init_weights=False))
    scales = torch.cat([p.detach() for n, p in adapted.named_parameters() if "ssf_scale" in n])
    assert 0.9 < scales.min() and scales.max() < 1.1 and scales.std() > 0.005
    assert not torch.equal(_out(adapted.eval(), x), base)


def test_training_moves_every_adapter_after_one_step(one_thread: None) -> None:
    model, x = _build("hf-vit")
    adapted = get_peft_model(model, SSFConfig()).train()
    before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    model_output(adapted(x)).float().pow(2).mean().backward()
    optimizer.step()
    moved = [n for n, p in adapted.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert sorted(moved) == sorted(before)


def test_trainer_trains_and_saves_an_ssf_adapter(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model, _ = _build("hf-vit")
    adapted = get_peft_model(model, SSFConfig())
    generator = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": int(i % 3)} for i in range(8)]
    before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=adapted, args=args, train_dataset=data).train()
    assert any(not torch.equal(p, before[n]) for n, p in adapted.named_parameters() if "ssf_" in n)
    adapted.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "SSF"


@pytest.mark.parametrize("bits", [4, 8])
def test_ssf_trains_on_quantized_vits_and_refuses_their_merge(bits: int, one_thread: None) -> None:
    """Activations only: SSF needs no dequantized weight delta. Merging into a bitsandbytes weight is refused by the
    matrix (measured) before anything changes."""
    model, x = _build("timm-vit")
    pve.quantize(model, bits=bits)
    adapted = get_peft_model(model, SSFConfig())
    assert any(layer_kind(m.get_base_layer()).bits == bits for m in adapted.modules() if isinstance(m, SSFLayer))
    adapted.train()
    model_output(adapted(x)).float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in _ssf_parameters(adapted))
    adapted.eval()
    base = _out(adapted, x)
    _perturb(adapted)
    out = _out(adapted, x)
    assert not torch.equal(out, base)
    with pytest.raises(UnsupportedCombinationError, match="SSF cannot merge into bnb"):
        adapted.merge_and_unload()
    assert torch.equal(_out(adapted, x), out)


def test_check_counts_ssf_parameters_on_norm_layers_too() -> None:
    model, _ = _build("timm-vit")
    report = pve.check(model, SSFConfig())
    assert report.ok, report.render()
    adapted = get_peft_model(model, SSFConfig())
    ssf = sum(p.numel() for p in _ssf_parameters(adapted))
    assert report.adapter_params == ssf
    assert {m.kind for m in report.modules} >= {LayerKind.NORM, LayerKind.LINEAR}


def test_ssf_on_a_layer_it_cannot_follow_names_the_layer() -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.GELU()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="SSF cannot follow GELU layers"), \
            pytest.warns(UserWarning, match="not covered by the compatibility matrix"):
        get_peft_model(Holder(), SSFConfig(target_modules=["act"]))
