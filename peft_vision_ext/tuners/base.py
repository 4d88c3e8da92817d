"""What the plugin's own PEFT methods share: the tuner model's bookkeeping (activate, disable, delete, merge and unload
adapters) written once against the oldest supported PEFT, whose ``BaseTuner`` leaves these to each method.

Laid out as PEFT's tuners are: each method is a package with ``config.py``, ``layer.py`` and ``model.py``. PEFT
learns about them through :func:`peft.utils.register_peft_method` (hook ``vision-peft-methods`` in
:mod:`peft_vision_ext.peft_hooks`, which also adds their names to ``PeftType``: PEFT 0.17-0.22 accept no other name).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peft.config import PeftConfig
from peft.tuners import tuners_utils
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import ModulesToSaveWrapper, _get_submodules
from peft.utils.peft_types import PeftType
from torch import nn


def registered_peft_type(name: str) -> Any:
    """PEFT's ``PeftType`` member for one of the plugin's methods (added when ``peft_vision_ext`` is imported)."""
    member = PeftType._member_map_.get(name.upper())
    if member is None:
        raise RuntimeError(
            f"peft-vision-ext: the PEFT method {name!r} is not registered with this PEFT (the plugin's hook "
            "'vision-peft-methods' was skipped or peft_vision_ext was not imported). Import peft_vision_ext before "
            "creating the config; if it was imported, its warning names what this PEFT release lacks.")
    return member


@dataclass
class VisionMethodConfig(PeftConfig):
    """The fields every method of the plugin shares with PEFT's layer methods (targets, exclusions, the head trained
    in full, layer selection); ``peft_type`` is the registered member of :attr:`method`."""

    method: ClassVar[str] = ""
    target_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Module names (or one regex of whole paths) to adapt; None: the family's vision preset."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Module names to leave out."})
    modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Modules trained in full and saved with the adapter (the task head)."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Only these layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "The layer list's name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = registered_peft_type(self.method)
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)


class VisionTunerModel(BaseTuner):
    """A ``BaseTuner`` whose layers are all instances of :attr:`tuner_layer_cls`. Subclasses set ``prefix``,
    ``tuner_layer_cls`` and implement ``_create_and_replace`` (PEFT's extension contract)."""

    prefix: str = ""
    tuner_layer_cls: type[BaseTunerLayer] = BaseTunerLayer
    target_module_mapping: dict[str, list[str]] = {}  # noqa: RUF012 - PEFT's tables: none for vision methods

    @staticmethod
    def _prepare_adapter_config(peft_config: Any, model_config: Any) -> Any:
        if peft_config.target_modules is None:
            raise ValueError(
                f"{type(peft_config).__name__}: target_modules is None and this model has no vision preset "
                "(peft-vision-ext resolves one for the models it recognises). Pass target_modules explicitly, or "
                "peft_vision_ext.preset_config(model, method) for a recognised vision model.")
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: Any, key: str) -> Any:
        return check_target_module_exists(peft_config, key)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for name, parameter in model.named_parameters():
            if self.prefix not in name:
                parameter.requires_grad = False

    def _layers(self) -> list[BaseTunerLayer]:
        return [module for module in self.model.modules() if isinstance(module, self.tuner_layer_cls)]

    def _set_adapter_layers(self, enabled: bool) -> None:
        for module in self.model.modules():
            if isinstance(module, (self.tuner_layer_cls, ModulesToSaveWrapper)):
                module.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        self._set_adapter_layers(False)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name`` (trainable unless ``inference_mode``), as PEFT's tuners do."""
        for module in self._layers():
            if module.merged:
                warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.",
                              stacklevel=2)
                module.unmerge()
            module.set_adapter(adapter_name)
            if inference_mode:
                for layer_name in module.adapter_layer_names:
                    for parameter in getattr(module, layer_name).parameters():
                        parameter.requires_grad = False
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        del self.peft_config[adapter_name]
        remaining = None
        for module in self._layers():
            module.delete_adapter(adapter_name)
            if remaining is None:
                remaining = module.active_adapters[:]
        self.active_adapter = remaining or []
        # the helper moved from a BaseTuner method (PEFT 0.17) to a module function
        helper = getattr(tuners_utils, "_delete_auxiliary_adapter", None)
        if helper is not None:
            helper(self.model, adapter_name, new_active_adapters=remaining)
        else:
            super()._delete_auxiliary_adapter(adapter_name, new_active_adapters=remaining)

    def _refuse_unmergeable(self, adapter_names: list[str] | None) -> None:
        """Raise before anything is merged when one layer cannot take its adapter (the model stays as it was)."""
        names = adapter_names or list(self.active_adapters)
        problems = [f"{path}: {problem}" for path, module in self.model.named_modules()
                    if isinstance(module, self.tuner_layer_cls)
                    and (problem := module.merge_problem(names)) is not None]
        if problems:
            shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            raise ValueError(f"{type(self.peft_config[names[0]]).__name__.removesuffix('Config')} cannot be merged "
                             f"into {len(problems)} modules ({shown}). Nothing was merged; keep the adapter unmerged, "
                             "or leave those modules out of target_modules.")

    def merge_adapter(self, adapter_names: list[str] | None = None, *args: Any, **kwargs: Any) -> None:
        self._refuse_unmergeable(adapter_names)
        for module in self._layers():
            module.merge(adapter_names=adapter_names)

    def unmerge_adapter(self) -> None:
        for module in self._layers():
            module.unmerge()

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            self._refuse_unmergeable(adapter_names)
        for key in [key for key, _ in self.model.named_modules() if self.prefix not in key]:
            try:
                parent, target, target_name = _get_submodules(self.model, key)
            except AttributeError:
                continue
            if isinstance(target, self.tuner_layer_cls):
                if merge:
                    target.merge(safe_merge=safe_merge, adapter_names=adapter_names)
                setattr(parent, target_name, target.get_base_layer())
            elif isinstance(target, ModulesToSaveWrapper):
                saved = target.modules_to_save[target.active_adapter]
                setattr(parent, target_name, saved)
        return self.model

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Merge the adapters into the base layers and return the base model (refused before anything changes where
        a layer cannot take its adapter)."""
        return self._unload_and_optionally_merge(merge=True, safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        """The base model without the adapters (nothing merged)."""
        return self._unload_and_optionally_merge(merge=False)
