"""Run one cell of the compatibility matrix for real, on a tiny model holding one layer of that kind.

Every stage a user goes through is checked for late crashes *and* for silently wrong results: the adapter is
an identity at initialisation, it changes the output once its weights are perturbed, gradients reach it, a
saved adapter reloads to identical outputs, and a merge reproduces the adapted outputs (fp32: up to rounding;
bitsandbytes layers: within the error of re-quantizing the merged weight). The test suite runs every cell,
``peft-vision matrix --verify`` does the same on the user's machine.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from ..fused import use_fused_slices
from ..layers.kinds import QUANTIZED_KINDS, LayerKind
from ..matrix.rows import CURATED_BY_NAME, config_of, row_for
from ..quantization.bnb_layers import quantized_linear

FEATURES = 64  # multiple of bitsandbytes' 4-bit block size and of the orthogonal methods' block sizes
CHANNELS = 8
HEADS = 4
VOCABULARY = 32
#: Kinds on which the ``lora-slices`` cells hold a fused q/k/v layer (an nn.MultiheadAttention is fused by itself).
FUSED_LINEAR_KINDS = (LayerKind.LINEAR, LayerKind.LINEAR_4D, LayerKind.BNB_8BIT, LayerKind.BNB_4BIT)
FP32_TOLERANCE = 1e-4
NEEDS_GPU = "needs-gpu"  # the stage a cell stops at when its method needs CUDA and there is none


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
    return quantized_linear(weight, bias, kind.bits, int8_threshold=0.0)


def tiny_layer(kind: LayerKind, seed: int = 0, fused: bool = False) -> nn.Module:
    """One freshly initialised layer of ``kind`` (deterministic in ``seed``); ``fused``: a q/k/v Linear."""
    torch.manual_seed(seed)
    out_features = 3 * FEATURES if fused else FEATURES
    if kind in (LayerKind.LINEAR, LayerKind.LINEAR_4D):
        return nn.Linear(FEATURES, out_features)
    if kind in QUANTIZED_KINDS:
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
    if kind is LayerKind.CONV1D:
        return nn.Conv1d(CHANNELS, 2 * CHANNELS, 3, padding=1)
    if kind is LayerKind.CONV3D:  # a video tubelet embedding: kernel = stride, time x height x width
        return nn.Conv3d(CHANNELS, 2 * CHANNELS, (2, 3, 3), stride=(2, 3, 3))
    if kind is LayerKind.CONV_TRANSPOSE2D:  # a mask head's 2x upsampling
        return nn.ConvTranspose2d(CHANNELS, 2 * CHANNELS, 2, stride=2)
    if kind is LayerKind.EMBEDDING:
        return nn.Embedding(VOCABULARY, FEATURES)
    if kind is LayerKind.BLOCK:  # a transformer's MLP block
        return nn.Sequential(nn.Linear(FEATURES, 2 * FEATURES), nn.GELU(), nn.Linear(2 * FEATURES, FEATURES))
    if kind is LayerKind.NORM:  # the transformer blocks' norm, with its affine parameters moved off 1 / 0
        norm = nn.LayerNorm(FEATURES)
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.1)
            norm.bias.normal_(0.0, 0.1)
        return norm
    raise ValueError(f"no tiny layer for kind {kind}")


def tiny_model(kind: LayerKind, seed: int = 0, method: str | None = None) -> nn.Module:
    """The cell's model; for ``lora-slices`` on Linear kinds, a fused qkv inside an attention block."""
    fused = method == "lora-slices" and kind in FUSED_LINEAR_KINDS
    return _Cell(tiny_layer(kind, seed, fused), kind, fused).eval()


_INPUT_SHAPES = {LayerKind.LINEAR_4D: (2, 3, 3, FEATURES), LayerKind.BNB_4BIT_4D: (2, 3, 3, FEATURES),
                 LayerKind.CONV1D: (2, CHANNELS, 10),
                 LayerKind.CONV3D: (2, CHANNELS, 4, 6, 6), LayerKind.CONV_TRANSPOSE2D: (2, CHANNELS, 6, 6)}


def example_input(kind: LayerKind, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind is LayerKind.EMBEDDING:
        return torch.randint(0, VOCABULARY, (2, 5), generator=generator)
    default = (2, CHANNELS, 6, 6) if kind.value.startswith("conv2d") else (2, 5, FEATURES)
    return torch.randn(_INPUT_SHAPES.get(kind, default), generator=generator)


def _init_options(init: str) -> dict[str, object]:
    """The sub-config an init method reads (fixed ranks for EVA, so a saved adapter has the config's shapes)."""
    if init == "eva":
        from peft import EvaConfig

        return {"eva_config": EvaConfig(rho=1.0)}
    if init == "corda":
        from peft.tuners.lora.config import CordaConfig

        return {"corda_config": CordaConfig()}
    if init == "loftq":
        from peft import LoftQConfig

        return {"loftq_config": LoftQConfig(loftq_bits=4)}
    return {}


def _plain_twin_config(method: str, kind: LayerKind) -> object:
    """The config of ``method`` without its init step: what a reloaded (or converted) adapter is."""
    config = cell_config(method, kind=kind)
    if getattr(config, "init_lora_weights", True) is not True:
        config.init_lora_weights = True
    return config


def _adapt(method: str, model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``get_peft_model`` as a user of ``method`` calls it, with the init step the row needs (calibration data
    for EVA and CorDA: a few batches of the cell's own input)."""
    from peft import get_peft_model

    row = row_for(method)
    init = row.init if row is not None else ""
    config = cell_config(method, kind=model.kind)
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        # CorDA's covariance hooks read one sample at a time (they squeeze the batch dimension)
        preprocess_corda(model, config, run_model=lambda: [model(sample[None]) for sample in x])
    if init == "eva":
        from peft import initialize_lora_eva_weights

        adapted = get_peft_model(model, config, low_cpu_mem_usage=True)
        initialize_lora_eva_weights(adapted, dataloader=[x, x], forward_fn=lambda m, inputs: m(inputs),
                                    prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None,
                                    show_progress_bar=False)
        return adapted
    return get_peft_model(model, config)


def cell_config(method: str, target: str = "layer", kind: LayerKind | None = None) -> object:
    """A small, valid config of ``method`` targeting ``target`` (identity-initialised where PEFT offers it)."""
    import peft

    row = row_for(method)
    if row is not None:
        options = {**row.options, **_init_options(row.init)}
        if row.peft_type == "lora" and kind is LayerKind.CONV2D_GROUPED:
            options["r"] = CHANNELS  # LoRA's own rank condition (a multiple of groups) is the LoRA row's verdict
        if row.peft_type == "ia3":
            options["feedforward_modules"] = [target]
        return config_of(row)(target_modules=[target], **options)
    row = CURATED_BY_NAME[method]
    options = dict(row.options, feedforward_modules=[target]) if method == "ia3" else row.options
    if method == "lora-slices":
        return use_fused_slices(getattr(peft, row.config)(target_modules=[target, "qkv"], **options))
    return getattr(peft, row.config)(target_modules=[target], **options)


@dataclass
class CellRun:
    """What happened to one (method, kind) cell. ``failed_stage`` is None when every stage passed."""
    method: str
    kind: LayerKind
    failed_stage: str | None = None  # "inject" | "identity" | "train" | "save-load" | "merge" | "needs-gpu"
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


def _dequantized_twin(layer: nn.Module) -> nn.Linear:
    """A full-precision Linear holding a bitsandbytes layer's dequantized weight and its bias."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = dequantize_bnb_weight(layer.weight, getattr(layer, "state", None)).float()
    twin = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if layer.bias is not None:
            twin.bias.copy_(layer.bias.detach().float())
    return twin


def _identity_tolerance(model: _Cell, x: torch.Tensor) -> float:
    """fp32: rounding. bitsandbytes: twice the error of the quantized forward itself (against its dequantized
    weight; 8-bit layers also quantize activations), since a wrapper may compute the layer from the dequantized
    weight, or re-quantize a rewritten one (PiSSA / OLoRA)."""
    if model.kind not in QUANTIZED_KINDS:
        return FP32_TOLERANCE
    twin = _dequantized_twin(model.target)  # read the weight before the quantized forward (it may repack it)
    with torch.no_grad():
        return 2 * _max_diff(model.target(x), twin(x)) + FP32_TOLERANCE


def _merge_tolerance(run_kind: LayerKind, method: str, adapted: nn.Module, x: torch.Tensor) -> float:
    """fp32: rounding. bitsandbytes: twice the error of re-quantizing the exactly merged weight plus the error of
    the quantized forward itself (8-bit layers also quantize activations); a merge that loses the adapter is far
    outside it."""
    if run_kind not in QUANTIZED_KINDS:
        with torch.no_grad():  # rounding grows with the output's scale (RandLoRA's default scaling is large)
            return FP32_TOLERANCE * max(1.0, adapted(x).abs().max().item())
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    twin_layer = _dequantized_twin(adapted.get_base_model().target.get_base_layer())
    twin = get_peft_model(_Cell(twin_layer, LayerKind.LINEAR, hasattr(adapted.get_base_model(), "attn")),
                          _plain_twin_config(method, run_kind))
    set_peft_model_state_dict(twin, get_peft_model_state_dict(adapted))
    merged = twin.merge_and_unload().target  # exact fp32 merge
    requantized = _quantized_linear(merged.weight, merged.bias, run_kind)
    with torch.no_grad():
        requantization_error = _max_diff(requantized(x), merged(x))
        forward_error = _max_diff(adapted(x), merged(x))
    return 2 * (requantization_error + forward_error) + FP32_TOLERANCE


def run_cell(method: str, kind: LayerKind, identity_init: bool | None = None) -> CellRun:
    """Take one (method, layer kind) cell through inject, train, save/load and merge; report what broke.
    ``identity_init``: require the adapter to leave the output unchanged at initialisation (default: unless the
    method is not an identity at init by design)."""
    row = row_for(method)
    if identity_init is None:
        identity_init = row is None or row.identity_init
    if row is not None and row.needs_gpu and not torch.cuda.is_available():
        return CellRun(method, kind).fail(NEEDS_GPU, "PEFT runs this initialisation on CUDA only")
    from peft import PeftModel

    run = CellRun(method, kind)
    x = example_input(kind)
    model = tiny_model(kind, method=method)
    identity_tolerance = _identity_tolerance(model, x)  # before any forward: bitsandbytes may repack after one
    with torch.no_grad():
        base_out = model(x)
    try:
        adapted = _adapt(method, model, x)
    except Exception as error:  # noqa: BLE001 - the harness reports every failure by stage
        return run.fail("inject", f"{type(error).__name__}: {error}")
    adapted.eval()
    try:
        with torch.no_grad():
            run.init_diff = _max_diff(adapted(x), base_out)
        if identity_init and run.init_diff > identity_tolerance:
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
            # PiSSA / OLoRA / CorDA / LoftQ: the plugin saves them through PEFT's conversion to a plain LoRA of
            # the original base (hook base-rewriting-init-save), so they reload onto a fresh cell
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
        merged = adapted.merge_and_unload()  # in place, as users merge (a deepcopy fails on some tuners)
        with torch.no_grad():
            run.merge_diff = _max_diff(merged(x), out)
        if not run.merge_diff <= run.merge_tolerance:
            return run.fail("merge", f"merged output differs by {run.merge_diff:.3g} (tolerance "
                                     f"{run.merge_tolerance:.3g})")
    except Exception as error:  # noqa: BLE001
        return run.fail("merge", f"{type(error).__name__}: {error}")
    return run
