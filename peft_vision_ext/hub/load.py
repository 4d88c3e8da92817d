"""``load_adapter(path_or_repo_id)``: rebuild the base model an adapter was saved with, then apply the adapter.

A Hub repo id is first fetched as a snapshot of exactly the files this needs (adapter config, safetensors
weights, ``peft_vision_ext.json``); from there, Hub and local folders take the same path. Pickled weights
(``adapter_model.bin``) are never downloaded or read.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from ..card_facts import describe, record_preset
from ..detection import RECIPES
from ..errors import AdapterLoadError, BaseModelMismatchError, name_list
from ..fingerprints import fingerprint
from ..fused.slices import SIDECAR
from ..quantization import quantize
from ..quantization.residual import RESIDUAL_KEY, load_residual_adapter
from .metadata import METADATA_FILE, describe_base

_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", METADATA_FILE, "README.md", SIDECAR)


def load_adapter(
    path_or_repo_id: str,
    *,
    base_model: nn.Module | None = None,
    adapter_name: str = "default",
    is_trainable: bool = False,
    verify_base: bool = True,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Any:
    """The PeftModel saved at ``path_or_repo_id`` (a folder or a Hub repo id), on a rebuilt base model.

    The base is rebuilt from ``peft_vision_ext.json``: timm (``hf-hub:``/``local-dir:`` sources or the
    architecture with its pretrained tag and model arguments), transformers (class + name or path, bitsandbytes
    config included), torchvision (builder + the weights recorded with ``describe(base_weights=...)``) or a recipe of
    ours (:data:`peft_vision_ext.detection.RECIPES`, builder + arguments, offline weights); heads are
    resized to the saved ones and a base quantized with ``peft_vision_ext.quantize`` is quantized the same way. An
    adapter trained with ``get_quantized_peft_model`` (QPiSSA, QOLoRA, QCorDA) is saved for the original
    full-precision base: that base is checked, its residual quantized as in training, and the trained model comes
    back exactly.
    ``base_model`` skips the rebuild (your own model). ``verify_base`` compares every base tensor's fingerprint
    with the saved one and raises :class:`BaseModelMismatchError` on any difference.
    """
    from peft import PeftModel

    folder = _local_folder(path_or_repo_id, revision, token)
    metadata = _read_metadata(folder, path_or_repo_id, base_model is not None)
    model = base_model if base_model is not None else rebuild_base(metadata, path_or_repo_id)
    if verify_base and metadata is not None:
        verify_fingerprint(model, metadata, path_or_repo_id)
    quantization = (metadata or {}).get("quantization") or {}
    if RESIDUAL_KEY in quantization:  # QPiSSA & co: quantize the residual of the original base, as trained
        peft_model = load_residual_adapter(model, folder, quantization, adapter_name, is_trainable)
    else:
        peft_model = PeftModel.from_pretrained(model, folder, adapter_name=adapter_name, is_trainable=is_trainable)
    if metadata is not None:
        preset = metadata.get("adapters", {}).get(adapter_name, {}).get("preset")
        if preset:
            record_preset(peft_model.peft_config[adapter_name], preset)
        describe(peft_model, task=metadata.get("task"), dataset=metadata.get("dataset"),
                 metrics=metadata.get("metrics") or None,
                 base_weights=(metadata.get("base_model") or {}).get("weights"))
    return peft_model


def _local_folder(path_or_repo_id: str, revision: str | None, token: str | bool | None) -> str:
    if os.path.isdir(path_or_repo_id):
        folder = path_or_repo_id
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(path_or_repo_id, revision=revision, token=token,
                                       allow_patterns=list(ADAPTER_FILES))
        except Exception as error:  # noqa: BLE001 - hub errors vary by huggingface_hub version
            raise AdapterLoadError(f"load_adapter({path_or_repo_id!r}): not a local folder, and fetching it from the "
                                   f"Hugging Face Hub failed ({type(error).__name__}: {error}).") from error
    missing = [name for name in ADAPTER_FILES[:2] if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        pickled = os.path.isfile(os.path.join(folder, "adapter_model.bin"))
        raise AdapterLoadError(
            f"load_adapter({path_or_repo_id!r}): {', '.join(missing)} not found. "
            + ("Only safetensors adapters are loaded (pickle files can run code): re-save this adapter with "
               "save_pretrained(..., safe_serialization=True)." if pickled else "Is this a PEFT adapter folder?"))
    return folder


def _read_metadata(folder: str, where: str, have_base: bool) -> dict[str, Any] | None:
    path = os.path.join(folder, METADATA_FILE)
    if os.path.isfile(path):
        with open(path) as handle:
            return json.load(handle)
    if have_base:
        return None
    raise AdapterLoadError(f"load_adapter({where!r}): no {METADATA_FILE}, so the base model cannot be rebuilt (the "
                           "adapter was saved without peft-vision-ext imported). Pass base_model=<the model it was "
                           "trained on>, or load it with peft.PeftModel.from_pretrained(base, path).")


def rebuild_base(metadata: dict[str, Any], where: str = "the adapter") -> nn.Module:
    """The bare base model described by an adapter's ``peft_vision_ext.json`` (heads resized, quantized if it was)."""
    spec = metadata["base_model"]
    library = spec.get("library")
    if library == "timm":
        model = _timm(spec, where)
    elif library == "transformers":
        model = _transformers(spec, where)
    elif library == "torchvision":
        model = _torchvision(spec, where)
    elif library == "peft_vision_ext":
        model = _recipe(spec, where)
    else:
        raise AdapterLoadError(f"load_adapter({where!r}): the base model {describe_base(spec)} is not from timm, "
                               "transformers or torchvision, so it cannot be rebuilt from its name. Pass "
                               "base_model=<an instance with the trained-on weights>.")
    resize_heads(model, metadata.get("heads") or {})
    quantization = metadata.get("quantization")
    # A base quantized after a rewriting init (QPiSSA) is rebuilt in full precision: load_adapter quantizes the
    # residual, which needs the adapter's initial factors.
    if quantization and RESIDUAL_KEY not in quantization:
        kwargs = {k: v for k, v in quantization.items() if v is not None}
        kwargs["compute_dtype"] = getattr(torch, kwargs.get("compute_dtype", "float32"))
        quantize(model, **kwargs)
    return model.eval()


def _timm(spec: dict[str, Any], where: str) -> nn.Module:
    import timm

    if spec.get("source") == "local-dir":
        if not os.path.isdir(spec["local_dir"]):
            raise AdapterLoadError(f"load_adapter({where!r}): the base model was the local timm folder "
                                   f"{spec['local_dir']!r}, which does not exist here. Pass base_model=..., or push "
                                   "the base to the Hub (timm's push_to_hf_hub) and save the adapter again.")
        return timm.create_model(f"local-dir:{spec['local_dir']}", pretrained=True)
    if spec.get("source") == "hf-hub":
        return timm.create_model(f"hf-hub:{spec['hf_hub_id']}", pretrained=True)
    name = spec["architecture"] + (f".{spec['tag']}" if spec.get("tag") else "")
    return _fetching(where, describe_base(spec),
                     lambda: timm.create_model(name, pretrained=True, **(spec.get("model_args") or {})))


def _transformers(spec: dict[str, Any], where: str) -> nn.Module:
    import transformers

    if not spec.get("name_or_path"):
        raise AdapterLoadError(f"load_adapter({where!r}): the transformers base {spec.get('class')} had no name or "
                               "path (built from a config); pass base_model=..., or save it with save_pretrained and "
                               "build it with from_pretrained before training.")
    model_class = getattr(transformers, spec["class"])
    kwargs: dict[str, Any] = {}
    if spec.get("quantization_config"):
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig.from_dict(spec["quantization_config"])
        kwargs["dtype"] = torch.float32  # unquantized head and norms in fp32, as bnb_config() documents
    return _fetching(where, describe_base(spec), lambda: model_class.from_pretrained(spec["name_or_path"], **kwargs))


def _torchvision(spec: dict[str, Any], where: str) -> nn.Module:
    import torchvision

    if not spec.get("builder"):
        raise AdapterLoadError(f"load_adapter({where!r}): no torchvision builder makes this base's architecture "
                               "(built by hand, e.g. a detector on a backbone of your choice, or changed after it was "
                               "built); pass base_model=<the model it was trained on, with its pretrained weights>.")
    if not spec.get("weights"):
        raise AdapterLoadError(
            f"load_adapter({where!r}): the torchvision base {describe_base(spec)} has no recorded weights, and a "
            "random initialisation would not reproduce it. Pass base_model=..., or record the weights before saving: "
            "peft_vision_ext.describe(model, base_weights='IMAGENET1K_V1').")
    weights = torchvision.models.get_weight(spec["weights"])
    kwargs = spec.get("builder_kwargs") or {}
    return _fetching(where, describe_base(spec),
                     lambda: torchvision.models.get_model(spec["builder"], weights=weights, **kwargs))


def _recipe(spec: dict[str, Any], where: str) -> nn.Module:
    builder = RECIPES.get(spec.get("builder") or "")
    if builder is None:
        raise AdapterLoadError(f"load_adapter({where!r}): this peft-vision-ext has no recipe {spec.get('builder')!r} "
                               f"(it knows {', '.join(RECIPES)}); upgrade peft-vision-ext or pass "
                               "base_model=<the model>.")
    return _fetching(where, describe_base(spec), lambda: builder(**(spec.get("builder_kwargs") or {})))


def _fetching(where: str, what: str, build: Any) -> nn.Module:
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as error:
        raise AdapterLoadError(f"load_adapter({where!r}): could not build the base model {what}: "
                               f"{type(error).__name__}: {error}. Offline? Pass base_model=<the model>.") from error


def resize_heads(model: nn.Module, heads: dict[str, dict[str, Any]]) -> None:
    """Give every saved head leaf its saved output size (new heads are trained in full and saved with the adapter).

    Heads tied in the model (transformers 5 Deformable DETR / RT-DETRv2: separate modules sharing one weight) get one
    new module, placed at every path that shared the old weight, so the rebuilt base ties them as the trained one did.
    """
    replaced: dict[int, nn.Module] = {}
    for path, saved in heads.items():
        module = model.get_submodule(path)
        shape = list(module.weight.shape)
        if shape == saved["shape"]:
            continue
        new = replaced.get(id(module.weight)) or _resized(module, saved, path)
        replaced[id(module.weight)] = new
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


def _resized(module: nn.Module, saved: dict[str, Any], path: str) -> nn.Module:
    shape = list(module.weight.shape)
    if isinstance(module, nn.Linear) and saved["type"] == "Linear" and shape[1:] == saved["shape"][1:]:
        new = nn.Linear(module.in_features, saved["shape"][0], bias=module.bias is not None)
    elif isinstance(module, nn.Conv2d) and saved["type"] == "Conv2d" and shape[1:] == saved["shape"][1:]:
        new = nn.Conv2d(module.in_channels, saved["shape"][0], module.kernel_size, module.stride, module.padding,
                        module.dilation, module.groups, module.bias is not None, module.padding_mode)
    elif isinstance(module, nn.ConvTranspose2d) and saved["type"] == "ConvTranspose2d" \
            and shape[0] == saved["shape"][0] and shape[2:] == saved["shape"][2:]:
        # Keypoint R-CNN's keypoint logits: a transposed conv keeps its output channels in dim 1.
        new = nn.ConvTranspose2d(module.in_channels, saved["shape"][1] * module.groups, module.kernel_size,
                                 module.stride, module.padding, module.output_padding, module.groups,
                                 module.bias is not None, module.dilation, module.padding_mode)
    elif isinstance(module, nn.Embedding) and saved["type"] == "Embedding" and shape[1:] == saved["shape"][1:]:
        # RT-DETR's denoising class embedding: one row per class plus a padding row, kept last when it was last.
        rows = saved["shape"][0]
        padding = module.padding_idx
        if padding is not None and (padding == module.num_embeddings - 1 or padding >= rows):
            padding = rows - 1
        new = nn.Embedding(rows, module.embedding_dim, padding_idx=padding, max_norm=module.max_norm,
                           norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq,
                           sparse=module.sparse)
    else:
        raise AdapterLoadError(f"The rebuilt base's head {path} ({type(module).__name__} {shape}) cannot take the "
                               f"saved head ({saved['type']} {saved['shape']}).")
    return new.to(module.weight.device)


def verify_fingerprint(model: nn.Module, metadata: dict[str, Any], where: str) -> None:
    """Raise :class:`BaseModelMismatchError` unless every base tensor equals the one the adapter was trained on."""
    saved = metadata.get("base_fingerprint")
    if not saved:
        return
    current = fingerprint(model.state_dict(), metadata.get("modules_to_save") or [])
    differing = sorted(name for name in saved.keys() & current.keys() if saved[name] != current[name])
    missing, unexpected = sorted(saved.keys() - current.keys()), sorted(current.keys() - saved.keys())
    problems = differing + missing + unexpected
    if not problems:
        return
    groups = (("different values", differing), ("missing", missing), ("unexpected", unexpected))
    detail = "; ".join(f"{label}: {name_list(names)}" for label, names in groups if names)
    hint = ""
    if all(name.rpartition(".")[2] in _NORM_STATISTICS for name in differing) and not missing + unexpected:
        hint = (" Only BatchNorm running statistics differ: training in train mode updated them, and an adapter does "
                "not save them. Keep norm layers in eval mode while training (peft_vision_ext.train."
                "freeze_norm_statistics), or put them in modules_to_save.")
    raise BaseModelMismatchError(
        f"load_adapter({where!r}): the base model is not the one the adapter was trained on "
        f"({describe_base(metadata['base_model'])}); {detail}. Its outputs would differ from the trained model's."
        f"{hint} Pass base_model=<the exact model it was trained on>, or verify_base=False to load it anyway.",
        problems)

