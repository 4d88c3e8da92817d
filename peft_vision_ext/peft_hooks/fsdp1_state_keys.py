"""Hook ``fsdp1-adapter-keys``: under FSDP1 the adapter's weights are found in the state dict again.

Why: newer PEFT (0.21 here; 0.17 matched key names instead) selects the adapter's entries of a state dict by the
names of the tuner layers' modules (``_get_tuner_state_dict_key_prefixes``). Inside FSDP1 those names carry
``_fsdp_wrapped_module.``, while FSDP1's full state dict (what Trainer/accelerate pass to ``save_pretrained``) has
clean keys: every LoRA weight was silently left out of the saved adapter (only modules_to_save survived, which PEFT
already strips the prefix for). The prefixes are returned both ways.
"""

from __future__ import annotations

import functools
from typing import Any

from ..patching import HOOK_MARK, ORIGINALS

_FSDP1_PART = "_fsdp_wrapped_module."


def _install_fsdp1_adapter_keys() -> None:
    from peft.tuners import tuners_utils

    original = getattr(tuners_utils, "_get_tuner_state_dict_key_prefixes", None)
    if original is None or getattr(original, HOOK_MARK, False):  # older PEFT: selection by key names, nothing to fix
        return
    ORIGINALS["fsdp1-adapter-keys"] = original

    @functools.wraps(original)
    def prefixes(model: Any, *args: Any, **kwargs: Any) -> set[str]:
        found = original(model, *args, **kwargs)
        return found | {prefix.replace(_FSDP1_PART, "") for prefix in found if _FSDP1_PART in prefix}

    setattr(prefixes, HOOK_MARK, True)
    tuners_utils._get_tuner_state_dict_key_prefixes = prefixes
