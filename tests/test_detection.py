"""Detection: the MNIST digit boxes, the ImageNet-backbone FCOS recipe, its default preset, COCO mAP, the training
loop (AdaLoRA included) and the recipe's reload with ``load_adapter`` (no base model passed)."""

import warnings

import numpy as np
import peft
import pytest
import torch

import peft_vision_ext
from peft_vision_ext.data import mnist_detection, mobilenet_v2_imagenet_state_dict
from peft_vision_ext.detection import (
    detection_tensors,
    detector_loss,
    detector_predict,
    fcos_mobilenet_v2,
    mean_average_precision,
    train_detector,
)
from peft_vision_ext.errors import BaseModelMismatchError
from peft_vision_ext.train import method_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=16, split="train", seed=0):
    return detection_tensors(*mnist_detection(n, split=split, seed=seed))


def test_digit_boxes_are_exact_and_the_splits_differ():
    images, targets = mnist_detection(40, split="train", seed=3)
    again, _ = mnist_detection(40, split="train", seed=3)
    test_images, _ = mnist_detection(40, split="test", seed=3)
    assert np.array_equal(images, again) and not np.array_equal(images, test_images)
    counts = [len(t["labels"]) for t in targets]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    ink = images > 64
    covered = np.zeros_like(ink)
    for image, mask, target in zip(images, covered, targets):
        assert set(target["labels"].tolist()) <= set(range(10))
        for x0, y0, x1, y1 in target["boxes"].astype(int):
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and 24 * 0.3 <= max(x1 - x0, y1 - y0) <= 56
            box = image[y0:y1, x0:x1] > 64
            # tight: ink on all four edges of the box
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            mask[y0:y1, x0:x1] = True
    assert not (ink & ~covered).any(), "every ink pixel lies in a box"


def test_recipe_family_default_preset_and_heads():
    model = fcos_mobilenet_v2(10)
    reference = mobilenet_v2_imagenet_state_dict()
    body = model.backbone.body.state_dict()
    assert torch.equal(body["0.0.weight"], reference["features.0.0.weight"])
    assert torch.equal(body["18.1.running_var"], reference["features.18.1.running_var"])
    rebuilt = fcos_mobilenet_v2(10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    assert peft_vision_ext.detect_family(model).family.name == "pve-fcos-mobilenet-v2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "also matches" warning for the parts inside the saved head
        config = peft_vision_ext.preset_config(model, "lora", r=4)
        peft_model = peft.get_peft_model(model, config)
    assert config.modules_to_save == ["backbone.fpn", "head"]
    targets = peft_model.base_model.targeted_module_names
    assert len(targets) == 34 and all(name.startswith("backbone.body.") for name in targets)
    assert "backbone.body.0.0" not in targets, "not the stem"
    for method in ("adalora", "loha", "lokr"):
        assert peft_vision_ext.presets.resolve_default(fcos_mobilenet_v2(10), method).preset == "backbone"


def test_every_adapter_and_new_part_is_used_and_trained():
    model = peft.get_peft_model(fcos_mobilenet_v2(10), peft_vision_ext.preset_config(fcos_mobilenet_v2(10), "lora",
                                                                                       r=4))
    images, targets = _data(4)
    called = set()
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: called.add(name))
             for name, module in model.named_modules() if hasattr(module, "lora_A")]
    model.train()
    loss = detector_loss(model, images, targets)
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert len(called) == 34
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not [n for n in missing if "lora_B" in n or "modules_to_save" in n], missing  # lora_A: 0 at init
    with torch.no_grad():  # perturbing the adapters moves the loss
        for module in model.modules():
            if hasattr(module, "lora_B"):
                module.lora_B["default"].weight.normal_(0, 0.1)
    assert not torch.isclose(detector_loss(model, images, targets), loss)


def test_mean_average_precision_scores_perfect_and_empty_detections():
    _, targets = _data(6, split="test")

    class Oracle(torch.nn.Module):
        def __init__(self, perfect):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.perfect = perfect
            self.calls = 0

        def forward(self, images):
            found = targets[self.calls: self.calls + len(images)]
            self.calls += len(images)
            return [{"boxes": t["boxes"] if self.perfect else torch.zeros(0, 4),
                     "scores": torch.ones(len(t["labels"]) if self.perfect else 0),
                     "labels": t["labels"] if self.perfect else torch.zeros(0, dtype=torch.long)} for t in found]

    images = torch.zeros(6, 3, 128, 128)
    assert mean_average_precision(Oracle(True), images, targets, batch_size=4)["map"] == pytest.approx(1.0)
    assert mean_average_precision(Oracle(False), images, targets, batch_size=4)["map_50"] <= 0.0


def test_adalora_ranks_are_allocated_by_the_loop():
    model = fcos_mobilenet_v2(10)
    config = method_config(model, "adalora", rank=2, total_steps=12)
    model = peft.get_peft_model(model, config)
    images, targets = _data(8)
    train_detector(model, images, targets, steps=12, batch_size=2, progress=False)
    ranks = [int((m.lora_E["default"] != 0).sum()) for m in model.modules() if hasattr(m, "lora_E")]
    assert len(ranks) == 34 and min(ranks) < 3 and sum(ranks) <= 2 * len(ranks)


def test_recipe_adapter_reloads_without_a_base_and_merges(tmp_path):
    model = peft.get_peft_model(fcos_mobilenet_v2(10), peft_vision_ext.preset_config(fcos_mobilenet_v2(10), "lora",
                                                                                       r=4))
    images, targets = _data(8)
    train_detector(model, images, targets, steps=3, batch_size=4, progress=False)
    peft_vision_ext.describe(model, task="object-detection")
    model.save_pretrained(tmp_path, safe_serialization=True)
    model.eval()
    expected = detector_predict(model, images[:4])
    reloaded = peft_vision_ext.load_adapter(str(tmp_path))
    merged_source = peft_vision_ext.load_adapter(str(tmp_path))
    merged = merged_source.merge_and_unload()
    for candidate, atol in ((reloaded, 0.0), (merged, 1e-3)):
        got = detector_predict(candidate.eval(), images[:4])
        for a, b in zip(expected, got):
            assert a["labels"].tolist() == b["labels"].tolist()
            torch.testing.assert_close(a["boxes"], b["boxes"], atol=atol, rtol=0)
            torch.testing.assert_close(a["scores"], b["scores"], atol=atol, rtol=0)
    other = fcos_mobilenet_v2(10)
    with torch.no_grad():
        other.backbone.body.get_submodule("5.conv.0.0").weight.add_(1e-3)
    with pytest.raises(BaseModelMismatchError):
        peft_vision_ext.load_adapter(str(tmp_path), base_model=other)


def test_an_unknown_recipe_is_a_clear_error():
    from peft_vision_ext.errors import AdapterLoadError
    from peft_vision_ext.hub.load import rebuild_base

    with pytest.raises(AdapterLoadError, match=r"no recipe 'retinanet_v9' \(it knows fcos_mobilenet_v2\).*base_model="):
        rebuild_base({"base_model": {"library": "peft_vision_ext", "builder": "retinanet_v9"}}, "x")
