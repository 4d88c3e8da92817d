"""Hook ``base-rewriting-init-save``: LoRA adapters whose initialisation rewrites the base weights (PiSSA, OLoRA,
CorDA, LoftQ) are saved as PEFT's conversion to a plain LoRA of the original base.

Why: these inits move the principal part of each targeted weight into the adapter and leave a residual in the base.
A plain ``save_pretrained`` keeps the init in ``adapter_config.json``, so every load re-runs the decomposition on
the base it is given: right only on exactly the original base, impossible for CorDA (it needs its calibration
data again: the reload raises, measured in the compatibility grid) and for LoftQ without CUDA, and the vision
metadata fingerprinted the residual, so ``load_adapter`` refused the original base. PEFT converts to a plain LoRA
of rank 2r (loads anywhere, merges into the original base) when given ``path_initial_model_for_weight_conversion``,
a folder with the adapter as initialised that the user has to have saved before training. This hook keeps the
initial factors in memory from injection on and, at a save without that argument, writes them to a temporary
folder and passes it; the card reports the original weights' fingerprint (hashed before PEFT rewrote them).

Loading such a checkpoint back into the adapter that is training (Trainer's ``resume_from_checkpoint`` and
``load_best_model_at_end`` call ``PeftModel.load_adapter`` with the active adapter's name) would put rank-2r factors
into the rank-r adapter (size mismatch): ``load_adapter`` loads the trained half instead, after checking that the
checkpoint's initial half is this model's initial factors.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
import warnings
from typing import Any

import torch

from ..fingerprints import ORIGINAL_FINGERPRINT, fingerprint
from ..hub.metadata import CONVERTED_ADAPTER
from ..initial_factors import INITIAL_ATTRIBUTE, adapter_tensors, rewrites_base, split_converted
from ..layers.kinds import base_layer
from ..patching import ORIGINALS
from ..targets import targeted_modules

_OWN_MARK = "__peft_vision_ext_rewriting_inits__"


def _weights(model: Any, paths: list[str]) -> dict[str, torch.Tensor]:
    """``path.weight`` -> the base layer's weight (unwrapped once PEFT has injected)."""
    found = {}
    for path in paths:
        weight = getattr(base_layer(model.get_submodule(path)), "weight", None)
        if isinstance(weight, torch.Tensor):
            found[f"{path}.weight"] = weight
    return found


def initial_state(peft_model: Any, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter as initialised, as PEFT's state dict (CPU copies): the kept initial factors swapped in, read,
    swapped back."""
    from peft import get_peft_model_state_dict

    initial = peft_model.base_model.__dict__[INITIAL_ATTRIBUTE][adapter]
    current = adapter_tensors(peft_model.base_model.model, adapter)
    saved = {key: tensor.detach().clone() for key, tensor in current.items()}
    try:
        with torch.no_grad():
            for key, tensor in current.items():
                tensor.copy_(initial[key])
            state = get_peft_model_state_dict(peft_model, adapter_name=adapter)
            return {name: value.detach().to("cpu").contiguous().clone() for name, value in state.items()}
    finally:
        with torch.no_grad():
            for key, tensor in current.items():
                tensor.copy_(saved[key])


def _write_adapter(config: Any, state: dict[str, torch.Tensor], folder: str) -> None:
    from safetensors.torch import save_file

    config.save_pretrained(folder)
    save_file(state, os.path.join(folder, "adapter_model.safetensors"))


def _write_initial(peft_model: Any, adapter: str, folder: str) -> None:
    """The adapter as initialised, in PEFT's format (its config says plain init, as PEFT's recipe asks)."""
    config = copy.deepcopy(peft_model.peft_config[adapter])
    config.init_lora_weights = True
    _write_adapter(config, initial_state(peft_model, adapter), folder)


def _converted_checkpoint(peft_model: Any, model_id: Any, adapter: str, subfolder: str | None) -> str | None:
    """The local folder of ``model_id`` when it holds this adapter saved through the conversion (rank 2r, plain
    init) and the adapter in memory still has its initial factors (it trains on the residual), else None."""
    import json

    if adapter not in peft_model.peft_config or adapter not in (peft_model.base_model.__dict__.get(INITIAL_ATTRIBUTE)
                                                                  or {}):
        return None
    folder = os.path.join(str(model_id), subfolder) if subfolder else str(model_id)
    path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        saved = json.load(handle)
    config = peft_model.peft_config[adapter]
    converted = saved.get("init_lora_weights") is True and saved.get("r") == 2 * config.r
    return folder if converted else None


def _load_trained_half(peft_model: Any, folder: str, adapter: str) -> str:
    """A temporary folder with the trained half of a converted checkpoint of ``adapter``, in the adapter's own
    config (rank r): what the model in memory, which holds the residual, loads to resume. Refused when the
    checkpoint's initial half is not this model's initial factors (another run, or a randomised init)."""
    from peft.utils import load_peft_weights

    trained, initial = split_converted(load_peft_weights(folder, device="cpu"))
    mine = initial_state(peft_model, adapter)
    factors = [name for name in initial if "lora_A" in name or "lora_B" in name]
    differing = [name for name in factors
                 if name not in mine or not torch.equal(initial[name].to(mine[name].dtype), mine[name])]
    if differing or not factors:
        init = peft_model.peft_config[adapter].init_lora_weights
        raise ValueError(
            f"{folder} holds adapter {adapter!r} saved as PEFT's conversion of a {init} init (rank 2r, relative to "
            f"the original base), but its initial factors differ from this model's ({len(differing)} tensors, e.g. "
            f"{(differing or ['none saved'])[0]}): it comes from another run or base, or a randomised init such as "
            "pissa_niter_K. This model holds the residual of its own init, so the checkpoint cannot resume it. Load "
            "it onto the original base instead: peft_vision_ext.load_adapter(path), or "
            "PeftModel.from_pretrained(original_model, path).")
    staging = tempfile.mkdtemp(prefix="pve-resume-")
    config = copy.deepcopy(peft_model.peft_config[adapter])
    _write_adapter(config, {name: tensor.contiguous() for name, tensor in trained.items()}, staging)
    return staging


def _restore_dropped(peft_model: Any, adapter: str, save_directory: str, safe_serialization: bool) -> None:
    """Put back what PEFT's conversion leaves out of the saved adapter.

    ``subtract_mutated_init`` (peft 0.17.1 to 0.21.2) returns only the concatenated ``lora_A`` / ``lora_B`` tensors:
    the trained heads (``modules_to_save``) and DoRA's magnitudes were silently not saved, and a config listing
    ``modules_to_save`` then failed to load (KeyError). They are saved as trained: the converted factors give the
    same weights (W + [B | -B0][A | A0] = W_res + BA), so the heads and magnitudes stay valid on the original base.
    """
    from peft import get_peft_model_state_dict

    kept = {name: tensor.detach().to("cpu").contiguous().clone()
            for name, tensor in get_peft_model_state_dict(peft_model, adapter_name=adapter).items()
            if "lora_A" not in name and "lora_B" not in name}
    folder = save_directory if adapter == "default" else os.path.join(save_directory, adapter)
    path = os.path.join(folder, "adapter_model.safetensors" if safe_serialization else "adapter_model.bin")
    if not kept or not os.path.isfile(path):  # not the main process of a distributed save: it wrote nothing
        return
    if safe_serialization:
        from safetensors.torch import load_file, save_file

        state = load_file(path)
        if kept.keys() - state.keys():
            save_file({**state, **kept}, path, metadata={"format": "pt"})
    else:
        state = torch.load(path, weights_only=True)
        if kept.keys() - state.keys():
            torch.save({**state, **kept}, path)


def _install_rewriting_inits() -> None:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner


    original_inject = BaseTuner.inject_adapter
    original_save = PeftModel.save_pretrained
    original_load = PeftModel.load_adapter
    if getattr(original_save, _OWN_MARK, False):
        return

    @functools.wraps(original_inject)
    def inject_adapter(self: Any, model: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        config = self.peft_config.get(adapter_name)
        if config is None or not rewrites_base(config) or getattr(config, "inference_mode", False):
            return original_inject(self, model, adapter_name, *args, **kwargs)
        paths = [path for path, _ in targeted_modules(model, config)]
        originals = fingerprint(_weights(model, paths), [])
        result = original_inject(self, model, adapter_name, *args, **kwargs)
        residuals = fingerprint(_weights(model, paths), [])
        # name -> (hash of the residual PEFT left, hash of the original): the card reports the original while the
        # base still holds that residual (not after a merge). A second rewriting adapter keeps the first originals.
        stored = model.__dict__.setdefault(ORIGINAL_FINGERPRINT, {})
        for name, residual in residuals.items():
            first = stored.get(name)
            stored[name] = (residual, first[1] if first else originals[name])
        self.__dict__.setdefault(INITIAL_ATTRIBUTE, {})[adapter_name] = {
            key: tensor.detach().clone() for key, tensor in adapter_tensors(model, adapter_name).items()}
        return result

    @functools.wraps(original_save)
    def save_pretrained(self: Any, save_directory: str, *args: Any, **kwargs: Any) -> Any:
        initial = self.base_model.__dict__.get(INITIAL_ATTRIBUTE) or {}
        selected = kwargs.get("selected_adapters") or list(self.peft_config)
        converting = [name for name in selected if name in initial]
        if not converting or kwargs.get("path_initial_model_for_weight_conversion") is not None:
            return original_save(self, save_directory, *args, **kwargs)
        if len(selected) > 1:
            raise ValueError(
                f"Adapters {converting} rewrote the base weights at initialisation ("
                f"{', '.join(self.peft_config[n].init_lora_weights for n in converting)}): they are saved as PEFT's "
                "conversion to a plain LoRA of the original base, which PEFT does one adapter at a time. Save each "
                "with save_pretrained(directory, selected_adapters=[name]).")
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            # PEFT's conversion loads the initial adapter next to the trained one and then warns that the rewriting
            # init "should not be used with other adapters; consider converting": the conversion it is doing.
            warnings.filterwarnings("ignore", message=".*changes the base weights of the model and should thus not")
            _write_initial(self, converting[0], folder)
            self.__dict__[CONVERTED_ADAPTER] = converting[0]  # the card describes what is saved (rank 2r)
            try:
                result = original_save(self, save_directory, *args, path_initial_model_for_weight_conversion=folder,
                                       **kwargs)
            finally:
                self.__dict__.pop(CONVERTED_ADAPTER, None)
        _restore_dropped(self, converting[0], save_directory, kwargs.get("safe_serialization", True))
        return result

    @functools.wraps(original_load)
    def load_adapter(self: Any, model_id: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        # Trainer's resume_from_checkpoint and load_best_model_at_end load a checkpoint into the adapter being
        # trained. Checkpoints are saved converted (rank 2r, for the original base) while this model holds the
        # residual and the rank-r adapter: load the trained half, after checking the initial half is this model's.
        folder = _converted_checkpoint(self, model_id, adapter_name, kwargs.get("subfolder"))
        if folder is None:
            return original_load(self, model_id, adapter_name, *args, **kwargs)
        staging = _load_trained_half(self, folder, adapter_name)
        kwargs.pop("subfolder", None)
        try:
            return original_load(self, staging, adapter_name, *args, **kwargs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # Own marks only: installed first, these wrappers get wrapped by hooks that test the shared mark to stay
    # idempotent (vision-default-targets, fused-qkv-slices), which must not mistake them for their own.
    for function in (inject_adapter, save_pretrained, load_adapter):
        setattr(function, _OWN_MARK, True)
    ORIGINALS["base-rewriting-init-save"] = original_save
    BaseTuner.inject_adapter = inject_adapter
    PeftModel.save_pretrained = save_pretrained
    PeftModel.load_adapter = load_adapter
