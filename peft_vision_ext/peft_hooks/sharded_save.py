"""Hook ``sharded-save``: ``PeftModel.save_pretrained`` on a sharded (FSDP) model describes the base from the full
state dict it is given, or refuses.

Why: under FSDP the model's own tensors are shards. Trainer (through accelerate) gathers a full state dict on every
process and calls ``save_pretrained(state_dict=...)`` on the main process alone; the vision model card then read the
base's shards on that one process, which needs the other processes (DTensor ops, FSDP1's state-dict hooks) and waits
forever, or hashes shards that no unsharded base matches. With a state dict, the card's shapes and fingerprint come
from it. Without one, PEFT would write this process's shards as if they were the adapter: refused with what to use.
``peft_vision_ext.distributed.save_adapter`` supplies the record itself.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ..card_facts import PRECOMPUTED_BASE, is_vision_model, precomputed_base
from ..layers.shards import has_dtensor_parameters, is_fsdp1
from ..patching import HOOK_MARK

_FSDP1_BLOCK = re.compile(r"\.lora_[AB]\.[^.]+\.block\d+$")
_OWN_MARK = "__peft_vision_ext_sharded_save__"  # PeftModel.save_pretrained also carries fused-qkv-slices' wrapper


def _is_sharded(model: Any) -> bool:
    return has_dtensor_parameters(model) or is_fsdp1(model) or any(
        getattr(p, "_fsdp_flattened", False) for p in model.parameters())


def _install_sharded_save() -> None:
    from peft import PeftModel

    original = PeftModel.save_pretrained
    if getattr(original, _OWN_MARK, False):
        return

    @functools.wraps(original)
    def save_pretrained(self: Any, save_directory: str, *args: Any, **kwargs: Any) -> Any:
        if PRECOMPUTED_BASE in self.__dict__ or not _is_sharded(self):
            return original(self, save_directory, *args, **kwargs)
        state = kwargs.get("state_dict")
        if state is None:
            raise RuntimeError(
                "save_pretrained on a model sharded with FSDP would write only this process's shards of the adapter. "
                "Call peft_vision_ext.distributed.save_adapter(model, directory) on every process (process 0 writes), "
                "or pass state_dict= a full state dict of the model (as Trainer does).")
        # FSDP1 full state dicts also carry the fused-slices factors' blocks (see FusedFactors._save_to_state_dict)
        kwargs["state_dict"] = state = {key: value for key, value in state.items() if not _FSDP1_BLOCK.search(key)}
        if not is_vision_model(self.get_base_model()):
            return original(self, save_directory, *args, **kwargs)
        self.__dict__[PRECOMPUTED_BASE] = precomputed_base(self, state)
        try:
            return original(self, save_directory, *args, **kwargs)
        finally:
            self.__dict__.pop(PRECOMPUTED_BASE, None)

    setattr(save_pretrained, HOOK_MARK, True)
    setattr(save_pretrained, _OWN_MARK, True)
    PeftModel.save_pretrained = save_pretrained
