"""Run one cell of the compatibility matrix for real, on a tiny model holding one layer of that kind.

Every stage a user goes through is checked for late crashes *and* for silently wrong results: the adapter is
an identity at initialisation, it changes the output once its weights are perturbed, gradients reach it, a
saved adapter reloads to identical outputs, and a merge reproduces the adapted outputs (fp32: up to rounding;
bitsandbytes layers: within the error of re-quantizing the merged weight). The test suite runs every cell,
``peft-vision matrix --verify`` does the same on the user's machine.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .kinds import LayerKind

FEATURES = 64  # multiple of bitsandbytes' 4-bit block size and of the orthogonal methods' block sizes
CHANNELS = 8
HEADS = 4
#: Kinds on which the ``lora-slices`` cells hold a fused q/k/v layer (an nn.MultiheadAttention is fused by itself).
FUSED_LINEAR_KINDS = (LayerKind.LINEAR, LayerKind.LINEAR_4D, LayerKind.BNB_8BIT, LayerKind.BNB_4BIT)
FP32_TOLERANCE = 1e-4


class _FusedAttention(nn.Module):
    """An attention block holding a fused ``qkv`` Linear: its slices are read from ``num_heads``."""

    def __init__(self, qkv: nn.Module) -> None:
        super().__init__()
        self.num_heads = HEADS
        self.qkv = qkv


class _Cell(nn.Module):
    """A model made of one layer of the kind under test (``layer``, or ``attn.qkv`` for a fused one) fed input of
    the right shape."""

    def __init__(self, layer: nn.Module, kind: LayerKind, fused: bool = False) -> None:
        super().__init__()
        if fused:
            self.attn = _FusedAttention(layer)
        else:
            self.layer = layer
        self.kind = kind

    @property
    def target(self) -> nn.Module:
        return self.attn.qkv if hasattr(self, "attn") else self.layer

    def example_input(self) -> torch.Tensor:
        return example_input(self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is LayerKind.MHA:
            return self.target(x, x, x, need_weights=False)[0]
        return self.target(x)


def _quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: LayerKind) -> nn.Module:
    from ..quantization.bnb_layers import quantized_linear

    return quantized_linear(weight, bias, 4 if kind is LayerKind.BNB_4BIT else 8, int8_threshold=0.0)


def tiny_layer(kind: LayerKind, seed: int = 0, fused: bool = False) -> nn.Module:
    """One freshly initialised layer of ``kind`` (deterministic in ``seed``); ``fused``: a q/k/v Linear."""
    torch.manual_seed(seed)
    out_features = 3 * FEATURES if fused else FEATURES
    if kind in (LayerKind.LINEAR, LayerKind.LINEAR_4D):
        return nn.Linear(FEATURES, out_features)
    if kind in (LayerKind.BNB_8BIT, LayerKind.BNB_4BIT):
        fp = nn.Linear(FEATURES, out_features)
        return _quantized_linear(fp.weight, fp.bias, kind)
    if kind is LayerKind.CONV2D:
        return nn.Conv2d(CHANNELS, 2 * CHANNELS, 3, padding=1)
    if kind is LayerKind.CONV2D_1X1:
        return nn.Conv2d(CHANNELS, 2 * CHANNELS, 1)
    if kind is LayerKind.CONV2D_GROUPED:
        return nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS)
    if kind is LayerKind.CONV2D_DILATED:
        return nn.Conv2d(CHANNELS, 2 * CHANNELS, 3, padding=2, dilation=2)
    if kind is LayerKind.MHA:
        return nn.MultiheadAttention(FEATURES, HEADS, batch_first=True)
    raise ValueError(f"no tiny layer for kind {kind}")


def tiny_model(kind: LayerKind, seed: int = 0, method: str | None = None) -> nn.Module:
    """The cell's model; for ``lora-slices`` on Linear kinds, a fused qkv inside an attention block."""
    fused = method == "lora-slices" and kind in FUSED_LINEAR_KINDS
    return _Cell(tiny_layer(kind, seed, fused), kind, fused).eval()


def example_input(kind: LayerKind, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind is LayerKind.LINEAR_4D:
        shape: tuple[int, ...] = (2, 3, 3, FEATURES)
    elif kind.value.startswith("conv2d"):
        shape = (2, CHANNELS, 6, 6)
    else:
        shape = (2, 5, FEATURES)
    return torch.randn(shape, generator=generator)


def cell_config(method: str, target: str = "layer") -> object:
    """A small, valid config of ``method`` targeting ``target`` (identity-initialised where PEFT offers it)."""
    import peft

    from ..fused import use_fused_slices

    factories: dict[str, Callable[[], object]] = {
        "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=[target]),
        "lora-slices": lambda: use_fused_slices(peft.LoraConfig(r=4, lora_alpha=8, target_modules=[target, "qkv"])),
        "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=[target]),
        "lokr": lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=[target]),
        "adalora": lambda: peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=[target]),
        # feedforward (input) scaling: the harder of IA3's two modes (its grouped-conv merge broke before 0.21)
        "ia3": lambda: peft.IA3Config(target_modules=[target], feedforward_modules=[target]),
        "oft": lambda: peft.OFTConfig(r=0, oft_block_size=4, target_modules=[target]),
        "boft": lambda: peft.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=[target]),
        "vera": lambda: peft.VeraConfig(r=4, target_modules=[target]),
        "fourierft": lambda: peft.FourierFTConfig(n_frequency=16, init_weights=True, target_modules=[target]),
    }
    return factories[method]()


@dataclass
class CellRun:
    """What happened to one (method, kind) cell. ``failed_stage`` is None when every stage passed."""

    method: str
    kind: LayerKind
    failed_stage: str | None = None  # "inject" | "identity" | "train" | "save-load" | "merge"
    error: str = ""
    init_diff: float = float("nan")
    effect: float = float("nan")
    reload_diff: float = float("nan")
    merge_diff: float = float("nan")
    merge_tolerance: float = float("nan")

    @property
    def ok(self) -> bool:
        return self.failed_stage is None

    def fail(self, stage: str, error: str) -> CellRun:
        self.failed_stage, self.error = stage, error
        return self


def _adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def perturb_adapter(model: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    """Move every trainable (adapter) parameter off its initial value, so the adapter is not a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in _adapter_parameters(model):
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.add_(scale * noise.to(parameter.dtype))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _merge_tolerance(run_kind: LayerKind, method: str, adapted: nn.Module, x: torch.Tensor) -> float:
    """fp32: rounding. bitsandbytes: twice the error of re-quantizing the exactly merged weight plus the error of
    the quantized forward itself (8-bit layers also quantize activations); a merge that loses the adapter is far
    outside it."""
    if run_kind not in (LayerKind.BNB_8BIT, LayerKind.BNB_4BIT):
        return FP32_TOLERANCE
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils.integrations import dequantize_bnb_weight

    base = adapted.get_base_model().target.get_base_layer()
    weight = dequantize_bnb_weight(base.weight, getattr(base, "state", None)).float()
    bias = None if base.bias is None else base.bias.detach().float()
    twin_layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        twin_layer.weight.copy_(weight)
        if bias is not None:
            twin_layer.bias.copy_(bias)
    twin = get_peft_model(_Cell(twin_layer, LayerKind.LINEAR, hasattr(adapted.get_base_model(), "attn")),
                          cell_config(method))
    set_peft_model_state_dict(twin, get_peft_model_state_dict(adapted))
    merged = twin.merge_and_unload().target  # exact fp32 merge
    requantized = _quantized_linear(merged.weight, merged.bias, run_kind)
    with torch.no_grad():
        requantization_error = _max_diff(requantized(x), merged(x))
        forward_error = _max_diff(adapted(x), merged(x))
    return 2 * (requantization_error + forward_error) + FP32_TOLERANCE


def run_cell(method: str, kind: LayerKind, identity_init: bool = True) -> CellRun:
    """Take one (method, layer kind) cell through inject, train, save/load and merge; report what broke."""
    from peft import PeftModel, get_peft_model

    run = CellRun(method, kind)
    x = example_input(kind)
    model = tiny_model(kind, method=method)
    with torch.no_grad():
        base_out = model(x)
    try:
        adapted = get_peft_model(model, cell_config(method))
    except Exception as error:  # noqa: BLE001 - the harness reports every failure by stage
        return run.fail("inject", f"{type(error).__name__}: {error}")
    adapted.eval()
    try:
        with torch.no_grad():
            run.init_diff = _max_diff(adapted(x), base_out)
        if identity_init and run.init_diff > FP32_TOLERANCE:
            return run.fail("identity", f"output changed at initialisation by {run.init_diff:.3g}")
        perturb_adapter(adapted)
        adapted.train()
        out = adapted(x)
        out.float().pow(2).mean().backward()
        grads = [p.grad for _, p in _adapter_parameters(adapted)]
        if not grads or any(g is None or not torch.isfinite(g).all() for g in grads):
            return run.fail("train", "adapter parameters got no (finite) gradient")
        adapted.eval()
        with torch.no_grad():
            out = adapted(x)
        run.effect = _max_diff(out, base_out)
        if run.effect <= FP32_TOLERANCE:
            return run.fail("train", "the perturbed adapter does not change the output")
    except Exception as error:  # noqa: BLE001
        return run.fail("train", f"{type(error).__name__}: {error}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            adapted.save_pretrained(folder)
            reloaded = PeftModel.from_pretrained(tiny_model(kind, method=method), folder).eval()
            with torch.no_grad():
                run.reload_diff = _max_diff(reloaded(x), out)
        if run.reload_diff > 1e-6:
            return run.fail("save-load", f"reloaded adapter differs by {run.reload_diff:.3g}")
    except Exception as error:  # noqa: BLE001
        return run.fail("save-load", f"{type(error).__name__}: {error}")
    try:
        run.merge_tolerance = _merge_tolerance(kind, method, adapted, x)
        merged = copy.deepcopy(adapted).merge_and_unload()
        with torch.no_grad():
            run.merge_diff = _max_diff(merged(x), out)
        if not run.merge_diff <= run.merge_tolerance:
            return run.fail("merge", f"merged output differs by {run.merge_diff:.3g} (tolerance "
                                     f"{run.merge_tolerance:.3g})")
    except Exception as error:  # noqa: BLE001
        return run.fail("merge", f"{type(error).__name__}: {error}")
    return run
