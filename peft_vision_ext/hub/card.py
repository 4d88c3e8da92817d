"""The vision part of an adapter's model card, and the rebuild metadata saved beside it.

Called after PEFT's own ``create_or_update_model_card`` (hook ``vision-model-card`` in peft_hooks/model_card.py), which
``PeftModel.save_pretrained``, ``push_to_hub`` and ``Trainer.create_model_card`` all go through: PEFT keeps
writing its part (``library_name: peft``, its tags, framework versions); we add the vision metadata and one
section between markers, so saving again updates it instead of appending.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..card_facts import (
    PRECOMPUTED_BASE,
    PRESET_ATTRIBUTE,
    base_state_of_peft_model,
    card_info,
    heads_of,
    is_vision_model,
)
from ..families import detect_family
from ..fingerprints import fingerprint, original_weights_fingerprint
from ..fused.slices import fused_plans
from ..matrix.rows import ROWS
from ..matrix.verdicts import title as method_title
from ..quantization.residual import RESIDUAL_KEY, residual_label
from .metadata import (
    CONVERTED_ADAPTER,
    FORMAT_VERSION,
    METADATA_FILE,
    base_spec,
    describe_base,
    head_shapes,
    hub_base_model,
    plugin_version,
    quantization_of,
)

START, END = "<!-- peft-vision-ext:start -->", "<!-- peft-vision-ext:end -->"


def infer_task(model: Any) -> str:
    """The Hub task: the family's (object-detection, depth-estimation, ...) for task families, else
    image-classification / image-segmentation / image-feature-extraction from the model's class and head."""
    detection = detect_family(model)
    if detection is not None and detection.task:
        return detection.task
    name = type(model).__name__
    if "DepthEstimation" in name:
        return "depth-estimation"
    if "VideoClassification" in name:
        return "video-classification"
    if hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):
        return "zero-shot-image-classification"  # CLIP / SigLIP dual encoders
    if "Segmentation" in name or type(model).__module__.startswith("torchvision.models.segmentation"):
        return "image-segmentation"
    if "Classification" in name or getattr(model, "num_classes", 0) or hasattr(model, "fc") \
            or hasattr(model, "classifier") or hasattr(model, "heads"):
        return "image-classification"
    return "image-feature-extraction"


def vision_metadata(peft_model: Any) -> dict[str, Any]:
    """Everything ``peft_vision_ext.json`` holds for ``peft_model`` (see :mod:`.metadata`)."""
    base = peft_model.get_base_model()
    heads = heads_of(peft_model)
    info = card_info(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    # A sharded (FSDP2) model: save_adapter computed shapes and fingerprint on every process beforehand, because
    # reading the sharded base here, on process 0 alone, would wait forever for the others.
    precomputed = peft_model.__dict__.get(PRECOMPUTED_BASE)
    base_state = precomputed["shapes"] if precomputed else base_state_of_peft_model(peft_model)
    adapters = {}
    converted = peft_model.__dict__.get(CONVERTED_ADAPTER)
    for name, config in peft_model.peft_config.items():
        method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
        plans = fused_plans(config)
        rank = getattr(config, "target_r" if method == "adalora" else "r", None)
        adapters[name] = {"method": method, "preset": config.__dict__.get(PRESET_ATTRIBUTE),
                          # PEFT's conversion of a base-rewriting init saves a plain LoRA of twice the rank
                          "rank": 2 * rank if name == converted and rank else rank,
                          "converted_from": config.init_lora_weights if name == converted else None,
                          "fused_slices": sorted({s for plan in plans.values() for s in plan.slices}) or None}
    return {
        "format_version": FORMAT_VERSION,
        "peft_vision_ext_version": plugin_version(),
        "task": info.task or infer_task(base),
        "dataset": info.dataset,
        "metrics": dict(info.metrics),
        "base_model": base_spec(base, base_state, list(heads)),
        "quantization": quantization_of(base),
        "modules_to_save": sorted(heads),
        "heads": head_shapes(heads),
        "adapters": adapters,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "base_fingerprint": original_weights_fingerprint(
            base, precomputed["fingerprint"] if precomputed else fingerprint(base_state, list(heads))),
    }


def write_vision_card(peft_model: Any, output_dir: str) -> None:
    """Add the vision metadata to ``output_dir/README.md`` (made by PEFT) and write ``peft_vision_ext.json``."""
    if not is_vision_model(peft_model.get_base_model()):
        return
    from huggingface_hub import ModelCard

    metadata = vision_metadata(peft_model)
    with open(os.path.join(output_dir, METADATA_FILE), "w") as handle:
        json.dump(metadata, handle, indent=2)
    path = os.path.join(output_dir, "README.md")
    card = ModelCard.load(path)
    data = card.data
    hub_id = hub_base_model(metadata["base_model"])
    if hub_id:
        data["base_model"] = hub_id
    elif str(data.get("base_model") or "").startswith((".", "/")) or os.path.exists(str(data.get("base_model") or "")):
        data["base_model"] = None  # a local folder is not a Hub id (the Hub rejects it); the card text names it
    methods = sorted({a["method"] for a in metadata["adapters"].values()})
    library = metadata["base_model"].get("library")
    tags = set(data.get("tags") or []) | {"peft-vision-ext", "vision", metadata["task"], *methods}
    data["tags"] = sorted(tags | ({library} if library else set()))
    data["pipeline_tag"] = metadata["task"]
    if metadata["metrics"]:
        data["metrics"] = sorted(metadata["metrics"])
    if metadata["dataset"] and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", metadata["dataset"]):
        data["datasets"] = [metadata["dataset"]]
    card.text = _replace_section(card.text, _section(metadata))
    card.save(path)


def _section(meta: dict[str, Any]) -> str:
    rows = [("Base model", describe_base(meta["base_model"])), ("Task", meta["task"])]
    for name, adapter in meta["adapters"].items():
        title = method_title(adapter["method"])
        rank = f" (r={adapter['rank']})" if adapter["rank"] else ""
        if adapter.get("converted_from"):
            rank += f", initialised with {adapter['converted_from']}, saved as a plain LoRA of the original base"
        label = "Method" if len(meta["adapters"]) == 1 else f"Method (`{name}`)"
        preset = adapter["preset"] or "explicit target_modules"
        if adapter.get("fused_slices"):
            preset += f" (LoRA on the {', '.join(adapter['fused_slices'])} slices of fused layers)"
        rows += [(label, f"{title}{rank}"), ("Preset", preset)]
    share = 100 * meta["trainable_parameters"] / max(meta["total_parameters"], 1)
    rows.append(("Trainable parameters", f"{meta['trainable_parameters']:,} of {meta['total_parameters']:,} "
                                         f"({share:.2f} %)"))
    if meta["modules_to_save"]:
        rows.append(("Trained in full", ", ".join(f"`{h}`" for h in meta["modules_to_save"])))
    if meta["quantization"]:
        q = meta["quantization"]
        kind = f" {q['quant_type']}" if q["quant_type"] else ""
        residual = ""
        if q.get(RESIDUAL_KEY):  # the base's residual after the init was quantized (get_quantized_peft_model)
            residual = (f" of the residual after the {q[RESIDUAL_KEY]['init']} init ({residual_label(q)}; "
                        "`load_adapter` rebuilds it from the original full-precision base)")
        rows.append(("Quantization", f"bitsandbytes {q['bits']}-bit{kind}{residual}"))
    if meta["dataset"]:
        rows.append(("Dataset", meta["dataset"]))
    plugin_methods = sorted({method_title(a["method"]) for a in meta["adapters"].values()
                             if a["method"] in ROWS and ROWS[a["method"]].plugin})
    if plugin_methods:
        rows.append(("Needs", f"`import peft_vision_ext` before loading: {', '.join(plugin_methods)} is a PEFT method "
                              "this plugin registers (plain PEFT does not know its `peft_type`); "
                              "`PeftModel.from_pretrained` and `load_adapter` then work as for LoRA"))
    lines = [START, "## Vision adapter (peft-vision-ext)", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    if meta["metrics"]:
        lines += ["", "### Metrics", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in sorted(meta["metrics"].items())]
    lines += ["", "### Load", "", "```python", "import peft_vision_ext", "",
              'model = peft_vision_ext.load_adapter("<this repo id or folder>")  # rebuilds the base, adds the adapter',
              "```", "", f"Saved with peft-vision-ext {meta['peft_vision_ext_version']}; `{METADATA_FILE}` holds what "
              "`load_adapter` needs to rebuild the base model and checks it is the same one.", END]
    return "\n".join(lines)


def _replace_section(text: str, section: str) -> str:
    if START in text and END in text:
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        return before + section + after
    lines = text.splitlines()
    # First thing after the card's title: PEFT's template below it is mostly "[More Information Needed]".
    first_section = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return "\n".join(lines[:first_section] + [section, ""] + lines[first_section:]) + "\n"
