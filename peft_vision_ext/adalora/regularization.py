"""AdaLoRA's orthogonal regularisation for models whose loss is computed outside the model.

PEFT adds ``orth_reg_weight * mean ||P P^T - I||_F`` (P: every lora_A, and lora_B transposed) inside
``AdaLoraModel.forward``, and only to an ``outputs.loss`` the model returns. A vision PeftModel without a task type
forwards straight to the base model, and timm/torchvision models return logits: the term is never added.
``AdaLoraCallback`` adds its gradient under Trainer; in a custom loop, one line before ``optimizer.step()``::

    add_orthogonal_regularization_grad(model)   # or: loss = loss + orthogonal_regularization(model)
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.shards import is_dtensor


def orthogonal_regularization(model: nn.Module) -> torch.Tensor | None:
    """``orth_reg_weight * mean_P ||P P^T - I||_F`` over the trainable AdaLoRA adapter's lora_A / lora_B, as
    PEFT's ``AdaLoraModel.forward`` computes it; ``None`` when ``model`` has no AdaLoRA adapter.

    ``model``: a PeftModel (possibly wrapped by DDP / accelerate) or its AdaLoraModel.
    """
    tuner = find_adalora_tuner(model)
    if tuner is None:
        return None
    terms = []
    for name, parameter in _factor_parameters(tuner):
        if is_dtensor(parameter):  # FSDP2: P P^T couples every row; gather the factor (differentiable, adapter-sized)
            parameter = parameter.full_tensor()
        covariance = parameter @ parameter.T if "lora_A" in name else parameter.T @ parameter
        identity = torch.eye(*covariance.shape, dtype=covariance.dtype, device=covariance.device)
        terms.append(torch.linalg.matrix_norm(covariance - identity))
    if not terms:
        return None
    return tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight * torch.stack(terms).mean()


def find_adalora_tuner(model: nn.Module) -> nn.Module | None:
    """The AdaLoraModel of ``model`` (itself, or inside a PeftModel possibly wrapped by DDP/accelerate), or ``None``."""
    from peft.tuners.adalora import AdaLoraModel

    tuner = model
    while not isinstance(tuner, AdaLoraModel) and hasattr(tuner, "module"):  # DDP / accelerate wrappers
        tuner = tuner.module
    if not isinstance(tuner, AdaLoraModel):  # a PeftModel: its tuner (never walk further: transformers models'
        tuner = getattr(tuner, "base_model", None)  # base_model can be the model itself)
    return tuner if isinstance(tuner, AdaLoraModel) else None


def _factor_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The trainable adapter's non-empty lora_A / lora_B parameters (the matrices the regulariser keeps orthogonal)."""
    tuner = find_adalora_tuner(model)
    if tuner is None:
        return []
    adapter = tuner.trainable_adapter_name
    return [(name, p) for name, p in tuner.model.named_parameters()
            if ("lora_A" in name or "lora_B" in name) and adapter in name.split(".") and p.numel()]


def add_orthogonal_regularization_grad(model: nn.Module) -> torch.Tensor | None:
    """Add the gradient of :func:`orthogonal_regularization` to the adapter's ``.grad`` (as if the term had been part of
    the loss just back-propagated); returns the term, or ``None`` without an AdaLoRA adapter or with weight 0.

    For loops that cannot change the loss (``AdaLoraCallback`` runs it before each optimizer step). The gradient is
    computed with ``torch.autograd.grad`` and added by hand, so DDP's gradient hooks do not fire a second time (every
    process computes the same term from the same weights).
    """
    tuner = find_adalora_tuner(model)
    if tuner is None or tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight <= 0:
        return None
    term = orthogonal_regularization(tuner)
    if term is None or not term.requires_grad:
        return None
    parameters = [p for _, p in _factor_parameters(tuner)]
    grads = torch.autograd.grad(term, parameters, allow_unused=True)
    with torch.no_grad():
        for parameter, grad in zip(parameters, grads):
            if grad is None:
                continue
            if parameter.grad is None:
                parameter.grad = grad.to(parameter.dtype)
            else:
                parameter.grad.add_(grad.to(parameter.grad.dtype))
    return term.detach()
