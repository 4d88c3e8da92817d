"""AdaLoRA's orthogonal regularisation for models whose loss is computed outside the model.

PEFT adds ``orth_reg_weight * mean ||P P^T - I||_F`` (P: every lora_A, and lora_B transposed) inside
``AdaLoraModel.forward``, and only to an ``outputs.loss`` the model returns. A vision PeftModel without a task type
forwards straight to the base model, and timm/torchvision models return logits: the term is never added. Add
:func:`orthogonal_regularization` to your loss (the examples do it in ``Trainer.compute_loss``).
"""

from __future__ import annotations

import torch
from torch import nn


def orthogonal_regularization(model: nn.Module) -> torch.Tensor | None:
    """``orth_reg_weight * mean_P ||P P^T - I||_F`` over the trainable AdaLoRA adapter's lora_A / lora_B, as
    PEFT's ``AdaLoraModel.forward`` computes it; ``None`` when ``model`` has no AdaLoRA adapter.

    ``model``: a PeftModel (possibly wrapped by DDP / accelerate) or its AdaLoraModel.
    """
    from peft.tuners.adalora import AdaLoraModel

    tuner = model
    while not isinstance(tuner, AdaLoraModel) and hasattr(tuner, "module"):  # DDP / accelerate wrappers
        tuner = tuner.module
    if not isinstance(tuner, AdaLoraModel):  # a PeftModel: its tuner (never walk further: transformers models'
        tuner = getattr(tuner, "base_model", None)  # base_model can be the model itself)
    if not isinstance(tuner, AdaLoraModel):
        return None
    adapter = tuner.trainable_adapter_name
    terms = []
    for name, parameter in tuner.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name.split(".") and parameter.numel():
            covariance = parameter @ parameter.T if "lora_A" in name else parameter.T @ parameter
            identity = torch.eye(*covariance.shape, dtype=covariance.dtype, device=covariance.device)
            terms.append(torch.linalg.matrix_norm(covariance - identity))
    if not terms:
        return None
    return tuner.peft_config[adapter].orth_reg_weight * torch.stack(terms).mean()
