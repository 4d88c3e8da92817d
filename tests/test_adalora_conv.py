"""AdaLoRA on Conv2d (the plugin's layer): exact math, merge, save/load, rank allocation, upstream compatibility."""

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_vision_ext import peft_hooks
from peft_vision_ext.adalora import AdaLoraConv2d
from peft_vision_ext.adalora.functional import pad_for
from peft_vision_ext.versions import peft_at_least


def _perturb(model, scale=0.3):
    """AdaLoRA initialises E to zero (a no-op adapter); give every adapter a real update."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(k in name for k in ("lora_A", "lora_B", "lora_E")):
                parameter.copy_(torch.randn_like(parameter) * scale)


class ConvNet(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    depthwise = draw(st.booleans()) and groups > 1
    in_ch = groups * draw(st.integers(1, 3))
    out_ch = in_ch if depthwise else groups * draw(st.integers(1, 3))
    if depthwise:
        groups = in_ch
    kernel = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (5, 5)]))
    return dict(
        in_channels=in_ch, out_channels=out_ch, kernel_size=kernel, groups=groups,
        stride=draw(st.sampled_from([1, 2])), dilation=draw(st.sampled_from([1, 2])),
        padding=draw(st.sampled_from([0, 1, 2])), padding_mode=draw(st.sampled_from(["zeros", "reflect", "circular"])),
        bias=draw(st.booleans()),
    ), draw(st.integers(1, 4))


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_layer_equals_conv_with_materialised_delta_and_merge_equals_forward(config):
    conv_kwargs, rank = config
    torch.manual_seed(0)
    conv = nn.Conv2d(**conv_kwargs)
    pristine = copy.deepcopy(conv)  # merge + unmerge changes the base weight by float rounding
    model = peft.get_peft_model(ConvNet(conv), peft.AdaLoraConfig(init_r=rank, target_r=rank, total_step=10,
                                                                   target_modules=["conv"], lora_alpha=2))
    layer = model.base_model.model.conv
    assert isinstance(layer, AdaLoraConv2d)
    _perturb(model)
    x = torch.randn(2, conv_kwargs["in_channels"], 9, 9)
    base = layer.get_base_layer()
    delta = layer.get_delta_weight("default")
    assert delta.shape == base.weight.shape
    padded, padding = pad_for(base, x)
    expected = base(x) + F.conv2d(padded, delta, stride=base.stride, padding=padding, dilation=base.dilation,
                                  groups=base.groups)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        layer.merge()
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
    # save/load round trip is exact
    fresh = peft.get_peft_model(ConvNet(pristine), peft.AdaLoraConfig(
        init_r=rank, target_r=rank, total_step=10, target_modules=["conv"], lora_alpha=2))
    peft.set_peft_model_state_dict(fresh, peft.get_peft_model_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=0, rtol=0)
        torch.testing.assert_close(fresh.base_model.model.conv.get_delta_weight("default"), delta, atol=0, rtol=0)


class MixedNet(nn.Module):
    """Conv kxk, depthwise conv, pointwise conv and a Linear head input: AdaLoRA across all of them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.conv(x))))))
        return self.classifier(torch.relu(self.fc(x.mean((2, 3)))))


def _adalora_config(**overrides):
    kwargs = dict(init_r=4, target_r=2, tinit=2, tfinal=2, total_step=12, deltaT=1, lora_alpha=4,
                  target_modules=["conv", "dw", "pw", "fc"], modules_to_save=["classifier"])
    kwargs.update(overrides)
    return peft.AdaLoraConfig(**kwargs)


def _train(model, steps=12):
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    for step in range(steps):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    return x


def test_rank_allocation_across_conv_and_linear_with_save_and_load(tmp_path):
    torch.manual_seed(0)
    base = MixedNet()
    reference_base = copy.deepcopy(base)
    model = peft.get_peft_model(base, _adalora_config())
    x = _train(model)
    rank_pattern = model.peft_config["default"].rank_pattern
    assert rank_pattern, "the final allocation step must record a rank pattern"
    assert {k.split(".lora_E")[0] for k in rank_pattern} == {"conv", "dw", "pw", "fc"}
    kept = sum(sum(v) for v in rank_pattern.values())
    assert kept <= 2 * 4, "the budget (target_r x modules) is respected"
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(reference_base, tmp_path).eval()
    # (PEFT drops the adapter name from the keys when it saves the pattern.)
    assert loaded.peft_config["default"].rank_pattern == {k.replace(".default", ""): v for k, v in rank_pattern.items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)
    merged = loaded.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)


def test_default_cnn_preset_uses_the_plugin_layer_on_every_peft():
    import timm

    model = timm.create_model("mobilenetv2_050", num_classes=3)
    peft_model = peft.get_peft_model(model, peft.AdaLoraConfig(total_step=10, init_r=2, target_r=1))
    layers = [m for m in peft_model.modules() if isinstance(m, AdaLoraConv2d)]
    assert layers
    peft_model(torch.randn(2, 3, 32, 32)).sum().backward()
    depthwise = peft.get_peft_model(timm.create_model("mobilenetv2_050", num_classes=3),
                                    peft.AdaLoraConfig(total_step=10, init_r=2, target_r=1,
                                                       target_modules=["conv_dw"]))
    assert all(m.get_base_layer().groups > 1 for m in depthwise.modules() if isinstance(m, AdaLoraConv2d))
    depthwise(torch.randn(2, 3, 32, 32)).sum().backward()


@pytest.mark.skipif(not peft_at_least("0.20"), reason="upstream AdaLoRA has Conv2d only from peft 0.20")
@pytest.mark.parametrize("direction", ["upstream->ours", "ours->upstream"])
def test_checkpoints_interchange_with_upstream_svdconv2d(direction, tmp_path, monkeypatch):
    from peft.tuners.adalora.layer import SVDConv2d
    from peft.tuners.adalora.model import AdaLoraModel

    upstream_dispatch = staticmethod(peft_hooks.ORIGINALS["adalora-conv2d"])
    ours_dispatch = AdaLoraModel.__dict__["_create_new_module"]
    config = dict(init_r=4, target_r=4, total_step=10, lora_alpha=4, target_modules=["conv"])
    torch.manual_seed(0)
    base = ConvNet(nn.Conv2d(4, 6, 3, stride=2, padding=1))
    x = torch.randn(2, 4, 10, 10)

    save_with, load_with = (upstream_dispatch, ours_dispatch) if direction == "upstream->ours" else \
        (ours_dispatch, upstream_dispatch)
    monkeypatch.setattr(AdaLoraModel, "_create_new_module", save_with)
    saved = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(**config))
    _perturb(saved)
    saved.eval()
    with torch.no_grad():
        expected = saved(x)
    saved.save_pretrained(tmp_path)
    monkeypatch.setattr(AdaLoraModel, "_create_new_module", load_with)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    layer_type = AdaLoraConv2d if direction == "upstream->ours" else SVDConv2d
    assert type(loaded.base_model.model.conv) is layer_type
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=2e-6, rtol=1e-5)
