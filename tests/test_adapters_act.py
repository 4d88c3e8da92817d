"""Adapters must act: every wrapper the default presets create is called by the forward and moves the output when
perturbed; targets a forward never calls are refused; parents that compute F.linear with a layer's weight themselves
(timm BEiT/EVA/SwinV2, torchvision Swin) are routed through the wrappers, exactly (merge, reload, disable)."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import pytest
import torch
import torch.nn.functional as F
from model_zoo import adaptformer_refuses, all_models, model_output
from model_zoo import awake_case as _build
from model_zoo import output_without_grad as _out
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.compat.matrix import config_class
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.presets import SUPPORTED_METHODS
from peft_vision_ext.routing import BIAS_MERGING_METHODS, ROUTABLE_METHODS, routed_paths

CASES = list(all_models())
ROUTED_FAMILIES = ["timm-beit", "timm-eva", "timm-swinv2", "tv-swin"]


def _config(method: str, **kwargs: object) -> object:
    if method == "adalora":
        kwargs.setdefault("init_r", 4)
        kwargs.setdefault("total_step", 10)
    elif method in ("lora", "loha", "lokr", "vera"):
        kwargs.setdefault("r", 4)
    return config_class(method)(**kwargs)


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    """Every PEFT wrapper, except those inside another wrapper (PEFT's LoRA on nn.MultiheadAttention wraps its
    out_proj too and applies it by merging: called indirectly)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(name.startswith(outer + ".") for outer in found):
            found[name] = module
    return found


def _adapter_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]


def _perturb(parameters: list[torch.Tensor], seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def _first_tensor(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else next(o for o in output if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("method", SUPPORTED_METHODS)
@pytest.mark.parametrize("key", CASES)
def test_default_preset_adapters_are_called_and_move_the_output(key: str, method: str, one_thread: None) -> None:
    model, x = _build(key)
    if method == "adaptformer" and adaptformer_refuses(model):  # no module to sit beside: refused, model untouched
        with pytest.raises(pve.EmptyPresetError, match="selects no module"):
            get_peft_model(model, _config(method))
        return
    adapted = get_peft_model(model, _config(method)).eval()
    wrappers = _wrappers(adapted)
    assert wrappers
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in wrappers}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(_first_tensor(out)))
               for name, module in wrappers.items()]
    before = _out(adapted, x)
    assert sorted(name for name, seen in outputs.items() if not seen) == [], "wrappers the forward never calls"
    _perturb(_adapter_parameters(adapted))
    after = _out(adapted, x)
    for handle in handles:
        handle.remove()
    # every adapter changes what its layer returns, and the model's output changes with them (random task heads
    # with BatchNorm in eval mode damp it a lot: UperNet, SegFormer; exactly equal is what a dead adapter gives)
    assert [name for name, (first, second) in outputs.items() if torch.equal(first, second)] == []
    assert not torch.equal(after, before)
    if _responds_to_its_input(model, x):  # a random DPT's output hardly depends on its input: nothing to see there
        assert (after - before).abs().max().item() > 1e-6 * before.abs().max().item()


def _responds_to_its_input(model: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        first, second = _out(model, x), _out(model, 3 * x + 1)
    return (first - second).abs().max().item() > 1e-4 * first.abs().max().item()


@pytest.mark.parametrize("key", ROUTED_FAMILIES)
def test_parents_that_read_the_weight_are_routed(key: str, one_thread: None) -> None:
    model, x = _build(key)
    report = pve.check(model, _config("lora"))
    assert report.ok and report.routed, report.render()
    assert "routed:" in report.render()
    adapted = get_peft_model(model, _config("lora"))
    assert [p.removeprefix("base_model.model.") for p in routed_paths(adapted)] == report.routed
    # each routed wrapper, perturbed alone, moves the output
    for path in report.routed:
        before = _out(adapted, x)
        _perturb([p for n, p in adapted.get_submodule("base_model.model." + path).named_parameters()
                  if p.requires_grad])
        assert not torch.equal(_out(adapted, x), before), path


@pytest.mark.parametrize("method", sorted(ROUTABLE_METHODS))
@pytest.mark.parametrize("key", ROUTED_FAMILIES)
def test_routed_adapters_merge_reload_and_disable_exactly(key: str, method: str, tmp_path: Path,
                                                          one_thread: None) -> None:
    model, x = _build(key)
    base = _out(model, x)
    # SSF's default leaves routed layers out (it could not merge there): target them
    targets = {"vera": ["qkv"], "fourierft": ["qkv"], "oft": ["qkv"], "ssf": ["qkv"]}.get(method)
    kwargs = {"target_modules": targets} if targets else {}
    if method == "fourierft":
        kwargs["n_frequency"] = 16
    if method == "oft":
        kwargs.update(r=0, oft_block_size=4)
    adapted = get_peft_model(model, _config(method, **kwargs))
    assert routed_paths(adapted)
    _perturb(_adapter_parameters(adapted))
    adapted.eval()
    out = _out(adapted, x)
    assert (out - base).abs().max().item() > 1e-5
    with adapted.disable_adapter():
        assert torch.equal(_out(adapted, x), base)
    adapted.save_pretrained(tmp_path)
    fresh, _ = _build(key)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(_out(reloaded, x), out)
    if method in BIAS_MERGING_METHODS:  # the parent's own bias never reads a merged shift: refused, nothing changed
        with pytest.raises(UnsupportedCombinationError, match="its own bias"):
            adapted.merge_and_unload()
        assert torch.equal(_out(adapted, x), out)
        return
    merged = copy.deepcopy(adapted).merge_and_unload()
    assert (_out(merged, x) - out).abs().max().item() <= 1e-5 * (1 + out.abs().max().item())
    adapted.merge_adapter()
    assert (_out(adapted, x) - out).abs().max().item() <= 1e-5 * (1 + out.abs().max().item())


@pytest.mark.parametrize(("key", "config"), [
    ("timm-beit", peft.LoraConfig(r=4, use_dora=True)),
    ("timm-beit", peft.IA3Config(target_modules=["qkv"], feedforward_modules=[])),
    ("tv-swin", peft.BOFTConfig(boft_block_size=4, target_modules=["qkv"])),
], ids=["dora-beit", "ia3-beit", "boft-tv-swin"])
def test_methods_that_cannot_be_routed_are_refused(key: str, config: object) -> None:
    model, _ = _build(key)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(UnsupportedCombinationError, match="computes F.linear"):
        get_peft_model(model, config)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not pve.check(model, config).ok


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.spare = nn.Linear(8, 8)  # never used by forward
        self.shift = nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.proj.weight, self.proj.bias + self.shift)  # reads the weight, never calls proj
        return self.head(torch.relu(h))

    def example_input(self) -> torch.Tensor:
        return torch.randn(2, 8)


def test_targets_the_forward_never_calls_are_refused_with_the_path() -> None:
    model = _Unused()
    with pytest.raises(UnsupportedCombinationError, match=r"\(spare\): the model's forward never calls"):
        get_peft_model(model, peft.LoraConfig(r=2, target_modules=["spare"]))
    assert isinstance(model.spare, nn.Linear) and type(model.spare) is nn.Linear
    report = pve.check(model, peft.LoraConfig(r=2, target_modules=["proj", "spare"]))
    assert [m.path for m in report.refused()] == ["spare"] and report.routed == ["proj"]


def test_a_custom_parent_reading_the_weight_is_routed_with_its_own_bias(tmp_path: Path) -> None:
    model = _Unused()
    x = model.example_input()
    base = _out(model, x)
    adapted = get_peft_model(model, peft.LoraConfig(r=2, target_modules=["proj"]))
    assert torch.equal(_out(adapted, x), base)  # identity at init, the parent's bias (proj.bias + shift) kept
    _perturb(_adapter_parameters(adapted))
    out = _out(adapted, x)
    assert not torch.equal(out, base)
    merged = adapted.merge_and_unload()
    assert torch.allclose(_out(merged, x), out, atol=1e-6)


def test_multihead_attention_is_not_flagged_but_its_inner_out_proj_is() -> None:
    model, x = _build("tv-vit")
    adapted = get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4))  # the attention preset: the MHA modules
    assert any(type(m).__name__ == "MultiheadAttention" for m in _wrappers(adapted).values())
    with pytest.raises(UnsupportedCombinationError, match="never calls"):
        get_peft_model(model, peft.LoraConfig(r=4, target_modules=["out_proj"]))


def test_training_updates_routed_adapters(one_thread: None) -> None:
    model, x = _build("timm-beit")
    adapted = get_peft_model(model, peft.LoraConfig(r=4))
    adapted.train()
    model_output(adapted(x)).pow(2).mean().backward()
    grads = {n: p.grad for n, p in adapted.named_parameters() if p.requires_grad and "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


class _AuxInTraining(nn.Module):
    """Like torchvision's Inception: the auxiliary head runs in training mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.aux = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if self.training:
            h = h + self.aux(h)
        return self.fc(h.mean((2, 3)))

    def example_input(self) -> torch.Tensor:
        return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_modules_called_only_in_training_are_not_refused_and_the_probe_changes_nothing() -> None:
    from peft_vision_ext.compat.probe import observe

    model = _AuxInTraining().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    observation = observe(model, ["conv", "aux.1"])
    assert observation.training_only == ("aux.1",) and observation.never_called(["conv", "aux.1"]) == []
    assert torch.equal(torch.get_rng_state(), rng)  # the training-mode forward's dropout drew from a forked generator
    assert not model.training and not model.aux.training  # modes restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # BatchNorm statistics untouched
    with pytest.warns(UserWarning, match=r"aux\.1 run in training mode only"):
        adapted = get_peft_model(model, peft.LoraConfig(r=2, target_modules=["conv", "aux.1"]))
    assert sorted(_wrappers(adapted)) == ["base_model.model.aux.1", "base_model.model.conv"]
