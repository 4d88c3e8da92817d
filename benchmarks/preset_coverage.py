"""Preset coverage over timm and transformers (a benchmark script, not a unit test).

For every timm architecture module (the smallest-sounding model of each) and every transformers
image-classification / semantic-segmentation model type (default config, depth cut to 2 layers), random init:
the default LoRA preset must be non-empty and a forward + backward pass through the LoRA model must work.
Prints the covered fraction per library and every failure; writes JSON with --json.

    python benchmarks/preset_coverage.py [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time
import traceback

import peft
import torch

import peft_vision_ext  # noqa: F401 - installs the hooks
from peft_vision_ext.presets import resolve_default

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


def check(build) -> str:
    try:
        model, x = build()
    except Exception as error:
        message = str(error).splitlines()[0][:140] if str(error) else ""
        raise NotBuildable(f"{type(error).__name__}: {message}") from None
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per library (quick look)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", choices=["timm", "transformers"], default=None)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    torch.set_num_threads(2)
    report = {}
    libraries = {"timm": timm_cases, "transformers": transformers_cases}
    for library, make_cases in libraries.items():
        if args.only and library != args.only:
            continue
        cases = make_cases()
        items = list(cases.items())[: args.limit]
        results = {}
        for case, build in items:
            started = time.perf_counter()
            try:
                try:
                    results[case] = check(build)
                except Exception:
                    if library != "transformers":
                        raise
                    # Cutting the depth breaks configs whose heads read fixed layer indices: use the default.
                    results[case] = check(lambda b=build: b(shrink=False)) + " [default depth]"
            except NotBuildable as error:
                results[case] = f"NOT BUILDABLE {error}"
            except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the run
                results[case] = f"FAIL {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
                if args.verbose:
                    traceback.print_exc()
            print(f"{case:<60} {time.perf_counter() - started:5.1f}s {results[case]}", flush=True)
        ok = sum(r.startswith("ok") for r in results.values())
        unbuildable = sum(r.startswith("NOT BUILDABLE") for r in results.values())
        report[library] = {"covered": ok, "total": len(results), "not_buildable": unbuildable, "results": results}
    print()
    for library, data in report.items():
        share = 100 * data["covered"] / max(1, data["total"])
        buildable = data["total"] - data["not_buildable"]
        print(f"{library}: {data['covered']}/{data['total']} = {share:.1f}% covered; of the {buildable} models that "
              f"build and run from their default config here: {100 * data['covered'] / max(1, buildable):.1f}%")
        for case, result in data["results"].items():
            if not result.startswith("ok"):
                print(f"  {case}: {result}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
