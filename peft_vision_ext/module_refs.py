"""Modules a model also holds outside ``_modules``: in plain Python lists or tuples of an attribute.

Mask2Former's prediction blocks keep their Linear layers in ``self.layers = [linear, activation]`` (registered as
children too) and iterate that list in forward. PEFT replaces a target through ``setattr`` on its parent, which
the list never sees: the forward keeps calling the bare layer and the adapter is never called. Presets leave such
layers out, and the compatibility check refuses them when targeted explicitly.
"""

from __future__ import annotations

from torch import nn


def list_held_modules(model: nn.Module) -> dict[int, str]:
    """id(module) -> ``"OwnerClass.attribute"`` for every module found in a list/tuple attribute of a module."""
    held: dict[int, str] = {}
    for owner in model.modules():
        for attribute, value in vars(owner).items():
            if attribute.startswith("_") or not isinstance(value, (list, tuple)):
                continue
            for item in value:
                if isinstance(item, nn.Module):
                    held.setdefault(id(item), f"{type(owner).__name__}.{attribute}")
    return held
