"""AdaLoRA's vision defaults: derived schedule, orthonormal initialisation, comparable budget, regulariser gradient,
and adapters that plain PEFT still loads."""

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import timm
import torch
from peft.tuners.adalora.layer import AdaLoraLayer
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.adalora import (
    VISION_DEFAULTS,
    add_orthogonal_regularization_grad,
    apply_schedule,
    derive_schedule,
    orthogonal_regularization,
    use_adalora_init,
)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2).eval()


class _Unregistered(nn.Module):  # no registered family: PEFT's initialisation stays
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _layers(model: nn.Module) -> list[AdaLoraLayer]:
    return [m for m in model.modules() if isinstance(m, AdaLoraLayer)]


def _is_orthonormal(layer: AdaLoraLayer) -> bool:
    a, b = layer.lora_A["default"].detach(), layer.lora_B["default"].detach()
    eye = torch.eye(a.shape[0])
    return torch.allclose(a @ a.T, eye, atol=1e-5) and torch.allclose(b.T @ b, eye, atol=1e-5)


# --- schedule --------------------------------------------------------------------------------------------------------

def test_derive_schedule_is_fractions_of_the_run() -> None:
    assert derive_schedule(1000) == {"total_step": 1000, "tinit": 100, "tfinal": 300, "deltaT": 10}
    assert derive_schedule(12) == {"total_step": 12, "tinit": 1, "tfinal": 3, "deltaT": 1}
    for steps in range(1, 40):  # always at least one pruning step between warm-up and the final phase
        schedule = derive_schedule(steps)
        assert schedule["tinit"] < steps - schedule["tfinal"] - 1 or schedule["tinit"] == schedule["tfinal"] == 0
    assert derive_schedule(2) == {"total_step": 2, "tinit": 0, "tfinal": 0, "deltaT": 1}  # PEFT's, for smoke runs
    with pytest.raises(ValueError, match="at least one optimizer step"):
        derive_schedule(0)


def test_apply_schedule_derives_only_fields_left_at_peft_defaults() -> None:
    config = peft.AdaLoraConfig(init_r=4, target_r=2, total_step=50, tfinal=7, target_modules=["fc1"])
    assert apply_schedule(config, 200) == {"total_step": 200, "tinit": 20, "tfinal": 7, "deltaT": 2}
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (200, 20, 7, 2)
    kept = peft.AdaLoraConfig(init_r=4, target_r=2, total_step=50, target_modules=["fc1"])
    assert apply_schedule(kept, 200, "peft") == {"total_step": 200, "tinit": 0, "tfinal": 0, "deltaT": 1}
    too_long = peft.AdaLoraConfig(init_r=4, target_r=2, total_step=500, tinit=150, tfinal=60, target_modules=["fc1"])
    with pytest.raises(ValueError, match="too few for tinit=150"):
        apply_schedule(too_long, 200)
    with pytest.raises(ValueError, match="'derive' or 'peft'"):
        apply_schedule(kept, 200, "paper")
    # PEFT's allocator would crash at its first pruning step (kthvalue out of range): refused before training
    flat = peft.AdaLoraConfig(init_r=4, target_r=4, total_step=50, target_modules=["fc1"])
    with pytest.raises(ValueError, match="init_r=4 <= target_r=4: nothing to prune"):
        apply_schedule(flat, 200)
    with pytest.raises(ValueError, match="nothing to prune"):
        pve.preset_config(_vit(), "adalora", init_r=6, target_r=8, total_step=10)


# --- initialisation --------------------------------------------------------------------------------------------------

def test_vision_models_start_orthonormal_and_learn_through_e_from_the_first_step() -> None:
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base_out = model(x)
    peft_model = peft.get_peft_model(model, peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10,
                                                                target_modules=["qkv"]))
    layers = _layers(peft_model)
    assert len(layers) == 2 and all(_is_orthonormal(layer) for layer in layers)
    assert all(torch.equal(layer.lora_E["default"], torch.zeros(4, 1)) for layer in layers)
    torch.testing.assert_close(peft_model(x), base_out)  # the update starts at zero
    orth = orthogonal_regularization(peft_model)
    assert orth is not None and orth.item() < 1e-4  # factors start where the regulariser wants them
    peft_model(x).square().sum().backward()
    # linear in E at the start: every singular value gets a gradient; A and B do once E moves
    for layer in layers:
        assert (layer.lora_E["default"].grad.abs() > 0).all()


def test_unregistered_models_and_explicit_peft_init_keep_peft_initialisation() -> None:
    plain = peft.get_peft_model(_Unregistered(), peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10,
                                                                     target_modules=["fc1"]))
    chosen = peft.get_peft_model(_vit(), use_adalora_init(peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10,
                                                                              target_modules=["qkv"]), "peft"))
    for model in (plain, chosen):
        for layer in _layers(model):
            assert not _is_orthonormal(layer)
            assert 0.01 < layer.lora_A["default"].std().item() < 0.03  # PEFT's N(0, 0.02)
    with pytest.raises(ValueError, match="needs an AdaLoraConfig"):
        use_adalora_init(peft.LoraConfig(r=2), "orthonormal")
    with pytest.raises(ValueError, match="not one of"):
        use_adalora_init(peft.AdaLoraConfig(total_step=10), "svd")


# --- budget ----------------------------------------------------------------------------------------------------------

def test_preset_config_matches_a_lora_budget_and_fills_the_vision_defaults() -> None:
    model = _vit()
    config = pve.preset_config(model, "adalora", r=8, total_step=10)
    assert (config.target_r, config.init_r) == (8, 12)
    assert config.lora_alpha == round(VISION_DEFAULTS.alpha_per_rank * 12)
    # the regulariser weight by kind (measured): transformers 0, CNNs PEFT's 0.5
    assert config.orth_reg_weight == VISION_DEFAULTS.orth_reg_weight_for("transformer") == 0.0
    import torchvision

    cnn = torchvision.models.mobilenet_v2(num_classes=3)
    assert pve.preset_config(cnn, "adalora", r=8, total_step=10).orth_reg_weight == 0.5
    explicit = pve.preset_config(model, "adalora", init_r=6, target_r=2, lora_alpha=4, orth_reg_weight=0.5,
                                 total_step=10)
    assert (explicit.init_r, explicit.target_r, explicit.lora_alpha, explicit.orth_reg_weight) == (6, 2, 4, 0.5)
    assert pve.preset_config(model, "adalora", init_r=6, total_step=10).target_r == 4  # same ratio as r=...
    report = pve.check(model, config)
    assert report.adalora_ranks == (12, 8)
    assert report.adalora_final_params == round(report.adapter_params * 8 / 12)
    assert "AdaLoRA budget: rank 12 per layer" in report.render()
    assert "final budget of a LoRA with r=8" in report.render()
    # recommend() names AdaLoRA as the alternative (on par with LoRA on our tasks), with this preset_config call
    recommended = pve.recommend(model, memory="high")
    assert recommended.method == "lora"
    assert any("AdaLoRA (preset_config(model, 'adalora', r=8)" in text for text in recommended.alternatives)


# --- regulariser -----------------------------------------------------------------------------------------------------

def test_regulariser_gradient_equals_adding_the_term_to_the_loss() -> None:
    x = torch.randn(4, 3, 32, 32)

    def build() -> peft.PeftModel:
        config = use_adalora_init(peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["qkv"]),
                                  "peft")
        torch.manual_seed(1)
        return peft.get_peft_model(_vit(), config)

    reference, ours = build(), build()
    (reference(x).square().mean() + orthogonal_regularization(reference)).backward()
    ours(x).square().mean().backward()
    term = add_orthogonal_regularization_grad(ours)
    assert term is not None and term.item() > 0.1
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    actual = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=1e-5)
    ours.peft_config["default"].orth_reg_weight = 0.0
    assert add_orthogonal_regularization_grad(ours) is None


# --- plain PEFT loads what the vision defaults trained ------------------------------------------------------------

PLAIN_PEFT = textwrap.dedent("""
    import sys, torch
    from peft import PeftModel
    base = torch.load(sys.argv[1], weights_only=False).eval()
    model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
    with torch.no_grad():
        out = model(torch.load(sys.argv[2]))
    assert "peft_vision_ext" not in sys.modules
    torch.save(out, sys.argv[4])
""")


def test_trained_adapter_reloads_in_plain_peft_and_in_the_plugin(tmp_path: Path) -> None:
    model = _vit()
    base = copy.deepcopy(model)
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    steps = 12
    peft_model = peft.get_peft_model(model, pve.preset_config(model, "adalora", r=2, **derive_schedule(steps)))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        peft_model.train()
        nn.functional.cross_entropy(peft_model(x), y).backward()
        add_orthogonal_regularization_grad(peft_model)
        optimizer.step()
        peft_model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        out = peft_model(x)
        assert not torch.allclose(out, base(x), atol=1e-4), "the adapter moved the output"
    assert peft_model.peft_config["default"].rank_pattern
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["lora_alpha"] == peft_model.peft_config["default"].lora_alpha  # the scale travels in the config
    torch.save(base, tmp_path / "base.pt")
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(tmp_path / "base.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "adapter"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), out, atol=1e-5, rtol=1e-5)
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out, atol=1e-5, rtol=1e-5)
