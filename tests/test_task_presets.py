"""Task families (detection, instance/semantic segmentation, keypoints, depth, ...): every default trains the
re-initialised prediction heads in full, every default target is called by the forward and moves the loss, and a
saved adapter reloads and merges to the same model, on both lanes."""

import peft
import pytest
import torch
import transformers
from model_zoo import METHOD_CONFIGS
from task_zoo import TASK_ZOO
from task_zoo_hf import NEW_LANE_ONLY
from torch import nn

import peft_vision_ext as pve
from peft_vision_ext.hub.card import infer_task
from peft_vision_ext.presets import PRESETS, Role, detect_family, list_presets, resolve_default, resolve_targets
from peft_vision_ext.presets.families import families

CASES = dict(TASK_ZOO)
TV_CASES = {case for case in CASES if not case.startswith(("hf-", "pve-"))}


def _build(case, num_classes=None, seed=0):
    if case.removeprefix("hf-") in NEW_LANE_ONLY and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"{case} is not in transformers {transformers.__version__}")
    family, build, loss = CASES[case]
    torch.manual_seed(seed)
    return build() if num_classes is None else build(num_classes)


def _loss(case, model):
    """One training-mode loss on fixed data. BatchNorms normalise with the batch's statistics but never update their
    running ones (base state an adapter does not save): at random init their running statistics would shrink
    SSDlite's features to 1e-12, where no adapter could move the loss."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = 0.0
    torch.manual_seed(0)  # RPN / RoI sampling draws random numbers
    loss = CASES[case][2](model)
    for norm in norms:  # counted even at momentum 0
        norm.num_batches_tracked.zero_()
    return loss


def _one_per_family():
    """The first (lightest-listed) case of every family: the default suite's cases for the other methods."""
    chosen = {}
    for case, (family, _, _) in CASES.items():
        chosen.setdefault(family, case)
    return sorted(chosen.values())


#: The default suite runs the costlier tests on these; the full cross product is marked slow.
_FIRST_OF_FAMILY = set(_one_per_family())


#: Models whose random-init output saturates (ZoeDepth's metric bins): the adapters' effect is checked where the
#: pretrained part hands its features on.
_PROBES = {"hf-zoedepth": "neck"}


def _probe(case, peft_model):
    """Outputs of the case's probe module, one per forward (empty when the loss itself is checked)."""
    seen = []
    if case in _PROBES:
        module = peft_model.get_base_model().get_submodule(_PROBES[case])
        module.register_forward_hook(lambda m, a, output: seen.append(_flat(output)))
    return seen


def _flat(output):
    if isinstance(output, torch.Tensor):
        return output.detach().flatten()
    return torch.cat([_flat(o) for o in output])


def _class_dependent(case):
    """Parameters whose shape depends on the number of classes: what a user re-initialises for new classes."""
    small = {n: p.shape for n, p in _build(case, 3).named_parameters()}
    large = {n: p.shape for n, p in _build(case, 5).named_parameters()}
    return sorted(n for n in small if small[n] != large.get(n))


def test_every_task_family_has_a_test_model():
    task_families = {f.name for f in families() if f.task}
    assert task_families <= {family for family, _, _ in CASES.values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_re_initialised_heads_go_to_modules_to_save_and_presets_say_where(case):
    model = _build(case)
    detection = detect_family(model)
    assert detection.family.name == CASES[case][0]
    resolution = resolve_default(model, "lora")
    heads = resolution.modules_to_save
    dependent = _class_dependent(case)
    uncovered = [n for n in dependent if not any(n.startswith(h + ".") for h in heads)]
    assert not uncovered, f"class-dependent parameters outside modules_to_save: {uncovered}"
    if case in TV_CASES:  # torchvision: heads are exactly the class-dependent modules, the rest is adapted
        assert dependent
        for head in heads:
            assert any(n.startswith(head + ".") for n in dependent), head
    presets = list_presets(model)
    for name, modules in presets.items():
        assert modules == resolve_targets(model, name)
        assert not any(m == h or m.startswith(h + ".") for m in modules for h in heads)
    assert resolution.target_modules == list_presets(model, "lora")[resolution.preset]
    for preset in ("backbone", "backbone+neck", "heads", "pretrained"):
        if PRESETS[preset].parts and any(p.value in detection.parts_found() for p in PRESETS[preset].parts):
            assert preset in presets


@pytest.mark.parametrize("case", [pytest.param(case, marks=() if case in _FIRST_OF_FAMILY else pytest.mark.slow)
                                  for case in sorted(CASES)])
def test_lora_default_is_live_trains_heads_reloads_and_merges(case, tmp_path):
    peft_model = peft.get_peft_model(_build(case), peft.LoraConfig(r=4))
    targets = set(peft_model.base_model.targeted_module_names)
    assert targets == set(resolve_default(_build(case), "lora").target_modules)
    probe = _probe(case, peft_model)
    called = set()
    hooks = [peft_model.get_base_model().get_submodule(name).register_forward_hook(
        lambda module, args, output, name=name: called.add(name)) for name in targets]
    loss = _loss(case, peft_model)
    for hook in hooks:
        hook.remove()
    assert called == targets, f"targets the forward never calls: {sorted(targets - called)[:5]}"
    with torch.no_grad():  # every adapter moves the loss once its B factor is non-zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    before = list(probe)
    perturbed = _loss(case, peft_model)
    assert not torch.allclose(loss, perturbed, rtol=1e-5, atol=0) or (  # depth outputs are ~1e-9 at random init
        probe and not torch.allclose(before[0], probe[-1], rtol=1e-5, atol=0))
    perturbed.backward()
    # remove_duplicate=False: tied head copies share parameters (listed under each path)
    trainable = {n: p for n, p in peft_model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())
    heads = peft_model.peft_config["default"].modules_to_save or []
    for head in heads:
        assert any(f"{head}.modules_to_save.default." in n for n in trainable), f"head {head} not trained"
    assert not [n for n in trainable if "lora_" not in n and "modules_to_save" not in n]
    # reload onto a fresh base (same seed = same base weights) and merge: the same loss
    with torch.no_grad():
        reference = _loss(case, peft_model)
    peft_model.save_pretrained(tmp_path)
    reloaded = pve.load_adapter(str(tmp_path), base_model=_build(case))
    with torch.no_grad():
        torch.testing.assert_close(_loss(case, reloaded), reference, rtol=1e-4, atol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(_loss(case, merged), reference, rtol=1e-3, atol=1e-4)
    card = (tmp_path / "README.md").read_text()
    assert f"| Task | {infer_task(_build(case))} |" in card
    assert detect_family(_build(case)).task in (None, infer_task(_build(case)))


_METHOD_CASES = [pytest.param(case, method, marks=() if case in _FIRST_OF_FAMILY else pytest.mark.slow)
                 for case in sorted(CASES) for method in ("adalora", "loha", "lokr", "ia3")]


@pytest.mark.parametrize(("case", "method"), _METHOD_CASES)
def test_default_trains_heads_with_every_method(case, method):
    peft_model = peft.get_peft_model(_build(case), METHOD_CONFIGS[method]())
    loss = _loss(case, peft_model)
    loss.backward()
    trainable = {n: p for n, p in peft_model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values()), [n for n, p in trainable.items() if p.grad is None][:3]
    for head in peft_model.peft_config["default"].modules_to_save or []:
        assert any(f"{head}.modules_to_save.default." in n for n in trainable), f"head {head} not trained"


def test_a_preset_selecting_nothing_names_what_the_model_has():
    model = _build("fasterrcnn_mobilenet_v3_large_fpn")
    with pytest.raises(pve.EmptyPresetError, match=r"'decoder'.*parts: decoder.*has parts: backbone x\d+, heads x\d+, "
                                                   r"neck x\d+.*select something here: .*pretrained"):
        resolve_targets(model, "decoder")
    with pytest.raises(ValueError, match="towers='audio'"):
        resolve_targets(model, "attention", towers="audio")


def test_modules_to_save_names_only_mean_the_heads():
    """Before peft 0.22 PEFT matches modules_to_save by string suffix: the heads' names must catch nothing else. From
    0.22 it matches whole path components, and there is no surprise to report."""
    from peft_vision_ext.compat.enforce import suffix_surprises
    from peft_vision_ext.versions import peft_at_least

    for case in CASES:
        model = _build(case)
        assert suffix_surprises(model, resolve_default(model, "lora").modules_to_save) == {}, case
    model = _build("fasterrcnn_mobilenet_v3_large_fpn")
    expected = {} if peft_at_least("0.22") else {"head": ["roi_heads.box_head"]}  # rpn.head: a whole-name match
    assert suffix_surprises(model, ["head"]) == expected


def _fake_weights_cache(tmp_path, monkeypatch, weights, build):
    """A torch hub cache holding a file under the name torchvision downloads ``weights`` to (random values: what is
    tested is the rebuild, not the weights)."""
    import os

    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(build().state_dict(), cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_load_adapter_rebuilds_a_torchvision_detector(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    builder = "fasterrcnn_mobilenet_v3_large_320_fpn"
    weights = torchvision.models.get_model_weights(builder).COCO_V1
    _fake_weights_cache(tmp_path, monkeypatch, weights, lambda: torchvision.models.get_model(
        builder, weights=None, weights_backbone=None, num_classes=91))
    model = torchvision.models.get_model(builder, weights=weights, min_size=64, max_size=64)
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, 3)  # new classes, as the torchvision tutorial does
    pve.describe(model, base_weights="COCO_V1")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4))
    case = "fasterrcnn_mobilenet_v3_large_fpn"  # same loss recipe
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        reference = _loss(case, peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    import json

    meta = json.loads((tmp_path / "adapter" / "peft_vision_ext.json").read_text())
    assert meta["base_model"] == {"library": "torchvision", "builder": builder,
                                  "weights": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1",
                                  "builder_kwargs": {"min_size": [64], "max_size": 64}}
    assert meta["task"] == "object-detection"
    loaded = pve.load_adapter(str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(_loss(case, loaded), reference, rtol=1e-4, atol=1e-5)


def test_hand_built_detectors_say_what_to_pass(tmp_path):
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = torchvision.models.mobilenet_v2(weights=None).features  # the torchvision tutorial's recipe
    backbone.out_channels = 1280
    model = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64,
                       rpn_anchor_generator=AnchorGenerator(((32, 64),), ((0.5, 1.0),)),
                       box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2))
    assert detect_family(model).heads == ("roi_heads.box_predictor",)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4))
    pve.describe(peft_model, base_weights="IMAGENET1K_V1")
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(pve.AdapterLoadError, match="built by hand.*base_model="):
        pve.load_adapter(str(tmp_path))


def test_towers_choose_nothing_on_a_vision_only_model():
    model = _build("lraspp_mobilenet_v3_large")
    assert resolve_targets(model, "conv", towers="both") == resolve_targets(model, "conv")
    with pytest.raises(pve.EmptyPresetError):
        resolve_targets(model, "conv", towers="text")


def test_norm_layers_are_adapted_only_by_presets_that_ask_for_them_never_inside_heads():
    model = _build("fcn_resnet50")
    heads = detect_family(model).heads
    for name, modules in list_presets(model).items():
        norms = [m for m in modules if isinstance(model.get_submodule(m), nn.BatchNorm2d)]
        if Role.NORM not in PRESETS[name].roles:  # only SSF's presets select norms
            assert not norms, name
        assert not [m for m in norms for head in heads if m == head or m.startswith(head + ".")], name


def test_docs_task_table_matches_the_registry():
    import pathlib

    from peft_vision_ext.presets.task_families import task_families_markdown

    page = (pathlib.Path(__file__).parent.parent / "docs" / "guides" / "presets.md").read_text()
    assert task_families_markdown() in page, "docs/guides/presets.md task table differs: run `python docs/generate.py`"


def _tied_copies(peft_model):
    """For every base parameter shared by several wrapped heads: the set of ids of the trainable copies."""
    from peft.utils.other import ModulesToSaveWrapper

    copies = {}
    for _, wrapper in peft_model.named_modules(remove_duplicate=False):
        if isinstance(wrapper, ModulesToSaveWrapper):
            copy = wrapper.modules_to_save["default"]
            for path, original in wrapper.original_module.named_parameters(remove_duplicate=False):
                copies.setdefault(id(original), []).append(copy.get_parameter(path))
    return [group for group in copies.values() if len(group) > 1]


@pytest.mark.parametrize("case", ["hf-deformable-detr-box-refine", "hf-deformable-detr-two-stage", "hf-rt-detr-v2",
                                  "hf-d-fine"])
def test_tied_heads_stay_tied_through_training_reload_and_merge(case, tmp_path):
    base = _build(case)
    tied_in_base = {}
    for name, param in base.named_parameters(remove_duplicate=False):
        tied_in_base.setdefault(id(param), []).append(name)
    shared = [names for names in tied_in_base.values() if len(names) > 1]
    peft_model = peft.get_peft_model(base, peft.LoraConfig(r=4))
    groups = _tied_copies(peft_model)
    if shared:  # transformers 5: tied parameters in separate modules -> one trainable copy per tie
        assert groups and all(all(p is group[0] for p in group) for group in groups)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    _loss(case, peft_model).backward()
    optimizer.step()
    with torch.no_grad():
        reference = _loss(case, peft_model)
    peft_model.save_pretrained(tmp_path)
    reloaded = pve.load_adapter(str(tmp_path), base_model=_build(case), is_trainable=True)
    assert all(all(p is group[0] for p in group) for group in _tied_copies(reloaded))
    with torch.no_grad():
        torch.testing.assert_close(_loss(case, reloaded), reference, rtol=1e-4, atol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(_loss(case, merged), reference, rtol=1e-3, atol=1e-4)
    if shared:  # the merged model ties what the base tied
        merged_params = dict(merged.named_parameters(remove_duplicate=False))
        for names in shared:
            assert all(merged_params[n] is merged_params[names[0]] for n in names), names


@pytest.mark.parametrize("case", ["hf-detr", "hf-deformable-detr-box-refine"])
def test_load_adapter_rebuilds_a_transformers_detector_with_new_classes(case, tmp_path):
    """The usual recipe: a saved detector (5 classes here) loaded with new classes (3), LoRA, train, save; load_adapter
    rebuilds the base from its folder, resizes the class heads (tied ones stay tied) and reproduces the model."""
    import transformers

    # transformers 4.57 ties Deformable DETR's heads by sharing modules without declaring them tied: its own
    # safetensors save refuses the shared tensors (a transformers limitation), so that lane saves the base as .bin.
    legacy = int(transformers.__version__.split(".")[0]) < 5
    _build(case, 5).save_pretrained(tmp_path / "base", **({"safe_serialization": False} if legacy else {}))
    class_name = type(_build(case)).__name__

    def load_base():
        return getattr(transformers, class_name).from_pretrained(tmp_path / "base", num_labels=3,
                                                                 ignore_mismatched_sizes=True)

    torch.manual_seed(0)
    peft_model = peft.get_peft_model(load_base(), peft.LoraConfig(r=4))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    _loss(case, peft_model).backward()
    optimizer.step()
    with torch.no_grad():
        reference = _loss(case, peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = pve.load_adapter(str(tmp_path / "adapter"))
    groups = _tied_copies(loaded)
    assert len(groups) == len(_tied_copies(peft_model)), "the rebuilt base must tie what the trained one tied"
    assert all(all(p is group[0] for p in group) for group in groups)
    with torch.no_grad():
        torch.testing.assert_close(_loss(case, loaded), reference, rtol=1e-4, atol=1e-5)


def test_layers_called_through_a_plain_list_are_left_out_and_refused():
    """Mask2Former's mask embedder keeps its Linear layers in a Python list that its forward iterates: a PEFT wrapper
    in their place would never be called. Presets leave them out; targeting them explicitly is refused."""
    model = _build("hf-mask2former")
    embedder = "model.transformer_module.decoder.mask_predictor.mask_embedder.0.0"
    assert not any(embedder in modules for modules in list_presets(model).values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pve.UnsupportedCombinationError,
                       match=r"plain Python list \(Mask2FormerPredictionBlock.layers\)"):
        peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=[embedder]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any("lora" in name for name, _ in model.named_modules())


class _GroupedHeads(nn.Module):
    """LW-DETR's naming: a final head ``class_embed`` and per-group heads in a ModuleList ``enc_out_class_embed``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.enc_out_class_embed = nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 3)])
        self.class_embed = nn.Linear(4, 3)
        self.decode_head = nn.Linear(4, 3)  # a whole module that `head` matches mid-word: PEFT wraps it, we keep that
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        x = self.body(x)
        return self.head(self.class_embed(x) + sum(h(x) for h in self.enc_out_class_embed) + self.decode_head(x))


def test_a_head_name_that_ends_a_module_list_mid_word_no_longer_crashes_peft(tmp_path):
    from peft.utils.other import ModulesToSaveWrapper

    from peft_vision_ext.peft_hooks import ORIGINALS
    from peft_vision_ext.versions import peft_at_least

    config = dict(target_modules=["body"], modules_to_save=["class_embed", "enc_out_class_embed.0", "head"])
    torch.manual_seed(0)
    model = peft.get_peft_model(_GroupedHeads(), peft.LoraConfig(r=2, **config))
    wrapped = sorted(n for n, m in model.base_model.model.named_modules() if isinstance(m, ModulesToSaveWrapper))
    suffix_matching = not peft_at_least("0.22")  # before 0.22 PEFT matches names by string suffix
    # decode_head: PEFT's own suffix match of "head" (before 0.22)
    assert wrapped == ["class_embed", *(["decode_head"] if suffix_matching else []), "enc_out_class_embed.0", "head"]
    assert isinstance(model.base_model.model.enc_out_class_embed, nn.ModuleList)
    x = torch.randn(2, 4)
    with torch.no_grad():
        model.base_model.model.class_embed.modules_to_save["default"].weight.add_(1.0)
        expected = model(x)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = peft.PeftModel.from_pretrained(_GroupedHeads(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    if not suffix_matching:  # peft >= 0.22 matches whole path components: the hook is not installed, nothing crashes
        assert "modules-to-save-containers" not in ORIGINALS
        return
    # upstream's matching alone: the ModuleList is matched and refused
    import peft.utils.other as other

    hooked = other._set_trainable
    other._set_trainable = ORIGINALS["modules-to-save-containers"]
    try:
        with pytest.raises(TypeError, match="ModuleList"):
            peft.get_peft_model(_GroupedHeads(), peft.LoraConfig(r=2, **config))
    finally:
        other._set_trainable = hooked


def test_load_adapter_resizes_the_denoising_class_embedding():
    """RT-DETR's denoising embedding has one row per class plus a padding row: a rebuilt base with another class count
    gets the saved row count, its padding row still last."""
    from peft_vision_ext.hub.load import resize_heads
    from peft_vision_ext.hub.metadata import head_shapes

    def with_denoising(num_classes):  # the zoo's tiny RT-DETR turns denoising off, which drops the embedding
        config = _build("hf-rt-detr", num_classes).config
        config.num_denoising = 4
        return transformers.RTDetrForObjectDetection(config)

    small, large = with_denoising(3), with_denoising(5)
    heads = resolve_default(large, "lora").modules_to_save
    assert "model.denoising_class_embed" in heads
    resize_heads(small, head_shapes({h: large.get_submodule(h) for h in heads}))
    assert {n: p.shape for n, p in small.named_parameters()} == {n: p.shape for n, p in large.named_parameters()}
    assert small.model.denoising_class_embed.padding_idx == large.model.denoising_class_embed.padding_idx == 5


def test_v_jepa_2_classifier_leaves_the_skipped_predictor_alone():
    """The video classifier never runs the pretraining predictor: the default leaves it out, and the probe (which
    feeds ``pixel_values_videos``) refuses it when named explicitly, before the model is touched."""
    from peft_vision_ext.errors import UnsupportedCombinationError

    model = _build("hf-vjepa2")
    targets = resolve_default(model, "lora").target_modules
    assert targets and not any(".predictor." in t for t in targets)
    assert any(t.startswith("pooler.") for t in targets) and any(".encoder." in t for t in targets)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(UnsupportedCombinationError, match=r"vjepa2\.predictor\.layer\.0\.attention\.query"):
        peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert not any("lora" in n for n, _ in model.named_modules())
