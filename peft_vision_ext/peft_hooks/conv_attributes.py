"""Hook ``conv-wrapper-attributes``: PEFT's conv wrappers expose the wrapped conv's geometry (stride, padding, ...)."""

from __future__ import annotations

from ..adalora.layer import AdaLoraConv2d
from ..tuners import SSFLayer

_CONV_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                    "padding_mode")


def _conv_wrapper_classes() -> list[type]:
    import importlib

    classes = []
    for module_name, class_name in (("peft.tuners.lora.layer", "_ConvNd"), ("peft.tuners.loha.layer", "Conv2d"),
                                    ("peft.tuners.lokr.layer", "Conv2d"), ("peft.tuners.ia3.layer", "Conv2d"),
                                    ("peft.tuners.adalora.layer", "SVDConv2d")):
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is not None:
            classes.append(cls)
    return [*classes, AdaLoraConv2d, SSFLayer]  # SSF wraps convs among other layers


def _install_conv_attributes() -> None:
    # Why: transformers' TF-"same"-padding models (MobileNetV1/V2) read `conv.stride` / `conv.kernel_size` of the
    # module they are about to call; PEFT's conv wrappers do not expose them, so the first forward raises
    # AttributeError. Read-only properties forward these attributes to the wrapped conv (classes only gain the
    # ones they lack; nothing PEFT sets on its wrappers is shadowed).
    def forwarded(attribute: str) -> property:
        return property(lambda self: getattr(self.get_base_layer(), attribute))

    for cls in _conv_wrapper_classes():
        for attribute in _CONV_ATTRIBUTES:
            if not hasattr(cls, attribute):
                setattr(cls, attribute, forwarded(attribute))
