"""QPiSSA and its kin: a LoRA whose initialisation rewrites the base (PiSSA, OLoRA, CorDA) on a 4/8-bit base.

PEFT refuses PiSSA and CorDA on quantized layers ("initialize under float32 ... re-quantize the residual model"), and
OLoRA on them re-quantizes a rewritten weight (the output changes at initialisation: the compatibility grid). The
PiSSA paper's QPiSSA, which PEFT's example scripts do by hand in three steps: run the init on the full-precision
weights, quantize the *residual* ``W - s·B0·A0``, train a LoRA that starts from the initial factors on the quantized
residual. The factors hold the principal part of each weight exactly; only the smaller residual carries quantization
error.

Saving goes through the ``base-rewriting-init-save`` hook like any rewriting init: PEFT's conversion to a plain LoRA of
rank 2r of the *original full-precision* base, ``[A | A0]`` and ``[B | -B0]``. Plain PEFT loads it onto that base (the
trained model without the residual's quantization error). Its second half is the initial factors, so
:func:`load_residual_adapter` (``load_adapter`` picks it from the saved quantization record) rebuilds exactly the
trained model: the residual from the original base and the initial factors, quantized the same way, the trained
factors on top. Training and reloading share :func:`build`, so both quantize bit-identical residuals.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from ..errors import AdapterLoadError, QuantizationError
from ..fingerprints import ORIGINAL_FINGERPRINT, fingerprint
from ..initial_factors import INITIAL_ATTRIBUTE, adapter_tensors, split_converted
from ..layers.kinds import base_layer
from ..presets import complete_config
from ..targets import targeted_modules
from .quantize import QUANTIZATION_RECORD, QuantizationPlan, preflight, quantize

#: The inits whose residual is quantized. LoftQ is PEFT's own quantization-aware init (CUDA only).
RESIDUAL_INITS = ("pissa", "olora", "corda")
#: In the quantization record of a base quantized after such an init: the adapter, its init and the rank and alpha
#: it trained with (PEFT's conversion saves twice the rank; the exact values give back the exact scaling).
RESIDUAL_KEY = "residual_of"


def get_quantized_peft_model(model: nn.Module, config: Any, bits: int = 4, *, adapter_name: str = "default",
                             **quantize_options: Any) -> Any:
    """QPiSSA (and QOLoRA, QCorDA): ``config``'s init on the full-precision ``model``, then its residual quantized.

    ``config`` is a ``peft.LoraConfig`` with ``init_lora_weights`` = ``"pissa"`` (or ``"pissa_niter_K"``),
    ``"olora"`` or ``"corda"`` (after ``peft.tuners.lora.corda.preprocess_corda``); ``target_modules=None`` resolves
    the model's default preset as ``get_peft_model`` does. ``bits`` and ``quantize_options`` are
    :func:`~peft_vision_ext.quantize`'s (``quant_type``, ``double_quant``, ``compute_dtype``, ``skip``, ...). The
    model is changed in place, like ``get_peft_model``: its targeted weights become the quantized residual. Returns the
    ``PeftModel``; ``save_pretrained`` writes PEFT's conversion (a plain LoRA of rank 2r of the original base) and
    ``peft_vision_ext.load_adapter`` rebuilds exactly this model from the original base.

    Bad input (another init, DoRA, a quantized or already adapted model, quantize's own checks, a refusal of the
    compatibility matrix) raises before the model is changed.
    """
    from peft import get_peft_model, get_peft_model_state_dict


    _check_config(config)
    _check_model(model)
    chosen = preflight(model, bits, **quantize_options)
    config = copy.deepcopy(config)
    complete_config(model, config)  # the targets are needed before the build, as the injection would fill them
    quantize_options = _keeping_trained_modules(model, config, bits, chosen, quantize_options)
    # PEFT rewrites the targeted weights at init; the build starts again from the originals, so that training and
    # load_adapter compute the residual the same way.
    originals = {path: base_layer(module).weight.detach().clone() for path, module in targeted_modules(model, config)}
    initialised = get_peft_model(model, config, adapter_name=adapter_name)  # PEFT's init, on full precision
    initial = get_peft_model_state_dict(initialised, adapter_name=adapter_name)
    initial = {name: tensor.detach().clone() for name, tensor in initial.items()}
    base = initialised.unload()
    with torch.no_grad():
        for path, weight in originals.items():
            base.get_submodule(path).weight.copy_(weight)
    base.__dict__.pop(ORIGINAL_FINGERPRINT, None)  # the rewriting-init hook's record of PEFT's residual
    return build(base, config, initial, initial, {"bits": bits, **quantize_options}, adapter_name)


def _check_config(config: Any) -> None:
    from peft import LoraConfig

    init = getattr(config, "init_lora_weights", None)
    if type(config) is not LoraConfig:  # AdaLoraConfig is a subclass: not this path
        raise QuantizationError(
            f"get_quantized_peft_model() takes a peft.LoraConfig with init_lora_weights in {RESIDUAL_INITS}; got "
            f"{type(config).__name__}. For other methods: peft_vision_ext.quantize(model), then get_peft_model.")
    if not (isinstance(init, str) and init.startswith(RESIDUAL_INITS)):
        hint = (" LoftQ is PEFT's own quantization-aware init and runs on CUDA only: use init_lora_weights='pissa' "
                "here." if isinstance(init, str) and init.startswith("loftq") else
                " For LoRA with this init: peft_vision_ext.quantize(model, bits=...), then "
                "get_peft_model(model, config).")
        raise QuantizationError(f"get_quantized_peft_model() quantizes the residual an init leaves in the base: "
                                f"init_lora_weights must be one of {RESIDUAL_INITS} (or 'pissa_niter_K'); got "
                                f"{init!r}.{hint}")
    if getattr(config, "use_dora", False):
        raise QuantizationError(
            f"get_quantized_peft_model(): use_dora=True with init_lora_weights={init!r} is not supported: DoRA's "
            "magnitudes on a quantized residual are not verified (training, saving and the exact rebuild are tested "
            "without DoRA only). Use DoRA with the default init on a quantized base (quantize, then get_peft_model), "
            "or this init without DoRA.")


def _check_model(model: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = next((name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)), None)
    if adapted is not None or hasattr(model, "peft_config"):
        raise QuantizationError(
            f"get_quantized_peft_model() takes the bare full-precision model; {type(model).__name__} already holds "
            f"PEFT adapters ({adapted or 'peft_config'}). Pass the model before get_peft_model (or unload() it).")


def _keeping_trained_modules(model: nn.Module, config: Any, bits: int, chosen: QuantizationPlan,
                             options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the Linear layers ``config`` trains in full (``modules_to_save``) kept in full precision.

    ``chosen``: quantize's plan for ``options``. quantize() keeps the heads it recognises; a layer it does not (the
    user's own output layer under a name no registry knows) would be quantized, and PEFT's copy of it for training
    then fails ("only Tensors of floating point dtype can require gradients").
    """
    trained = list(getattr(config, "modules_to_save", None) or [])
    covered = [name for name in chosen.layers
               if any(name == entry or name.endswith("." + entry) or name.startswith(entry + ".") for entry in trained)]
    if not covered:
        return options
    kept = {**options, "skip": sorted(set(chosen.kept) | set(covered) | set(options.get("skip") or []))}
    preflight(model, bits, **kept)  # still something to quantize: refused here, before the model is touched
    return kept


def build(base: nn.Module, config: Any, initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
          quantization: dict[str, Any], adapter_name: str, inference_mode: bool = False) -> Any:
    """The PeftModel of a residual-quantized rewriting init, from the *original* full-precision ``base``.

    ``initial`` and ``trained``: the adapter's factors (PEFT state dicts) at initialisation and now. The base's
    targeted weights become ``W - delta(initial)``, the base is quantized with ``quantization`` (quantize's keyword
    arguments), and a plain LoRA holding ``trained`` goes on top. The save hook gets the initial factors, and the
    card the full-precision weights' fingerprints, which is what ``load_adapter`` checks the original base against.
    """
    from peft import get_peft_model


    init = config.init_lora_weights
    plain = copy.deepcopy(config)
    plain.init_lora_weights = True
    plain.inference_mode = False
    originals = fingerprint(base.state_dict(), [])
    probe = get_peft_model(base, plain, adapter_name=adapter_name)
    _load(probe, initial, adapter_name)
    with torch.no_grad():
        for module in _lora_layers(probe, adapter_name):
            weight = module.get_base_layer().weight
            weight -= module.get_delta_weight(adapter_name).to(weight.dtype)
    base = probe.unload()
    quantize(base, **quantization)
    current = fingerprint(base.state_dict(), [])
    base.__dict__[QUANTIZATION_RECORD][RESIDUAL_KEY] = {
        "adapter": adapter_name, "init": init, "r": config.r, "lora_alpha": config.lora_alpha,
        "rank_pattern": dict(config.rank_pattern or {}), "alpha_pattern": dict(config.alpha_pattern or {})}
    plain.inference_mode = inference_mode
    model = get_peft_model(base, plain, adapter_name=adapter_name)
    _load(model, initial, adapter_name)
    model.base_model.__dict__.setdefault(INITIAL_ATTRIBUTE, {})[adapter_name] = {
        key: tensor.detach().clone() for key, tensor in adapter_tensors(model.base_model.model, adapter_name).items()}
    if trained is not initial:
        _load(model, trained, adapter_name)
    model.peft_config[adapter_name].init_lora_weights = init
    if inference_mode:  # as PeftModel.from_pretrained(is_trainable=False); peft 0.17's injection leaves them trainable
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    # Every tensor the residual or the quantization changed is reported by its full-precision original (the
    # quantization state's extra tensors by nothing), while it still holds what it holds now: see
    # fingerprints.original_weights_fingerprint.
    base.__dict__[ORIGINAL_FINGERPRINT] = {name: (value, originals.get(name)) for name, value in current.items()
                                           if originals.get(name) != value}
    return model


def _lora_layers(peft_model: Any, adapter_name: str) -> list[nn.Module]:
    return [module for module in peft_model.modules()
            if hasattr(module, "get_delta_weight") and adapter_name in getattr(module, "lora_A", {})]


def _load(peft_model: Any, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    from peft import set_peft_model_state_dict

    # a copy: peft 0.17 renames the heads' keys in the dict it is given
    result = set_peft_model_state_dict(peft_model, dict(state), adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise QuantizationError(f"The adapter's tensors do not fit the model's LoRA layers (unexpected: "
                                f"{', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}).")


def load_residual_adapter(base: nn.Module, folder: str, quantization: dict[str, Any], adapter_name: str = "default",
                          is_trainable: bool = False) -> Any:
    """The trained model of a residual-quantized adapter saved in ``folder``, on its original full-precision base.

    ``quantization``: the saved record (quantize's arguments plus :data:`RESIDUAL_KEY`).
    """
    from peft import LoraConfig
    from safetensors.torch import load_file

    record = quantization[RESIDUAL_KEY]
    config = LoraConfig.from_pretrained(folder)
    config.r, config.lora_alpha = record["r"], record["lora_alpha"]
    config.rank_pattern, config.alpha_pattern = record["rank_pattern"], record["alpha_pattern"]
    config.init_lora_weights = record["init"]
    state = load_file(os.path.join(folder, "adapter_model.safetensors"))
    _check_converted(state, config, folder)
    trained, initial = split_converted(state)
    options = {key: value for key, value in quantization.items() if key != RESIDUAL_KEY and value is not None}
    options["compute_dtype"] = getattr(torch, options.get("compute_dtype", "float32"))
    return build(base, config, initial, trained, options, adapter_name, inference_mode=not is_trainable)


def _check_converted(state: dict[str, torch.Tensor], config: Any, folder: str) -> None:
    saved = next((tensor.shape[0] for name, tensor in state.items() if ".lora_A." in name), None)
    pattern = config.rank_pattern or {}
    if saved is None or (not pattern and saved != 2 * config.r) or saved % 2:
        raise AdapterLoadError(
            f"{folder}: the quantization record says the base was quantized after a {config.init_lora_weights} init "
            f"of rank {config.r}, but the adapter's lora_A has {saved} rows, not PEFT's conversion of that rank "
            f"(2r = {2 * config.r}). Was it saved by another version, or edited?")


def residual_label(quantization: dict[str, Any]) -> str:
    """``"QPiSSA"``, ``"QOLoRA"``, ``"QCorDA"``: the name the card gives a residual-quantized init."""
    init = str(quantization[RESIDUAL_KEY]["init"]).split("_")[0]
    return "Q" + {"pissa": "PiSSA", "olora": "OLoRA", "corda": "CorDA"}.get(init, init)


__all__ = ["get_quantized_peft_model", "load_residual_adapter", "build", "RESIDUAL_INITS",
           "RESIDUAL_KEY", "residual_label"]
