"""Prediction heads trained in full (``modules_to_save``) on task models.

- Hook ``tied-weights-without-embeddings``: PEFT can wrap detection transformers that tie their heads.
- :func:`fix_modules_to_save` (a step of the ``vision-default-targets`` inject_adapter wrapper) keeps tied heads tied
  and removes the never-called wrappers PEFT's suffix matching nests inside a wrapped head.

Tied heads:
Detection transformers tie prediction heads: Deformable DETR with box refinement, RT-DETRv2 and D-FINE share each
decoder layer's ``class_embed``/``bbox_embed`` with the top-level ones (transformers 4.x: the same module objects;
5.x: separate modules holding the same Parameter objects). PEFT's ``modules_to_save`` deep-copies every matched
module on its own, so two paths of one tied head become two independent trainable copies: the model silently
unties (the decoder refines boxes with one copy, the output uses another, both saved). After PEFT wrapped them, we
make the copies share whatever parameters the originals shared; saving stores each path (PEFT clones shared tensors
for safetensors), loading fills the one shared tensor.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from ..patching import HOOK_MARK, ORIGINALS


def _set_parameter(module: nn.Module, dotted: str, parameter: nn.Parameter) -> None:
    owner_path, _, name = dotted.rpartition(".")
    setattr(module.get_submodule(owner_path) if owner_path else module, name, parameter)


def fix_modules_to_save(model: nn.Module, adapter_name: str) -> None:
    drop_nested_wrappers(model)
    retie_modules_to_save(model, adapter_name)


def drop_nested_wrappers(model: nn.Module) -> list[str]:
    """Remove ModulesToSaveWrappers that PEFT attached to another wrapper; their paths.

    PEFT matches ``modules_to_save`` by string suffix, so ``head`` also matches ``head.head`` (DPT's and GLPN's depth
    heads keep their layers in a child named ``head``). It wraps the outer head first, then attaches a second
    wrapper to the first one: that wrapper is never called (the forward runs the outer copy), so its parameters are
    trainable without ever getting a gradient, and it is saved with the adapter for nothing. Worse, it wrapped the
    outer copy's own layers and froze them: the head was not trained at all. We drop the inner wrapper and give the
    outer copy back the trainability the inner one had.
    """
    from peft.utils.other import ModulesToSaveWrapper

    dropped = []
    for name, wrapper in list(model.named_modules()):
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        for child_name, child in list(wrapper.named_children()):
            if isinstance(child, ModulesToSaveWrapper):
                del wrapper._modules[child_name]
                for adapter, copy in child.modules_to_save.items():
                    if adapter in wrapper.modules_to_save and any(p.requires_grad for p in copy.parameters()):
                        wrapper.modules_to_save[adapter].requires_grad_(True)
                dropped.append(f"{name}.{child_name}")
    return dropped


def retie_modules_to_save(model: nn.Module, adapter_name: str) -> int:
    """Make ``adapter_name``'s trainable copies share the parameters their original modules share; the number of
    parameters re-tied."""
    from peft.utils.other import ModulesToSaveWrapper

    first: dict[int, tuple[nn.Module, str]] = {}  # id(original parameter) -> (its first copy, parameter path)
    retied = 0
    seen: set[int] = set()
    for _, wrapper in model.named_modules(remove_duplicate=False):
        if not isinstance(wrapper, ModulesToSaveWrapper) or id(wrapper) in seen:
            continue
        seen.add(id(wrapper))
        copies: Any = getattr(wrapper, "modules_to_save", {})
        if adapter_name not in copies:
            continue
        copy = copies[adapter_name]
        for path, original in wrapper.original_module.named_parameters(remove_duplicate=False):
            if id(original) not in first:
                first[id(original)] = (copy, path)
                continue
            owner, owner_path = first[id(original)]
            shared = owner.get_parameter(owner_path)
            if copy.get_parameter(path) is not shared:
                _set_parameter(copy, path, shared)
                retied += 1
    return retied


def _install_tied_weights_without_embeddings() -> None:
    # Why: PEFT (0.18+) asks every model with transformers-5 style ``_tied_weights_keys`` (a dict) which modules are
    # tied to its input embeddings, calling ``get_input_embeddings()``. Detection transformers tie their class/box
    # heads that way but have no input embeddings: transformers raises NotImplementedError, and get_peft_model
    # crashed on Deformable DETR, DAB-DETR, RT-DETRv2, D-FINE and Grounding DINO whatever the targets. A model
    # without input embeddings has nothing tied to them: the answer is "none".
    from peft.tuners import tuners_utils
    from peft.utils import other

    original = getattr(other, "_get_module_names_tied_with_embedding", None)
    if original is None or getattr(original, HOOK_MARK, False):
        return
    ORIGINALS["tied-weights-without-embeddings"] = original

    @functools.wraps(original)
    def names_tied_with_embedding(model: Any) -> list[str]:
        try:
            return original(model)
        except NotImplementedError:
            if _has_input_embeddings(model):
                raise
            return []

    setattr(names_tied_with_embedding, HOOK_MARK, True)
    other._get_module_names_tied_with_embedding = names_tied_with_embedding
    if getattr(tuners_utils, "_get_module_names_tied_with_embedding", None) is original:
        tuners_utils._get_module_names_tied_with_embedding = names_tied_with_embedding


def _has_input_embeddings(model: Any) -> bool:
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model = model.model if hasattr(model, "tuner_layer_cls") else model
    try:
        model.get_input_embeddings()
    except NotImplementedError:
        return False
    return True
