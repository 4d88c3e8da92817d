"""Known-harmless third-party log lines kept out of our output (CLI, quick start, examples, notebooks).

Three log messages around bitsandbytes and one warning, matched by their text; every other record of those loggers
(errors included) and every other warning passes. Installed by ``import peft_vision_ext`` before it imports PEFT
(which imports bitsandbytes), so entry points that import the plugin first never show them:

- ``Failed to load CPU gemm_4bit_forward from kernels-community`` (logged when bitsandbytes is imported on an
  AVX512-BF16 CPU without the optional ``kernels`` package): bitsandbytes then uses its built-in kernel, and the
  plugin keeps 4-bit weights out of that packed path anyway (see :mod:`peft_vision_ext.quantization.cpu_packing`).
- ``Skipping publisher trust check for 'kernels-community/...' because Hugging Face Hub is in offline mode``
  (logged by the ``kernels`` package, a dependency of transformers >= 5.25, when bitsandbytes looks for that CPU
  kernel under ``HF_HUB_OFFLINE=1``): the notice before the one above; offline, the kernel loads only if it is
  already in the local cache.
- ``MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization`` (logged at every 8-bit
  forward with fp32 input): int8 matmuls always quantize fp16 activations.
- The ``FutureWarning`` "`is_gradient_checkpointing` is deprecated" (transformers >= 5.25): PEFT reads that
  attribute in every ``get_peft_model`` / ``PeftModel.from_pretrained`` of a transformers model, so users saw it
  for code that is not theirs. The filter is on that message from ``transformers.modeling_utils`` only.
"""

from __future__ import annotations

import logging
import warnings

#: logger name -> message prefix dropped from it.
KNOWN_NOISE: dict[str, str] = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from",
}

#: (category, message regex, module regex) of warnings dropped: see the module docstring.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not str(record.msg).startswith(self.prefix)


def filter_known_noise() -> None:
    """Install the filters (idempotent)."""
    for name, prefix in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
    for category, message, module in KNOWN_WARNINGS:  # filterwarnings replaces an identical filter: idempotent
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


filter_known_noise()  # on import: peft_vision_ext/__init__ imports this module before anything imports PEFT
