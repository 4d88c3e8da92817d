"""Segment cell nuclei with a SegFormer and a PEFT adapter under Hugging Face ``Trainer``.

Data: the real 512 x 512 fluorescence-nuclei image that ships inside the ``stardist`` package, cut into 64 x 64
tiles with binary masks (``peft_vision_ext.data.nuclei_split``: 48 training tiles, 16 test tiles; the training
tiles are used in all 8 flips/rotations). Metrics on the test tiles: pixel accuracy and mIoU (mean IoU over the
background and nucleus classes), computed on logits upsampled from SegFormer's 1/4 resolution to the mask size.

No pretrained SegFormer is available offline, so the base is a tiny SegFormer (``SegformerConfig``, 4 stages,
hidden sizes 16/32/64/128, ~0.46 M parameters) with random weights. A random backbone with LoRA learns little,
so ``--pretrain-steps N`` first trains the tiny model in full on the training tiles as a stand-in for pretrained
weights; that model is saved as the base (``OUTPUT/base``, ``save_pretrained``) and reloaded from there, and the
adapter is fine-tuned from it. ``--base PATH`` starts from a saved SegFormer folder instead (no pretraining).

    python examples/semantic_segmentation.py                        # LoRA (family default preset: attention)
    python examples/semantic_segmentation.py --method adalora       # AdaLoRA, ranks allocated by AdaLoraCallback
    python examples/semantic_segmentation.py --preset attention+mlp --rank 4

With ``import peft_vision_ext``, ``get_peft_model`` resolves the preset's target modules and puts the decode head
into ``modules_to_save``. Output (``--output-dir``): the adapter (``adapter_model.safetensors``,
``adapter_config.json``, model card ``README.md``), ``base/``, ``reference.safetensors`` (test tiles and the trained
model's logits), ``metrics.json``, and one ``RESULT {...}`` JSON line on stdout.
"""

from __future__ import annotations  # noqa: I001 - peft_vision_ext comes first, on purpose

# First: it filters two harmless bitsandbytes notices before transformers/PEFT import bitsandbytes.
import peft_vision_ext

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer, TrainingArguments

from peft_vision_ext.data import nuclei_split
from peft_vision_ext.train import PixelDataset, freeze_norm_statistics, method_config

METHODS = ("lora", "loha", "lokr", "adalora")
CLASSES = ("background", "nucleus")
RANDOM_INIT_NOTE = ("random init: no pretrained SegFormer exists offline; {steps} steps of full training on the "
                    "training tiles stand in for pretrained weights")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", default="lora", choices=METHODS)
    parser.add_argument("--preset", default=None, help="a preset name (see peft_vision_ext.list_presets); "
                        "default: the family's default preset for the method")
    parser.add_argument("--rank", type=int, default=8, help="r (AdaLoRA: target_r = r, init_r = 1.5 r)")
    parser.add_argument("--base", default=None, help="a saved SegformerForSemanticSegmentation folder to start "
                        "from (skips --pretrain-steps)")
    parser.add_argument("--pretrain-steps", type=int, default=100,
                        help="full training of the random-init tiny SegFormer before the adapter (stand-in for "
                        "pretrained weights)")
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=float, default=5.0, help="adapter fine-tuning epochs (384 tiles each)")
    parser.add_argument("--max-steps", type=int, default=-1, help="adapter optimizer steps; overrides --epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="per device")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-test", type=int, default=16, help="test tiles (of 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/semantic_segmentation")
    parser.add_argument("--no-save-base", action="store_true", help="do not save the pretrained base to OUTPUT/base")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.rank < 1:
        parser.error("--rank must be >= 1")
    return args


def tiny_segformer_config() -> SegformerConfig:
    return SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                           hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=64,
                           num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)),
                           label2id={name: i for i, name in enumerate(CLASSES)})


# ---------------------------------------------------------------------------------------------------- data
def to_pixel_values(tiles: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 3, H, W] in [-1, 1] (grey replicated to 3 channels)."""
    x = torch.from_numpy(tiles).float().div_(127.5).sub_(1.0).unsqueeze(1)
    return x.expand(-1, 3, -1, -1).contiguous()


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """The 8 flips/rotations of [N, ..., H, W] stacked along N."""
    views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(views + [v.flip(-1) for v in views])


# ------------------------------------------------------------------------------------------------- metrics
def segmentation_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, per-class IoU and mIoU (mean over background and nucleus), pooled over all test pixels."""
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    metrics = {"pixel_accuracy": float((predictions == labels).mean())}
    ious = []
    for index, name in enumerate(CLASSES):
        intersection = np.logical_and(predictions == index, labels == index).sum()
        union = np.logical_or(predictions == index, labels == index).sum()
        iou = float(intersection / union) if union else 1.0
        metrics[f"iou_{name}"] = iou
        ious.append(iou)
    metrics["mean_iou"] = float(np.mean(ious))
    return metrics


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SegFormer's logits are at 1/4 resolution: bilinear upsampling to the mask size (as its own loss does)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return upsample(logits, labels.shape[-2:]).argmax(1)


def compute_metrics(eval_prediction: object) -> dict[str, float]:
    return segmentation_metrics(eval_prediction.predictions, eval_prediction.label_ids)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: PixelDataset, batch_size: int = 16) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    for start in range(0, len(dataset), batch_size):
        logits = model(pixel_values=dataset.pixel_values[start : start + batch_size].to(device)).logits
        predictions.append(upsample(logits, dataset.labels.shape[-2:]).argmax(1).cpu())
    return segmentation_metrics(torch.cat(predictions).numpy(), dataset.labels.numpy())


# ------------------------------------------------------------------------------------------------ training
class SegmentationTrainer(Trainer):
    """SegFormer's own loss (``labels`` given: logits upsampled, cross-entropy); AdaLoRA's orthogonal regulariser,
    which ``AdaLoraModel.forward`` never adds here (``PeftModel.forward`` without a task type calls the base model
    directly), comes from ``AdaLoraCallback``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # SegFormer's loss is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            freeze_norm_statistics(model, frozen_only=True)  # Trainer calls model.train() before every step
        outputs = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
        loss = outputs.loss
        return (loss, {"logits": outputs.logits}) if return_outputs else loss


def training_arguments(args: argparse.Namespace, output_dir: str, max_steps: int, lr: float,
                       epochs: float = 1.0) -> TrainingArguments:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = args.cpu or (launched > 1 and not torch.cuda.is_available())
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=16,
        num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, seed=args.seed, data_seed=args.seed,
        eval_strategy="no", save_strategy="no", report_to=[], remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=0, use_cpu=use_cpu, disable_tqdm=args.no_progress, logging_steps=25,
        lr_scheduler_type="linear", warmup_steps=0)


def main(argv: list[str] | None = None) -> dict[str, object]:
    import peft

    args = parse_args(argv)
    out = os.path.abspath(args.output_dir)
    base_dir = os.path.join(out, "base")
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = nuclei_split(n_test=args.n_test, tile=64, seed=args.seed)
    train_set = PixelDataset(dihedral(to_pixel_values(x_train)), dihedral(torch.from_numpy(y_train)))
    test_set = PixelDataset(to_pixel_values(x_test), torch.from_numpy(y_test))

    # 1. The base: a saved SegFormer, or the tiny random-init one trained in full for --pretrain-steps.
    pretrain_args = training_arguments(args, out, max(args.pretrain_steps, 1),
                                       args.pretrain_lr)
    main_process = pretrain_args.process_index == 0
    torch.manual_seed(args.seed)
    if args.base:
        model = SegformerForSemanticSegmentation.from_pretrained(args.base)
        base_note = f"weights from {args.base}"
    else:
        model = SegformerForSemanticSegmentation(tiny_segformer_config())
        base_note = RANDOM_INIT_NOTE.format(steps=args.pretrain_steps)
        if args.pretrain_steps > 0:
            if main_process:
                print(f"pretraining the tiny random-init SegFormer in full for {args.pretrain_steps} steps "
                      "(stand-in for pretrained weights: none exist offline)")
            SegmentationTrainer(model=model, args=pretrain_args, train_dataset=train_set).train()
            # accelerate marked the model as prepared; PeftModel forwards attribute lookups to it, so a second
            # Trainer would skip the DDP wrapping of the adapter model (ranks would not synchronise).
            model.__dict__.pop("_is_accelerate_prepared", None)
    base_metrics = evaluate(model, test_set)
    if not args.no_save_base and not args.base:
        with pretrain_args.main_process_first(desc="base model"):
            if pretrain_args.local_process_index == 0:
                model.save_pretrained(base_dir, safe_serialization=True)
            model = SegformerForSemanticSegmentation.from_pretrained(base_dir)
    if main_process:
        print(f"base ({base_note}): pixel accuracy {base_metrics['pixel_accuracy']:.3f}, "
              f"mIoU {base_metrics['mean_iou']:.3f} on {len(test_set)} test tiles")

    # 2. The adapter.
    world_size = pretrain_args.world_size
    per_epoch = math.ceil(math.ceil(len(train_set) / world_size) / args.batch_size)
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.epochs * per_epoch)
    config = method_config(model, args.method, args.preset, args.rank, total_steps)
    peft_model = peft.get_peft_model(model, config)
    preset = args.preset or peft_vision_ext.presets.resolve_default(model, args.method).preset
    trainable, total = peft_model.get_nb_trainable_parameters()
    if main_process:
        print(f"{args.method} r={args.rank}, preset {preset}: {len(peft_model.base_model.targeted_module_names)} "
              f"target modules, modules_to_save={config.modules_to_save}; trainable params: {trainable:,} of "
              f"{total:,} ({100 * trainable / total:.2f}%)")
    callbacks = [peft_vision_ext.AdaLoraCallback()] if args.method == "adalora" else []
    trainer = SegmentationTrainer(
        model=peft_model, args=training_arguments(args, out, args.max_steps, args.lr, args.epochs),
        train_dataset=train_set, eval_dataset=test_set, compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics, callbacks=callbacks)
    train_result = trainer.train()
    if trainer.args.world_size > 1 and type(trainer.model_wrapped).__name__ != "DistributedDataParallel":
        raise RuntimeError("several processes but the adapter model was not wrapped in DDP: no gradient sync.")
    evaluation = trainer.evaluate()
    metrics = {key: evaluation[f"eval_{key}"] for key in ("pixel_accuracy", "mean_iou", "iou_background",
                                                           "iou_nucleus")}
    if main_process:
        print(f"after {args.method}: pixel accuracy {metrics['pixel_accuracy']:.3f}, mIoU {metrics['mean_iou']:.3f} "
              f"(base: {base_metrics['pixel_accuracy']:.3f}, {base_metrics['mean_iou']:.3f}); "
              f"{train_result.metrics['train_runtime']:.0f} s of adapter training")

    summary: dict[str, object] = {
        "task": "image-segmentation", "model": "segformer (tiny config)", "base_weights": base_note,
        "method": args.method, "preset": preset, "rank": args.rank,
        "target_modules": len(peft_model.base_model.targeted_module_names), "trainable_params": trainable,
        "total_params": total, "trainable_share": trainable / total,
        **{f"base_{key}": value for key, value in base_metrics.items()}, **metrics,
        "eval_loss": evaluation["eval_loss"], "train_loss": train_result.training_loss,
        "train_steps": trainer.state.global_step, "train_runtime_s": train_result.metrics["train_runtime"],
        "world_size": trainer.args.world_size, "trained_model_wrapper": type(trainer.model_wrapped).__name__,
        "base_dir": None if (args.no_save_base and not args.base) else (args.base or base_dir), "output_dir": out,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "peft_vision_ext": peft_vision_ext.__version__},
    }
    if args.method == "adalora":
        from peft.tuners.adalora import AdaLoraModel

        tuner = peft_model.base_model
        assert isinstance(tuner, AdaLoraModel)
        summary["adalora_ranks"] = {name: int((m.lora_E["default"] != 0).sum())
                                    for name, m in tuner.model.named_modules() if hasattr(m, "lora_E")}
    if main_process:
        peft_model.eval()
        reference_inputs = test_set.pixel_values[:4]
        with torch.no_grad():
            reference_logits = peft_model(pixel_values=reference_inputs).logits
        peft_vision_ext.describe(peft_model, task="image-segmentation", dataset="stardist nuclei tiles",
                                 metrics={"mean_iou": metrics["mean_iou"],
                                          "pixel_accuracy": metrics["pixel_accuracy"]})
        peft_model.save_pretrained(out, safe_serialization=True)
        from safetensors.torch import save_file

        save_file({"pixel_values": reference_inputs.contiguous(), "logits": reference_logits.contiguous()},
                  os.path.join(out, "reference.safetensors"))
        if summary["base_dir"]:
            base = SegformerForSemanticSegmentation.from_pretrained(summary["base_dir"])
            reloaded = peft.PeftModel.from_pretrained(base, out).eval()
            with torch.no_grad():
                diff = (reloaded(pixel_values=reference_inputs).logits - reference_logits).abs().max().item()
            summary["reload_max_abs_diff"] = diff
            print(f"adapter saved to {out}; reloaded onto {summary['base_dir']}: max |logit diff| {diff:.2e}")
        summary["wall_s"] = time.perf_counter() - started
        with open(os.path.join(out, "metrics.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        print("RESULT " + json.dumps({k: v for k, v in summary.items() if k != "adalora_ranks"}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
