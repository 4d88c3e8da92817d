"""Hook ``vision-peft-methods``: the plugin's own PEFT methods (:mod:`peft_vision_ext.tuners`) become PEFT methods.

PEFT's extension point is :func:`peft.utils.register_peft_method`; on every release we support (0.17-0.22) it raises
"Unknown PEFT type" unless the name is already a member of ``PeftType``, an Enum PEFT does not let plugins extend.
The hook adds the members (an Enum patch, hence a hook) and then registers each method through that extension point.
Idempotent: a method already registered (a second import, ``install()`` again) is left as it is.
"""

from __future__ import annotations

from typing import Any

from ..tuners import METHODS


def _add_peft_type(peft_type: Any, name: str) -> Any:
    """Add ``name`` to the ``PeftType`` Enum as a member like PEFT's own (``PeftType.SSF == "SSF"``)."""
    found = peft_type._member_map_.get(name)
    if found is not None:
        return found
    member = str.__new__(peft_type, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = peft_type
    peft_type._member_map_[name] = member
    peft_type._value2member_map_[name] = member
    peft_type._member_names_.append(name)
    type.__setattr__(peft_type, name, member)  # EnumType.__setattr__ refuses new names on the class
    return member


def _install_vision_methods() -> None:
    # Why: PeftType lists PEFT's own methods only, and register_peft_method requires a member; with the members
    # added, PEFT's mappings (config, tuner, prefix) are filled by PEFT's own function, and get_peft_model,
    # save_pretrained, PeftModel.from_pretrained, load_adapter and the state-dict helpers treat the methods as theirs.
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method
    from peft.utils.peft_types import PeftType

    for method in METHODS:
        member = _add_peft_type(PeftType, method.name.upper())
        if PEFT_TYPE_TO_CONFIG_MAPPING.get(member) is method.config:
            continue
        register_peft_method(name=method.name, config_cls=method.config, model_cls=method.model,
                             prefix=method.prefix)
