"""Quantized LoRA for ViTs: quantize() on timm, transformers and torchvision ViTs, 4 and 8 bit; training,
save/reload, both merges; bnb_config for from_pretrained; bad input refused with the model untouched."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import peft
import pytest
import torch
from model_zoo import all_models, model_output
from peft import PeftModel, get_peft_model

import peft_vision_ext as pve
from peft_vision_ext.compat.kinds import LayerKind, layer_kind
from peft_vision_ext.errors import QuantizationError, UnsupportedCombinationError

VITS = ["timm-vit", "timm-vit-distilled", "timm-dinov2", "timm-swin", "hf-vit", "hf-deit", "hf-dinov2", "hf-swin",
        "tv-vit"]
CASES = [(key, bits) for key in VITS for bits in (4, 8)]
BNB = {4: LayerKind.BNB_4BIT, 8: LayerKind.BNB_8BIT}


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message="peft-vision-ext: Quantized fine-tuning.*")


def _build(key: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    _, build, shape = all_models()[key]
    torch.manual_seed(seed)
    model = build().eval()
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_output(model(x)).float()


def _perturb(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def _snapshot(model: torch.nn.Module) -> tuple:
    return ([(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()])


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and a[1].keys() == b[1].keys() and all(
        torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize(("key", "bits"), CASES, ids=[f"{k}-{b}bit" for k, b in CASES])
def test_quantize_train_reload_merge(key: str, bits: int, tmp_path: Path) -> None:
    model, x = _build(key)
    reference = _out(model, x)
    fp32_bytes = pve.storage_bytes(model)
    planned = pve.quantization.plan(model, bits)
    pve.quantize(model, bits=bits)
    # really quantized: packed storage, flags PEFT reads, head / patch embedding / norms untouched in fp32
    for name in planned.layers:
        layer = model.get_submodule(name)
        assert layer_kind(layer) is BNB[bits]
        stored = layer.weight.numel() * layer.weight.element_size()
        assert stored == layer.in_features * layer.out_features * bits // 8
    assert pve.storage_bytes(model) < fp32_bytes
    assert getattr(model, f"is_loaded_in_{bits}bit") is True
    for name, module in model.named_modules():
        if layer_kind(module) is LayerKind.LINEAR and name not in planned.layers:
            assert module.weight.dtype == torch.float32  # heads, MultiheadAttention's out_proj, skipped layers
    assert all(not p.requires_grad for p in model.parameters())
    quantization_error = (_out(model, x) - reference).abs().max().item()
    # the new layers keep the model's eval mode: 8-bit layers then quantize their activations too (their own error)
    assert all(not m.training for m in model.modules())
    dequantized = _out(pve.quantization.dequantize(copy.deepcopy(model)), x)
    assert (_out(model, x) - dequantized).abs().max().item() <= (1e-5 if bits == 4 else 0.05 * dequantized.abs().max())
    assert quantization_error < 0.5 * reference.abs().max().item() + 1e-3  # close to, not equal to, fp32

    adapted = get_peft_model(model, peft.LoraConfig(r=4))
    adapted.train()
    model_output(adapted(x)).float().pow(2).mean().backward()
    grads = [p.grad for p in adapted.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    _perturb(adapted)
    adapted.eval()
    out = _out(adapted, x)

    # The adapted model computed in fp32 from the dequantized weights: 4-bit layers compute exactly that; bitsandbytes'
    # 8-bit layers switch to int8 activations once they have run in training mode, which adds their own error.
    exact = _out(pve.quantization.dequantize(copy.deepcopy(adapted)), x)
    assert (out - exact).abs().max().item() <= (1e-5 if bits == 4 else 0.05 * exact.abs().max().item())

    adapted.save_pretrained(tmp_path)
    fresh, _ = _build(key)
    reloaded = PeftModel.from_pretrained(pve.quantize(fresh, bits=bits), tmp_path).eval()
    assert torch.equal(_out(reloaded, x), out)

    merged = pve.merge_and_unload(copy.deepcopy(adapted))
    assert torch.equal(_out(adapted, x), out)  # merging a copy leaves the adapted model as it was
    requantized = pve.merge_and_unload(adapted, requantize=True)
    assert not any(layer_kind(m) in BNB.values() for m in merged.modules())
    assert not getattr(merged, f"is_loaded_in_{bits}bit", False)
    merged_out = _out(merged, x)
    assert (merged_out - exact).abs().max().item() <= 1e-4  # fp32 rounding
    # re-quantized: within the error of quantizing the exactly merged model afresh (x2), plus the quantized forward
    fresh_error = (_out(pve.quantize(copy.deepcopy(merged), bits=bits), x) - merged_out).abs().max().item()
    own_error = (out - exact).abs().max().item()  # 8-bit: int8 activations (see above); 4-bit: 0
    assert (_out(requantized, x) - exact).abs().max().item() <= 2 * (fresh_error + own_error) + 1e-4


def test_lora_on_quantized_vit_learns_mnist(tmp_path: Path) -> None:
    from peft_vision_ext.data import mnist_split, to_imagenet_tensor

    images, labels, _, _ = mnist_split(64, 8)
    x, y = to_imagenet_tensor(images, 32), torch.from_numpy(labels).long()
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                              depth=2, embed_dim=64, num_heads=2)
    for method, config, lr in (("lora", peft.LoraConfig(r=8), 3e-3),
                               ("adalora", peft.AdaLoraConfig(init_r=8, target_r=4, total_step=30, tinit=5,
                                                              tfinal=5), 1e-2)):
        adapted = get_peft_model(pve.quantize(copy.deepcopy(model), bits=4, gradient_checkpointing=True), config)
        optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=lr)
        losses = []
        adapted.train()
        for step in range(30):
            batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
            loss = torch.nn.functional.cross_entropy(adapted(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            if method == "adalora":
                adapted.base_model.update_and_allocate(step)
            optimizer.zero_grad()
            losses.append(loss.item())
        assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, (method, losses)
        adapted.eval()
        adapted.save_pretrained(tmp_path / method)
        reloaded = PeftModel.from_pretrained(pve.quantize(copy.deepcopy(model), bits=4), tmp_path / method).eval()
        if method == "lora":
            assert torch.equal(_out(reloaded, x[:4]), _out(adapted, x[:4]))
        else:  # the reload keeps only the allocated ranks (5 of 8 here): a shorter sum, equal up to rounding
            torch.testing.assert_close(_out(reloaded, x[:4]), _out(adapted, x[:4]), atol=1e-5, rtol=1e-5)
        if method == "adalora":
            with pytest.raises(UnsupportedCombinationError):
                adapted.merge_and_unload()  # PEFT's re-quantizing merge is refused by the matrix ...
            adapted.eval()
            out = _out(adapted, x[:4])
            assert (_out(pve.merge_and_unload(adapted), x[:4]) - out).abs().max() <= 1e-4  # ... ours is exact


def test_gradient_checkpointing_switches() -> None:
    timm_vit, x = _build("timm-vit")
    pve.quantize(timm_vit, bits=4, gradient_checkpointing=True)
    assert timm_vit.grad_checkpointing
    hf_vit, _ = _build("hf-vit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.25 deprecates gradient_checkpointing_enable
        pve.quantize(hf_vit, bits=4, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in hf_vit.modules())
    adapted = get_peft_model(hf_vit, peft.LoraConfig(r=4))
    adapted.train()
    model_output(adapted(x)).sum().backward()
    assert all(p.grad is not None for p in adapted.parameters() if p.requires_grad)


@pytest.mark.parametrize(("case", "kwargs", "message"), [
    ("timm-vit", {"bits": 3}, "bits must be 4 or 8"),
    ("timm-vit", {"bits": 4, "quant_type": "int4"}, "quant_type"),
    ("timm-mobilenetv3", {"bits": 4}, "no nn.Linear layer"),
    ("tv-vit", {"bits": 4, "gradient_checkpointing": True}, "no gradient-checkpointing switch"),
    ("timm-vit", {"bits": 4, "skip": [".*"]}, "no nn.Linear layer"),
])
def test_bad_input_is_refused_untouched(case: str, kwargs: dict, message: str) -> None:
    model, _ = _build(case) if case in all_models() else _build("timm-vit")
    before = _snapshot(model)
    with pytest.raises(QuantizationError, match=message):
        pve.quantize(model, **kwargs)
    assert _same(before, _snapshot(model)) and not hasattr(model, "is_loaded_in_4bit")


def test_already_quantized_and_meta_models_are_refused() -> None:
    model, _ = _build("timm-vit")
    pve.quantize(model, bits=4)
    before = _snapshot(model)
    with pytest.raises(QuantizationError, match="already quantized"):
        pve.quantize(model, bits=8)
    assert _same(before, _snapshot(model))
    meta, _ = _build("timm-vit")
    meta.to("meta")
    with pytest.raises(QuantizationError, match="cannot quantize on meta"):
        pve.quantize(meta, bits=4)
    assert all(type(m) is not object for m in meta.modules()) and layer_kind(meta.head) is LayerKind.LINEAR


class _Wrapped(torch.nn.Module):
    """A timm ViT inside the user's own module with its own output layer under a name no registry knows."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit
        self.out = torch.nn.Linear(vit.num_classes, 3)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.out(self.vit(pixel_values))


def test_quantized_modules_to_save_are_refused_untouched() -> None:
    model, x = _build("timm-vit")
    full_precision = copy.deepcopy(model)
    wrapped = pve.quantize(_Wrapped(model), bits=4)
    assert layer_kind(wrapped.out) is LayerKind.BNB_4BIT  # not recognised as a head
    assert layer_kind(wrapped.vit.head) is LayerKind.LINEAR  # the wrapped timm model's head is
    config = peft.LoraConfig(r=4, target_modules=["qkv"], modules_to_save=["out"])
    with pve.allow_unsupported(), pytest.raises(RuntimeError, match="floating point dtype"):  # upstream
        get_peft_model(copy.deepcopy(wrapped), copy.deepcopy(config))
    before = _snapshot(wrapped)
    with pytest.raises(UnsupportedCombinationError, match=r"modules_to_save out .*skip=\['out'\]"):
        get_peft_model(wrapped, config)
    assert _same(before, _snapshot(wrapped)) and not hasattr(wrapped, "peft_config")
    # the advice works: the layer stays in full precision and trains
    kept = pve.quantize(_Wrapped(full_precision), bits=4, skip=["out", "vit.head"])
    assert layer_kind(kept.out) is LayerKind.LINEAR and layer_kind(kept.vit.blocks[0].attn.qkv) is BNB[4]
    adapted = get_peft_model(kept, config)
    adapted(x).pow(2).mean().backward()
    assert adapted.base_model.model.out.modules_to_save["default"].weight.grad is not None


def test_skip_overrides_the_default() -> None:
    model, _ = _build("timm-vit")
    plan = pve.quantization.plan(model, 4, skip=["fc2"])
    assert "head" in plan.layers and not any(name.endswith("fc2") for name in plan.layers)


@pytest.mark.parametrize("key", ["hf-vit", "hf-swin"])
def test_bnb_config_keeps_heads_for_from_pretrained(key: str, tmp_path: Path) -> None:
    import transformers

    model, x = _build(key)
    model.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    quantization = pve.bnb_config(config, bits=4)
    assert "classifier" in quantization.llm_int8_skip_modules
    # dtype: transformers 4 otherwise loads the unquantized parameters (head, norms) of a bnb model in fp16
    loaded = type(model).from_pretrained(tmp_path, quantization_config=quantization, device_map="cpu",
                                         dtype=torch.float32)
    assert layer_kind(loaded.classifier) is LayerKind.LINEAR and loaded.classifier.weight.dtype == torch.float32
    planned = pve.quantization.plan(model, 4).layers
    assert all(layer_kind(loaded.get_submodule(name)) is LayerKind.BNB_4BIT for name in planned)
    adapted = get_peft_model(loaded, peft.LoraConfig(r=4))
    model_output(adapted(x)).sum().backward()
    assert adapted.base_model.model.classifier.modules_to_save["default"].weight.grad is not None


def test_bnb_config_quant_storage_for_fsdp(tmp_path: Path) -> None:
    """FSDP flattens the packed 4-bit weights with the other parameters: their storage dtype must match."""
    import transformers

    model, x = _build("hf-vit")
    model.save_pretrained(tmp_path)
    quantization = pve.bnb_config(transformers.AutoConfig.from_pretrained(tmp_path), bits=4,
                                  quant_storage=torch.bfloat16)
    assert quantization.bnb_4bit_quant_storage == torch.bfloat16
    loaded = type(model).from_pretrained(tmp_path, quantization_config=quantization, device_map="cpu",
                                         dtype=torch.float32)
    planned = pve.quantization.plan(model, 4).layers
    assert {loaded.get_submodule(name).weight.dtype for name in planned} == {torch.bfloat16}
    adapted = get_peft_model(loaded, peft.LoraConfig(r=4))
    model_output(adapted(x)).sum().backward()
