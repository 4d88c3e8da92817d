"""Hook ``mha-exact-restore``: LoRA on nn.MultiheadAttention leaves the frozen base weights bit-exact after a forward.

PEFT's LoRA ``MultiheadAttention`` merges the adapter into ``in_proj_weight`` / ``out_proj.weight`` before every
forward and unmerges it after (``W + dW - dW``): each forward rounds the frozen base weights a little, so they
random-walk during training (torchvision ViT, SigLIP's pooling head, Mask2Former / OneFormer decoders). The base
then no longer matches its checkpoint: ``load_adapter`` rightly refuses it, and a merge is off by the drift. We keep
the tensors the base had before the forward and put them back afterwards.
"""

from __future__ import annotations

import functools
from typing import Any

from ..patching import HOOK_MARK, ORIGINALS


def _install_mha_exact_restore() -> None:
    from peft.tuners.lora.layer import MultiheadAttention

    original = MultiheadAttention.forward
    if getattr(original, HOOK_MARK, False):
        return
    ORIGINALS["mha-exact-restore"] = original

    @functools.wraps(original)
    def forward(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self.disable_adapters or self.merged:
            return original(self, query, *args, **kwargs)
        base = self.get_base_layer()
        out_base = base.out_proj.get_base_layer()
        # merge() replaces in_proj_weight by a merged copy, so the original stays untouched until we put it back. The
        # out_proj weight is kept as a copy: from peft 0.22 merge() also calls out_proj.merge(), which adds the delta
        # to that tensor in place before replacing it (a kept reference would then hold W + dW).
        saved_in, saved_out = base.in_proj_weight.data, out_base.weight.data.clone()
        try:
            return original(self, query, *args, **kwargs)
        finally:
            if not self.merged:
                base.in_proj_weight.data = saved_in
                out_base.weight.data = saved_out

    setattr(forward, HOOK_MARK, True)
    MultiheadAttention.forward = forward
