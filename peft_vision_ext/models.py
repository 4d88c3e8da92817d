"""Build models from a short spec: ``timm:NAME``, ``torchvision:NAME``, ``hf:PATH_OR_MODEL_TYPE``.

Random initialisation only (``pretrained=False``): nothing here touches the network. ``hf:`` takes a local
folder with a ``config.json`` or a transformers ``model_type`` (its default config).
"""

from __future__ import annotations

import os

from torch import nn


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    library, sep, name = spec.partition(":")
    if not sep or not name:
        raise ValueError(f"Model spec {spec!r} must look like timm:NAME, torchvision:NAME or hf:PATH_OR_TYPE.")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    if library == "torchvision":
        import inspect

        import torchvision

        # detection / segmentation builders load ImageNet backbone weights by default: random init means none
        if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
            kwargs["weights_backbone"] = None
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if library in ("hf", "transformers"):
        return _build_transformers(name, num_classes)
    raise ValueError(f"Unknown model library {library!r} in {spec!r}: use timm, torchvision or hf.")


def _build_transformers(name: str, num_classes: int | None) -> nn.Module:
    import transformers

    if os.path.isdir(name):
        config = transformers.AutoConfig.from_pretrained(name)
    else:
        config = transformers.AutoConfig.for_model(name)
    if num_classes is not None:
        config.num_labels = num_classes
    for auto in ("AutoModelForImageClassification", "AutoModelForSemanticSegmentation", "AutoModel"):
        try:
            return getattr(transformers, auto).from_config(config)
        except (ValueError, KeyError):
            continue
    raise ValueError(f"transformers has no vision model class for {name!r}.")
