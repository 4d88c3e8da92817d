"""The integration itself: import registers hooks idempotently and cheaply; PEFT is unchanged elsewhere."""

import os
import subprocess
import sys

import peft
import pytest
import torch
from torch import nn

import peft_vision_ext
from peft_vision_ext import peft_hooks
from peft_vision_ext.cli import main as cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lane_versions_are_the_expected_ones():
    """CI sets PVE_EXPECT_PEFT / PVE_EXPECT_TRANSFORMERS per lane; a lane that silently ran other versions fails."""
    import transformers

    expected_peft = os.environ.get("PVE_EXPECT_PEFT")
    expected_transformers = os.environ.get("PVE_EXPECT_TRANSFORMERS")
    if expected_peft:
        assert peft.__version__ == expected_peft
    if expected_transformers:
        assert transformers.__version__ == expected_transformers
    assert peft_hooks.active_hooks(), "importing peft_vision_ext must install its hooks"


def test_register_is_idempotent():
    from peft.tuners.tuners_utils import BaseTuner

    before_fn = BaseTuner.inject_adapter
    before_hooks = peft_hooks.active_hooks()
    assert peft_vision_ext.register() == before_hooks
    peft_hooks.install()
    import importlib

    importlib.reload(peft_vision_ext)
    assert BaseTuner.inject_adapter is before_fn
    assert peft_hooks.active_hooks() == before_hooks


def test_import_is_cheap_and_loads_nothing_beyond_peft():
    """Importing the plugin after peft loads only the plugin's own modules (no timm, no data packages)."""
    code = ("import sys; import peft; before = set(sys.modules); import peft_vision_ext; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['peft_vision_ext']"


def _tiny_bert():
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    return transformers.BertModel(config)


def test_text_model_defaults_are_peft_own():
    model = peft.get_peft_model(_tiny_bert(), peft.LoraConfig(r=2))
    assert set(model.peft_config["default"].target_modules) == {"query", "value"}
    assert model.peft_config["default"].modules_to_save is None


def test_model_without_adaptable_layers_gets_peft_own_error():
    class Nothing(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(Nothing(), peft.LoraConfig(r=2))


def test_explicit_targets_and_modules_to_save_are_never_rewritten():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32,
                              num_heads=2, num_classes=3)
    config = peft.LoraConfig(r=2, target_modules=["blocks.0.mlp.fc1"])
    peft_model = peft.get_peft_model(model, config)
    assert set(peft_model.peft_config["default"].target_modules) == {"blocks.0.mlp.fc1"}
    assert peft_model.peft_config["default"].modules_to_save is None

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32,
                              num_heads=2, num_classes=3)
    config = peft.LoraConfig(r=2, modules_to_save=["norm"])
    peft_model = peft.get_peft_model(model, config)
    assert peft_model.peft_config["default"].modules_to_save == ["norm"]
    assert set(peft_model.peft_config["default"].target_modules) == {"blocks.0.attn.qkv"}


def test_cli_env(capsys):
    assert cli_main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "peft", "transformers", "timm", "bitsandbytes", "accelerate", "vision-default-targets"):
        assert name in out
    assert f"peft             {peft.__version__}" in out
    assert "bitsandbytes can quantize: yes" in out


def test_cli_presets(capsys):
    assert cli_main(["presets", "timm:resnet18", "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    assert "family timm-resnet" in out
    assert "| conv *" in out


@pytest.mark.parametrize("command", [[], ["env"], ["presets"], ["train"]])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: peft-vision" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "peft_vision_ext", "env"], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert "add-ons active" in out.stdout


def test_cli_presets_for_a_local_transformers_config_and_torchvision(tmp_path, capsys):
    import transformers

    transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8, num_labels=3).save_pretrained(tmp_path)
    assert cli_main(["presets", f"hf:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "family hf-vit" in out and "| attention *" in out and "classifier" in out
    assert cli_main(["presets", "torchvision:mobilenet_v3_small", "--method", "loha"]) == 0
    assert "family tv-mobilenet" in capsys.readouterr().out


def test_bad_model_spec_is_a_clear_error():
    from peft_vision_ext.models import build_model

    with pytest.raises(ValueError, match="timm:NAME, torchvision:NAME or hf:PATH_OR_TYPE"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="Unknown model library 'keras'"):
        build_model("keras:resnet")
