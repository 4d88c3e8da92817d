"""``bnb_config(model_or_config)``: a transformers BitsAndBytesConfig that keeps vision heads in full precision."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import QuantizationError
from .bnb_patches import patch_bitsandbytes
from .quantize import plan


def _skeleton(model_or_config: Any) -> nn.Module:
    """The model itself, or one built from its config on the meta device (no memory, no weights)."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    import transformers

    config = model_or_config
    names = list(getattr(config, "architectures", None) or []) + ["AutoModelForImageClassification"]
    for name in names:
        model_class = getattr(transformers, name, None)
        if model_class is None:
            continue
        with torch.device("meta"):
            if name.startswith("Auto"):
                return model_class.from_config(config)
            return model_class(config)
    raise QuantizationError(f"no transformers model class found for config {type(config).__name__}.")


def bnb_config(model_or_config: Any, bits: int = 4, quant_type: str = "nf4", double_quant: bool = True,
               compute_dtype: torch.dtype = torch.float32, quant_storage: torch.dtype = torch.uint8) -> Any:
    """A ``BitsAndBytesConfig`` for ``from_pretrained`` that quantizes the blocks' Linear layers only.

    transformers' own default quantizes every Linear but the LM head, so a vision classifier, decode head or a
    Linear patch embedding would be quantized too (the new head would then train in 4-bit, or not fit in
    modules_to_save). The skip list (``llm_int8_skip_modules``) names every Linear that :func:`quantize` keeps::

        config = AutoConfig.from_pretrained(repo)
        model = AutoModelForImageClassification.from_pretrained(
            repo, quantization_config=bnb_config(config), dtype=torch.float32)

    ``dtype=torch.float32`` keeps the head and norms in fp32 (transformers 4 loads them in fp16 otherwise).
    ``quant_storage`` (4-bit): the dtype the packed weights are stored as; under FSDP it must equal the dtype FSDP
    shards the other parameters in (e.g. ``torch.bfloat16``), or the packed weights cannot be flattened with them.
    """
    from transformers import BitsAndBytesConfig


    patch_bitsandbytes()  # the 4-bit layers from_pretrained builds keep their layout; buffered frozen forward

    if bits == 4 and quant_type not in ("nf4", "fp4"):
        raise QuantizationError(f"quant_type must be 'nf4' or 'fp4' for 4-bit; got {quant_type!r}.")
    kept = list(plan(_skeleton(model_or_config), bits).kept)
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_quant_storage=quant_storage, llm_int8_skip_modules=kept)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=kept)
