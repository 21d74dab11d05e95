"""Distillation: training a compressed model to behave like the dense one, on a time budget.

The dense teacher's outputs are computed for a batch when it is first trained on, and
cached (float16): its final hidden states, and each kept layer's output. The student,
the pruned model in fp32 (int8 is applied afterwards by its runtime; layers its runtime
computes in dynamic int8 train as they will be served, served_int8.py), is trained on
- the output: 1 - cosine of the mean-pooled sentence embeddings (encoders), or the KL
  divergence of the next-token distributions (causal LMs, the teacher's logits computed
  from its cached final states by its own output head);
- plus every kept layer's output matched to the dense layer it came from (mean squared
  error relative to the dense output's mean square, so each layer weighs alike).
Only the transformer layers train: embeddings and the output head stay the dense model's.

AdamW with linear warm-up and linear decay over as many steps as the budget allows
(timed on the first steps, then fixed, so a resumed run follows the same schedule).
Validation fidelity (cosine, or exp(-KL)) on text the fit never sees decides when to
stop (no gain for PATIENCE validations) and which weights are kept (the best ones).
Checkpoints are written atomically, so an interrupted distillation resumes.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from ppocompress.compress.data.calibration import MAX_LENGTH, batches, by_length, ensure_pad_token
from ppocompress.compress.measure.fidelity import Fidelity, fidelity_for
from ppocompress.compress.measure.quality import mean_pooled
from ppocompress.compress.models.families import adapter_for
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.recovery.distill_checkpoint import fingerprint_of, load_checkpoint, save_checkpoint
from ppocompress.compress.recovery.served_int8 import TRAINED_INT8, served_as_int8
from ppocompress.errors import UserError
from ppocompress.terminal import stderr_progress

# A distillation is still gaining after several minutes, so the default budget is generous.
DEFAULT_MINUTES = 20.0
TIMING_FROM, TIMING_STEPS = 5, 30  # the steps timed (from, to) before the schedule's length is fixed
VALIDATIONS = 30  # validations over the whole schedule, at most
VALIDATION_SHARE = 0.1  # of the budget, at most, spent validating (a causal LM's validation is slow)
CAUSAL_VALIDATION = 32  # passages: each costs a forward pass with the full vocabulary per token
PATIENCE = 6  # validations without a gain before stopping
MIN_GAIN = 1e-4  # in fidelity: smaller changes count as no gain
CACHE_BYTES = 3 * 2**30  # the teacher's cached states; passages beyond it are not used
CHECKPOINT_EVERY_S = 120.0
WARMUP_BEFORE_TIMING = 100  # steps the warm-up is assumed to last until the schedule is known


@dataclass(frozen=True)
class DistillConfig:
    """How a distillation runs. minutes is its budget of wall time: training, validation
    and the teacher's states."""

    minutes: float = DEFAULT_MINUTES
    learning_rate: float = 5e-4  # as good as the larger rates tried on MiniLM
    warmup_fraction: float = 0.05
    batch_size: int = 32
    max_length: int = MAX_LENGTH
    hidden_weight: float = 1.0  # the layer-matching loss, against the output loss
    seed: int = 0
    steps: int | None = None  # a fixed schedule length (reproducible) instead of what the budget allows
    # The serving runtime's int8 kind (Runtime.int8_kind): one of served_int8.TRAINED_INT8
    # trains the int8-marked layers as it computes them; None, or another, in fp32.
    int8_kind: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise UserError(f"--recover-minutes must be a positive number of minutes, got {self.minutes}")
        if not (self.learning_rate > 0 and 0 <= self.warmup_fraction < 1 and self.batch_size >= 1 and self.hidden_weight >= 0
                and (self.steps is None or self.steps >= 1)):
            raise UserError(f"bad distillation settings: {self}")


@dataclass
class DistillReport:
    """What a distillation did: its schedule, the validation fidelity it reached, and why it stopped."""

    steps: int = 0  # steps taken
    planned_steps: int = 0  # the schedule's length
    passages: int = 0  # distinct training passages (those whose teacher states fitted the cache)
    seconds: float = 0.0  # wall time of training, validation and the teacher's states, across resumes
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, fidelity)
    best_step: int = 0
    best_fidelity: float = float("nan")
    validation_seconds: float = 0.0  # one validation's time
    validations: int = VALIDATIONS  # how many the schedule has room for
    stopped: str = ""  # "budget", "no gain" or "schedule"; empty while it runs

    @classmethod
    def from_dict(cls, data: dict) -> "DistillReport":
        return cls(**{**data, "validation": [tuple(v) for v in data.get("validation", [])]})


class _Batches:
    """Training batches: the first passages of `texts` (kept in the caller's order, which
    balances the sources) whose teacher states fit CACHE_BYTES, in batches of similar
    lengths (little padding). Their order is a seeded permutation per epoch, so step n
    always sees the same batch, resumed or not."""

    def __init__(self, tokenizer, texts: list[str], config: DistillConfig, bytes_per_token: int):
        ensure_pad_token(tokenizer)
        tokenized = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]
        lengths = [min(len(ids), config.max_length) for ids in tokenized]
        room = CACHE_BYTES // bytes_per_token
        taken = next((i for i, total in enumerate(itertools.accumulate(lengths)) if total > room), len(texts))
        kept = texts[:max(taken, 1)]
        self.batches = list(batches(tokenizer, [kept[i] for i in by_length(kept)], config.batch_size, config.max_length))
        self.passages = len(kept)
        self.seed = config.seed

    def index(self, step: int) -> int:
        epoch, position = divmod(step, len(self.batches))
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(self.seed + epoch))
        return int(order[position])


class _Teacher:
    """The dense model's states for each training batch: the outputs of the layers that
    are matched, and its final hidden states; computed when a batch is first trained on
    (a short budget uses few of the batches) and kept. `seconds`: the time they took;
    `recomputed`: its part for the batches trained on before a resume (`seen`), which a
    resumed run's budget does not pay for twice."""

    def __init__(self, dense: LoadedModel, batches: _Batches, matched: list[int], seen: set[int]):
        self.dense, self.batches, self.seen = dense, batches, seen
        adapter = adapter_for(dense.model)
        self.base, self.matched = adapter.base(dense.model), [adapter.layers(dense.model)[i] for i in matched]
        self.cached: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.seconds = self.recomputed = 0.0

    def states(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the matched layers' outputs, the final hidden states) for batch `index`, float16."""
        if index not in self.cached:
            started = time.monotonic()
            with torch.inference_mode():
                outputs = _run_layers(self.base, self.matched, self.batches.batches[index], self.dense.is_causal)
            final = outputs.pop().half()
            self.cached[index] = ([o.half() for o in outputs], final)
            took = time.monotonic() - started
            self.seconds += took
            if index in self.seen:
                self.recomputed += took
        return self.cached[index]

    def log_probs(self, index: int, mask: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities at the real positions, from the final states."""
        with torch.no_grad():
            return torch.log_softmax(self.dense.model.get_output_embeddings()(self.states(index)[1][mask].float()), -1)


def _run_layers(base: nn.Module, watched: list[nn.Module], batch, causal: bool) -> list[torch.Tensor]:
    """The watched layers' outputs and then the base model's final hidden states."""
    outputs: list[torch.Tensor] = []

    def record(_module, _args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(record) for layer in watched]
    try:
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        final = base(**kwargs, use_cache=False).last_hidden_state if causal else base(**kwargs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    return outputs + [final]


def matched_layers(plan) -> tuple[list[int], list[int]]:
    """(student layers, dense layers) whose outputs are matched: every kept layer but the
    student's last, whose output the final hidden states cover."""
    kept = plan.kept_indices()
    return list(range(len(kept) - 1)), kept[:-1]


def _validation(dense: LoadedModel, texts: list[str], max_length: int) -> Fidelity:
    """The student's fidelity to the dense model on validation text (a causal LM's on its
    first CAUSAL_VALIDATION passages)."""
    return fidelity_for(dense, texts[:CAUSAL_VALIDATION] if dense.is_causal else texts, max_length)


@dataclass
class _Student:
    """The compressed model being trained: its base model, the layers whose outputs are
    matched, the parameters that train (the transformer layers') and their optimizer."""

    model: nn.Module
    base: nn.Module
    watched: list[nn.Module]
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


def distill(dense: LoadedModel, compressed: LoadedModel, texts: list[str], validation: list[str],
            config: DistillConfig = DistillConfig(), checkpoint: Path | None = None, progress: bool = True) -> DistillReport:
    """Trains `compressed` (its fp32 weights, in place) towards `dense` on `texts` for at
    most config.minutes, and leaves it with the weights that did best on `validation`.
    With `checkpoint` (a folder), progress is saved there and a rerun resumes from it;
    the caller removes it once the result is safe."""
    if not texts:
        raise UserError("distillation needs calibration text")
    if len(validation) < 3:
        raise UserError("distillation needs at least 3 validation passages to choose when to stop")
    student_layers, dense_layers = matched_layers(compressed.plan)
    bytes_per_token = 2 * dense.model.config.hidden_size * (len(dense_layers) + 1)
    batches = _Batches(dense.tokenizer, texts, config, bytes_per_token)
    adapter = adapter_for(compressed.model)
    layers = adapter.layers(compressed.model)
    for p in compressed.model.parameters():
        p.requires_grad_(False)
    parameters = list(layers.parameters())
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    student = _Student(compressed.model, adapter.base(compressed.model), [layers[i] for i in student_layers], parameters,
                       optimizer)
    fingerprint = fingerprint_of(compressed.plan.to_dict(), config, batches.passages)
    best = {name: t.detach().clone() for name, t in compressed.model.state_dict().items()}
    saved = load_checkpoint(checkpoint, fingerprint, compressed.model, optimizer, best) if checkpoint else None
    report = None if saved is None else DistillReport.from_dict(saved)
    judge = _validation(dense, validation, config.max_length)
    as_served = [layers[i] for i in compressed.plan.int8_layers()] if config.int8_kind in TRAINED_INT8 else []
    with served_as_int8(as_served):  # validated as served too: the best weights are the served model's
        if report is None:
            report = DistillReport(passages=batches.passages, planned_steps=config.steps or 0)
            started = time.monotonic()
            report.best_fidelity = judge(compressed.model)
            report.validation_seconds = report.seconds = time.monotonic() - started  # the budget's first spending
            report.validation.append((0, report.best_fidelity))
        if not report.stopped:
            def save() -> None:
                save_checkpoint(checkpoint, fingerprint, compressed.model, optimizer, best, asdict(report), report.steps)

            seen = {batches.index(step) for step in range(report.steps)}  # before a resume
            _train(student, batches, _Teacher(dense, batches, dense_layers, seen), judge, config, report, best,
                   save if checkpoint else None, progress)
    compressed.model.load_state_dict(best)
    for p in compressed.model.parameters():
        p.requires_grad_(False)
    compressed.model.eval()
    return report


def _train(student: _Student, batches: _Batches, teacher: _Teacher, judge: Fidelity, config: DistillConfig,
           report: DistillReport, best: dict, save, progress: bool) -> None:
    """The training loop: steps until the schedule ends, the budget runs out or
    validation stops improving; `best` follows the best validated weights."""
    budget = config.minutes * 60.0
    columns = [TextColumn("[bold]  distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    start, last_save = time.monotonic() - report.seconds, time.monotonic()
    timed_from = _Timing(report.steps, report.seconds, 0.0, 0)  # a resumed run times from where it resumed
    student.model.eval()  # no dropout: the student is matched to a deterministic teacher
    with stderr_progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task("distilling", total=report.planned_steps or None, completed=report.steps,
                            status=f"validation {report.best_fidelity:.4f}")
        while not report.stopped:
            if report.planned_steps and report.steps >= report.planned_steps:
                report.stopped = "schedule"
                break
            if report.seconds >= budget:
                report.stopped = "budget"
                break
            _step(student, batches, teacher, config, report)
            report.seconds = time.monotonic() - start - teacher.recomputed
            if report.steps == TIMING_FROM:
                timed_from = _Timing(report.steps, report.seconds, teacher.seconds, len(teacher.cached))
            if report.steps >= TIMING_STEPS and not report.planned_steps:
                _fix_schedule(report, budget, timed_from, teacher)
                bar.update(task, total=report.planned_steps)
            if report.planned_steps and report.steps % max(1, report.planned_steps // report.validations) == 0:
                fidelity = _validate(student.model, judge, report, best)
                report.seconds = time.monotonic() - start - teacher.recomputed
                bar.update(task, status=f"validation {fidelity:.4f} (best {report.best_fidelity:.4f})")
            bar.update(task, completed=report.steps)
            if save and (report.stopped or time.monotonic() - last_save > CHECKPOINT_EVERY_S):
                save()
                last_save = time.monotonic()
        if save:
            save()


def _step(student: _Student, batches: _Batches, teacher: _Teacher, config: DistillConfig, report: DistillReport) -> None:
    """One optimizer step on the schedule's next batch, at the schedule's learning rate."""
    for group in student.optimizer.param_groups:
        group["lr"] = _learning_rate(config, report)
    index = batches.index(report.steps)
    loss = _loss(student.model, student.base, student.watched, batches.batches[index], teacher, index, teacher.dense.is_causal,
                 config.hidden_weight)
    student.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters, 1.0)
    student.optimizer.step()
    report.steps += 1


class _Timing(NamedTuple):
    """Where the steps that fix the schedule began to be timed."""

    steps: int
    seconds: float  # the run's
    teacher_seconds: float
    teacher_batches: int  # batches the teacher had run


def _fix_schedule(report: DistillReport, budget: float, timed_from: _Timing, teacher: _Teacher) -> None:
    """The schedule's length: what the rest of the budget allows, the validations' time set
    aside. A step costs the student's time, plus the teacher's the first time its batch
    comes up (the rest of the first epoch); the first steps (allocations, caches warming)
    are not timed."""
    steps, teacher_seconds = report.steps - timed_from.steps, teacher.seconds - timed_from.teacher_seconds
    student = max(1e-6, (report.seconds - timed_from.seconds - teacher_seconds) / max(1, steps))
    first = student + teacher_seconds / max(1, len(teacher.cached) - timed_from.teacher_batches)  # a batch new to the teacher
    report.validations = max(2, min(VALIDATIONS, int(VALIDATION_SHARE * budget / report.validation_seconds)))
    left = budget - report.seconds - report.validations * report.validation_seconds
    new_batches = min(len(teacher.batches.batches) - len(teacher.cached), max(0.0, left) / first)
    steps = new_batches + max(0.0, left - new_batches * first) / student
    report.planned_steps = report.steps + max(1, int(steps))


def _validate(model: nn.Module, judge: Fidelity, report: DistillReport, best: dict) -> float:
    """Validates `model`: a gain keeps its weights in `best`, PATIENCE validations without
    one stop the run. Returns the fidelity."""
    fidelity = judge(model)
    report.validation.append((report.steps, fidelity))
    if fidelity > report.best_fidelity + MIN_GAIN:
        report.best_fidelity, report.best_step = fidelity, report.steps
        best.update({name: t.detach().clone() for name, t in model.state_dict().items()})
    elif sum(step > report.best_step for step, _ in report.validation) >= PATIENCE:
        report.stopped = "no gain"
    return fidelity


def _learning_rate(config: DistillConfig, report: DistillReport) -> float:
    """Linear warm-up over warmup_fraction of the schedule, then linear decay to zero;
    before the schedule's length is known (the first steps), the start of the warm-up."""
    planned = report.planned_steps
    warmup = max(1, int(config.warmup_fraction * planned)) if planned else WARMUP_BEFORE_TIMING
    rise = min(1.0, (report.steps + 1) / warmup)
    fall = 1.0 if not planned else max(0.0, (planned - report.steps) / max(1, planned - warmup))
    return config.learning_rate * min(rise, fall)


def _loss(model: nn.Module, base: nn.Module, watched: list[nn.Module], batch, teacher: _Teacher, index: int, causal: bool,
          hidden_weight: float) -> torch.Tensor:
    outputs = _run_layers(base, watched, batch, causal)
    final = outputs.pop()
    mask = batch["attention_mask"].bool()
    if causal:
        logits = model.get_output_embeddings()(final[mask])
        loss = F.kl_div(torch.log_softmax(logits, -1), teacher.log_probs(index, mask), log_target=True, reduction="batchmean")
    else:
        pooled = mean_pooled(final, batch["attention_mask"])
        reference = mean_pooled(teacher.states(index)[1].float(), batch["attention_mask"])
        loss = 1.0 - (pooled * reference).sum(-1).mean()
    if hidden_weight > 0:
        matching = [F.mse_loss(out[mask], ref[mask].float()) / ref[mask].float().pow(2).mean().clamp(min=1e-12)
                    for out, ref in zip(outputs + [final], [*teacher.states(index)[0], teacher.states(index)[1]])]
        loss = loss + hidden_weight * torch.stack(matching).mean()
    return loss
