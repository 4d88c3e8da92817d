"""BatchNorm statistics during adapter training (base-model state that an adapter does not save)."""

from __future__ import annotations

from torch import nn


def freeze_norm_statistics(model: nn.Module, frozen_only: bool = False) -> None:
    """Keep BatchNorm running statistics fixed: they are base-model state that an adapter does not save.

    ``frozen_only``: only BatchNorms whose affine parameters are frozen; those trained in full (inside
    ``modules_to_save``, whose statistics are saved with the adapter) keep updating. Call it after every
    ``model.train()`` (Trainer calls that before each step: do it in ``compute_loss``).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            if not frozen_only or not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
