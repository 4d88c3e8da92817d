"""The buffered forward/backward of frozen bitsandbytes 4-bit layers (quantization/buffered_4bit.py): bit-for-bit equal
to bitsandbytes' own path (outputs, input gradients, LoRA gradients, checkpointed blocks), taken where it applies and
left to bitsandbytes everywhere else."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.peft_hooks import patch_bitsandbytes
from peft_vision_ext.quantization import buffered_4bit, cpu_packing
from peft_vision_ext.quantization.bnb_layers import quantized_linear

bnb = pytest.importorskip("bitsandbytes")
bnbf = pytest.importorskip("bitsandbytes.functional")


@pytest.fixture(autouse=True)
def _patched() -> Iterator[None]:
    warnings.filterwarnings("ignore", message="peft-vision-ext: Quantized fine-tuning.*")
    patch_bitsandbytes()  # done at import where PEFT loaded bitsandbytes (0.21), else by quantize() (0.17)
    yield
    buffered_4bit.set_buffered_dequantization(True)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the buffered function's forwards and backwards (proves which path a call took)."""
    seen: list[str] = []
    function = buffered_4bit._FrozenLinear4bit
    forward, backward = function.forward, function.backward

    def counted_forward(*args):  # noqa: ANN002, ANN202
        seen.append("forward")
        return forward(*args)

    def counted_backward(*args):  # noqa: ANN002, ANN202
        seen.append("backward")
        return backward(*args)

    monkeypatch.setattr(function, "forward", staticmethod(counted_forward))
    monkeypatch.setattr(function, "backward", staticmethod(counted_backward))
    return seen


def _layer(out_features: int = 96, in_features: int = 128, quant_type: str = "nf4", double_quant: bool = True,
           bias: bool = True, seed: int = 0, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    bias_tensor = torch.randn(out_features, generator=generator) if bias else None
    return quantized_linear(weight, bias_tensor, 4, quant_type, double_quant, compute_dtype)


def _forward_backward(module: nn.Module, x: torch.Tensor, enabled: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    buffered_4bit.set_buffered_dequantization(enabled)
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    out = out.logits if hasattr(out, "logits") else out
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("native", [True, False], ids=["bnb-kernel", "torch-lookup"])
def test_dequantize_into_equals_bitsandbytes(quant_type: str, double_quant: bool, native: bool) -> None:
    layer = _layer(192, 320, quant_type, double_quant)
    state = layer.weight.quant_state
    expected = bnbf.dequantize_4bit(layer.weight.data, state)
    buffer = torch.full((192 * 320 + 64,), float("nan"))
    got = buffered_4bit.dequantize_into(layer.weight, state, buffer[:192 * 320], native=native)
    assert torch.equal(got, expected)
    assert torch.isnan(buffer[192 * 320:]).all()  # nothing written past the layer's own elements


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_output_and_input_gradient_equal_bitsandbytes(quant_type: str, bias: bool, calls: list[str]) -> None:
    layer = _layer(quant_type=quant_type, bias=bias)
    x = torch.randn(3, 5, 128)
    reference = _forward_backward(layer, x, enabled=False)
    assert calls == []
    got = _forward_backward(layer, x, enabled=True)
    assert calls == ["forward", "backward"]
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])


def test_one_buffer_shared_by_layers_keeps_every_gradient_right(calls: list[str]) -> None:
    # Three layers of the same shape reuse one buffer: each backward must dequantize its own weight again.
    stack = nn.Sequential(_layer(seed=1, out_features=128), nn.GELU(), _layer(seed=2, out_features=128), nn.GELU(),
                          _layer(seed=3, out_features=128))
    x = torch.randn(4, 128)
    reference = _forward_backward(stack, x, enabled=False)
    got = _forward_backward(stack, x, enabled=True)
    assert calls.count("forward") == 3 and calls.count("backward") == 3
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])


def _lora_vit(checkpointing: bool) -> nn.Module:
    import peft
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                              depth=2, embed_dim=64, num_heads=2, mlp_ratio=2.0)
    pve.quantize(model, bits=4, gradient_checkpointing=checkpointing)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["qkv", "fc1"], init_lora_weights=False,
                                                      modules_to_save=["head"]))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_lora_on_4bit_vit_equals_bitsandbytes_path(checkpointing: bool, calls: list[str]) -> None:
    model = _lora_vit(checkpointing).train()
    x = torch.randn(2, 3, 32, 32)
    calls.clear()  # get_peft_model's probe forward
    reference = _forward_backward(model, x, enabled=False)
    assert calls == []
    got = _forward_backward(model, x, enabled=True)
    four_bit = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert four_bit == 8
    # every 4-bit layer once forward and once backward; checkpointed blocks recompute their forward (torch stops
    # recomputing a block once it has every tensor its backward needs)
    forwards = calls.count("forward")
    assert (four_bit < forwards <= 2 * four_bit if checkpointing else forwards == four_bit)
    assert calls.count("backward") == four_bit
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    assert got[2].keys() == reference[2].keys() and any("lora_A" in n for n in got[2])
    for name, grad in reference[2].items():
        assert torch.equal(got[2][name], grad), name


def test_inference_without_gradients_uses_the_buffer_too(calls: list[str]) -> None:
    layer = _layer().eval()
    x = torch.randn(2, 128)
    with torch.no_grad():
        got = layer(x)
        assert calls == ["forward"]
        buffered_4bit.set_buffered_dequantization(False)
        assert torch.equal(got, layer(x))


@pytest.mark.parametrize("case", ["switched-off", "trainable-bias", "bf16-compute",
                                  "packing-enabled", "odd-blocks"])
def test_other_layers_go_to_bitsandbytes_unchanged(case: str, calls: list[str]) -> None:
    layer = _layer(compute_dtype=torch.bfloat16 if case == "bf16-compute" else torch.float32,
                   in_features=96 if case == "odd-blocks" else 128, out_features=3 if case == "odd-blocks" else 96)
    x = torch.randn(2, layer.in_features)
    if case == "switched-off":
        buffered_4bit.set_buffered_dequantization(False)
    elif case == "trainable-bias":
        layer.bias.requires_grad_(True)
    elif case == "packing-enabled":
        setattr(layer, cpu_packing.SWITCH, True)  # an inference model opted into bitsandbytes' packed kernel
    assert not buffered_4bit.takes_buffered_path(layer, x)
    layer.train()
    layer(x)
    assert calls == []


@pytest.mark.skipif(not hasattr(bnbf, "_convert_weight_packed_for_cpu"), reason="no AVX512-BF16 repack here")
def test_a_layer_bitsandbytes_repacked_is_left_to_bitsandbytes(calls: list[str]) -> None:
    # the packed layout (AVX512-BF16 CPUs, inference packing) is produced with bitsandbytes' own conversion, so this
    # runs on every CPU kind; the packed kernel itself is not called here (it needs AVX512-BF16)
    layer = _layer(out_features=64)
    layer.weight.data, layer.weight.quant_state = bnbf._convert_weight_packed_for_cpu(layer.weight.data,
                                                                                       layer.weight.quant_state)
    assert cpu_packing.is_packed(layer)
    assert not buffered_4bit.takes_buffered_path(layer, torch.randn(2, 128))


def test_buffer_is_reused_not_reallocated() -> None:
    buffered_4bit._local.__dict__.clear()  # this thread's buffers start anew
    first, second = _layer(out_features=64), _layer(out_features=96, seed=1)
    x = torch.randn(2, 128)
    with torch.no_grad():
        second(x)
        size = buffered_4bit.buffer_bytes()
        pointer = buffered_4bit._buffer(1, torch.device("cpu")).data_ptr()
        first(x)
        second(x)
    assert size == 96 * 128 * 4 and buffered_4bit.buffer_bytes() == size
    assert buffered_4bit._buffer(1, torch.device("cpu")).data_ptr() == pointer


def test_training_releases_freed_memory_once_resident_memory_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    if buffered_4bit._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim on this platform: nothing is released")
    trims: list[int] = []
    monkeypatch.setattr(buffered_4bit, "_malloc_trim", lambda: trims.append)
    resident = [buffered_4bit.RELEASE_EVERY_BYTES + (1 << 20)]
    monkeypatch.setattr(buffered_4bit, "_resident_bytes", lambda: resident[0])
    monkeypatch.setattr(buffered_4bit._local, "released_at", 0, raising=False)
    layer = _layer()
    x = torch.randn(2, 128, requires_grad=True)
    # grown past RELEASE_EVERY_BYTES since the last release (none yet): released once, then not again
    layer(x).sum().backward()
    assert trims == [0]
    resident[0] += buffered_4bit.RELEASE_EVERY_BYTES
    with torch.no_grad():
        layer(x)  # inference: never
    assert trims == [0]
    layer(x).sum().backward()
    assert trims == [0, 0]
    with pytest.raises(ValueError, match="every_bytes"):
        buffered_4bit.set_release_freed_memory(False, every_bytes=-1)
    assert buffered_4bit._release and buffered_4bit.RELEASE_EVERY_BYTES == 128 << 20  # a refused call changes nothing
    buffered_4bit.set_release_freed_memory(False)
    resident[0] += 2 * buffered_4bit.RELEASE_EVERY_BYTES
    try:
        layer(x).sum().backward()
    finally:
        buffered_4bit.set_release_freed_memory(True)
    assert trims == [0, 0]


def test_release_really_returns_memory_to_the_os() -> None:
    if buffered_4bit._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim on this platform")
    buffered_4bit._local.released_at = 0
    assert buffered_4bit.release_freed_memory(every_bytes=0)
    # many medium blocks below glibc's mmap threshold come from the heap; freed, they stay resident until released
    blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each, 250 MiB
    keep = blocks[-1]
    del blocks
    before = buffered_4bit._resident_bytes()
    assert buffered_4bit.release_freed_memory(every_bytes=0)
    assert buffered_4bit._resident_bytes() < before - (100 << 20)
    assert keep.sum() == 16 * 1024
