"""The measured part of the compatibility matrix: the LoRA variants, every other PEFT method that wraps layers, and
the layer kinds added with them (Conv1d, Conv3d, ConvTranspose2d, Embedding). The stored grid must equal a fresh run
on this lane, and the plugin must refuse exactly the cells that fail there."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import peft
import pytest
import torch
from peft import get_peft_model
from torch import nn

import peft_vision_ext  # noqa: F401 - installs the hooks
from peft_vision_ext.compat import check, grid
from peft_vision_ext.compat.kinds import LayerKind, layer_kind
from peft_vision_ext.compat.matrix import KINDS, Status, config_rows, docs_markdown, entry
from peft_vision_ext.compat.rows import GENERATED, ROWS, installed
from peft_vision_ext.compat.verify import NEEDS_GPU, cell_config, run_cell, tiny_model
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.versions import peft_version

ROOT = Path(__file__).resolve().parents[1]
LANE = peft.__version__
MEASURED = grid.load().get(LANE, {})
CELLS = [(row, LayerKind(kind)) for row, kinds in MEASURED.items() for kind in kinds]
pytestmark = pytest.mark.skipif(not MEASURED, reason=f"peft {LANE} is not a measured lane (CI runs 0.17.1, 0.21.2)")


def test_stored_grid_equals_a_fresh_run_on_this_lane() -> None:
    """Keeps the data honest both ways: a refused cell still fails on this PEFT, a supported one still works."""
    fresh = grid.measure()
    assert grid.differences(MEASURED, fresh) == [], "re-run `python benchmarks/compat_grid.py --write` on this lane"


def test_every_installed_row_and_every_kind_is_measured() -> None:
    rows = {row.name for row in GENERATED if installed(row)}
    assert rows <= set(MEASURED)
    for row in rows:
        assert set(MEASURED[row]) == {kind.value for kind in KINDS}, row


@pytest.mark.parametrize(("row", "kind"), CELLS, ids=[f"{r}-{k.value}" for r, k in CELLS])
def test_plugin_refuses_exactly_the_cells_that_fail(row: str, kind: LayerKind) -> None:
    result = MEASURED[row][kind.value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_cell(row, kind)
    where = grid.stage(result)
    if result == grid.OK:
        assert run.ok, f"{row} on {kind}: {run.failed_stage}: {run.error}"
    elif where == NEEDS_GPU:
        assert run.failed_stage == NEEDS_GPU and not torch.cuda.is_available()
    elif where == "merge":
        assert run.failed_stage == "merge" and run.error.startswith("UnsupportedCombinationError"), run
    else:
        assert run.failed_stage == "inject", run
        # CorDA's own preprocessing (before get_peft_model, where the refusals run) may raise first
        ours = run.error.startswith("UnsupportedCombinationError")
        assert ours or (ROWS.get(row) is not None and ROWS[row].init == "corda"), run


def test_variant_refusal_names_the_variant_and_leaves_the_model_untouched() -> None:
    """DoRA on an 8-bit layer crashes at the first training step upstream; plain LoRA trains it."""
    model = tiny_model(LayerKind.BNB_8BIT)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = cell_config("lora-dora")
    assert config_rows("lora", config) == ["lora", "lora-dora"]
    with pytest.raises(UnsupportedCombinationError) as raised:
        get_peft_model(model, config)
    message = str(raised.value)
    assert "LoRA + DoRA" in message and "Instead: LoRA without DoRA" in message
    assert "not modified" in message
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    get_peft_model(model, cell_config("lora"))(model.example_input())


def test_pissa_is_judged_by_its_own_row() -> None:
    report = check(tiny_model(LayerKind.CONV2D), cell_config("lora-pissa"))
    assert not report.ok and "PiSSA" in report.modules[0].train.reason
    assert check(tiny_model(LayerKind.CONV2D), cell_config("lora")).ok
    assert check(tiny_model(LayerKind.LINEAR), peft.LoraConfig(init_lora_weights="pissa_niter_4",
                                                              target_modules=["layer"])).ok


def test_unknown_lora_variant_is_unverified_not_refused() -> None:
    config = cell_config("lora")
    config.init_lora_weights = "a-newer-init"
    report = check(tiny_model(LayerKind.LINEAR), config)
    assert report.ok and report.modules[0].train.status is Status.UNVERIFIED
    assert any("not covered by the compatibility matrix" in note for note in report.notes)


def test_new_layer_kinds_are_detected_structurally() -> None:
    class MyConv3d(nn.Conv3d):
        pass

    assert layer_kind(nn.Conv1d(2, 2, 3)) is LayerKind.CONV1D
    assert layer_kind(MyConv3d(2, 2, 3)) is LayerKind.CONV3D
    assert layer_kind(nn.ConvTranspose2d(2, 2, 2, stride=2)) is LayerKind.CONV_TRANSPOSE2D
    assert layer_kind(nn.Embedding(4, 8)) is LayerKind.EMBEDDING
    assert layer_kind(nn.LayerNorm(8)) is LayerKind.NORM
    assert layer_kind(nn.PReLU()) is LayerKind.OTHER
    wrapped = get_peft_model(tiny_model(LayerKind.CONV3D), cell_config("lora")).base_model.model.layer
    assert layer_kind(wrapped) is LayerKind.OTHER and layer_kind(wrapped.get_base_layer()) is LayerKind.CONV3D


def test_conv_transpose_has_no_adapting_method_and_says_train_in_full() -> None:
    item = entry("lora", LayerKind.CONV_TRANSPOSE2D, peft_version())
    assert item.train.status is Status.REFUSED and "modules_to_save" in item.train.instead


def test_docs_page_matches_data() -> None:
    page = (ROOT / "docs" / "reference" / "compatibility.md").read_text()
    assert page == docs_markdown() + "\n", "docs/reference/compatibility.md is stale: run `python docs/generate.py`"


@pytest.mark.parametrize("kind", [LayerKind.CONV1D, LayerKind.CONV3D, LayerKind.EMBEDDING])
def test_check_counts_adapters_on_the_new_kinds_as_peft_does(kind: LayerKind) -> None:
    report = check(tiny_model(kind), cell_config("lora"))
    adapted = get_peft_model(tiny_model(kind), cell_config("lora"))
    assert report.ok and report.adapter_params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_matrix_verify_measures_methods_the_data_lacks_into_the_cache(monkeypatch, tmp_path, capsys) -> None:
    """A method the shipped data does not know (as a newer PEFT's would be; here HRA with its rows taken out) is
    measured by `peft-vision matrix --verify` and written to the user's cache; it stays unverified."""
    from peft_vision_ext.cli import main
    from peft_vision_ext.matrix import rows
    from peft_vision_ext.matrix import verdicts as matrix

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(matrix, "MATRIX", tuple(e for e in matrix.MATRIX if e.method != "hra"))
    monkeypatch.setattr(matrix, "METHODS", ("lora",))
    # CorDA's preprocessing raises before the refusal on two cells the matrix refuses: not failures
    monkeypatch.setattr(rows, "GENERATED", (ROWS["lora-corda"], ROWS["hra"]))
    assert grid.unverified_rows() == ["hra"]
    assert main(["matrix", "--verify"]) == 0
    out = capsys.readouterr().out
    path = grid.local_path(peft.__version__)
    assert str(path) in out and "PEFT_VISION_EXT_LOCAL_GRID=1" in out and "hra" in out
    stored = json.loads(path.read_text())["lanes"][peft.__version__]
    assert grid.differences({"hra": MEASURED["hra"]}, stored) == []  # what the shipped data holds
    assert entry("hra", LayerKind.CONV3D, peft_version()) is None  # not opted in: still unverified


def test_local_results_count_only_when_opted_in_and_never_override_shipped_data(monkeypatch, tmp_path) -> None:
    from peft_vision_ext.matrix import verdicts as matrix

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = grid.local_path(peft.__version__)
    path.parent.mkdir(parents=True)
    local = {"newmethod": {"linear": "ok", "conv3d": "train: RuntimeError: boom"}, "hra": {"linear": "inject: x"}}
    path.write_text(json.dumps({"lanes": {peft.__version__: local}}))
    try:
        grid.load.cache_clear()
        assert "newmethod" not in grid.load().get(peft.__version__, {})
        monkeypatch.setenv(grid.LOCAL_OPT_IN, "1")
        grid.load.cache_clear()
        lane = grid.load()[peft.__version__]
        assert lane["newmethod"] == local["newmethod"] and lane["hra"] == MEASURED["hra"]
        entries = {(e.method, e.kind): e for e in matrix._generated_entries() if e.method == "newmethod"}
        assert entries[("newmethod", LayerKind.LINEAR)].train.status is Status.SUPPORTED
        assert entries[("newmethod", LayerKind.CONV3D)].train.status is Status.REFUSED
    finally:
        monkeypatch.delenv(grid.LOCAL_OPT_IN, raising=False)
        grid.load.cache_clear()


def test_writing_a_lane_never_stores_opted_in_local_results(monkeypatch, tmp_path) -> None:
    from peft_vision_ext.matrix import grid  # the data half (DATA, load, write) moved there

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = grid.local_path(peft.__version__)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"lanes": {peft.__version__: {"newmethod": {"linear": "ok"}}}}))
    data = tmp_path / "grid.json"
    data.write_text(grid.DATA.read_text())
    monkeypatch.setattr(grid, "DATA", data)
    monkeypatch.setenv(grid.LOCAL_OPT_IN, "1")
    try:
        grid.load.cache_clear()
        assert "newmethod" in grid.load()[peft.__version__]
        grid.write("0.0.1", {"hra": {"linear": "ok"}})
        stored = json.loads(data.read_text())["lanes"]
        assert "newmethod" not in stored[peft.__version__] and stored["0.0.1"] == {"hra": {"linear": "ok"}}
        assert list(stored)[0] == "0.0.1"  # lanes stay in version order
    finally:
        monkeypatch.delenv(grid.LOCAL_OPT_IN, raising=False)
        monkeypatch.undo()
        grid.load.cache_clear()
