"""The numbers our advice quotes equal the results files, and the defaults follow those files' winners."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest

from peft_vision_ext.compat.recommend import CHOICES, KINDS, MEASURED_LR, MEMORY_LEVELS, choice_for
from peft_vision_ext.evidence import MEASURED, locate
from peft_vision_ext.fused.slices import DEFAULT_SLICES, PRESET_FUSED

ROOT = Path(__file__).resolve().parent.parent
#: the fused-projection tasks the presets' default rests on (benchmarks/fused_qkv.py --backbone vit / swin)
FUSED_TASKS = ("fused_qkv.json", "fused_qkv_swin.json")
WHOLE = "whole qkv, r=8"


@cache
def _results(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


@pytest.mark.parametrize("key", list(MEASURED))
def test_every_quoted_number_equals_its_results_file(key: str) -> None:
    item = MEASURED[key]
    actual = locate(_results(item.path), item.locate)
    assert round(actual, item.decimals) == pytest.approx(item.value, abs=10 ** -item.decimals / 2), (
        f"{key}: {item.path} now says {actual}; update peft_vision_ext/evidence.py and re-read the advice quoting it")


def test_the_adalora_peak_range_covers_every_adalora_run() -> None:
    tasks = _results(MEASURED["adalora.peak_low"].path)["tasks"]
    ratios = [row["peak_ratio_vs_lora"] for rows in tasks.values() for row in rows
              if row["variant"].startswith("AdaLoRA")]
    assert round(min(ratios), 2) == MEASURED["adalora.peak_low"].value
    assert round(max(ratios), 2) == MEASURED["adalora.peak_high"].value


def _winners(file: str) -> set[str]:
    """Slice variants whose paired mean beats whole-qkv LoRA by at least two standard errors on this task."""
    data = _results(f"benchmarks/results/{file}")
    seeds = data["settings"]["seeds"]
    assert seeds >= 5 and not data["settings"]["quick"], f"{file}: the rule needs 5 paired seeds, a full run"
    winners = set()
    for row in data["rows"]:
        if row["variant"] == WHOLE:
            continue
        standard_error = row["paired_difference_std"] / math.sqrt(seeds)
        if row["paired_difference_mean"] > 0 and row["paired_difference_mean"] >= 2 * standard_error:
            winners.add(row["variant"])
    return winners


def test_the_fused_default_follows_both_measured_tasks() -> None:
    """Slices become the presets' default only if a slice variant wins on every task; otherwise whole layers."""
    winners = set.intersection(*(_winners(file) for file in FUSED_TASKS))
    if not winners:
        assert PRESET_FUSED == "whole", f"no slice variant beats whole-qkv LoRA on {FUSED_TASKS}: default is whole"
    else:
        assert PRESET_FUSED == "slices", f"{winners} beat whole-qkv LoRA on every task: make slices the default"
        assert f"{'/'.join(DEFAULT_SLICES)} slices, r=8" in winners, f"the winning slices are {winners}"


def test_every_model_kind_quantization_and_memory_has_one_measured_choice() -> None:
    for kind in KINDS:
        for quantized in (False, True):
            for memory in MEMORY_LEVELS:
                assert choice_for(kind, quantized, memory).sources, (kind, quantized, memory)
    assert all(choice.sources for choice in CHOICES), "every recommendation quotes a measurement"


def test_the_recommended_recipe_is_the_one_the_benchmarks_ran() -> None:
    assert _results("benchmarks/results/adalora_vision.json")["settings"]["lr"] == MEASURED_LR
    for choice in CHOICES:
        assert choice.learning_rate == MEASURED_LR and choice.kwargs["r"] == 8
        assert choice.kwargs.get("lora_alpha", choice.kwargs.get("alpha")) == 16  # alpha = 2 x rank, as measured
