"""Quantized (bitsandbytes) fine-tuning of ViTs: quantize, QPiSSA, a transformers config, merge, memory accounting.

Layer: features. It may import presets (default targets of a quantized residual), the data, the layer math and
the base modules; the analysis, the hub and the hooks read it."""

from __future__ import annotations

from ..layers.cpu_packing import cpu_takes_packed_path, enable_inference_packing, keep_unpacked
from .bnb_layers import storage_bytes
from .buffered_4bit import release_freed_memory, set_buffered_dequantization, set_release_freed_memory
from .hf import bnb_config
from .merge import dequantize, merge_and_unload
from .quantize import QuantizationPlan, plan, quantize
from .residual import get_quantized_peft_model

__all__ = ["quantize", "get_quantized_peft_model",
           "plan", "QuantizationPlan", "bnb_config", "merge_and_unload", "dequantize", "storage_bytes",
           "keep_unpacked", "enable_inference_packing", "cpu_takes_packed_path", "set_buffered_dequantization",
           "set_release_freed_memory", "release_freed_memory"]
