"""The compatibility matrix, cell by cell, on the installed PEFT: supported cells train, reload and merge
correctly; refused cells are refused before the model is touched, and really do fail upstream."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel, get_peft_model, inject_adapter_in_model

import peft_vision_ext
from peft_vision_ext.compat import allow_unsupported, check, recommend
from peft_vision_ext.compat.kinds import LayerKind
from peft_vision_ext.compat.matrix import (
    DOCS_PAGE,
    KINDS,
    METHODS,
    Operation,
    Status,
    entry,
    matrix_markdown,
    peft_method,
)
from peft_vision_ext.compat.verify import cell_config, perturb_adapter, run_cell, tiny_model
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.versions import peft_version

CELLS = [(method, kind) for method in METHODS for kind in KINDS]
ROOT = Path(__file__).resolve().parents[1]


def _expected(method: str, kind: LayerKind) -> tuple[bool, bool]:
    """(train allowed, merge allowed) for the tiny cell model (its depthwise conv fails LoRA's rank condition)."""
    item = entry(method, kind, peft_version())
    assert item is not None, f"the matrix has no entry for {method} x {kind}"
    train = item.train.status.allowed and (item.condition is None or item.condition.holds(
        tiny_model(kind).layer, 4))
    return train, train and item.merge.status.allowed


def _snapshot(model: torch.nn.Module) -> tuple:
    return ([(name, type(module)) for name, module in model.named_modules()],
            {name: tensor.clone() for name, tensor in model.state_dict().items()},
            sorted(vars(model)))


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and a[1].keys() == b[1].keys() and all(
        torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize(("method", "kind"), CELLS, ids=[f"{m}-{k.value}" for m, k in CELLS])
def test_cell(method: str, kind: LayerKind) -> None:
    train, merge = _expected(method, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_cell(method, kind)
    if train and merge:
        assert run.ok, f"{method} on {kind}: {run.failed_stage}: {run.error}"
        assert run.init_diff <= 1e-4 and run.reload_diff <= 1e-6 and run.merge_diff <= run.merge_tolerance
    else:
        assert run.failed_stage == ("merge" if train else "inject"), run
        assert run.error.startswith("UnsupportedCombinationError"), run.error


@pytest.mark.parametrize(("method", "kind"), [c for c in CELLS if _expected(*c) != (True, True)],
                         ids=[f"{m}-{k.value}" for m, k in CELLS if _expected(m, k) != (True, True)])
def test_refused_cell_really_fails_upstream(method: str, kind: LayerKind) -> None:
    """Keeps the matrix honest: with the refusals off, PEFT crashes or is wrong exactly where we refuse."""
    train, _ = _expected(method, kind)
    with allow_unsupported(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_cell(method, kind)
    assert not run.ok, f"{method} on {kind} works on peft {peft.__version__}: the matrix refuses it needlessly"
    if train:
        assert run.failed_stage == "merge", run
    assert "UnsupportedCombinationError" not in run.error


@pytest.mark.parametrize(("method", "kind"), [c for c in CELLS if not _expected(*c)[0]],
                         ids=[f"{m}-{k.value}" for m, k in CELLS if not _expected(m, k)[0]])
def test_refusal_leaves_model_untouched_and_usable(method: str, kind: LayerKind) -> None:
    model = tiny_model(kind)
    before = _snapshot(model)
    with pytest.raises(UnsupportedCombinationError) as raised:
        get_peft_model(model, cell_config(method))
    assert _same(before, _snapshot(model))
    message = str(raised.value)
    assert "layer" in message and "Instead:" in message and "not modified" in message
    assert raised.value.method == peft_method(method) and isinstance(raised.value, ValueError)
    with pytest.raises(ValueError):  # ours, or PEFT's own for methods it never injects this way (VeRA)
        inject_adapter_in_model(cell_config(method), model)
    assert _same(before, _snapshot(model))
    # ... and the user goes on with a method the matrix supports on this layer, or (where none does, as on
    # ConvTranspose2d) trains it in full as the message says
    fallback = next((m for m in METHODS if _expected(m, kind)[0]), None)
    if fallback is None:
        assert "modules_to_save" in message
        return
    adapted = get_peft_model(model, cell_config(fallback))
    adapted(model.example_input())


@pytest.mark.parametrize(("method", "kind"), [c for c in CELLS if _expected(*c) == (True, False)],
                         ids=[f"{m}-{k.value}" for m, k in CELLS if _expected(m, k) == (True, False)])
def test_refused_merge_leaves_adapted_model_untouched(method: str, kind: LayerKind) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = get_peft_model(tiny_model(kind), cell_config(method))
        perturb_adapter(adapted)
        before = _snapshot(adapted)
        for merge in (adapted.merge_and_unload, adapted.merge_adapter, lambda: adapted.base_model.merge_and_unload()):
            with pytest.raises(UnsupportedCombinationError, match="Nothing was merged"):
                merge()
            assert _same(before, _snapshot(adapted))


class _TwoConvs(torch.nn.Module):
    def __init__(self, depthwise: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8 if depthwise else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.conv(x))


def test_add_adapter_load_adapter_and_from_pretrained_are_checked(tmp_path: Path) -> None:
    trained = get_peft_model(tiny_model(LayerKind.LINEAR), cell_config("loha"))
    trained.save_pretrained(tmp_path / "loha")
    quantized = tiny_model(LayerKind.BNB_4BIT)
    before = _snapshot(quantized)
    with pytest.raises(UnsupportedCombinationError, match="LoHa cannot adapt bnb-4bit"):
        PeftModel.from_pretrained(quantized, tmp_path / "loha")
    assert _same(before, _snapshot(quantized))

    lora_dw = peft.LoraConfig(r=4, target_modules=["dw"])
    get_peft_model(_TwoConvs(depthwise=False), lora_dw).save_pretrained(tmp_path / "lora_dw")
    adapted = get_peft_model(_TwoConvs(depthwise=True), peft.LoraConfig(r=4, target_modules=["conv"]))
    before = _snapshot(adapted)
    with pytest.raises(UnsupportedCombinationError, match="conv2d-grouped"):
        adapted.add_adapter("second", lora_dw)
    with pytest.raises(UnsupportedCombinationError, match="conv2d-grouped"):
        adapted.load_adapter(tmp_path / "lora_dw", adapter_name="third")
    assert _same(before, _snapshot(adapted)) and set(adapted.peft_config) == {"default"}


def test_hand_quantized_model_gets_bitsandbytes_layers() -> None:
    """Without the is_loaded_in_4bit mark PEFT wraps Linear4bit as a plain Linear (merge crashes)."""
    model = tiny_model(LayerKind.BNB_4BIT)
    assert not getattr(model, "is_loaded_in_4bit", False)
    adapted = get_peft_model(model, cell_config("lora"))
    assert type(adapted.base_model.model.layer).__module__.endswith("lora.bnb")


def test_unknown_method_passes_through_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method the data does not know (as a newer PEFT's would be): here HRA with its rows taken out."""
    from peft_vision_ext.matrix import verdicts as matrix

    monkeypatch.setattr(matrix, "MATRIX", tuple(e for e in matrix.MATRIX if e.method != "hra"))
    config = lambda: peft.HRAConfig(r=4, target_modules=["layer"])  # noqa: E731
    with pytest.warns(UserWarning, match="HRA.*not covered by the compatibility matrix.*matrix --verify"):
        get_peft_model(tiny_model(LayerKind.LINEAR), config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_peft_model(tiny_model(LayerKind.LINEAR), config())  # once per process


def test_field_advice_warns_but_does_not_refuse() -> None:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                            depth=1)
    report = check(vit, peft.LoHaConfig(r=4))
    assert report.ok and any("LoHa/LoKr on pure-transformer ViTs ended below LoRA" in text for text in report.advice)


def test_linear_fed_4d_input_is_detected_and_oft_refused_there() -> None:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
                            num_labels=3)
    model = ConvNextForImageClassification(config)
    report = check(model, peft.OFTConfig(r=0, oft_block_size=4, target_modules=["pwconv1"]))
    assert {m.kind for m in report.modules} == {LayerKind.LINEAR_4D}
    from peft_vision_ext.versions import peft_at_least

    if peft_at_least("0.22"):  # PEFT's OFT handles channels-last 4-D input from 0.22 (measured in the grid)
        assert report.ok
        adapted = get_peft_model(model, peft.OFTConfig(r=0, oft_block_size=4, target_modules=["pwconv1"]))
        assert torch.isfinite(adapted(torch.randn(1, 3, 32, 32)).logits).all()
        return
    assert not report.ok
    before = _snapshot(model)
    with pytest.raises(UnsupportedCombinationError, match="linear-4d"):
        get_peft_model(model, peft.OFTConfig(r=0, oft_block_size=4, target_modules=["pwconv1"]))
    assert _same(before, _snapshot(model))
    get_peft_model(model, peft.LoraConfig(r=4, target_modules=["pwconv1"]))(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("method", ["lora", "loha", "lokr", "adalora", "ia3"])
def test_check_counts_match_peft(method: str) -> None:
    import timm

    for model in (timm.create_model("mobilenetv2_050", pretrained=False, num_classes=4),
                  timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                                    patch_size=8, depth=2)):
        config = peft_vision_ext.preset_config(model, method, **({"total_step": 10} if method == "adalora" else {}))
        report = check(model, config)
        assert report.ok and all(m.adapter_params for m in report.modules)
        adapted = get_peft_model(copy.deepcopy(model), config)
        trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        assert report.trainable_params == trainable, (method, type(model).__name__)
        assert "trainable" in report.render()


def test_check_reports_refusals_without_touching() -> None:
    import timm

    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=4)
    before = _snapshot(model)
    report = check(model, peft.LoraConfig(r=4, target_modules=["conv_dw"]))
    assert not report.ok and report.refused() and "REFUSED" in report.render()
    assert _same(before, _snapshot(model))


@pytest.mark.parametrize(("model_name", "options"), [
    ("vit_tiny_patch16_224", {}), ("vit_tiny_patch16_224", {"memory": "high"}),
    ("vit_tiny_patch16_224", {"memory": "low"}), ("mobilenetv2_050", {}), ("mobilenetv2_050", {"memory": "low"}),
])
def test_recommendations_are_accepted(model_name: str, options: dict) -> None:
    import timm

    extra = {"img_size": 32, "patch_size": 8, "depth": 1} if "vit" in model_name else {}
    model = timm.create_model(model_name, pretrained=False, num_classes=4, **extra)
    advice = recommend(model, **options)
    assert check(model, advice.config).ok and advice.reasons and advice.learning_rate > 0
    assert advice.method == {"low": "lokr" if "mobilenet" in model_name else "lora"}.get(options.get("memory"), "lora")
    get_peft_model(model, advice.config)


def test_recommend_quantized_is_lora_and_segmentation_keeps_decode_head() -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation(SegformerConfig(num_channels=3, hidden_sizes=[8, 16, 32, 64],
                                                             depths=[1, 1, 1, 1], decoder_hidden_size=16,
                                                             num_attention_heads=[1, 1, 1, 1],
                                                             num_labels=3))
    advice = recommend(model, quantization="4bit")
    assert advice.method == "lora" and advice.learning_rate == 3e-3  # the rate our quantized runs measured
    assert "decode_head" in advice.config.modules_to_save
    assert any("segmentation" in reason for reason in advice.reasons)
    with pytest.raises(ValueError, match="quantization"):
        recommend(model, quantization="3bit")


def test_docs_matrix_matches_data() -> None:
    page = (ROOT / "docs" / "reference" / "matrix.md").read_text()
    match = re.search(r"<!-- generated: matrix -->\n(.*?)\n<!-- /generated: matrix -->", page, re.S)
    assert match, "docs/reference/matrix.md lacks the matrix block"
    # The page's copy links the per-cell page relative to itself and escapes runs of footnote marks for MkDocs.
    shown = match.group(1).replace("](compatibility.md)", f"]({DOCS_PAGE})").replace("] \\[", "] [")
    assert shown == matrix_markdown(), "docs/reference/matrix.md is stale: run `python docs/generate.py`"


def test_matrix_has_an_entry_for_every_cell_on_every_version() -> None:
    from packaging.version import Version

    for version in ("0.15", "0.17.1", "0.20", "0.21.2"):
        for method, kind in CELLS:
            assert entry(method, kind, Version(version)) is not None, (method, kind, version)
    statuses = {entry(m, k, peft_version()).verdict(op).status for m, k in CELLS for op in Operation}
    assert statuses == {Status.SUPPORTED, Status.PLUGIN, Status.REFUSED}


def test_cli_check_matrix_recommend(capsys: pytest.CaptureFixture[str]) -> None:
    from peft_vision_ext.cli import main

    assert main(["check", "timm:mobilenetv2_050", "--method", "lora", "--target-modules", "conv_dw"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED (train)" in out and "Instead:" in out and "REFUSED (merge)" not in out
    assert main(["check", "timm:mobilenetv2_050", "--method", "loha"]) == 0
    assert "trainable" in capsys.readouterr().out
    assert main(["matrix"]) == 0
    assert capsys.readouterr().out.strip() == matrix_markdown().strip()
    assert main(["recommend", "timm:mobilenetv2_050", "--memory", "low"]) == 0
    assert "method lokr" in capsys.readouterr().out
    for command in ("env", "presets", "check", "matrix", "recommend", "train"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0


def test_refusals_come_back_after_allow_unsupported() -> None:
    """The skip-a-repeated-check cache must not let a new model through (ids of dead objects get reused)."""
    for _ in range(3):
        with allow_unsupported(), pytest.raises(ValueError):
            get_peft_model(tiny_model(LayerKind.MHA), cell_config("ia3"))  # PEFT's own error
        with pytest.raises(UnsupportedCombinationError):
            get_peft_model(tiny_model(LayerKind.MHA), cell_config("ia3"))


def test_modules_to_save_suffix_matches_are_warned_about():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.head = torch.nn.Linear(4, 2)
            self.auxiliary_head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    from peft_vision_ext.compat.enforce import WHOLE_NAME_MATCHING, suffix_surprises
    from peft_vision_ext.versions import peft_at_least

    config = peft.LoraConfig(r=2, target_modules=["conv"], modules_to_save=["head"])
    if peft_at_least(WHOLE_NAME_MATCHING):  # peft >= 0.22 matches whole path components: nothing to warn about
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*PEFT matches names by string suffix")
            peft_model = peft.get_peft_model(TwoHeads(), config)
        wrapped = {n for n, m in peft_model.named_modules() if type(m).__name__ == "ModulesToSaveWrapper"}
        assert wrapped == {"base_model.model.head"}
        assert suffix_surprises(TwoHeads(), ["head"]) == {}
        return
    with pytest.warns(UserWarning, match=r"'head' also matches auxiliary_head \(PEFT matches names by string suffix\)"
                                         r": 10 more parameters"):
        peft_model = peft.get_peft_model(TwoHeads(), config)
    wrapped = {n for n, m in peft_model.named_modules() if type(m).__name__ == "ModulesToSaveWrapper"}
    assert wrapped == {"base_model.model.head", "base_model.model.auxiliary_head"}  # what the warning says
    assert suffix_surprises(TwoHeads(), ["model.head", "conv"]) == {}


def test_cli_check_names_preset_refusals_left_out_modules_and_routed_layers(capsys: pytest.CaptureFixture[str]) -> None:
    from peft_vision_ext.cli import main

    # every layer of the preset refused for the method: the matrix's reason, exit 1, no traceback
    assert main(["check", "torchvision:vit_b_16", "--method", "loha", "--preset", "attention"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("REFUSED: ") and "LoHa cannot adapt mha layers" in err and "Instead:" in err
    # LoRA with conv+depthwise on MobileNetV3: the depthwise convs are left out, and check says so
    assert main(["check", "torchvision:mobilenet_v3_small", "--method", "lora", "--preset", "conv+depthwise"]) == 0
    out = capsys.readouterr().out
    assert "left out by the preset: 11 conv2d-grouped layers" in out and "r is a multiple of groups" in out
    # timm BEiT: qkv is read by its attention's own F.linear, routed through the adapter
    assert main(["check", "timm:beit_base_patch16_224", "--method", "lora"]) == 0
    assert "routed: blocks.0.attn.qkv" in capsys.readouterr().out


def test_a_config_asking_for_a_non_identity_start_is_not_refused_for_changing_the_output():
    """A cell refused because PEFT's default initialisation changes the output (trainable tokens on a Linear, peft
    0.21.2) does not refuse a config that asks for exactly that (init_weights=False): it is unverified instead."""
    from packaging.version import Version

    from peft_vision_ext.matrix.verdicts import for_config

    item = entry("trainable_tokens", LayerKind.LINEAR, Version("0.21.2"))
    assert item is not None and item.measured.startswith("identity")
    default = peft.TrainableTokensConfig(target_modules=["layer"], token_indices=[0, 1])
    asked = peft.TrainableTokensConfig(target_modules=["layer"], token_indices=[0, 1], init_weights=False)
    assert for_config(item, default)[0].status is Status.REFUSED
    train, merge = for_config(item, asked)
    assert train.status is Status.UNVERIFIED and merge.status is Status.UNVERIFIED
    assert "init_weights=False" in train.reason


def test_the_probe_stays_silent_on_models_that_do_not_take_images():
    """A model that says nothing of images (PEFT's own toy MLPs) gets no "could not run" note; one that declares an
    image size and still cannot run does."""
    from torch import nn

    from peft_vision_ext.compat.check import inspect_targets

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin0 = nn.Linear(10, 20)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin0(x)

    class SaysImages(Mlp):
        image_size = 32  # declares an image input it cannot take

    config = peft.LoraConfig(target_modules=["lin0"])
    assert not [n for n in inspect_targets(Mlp(), config).notes if "could not run" in n]
    assert [n for n in inspect_targets(SaysImages(), config).notes if "could not run" in n]
