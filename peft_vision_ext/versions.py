"""This package's version, the versions of the libraries we build on (parsed once), and the gates on them."""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

__version__ = "0.1.0"
"""peft-vision-ext's own version (keep it equal to pyproject.toml's)."""

#: Distributions reported by ``peft-vision env`` (import name -> distribution name).
REPORTED_DISTRIBUTIONS: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "peft": "peft",
    "transformers": "transformers",
    "timm": "timm",
    "bitsandbytes": "bitsandbytes",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors",
}


def installed_version(distribution: str) -> Version | None:
    """Version of an installed distribution, or ``None`` when it is not installed.

    Reads the module's ``__version__`` first: the old CI lane puts peft/transformers on ``PYTHONPATH``
    in front of the environment, where package metadata may describe a different copy.
    """
    import importlib

    try:
        module = importlib.import_module(distribution)
        text = getattr(module, "__version__", None)
    except Exception:  # noqa: BLE001 - a broken optional backend is reported as missing
        text = None
    if text is None:
        try:
            text = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None
    return Version(str(text).split("+")[0])


def peft_version() -> Version:
    import peft

    return Version(peft.__version__.split("+")[0])


def transformers_version() -> Version:
    import transformers

    return Version(transformers.__version__.split("+")[0])


def peft_at_least(version: str) -> bool:
    return peft_version() >= Version(version)


def transformers_major() -> int:
    """4 for transformers 4.x module names (``query``/``key``/``value``), 5 for the renamed ones."""
    return transformers_version().major
