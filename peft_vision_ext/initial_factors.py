"""The initial factors of LoRA adapters whose initialisation rewrites the base weights (PiSSA, OLoRA, CorDA, LoftQ):
which inits those are, where their factors at initialisation are kept, how to read an adapter's factors.

Shared by the ``base-rewriting-init-save`` hook (peft_hooks/rewriting_inits.py), which keeps them at injection and
saves through PEFT's conversion with them, and quantization/residual.py, which builds a quantized residual model and
hands them to the same save.
"""

from __future__ import annotations

from typing import Any

import torch

REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
#: On the tuner: adapter name -> {(module path, adapter layer name): initial tensor}
INITIAL_ATTRIBUTE = "__peft_vision_ext_initial_adapters__"


def rewrites_base(config: Any) -> bool:
    """Whether ``config``'s initialisation rewrites the targeted base weights (PEFT's own test is a name prefix)."""
    init = getattr(config, "init_lora_weights", True)
    return isinstance(init, str) and init.startswith(REWRITING_INITS)


def adapter_tensors(model: Any, adapter: str) -> dict[tuple[str, str], torch.Tensor]:
    """Every tensor of ``adapter`` in ``model``'s LoRA layers, by (module path, adapter layer name)."""
    found = {}
    for path, module in model.named_modules():
        for layer_name in getattr(module, "adapter_layer_names", ()):
            container = getattr(module, layer_name, None)
            if container is None or adapter not in container:
                continue
            item = container[adapter]
            tensor = item if isinstance(item, torch.Tensor) else getattr(item, "weight", None)
            if isinstance(tensor, torch.Tensor):
                found[(path, layer_name)] = tensor
    return found


def split_converted(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """PEFT's converted adapter ``[A | A0]``, ``[B | -B0]`` -> (trained, initial) factors; other tensors in both."""
    trained, initial = {}, {}
    for name, tensor in state.items():
        if ".lora_A." in name:
            rank = tensor.shape[0] // 2
            trained[name], initial[name] = tensor[:rank].clone(), tensor[rank:].clone()
        elif ".lora_B." in name:
            rank = tensor.shape[1] // 2
            trained[name], initial[name] = tensor[:, :rank].clone(), -tensor[:, rank:]
        else:  # heads (modules_to_save): PEFT's loading wants them with the factors
            trained[name] = initial[name] = tensor
    return trained, initial
