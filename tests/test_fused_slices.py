"""LoRA on the q/v slices of fused projections (timm qkv / kv, nn.MultiheadAttention), in PEFT's own format."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
from model_zoo import ZOO, awake, model_output
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.fused import SIDECAR, BlockFactor, fused_plans

ATOL = 1e-5


def _pvt() -> nn.Module:
    import timm

    return timm.create_model("pvt_v2_b0", pretrained=False, num_classes=5, embed_dims=(8, 16, 32, 64),
                             depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


FAMILIES = {  # name -> (builder, input shape, fused layers expected)
    "timm-vit": (ZOO["timm-vit"][0], ZOO["timm-vit"][1], "qkv"),
    "timm-swin": (ZOO["timm-swin"][0], ZOO["timm-swin"][1], "qkv"),
    "timm-beit": (ZOO["timm-beit"][0], ZOO["timm-beit"][1], "qkv"),  # attention reads qkv.weight (routed)
    "timm-eva": (ZOO["timm-eva"][0], ZOO["timm-eva"][1], "qkv"),
    "timm-pvt-v2": (_pvt, (2, 3, 32, 32), "kv"),
    "tv-vit": (ZOO["tv-vit"][0], ZOO["tv-vit"][1], "mha"),
    "tv-swin": (ZOO["tv-swin"][0], ZOO["tv-swin"][1], "qkv"),
}


def _build(family: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    build, shape, _ = FAMILIES[family]
    return awake(build()).eval(), torch.randn(*shape)


def _sliced(model: nn.Module, preset: str = "attention", **kwargs: object) -> peft.PeftModel:
    # init_lora_weights=False: B is random too, so every slice moves the output
    config = pve.preset_config(model, "lora", preset, r=4, lora_alpha=8, init_lora_weights=False, fused="slices",
                               **kwargs)
    return get_peft_model(model, config).eval()


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_output(model(x))


def _reference(base: nn.Module, peft_model: peft.PeftModel, adapter: str = "default") -> nn.Module:
    """``base`` with every slice's delta (alpha / r) * B_s A_s added to its own rows, computed here from the factors:
    what separate q / k / v projections with their own LoRA would compute."""
    reference = copy.deepcopy(base)
    config = peft_model.peft_config[adapter]
    layers = dict(peft_model.base_model.model.named_modules())
    plans = fused_plans(config)
    with torch.no_grad():
        for name, layer in layers.items():  # whole-layer LoRA (an attention-full preset's proj): PEFT's own delta
            whole = name not in plans and adapter in getattr(layer, "lora_A", {})
            if whole and not isinstance(layer, nn.MultiheadAttention) and not name.endswith("out_proj"):
                reference.get_submodule(name).weight += layer.get_delta_weight(adapter)
        for name, plan in plans.items():
            layer = layers[name]
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            scale = plan.alpha / (plan.rank ** 0.5 if config.use_rslora else plan.rank)
            target = reference.get_submodule(name)
            weight = target.in_proj_weight if plan.mha else target.weight
            for i, part in enumerate(plan.slices):
                rows = slice(plan.layout.start(part), plan.layout.start(part) + plan.width)
                cols = slice(i * plan.rank, (i + 1) * plan.rank)
                weight[rows] += scale * b[rows, cols] @ a[cols]
            if plan.mha and plan.out_proj:
                out = layer.base_layer.out_proj
                weight = target.out_proj.weight
                weight += scale * out.lora_B[adapter].weight[:, :plan.rank] @ out.lora_A[adapter].weight[:plan.rank]
    return reference


@pytest.mark.filterwarnings("ignore:All adapters are already merged", "ignore:Already unmerged")  # PEFT's MHA
@pytest.mark.parametrize("family", list(FAMILIES))
def test_slices_equal_separate_projections_and_merge(family: str) -> None:
    model, x = _build(family)
    base = copy.deepcopy(model)
    peft_model = _sliced(model)
    plans = fused_plans(peft_model.peft_config["default"])
    assert plans, f"{family}: no fused layer was sliced"
    kind = FAMILIES[family][2]
    for name, plan in plans.items():
        assert plan.slices == (("v",) if kind == "kv" else ("q", "v")), name
        assert isinstance(peft_model.base_model.model.get_submodule(name).lora_B["default"], BlockFactor)
    out = _out(peft_model, x)
    assert not torch.allclose(out, _out(base, x), atol=1e-4), "the slices do not move the output"
    torch.testing.assert_close(out, _out(_reference(base, peft_model), x), atol=ATOL, rtol=ATOL)
    peft_model.merge_adapter()
    torch.testing.assert_close(_out(peft_model, x), out, atol=ATOL, rtol=ATOL)
    peft_model.unmerge_adapter()
    torch.testing.assert_close(_out(peft_model, x), out, atol=ATOL, rtol=ATOL)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(_out(merged, x), out, atol=ATOL, rtol=ATOL)


def test_trainable_parameters_equal_separate_q_v_projections() -> None:
    model, _ = _build("timm-vit")
    head = sum(p.numel() for p in model.head.parameters())
    model_before = copy.deepcopy(model)
    peft_model = _sliced(model)
    blocks = len(fused_plans(peft_model.peft_config["default"]))
    d = model.embed_dim
    trainable, _total = peft_model.get_nb_trainable_parameters()
    assert trainable == blocks * 2 * 4 * (d + d) + head
    # the same count as plain PEFT LoRA r=4 on separate q and v Linears of that size
    separate = get_peft_model(nn.Sequential(nn.Linear(d, d), nn.Linear(d, d)),
                              LoraConfig(r=4, target_modules=["0", "1"]))
    assert trainable - head == blocks * separate.get_nb_trainable_parameters()[0]
    report = pve.check(model_before, pve.preset_config(model_before, "lora", r=4, fused="slices"))
    assert report.trainable_params == trainable
    assert "q, v slices" in report.render()


def test_only_the_slices_train() -> None:
    model, x = _build("timm-vit")
    peft_model = _sliced(model).train()
    layer = peft_model.base_model.model.blocks[0].attn.qkv
    before = layer.lora_B["default"].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    model_output(peft_model(x)).pow(2).sum().backward()
    optimizer.step()
    after = layer.lora_B["default"].weight.detach()
    width = model.embed_dim
    assert torch.equal(after[width:2 * width], torch.zeros_like(after[width:2 * width])), "the k rows trained"
    assert not torch.equal(after[:width], before[:width]) and not torch.equal(after[2 * width:], before[2 * width:])


def test_attention_full_and_whole_layer_switch() -> None:
    model, x = _build("timm-vit")
    full = _sliced(copy.deepcopy(model), "attention-full")
    plans = fused_plans(full.peft_config["default"])
    assert {plan.slices for plan in plans.values()} == {("q", "k", "v")}
    assert all(full.peft_config["default"].rank_pattern[name] == 12 for name in plans)
    for config in (pve.preset_config(model, "lora", r=4, fused="whole"), pve.preset_config(model, "lora", r=4)):
        whole = get_peft_model(copy.deepcopy(model), config)  # "whole" is the default (PRESET_FUSED)
        assert not fused_plans(whole.peft_config["default"])
        assert not whole.peft_config["default"].rank_pattern
        assert isinstance(whole.base_model.model.blocks[0].attn.qkv.lora_B["default"], nn.Linear)
        assert not isinstance(whole.base_model.model.blocks[0].attn.qkv.lora_B["default"], BlockFactor)
    # target_modules=None takes the default preset, whole; use_fused_slices(config) asks for the q/v slices
    default = get_peft_model(copy.deepcopy(model), LoraConfig(r=4))
    assert not fused_plans(default.peft_config["default"])
    sliced = get_peft_model(copy.deepcopy(model), pve.use_fused_slices(LoraConfig(r=4)))
    assert {plan.slices for plan in fused_plans(sliced.peft_config["default"]).values()} == {("q", "v")}
    kept = get_peft_model(copy.deepcopy(model), pve.use_fused_slices(LoraConfig(r=4), "whole"))
    assert not fused_plans(kept.peft_config["default"])
    with pytest.raises(ValueError, match="use 'whole' or 'slices'"):
        pve.preset_config(model, "lora", r=4, fused="qv")


def test_other_methods_keep_whole_layers() -> None:
    model, _ = _build("timm-vit")
    for method, kwargs in (("loha", {"r": 4}), ("lokr", {"r": 4}), ("adalora", {"init_r": 4, "total_step": 10})):
        config = pve.preset_config(copy.deepcopy(model), method, **kwargs)
        peft_model = get_peft_model(copy.deepcopy(model), config)
        assert not fused_plans(peft_model.peft_config["default"]), method
    with pytest.raises(pve.FusedSlicesError, match="LoRA only"):
        pve.use_fused_slices(peft.LoHaConfig(r=4))


def _save(peft_model: peft.PeftModel, folder: Path) -> None:
    peft_model.save_pretrained(str(folder))
    assert (folder / SIDECAR).is_file()
    config = json.loads((folder / "adapter_config.json").read_text())
    for name, plan in fused_plans(peft_model.peft_config["default"]).items():
        assert config["rank_pattern"][name] == 4 * len(plan.slices)
    from safetensors.torch import load_file

    keys = load_file(str(folder / "adapter_model.safetensors"))
    assert all(key.endswith(("lora_A.weight", "lora_B.weight", "head.weight", "head.bias", "heads.head.weight",
                             "heads.head.bias")) for key in keys), sorted(keys)


PLAIN_PEFT = textwrap.dedent("""
    import sys, torch
    from peft import PeftModel
    base = torch.load(sys.argv[1], weights_only=False).eval()
    x = torch.load(sys.argv[2])
    model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
    with torch.no_grad():
        out = model(x)
    out = out if isinstance(out, torch.Tensor) else out.logits
    assert "peft_vision_ext" not in sys.modules
    torch.save(out, sys.argv[4])
""")


@pytest.mark.parametrize("family", ["timm-vit", "timm-pvt-v2", "tv-vit"])
def test_plain_peft_and_plugin_reload(family: str, tmp_path: Path) -> None:
    model, x = _build(family)
    base = copy.deepcopy(model)
    peft_model = _sliced(model)
    out = _out(peft_model, x)
    _save(peft_model, tmp_path / "adapter")
    torch.save(base, tmp_path / "base.pt")
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(tmp_path / "base.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "adapter"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    plain = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(plain, out, atol=ATOL, rtol=ATOL)
    # the plugin rebuilds the same trainable layout
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter"), is_trainable=True).eval()
    torch.testing.assert_close(_out(reloaded, x), out, atol=0, rtol=0)
    assert reloaded.get_nb_trainable_parameters() == peft_model.get_nb_trainable_parameters()
    names = fused_plans(peft_model.peft_config["default"])
    assert fused_plans(reloaded.peft_config["default"]) == names
    for name in names:
        assert isinstance(reloaded.base_model.model.get_submodule(name).lora_B["default"], BlockFactor)


def test_low_cpu_mem_usage_reload(tmp_path: Path) -> None:
    model, x = _build("timm-vit")
    base = copy.deepcopy(model)
    peft_model = _sliced(model)
    out = _out(peft_model, x)
    _save(peft_model, tmp_path)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path), low_cpu_mem_usage=True).eval()
    torch.testing.assert_close(_out(reloaded, x), out, atol=0, rtol=0)


def test_whole_layer_weights_under_a_sliced_sidecar_are_refused(tmp_path: Path) -> None:
    model, _ = _build("timm-vit")
    base = copy.deepcopy(model)
    _save(_sliced(copy.deepcopy(model)), tmp_path / "sliced")
    # a whole-layer LoRA of the stacked rank written over the sliced adapter's weights
    whole = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=["qkv"],
                                                            init_lora_weights=False, modules_to_save=["head"]))
    whole.save_pretrained(str(tmp_path / "whole"))
    (tmp_path / "whole" / SIDECAR).write_text((tmp_path / "sliced" / SIDECAR).read_text())
    with pytest.raises(RuntimeError, match="outside the trainable slices"):
        PeftModel.from_pretrained(base, str(tmp_path / "whole"))


def test_multiple_adapters(tmp_path: Path) -> None:
    model, x = _build("timm-vit")
    base = copy.deepcopy(model)
    peft_model = _sliced(model)
    out_default = _out(peft_model, x)
    second = pve.preset_config(base, "lora", "attention-full", r=2, lora_alpha=4, init_lora_weights=False,
                               fused="slices")
    peft_model.add_adapter("other", second)
    peft_model.set_adapter("other")
    out_other = _out(peft_model, x)
    assert not torch.allclose(out_other, out_default, atol=1e-4)
    torch.testing.assert_close(out_other, _out(_reference(base, peft_model, "other"), x), atol=ATOL, rtol=ATOL)
    peft_model.set_adapter("default")
    torch.testing.assert_close(_out(peft_model, x), out_default, atol=0, rtol=0)
    peft_model.save_pretrained(str(tmp_path))
    assert (tmp_path / "other" / SIDECAR).is_file()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    reloaded.load_adapter(str(tmp_path / "other"), adapter_name="other")
    reloaded.set_adapter("other")
    torch.testing.assert_close(_out(reloaded, x), out_other, atol=0, rtol=0)


def test_rank_pattern_and_rslora_keep_per_slice_scaling() -> None:
    model, x = _build("timm-vit")
    base = copy.deepcopy(model)
    config = pve.preset_config(model, "lora", r=4, lora_alpha=8, init_lora_weights=False, use_rslora=True,
                               rank_pattern={"qkv": 2}, fused="slices")
    peft_model = get_peft_model(model, config).eval()
    plans = fused_plans(config)
    assert {plan.rank for plan in plans.values()} == {2}
    assert all(config.rank_pattern[name] == 4 for name in plans)
    torch.testing.assert_close(_out(peft_model, x), _out(_reference(base, peft_model), x), atol=ATOL, rtol=ATOL)


def test_4bit_slices_train_and_reload(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    model, x = _build("timm-vit")
    pve.quantize(model, bits=4)
    peft_model = _sliced(model)
    plans = fused_plans(peft_model.peft_config["default"])
    assert plans
    layer = peft_model.base_model.model.get_submodule(next(iter(plans)))
    assert type(layer).__name__ == "Linear4bit" and isinstance(layer.lora_B["default"], BlockFactor)
    out = _out(peft_model, x)
    with peft_model.disable_adapter():
        assert not torch.allclose(_out(peft_model, x), out, atol=1e-4)
    peft_model.train()
    model_output(peft_model(x)).pow(2).sum().backward()
    assert all(block.grad is not None for block in layer.lora_B["default"].blocks)
    peft_model.zero_grad()
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path))
    rebuilt, _ = _build("timm-vit")
    pve.quantize(rebuilt, bits=4)
    reloaded = PeftModel.from_pretrained(rebuilt, str(tmp_path)).eval()
    torch.testing.assert_close(_out(reloaded, x), out, atol=ATOL, rtol=ATOL)


class _NoHeads(nn.Module):
    """An attention block whose fused qkv gives no head count: its slices cannot be determined."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 25)
        self.proj = nn.Linear(25, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.qkv(x))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _NoHeads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def test_undeterminable_slices_are_refused_before_the_model_is_touched() -> None:
    model = _Tiny()
    config = pve.use_fused_slices(LoraConfig(r=2, target_modules=["qkv"]))
    with pytest.raises(pve.FusedSlicesError, match=r"attn\.qkv.*cannot be determined.*'whole'"):
        get_peft_model(model, config)
    assert type(model.attn.qkv) is nn.Linear


def test_options_the_layout_cannot_take() -> None:
    model, _ = _build("timm-vit")
    explicit = pve.use_fused_slices(LoraConfig(r=4, target_modules=["qkv"], use_dora=True))
    with pytest.raises(pve.FusedSlicesError, match="use_dora"):
        get_peft_model(copy.deepcopy(model), explicit)
    assert type(model.blocks[0].attn.qkv) is nn.Linear
    # from a preset, DoRA keeps whole layers instead of failing
    implicit = pve.preset_config(model, "lora", r=4, use_dora=True)
    peft_model = get_peft_model(copy.deepcopy(model), implicit)
    assert not fused_plans(peft_model.peft_config["default"])
    with pytest.raises(pve.FusedSlicesError, match="at least one of q, k, v"):
        pve.use_fused_slices(LoraConfig(r=4), ["o"])


def test_a_preset_keeps_undeterminable_layers_whole_and_says_so() -> None:
    model = _Tiny()
    with pytest.warns(UserWarning, match=r"adapts attn\.qkv .* whole"):
        peft_model = get_peft_model(model, pve.preset_config(model, "lora", r=2, fused="slices"))
    assert isinstance(peft_model.base_model.model.attn.qkv.lora_B["default"], nn.Linear)


def test_resume_loads_into_the_existing_sliced_adapter(tmp_path: Path) -> None:
    """Trainer's resume_from_checkpoint: load_adapter into the adapter already there (no new injection)."""
    model, x = _build("timm-vit")
    peft_model = _sliced(model)
    out = _out(peft_model, x)
    _save(peft_model, tmp_path)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    assert not torch.allclose(_out(peft_model, x), out, atol=1e-4)
    peft_model.load_adapter(str(tmp_path), adapter_name="default", is_trainable=True)
    torch.testing.assert_close(_out(peft_model, x), out, atol=0, rtol=0)
    layer = peft_model.base_model.model.blocks[0].attn.qkv
    assert isinstance(layer.lora_B["default"], BlockFactor) and layer.lora_B["default"].block0.requires_grad


class _SeparateProjections(nn.Module):
    """A fused projection split into separate q / k / v Linears (concatenated like the fused one)."""

    def __init__(self, fused: nn.Linear, parts: tuple[str, ...]) -> None:
        super().__init__()
        self.parts = parts
        width = fused.out_features // len(parts)
        for index, part in enumerate(parts):
            linear = nn.Linear(fused.in_features, width, bias=fused.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(fused.weight[index * width:(index + 1) * width])
                if fused.bias is not None:
                    linear.bias.copy_(fused.bias[index * width:(index + 1) * width])
            setattr(self, part, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, part)(x) for part in self.parts], dim=-1)


@pytest.mark.parametrize("family", ["timm-vit", "timm-pvt-v2"])
def test_equal_to_plain_peft_lora_on_separate_projections(family: str) -> None:
    """The reference the LoRA paper means: separate q and v Linears, each with PEFT's own rank-r LoRA, given the
    slices' factors."""
    model, x = _build(family)
    reference = copy.deepcopy(model)
    peft_model = _sliced(model)
    plans = fused_plans(peft_model.peft_config["default"])
    # layers adapted whole (PVT's separate q) get the same LoRA in both
    whole = [name for name, module in peft_model.base_model.model.named_modules()
             if "default" in getattr(module, "lora_A", {}) and name not in plans]
    targets = list(whole)
    for name, plan in plans.items():
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, _SeparateProjections(reference.get_submodule(name), plan.parts))
        targets += [f"{name}.{part}" for part in plan.slices]
    separate = get_peft_model(reference, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                    modules_to_save=list(peft_model.peft_config["default"].
                                                                         modules_to_save))).eval()
    layers = dict(separate.base_model.model.named_modules())
    with torch.no_grad():
        for name in whole:
            for factor in ("lora_A", "lora_B"):
                getattr(layers[name], factor)["default"].weight.copy_(
                    getattr(peft_model.base_model.model.get_submodule(name), factor)["default"].weight)
        for name, plan in plans.items():
            fused = peft_model.base_model.model.get_submodule(name)
            a, b = fused.lora_A["default"].weight, fused.lora_B["default"].weight
            for index, part in enumerate(plan.slices):
                rows = slice(plan.layout.start(part), plan.layout.start(part) + plan.width)
                cols = slice(index * plan.rank, (index + 1) * plan.rank)
                layers[f"{name}.{part}"].lora_A["default"].weight.copy_(a[cols])
                layers[f"{name}.{part}"].lora_B["default"].weight.copy_(b[rows, cols])
    assert separate.get_nb_trainable_parameters() == peft_model.get_nb_trainable_parameters()
    torch.testing.assert_close(_out(separate, x), _out(peft_model, x), atol=ATOL, rtol=ATOL)


class _TimmClassifier(nn.Module):
    """A timm ViT behind the pixel_values/labels interface Trainer feeds."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.vit(pixel_values)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def test_trainer_checkpoints_and_resumes_the_sliced_layout(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    def build() -> peft.PeftModel:
        vit, _ = _build("timm-vit")
        config = pve.preset_config(vit, "lora", r=4, lora_alpha=8, fused="slices")
        config.target_modules = {f"vit.{name}" for name in config.target_modules}
        config.modules_to_save = ["vit.head"]
        return get_peft_model(_TimmClassifier(vit), config)

    generator = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": torch.tensor(i % 3)}
            for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trained = build()
    assert fused_plans(trained.peft_config["default"])
    Trainer(model=trained, args=args, train_dataset=data).train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / SIDECAR).is_file() and (tmp_path / "checkpoint-4" / SIDECAR).is_file()
    resumed = build()
    Trainer(model=resumed, args=args, train_dataset=data).train(resume_from_checkpoint=str(checkpoint))
    x = torch.stack([item["pixel_values"] for item in data[:4]])
    with torch.no_grad():
        torch.testing.assert_close(resumed.eval()(x)["logits"], trained.eval()(x)["logits"], atol=1e-5, rtol=1e-5)
    assert isinstance(resumed.base_model.model.vit.blocks[0].attn.qkv.lora_B["default"], BlockFactor)
