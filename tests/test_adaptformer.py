"""AdaptFormer (parallel bottleneck adapters) as a PEFT method: beside MLP blocks and residual conv blocks, identity at
the start, every parameter live after one optimizer step, reload exact, merging refused before anything changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_zoo import adaptformer_refuses, all_models, model_output
from model_zoo import awake_case as _build
from model_zoo import output_without_grad as _out
from peft import PeftModel, get_peft_model
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.layers.kinds import LayerKind, layer_kind
from peft_vision_ext.tuners import AdaptFormerConfig, AdaptFormerLayer

CASES = list(all_models())


def _first(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "adaptformer_" in n and p.requires_grad}


@pytest.mark.parametrize("key", CASES)
def test_default_starts_as_the_base_model_trains_every_parameter_and_reloads(key: str, tmp_path: Path,
                                                                               one_thread: None) -> None:
    """One optimizer step moves the output (the zero-initialised up-projection moves first); once the up-projections
    are non-zero, every adapter parameter (the down-projection too) moves its block's output when perturbed. A saved
    adapter reloads to the same outputs."""
    model, x = _build(key)
    if adaptformer_refuses(model):
        pytest.skip("no block to sit beside (test_blocks_are_required_and_the_refusal_says_why)")
    base = _out(model, x)
    adapted = get_peft_model(model, AdaptFormerConfig())
    assert any(isinstance(m, AdaptFormerLayer) for m in adapted.modules())
    assert torch.allclose(_out(adapted.eval(), x), base, atol=1e-5, rtol=1e-5), "identity at the start"
    # the step runs in eval mode: BatchNorm statistics are base-model state a training forward would move
    parameters = _adapter_parameters(adapted)
    optimizer = torch.optim.Adam(parameters.values(), lr=0.01)  # every parameter moves by about lr
    model_output(adapted(x)).float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    assert not torch.equal(_out(adapted, x), base), "the trained adapters move the model's output"
    # A block whose output the loss does not see (saturated activations of a random tiny model) keeps a zero
    # up-projection after the step, which hides its down-projection: move every parameter as training would.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in parameters.values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    trained = _out(adapted, x)
    layers = {name: m for name, m in adapted.named_modules() if isinstance(m, AdaptFormerLayer)}
    seen: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, _first(out).detach()))
    _out(adapted, x)
    before = dict(seen)
    for name, parameter in parameters.items():  # each parameter, nudged alone, moves its block's output
        owner = next(layer for layer in layers if name.startswith(layer + "."))
        with torch.no_grad():
            saved = parameter.detach().clone()
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
            _out(adapted, x)
            parameter.copy_(saved)
        assert not torch.equal(seen[owner], before[owner]), f"{name} does not act"
    adapted.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_build(key)[0], tmp_path).eval()
    assert torch.equal(_out(reloaded, x), trained)


@pytest.mark.parametrize(("key", "first"), [("timm-vit", "blocks.0.mlp"), ("hf-vit", "vit.layers.0.mlp"),
                                            ("tv-vit", "encoder.layers.encoder_layer_0.mlp"),
                                            ("timm-convnext", "stages.0.blocks.0.mlp"), ("tv-resnet", "layer1.0"),
                                            ("tv-mobilenet", "features.1"), ("timm-efficientnet", "blocks.0.0")])
def test_default_is_beside_mlp_blocks_or_residual_conv_blocks(key: str, first: str) -> None:
    model, _ = _build(key)
    if adaptformer_refuses(model):
        pytest.skip("transformers 4.x: ViT-style split MLPs")
    adapted = get_peft_model(model, AdaptFormerConfig())
    names = adapted.base_model.targeted_module_names
    assert names[0] == first
    assert all(layer_kind(adapted.base_model.model.get_submodule(n).get_base_layer()) is LayerKind.BLOCK
               for n in names)


@pytest.mark.parametrize(("key", "why"), [("hf-dpt", "split across two modules"),
                                          ("hf-mobilenet-v1", "no MLP block .* and no residual conv block")])
def test_blocks_are_required_and_the_refusal_says_why(key: str, why: str) -> None:
    """DPT's MLP is ViT-style intermediate / output (no module holds it); MobileNetV1 has no residual block."""
    model, x = _build(key)
    before = _out(model, x)
    with pytest.raises(pve.EmptyPresetError, match=why):
        get_peft_model(model, AdaptFormerConfig())
    assert not any(isinstance(m, AdaptFormerLayer) for m in model.modules())
    assert torch.equal(_out(model, x), before)


def test_parameters_follow_the_bottleneck_and_fewer_than_lora_r8_on_a_vit() -> None:
    model, _ = _build("timm-vit")
    dim, hidden = model.blocks[0].mlp.fc1.in_features, 8
    adapted = get_peft_model(model, AdaptFormerConfig(bottleneck=hidden, modules_to_save=[]))
    per_block = (dim * hidden + hidden) + (hidden * dim + dim)
    assert sum(p.numel() for p in _adapter_parameters(adapted).values()) == len(model.blocks) * per_block
    report = pve.check(_build("timm-vit")[0], AdaptFormerConfig(bottleneck=hidden, modules_to_save=[]))
    assert report.ok and report.adapter_params == len(model.blocks) * per_block


def test_a_strided_residual_block_gets_a_strided_branch() -> None:
    model, x = _build("tv-resnet")
    adapted = get_peft_model(model, AdaptFormerConfig(target_modules=["layer2.0"], init_weights=False))
    layer = adapted.base_model.model.layer2[0]
    assert layer.convolutional and layer.in_channels != layer.out_channels
    out = _out(adapted.eval(), x)
    with adapted.disable_adapter():
        assert not torch.equal(_out(adapted, x), out)


def test_merging_is_refused_before_anything_changes() -> None:
    model, x = _build("timm-vit")
    adapted = get_peft_model(model, AdaptFormerConfig(init_weights=False)).eval()
    out = _out(adapted, x)
    report = pve.check(_build("timm-vit")[0], AdaptFormerConfig())
    assert report.ok and len(report.refused(pve.compat.Operation.MERGE)) == len(report.modules)
    with pytest.raises(UnsupportedCombinationError, match="AdaptFormer cannot merge into block"):
        adapted.merge_and_unload()
    with pytest.raises(UnsupportedCombinationError):
        adapted.merge_adapter()
    assert torch.equal(_out(adapted, x), out)
    assert isinstance(adapted.base_model.model.blocks[0].mlp, AdaptFormerLayer)
    unloaded = adapted.unload()  # the base model back, the adapters dropped
    assert not any(isinstance(m, AdaptFormerLayer) for m in unloaded.modules())


def test_adapters_switch_disable_and_save_like_lora(tmp_path: Path) -> None:
    model, x = _build("timm-vit")
    base = _out(model, x)
    adapted = get_peft_model(model, AdaptFormerConfig(init_weights=False)).eval()
    first = _out(adapted, x)
    adapted.add_adapter("second", AdaptFormerConfig(target_modules=["blocks.0.mlp"], bottleneck=4,
                                                    init_weights=False))
    adapted.set_adapter("second")
    assert {n.split(".")[-1] for n in _adapter_parameters(adapted)} == {"weight", "bias"}
    assert all(".second." in n for n in _adapter_parameters(adapted))
    second = _out(adapted, x)
    assert not torch.equal(second, first) and not torch.equal(second, base)
    with adapted.disable_adapter():
        assert torch.equal(_out(adapted, x), base)
    adapted.set_adapter("default")
    assert torch.equal(_out(adapted, x), first)
    adapted.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADAPTFORMER" and config["bottleneck"] == 8
    assert "`import peft_vision_ext` before loading: AdaptFormer" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("bits", [4, 8])
def test_trains_beside_quantized_mlps(bits: int, one_thread: None) -> None:
    model, x = _build("timm-vit")
    pve.quantize(model, bits=bits)
    adapted = get_peft_model(model, AdaptFormerConfig()).train()
    assert any(layer_kind(inner).bits == bits for inner in adapted.base_model.model.blocks[0].mlp.modules())
    model_output(adapted(x)).float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in _adapter_parameters(adapted).values())


def test_embeddings_are_refused_with_the_reason() -> None:
    holder = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    with pytest.raises((UnsupportedCombinationError, ValueError), match="Embedding"):
        get_peft_model(holder, AdaptFormerConfig(target_modules=["0"]))
