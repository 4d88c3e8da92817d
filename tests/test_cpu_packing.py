"""bitsandbytes' AVX512-BF16 CPU repack of 4-bit weights, on every CPU: the packed state is produced with bitsandbytes'
own conversion (plain torch), so a CPU without AVX512-BF16 tests the handling too. Also: the quiet entry points and
the preset refusal for quantized LoHa."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.compat.kinds import LayerKind, layer_kind
from peft_vision_ext.errors import EmptyPresetError, UnsupportedCombinationError
from peft_vision_ext.quantization import cpu_packing
from peft_vision_ext.quantization.bnb_layers import dequantized_weight, quantized_linear

bnbf = pytest.importorskip("bitsandbytes.functional")
needs_repack = pytest.mark.skipif(not hasattr(bnbf, "_convert_weight_packed_for_cpu"),
                                  reason="this bitsandbytes has no AVX512-BF16 CPU repack")
needs_avx512bf16 = pytest.mark.skipif(not cpu_packing.cpu_takes_packed_path(),
                                      reason="this CPU has no AVX512-BF16 (the packed kernel cannot run here)")


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", message="peft-vision-ext: Quantized fine-tuning.*")


def _vit(seed: int = 0) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    # in_features multiples of bitsandbytes' CPU block size (64) and out_features of 32: layers the kernel can pack
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                             depth=2, embed_dim=64, num_heads=2, mlp_ratio=2.0).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out.logits if hasattr(out, "logits") else out).float()


def _four_bit(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if layer_kind(m) is LayerKind.BNB_4BIT}


def _bf16_statistics_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with once its statistics are rounded to bf16 (what the repack does to them)."""
    state = copy.deepcopy(layer.weight.quant_state)
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
        state.nested, state.state2, state.offset = False, None, None
    else:
        absmax = state.absmax
    state.absmax = absmax.float().to(torch.bfloat16).float()
    return bnbf.dequantize_4bit(layer.weight.data, state).float()


def _repack(model: nn.Module) -> dict[str, torch.Tensor]:
    """What bitsandbytes' Linear4bit.forward does on an AVX512-BF16 CPU at an eval forward; returns, per layer, the
    weight it computes with from then on."""
    expected = {}
    for name, layer in _four_bit(model).items():
        expected[name] = _bf16_statistics_weight(layer)
        layer.weight.data, layer.weight.quant_state = bnbf._convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state)
        assert cpu_packing.is_packed(layer)
    return expected


@needs_repack
def test_new_4bit_layers_keep_their_layout_at_eval_forwards() -> None:
    import bitsandbytes as bnb

    from peft_vision_ext.peft_hooks import patch_bitsandbytes

    patch_bitsandbytes()  # done on import where PEFT loaded bitsandbytes, else by quantize() / bnb_config()
    layer = bnb.nn.Linear4bit(64, 40, quant_type="nf4", device="cpu")  # 40: not a multiple of the kernel's 32 rows
    assert getattr(layer, cpu_packing.SWITCH) is False
    layer = quantized_linear(torch.randn(40, 64), torch.randn(40), bits=4).eval()
    with torch.no_grad():
        layer(torch.randn(3, 64))  # on an AVX512-BF16 CPU bitsandbytes asserted here (N must be divisible by 32)
    assert not cpu_packing.is_packed(layer)


@needs_repack
def test_a_repacked_model_trains_merges_saves_and_reloads_exactly(tmp_path: Path) -> None:
    model = pve.quantize(_vit(), bits=4)
    expected = _repack(model)
    x = _x()
    # read-only functions read the packed layers without changing them
    for name, layer in _four_bit(model).items():
        assert torch.equal(dequantized_weight(layer), expected[name])
        assert cpu_packing.is_packed(layer)
    assert pve.storage_bytes(model) > 0

    with pytest.warns(UserWarning, match="bitsandbytes had repacked 8 4-bit layers"):
        adapted = get_peft_model(model, peft.LoraConfig(r=4))
    layers = _four_bit(adapted)
    assert not any(cpu_packing.is_packed(layer) for layer in layers.values())
    assert not any(getattr(layer, cpu_packing.SWITCH, False) for layer in layers.values())
    # the unpacked layers compute with exactly the weights the packed ones did
    for name, layer in layers.items():
        assert torch.equal(dequantized_weight(layer), expected[name.removeprefix("base_model.model.")
                                                               .replace(".base_layer", "")])

    adapted.train()
    optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # before: "a view of a leaf Variable that requires grad is being used in an in-place operation"
        adapted(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    adapted.eval()
    out = _out(adapted, x)
    exact = _out(pve.quantization.dequantize(copy.deepcopy(adapted)), x)
    assert (out - exact).abs().max().item() <= 1e-5

    adapted.save_pretrained(tmp_path)
    fresh = pve.quantize(_vit(), bits=4)
    _repack(fresh)
    with pytest.warns(UserWarning, match="had repacked"):
        reloaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(_out(reloaded.eval(), x), out)

    merged = pve.merge_and_unload(copy.deepcopy(adapted))
    assert (_out(merged, x) - exact).abs().max().item() <= 1e-4
    requantized = pve.merge_and_unload(adapted, requantize=True)
    fresh_error = (_out(pve.quantize(copy.deepcopy(merged), bits=4), x) - _out(merged, x)).abs().max().item()
    assert (_out(requantized, x) - exact).abs().max().item() <= 2 * fresh_error + 1e-4


@needs_repack
def test_check_and_the_probe_never_repack() -> None:
    model = pve.quantize(_vit(), bits=4)
    for layer in _four_bit(model).values():  # as if built before peft_vision_ext was imported
        setattr(layer, cpu_packing.SWITCH, True)
    report = pve.check(model, peft.LoraConfig(r=4))
    assert report.ok
    for layer in _four_bit(model).values():
        assert not cpu_packing.is_packed(layer)
        assert getattr(layer, cpu_packing.SWITCH) is True  # the user's setting is restored


def test_inference_packing_is_opt_in_and_undone_before_training() -> None:
    model = pve.quantize(_vit(), bits=4)
    enabled = pve.quantization.enable_inference_packing(model)
    if not cpu_packing.cpu_takes_packed_path():
        assert enabled == []
        return
    assert sorted(enabled) == sorted(_four_bit(model))
    x = _x()
    unpacked = _out(pve.quantization.dequantize(copy.deepcopy(model)), x)
    packed = _out(model, x)  # eval, no grad: bitsandbytes repacks now
    assert all(cpu_packing.is_packed(layer) for layer in _four_bit(model).values())
    assert (packed - unpacked).abs().max().item() < 0.05 * (1 + unpacked.abs().max().item())  # bf16 kernel
    with pytest.warns(UserWarning, match="had repacked"):
        adapted = get_peft_model(model, peft.LoraConfig(r=4))
    adapted.train()
    adapted(x).pow(2).mean().backward()


@needs_avx512bf16
def test_eval_then_train_on_this_avx512bf16_cpu() -> None:
    model = pve.quantize(_vit(), bits=4)
    x = _x()
    weights = {name: dequantized_weight(layer) for name, layer in _four_bit(model).items()}
    before = _out(model, x)  # the "accuracy before fine-tuning" forward: bitsandbytes repacked here before
    assert not any(cpu_packing.is_packed(layer) for layer in _four_bit(model).values())
    assert all(torch.equal(dequantized_weight(layer), weights[name]) for name, layer in _four_bit(model).items())
    assert torch.equal(_out(model, x), before)
    adapted = get_peft_model(model, peft.LoraConfig(r=4))
    adapted.train()
    adapted(x).pow(2).mean().backward()


def test_env_says_which_path_this_cpu_takes() -> None:
    from peft_vision_ext.envinfo import cpu_path, report

    # the standard path's text names AVX512-BF16 too ("no AVX512-BF16 repack"): the answer is its first word
    assert cpu_path().startswith("AVX512-BF16") == cpu_packing.cpu_takes_packed_path()
    assert "bitsandbytes 4-bit CPU path:" in report()


def test_entry_points_drop_only_the_known_bitsandbytes_notices() -> None:
    # Online and offline (HF_HUB_OFFLINE=1, as CI runs): with the `kernels` package installed (transformers >= 5.25
    # depends on it) bitsandbytes' kernel lookup logs a different notice in each mode.
    for offline in ("1", None):
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | ({"HF_HUB_OFFLINE": offline}
                                                                               if offline else {})
        result = subprocess.run([sys.executable, "-m", "peft_vision_ext", "env"], capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        assert "kernels-community" not in result.stderr + result.stdout, f"HF_HUB_OFFLINE={offline}"
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", torch.float32)
        logger.warning("something else bitsandbytes says")
        logger.error("MatMul8bitLt: inputs will be cast from an error")
    finally:
        logger.removeHandler(handler)
    assert records == ["something else bitsandbytes says", "MatMul8bitLt: inputs will be cast from an error"]


def test_quantized_loha_default_preset_is_refused_by_the_matrix() -> None:
    model = pve.quantize(_vit(), bits=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedCombinationError, match="LoHa cannot adapt bnb-4bit") as raised:
        get_peft_model(model, peft.LoHaConfig(r=4))
    assert isinstance(raised.value, EmptyPresetError)  # what this raised before; code catching it keeps working
    assert "Instead:" in str(raised.value) and "The model was not modified" in str(raised.value)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_peft_reading_transformers_deprecated_attribute_is_not_shown() -> None:
    # transformers >= 5.25 deprecates is_gradient_checkpointing, which PEFT reads in every get_peft_model of a
    # transformers model; on older transformers nothing is warned either way.
    import transformers

    from peft_vision_ext.noise import filter_known_noise

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_noise()
        get_peft_model(transformers.ViTForImageClassification(config), peft.LoraConfig(r=2))
        warnings.warn("`is_gradient_checkpointing` is deprecated (from elsewhere)", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == ["`is_gradient_checkpointing` is deprecated (from elsewhere)"]
