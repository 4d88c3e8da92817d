"""Reading a PEFT config: which method it is (:func:`method_name`, the matrix row's name) and which modules it
targets on a model, as PEFT's injection will match them. Base layer: imports nothing of the package.
"""

from __future__ import annotations

import copy
from typing import Any


def targeted_modules(model: Any, config: Any) -> list[tuple[str, Any]]:
    """(path, module) of every module ``config`` targets on ``model``, as PEFT's injection will match them.

    Modules inside PEFT's own wrappers (base_layer, lora_A, modules_to_save copies) are skipped, like PEFT does;
    an already-wrapped target is returned as its wrapper. ``all-linear`` is expanded with PEFT's own helper.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists

    if getattr(config, "target_modules", None) is None:
        return []
    try:
        config = _maybe_include_all_linear_layers(copy.copy(config), model)
    except ValueError:
        return []  # PEFT raises its own error for this config when it injects
    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside) or "modules_to_save" in name.split("."):
            continue
        if name and check_target_module_exists(config, name):
            found.append((name, module))
        if isinstance(module, BaseTunerLayer) or type(module).__name__ == "ModulesToSaveWrapper":
            inside.append(name + ".")
    return found


def method_name(config: Any) -> str:
    """The matrix row of a PEFT config's method: its ``peft_type`` value in lower case (``"lora"``, ``"ia3"``)."""
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type) or "").lower()
