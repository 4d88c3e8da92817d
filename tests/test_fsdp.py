"""FSDP2 (``fully_shard``) with 2 CPU processes over gloo, launched with ``torchrun`` (tests/fsdp_worker.py).

One launch trains every case (LoRA, LoHa, LoKr, IA3, AdaLoRA on Linear and on pointwise + depthwise Conv2d, LoRA on a
4-bit base) sharded with ``peft_vision_ext.distributed.shard_model``, then each case is checked against the same
training in this process without sharding (same global batch): losses, AdaLoRA's rank pattern, and the adapter that
``save_adapter`` wrote, reloaded here into a fresh base, reproducing the sharded model's outputs.
"""

import json
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import peft
import pytest
import torch

import peft_vision_ext  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fsdp_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(ROOT / "tests" / "fsdp_worker.py"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # PYTHONPATH (old lane) kept
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    if result.returncode != 0 and _native_abort(result.stderr):
        # Seen once in ~14 runs (2026-12-04, torch 2.14.1): both ranks aborted in C++ ("terminate called without an
        # active exception", SIGABRT), no Python error. Retried once on a fresh port; a Python failure, or a second
        # abort, still fails. The first attempt's tail is reported as a warning (faulthandler shows where it was).
        warnings.warn(f"FSDP worker aborted natively, retried once: {result.stderr[-3000:]}", stacklevel=1)
        command[command.index("--master_port") + 1] = str(_free_port())
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return out


def _native_abort(stderr: str) -> bool:
    return "terminate called without an active exception" in stderr and "Signal 6 (SIGABRT)" in stderr


def _records(out: Path, case: str) -> list[dict]:
    return [json.loads((out / case / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def single_process():
    torch.set_num_threads(1)
    return {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", fsdp_worker.CASES)
def test_fsdp2_trains_like_one_process_and_saves_a_reloadable_adapter(case, sharded_runs, single_process):
    records = _records(sharded_runs, case)
    for record in records:  # really sharded: every trainable parameter a DTensor, each process holding a part
        shards = record["sharded"]
        assert shards["trainable"] > 0 and 0 < shards["local_elements"] < shards["global_elements"]
    assert sum(r["sharded"]["local_elements"] for r in records) == records[0]["sharded"]["global_elements"]
    # the sharded forward gathers the same weights on both processes: bit-identical outputs
    assert records[0]["eval_logits"] == records[1]["eval_logits"]

    reference = fsdp_worker.train(case)  # one process, the whole global batch, no sharding
    torch.testing.assert_close(torch.tensor(records[0]["losses"]), torch.tensor(reference["losses"]),
                               rtol=1e-4, atol=1e-5)
    atol = 1e-4 if case == "adalora-conv" else 1e-5  # a deeper CNN: more rounding between the two reductions
    torch.testing.assert_close(torch.tensor(records[0]["eval_logits"]), torch.tensor(reference["eval_logits"]),
                               rtol=0, atol=atol)

    # load_adapter checks the base fingerprint save_adapter computed from the sharded base against this fresh base
    reloaded = peft_vision_ext.load_adapter(str(sharded_runs / case / "adapter"), base_model=fsdp_worker.build(case))
    reloaded.eval()
    with torch.no_grad():
        logits = reloaded(fsdp_worker.eval_inputs())
    torch.testing.assert_close(logits, torch.tensor(records[0]["eval_logits"]), rtol=0, atol=atol)
    saved = json.loads((sharded_runs / case / "adapter" / "adapter_config.json").read_text())
    assert saved["modules_to_save"], "the task head is trained and saved"
    card = json.loads((sharded_runs / case / "adapter" / "peft_vision_ext.json").read_text())
    assert card["base_fingerprint"] and card["heads"], "the vision model card describes the whole, unsharded base"


@pytest.mark.parametrize("case", [c for c in fsdp_worker.CASES if c.startswith("adalora")])
def test_fsdp2_adalora_masks_the_same_singular_values_everywhere(case, sharded_runs):
    patterns = [record["rank_pattern"] for record in _records(sharded_runs, case)]
    assert patterns[0] and patterns[0] == patterns[1]
    config = fsdp_worker.config(case)
    kept = sum(sum(mask) for mask in patterns[0].values())
    assert kept == config.target_r * len(patterns[0]), "the final budget: target_r per layer on average"
    reference = fsdp_worker.train(case)
    assert patterns[0] == reference["rank_pattern"], "the same allocation as one process with the same global batch"


def test_fsdp1_lora_saves_and_adalora_is_refused_with_the_fsdp2_alternative(sharded_runs):
    """FSDP1 flattens parameters: LoRA (with the fused-qkv slices FSDP1's state-dict hooks once rejected) trains and
    saves an adapter that reloads with the wrapped model's outputs; AdaLoRA's allocation refuses (naming FSDP2)
    instead of PEFT's ``TypeError`` on the process that holds none of a factor."""
    records = [json.loads((sharded_runs / f"refusals_rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["lora_loss"] > 0 and record["adalora_loss"] > 0
        assert "FSDP1" in record["adalora_error"] and "shard_model" in record["adalora_error"]
    assert records[0]["lora_eval_logits"] == records[1]["lora_eval_logits"]
    folder = sharded_runs / "fsdp1-lora"
    from safetensors.torch import load_file

    saved = load_file(folder / "adapter_model.safetensors")
    assert not [key for key in saved if re.search(r"\.block\d+$", key)], "FSDP1's extra fused-slices keys dropped"
    assert any("lora_A" in key for key in saved) and any("lora_B" in key for key in saved), "the LoRA weights saved"
    reloaded = peft_vision_ext.load_adapter(str(folder), base_model=fsdp_worker.build("lora")).eval()
    with torch.no_grad():
        logits = reloaded(fsdp_worker.eval_inputs())
    torch.testing.assert_close(logits, torch.tensor(records[0]["lora_eval_logits"]), rtol=0, atol=1e-5)


def test_sharding_4bit_weights_names_the_fix(sharded_runs):
    """Plain ``fully_shard`` on a 4-bit base (quantized weights not ignored): an error that says what to do."""
    for rank in (0, 1):
        message = json.loads((sharded_runs / f"refusals_rank{rank}.json").read_text())["plain_fully_shard_4bit_error"]
        assert message and "quantized_parameters" in message and "shard_model" in message


def test_a_4bit_layer_without_quantization_state_raises_before_bitsandbytes():
    """The same check in one process: a Linear4bit whose weight became a plain parameter (as FSDP's gather leaves
    it)."""
    import peft_vision_ext as pve

    model = fsdp_worker.build("lora-4bit")
    layer = model.blocks[0].attn.qkv
    assert type(layer.weight).__name__ == "Params4bit"
    with torch.no_grad():
        before = model(fsdp_worker.eval_inputs())
    layer.weight = torch.nn.Parameter(layer.weight.data, requires_grad=False)
    with pytest.raises(RuntimeError, match="ignored_params=peft_vision_ext.distributed.quantized_parameters"):
        model(fsdp_worker.eval_inputs())
    assert pve.distributed.quantized_parameters(model) and before.isfinite().all()


def test_adalora_callback_allocates_checkpoints_and_resumes_sharded(sharded_runs):
    out = sharded_runs / "adalora-callback"
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert records[0]["rank_pattern"] and records[0]["rank_pattern"] == records[1]["rank_pattern"]
    checkpoint = out / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("adalora_rank_allocator*")) == [
        "adalora_rank_allocator.rank0-of-2.pt", "adalora_rank_allocator.rank1-of-2.pt"]
    for record in records:  # each process restored its own rows' statistics
        assert record["saved_ipt"] and record["restored_ipt"] == record["saved_ipt"]
    assert records[0]["saved_ipt"] != records[1]["saved_ipt"], "the processes hold different rows"
    # the checkpoint's adapter is written whole and unpruned (masked singular values included), loadable in one process
    reloaded = peft.PeftModel.from_pretrained(fsdp_worker.build("adalora"), str(checkpoint))
    init_r = fsdp_worker.config("adalora").init_r
    assert all(m.lora_E["default"].shape[0] == init_r for m in reloaded.modules() if hasattr(m, "lora_E"))


def test_trainer_style_save_of_a_sharded_model(sharded_runs):
    """Trainer under FSDP2 gathers a full state dict everywhere, then process 0 alone calls
    ``save_pretrained(state_dict=...)``: the vision card is made from that state dict (reading the shards on one
    process would hang) and the adapter reloads with a matching base fingerprint. Without a state dict, every process
    is told to use save_adapter instead of writing its shards."""
    out = sharded_runs / "trainer-style-save"
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reloaded = peft_vision_ext.load_adapter(str(out / "adapter"), base_model=fsdp_worker.build("lora")).eval()
    with torch.no_grad():
        logits = reloaded(fsdp_worker.eval_inputs())
    torch.testing.assert_close(logits, torch.tensor(records[0]["eval_logits"]), rtol=0, atol=1e-5)
    untrained = peft.get_peft_model(fsdp_worker.build("lora"), fsdp_worker.config("lora")).eval()
    with torch.no_grad():
        assert not torch.allclose(untrained(fsdp_worker.eval_inputs()), logits, atol=1e-4), "the trained adapter"
    for record in records:
        assert "save_adapter" in record["save_without_state_dict_error"]
    assert not (out / "shards").exists()
