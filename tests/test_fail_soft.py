"""Failing soft on the next PEFT release: a hook whose wrapped PEFT attribute is missing (or changed its signature) is
skipped with one warning naming it and the PEFT version, plain PEFT keeps working, and the matrix refuses what the
hook provided. Every attribute every hook declares is removed, one at a time."""

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import peft
import pytest
import torch

import peft_vision_ext
from peft_vision_ext import peft_hooks
from peft_vision_ext.compat import check
from peft_vision_ext.compat.verify import cell_config, tiny_model
from peft_vision_ext.errors import UnsupportedCombinationError
from peft_vision_ext.layers.kinds import LayerKind
from peft_vision_ext.matrix.verdicts import Status, entry
from peft_vision_ext.patching import SKIPPED, SkippedHook, Wrapped
from peft_vision_ext.versions import peft_version

REPO = Path(peft_vision_ext.__file__).resolve().parents[1]
DECLARED = [(hook, wrapped) for hook in peft_hooks.HOOKS for wrapped in hook.wraps]


def _remove(monkeypatch: pytest.MonkeyPatch, wrapped: Wrapped) -> None:
    """Make ``wrapped`` missing as a rename in a newer release would: delete the attribute where it is defined, or
    the class holding it where it is inherited (``Linear4bit.__init__``)."""
    module_name, _, qualified = wrapped.path.partition(":")
    owner = importlib.import_module(module_name)
    parts = qualified.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    inherited = isinstance(owner, type) and any(parts[-1] in vars(base) for base in owner.__mro__[1:])
    if len(parts) > 1 and not inherited:
        monkeypatch.delattr(owner, parts[-1])
    else:
        monkeypatch.delattr(importlib.import_module(module_name), parts[0])


@pytest.fixture
def fresh_install(monkeypatch: pytest.MonkeyPatch):
    """install() as at a first import: nothing recorded as installed or skipped (restored afterwards)."""
    skipped = dict(SKIPPED)
    monkeypatch.setattr(peft_hooks, "_installed", [])
    SKIPPED.clear()
    yield
    SKIPPED.clear()
    SKIPPED.update(skipped)


def test_every_hook_declares_what_it_wraps_and_the_installed_peft_has_it():
    assert len(DECLARED) >= 20
    assert all(hook.audit for hook in peft_hooks.HOOKS), "every hook records whether the newest PEFT still needs it"
    assert {hook.name: hook.problems() for hook in peft_hooks.HOOKS if hook.problems()} == {}
    assert SKIPPED == {}


@pytest.mark.parametrize(("hook", "wrapped"), DECLARED, ids=[f"{h.name}:{w.path}" for h, w in DECLARED])
def test_a_missing_wrapped_attribute_skips_its_hook_with_one_warning(monkeypatch, fresh_install, hook, wrapped):
    _remove(monkeypatch, wrapped)
    assert hook.problems(), f"{wrapped.path} removed, but {hook.name} does not notice"
    monkeypatch.setattr(peft_hooks, "HOOKS", (hook,))  # the others are installed already (their marks)
    if not hook.applies(peft_version()):  # gated off for this PEFT release: never looked at, never warned about
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            peft_hooks.install()
        assert hook.name not in SKIPPED
        return
    with pytest.warns(UserWarning, match=rf"hook '{hook.name}' skipped \(peft {peft_version()}: .*") as caught:
        peft_hooks.install()
    assert len([w for w in caught if hook.name in str(w.message)]) == 1
    assert hook.name in SKIPPED and hook.name not in peft_hooks.active_hooks()
    for row, kinds in hook.refuses:  # what it provided is refused, with the hook's name and the reason
        kind = LayerKind.LINEAR if "*" in kinds else LayerKind(kinds[0])
        found = entry(row, kind, peft_version())
        assert found is not None and found.train.status is Status.REFUSED and hook.name in found.train.reason


def test_a_changed_signature_skips_the_hook(monkeypatch, fresh_install):
    from peft.tuners.tuners_utils import BaseTuner

    hook = next(h for h in peft_hooks.HOOKS if h.name == "direct-weight-routing")
    monkeypatch.setattr(BaseTuner, "inject_adapter", lambda self, model, name, **kwargs: None)  # renamed argument
    assert any("signature changed" in problem for problem in hook.problems())


def test_features_of_a_skipped_hook_are_refused_before_the_model_is_touched():
    skipped = dict(SKIPPED)
    try:
        SKIPPED["adalora-conv2d"] = SkippedHook("peft 9.9: test", (("adalora", ("conv2d", "conv2d-1x1")),))
        SKIPPED["mha-exact-restore"] = SkippedHook("peft 9.9: test", (("lora", ("mha",)),))
        model = tiny_model(LayerKind.CONV2D)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UnsupportedCombinationError, match="hook 'adalora-conv2d'.*was skipped"):
            peft.get_peft_model(model, cell_config("adalora"))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not check(tiny_model(LayerKind.MHA), cell_config("lora")).ok
        assert check(tiny_model(LayerKind.LINEAR), cell_config("lora")).ok  # the rest works
    finally:
        SKIPPED.clear()
        SKIPPED.update(skipped)


def test_import_survives_a_missing_peft_internal_in_a_fresh_process():
    """A real first import with a wrapped PEFT attribute gone: one warning naming the hook and the PEFT version, the
    other hooks installed, and plain PEFT still adapts a model."""
    code = (
        "import warnings; warnings.simplefilter('default')\n"
        "import peft\n"
        "del peft.PeftModel.create_or_update_model_card\n"
        "import peft_vision_ext\n"
        "from peft_vision_ext.patching import SKIPPED\n"
        "import torch\n"
        "base = torch.nn.Sequential(torch.nn.Linear(4, 4))\n"
        "model = peft.get_peft_model(base, peft.LoraConfig(target_modules=['0']))\n"
        "print('SKIPPED', sorted(SKIPPED), len(peft_vision_ext.peft_hooks.active_hooks()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "default"})
    assert "SKIPPED ['vision-model-card']" in out.stdout
    warned = [line for line in out.stderr.splitlines() if "hook 'vision-model-card' skipped" in line]
    assert len(warned) == 1 and f"peft {peft.__version__}" in warned[0]

