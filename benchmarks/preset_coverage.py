"""Preset coverage over timm, transformers and torchvision (a benchmark script, not a unit test).

Four groups of cases, random init, nothing downloaded:

- ``timm``: every timm architecture module (the smallest-sounding model of each);
- ``transformers``: every transformers image-classification / semantic-segmentation model type (default config, depth
  cut to 2 layers);
- ``transformers-tasks``: every model type of the transformers object-detection, universal / instance segmentation,
  depth-estimation, zero-shot image classification, zero-shot object detection, video-classification and
  mask-generation auto mappings (default config made offline-buildable: timm / pretrained backbones replaced by the
  transformers ``backbone_config`` default, a few per-type overrides in ``HF_TASK_OVERRIDES``; depth cut to 2 and
  inputs to a 16 x 16 patch grid / 224 px where the config allows, the default size where that fails);
- ``torchvision``: every torchvision detection and segmentation builder (``weights=None``, ``weights_backbone=None``,
  3 classes, small inputs; detectors in training mode on synthetic targets).

``timm`` and ``transformers``: the default LoRA preset must be non-empty and a forward + backward pass through the
LoRA model must work. ``transformers-tasks`` and ``torchvision`` are checked harder: besides that, every default
target module must be called by the forward (forward hooks on ``targeted_module_names``), every trainable parameter
must get a gradient (so every head in ``modules_to_save`` is trained), and every parameter whose shape depends on the
class count (a head re-initialised for new classes, found by building the model with two class counts) must be
trained in full. A model that cannot be built or run without the plugin counts as "not buildable" (with the reason),
not as a failure. Prints the covered fraction per group and every case not covered; writes JSON with --json.

    python benchmarks/preset_coverage.py [--groups timm,transformers,transformers-tasks,torchvision] [--limit N]
                                         [--match REGEX] [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: every case is random init from a config

import peft  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import peft_vision_ext  # noqa: F401,E402 - installs the hooks
from peft_vision_ext.presets import resolve_default  # noqa: E402

SIZE_ORDER = ["atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "mini", "small", "s", "b0", "050", "100", "base"]


def _size_rank(name: str) -> tuple[int, int, str]:
    tokens = re.split(r"[_.\-]", name)
    rank = min((i for t in tokens for i, size in enumerate(SIZE_ORDER) if re.fullmatch(rf"{size}\d*", t)),
               default=len(SIZE_ORDER))
    return rank, len(name), name


def timm_cases() -> dict[str, callable]:
    import timm
    from timm.models import _registry

    by_module: dict[str, list[str]] = {}
    for name in timm.list_models():
        by_module.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    cases = {}
    for module, names in sorted(by_module.items()):
        name = min(names, key=_size_rank)
        cases[f"timm:{module}:{name}"] = (lambda n=name: _timm_model(n))
    return cases


def _timm_model(name: str):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return model, torch.randn(2, *size)  # batch 2: heads with BatchNorm1d need it in training mode


def transformers_cases() -> dict[str, callable]:
    from transformers.models.auto import modeling_auto as auto

    cases = {}
    for task, names in (("cls", auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES),
                        ("seg", auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)):
        for model_type, class_name in sorted(names.items()):
            if isinstance(class_name, (list, tuple)):
                class_name = class_name[0]
            if _main_input(class_name) != "pixel_values":
                continue  # token-input models (ImageGPT, ShieldGemma2): not image backbones for presets
            cases[f"hf:{task}:{model_type}"] = (lambda t=model_type, c=class_name, shrink=True: _hf_model(t, c, shrink))
    return cases


def _main_input(class_name: str) -> str:
    import transformers

    try:
        return getattr(getattr(transformers, class_name), "main_input_name", "pixel_values")
    except (ImportError, AttributeError):
        return "pixel_values"  # let the case itself report the import problem


def _shrink(config) -> None:
    if getattr(config, "hidden_sizes", None) is not None:
        return  # staged CNN-style configs tie depth to other fields: keep them as they are
    for attr in ("num_hidden_layers", "num_layers", "encoder_layers"):
        if isinstance(getattr(config, attr, None), int) and getattr(config, attr) > 2:
            setattr(config, attr, 2)
    for sub in ("backbone_config", "vision_config", "text_config"):
        if getattr(config, sub, None) is not None:
            _shrink(getattr(config, sub))


def _hf_model(model_type: str, class_name: str, shrink: bool = True):
    import transformers

    # BEiT's segmentation head needs four distinct backbone layers (its default config names none).
    extra = {"out_indices": [1, 2, 3, 4], "num_hidden_layers": 4} if class_name == "BeitForSemanticSegmentation" else {}
    config = transformers.AutoConfig.for_model(model_type, **extra)
    if shrink and not extra:
        _shrink(config)
    config.num_labels = 10
    model = getattr(transformers, class_name)(config)
    if model_type == "siglip2":  # NaFlex: patchified pixels plus a mask and the patch grid
        vision = config.vision_config
        patches, grid = vision.num_patches, int(vision.num_patches ** 0.5)
        return model, {"pixel_values": torch.randn(2, patches, vision.num_channels * vision.patch_size ** 2),
                       "pixel_attention_mask": torch.ones(2, patches, dtype=torch.long),
                       "spatial_shapes": torch.tensor([[grid, grid]] * 2)}
    size = getattr(config, "image_size", None) or getattr(getattr(config, "vision_config", None), "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    channels = getattr(config, "num_channels", 3)
    return model, torch.randn(2, channels, size, size)


def _main_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return _main_tensor(output[0])
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(type(output).__name__)


class NotBuildable(Exception):
    """The model cannot be built or run from its default config here (not a preset failure)."""


def _first_line(error: BaseException, limit: int = 140) -> str:
    message = str(error).strip().splitlines()[0][:limit] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}"


def check(build) -> str:
    try:
        model, x = build()
    except Exception as error:
        raise NotBuildable(_first_line(error)) from None
    resolution = resolve_default(model, "lora")
    if not resolution.target_modules:
        return "empty preset"
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4))
    peft_model.train()
    output = peft_model(**x) if isinstance(x, dict) else peft_model(x)
    _main_tensor(output).float().mean().backward()
    if not any(p.grad is not None for p in peft_model.parameters() if p.requires_grad):
        return "no gradient reached the adapter"
    return f"ok ({resolution.family}, {resolution.preset}, {len(resolution.target_modules)} modules)"


# ===================================================================================================================
# The stricter check of the task groups (transformers task models, torchvision detection / segmentation)
# ===================================================================================================================
BATCH = 2
NUM_CLASSES = 3  # the class count every task case is built with
OTHER_NUM_CLASSES = 5  # a second class count: the parameters whose shape changes are the class-specific heads


@dataclass
class TaskCase:
    """One model of a task group.

    ``build(num_classes)`` returns a random-init model (``build(num_classes, level)`` where ``levels`` > 1: level
    ``levels - 1`` the smallest, 0 the default config); ``inputs(model, labels)`` the forward inputs (with training
    targets when ``labels`` and the model takes them); ``run(model, inputs)`` the forward output.
    """

    build: Callable[..., nn.Module]
    inputs: Callable[[nn.Module, bool], Any]
    run: Callable[[nn.Module, Any], Any] = lambda model, inputs: model(**inputs)
    labels: bool = False  # try a training forward with targets first (falls back to plain inputs)
    levels: int = 1  # size levels build() takes: a model that cannot be built or run at one gets the next larger
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # the last check's findings, in full (for the JSON)


def _float_tensors(value: Any, seen: set[int] | None = None):
    """Every floating-point tensor in a (nested) model output."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):  # ModelOutput is an OrderedDict
        for item in value.values():
            yield from _float_tensors(item, seen)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _float_tensors(item, seen)


def objective(output: Any) -> torch.Tensor:
    """Sum of the means of every float output that requires grad (losses included): every head the forward uses
    moves it, whichever output it feeds."""
    terms = [t.float().mean() for t in _float_tensors(output) if t.requires_grad]
    if not terms:
        raise RuntimeError("the forward returned no tensor that requires grad")
    return torch.stack(terms).sum()


def _class_dependent(case: TaskCase, model: nn.Module, level: int) -> list[str] | None:
    """Parameters whose shape depends on the class count (heads re-initialised for new classes); None if unknown."""
    try:
        with torch.device("meta"):
            other = _build(case, level, OTHER_NUM_CLASSES)
    except Exception:  # noqa: BLE001 - some builders do not run on the meta device
        try:
            other = _build(case, level, OTHER_NUM_CLASSES)
        except Exception:  # noqa: BLE001
            return None
    shapes = {name: p.shape for name, p in other.named_parameters(remove_duplicate=False)}
    return [name for name, p in model.named_parameters(remove_duplicate=False)
            if name in shapes and shapes[name] != p.shape]


_WRAPPER_SEGMENTS = re.compile(r"(^base_model\.model\.|\.modules_to_save\.default(?=\.)|\.base_layer(?=\.))")


def _base_name(peft_name: str) -> str:
    """A PEFT model's parameter name -> the base model's name of the weight it trains (or wraps)."""
    return _WRAPPER_SEGMENTS.sub("", peft_name)


def _short(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _owner(name: str) -> str:
    """Module path of a parameter (LoRA factors: the adapted layer)."""
    name = re.sub(r"^base_model\.model\.", "", name)
    adapted = re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\..*$", "", name)
    return adapted if adapted != name else name.rsplit(".", 1)[0]


def _attempt(case: TaskCase, peft_model: nn.Module, inputs: Any, calls: dict[str, int]) -> None:
    for name in calls:
        calls[name] = 0
    for p in peft_model.parameters():
        p.grad = None
    objective(case.run(peft_model, inputs)).backward()


def _build(case: TaskCase, level: int, num_classes: int = NUM_CLASSES) -> nn.Module:
    return case.build(num_classes, level) if case.levels > 1 else case.build(num_classes)


def _where(error: BaseException) -> str:
    """Where a build error was raised: the innermost frame of the model's library (file:line and the code)."""
    import linecache

    frames = [f for f in traceback.extract_tb(error.__traceback__) if "site-packages" in f.filename]
    frames = [f for f in frames if f"{os.sep}torch{os.sep}" not in f.filename] or frames  # the model, not torch.nn
    if not frames:
        return ""
    frame = frames[-1]
    code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f" at {os.path.basename(frame.filename)}:{frame.lineno} `{code[:90]}`"


def _plain_step(case: TaskCase, level: int, labels: bool, inputs: Any = None) -> tuple[nn.Module | None,
                                                                                     Exception | None]:
    """One training-mode forward + backward of a fresh build without the plugin (seed 0), on ``inputs`` or the case's
    own: the model after backward, or the error."""
    try:
        torch.manual_seed(0)
        model = _build(case, level)
        model.train()
        objective(case.run(model, case.inputs(model, labels) if inputs is None else inputs)).backward()
    except Exception as error:  # noqa: BLE001
        return None, error
    return model, None


def _unused_by_base(case: TaskCase, level: int, inputs: Any) -> set[str]:
    """Parameters the plain model (everything trainable) gets no gradient for on these inputs: the forward does not
    use them in this mode (RT-DETR's denoising class embedding without training targets, per-layer class heads that
    feed only the training losses). Training them or not changes nothing here, so the checks below skip them. Empty
    when the plain model fails (then nothing is exempt)."""
    model, _ = _plain_step(case, level, case.labels, inputs)
    if model is None:
        return set()
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.grad is None}


def strict_check(case: TaskCase, level: int = 0) -> str:
    case.notes.clear()
    case.details.clear()
    torch.manual_seed(0)
    try:
        model = _build(case, level)
        model.train()
    except Exception as error:
        raise NotBuildable(_first_line(error) + _where(error)) from None
    class_params = _class_dependent(case, model, level)
    resolution = resolve_default(model, "lora")
    case.details.update(family=resolution.family, preset=resolution.preset, targets=len(resolution.target_modules),
                        modules_to_save=list(resolution.modules_to_save),
                        class_specific=None if class_params is None else sorted({n.rsplit(".", 1)[0]
                                                                                 for n in class_params}))
    if not resolution.target_modules:
        return "empty preset"
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4))
    peft_model.train()
    base = peft_model.base_model.model
    targeted = list(peft_model.base_model.targeted_module_names)
    calls = dict.fromkeys(targeted, 0)
    for name in targeted:
        base.get_submodule(name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    mode = "training targets" if case.labels else "inference inputs"
    try:
        inputs = case.inputs(base, case.labels)
    except Exception as error:
        raise NotBuildable(f"inputs: {_first_line(error)}") from None
    try:
        _attempt(case, peft_model, inputs, calls)
    except Exception:
        base_error = _plain_step(case, level, case.labels)[1]
        if base_error is None:
            raise  # trains without the plugin: a preset / plugin failure
        if not case.labels:
            raise NotBuildable(f"fails without the plugin too: {_first_line(base_error)}{_where(base_error)}") from None
        # the model's own training path fails with these targets: check the inference forward instead
        case.notes.append(f"training targets fail without the plugin ({_first_line(base_error, 80)}): "
                          "inference inputs")
        mode = "inference inputs"
        inputs = case.inputs(base, False)
        try:
            _attempt(case, peft_model, inputs, calls)
        except Exception:
            base_error = _plain_step(case, level, False)[1]
            if base_error is not None:
                raise NotBuildable(f"fails without the plugin too: {_first_line(base_error)}{_where(base_error)}"
                                   ) from None
            raise
    problems = []
    trainable = [(n, p) for n, p in peft_model.named_parameters(remove_duplicate=False) if p.requires_grad]
    # A target whose parent computes F.linear with its weight is routed, not called (direct-weight-routing hook):
    # its adapter still gets a gradient. Only targets neither called nor reached count.
    reached = {_owner(n) for n, p in trainable if p.grad is not None}
    never = [name for name, count in calls.items() if count == 0 and name not in reached]
    case.details["inputs"] = mode
    if never:
        problems.append(f"{len(never)}/{len(targeted)} targets never called: {_short(never)}")
        case.details["targets_never_called"] = never
    unused = _unused_by_base(case, level, inputs)
    no_grad = [n for n, p in trainable if p.grad is None and _base_name(n) not in unused]
    if no_grad:
        owners = sorted({_owner(n) for n in no_grad})
        problems.append(f"{len(no_grad)}/{len(trainable)} trainable parameters get no gradient, in: {_short(owners)}")
        case.details["trainable_without_gradient"] = owners
    if class_params:
        trained = {_base_name(n) for n, _ in trainable}
        frozen = [n for n in class_params if n not in trained and n not in unused]
        if frozen:
            owners = sorted({n.rsplit(".", 1)[0] for n in frozen})
            problems.append(f"class-specific head left frozen: {_short(owners)}")
            case.details["class_heads_frozen"] = owners
    heads = resolution.modules_to_save
    summary = (f"{resolution.family}, {resolution.preset}, {len(resolution.target_modules)} modules, "
               f"heads: {', '.join(heads) if heads else 'none'}; {mode}")
    if class_params is None:
        summary += "; class-specific heads not checked (second build failed)"
    if problems:
        return "FAIL " + "; ".join(problems) + f" ({summary})"
    return f"ok ({summary})"


# --------------------------------------------------------------------------------------------------- transformers
#: (case prefix, auto mapping); the mappings this transformers has are used, a model class once per model type
HF_TASK_MAPPINGS = (
    ("det", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES"),
    ("useg", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"),
    ("iseg", "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES"),
    ("depth", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES"),
    ("zs-cls", "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("zs-det", "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES"),
    ("video", "MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES"),
    ("maskgen", "MODEL_FOR_MASK_GENERATION_MAPPING_NAMES"),
)
#: tasks whose models take training targets generically (boxes / masks); the others run plain inference inputs
_LABEL_TASKS = ("det", "useg", "iseg")

#: Config keyword arguments that make a default config buildable offline: CNN backbones from the transformers
#: ``backbone_config`` default (never timm, never pretrained weights).
_NO_DOWNLOAD = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None)

#: Per model type (or model class) config overrides, only where the default config cannot be built or run here, or
#: would take minutes on 2 CPU cores. Top-level values go to the config class, nested dicts update sub-configs.
HF_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    # DETR's mask head reads four backbone stages; only the timm default lists them (the transformers ResNet default
    # returns stage4 alone).
    "DetrForSegmentation": {"backbone_config": {"out_indices": [1, 2, 3, 4], "out_features": None}},
    # Retrieval checkpoints feed text through the Q-Former (its text-input layers exist only with this flag); the
    # default config, made for the captioning models, leaves them out and the forward fails.
    "Blip2ForImageTextRetrieval": {"qformer_config": {"use_qformer_text_input": True}},
    # The default config has no projector scales, so no feature level at all reaches the encoder (torch.cat([])).
    "lw_detr": {"projector_scale_factors": [1.0]},
    # The default config has no per-class score thresholds and reading order, and the forward reads both.
    "pp_doclayout_v2": {"class_thresholds": [0.5] * NUM_CLASSES, "class_order": list(range(NUM_CLASSES))},
    # The LayerNorms after the vision backbone expect timm's channels-last Swin features; the transformers Swin
    # backbone (the offline default) returns channels-first maps. Without them the model runs.
    "omdet-turbo": {"apply_layernorm_after_vision_backbone": False},
    # Runtime: the default 384-px tiles need 1536-px inputs (35 tiles per image through three ViTs, and a decoder
    # that upsamples to the input size); 28-px tiles keep the same structure at 112 px (the three encoders' image size
    # must equal the tile size). The decoder reads the patch encoder's layers 11 and 5: with the depth cut to 2, its
    # layers 1 and 0.
    "depth_pro": {"patch_size": 28, "intermediate_hook_ids": [1, 0],
                  **{f"{part}_model_config": {"image_size": 28} for part in ("image", "patch", "fov")}},
}

_LAYER_COUNT = re.compile(r"^(num_(\w+_)?layers|(\w+_)?num_(\w+_)?layers|(encoder|decoder)_layers)$")
_STAGE_DEPTHS = re.compile(r"^(depths|stage_num_blocks)$")
#: keys holding sizes in pixels or in feature-map cells (scaled together when the input resolution is cut)
_SIZE_KEYS = ("image_size", "crop_size", "backbone_feature_sizes", "image_embedding_size",
              "memory_attention_rope_feat_sizes", "low_res_mask_size")
_FRAME_KEYS = ("num_frames", "frames_per_clip")
_TIMM = ("timm_backbone", "timm_wrapper")


def _update(config: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _update(config[key], value)
        else:
            config[key] = value


def _shrink_dict(config: dict) -> None:
    """Cut a config dict (and its sub-config dicts) to at most 2 layers per stack, where the config allows.

    Layer counts > 2 become 2; staged CNN / Swin configs get at most 2 blocks per stage (``num_layers`` is their
    stage count there, kept); a stack whose layers are read by index (``out_indices``, DPT's
    ``backbone_out_indices``) keeps as many layers as it reads, the indices moved to its last layers, and one whose
    last ``num_blocks`` layers are special (EoMT) keeps those; windowed / global attention index lists keep the
    indices that still exist.
    """
    for value in config.values():
        if isinstance(value, dict) and "model_type" in value:
            _shrink_dict(value)
    staged = isinstance(config.get("depths"), (list, tuple))
    for key, value in list(config.items()):
        if staged and _STAGE_DEPTHS.match(key) and isinstance(value, (list, tuple)):
            config[key] = [min(int(v), 2) for v in value]
    layers = config.get("num_hidden_layers")
    for key, value in list(config.items()):
        if staged and key == "num_layers":
            continue
        if _LAYER_COUNT.match(key) and isinstance(value, int) and not isinstance(value, bool) and value > 2:
            config[key] = 2
    if staged or not isinstance(layers, int) or layers <= 2:
        return
    read = [config[k] for k in ("out_indices", "backbone_out_indices") if isinstance(config.get(k), (list, tuple))]
    depth = max([2] + [len(set(r)) for r in read])
    if isinstance(config.get("num_blocks"), int):
        depth = max(depth, min(config["num_blocks"], layers))
    config["num_hidden_layers"] = depth
    if isinstance(config.get("out_indices"), (list, tuple)):  # 1-based stage indices (0 is the stem)
        count = len(set(config["out_indices"]))
        config["out_indices"] = list(range(depth - count + 1, depth + 1))
        config.pop("out_features", None)
        config.pop("stage_names", None)
    if isinstance(config.get("backbone_out_indices"), (list, tuple)):  # 0-based layer indices
        count = len(set(config["backbone_out_indices"]))
        config["backbone_out_indices"] = list(range(depth - count, depth))
    for key, value in list(config.items()):
        if re.search(r"(attn|attention|block)_(indexes|indices|blocks)$", key) and isinstance(value, (list, tuple)):
            config[key] = [v for v in value if isinstance(v, int) and v < depth]


def _patch(config: dict) -> int | None:
    patch = config.get("patch_size")
    if patch is None and isinstance(config.get("tubelet_size"), (list, tuple)):
        patch = config["tubelet_size"][-1]  # ViViT / VideoPrism: (frames, height, width) tubelets
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return patch if isinstance(patch, int) else None


def _reference_size(config: dict) -> tuple[int, int | None] | None:
    """(image side, patch size) of the first (sub-)config that has an image size, preferring one with a patch."""
    found = []
    for sub in [config] + [value for _, value in _sub_dicts(config)]:
        size = next((sub[k] for k in ("image_size", "crop_size") if sub.get(k) is not None), None)
        if isinstance(size, (list, tuple)):
            size = max(size)
        if isinstance(size, int):
            found.append((size, _patch(sub)))
    return next((item for item in found if item[1]), found[0] if found else None)


def _round_to(value: Any, step: int) -> Any:
    if isinstance(value, (list, tuple)):
        return [_round_to(v, step) for v in value]
    return max(step, step * round(value / step)) if isinstance(value, int) else value


def _cut_resolution(config: dict) -> None:
    """Smaller inputs: every size of the config scaled by one ratio so that ViT-style models see a 16 x 16 patch grid
    (at least 224 px) and other models at most 224 px; videos get at most 4 frames, detectors at most 100 queries."""
    reference = _reference_size(config)
    ratio = None
    if reference is not None:
        size, patch = reference
        target = patch * 16 * -(-224 // (patch * 16)) if patch else 224
        if size > target:
            ratio = target / size

    def scale(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [scale(v) for v in value]
        return max(1, round(value * ratio)) if isinstance(value, int) and not isinstance(value, bool) else value

    for sub in [config] + [value for _, value in _sub_dicts(config)]:
        for key in _SIZE_KEYS:
            if ratio is not None and sub.get(key) is not None:
                sub[key] = scale(sub[key])
        patch = _patch(sub)
        for key in ("image_size", "crop_size"):  # whole patches
            if ratio is not None and patch and sub.get(key) is not None:
                sub[key] = _round_to(sub[key], patch)
        for key in _FRAME_KEYS:
            if isinstance(sub.get(key), int) and sub[key] > 4:
                sub[key] = 4
        # two-stage detectors pick their queries among the feature cells: at most 100, which a 16 x 16 grid holds
        if isinstance(sub.get("num_queries"), int) and sub["num_queries"] > 100:
            sub["num_queries"] = 100


def _hf_task_config(model_type: str, class_name: str, num_labels: int, level: int):
    """The model type's default config, offline-buildable (see _NO_DOWNLOAD, HF_TASK_OVERRIDES); ``level`` 2: depth
    and input resolution cut (_shrink_dict, _cut_resolution), 1: depth cut only, 0: default depth and resolution."""
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    overrides = {**HF_TASK_OVERRIDES.get(model_type, {}), **HF_TASK_OVERRIDES.get(class_name, {})}
    flat = {k: v for k, v in overrides.items() if not isinstance(v, dict)}
    try:  # through the constructor: attributes derived from overridden ones are recomputed (to_dict keeps them)
        data = config_class(**_NO_DOWNLOAD, **flat).to_dict()
    except Exception:  # noqa: BLE001 - validated together with a sub-config override (DepthPro): set both below
        data = config_class(**_NO_DOWNLOAD).to_dict()
    for key in _NO_DOWNLOAD:
        data.pop(key, None)
    # sub-configs with a timm backbone of their own (MaskFormer's DETR decoder config): their transformers default
    for _, sub in [("", data)] + list(_sub_dicts(data)):
        backbone = sub.get("backbone_config")
        if isinstance(backbone, dict) and backbone.get("model_type") in _TIMM and sub is not data:
            default = CONFIG_MAPPING[sub["model_type"]](**_NO_DOWNLOAD).backbone_config
            if default is not None and default.model_type not in _TIMM:
                sub["backbone_config"] = default.to_dict()
    _update(data, overrides)
    if level >= 1:
        _shrink_dict(data)
    if level >= 2:
        _cut_resolution(data)
    timm = [(key, value["model_type"]) for key, value in _sub_dicts(data) if value.get("model_type") in _TIMM]
    if timm:
        raise RuntimeError(f"{timm[0][0]} is a timm model ({timm[0][1]}) and the config has no transformers "
                           "default backbone")
    data["num_labels"] = num_labels
    data.pop("id2label", None)
    data.pop("label2id", None)
    return config_class.from_dict(data)


def _sub_dicts(data: dict, path: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and "model_type" in value:
            yield f"{path}{key}", value
            yield from _sub_dicts(value, f"{path}{key}.")


def _configs(config) -> list:
    """``config`` and its sub-configs, depth first."""
    from transformers import PretrainedConfig

    found = [config]
    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            found += _configs(value)
    return found


def _config_value(config, *names: str):
    for sub in _configs(config):
        for name in names:
            value = getattr(sub, name, None)
            if value is not None:
                return value
    return None


def _image_size(config) -> tuple[int, int]:
    """(height, width) of the input images: the config's image size."""
    ratios = getattr(config, "scaled_images_ratios", None)
    if ratios and isinstance(getattr(config, "patch_size", None), int):  # DepthPro: tiles of the smallest scale
        side = round(config.patch_size / min(ratios))
        return side, side
    size = _config_value(config, "image_size", "crop_size")
    if isinstance(size, dict):
        size = [size.get("height"), size.get("width")]
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    side = int(size) if size else 128  # CNN backbones read any size: 128 px keeps four stride-32 levels
    return side, side


def _token_ids(vocab: int | None, shape: tuple[int, ...]) -> torch.Tensor:
    high = min(int(vocab or 100), 100)
    ids = torch.randint(3, high, shape)  # above pad / bos / eos-like ids of small vocabularies
    if vocab and vocab > 102 and shape[-1] > 2:
        ids[..., 0], ids[..., -1] = 101, 102  # BERT-style [CLS] ... [SEP] (Grounding DINO splits phrases there)
    return ids


def _hf_inputs(model: nn.Module, task: str, labels: bool) -> dict:
    config = model.config
    params = inspect.signature(model.forward).parameters
    height, width = _image_size(config)
    channels = _config_value(config, "num_channels") or 3
    inputs: dict[str, Any] = {}
    video_key = next((k for k in ("pixel_values_videos",) if k in params), None)
    if task == "video" or (video_key and "pixel_values" not in params):
        frames = int(_config_value(config, "num_frames", "frames_per_clip") or 2)  # no fixed count: 2 frames
        inputs[video_key or "pixel_values"] = torch.randn(BATCH, frames, channels, height, width)
    elif getattr(config, "model_type", "") == "siglip2":  # NaFlex: patchified pixels, a mask and the patch grid
        vision = config.vision_config
        patches, grid = vision.num_patches, int(vision.num_patches ** 0.5)
        inputs.update(pixel_values=torch.randn(BATCH, patches, vision.num_channels * vision.patch_size ** 2),
                      pixel_attention_mask=torch.ones(BATCH, patches, dtype=torch.long),
                      spatial_shapes=torch.tensor([[grid, grid]] * BATCH))
    else:
        inputs["pixel_values"] = torch.randn(BATCH, channels, height, width)
    text = getattr(config, "text_config", None)
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    seq = min(8, int(_config_value(text, "max_position_embeddings") or 8) if text is not None else 8)
    for name, param in params.items():
        required = param.default is inspect.Parameter.empty
        if name == "input_ids" or (name.endswith("input_ids") and required):
            inputs[name] = _token_ids(vocab, (BATCH, seq))
        elif name == "task_inputs":  # OneFormer: the task prompt ("the task is semantic") as tokens
            inputs[name] = _token_ids(config.text_encoder_vocab_size, (BATCH, config.task_seq_len))
        elif name == "classes_structure":  # OmDet-Turbo: how many of the class prompts belong to each image
            inputs[name] = torch.full((BATCH,), NUM_CLASSES, dtype=torch.long)
    for name in list(params):  # OmDet-Turbo: classes_input_ids holds every image's class prompts in one batch
        if name == "classes_input_ids" and "classes_structure" in inputs:
            inputs[name] = _token_ids(vocab, (BATCH * NUM_CLASSES, seq))
    for name in params:
        if name.endswith("attention_mask") and name.replace("attention_mask", "input_ids") in inputs:
            ids = inputs[name.replace("attention_mask", "input_ids")]
            inputs[name] = torch.ones_like(ids)
        elif name == "token_type_ids" and "input_ids" in inputs:
            inputs[name] = torch.zeros_like(inputs["input_ids"])
    if "input_points" in params:  # promptable segmentation: one point per image
        inputs["input_points"] = torch.rand(BATCH, 1, 1, 2) * torch.tensor([width, height])
        inputs["input_labels"] = torch.ones(BATCH, 1, 1, dtype=torch.long)
        if "multimask_output" in params:
            inputs["multimask_output"] = False
    if labels:
        masks = torch.zeros(2, height, width)
        masks[0, : height // 2], masks[1, height // 2:] = 1, 1
        boxes = torch.tensor([[0.5, 0.25, 1.0, 0.5], [0.5, 0.75, 1.0, 0.5]])  # (cx, cy, w, h), the masks' boxes
        classes = torch.tensor([0, NUM_CLASSES - 1])
        if "labels" in params:
            target = {"class_labels": classes, "boxes": boxes}
            if task in ("useg", "iseg"):
                target["masks"] = masks
            inputs["labels"] = [dict(target) for _ in range(BATCH)]
        if "mask_labels" in params:
            inputs["mask_labels"] = [masks.clone() for _ in range(BATCH)]
            inputs["class_labels"] = [classes.clone() for _ in range(BATCH)]
    return inputs


def _hf_task_case(task: str, model_type: str, class_name: str) -> TaskCase:
    def build(num_labels: int = NUM_CLASSES, level: int = 2) -> nn.Module:
        import transformers

        return getattr(transformers, class_name)(_hf_task_config(model_type, class_name, num_labels, level))

    return TaskCase(build=build, inputs=lambda model, labels: _hf_inputs(model, task, labels),
                    labels=task in _LABEL_TASKS, levels=3)


def hf_task_cases() -> dict[str, TaskCase]:
    from transformers.models.auto import modeling_auto as auto

    cases: dict[str, TaskCase] = {}
    seen: set[tuple[str, str]] = set()
    for task, mapping in HF_TASK_MAPPINGS:
        for model_type, class_name in sorted(getattr(auto, mapping, {}).items()):
            if isinstance(class_name, (list, tuple)):
                class_name = class_name[0]
            if (model_type, class_name) in seen:
                continue  # MaskFormer: universal and instance segmentation name the same class
            seen.add((model_type, class_name))
            cases[f"hf:{task}:{model_type}"] = _hf_task_case(task, model_type, class_name)
    return cases


# --------------------------------------------------------------------------------------------------- torchvision
_TV_SIZE = 64  # detectors: min_size / max_size where the builder takes them; segmentation: input side
#: R-CNNs: fewer RPN proposals and sampled RoIs than the 2000 / 512 defaults (runtime; every head still trains)
_RCNN_SAMPLING = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, box_batch_size_per_image=64)


def _tv_build(name: str, kind: str, extra: dict) -> Callable[..., nn.Module]:
    def build(num_classes: int = NUM_CLASSES) -> nn.Module:
        from torchvision import models

        kwargs = dict(weights=None, weights_backbone=None, num_classes=num_classes, **extra)
        if kind == "det":
            try:
                return models.get_model(name, min_size=_TV_SIZE, max_size=_TV_SIZE * 3 // 2, **kwargs)
            except TypeError:  # SSD: fixed input size
                pass
        return models.get_model(name, **kwargs)

    return build


def _tv_det_inputs(model: nn.Module, labels: bool) -> tuple[list[torch.Tensor], list[dict] | None]:
    height, width = _TV_SIZE, _TV_SIZE * 5 // 4
    images = [torch.rand(3, height, width) for _ in range(BATCH)]
    if not labels:
        return images, None
    roi_heads = getattr(model, "roi_heads", None)
    targets = []
    for _ in range(BATCH):
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 60.0]])
        target = {"boxes": boxes, "labels": torch.tensor([1, NUM_CLASSES - 1])}
        if getattr(roi_heads, "mask_predictor", None) is not None:
            masks = torch.zeros(2, height, width, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            target["masks"] = masks
        if getattr(roi_heads, "keypoint_predictor", None) is not None:
            count = roi_heads.keypoint_predictor.kps_score_lowres.out_channels
            points = torch.rand(2, count, 2) * 0.8 + 0.1
            xy = boxes[:, None, :2] + points * (boxes[:, None, 2:] - boxes[:, None, :2])
            target["keypoints"] = torch.cat([xy, torch.ones(2, count, 1)], dim=-1)
        targets.append(target)
    return images, targets


def torchvision_cases() -> dict[str, TaskCase]:
    from torchvision import models

    cases: dict[str, TaskCase] = {}
    for name in models.list_models(module=models.detection):
        cases[f"tv:det:{name}"] = TaskCase(
            build=_tv_build(name, "det", _RCNN_SAMPLING if "rcnn" in name else {}), inputs=_tv_det_inputs, labels=True,
            run=lambda model, inputs: model(*inputs) if inputs[1] is not None else model(inputs[0]))
    for name in models.list_models(module=models.segmentation):
        variants = {"": {}}
        if "aux_loss" in inspect.signature(models.get_model_builder(name)).parameters:
            variants["+aux"] = {"aux_loss": True}  # COCO checkpoints carry the auxiliary classifier
        for suffix, extra in variants.items():
            cases[f"tv:seg:{name}{suffix}"] = TaskCase(
                build=_tv_build(name, "seg", extra),
                inputs=lambda model, labels: torch.randn(BATCH, 3, _TV_SIZE, _TV_SIZE),
                run=lambda model, inputs: model(inputs))
    return cases


# ===================================================================================================================
GROUPS: dict[str, Callable[[], dict]] = {
    "timm": timm_cases,
    "transformers": transformers_cases,  # image classification + semantic segmentation
    "transformers-tasks": hf_task_cases,
    "torchvision": torchvision_cases,
}
GROUP_TITLES = {
    "timm": "timm (one model per architecture module, smallest variant)",
    "transformers": "transformers image-classification + semantic-segmentation model types",
    "transformers-tasks": "transformers task model types (detection, universal/instance segmentation, depth, "
                          "zero-shot classification/detection, video classification, mask generation)",
    "torchvision": "torchvision detection + segmentation builders",
}
STRICT_GROUPS = ("transformers-tasks", "torchvision")
_LEVEL_NAMES = {1: "default resolution", 0: "default config"}


def _run_case(library: str, build: Any) -> str:
    if library in STRICT_GROUPS:
        case: TaskCase = build
        # The smallest model first; cutting depth or resolution can break configs that read fixed layers or sizes:
        # the next larger level then (transformers: depth cut only, then the default config).
        errors = []
        for level in reversed(range(case.levels)):
            try:
                result = strict_check(case, level)
            except NotBuildable as error:
                errors.append(str(error))
                continue
            if level < case.levels - 1:
                result += f" [{_LEVEL_NAMES.get(level, f'level {level}')}]"
                case.details["size"] = _LEVEL_NAMES.get(level, f"level {level}")
            return result + "".join(f" [{note}]" for note in case.notes)
        if len(set(errors)) == 1:
            raise NotBuildable(errors[0])
        raise NotBuildable(errors[0] + "".join(f" ({_LEVEL_NAMES.get(level, level)}: {error})" for level, error
                                               in zip(reversed(range(case.levels - 1)), errors[1:])))
    try:
        return check(build)
    except Exception:
        if library != "transformers":
            raise
        # Cutting the depth breaks configs whose heads read fixed layer indices: use the default.
        return check(lambda b=build: b(shrink=False)) + " [default depth]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per group (quick look)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--groups", default=None,
                        help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}")
    parser.add_argument("--only", choices=list(GROUPS), default=None, help="one group (same as --groups GROUP)")
    parser.add_argument("--match", default=None, help="only cases whose name matches this regex")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    groups = list(GROUPS)
    if args.groups or args.only:
        groups = [g.strip() for g in (args.groups or args.only).split(",") if g.strip()]
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    torch.set_num_threads(2)
    report = {}
    started_all = time.perf_counter()
    for library in groups:
        group_started = time.perf_counter()
        cases = GROUPS[library]()
        items = [(c, b) for c, b in cases.items() if not args.match or re.search(args.match, c)][: args.limit]
        results, seconds, details = {}, {}, {}
        for case, build in items:
            started = time.perf_counter()
            try:
                results[case] = _run_case(library, build)
            except NotBuildable as error:
                results[case] = f"NOT BUILDABLE {error}"
            except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the run
                results[case] = f"FAIL {_first_line(error, 160)}"
                if isinstance(build, TaskCase):
                    build.details["error"] = f"{type(error).__name__}: {str(error).strip()[:1500]}"
                if args.verbose:
                    traceback.print_exc()
            seconds[case] = round(time.perf_counter() - started, 1)
            if isinstance(build, TaskCase) and build.details and not results[case].startswith("NOT BUILDABLE"):
                details[case] = dict(build.details)
            print(f"{case:<60} {seconds[case]:5.1f}s {results[case]}", flush=True)
        ok = sum(r.startswith("ok") for r in results.values())
        unbuildable = sum(r.startswith("NOT BUILDABLE") for r in results.values())
        report[library] = {"title": GROUP_TITLES[library], "covered": ok, "total": len(results),
                           "not_buildable": unbuildable, "not_covered": len(results) - ok - unbuildable,
                           "seconds": round(time.perf_counter() - group_started, 1), "results": results,
                           "case_seconds": seconds}
        if details:
            report[library]["details"] = details
    print()
    for library, data in report.items():
        share = 100 * data["covered"] / max(1, data["total"])
        buildable = data["total"] - data["not_buildable"]
        print(f"{library}: {data['covered']}/{data['total']} = {share:.1f}% covered; of the {buildable} models that "
              f"build and run from their default config here: {100 * data['covered'] / max(1, buildable):.1f}% "
              f"({data['seconds']:.0f} s)")
        for case, result in data["results"].items():
            if not result.startswith("ok"):
                print(f"  {case}: {result}")
    print(f"total: {time.perf_counter() - started_all:.0f} s")
    if args.json:
        environment = _environment()
        for data in report.values():
            data["environment"] = environment
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


def _environment() -> dict[str, Any]:
    import platform

    import timm
    import transformers

    try:
        import torchvision

        tv_version = torchvision.__version__
    except ImportError:
        tv_version = None
    return {"torch": torch.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
            "timm": timm.__version__, "torchvision": tv_version, "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
