"""Adapters on layers that their parent never calls: the parent's ``F.linear(x, layer.weight, bias)`` is routed
through the adapter wrapper.

timm BEiT, EVA and SwinV2 attention compute ``F.linear(x, self.qkv.weight, qkv_bias)`` themselves (the q and v biases
are kept apart from the Linear), torchvision Swin passes ``self.qkv.weight`` and ``self.proj.weight`` to
``shifted_window_attention``. PEFT wraps those Linear layers, but nothing calls the wrapper: the adapter never acts.

For each such parent (found by one forward, see :func:`peft_vision_ext.compat.probe.observe`), a forward pre-hook
enters a ``TorchFunctionMode`` for the duration of the parent's forward. An ``F.linear`` whose weight is the base
weight of a wrapped child is answered by calling the wrapper, with the wrapped base layer computing exactly the call
the parent made (its input, that weight and the parent's bias). Everything else passes through unchanged. When the
child is not wrapped (merged and unloaded, or never adapted) the mode changes nothing.

Exact for every method whose wrapper computes its output from ``base_layer(x')`` alone, adding a delta or
transforming the input (LoRA, LoHa, LoKr, AdaLoRA, VeRA, FourierFT, OFT): :data:`ROUTABLE_METHODS`, each checked in
the tests (perturbed adapters move the output; merged equals unmerged). Wrappers that also read the layer's own
bias or weight (DoRA's norm, IA3's scaled bias, BOFT) disagree with their own merge where the parent passes a bias
of its own (measured: up to 0.17 on BEiT): those are refused on such targets before injection, and a routed call
whose base layer was never used raises instead of returning a wrong value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .targets import method_name

#: Methods whose wrappers compute through their base layer and add a delta (verified per method in the tests).
ROUTABLE_METHODS = frozenset({"lora", "loha", "lokr", "adalora", "vera", "fourierft", "oft", "ssf"})
#: Routable methods whose merge writes the layer's own bias (SSF's shift): a parent that passes its own bias to
#: F.linear never reads it, so their merge into a routed layer is refused (training and reloading are exact).
BIAS_MERGING_METHODS = frozenset({"ssf"})
#: Where enforce_injection leaves the targets to route for one injection (outside adapter_config.json); the
#: direct-weight-routing hook routes them once PEFT has wrapped them.
ROUTED_ATTRIBUTE = "_peft_vision_ext_routed"
_ROUTES = "_peft_vision_ext_routes"  # parent attribute: child names routed, and the hook handles


def routable(config: Any) -> bool:
    """Whether ``config``'s wrappers can stand in for an ``F.linear`` their parent computes itself."""
    return method_name(config) in ROUTABLE_METHODS and not getattr(config, "use_dora", False)


def linear_arguments(args: tuple, kwargs: dict) -> tuple[Any, Any, Any]:
    """(input, weight, bias) of an ``F.linear`` call, however they were passed."""
    names = ("input", "weight", "bias")
    values = list(args) + [None] * (3 - len(args))
    return tuple(kwargs.get(name, values[i]) for i, name in enumerate(names))


def _wrapper_for(parent: nn.Module, child: str) -> nn.Module | None:
    module = getattr(parent, child, None)
    get_base_layer = getattr(module, "get_base_layer", None)
    return module if callable(get_base_layer) else None


def call_through(wrapper: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``wrapper(x)``, its base layer computing ``F.linear(x', base.weight, bias)`` for whatever ``x'`` it gets."""
    base = wrapper.get_base_layer()
    used = []

    def exact_call(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        used.append(True)
        return F.linear(inputs, base.weight, bias)

    base.forward = exact_call  # an instance attribute, removed below: the class's forward stays untouched
    try:
        result = wrapper(x)
    finally:
        del base.forward
    if not used and not getattr(wrapper, "disable_adapters", False):
        raise RuntimeError(
            f"peft-vision-ext: {type(wrapper).__name__} did not compute through its base layer, so the bias its "
            "parent passes to F.linear would be lost; this method cannot adapt a layer whose parent reads its weight "
            "directly.")
    return result


class _ThroughWrappers(TorchFunctionMode):
    def __init__(self, routes: dict[int, nn.Module]) -> None:
        super().__init__()
        self.routes = routes

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = linear_arguments(args, kwargs)
            wrapper = self.routes.get(id(weight))
            if wrapper is not None:
                return call_through(wrapper, x, bias)
        return func(*args, **kwargs)


class _Routing:
    """The hooks on one parent: enter the mode before its forward, leave it after (also when it raises)."""

    def __init__(self, parent: nn.Module) -> None:
        self.children: set[str] = set()
        self.modes: list[_ThroughWrappers] = []
        self.handles = (parent.register_forward_pre_hook(self.enter),
                        parent.register_forward_hook(self.leave, always_call=True))

    def enter(self, parent: nn.Module, args: tuple) -> None:
        routes = {}
        for child in self.children:
            wrapper = _wrapper_for(parent, child)
            if wrapper is not None:
                routes[id(wrapper.get_base_layer().weight)] = wrapper
        mode = _ThroughWrappers(routes) if routes else None
        if mode is not None:
            mode.__enter__()
        self.modes.append(mode)

    def leave(self, parent: nn.Module, args: tuple, output: Any) -> None:
        mode = self.modes.pop() if self.modes else None
        if mode is not None:
            mode.__exit__(None, None, None)


def route(model: nn.Module, paths: Iterable[str]) -> None:
    """Route the parents of ``paths`` (Linear layers their parents read directly) through adapter wrappers.

    Idempotent: a parent routed before gains the new children only.
    """
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        routing = parent.__dict__.get(_ROUTES)
        if routing is None:
            routing = _Routing(parent)
            parent.__dict__[_ROUTES] = routing
        routing.children.add(child)


def routed_paths(model: nn.Module) -> list[str]:
    """Module paths whose parent's ``F.linear`` is routed through their wrapper."""
    found = []
    for name, module in model.named_modules():
        routing = module.__dict__.get(_ROUTES)
        if routing is not None:
            found += [f"{name}.{child}" if name else child for child in sorted(routing.children)]
    return found
