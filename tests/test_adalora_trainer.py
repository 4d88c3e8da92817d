"""AdaLoraCallback under transformers.Trainer: allocation per optimizer step, total_step, resume, warnings."""

import logging
import warnings

import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_vision_ext import AdaLoraCallback
from peft_vision_ext.adalora import layer_ranks, rank_pattern_table


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, pixel_values, labels=None):
        x = torch.relu(self.dw(torch.relu(self.conv(pixel_values))))
        logits = self.classifier(torch.relu(self.fc(x.mean((2, 3)))))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def _dataset(n=32):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return [{"pixel_values": x[i], "labels": y[i]} for i in range(n)]


def _model(total_step=12, tinit=2, tfinal=2):
    """tinit=0, tfinal=0 (with deltaT=1): the schedule left at PEFT's defaults."""
    torch.manual_seed(0)
    config = peft.AdaLoraConfig(init_r=4, target_r=2, tinit=tinit, tfinal=tfinal, total_step=total_step, deltaT=1,
                                lora_alpha=4, target_modules=["conv", "dw", "fc"], modules_to_save=["classifier"])
    return peft.get_peft_model(TinyCNN(), config)


def _args(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                  learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1, save_steps=6, report_to=[],
                  use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class _RecordSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def _adapter_state(model):
    return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}


def test_allocates_once_per_optimizer_step_and_records_rank_pattern(tmp_path, monkeypatch, caplog):
    model = _model()
    calls = []
    original = model.base_model.update_and_allocate
    monkeypatch.setattr(model.base_model, "update_and_allocate", lambda step: (calls.append(step), original(step)))
    logs_seen = []

    class _Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs_seen.append(dict(logs or {}))

    callbacks = [AdaLoraCallback(), _Logs()]
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=callbacks)
    with caplog.at_level(logging.INFO, logger="peft_vision_ext"):
        trainer.train()
    assert calls == list(range(12)), "one call per optimizer step (gradient accumulation 2), steps 0..11"
    rank_pattern = model.peft_config["default"].rank_pattern
    assert rank_pattern and sum(sum(v) for v in rank_pattern.values()) <= 2 * 3
    assert any("adalora_budget" in entry for entry in logs_seen)
    # the per-layer report: network order, each layer's nonzero singular values = what the final allocation kept
    rows = layer_ranks(model)
    assert [row.path for row in rows] == ["conv", "dw", "fc"]
    assert all(row.size == 4 and row.allocated == row.current for row in rows), rows
    assert sum(row.current for row in rows) == sum(sum(v) for v in rank_pattern.values())
    table = rank_pattern_table(model)
    assert table in caplog.text and f"total rank {sum(row.current for row in rows)} of 12 over 3 layers" in table


def test_total_step_follows_the_trainer_with_a_warning(tmp_path):
    model = _model(total_step=100)
    trainer = Trainer(model=model, args=_args(tmp_path, save_steps=100), train_dataset=_dataset(),
                      callbacks=[AdaLoraCallback()])
    with pytest.warns(UserWarning, match="total_step=100 but the Trainer runs 12"):
        trainer.train()
    assert model.peft_config["default"].total_step == 12
    assert model.peft_config["default"].rank_pattern, "allocation finished inside the 12 steps"


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_ends_like_an_uninterrupted_run(tmp_path):
    straight = _model()
    Trainer(model=straight, args=_args(tmp_path / "a"), train_dataset=_dataset(), callbacks=[AdaLoraCallback()]).train()

    interrupted = _model()
    Trainer(model=interrupted, args=_args(tmp_path / "b"), train_dataset=_dataset(),
            callbacks=[AdaLoraCallback(), _StopAt(6)]).train()
    assert (tmp_path / "b" / "checkpoint-6" / "adalora_rank_allocator.pt").exists()
    resumed = _model()
    Trainer(model=resumed, args=_args(tmp_path / "b"), train_dataset=_dataset(),
            callbacks=[AdaLoraCallback()]).train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-6"))

    assert resumed.peft_config["default"].rank_pattern == straight.peft_config["default"].rank_pattern
    expected, actual = _adapter_state(straight), _adapter_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4)


def test_trainer_without_callback_warns_that_ranks_are_not_allocated(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path, max_steps=2, save_steps=100), train_dataset=_dataset())
    with pytest.warns(UserWarning, match="ranks are not being allocated"):
        trainer.train()


def test_trainer_with_callback_does_not_warn(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path, max_steps=12, save_steps=100), train_dataset=_dataset(),
                      callbacks=[AdaLoraCallback()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "ranks are not being allocated" in str(w.message)]



def _sync_check_worker(rank, port, results):
    import os
    import types

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from peft_vision_ext.adalora.callback import check_ranks_in_sync, find_adalora_tuner

        args = types.SimpleNamespace(distributed_state=types.SimpleNamespace(distributed_type="MULTI_CPU"))
        for case, seed in (("in-sync", 0), ("diverged", rank)):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
            peft_model = peft.get_peft_model(model, peft.AdaLoraConfig(init_r=2, target_r=1, total_step=10,
                                                                       target_modules=["0", "1"]))
            try:
                check_ranks_in_sync(find_adalora_tuner(peft_model), args)
            except RuntimeError as error:
                results.put((case, str(error)))
            else:
                results.put((case, ""))
    finally:
        dist.destroy_process_group()


def test_callback_detects_processes_that_diverged():
    """The DDP check the callback runs after the first optimizer step (gloo, 2 processes)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_sync_check_worker, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    outcome = [results.get(timeout=180) for _ in range(4)]
    for process in processes:
        process.join(timeout=60)
    assert sorted(message for case, message in outcome if case == "in-sync") == ["", ""]
    diverged = [message for case, message in outcome if case == "diverged"]
    assert len(diverged) == 2 and all("trainer.evaluate() before trainer.train()" in m for m in diverged)


def test_orthogonal_regularization_equals_peft_and_is_none_for_other_methods():
    import transformers

    from peft_vision_ext.adalora import orthogonal_regularization, use_adalora_init

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    # PEFT's random factors: the term is far from 0 (orthonormal factors, the vision default, start at ~0)
    model = peft.get_peft_model(transformers.ViTForImageClassification(config),
                                use_adalora_init(peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10), "peft"))
    plain = model.get_base_model()(pixel_values=x, labels=y).loss
    with_term = model.base_model(pixel_values=x, labels=y).loss  # AdaLoraModel.forward adds it to a model loss
    assert torch.allclose(with_term - plain, orthogonal_regularization(model))
    assert orthogonal_regularization(model.base_model) is not None
    lora = peft.get_peft_model(transformers.ViTForImageClassification(config), peft.LoraConfig(r=2))
    assert orthogonal_regularization(lora) is None  # (transformers' base_model property points to itself)


def test_schedule_is_derived_from_the_optimizer_steps_with_gradient_accumulation(tmp_path, caplog):
    from peft_vision_ext.adalora import derive_schedule

    model = _model(total_step=100, tinit=0, tfinal=0)
    callback = AdaLoraCallback()
    calls = []
    original = model.base_model.update_and_allocate
    model.base_model.update_and_allocate = lambda step: (calls.append(step), original(step))
    # 64 examples, batch 4, accumulation 2, 2 epochs: 16 optimizer steps
    args = _args(tmp_path, max_steps=-1, num_train_epochs=2, save_steps=1000)
    with caplog.at_level(logging.INFO, logger="peft_vision_ext"), pytest.warns(UserWarning, match="total_step=100"):
        Trainer(model=model, args=args, train_dataset=_dataset(64), callbacks=[callback]).train()
    assert len(calls) == 16
    assert callback.schedule == derive_schedule(16) == {"total_step": 16, "tinit": 1, "tfinal": 4, "deltaT": 1}
    config = model.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (16, 1, 4, 1)
    assert "AdaLoRA schedule: total_step=16, tinit=1, tfinal=4, deltaT=1" in caplog.text


def test_schedule_keeps_what_the_user_set_and_peft_mode_keeps_everything(tmp_path):
    model = _model(total_step=40, tinit=5, tfinal=0)
    callback = AdaLoraCallback()
    Trainer(model=model, args=_args(tmp_path / "a", max_steps=40, save_steps=1000), train_dataset=_dataset(),
            callbacks=[callback]).train()
    assert callback.schedule == {"total_step": 40, "tinit": 5, "tfinal": 12, "deltaT": 1}  # deltaT: 1 % of 40 -> 1
    model = _model(total_step=40, tinit=0, tfinal=0)
    callback = AdaLoraCallback(schedule="peft")
    Trainer(model=model, args=_args(tmp_path / "b", max_steps=40, save_steps=1000), train_dataset=_dataset(),
            callbacks=[callback]).train()
    assert callback.schedule == {"total_step": 40, "tinit": 0, "tfinal": 0, "deltaT": 1}
    with pytest.raises(ValueError, match="'derive' or 'peft'"):
        AdaLoraCallback(schedule="paper")


def test_resume_restores_the_schedule_of_the_interrupted_run(tmp_path):
    first = AdaLoraCallback()
    Trainer(model=_model(total_step=20, tinit=0, tfinal=0), args=_args(tmp_path, max_steps=20, save_steps=6),
            train_dataset=_dataset(), callbacks=[first, _StopAt(6)]).train()
    state = torch.load(tmp_path / "checkpoint-6" / "adalora_rank_allocator.pt", weights_only=False)
    assert state["schedule"] == first.schedule == {"total_step": 20, "tinit": 2, "tfinal": 6, "deltaT": 1}
    resumed_model = _model(total_step=20, tinit=0, tfinal=0)
    resumed = AdaLoraCallback(schedule="peft")  # would keep tinit=tfinal=0 on a fresh run
    Trainer(model=resumed_model, args=_args(tmp_path, max_steps=20, save_steps=6), train_dataset=_dataset(),
            callbacks=[resumed]).train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert resumed.schedule == first.schedule
    assert resumed_model.peft_config["default"].tinit == 2


def test_trainer_adds_the_orthogonal_regulariser_gradient_once_per_optimizer_step(tmp_path):
    from peft_vision_ext.adalora import orthogonal_regularization

    class _Grads(TrainerCallback):  # runs after AdaLoraCallback's on_pre_optimizer_step
        def __init__(self):
            self.first = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.first is None:
                self.first = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_A" in n}

    grads = {}
    for regularize in (False, True):
        model = _model()
        term = orthogonal_regularization(model)
        expected = dict(zip([n for n, p in model.named_parameters() if "lora_A" in n],
                            torch.autograd.grad(term, [p for n, p in model.named_parameters() if "lora_A" in n])))
        recorder = _Grads()
        Trainer(model=model, args=_args(tmp_path / str(regularize), save_steps=1000), train_dataset=_dataset(),
                callbacks=[AdaLoraCallback(orthogonal_regularization=regularize), recorder, _StopAt(1)]).train()
        grads[regularize] = recorder.first
    assert term.item() > 0.1
    for name, grad in expected.items():  # with accumulation over 2 micro-batches, still added exactly once
        torch.testing.assert_close(grads[True][name] - grads[False][name], grad, atol=1e-6, rtol=1e-5)
