"""Hook ``modules-to-save-containers``: a ``modules_to_save`` name that ends a container's path mid-word is skipped.

PEFT's ``_set_trainable`` matches ``modules_to_save`` by plain string suffix (``key.endswith(name)``). LW-DETR and
RF-DETR name their final class head ``class_embed`` and keep one proposal head per query group in a ModuleList
``model.enc_out_class_embed``: the name matched the list, and PEFT raised ``modules_to_save cannot be applied to modules
of type ModuleList`` at get_peft_model and at every reload, though the heads themselves were listed one by one.

The wrapper hides, for the duration of the call, the containers (ModuleList/ModuleDict/ParameterList/ParameterDict,
which PEFT can never wrap) whose path ends with a name in the middle of a path component; they stay in the model,
untouched. Every other match is PEFT's own (the compatibility check warns about surprising ones); when there is
nothing to hide, PEFT's function runs exactly as it is.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from ..layers.kinds import CONTAINERS
from ..patching import HOOK_MARK, ORIGINALS

#: the PEFT modules that bind ``_set_trainable`` by name (``from .utils import _set_trainable``)
_BINDERS = ("peft.utils.other", "peft.utils", "peft.peft_model", "peft.mixed_model")


def containers_matched_mid_word(model: nn.Module, names: Iterable[str]) -> set[str]:
    """Paths of containers that end with one of ``names`` in the middle of a path component (``enc_out_class_embed``
    for ``class_embed``): PEFT's suffix test selects them and then refuses to wrap them."""
    names = [name for name in names if name]
    return {key for key, module in model.named_modules(remove_duplicate=False)
            if key and isinstance(module, CONTAINERS)
            and any(key.endswith(name) and key != name and not key.endswith("." + name) for name in names)}


@contextlib.contextmanager
def _hidden(model: nn.Module, paths: set[str]) -> Iterator[None]:
    walk = model.named_modules

    def named_modules(*args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Module]]:
        return ((key, module) for key, module in walk(*args, **kwargs) if key not in paths)

    object.__setattr__(model, "named_modules", named_modules)  # this instance only, for this call only
    try:
        yield
    finally:
        object.__delattr__(model, "named_modules")


def _install_modules_to_save_containers() -> None:
    import importlib

    import peft.utils.other as other

    original = other._set_trainable
    if getattr(original, HOOK_MARK, False):
        return
    ORIGINALS["modules-to-save-containers"] = original
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _set_trainable(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return original(*args, **kwargs)
        model, names = bound.arguments.get("model"), bound.arguments.get("module_names")
        if not isinstance(model, nn.Module) or not names:
            return original(*args, **kwargs)
        hidden = containers_matched_mid_word(model, names)
        if not hidden:
            return original(*args, **kwargs)
        with _hidden(model, hidden):
            return original(*args, **kwargs)

    setattr(_set_trainable, HOOK_MARK, True)
    for name in _BINDERS:
        module = importlib.import_module(name)
        if getattr(module, "_set_trainable", None) is original:
            module._set_trainable = _set_trainable
