"""examples/image_classification.py under ``accelerate launch`` with 2 CPU processes (DDP over gloo).

Every rank dumps its trained adapter parameters (``--dump-rank-state``); DDP all-reduces gradients before the
optimizer step and AdaLoraCallback allocates ranks in ``on_optimizer_step`` from those gradients, so both ranks
must end bit-identical, AdaLoRA's pruned rank pattern included.

Launch line: ``accelerate launch --multi_gpu --num_processes 2`` with the script's ``--cpu`` flag. Not
``accelerate launch --cpu --num_processes 2``: with ``--cpu`` (and no ``--mpirun_hostfile``) accelerate uses its
single-process launcher and ignores ``--num_processes``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

import peft_vision_ext  # noqa: F401  (the plugin's hooks for reloading AdaLoRA on convolutions)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "image_classification.py"
TINY = ["--train-size", "240", "--test-size", "100", "--image-size", "32", "--batch-size", "8", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, *script_args: str) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
               str(SCRIPT), "--cpu", "--dump-rank-state", "--output-dir", str(out), *TINY, *script_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # PYTHONPATH (old lane) kept
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert result.stdout.count("RESULT ") == 1, "only the main process reports"


def _load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_image_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_ranks_identical(out: Path) -> tuple[dict, dict]:
    states = [load_file(out / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert states[0].keys() == states[1].keys() and states[0]
    different = [key for key in states[0] if not torch.equal(states[0][key], states[1][key])]
    assert not different, f"ranks diverged in {len(different)} tensors, e.g. {different[:3]}"
    infos = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [info["rank"] for info in infos] == [0, 1]
    assert infos[0]["world_size"] == infos[1]["world_size"] == 2
    return states[0], infos


def _check_metrics_and_reload(out: Path, atol: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["torch_distributed_world_size"] == 2
    assert metrics["trained_model_wrapper"] == "DistributedDataParallel"
    for package in ("peft", "transformers"):  # the launched processes ran on this lane
        expected = os.environ.get(f"PVE_EXPECT_{package.upper()}")
        assert metrics["versions"][package] == (expected or __import__(package).__version__)
    assert (out / "adapter_model.safetensors").is_file() and not list(out.rglob("*.bin"))
    example = _load_example()
    reference = load_file(out / "reference.safetensors")
    reloaded = peft.PeftModel.from_pretrained(example.load_base(str(out / "base")), str(out)).eval()
    with torch.no_grad():
        logits = reloaded(reference["pixel_values"])
    torch.testing.assert_close(logits, reference["logits"], atol=atol, rtol=0)
    return metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddp_lora_ranks_stay_identical(tmp_path):
    _launch(tmp_path, "--max-steps", "6")
    _check_ranks_identical(tmp_path)
    metrics = _check_metrics_and_reload(tmp_path, atol=1e-5)
    assert metrics["method"] == "lora" and metrics["train_steps"] == 6


def test_ddp_adalora_on_convolutions_allocates_the_same_ranks_everywhere(tmp_path):
    _launch(tmp_path, "--method", "adalora", "--max-steps", "16")
    _, infos = _check_ranks_identical(tmp_path)
    adalora = [info["adalora"] for info in infos]
    assert adalora[0] == adalora[1], "rank patterns and nonzero-E counts agree across ranks"
    nonzero = adalora[0]["nonzero_E"]
    assert len(nonzero) == 34 and min(nonzero.values()) < adalora[0]["init_r"], "ranks were pruned"
    assert sum(nonzero.values()) <= adalora[0]["target_r"] * len(nonzero)
    assert adalora[0]["rank_pattern"], "allocation finished: the config holds the final rank pattern"
    metrics = _check_metrics_and_reload(tmp_path, atol=1e-4)
    assert metrics["adalora_ranks"] == nonzero
