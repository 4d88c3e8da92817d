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

    import peft_vision_ext as pve

    if case == "adalora":  # init_r 5: rows split 3 + 2 over two processes (uneven shards)
        return peft.AdaLoraConfig(init_r=5, target_r=2, total_step=STEPS, tinit=1, tfinal=2, deltaT=1)
    if case == "adalora-conv":  # the default preset's pointwise convs plus the depthwise ones (groups == channels)
        return peft.AdaLoraConfig(init_r=4, target_r=2, total_step=STEPS, tinit=1, tfinal=2, deltaT=1,
                                  target_modules=["conv_pw", "conv_dw", "conv_pwl"], modules_to_save=["classifier"])
    # LoRA on the q/v slices of the fused qkv (use_fused_slices: the sharded BlockFactor layout is what is tested)
    return {"lora": pve.use_fused_slices(peft.LoraConfig(r=4)),
            "lora-4bit": pve.use_fused_slices(peft.LoraConfig(r=4)), "loha": peft.LoHaConfig(r=4),
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


def adalora_callback(rank: int, world: int, out: Path) -> dict:
    """AdaLoraCallback's hooks driven as Trainer calls them, on a sharded model: allocation, a checkpoint at step 4
    (per-process allocator files, the adapter written by process 0), the end-of-training rank table, and a resume
    that restores every process's statistics."""
    import types

    import peft

    from peft_vision_ext.adalora.callback import AdaLoraCallback
    from peft_vision_ext.distributed import shard_model

    def sharded_model():
        model = peft.get_peft_model(build("adalora"), config("adalora"))
        return shard_model(model)

    args = types.SimpleNamespace(output_dir=str(out))
    state = types.SimpleNamespace(max_steps=STEPS, global_step=0, is_world_process_zero=rank == 0, log_history=[])
    model, callback = sharded_model(), AdaLoraCallback()
    callback.on_train_begin(args, state, None, model=model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    record: dict = {}
    for step in range(STEPS):
        images, labels = data(step)
        half = GLOBAL_BATCH // world
        loss = torch.nn.functional.cross_entropy(model(images[rank * half:(rank + 1) * half]),
                                                 labels[rank * half:(rank + 1) * half])
        loss.backward()
        callback.on_pre_optimizer_step(args, state, None, model=model)
        optimizer.step()
        callback.on_optimizer_step(args, state, None, model=model)
        optimizer.zero_grad()
        state.global_step += 1
        if state.global_step == 4:
            callback.on_save(args, state, None, model=model)
            allocator = model.base_model.rankallocator
            record["saved_ipt"] = {name: t.sum().item() for name, t in sorted(allocator.exp_avg_ipt.items())}
    callback.on_train_end(args, state, None, model=model)
    record["rank_pattern"] = rank_pattern(model)

    resumed = sharded_model()
    resumed_state = types.SimpleNamespace(**{**vars(state), "global_step": 4})
    AdaLoraCallback().on_train_begin(args, resumed_state, None, model=resumed)
    allocator = resumed.base_model.rankallocator
    record["restored_ipt"] = {name: t.sum().item() for name, t in sorted(allocator.exp_avg_ipt.items())}
    return record


def trainer_style_save(rank: int, out: Path) -> dict:
    """What Trainer does under FSDP2 (through accelerate): gather a full state dict on every process, then
    ``save_pretrained(state_dict=...)`` on process 0 alone. And a plain ``save_pretrained`` without one (refused)."""
    import peft
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from peft_vision_ext.distributed import shard_model

    model = shard_model(peft.get_peft_model(build("lora"), config("lora")))
    images, labels = data(0)
    torch.nn.functional.cross_entropy(model(images[rank * 2:rank * 2 + 2]), labels[rank * 2:rank * 2 + 2]).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # a visible, deterministic change from the initial adapter
                parameter.add_(0.01)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(str(out / "adapter"), state_dict=full)
    dist.barrier()
    record: dict = {}
    with torch.no_grad():
        record["eval_logits"] = model(eval_inputs()).tolist()
    try:
        model.save_pretrained(str(out / "shards"))
    except RuntimeError as error:
        record["save_without_state_dict_error"] = str(error)
    return record


def fsdp1(rank: int, out: Path) -> dict:
    """FSDP1 (FullyShardedDataParallel, use_orig_params=True): LoRA (on fused-qkv slices, use_fused_slices) trains
    and save_adapter writes it (out/fsdp1-lora), while AdaLoRA's allocation refuses, naming FSDP2; returns the
    losses, the LoRA model's eval logits and the message."""
    import peft
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    import peft_vision_ext  # noqa: F401
    from peft_vision_ext.distributed import repeated_blocks, save_adapter

    record: dict = {"rank": rank}
    for case in ("lora", "adalora"):
        model = peft.get_peft_model(build(case), config(case))
        policy = ModuleWrapPolicy({type(block) for block in repeated_blocks(model)})
        wrapped = FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True,
                                           device_id=torch.device("cpu"))
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=LR)
        images, labels = data(0)
        loss = torch.nn.functional.cross_entropy(wrapped(images[rank * 2:rank * 2 + 2]), labels[rank * 2:rank * 2 + 2])
        loss.backward()
        optimizer.step()
        record[f"{case}_loss"] = loss.item()
        if case == "adalora":
            try:
                model.base_model.update_and_allocate(2)  # a masking step
            except RuntimeError as error:
                record["adalora_error"] = str(error)
        else:
            save_adapter(wrapped, out / "fsdp1-lora")
            with torch.no_grad():
                record["lora_eval_logits"] = wrapped(eval_inputs()).tolist()
    return record


def plain_fully_shard_of_a_4bit_model(rank: int) -> str | None:
    """``fully_shard`` without ``ignored_params`` on a 4-bit base: the clear error, not bitsandbytes' assertion."""
    import peft
    from torch.distributed.fsdp import fully_shard

    import peft_vision_ext  # noqa: F401

    model = peft.get_peft_model(build("lora-4bit"), config("lora-4bit"))
    fully_shard(model)
    try:
        model(data(0)[0][rank * 2:rank * 2 + 2])
    except RuntimeError as error:
        return str(error)
    return None


def main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--timeout", type=int, default=240)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faulthandler.enable()  # a native abort (SIGABRT from gloo's threads) prints where Python was
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # a collective that never completes: say where
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in args.cases:
        out = args.out / case
        out.mkdir(parents=True, exist_ok=True)
        record = train(case, rank, world, out)
        (out / f"rank{rank}.json").write_text(json.dumps(record))
    callback_out = args.out / "adalora-callback"
    callback_out.mkdir(exist_ok=True)
    (callback_out / f"rank{rank}.json").write_text(json.dumps(adalora_callback(rank, world, callback_out)))
    trainer_out = args.out / "trainer-style-save"
    trainer_out.mkdir(exist_ok=True)
    (trainer_out / f"rank{rank}.json").write_text(json.dumps(trainer_style_save(rank, trainer_out)))
    refusals = {**fsdp1(rank, args.out), "plain_fully_shard_4bit_error": plain_fully_shard_of_a_4bit_model(rank)}
    (args.out / f"refusals_rank{rank}.json").write_text(json.dumps(refusals))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
