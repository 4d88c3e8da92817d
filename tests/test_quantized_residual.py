"""get_quantized_peft_model (QPiSSA, QOLoRA): the init runs on full precision, the residual is quantized; the adapter
is saved for the original base and load_adapter rebuilds exactly the trained model."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel

import peft_vision_ext as pve
from peft_vision_ext.compat.kinds import LayerKind, layer_kind
from peft_vision_ext.errors import BaseModelMismatchError, QuantizationError, UnsupportedCombinationError
from peft_vision_ext.fingerprints import fingerprint
from peft_vision_ext.hub.metadata import METADATA_FILE

VIT_ARGS = dict(img_size=32, patch_size=8, depth=2, num_classes=10)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pretrained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Block weights with a few dominant directions, as pretrained weights have (random init has a flat spectrum)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
                out_features, in_features = module.weight.shape
                module.weight += 0.1 * (torch.randn(out_features, 4, generator=generator)
                                        @ torch.randn(4, in_features, generator=generator))
    return model.eval()


def _local_vit(tmp_path: Path) -> torch.nn.Module:
    """A timm ViT saved to a local folder, so load_adapter can rebuild it without base_model."""
    import timm
    from timm.models._hub import save_for_hf

    model = _pretrained_like(timm.create_model("vit_tiny_patch16_224", **VIT_ARGS))
    save_for_hf(model, str(tmp_path / "base"), model_args=VIT_ARGS, safe_serialization=True)
    return timm.create_model(f"local-dir:{tmp_path / 'base'}", pretrained=True).eval()


def _config(init: str, **options) -> peft.LoraConfig:
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], init_lora_weights=init,
                           modules_to_save=["head"], **options)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _train(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(len(x)) % 10
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_qpissa_starts_closer_to_full_precision_than_plain_4bit() -> None:
    import timm

    model = _pretrained_like(timm.create_model("vit_tiny_patch16_224", **VIT_ARGS))
    x = torch.randn(8, 3, 32, 32)
    reference = model(x).detach()
    plain = pve.quantize(copy.deepcopy(model), bits=4)
    quantized_first = copy.deepcopy(plain)
    plain_error = (plain(x) - reference).abs().mean()
    config = _config("pissa")
    config.target_modules = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"  # every layer quantize() quantizes
    qpissa = pve.get_quantized_peft_model(model, config, bits=4).eval()
    qpissa_error = (qpissa(x) - reference).abs().mean()
    # the principal part of each weight stays exact in the factors; only the residual is quantized
    assert qpissa_error < 0.5 * plain_error, (qpissa_error, plain_error)
    assert layer_kind(qpissa.base_model.model.blocks[0].attn.qkv.get_base_layer()) is LayerKind.BNB_4BIT
    assert qpissa.peft_config["default"].init_lora_weights == "pissa"
    # PiSSA on a model quantized first: upstream raises at injection, the matrix refuses it and names this path
    with pve.allow_unsupported(), pytest.raises(TypeError, match="Please initialize PiSSA under float32"):
        peft.get_peft_model(copy.deepcopy(quantized_first), _config("pissa"))
    with pytest.raises(UnsupportedCombinationError, match="get_quantized_peft_model"):
        peft.get_peft_model(quantized_first, _config("pissa"))


@pytest.mark.parametrize("init,bits", [("pissa", 4), ("olora", 4), ("corda", 4), ("pissa", 8)])
def test_train_save_reload_merge(tmp_path: Path, init: str, bits: int) -> None:
    model = _local_vit(tmp_path)
    full_precision = copy.deepcopy(model)
    x = torch.randn(8, 3, 32, 32)
    config = _config(init)
    if init == "corda":  # CorDA's calibration, on the full-precision model as upstream's recipe has it
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        config.corda_config = CordaConfig()
        preprocess_corda(model, config, run_model=lambda: [model(sample[None]) for sample in x])
    adapted = pve.get_quantized_peft_model(model, config, bits=bits)
    start = adapted(x).detach()
    # the adapters are called: moving one layer's factors moves the output
    lora_b = adapted.base_model.model.blocks[1].mlp.fc1.lora_B["default"].weight
    with torch.no_grad():
        lora_b.add_(0.1)
        assert not torch.allclose(adapted(x), start)
        lora_b.sub_(0.1)
    _train(adapted, x)
    trained = adapted(x).detach()
    assert not torch.allclose(trained, start)
    adapted.save_pretrained(tmp_path / "adapter")

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # PEFT's conversion to a plain LoRA of rank 2r
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["quantization"]["bits"] == bits
    assert meta["quantization"]["residual_of"] == {"adapter": "default", "init": init, "r": 4, "lora_alpha": 8,
                                                   "rank_pattern": {}, "alpha_pattern": {}}
    # the fingerprint is the original full-precision base's, head excluded (trained in full)
    assert meta["base_fingerprint"] == fingerprint(full_precision.state_dict(), ["head"])
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"initialised with {init}" in card and f"of the residual after the {init} init" in card

    loaded = pve.load_adapter(str(tmp_path / "adapter"))  # rebuilds the base from its folder, checks it, quantizes
    torch.testing.assert_close(loaded(x), trained, atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    expected_kind = LayerKind.BNB_4BIT if bits == 4 else LayerKind.BNB_8BIT
    assert layer_kind(loaded.base_model.model.blocks[0].mlp.fc2) is expected_kind  # untargeted: plain quantized

    # plain PEFT: the converted adapter on the full-precision original, without the residual's quantization error
    plain = PeftModel.from_pretrained(copy.deepcopy(full_precision), str(tmp_path / "adapter")).eval()
    gap = (plain(x) - trained).abs().mean()
    scale = trained.abs().mean()
    assert 0 < gap < 0.1 * scale, (gap, scale)

    merged = pve.merge_and_unload(loaded)  # dequantized residual + the trained delta, in full precision
    # 4-bit layers compute with exactly the dequantized weights; bitsandbytes' 8-bit layers also quantize their
    # activations once they have run in training mode (test_quantization.py measures the same)
    tolerance = 1e-4 if bits == 4 else 0.05 * trained.abs().max().item()
    assert (merged(x) - trained).abs().max().item() <= tolerance

    resumed = pve.load_adapter(str(tmp_path / "adapter"), base_model=copy.deepcopy(full_precision),
                               is_trainable=True)
    torch.testing.assert_close(resumed.eval()(x), trained, atol=0, rtol=0)
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == {
        n for n, p in adapted.named_parameters() if p.requires_grad}


def test_only_the_original_base_is_accepted(tmp_path: Path) -> None:
    model = _local_vit(tmp_path)
    other = _pretrained_like(copy.deepcopy(model))  # a second low-rank bump: different weights
    quantized = pve.quantize(copy.deepcopy(model), bits=4)
    pve.get_quantized_peft_model(model, _config("pissa"), bits=4).save_pretrained(tmp_path / "adapter")
    with pytest.raises(BaseModelMismatchError, match="not the one the adapter was trained on"):
        pve.load_adapter(str(tmp_path / "adapter"), base_model=other)
    with pytest.raises(BaseModelMismatchError, match="unexpected"):  # quantized already: not the original
        pve.load_adapter(str(tmp_path / "adapter"), base_model=quantized)


@pytest.mark.parametrize("case", ["default init", "loftq", "dora", "adalora", "quantized", "adapted", "bits",
                                  "quant_type"])
def test_bad_input_is_refused_untouched(case: str) -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", **VIT_ARGS)
    config, options = _config("pissa"), {}
    message = {"default init": "init_lora_weights must be one of", "loftq": "LoftQ", "dora": "use_dora",
               "adalora": "LoraConfig", "quantized": "already quantized", "adapted": "already holds PEFT adapters",
               "bits": "bits must be 4 or 8", "quant_type": "quant_type"}[case]
    if case == "default init":
        config = _config(True)
    elif case == "loftq":
        config = _config("loftq", loftq_config=peft.LoftQConfig(loftq_bits=4))
    elif case == "dora":
        config = _config("pissa", use_dora=True)
    elif case == "adalora":
        config = peft.AdaLoraConfig(target_modules=["qkv"], total_step=10, init_lora_weights="pissa")
    elif case == "quantized":
        pve.quantize(model, bits=4)
    elif case == "adapted":
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["fc2"]))
    elif case == "bits":
        options = {"bits": 3}
    else:
        options = {"quant_type": "int4"}
    before = _snapshot(model)
    with pytest.raises(QuantizationError, match=message):
        pve.get_quantized_peft_model(model, config, **options)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_matrix_offers_this_path_for_every_residual_init() -> None:
    from peft_vision_ext.matrix.verdicts import _RESIDUAL_ROWS
    from peft_vision_ext.quantization.residual import RESIDUAL_INITS

    assert _RESIDUAL_ROWS == tuple(f"lora-{init}" for init in RESIDUAL_INITS)


class _Classifier(torch.nn.Module):
    """A timm ViT with the (pixel_values, labels) -> loss interface transformers.Trainer expects."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values, labels=None):
        logits = self.vit(pixel_values)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


@pytest.mark.parametrize("bits", [None, 4])
def test_trainer_resumes_from_a_converted_checkpoint(tmp_path: Path, bits: int | None) -> None:
    """Checkpoints are saved converted (rank 2r, for the original base); Trainer's resume_from_checkpoint loads them
    into the rank-r adapter that trains on the residual (PEFT: size mismatch). A resumed run ends like a straight
    one."""
    import timm
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    dataset = [{"pixel_values": images[i], "labels": labels[i]} for i in range(16)]
    vit = _pretrained_like(timm.create_model("vit_tiny_patch16_224", **VIT_ARGS))

    def run(folder: str, callbacks: list, resume: str | None = None) -> PeftModel:
        torch.manual_seed(0)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], init_lora_weights="pissa",
                                 modules_to_save=["vit.head"])
        model = _Classifier(copy.deepcopy(vit))
        model = (peft.get_peft_model(model, config) if bits is None
                 else pve.get_quantized_peft_model(model, config, bits=bits))
        args = TrainingArguments(output_dir=str(tmp_path / folder), max_steps=4, per_device_train_batch_size=4,
                                 learning_rate=1e-2, lr_scheduler_type="constant", save_steps=2, report_to=[],
                                 use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks).train(resume_from_checkpoint=resume)
        return model

    straight = run("a", [])
    run("b", [StopAt()])
    saved = json.loads((tmp_path / "b" / "checkpoint-2" / "adapter_config.json").read_text())
    assert saved["r"] == 8  # converted
    resumed = run("b", [], resume=str(tmp_path / "b" / "checkpoint-2"))
    expected, actual = peft.get_peft_model_state_dict(straight), peft.get_peft_model_state_dict(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4)
