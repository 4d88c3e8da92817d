"""Training cases for tests/test_fsdp.py: run under ``torchrun --nproc_per_node 2`` (FSDP2 over gloo, CPU) or
imported and run in one process (the same global batch, no sharding) for comparison.

Each case builds a tiny random-init model with the plugin's default preset, trains a few AdamW steps on a fixed global
batch (each process takes its slice), and records: the loss (averaged over processes), proof that every trainable
parameter is sharded, AdaLoRA's rank pattern on every process, the adapter saved with ``save_adapter`` and the sharded
model's eval logits on fixed inputs. BatchNorm runs in eval mode so a sharded run and a single-process run see the same
normalisation (train-mode batch statistics differ with the local batch by design, as under DDP).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

import torch

GLOBAL_BATCH = 4
STEPS = 8
LR = 1e-3
CASES = ("lora", "loha", "lokr", "ia3", "adalora", "adalora-conv", "lora-4bit")


def build(case: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    if case == "adalora-conv":  # depthwise and pointwise convs: the plugin's AdaLoRA Conv2d layer
        model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=4)
    else:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                                  patch_size=8, depth=2, embed_dim=32, num_heads=2)
    if case == "lora-4bit":
        import peft_vision_ext as pve

        pve.quantize(model)
    return model


def config(case: str):
    import peft

    if case == "adalora":  # init_r 5: rows split 3 + 2 over two processes (uneven shards)
        return peft.AdaLoraConfig(init_r=5, target_r=2, total_step=STEPS, tinit=1, tfinal=2, deltaT=1)
    if case == "adalora-conv":  # the default preset's pointwise convs plus the depthwise ones (groups == channels)
        return peft.AdaLoraConfig(init_r=4, target_r=2, total_step=STEPS, tinit=1, tfinal=2, deltaT=1,
                                  target_modules=["conv_pw", "conv_dw", "conv_pwl"], modules_to_save=["classifier"])
    return {"lora": peft.LoraConfig(r=4), "lora-4bit": peft.LoraConfig(r=4), "loha": peft.LoHaConfig(r=4),
            "lokr": peft.LoKrConfig(r=4), "ia3": peft.IA3Config()}[case]


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator), torch.randint(0, 4, (GLOBAL_BATCH,),
                                                                                  generator=generator)


def eval_inputs() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def rank_pattern(model) -> dict | None:
    pattern = getattr(model.peft_config["default"], "rank_pattern", None)
    return {key: list(map(bool, value)) for key, value in pattern.items()} if pattern else None


def train(case: str, rank: int = 0, world: int = 1, out: Path | None = None) -> dict:
    """Train ``case``; sharded when ``world > 1`` (the process group must exist). Returns the record."""
    import peft
    import torch.distributed as dist

    import peft_vision_ext  # noqa: F401
    from peft_vision_ext.adalora import add_orthogonal_regularization_grad
    from peft_vision_ext.distributed import is_sharded, save_adapter, shard_model

    model = peft.get_peft_model(build(case), config(case))
    model.eval()  # BatchNorm statistics: see the module docstring (gradients flow all the same)
    record: dict = {"case": case, "rank": rank, "world": world}
    if world > 1:
        shard_model(model)
        assert is_sharded(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        record["sharded"] = {"trainable": len(trainable),
                             "local_elements": sum(p.to_local().numel() for p in trainable),
                             "global_elements": sum(p.numel() for p in trainable)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    per_process = GLOBAL_BATCH // world
    for step in range(STEPS):
        images, labels = data(step)
        images, labels = images[rank * per_process:(rank + 1) * per_process], labels[rank * per_process:
                                                                                     (rank + 1) * per_process]
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        if case.startswith("adalora"):
            add_orthogonal_regularization_grad(model)
        optimizer.step()
        if case.startswith("adalora"):
            model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    record["losses"] = losses
    record["rank_pattern"] = rank_pattern(model) if case.startswith("adalora") else None
    with torch.no_grad():
        logits = model(eval_inputs())
    record["eval_logits"] = logits.tolist()
    if out is not None:
        save_adapter(model, out / "adapter")
    return record


def main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--timeout", type=int, default=240)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # a collective that never completes: say where
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in args.cases:
        out = args.out / case
        out.mkdir(parents=True, exist_ok=True)
        record = train(case, rank, world, out)
        (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
