"""What each level of each layer costs: a latency table measured once and cached.

Layers of the supported families share one shape, so the table is per level, fitted to
whole-model timings on the backend the tool delivers on (ONNX Runtime; PyTorch with
backend="torch"): the dense model, a one-layer model, every level applied to all layers,
and a dozen random mixed plans, each model timed in its own process in interleaved
rounds. A model's time is its 10th percentile (other tenants only ever slow a run down):
on MiniLM, medians of 2 rounds missed three mixed plans by 13-17%, 10th percentiles of 3
rounds missed none by more than 7%.
A plan's predicted latency is base + the sum of its layers' level costs; base and the
per-level costs are the non-negative least-squares fit to all those timings, so the
mixed plans calibrate the table to plans like the ones a search returns, and the fit's
error on them is kept with the table (predicted and measured speedups must agree).
Speedups are against the dense model in PyTorch fp32, timed in the same rounds; each run
re-anchors that reference (`anchor_reference`), because PyTorch slows far more than ONNX
Runtime when the machine is busy, and a reference timed under load once would mislead
every later run that reads the cached table.
FLOPs give the same kind of table without measuring (the fallback, and a cross-check).
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from ppocompress.compress import CompressionPlan, LayerPlan, LoadedModel, apply_plan, layer_table, save
from ppocompress.compress.cost import measure_latencies, model_flops
from ppocompress.compress.onnx_export import export_onnx, export_planned_onnx
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text
from ppocompress.search.levels import Level

INT8_FLOP_DISCOUNT = 2.5  # int8 GEMMs measured ~2.5x faster than fp32 here; FLOPs-table only


@dataclass
class CostTable:
    """Per-level cost of one layer, plus the fixed cost outside the layers."""

    unit: str  # "ms" (measured) or "flops"
    base: float
    per_level: list[float]  # indexed like the level menu
    num_layers: int
    reference: float | None = None  # what speedups are against (dense PyTorch fp32 ms); None: dense_total
    backend: str | None = None  # where the timings were taken
    fit: list[dict] = field(default_factory=list)  # measured vs predicted ms of each timed model

    @property
    def dense_total(self) -> float:
        return self.base + self.num_layers * self.per_level[0]

    @property
    def reference_total(self) -> float:
        return self.reference if self.reference is not None else self.dense_total

    def total(self, levels: list[int]) -> float:
        return self.base + sum(self.per_level[i] for i in levels)

    def speedup(self, levels: list[int]) -> float:
        return self.reference_total / self.total(levels)

    def fit_error(self) -> float:
        """Largest relative error of the table on the mixed plans it was fitted to."""
        mixed = [row for row in self.fit if row["label"].startswith("mixed")]
        return max((abs(row["predicted_ms"] / row["measured_ms"] - 1.0) for row in mixed), default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def uniform_plan(table, level: Level) -> CompressionPlan:
    """Every layer at `level` (which heads/neurons does not matter for cost)."""
    layers = []
    for info in table:
        groups = max(1, round(level.group_keep * info.kv_heads))
        neurons = max(1, round(level.ffn_keep * info.ffn))
        layers.append(LayerPlan(
            keep_groups=None if groups == info.kv_heads else list(range(groups)),
            keep_neurons=None if neurons == info.ffn else list(range(neurons)),
            int8=level.int8,
        ))
    return CompressionPlan(layers)


def flops_table(dense: LoadedModel, menu: list[Level], seq_len: int = 64) -> CostTable:
    table = layer_table(dense.model, seq_len)
    num_layers = len(table)
    per_level = []
    for level in menu:
        if level.drop:
            per_level.append(0.0)
            continue
        compressed = apply_plan(dense, uniform_plan(table, level), quantize=False)
        per_layer = sum(info.flops_per_token for info in layer_table(compressed.model, seq_len)) / num_layers * seq_len
        per_level.append(per_layer / (INT8_FLOP_DISCOUNT if level.int8 else 1.0))
    base = model_flops(dense.model, seq_len) - per_level[0] * num_layers
    return CostTable("flops", float(base), per_level, num_layers)


MIXED_PLANS = 12  # random mixed plans timed to calibrate the table


def measured_table(dense: LoadedModel, menu: list[Level], batch_size: int = 32, seq_len: int = 64, threads: int = 2,
                   rounds: int = 3, backend: str = "onnxruntime", cache_dir: Path | None = None, log=print) -> CostTable:
    """The latency table, from the on-disk cache when this model/machine/setting was measured before."""
    key = _cache_key(dense, menu, batch_size, seq_len, threads, rounds, backend)
    cache = (cache_dir or default_cache_dir()) / f"latency-{key}.json"
    if cache.exists():
        return CostTable(**json.loads(cache.read_text()))
    num_layers = len(layer_table(dense.model))
    if num_layers < 2:
        raise UserError("a measured latency table needs a model with at least 2 layers")
    rng = np.random.default_rng(0)
    plans = {"dense": [0] * num_layers, "one layer": [0] + [_drop_level(menu)] * (num_layers - 1)}
    plans |= {f"uniform {level.name}": [i] * num_layers for i, level in enumerate(menu) if i > 0 and not level.drop}
    for m in range(MIXED_PLANS):
        levels = [int(v) for v in rng.integers(len(menu), size=num_layers)]
        if all(menu[i].drop for i in levels):
            levels[0] = 0
        plans[f"mixed {m}"] = levels
    with tempfile.TemporaryDirectory(prefix="ppocompress-latency-") as workdir:
        work = Path(workdir)
        log(f"measuring the latency table on {backend}: {len(plans)} models x {rounds} rounds (once; cached in {cache})")
        targets = [("reference", save(dense, work / "reference"), "torch")]
        for n, (label, levels) in enumerate(plans.items()):
            targets.append((label, _build(dense, menu, levels, backend, work / f"model{n}"), backend))
        measured = measure_latencies(targets, rounds=rounds, batch_size=batch_size, seq_len=seq_len, threads=threads)
    # Unknowns: base, then one cost per level (drop costs nothing); one equation a model.
    rows = np.zeros((len(plans), len(menu) + 1))
    rows[:, 0] = 1.0
    for r, levels in enumerate(plans.values()):
        for level in levels:
            if not menu[level].drop:
                rows[r, level + 1] += 1.0
    times = np.array([measured[label].p10_ms for label in plans])
    weights = 1.0 / times  # relative errors count alike for small and large models
    solution, _ = nnls(rows * weights[:, None], times * weights)
    base, per_level = float(solution[0]), [float(v) for v in solution[1:]]
    fit = [{"label": label, "levels": levels, "measured_ms": float(t), "predicted_ms": float(rows[r] @ solution)}
           for r, ((label, levels), t) in enumerate(zip(plans.items(), times))]
    result = CostTable("ms", base, per_level, num_layers, reference=measured["reference"].p10_ms, backend=backend, fit=fit)
    log(f"latency table: dense {backend} {times[0]:.1f} ms, dense PyTorch {result.reference:.1f} ms; "
        f"largest error on the mixed plans {100 * result.fit_error():.1f}%")
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(result.to_dict()))
    return result


def anchor_reference(table: CostTable, dense: LoadedModel, batch_size: int = 32, seq_len: int = 64, threads: int = 2,
                     rounds: int = 4, log=print) -> CostTable:
    """The table with its reference set from dense PyTorch and dense ONNX Runtime timed now,
    side by side: reference = the table's dense total x their ratio, so the per-level costs
    and the reference come from one consistent scale whatever the machine did since.

    The ratio kept is the lower of now's and the table's: a busy machine slows PyTorch far
    more than ONNX Runtime, so a high ratio is load (here it ranged 1.11-1.33 over one day),
    and a reference inflated by load would let plans through that miss the target when
    the delivered model is timed."""
    if table.unit != "ms" or table.backend != "onnxruntime":
        return table  # FLOPs, or a PyTorch table: its dense total is the reference already
    with tempfile.TemporaryDirectory(prefix="ppocompress-reference-") as workdir:
        work = Path(workdir)
        onnx_dense = export_onnx(dense.model, dense.tokenizer, work / "dense.onnx")
        measured = measure_latencies([("torch", save(dense, work / "torch"), "torch"), ("onnxruntime", onnx_dense, "onnxruntime")],
                                     rounds=rounds, batch_size=batch_size, seq_len=seq_len, threads=threads)
    now = measured["torch"].p10_ms / measured["onnxruntime"].p10_ms
    then = table.reference_total / table.dense_total
    log(f"dense PyTorch {measured['torch'].p10_ms:.1f} ms, dense ONNX Runtime {measured['onnxruntime'].p10_ms:.1f} ms "
        f"now (ratio {now:.2f}; {then:.2f} when the table was measured; speedups use {min(now, then):.2f})")
    return replace(table, reference=table.dense_total * min(now, then))


def _drop_level(menu: list[Level]) -> int:
    drops = [i for i, level in enumerate(menu) if level.drop]
    if not drops:
        raise UserError("a measured latency table needs a menu with a drop level (to time a one-layer model)")
    return drops[0]


def _build(dense: LoadedModel, menu: list[Level], levels: list[int], backend: str, path: Path) -> Path:
    """The model of a plan (which heads/neurons does not matter for cost), saved for timing."""
    table = layer_table(dense.model)
    plan = CompressionPlan([uniform_plan([info], menu[level]).layers[0] if not menu[level].drop else LayerPlan(drop=True)
                            for info, level in zip(table, levels)])
    if backend == "torch":
        return save(apply_plan(dense, plan), path)
    if backend != "onnxruntime":
        raise UserError(f"unknown backend {backend!r}; use onnxruntime or torch")
    return export_planned_onnx(apply_plan(dense, plan, quantize=False), plan, path)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "ppocompress"


def _cache_key(dense: LoadedModel, menu: list[Level], batch_size: int, seq_len: int, threads: int, rounds: int, backend: str) -> str:
    """Same model, menu, machine, library versions and timing setting: same table."""
    identity = {
        "model": dense.source,
        "config": {k: v for k, v in sorted(dense.base_config.items()) if isinstance(v, (int, float, str, bool))},
        "menu": [level.to_dict() for level in menu],
        "batch": batch_size, "seq": seq_len, "threads": threads, "rounds": rounds, "statistic": "p10",
        "backend": backend, "mixed": MIXED_PLANS,
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
