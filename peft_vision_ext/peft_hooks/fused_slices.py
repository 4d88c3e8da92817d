"""Hook ``fused-qkv-slices``: ``fused_slices.json`` is saved beside LoRA adapters with sliced fused layers, and read
back with their config, so the plugin rebuilds the same trainable layout (see :mod:`peft_vision_ext.fused`)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from ..fused.slices import SIDECAR, attach_sidecar, write_sidecar
from ..patching import HOOK_MARK
from ..targets import method_name


def _read_sidecar(config: Any, path_or_repo_id: str, subfolder: str | None, kwargs: dict[str, Any]) -> None:
    if method_name(config) != "lora":
        return
    folder = os.path.join(path_or_repo_id, subfolder) if subfolder else path_or_repo_id
    path = os.path.join(folder, SIDECAR)
    if not os.path.isdir(folder):
        try:
            from huggingface_hub import hf_hub_download

            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
            path = hf_hub_download(path_or_repo_id, SIDECAR, subfolder=subfolder, **hub_kwargs)
        except Exception:  # noqa: BLE001 - no sidecar (or no Hub): a whole-layer adapter, PEFT's own behaviour
            return
    if os.path.isfile(path):
        with open(path) as handle:
            attach_sidecar(config, json.load(handle))


def _install_fused_slices() -> None:
    # Why: the sliced layout is plain PEFT LoRA in adapter_config.json and the weights (so PEFT alone loads it), and
    # nothing there can say "these B blocks are fixed zeros" without breaking PEFT's config parsing. PeftModel.
    # save_pretrained is what save, push_to_hub and Trainer checkpoints call; every PEFT load path (from_pretrained,
    # load_adapter, Trainer resume) reads the config through PeftConfigMixin.from_pretrained.
    from peft import PeftModel
    from peft.config import PeftConfigMixin

    original_save = PeftModel.save_pretrained
    if getattr(original_save, HOOK_MARK, False):
        return

    @functools.wraps(original_save)
    def save_pretrained(self: Any, save_directory: str, *args: Any, **kwargs: Any) -> Any:
        result = original_save(self, save_directory, *args, **kwargs)
        selected = kwargs.get("selected_adapters") or list(self.peft_config)
        if kwargs.get("is_main_process", True):
            for name in selected:
                folder = save_directory if name == "default" else os.path.join(save_directory, name)
                if os.path.isdir(folder):
                    write_sidecar(self.peft_config[name], folder)
        return result

    original_load = PeftConfigMixin.__dict__["from_pretrained"].__func__

    @functools.wraps(original_load)
    def from_pretrained(cls: Any, pretrained_model_name_or_path: str, subfolder: str | None = None,
                        **kwargs: Any) -> Any:
        config = original_load(cls, pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        _read_sidecar(config, str(pretrained_model_name_or_path), subfolder, kwargs)
        return config

    setattr(save_pretrained, HOOK_MARK, True)
    PeftModel.save_pretrained = save_pretrained
    PeftConfigMixin.from_pretrained = classmethod(from_pretrained)
