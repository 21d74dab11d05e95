"""Distillation: it gains on validation text, keeps the best weights, resumes exactly, and
works for encoders and causal LMs."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from compress_models import save_tiny_model
from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    adapter_for,
    apply_plan,
    layer_table,
    load_model,
)
from ppocompress.compress.ops.quantize import simulate_int8_
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import Precision
from ppocompress.compress.recovery import distillation as distillation_module
from ppocompress.compress.recovery.distillation import DistillConfig, distill
from ppocompress.compress.recovery.served_int8 import StraightThroughInt8Linear
from ppocompress.errors import UserError

WORDS = ["cats", "dogs", "markets", "rain", "music", "trains", "history", "science", "rivers", "engines"]
TEXTS = [f"sentence number {i} talks about {w} and other things in the world" for i, w in enumerate(WORDS * 6)]
VALIDATION = [f"a different line {i} on {w}, told another way" for i, w in enumerate(WORDS)]
DISTURBANCE = 2.0  # noise added to the student's weights, in their standard deviations
CONFIG = DistillConfig(minutes=10, steps=40, learning_rate=3e-3, batch_size=8)  # the fixed schedule ends first


def _pruned(kind: str, tmp_path, drop_last: bool = False, weights: Precision = Precision.FLOAT):
    """A tiny model and a pruned copy, its layers' weights also disturbed (seeded): a tiny
    random model's embeddings barely move when it is only pruned, so there would be nothing
    to recover. weights: what the plan marks the layers (kept in fp32 here)."""
    dense = load_model(str(save_tiny_model(kind, tmp_path / kind)))
    table = layer_table(dense.model)
    layers = [LayerPlan(keep_neurons=list(range(info.ffn // 4)), weights=weights) for info in table]
    if drop_last:
        layers[-1] = LayerPlan(drop=True)
    student = apply_plan(dense, CompressionPlan(layers), quantize=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter_for(student.model).layers(student.model).parameters():
            if parameter.dim() == 2:
                parameter.add_(DISTURBANCE * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return dense, student


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_distillation_gains_on_validation_and_keeps_the_best_weights(kind, tmp_path):
    dense, student = _pruned(kind, tmp_path, drop_last=kind == "llama")
    report = distill(dense, student, TEXTS, VALIDATION, CONFIG, progress=False)
    start = report.validation[0][1]
    assert report.steps <= 40 and report.stopped in ("schedule", "no gain")
    assert 1 - report.best_fidelity < 0.5 * (1 - start)  # at least half of what was lost, won back
    judge = distillation_module._validation(dense, VALIDATION, CONFIG.max_length)
    assert judge(student.model) == pytest.approx(report.best_fidelity, abs=1e-6)
    assert all(not p.requires_grad for p in student.model.parameters())


def test_int8_layers_a_dynamic_int8_runtime_serves_train_and_are_chosen_as_it_computes_them(tmp_path):
    dense, student = _pruned("bert", tmp_path, weights=Precision.INT8)
    judge = distillation_module._validation(dense, VALIDATION, CONFIG.max_length)

    def as_served(model) -> float:
        served = copy.deepcopy(model)
        for layer in adapter_for(served).layers(served):
            simulate_int8_(layer)
        return judge(served)

    start_fp32, start_served = judge(student.model), as_served(student.model)
    report = distill(dense, student, TEXTS, VALIDATION, replace(CONFIG, int8_kind="dynamic"), progress=False)
    # a tiny random model loses little to int8 (about 5e-6 here), but far more than float rounding
    assert report.validation[0][1] == pytest.approx(start_served, abs=1e-7) and abs(start_served - start_fp32) > 1e-6
    assert as_served(student.model) == pytest.approx(report.best_fidelity, abs=1e-7)
    assert report.best_fidelity > start_served
    assert all(type(m) is not StraightThroughInt8Linear for m in student.model.modules())  # plain Linears again
    _, fp32_trained = _pruned("bert", tmp_path / "fp32", weights=Precision.INT8)
    assert distill(dense, fp32_trained, TEXTS, VALIDATION, replace(CONFIG, int8_kind="static"),  # not trained as served
                   progress=False).validation[0][1] == pytest.approx(start_fp32, abs=1e-7)


@pytest.mark.parametrize("int8_kind", [None, "dynamic"])
def test_an_interrupted_distillation_resumes_to_the_same_weights(int8_kind, tmp_path, monkeypatch):
    """Also with int8 layers trained as served: the checkpoint holds the float weights."""
    monkeypatch.setattr(distillation_module, "PATIENCE", CONFIG.steps)  # the whole schedule runs
    weights = Precision.INT8 if int8_kind else Precision.FLOAT
    config = replace(CONFIG, int8_kind=int8_kind)
    dense, uninterrupted = _pruned("bert", tmp_path, weights=weights)
    expected = distill(dense, uninterrupted, TEXTS, VALIDATION, config, progress=False)

    _, student = _pruned("bert", tmp_path / "again", weights=weights)
    checkpoint = tmp_path / "checkpoint"
    monkeypatch.setattr(distillation_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every step
    real_loss, calls = distillation_module._loss, []

    def killed_at_step_25(*args, **kwargs):
        calls.append(1)
        if len(calls) > 25:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(distillation_module, "_loss", killed_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        distill(dense, student, TEXTS, VALIDATION, config, checkpoint=checkpoint, progress=False)
    monkeypatch.setattr(distillation_module, "_loss", real_loss)

    _, resumed = _pruned("bert", tmp_path / "third", weights=weights)
    report = distill(dense, resumed, TEXTS, VALIDATION, config, checkpoint=checkpoint, progress=False)
    assert report.steps == expected.steps == CONFIG.steps and report.validation == expected.validation
    assert all(type(m) is not StraightThroughInt8Linear for m in resumed.model.modules())
    for name, tensor in _state(uninterrupted.model).items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert len(list(checkpoint.glob("step-*"))) == 1  # one whole checkpoint, the older ones removed


def test_the_teacher_runs_only_on_the_batches_trained_on(tmp_path, monkeypatch):
    made = []

    class Recorded(distillation_module._Teacher):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(distillation_module, "_Teacher", Recorded)
    dense, student = _pruned("bert", tmp_path)
    distill(dense, student, TEXTS, VALIDATION, replace(CONFIG, steps=3), progress=False)
    teacher, = made
    assert len(teacher.batches.batches) > 3  # a short schedule: most batches are never trained on
    assert sorted(teacher.cached) == sorted({teacher.batches.index(step) for step in range(3)})


@pytest.mark.parametrize(("minutes", "stopped", "seconds"), [(0.5, "budget", 32.0), (3.0, "schedule", 176.0)])
def test_the_budget_is_wall_time_with_the_teachers_passes_and_the_validations(minutes, stopped, seconds, tmp_path,
                                                                              monkeypatch):
    """On a clock where a training step takes 1 s, a batch new to the teacher 4 s more (8
    batches) and a validation 2 s. Half a minute: the first validation, then steps of 5 s
    until the budget is spent (32 s), before the steps that time the schedule end. Three
    minutes: at step 30 (64 s) the schedule is fixed at 98 more steps of 1 s, 9
    validations set aside; 7 fall within it (176 s)."""
    clock = [0.0]

    def advance(seconds: float, then):
        def advanced(*args, **kwargs):
            clock[0] += seconds
            return then(*args, **kwargs)
        return advanced

    real_run_layers, real_validation = distillation_module._run_layers, distillation_module._validation

    def run_layers(*args):  # the teacher's passes are the ones in inference mode
        return (advance(4.0, real_run_layers) if torch.is_inference_mode_enabled() else real_run_layers)(*args)

    monkeypatch.setattr(distillation_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(distillation_module, "_step", advance(1.0, distillation_module._step))
    monkeypatch.setattr(distillation_module, "_run_layers", run_layers)
    monkeypatch.setattr(distillation_module, "_validation", lambda *args: advance(2.0, real_validation(*args)))
    monkeypatch.setattr(distillation_module, "PATIENCE", 1000)  # no stop for want of a gain
    dense, student = _pruned("bert", tmp_path)
    report = distill(dense, student, TEXTS, VALIDATION, replace(CONFIG, minutes=minutes, steps=None), progress=False)
    assert report.stopped == stopped and report.validation_seconds == 2.0 and report.seconds == seconds


def test_a_checkpoint_of_another_plan_is_not_resumed(tmp_path):
    dense, student = _pruned("bert", tmp_path)
    checkpoint = tmp_path / "checkpoint"
    config = DistillConfig(minutes=10, steps=5, batch_size=8)
    distill(dense, student, TEXTS, VALIDATION, config, checkpoint=checkpoint, progress=False)
    _, other = _pruned("bert", tmp_path / "other", drop_last=True)
    report = distill(dense, other, TEXTS, VALIDATION, config, checkpoint=checkpoint, progress=False)
    assert report.steps == 5 and report.validation[0][0] == 0


def test_lsq_then_distill_through_compress_and_bad_settings(tmp_path):
    dense, _ = _pruned("bert", tmp_path)
    plan = CompressionPlan([LayerPlan(keep_neurons=list(range(info.ffn // 2)), weights=Precision.INT8)
                            for info in layer_table(dense.model)])
    compressed = compress(dense, plan, "lsq+distill", TEXTS, validation=VALIDATION, distillation=CONFIG)
    report = compressed.distillation
    assert 1 <= report.steps <= CONFIG.steps and report.best_fidelity >= report.validation[0][1]
    with pytest.raises(UserError, match="validation passages"):
        compress(dense, plan, "distill", TEXTS, validation=[], distillation=CONFIG)
    for minutes in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--recover-minutes"):
            DistillConfig(minutes=minutes)
