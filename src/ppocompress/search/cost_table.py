"""What each level of each layer costs: a latency table measured once and cached.

Layers of the supported families share one shape, so a layer's time is modelled from
what it keeps: for each precision of the weights (floating point, int8, int4), a fixed
cost plus a cost per fraction of attention groups kept plus a cost per fraction of FFN
neurons kept (matrix products scale with their widths). A kept unit costs no less in a
wider precision than in a narrower one (its weights are more bytes to read: a precision's
cost per unit is the narrower one's plus a non-negative increment), so that a few slowed
timings cannot make a float layer's units cheaper than int8 ones, which the search would
exploit; the fixed costs are free (an int4 matrix product has more to set up than an int8
one, and on narrow layers measures slower). Those numbers and a base outside
the layers are the non-negative least-squares fit to a dozen whole models timed on the
serving runtime (dense, one layer, uniform levels at each precision, random mixed plans),
each in its own process in interleaved rounds; a model measured well above the fit is
timed again (load only slows), then every menu level is priced from the fit. The fit's
error on the mixed plans is kept with the table (predicted and measured speedups must
agree). Fewer models, each a better witness, make the table far cheaper than timing every
level.
Speedups are against the dense model in PyTorch fp32, timed in the same rounds; each run
re-anchors that reference (`anchor_reference`), because PyTorch slows far more than the
other runtimes when the machine is busy, and a reference timed under load once would
mislead every later run that reads the cached table.
FLOPs give the same kind of table without measuring (the fallback, and a cross-check),
and a size target's table is the weights' bytes as the runtime stores them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from ppocompress.compress import LayerInfo, LoadedModel, Precision, apply_plan, layer_table
from ppocompress.compress.measure.cost import bits_per_weight, count_parameters, model_flops
from ppocompress.compress.measure.timing import LatencyResult, TimingSetup, measure_latencies
from ppocompress.compress.runtimes import REFERENCE, get_runtime
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, cache_dir
from ppocompress.search.evaluator import compression_plan, searched_head
from ppocompress.search.levels import DENSE, Level, drop_index
from ppocompress.search.plan import Plan

# How much faster the FLOPs table prices a GEMM in each precision than fp32 (a FLOPs table
# has no timings to learn it from; a measured table needs no such guess).
FLOP_DISCOUNT = {Precision.FLOAT: 1.0, Precision.INT8: 2.5, Precision.INT4: 3.5}
# The precisions in the time model's unknowns, narrowest first: a fixed cost each, then
# per fraction of groups and of neurons kept, each precision's increment over the narrower.
NARROWEST_FIRST = (Precision.INT4, Precision.INT8, Precision.FLOAT)


@dataclass
class CostTable:
    """Per-level cost of one layer, plus the fixed cost outside the layers."""

    unit: str  # "ms" (measured), "flops" or "bytes" (size_table)
    base: float
    per_level: list[float]  # indexed like the level menu
    num_layers: int
    reference: float | None = None  # what speedups are against (dense PyTorch fp32 ms); None: dense_total
    runtime: str | None = None  # where the timings were taken
    fit: list[dict] = field(default_factory=list)  # measured vs predicted ms of each timed model

    @property
    def dense_total(self) -> float:
        return self.base + self.num_layers * self.per_level[DENSE]

    @property
    def reference_total(self) -> float:
        return self.reference if self.reference is not None else self.dense_total

    def total(self, levels: Iterable[int]) -> float:
        """The cost of a plan (or of its first layers' levels)."""
        return self.base + sum(self.per_level[i] for i in levels)

    def speedup(self, plan: Plan) -> float:
        return self.reference_total / self.total(plan)

    def fit_error(self) -> float:
        """Largest relative error of the table on the mixed plans it was fitted to."""
        mixed = [row for row in self.fit if row["label"].startswith("mixed")]
        return max((abs(row["predicted_ms"] / row["measured_ms"] - 1.0) for row in mixed), default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def flops_table(dense: LoadedModel, menu: list[Level], seq_len: int = 64) -> CostTable:
    """Each level priced by the FLOPs of the model with every layer at it (int8 discounted)."""
    per_level = [0.0 if layers is None else sum(info.flops_per_token for info in layers) / len(layers) * seq_len
                 / FLOP_DISCOUNT[level.weights] for level, layers in zip(menu, _uniform_layers(dense, menu, seq_len))]
    num_layers = dense.model.config.num_hidden_layers
    base = model_flops(dense.model, seq_len) - per_level[DENSE] * num_layers
    return CostTable("flops", float(base), per_level, num_layers)


def size_table(dense: LoadedModel, menu: list[Level], runtime: str) -> CostTable:
    """Each level priced by the bytes its layer's weights are served in on `runtime`
    (bits_per_weight), the base by the weights outside the layers (a causal LM's are in
    its output head's precision: the runtime compresses the embedding with it), against
    dense PyTorch fp32's bytes, as speedups are against its time."""
    float_bits = get_runtime(runtime).float_bits
    per_level = [0.0 if layers is None else sum(info.params for info in layers) / len(layers)
                 * bits_per_weight(level.weights, float_bits) / 8 for level, layers in zip(menu, _uniform_layers(dense, menu))]
    params = count_parameters(dense.model)
    outside = params - sum(info.params for info in layer_table(dense.model))
    base = outside * bits_per_weight(searched_head(dense), float_bits) / 8
    return CostTable("bytes", float(base), per_level, dense.model.config.num_hidden_layers,
                     reference=params * bits_per_weight(Precision.FLOAT, 32) / 8, runtime=runtime)


def _uniform_layers(dense: LoadedModel, menu: list[Level], seq_len: int = 64) -> list[list[LayerInfo] | None]:
    """For each level, the layer table of the model with every layer at it (None: dropped)."""
    table = layer_table(dense.model, seq_len)
    return [None if level.drop else
            layer_table(apply_plan(dense, compression_plan(Plan.uniform(index, len(table)), menu, table),
                                   quantize=False).model, seq_len) for index, level in enumerate(menu)]


MIXED_PLANS = 4  # random mixed plans timed to calibrate the table
# Other tenants of a shared machine only slow a timing down, and a few models timed while
# the machine was busy move a whole precision's price by more than the differences the
# search chooses between. So a model measured slower than the fit by more than RETIME_ABOVE
# is timed again, up to RETIMES more times, its faster measurement kept, and the table refitted.
RETIME_ABOVE = 0.08
RETIMES = 2
TABLE_FORMAT = 4  # of the cached file; a new format is measured anew (4: a unit's cost monotone in precision)
UNIFORM_TIMED = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.25, 0.25))  # (groups, neurons) kept, timed at each precision of the menu
CALIBRATION_FOR_TIMING = 16  # passages static int8 calibrates on; ranges do not change speed
# A causal LM's table times fewer new tokens than delivery: the cost per token is what is
# priced, and a dozen models timed over rounds of full-length generations would take minutes.
TABLE_NEW_TOKENS = 32
TABLE_REPEATS = 4  # timings a process (decoding a sequence, or a forward pass)


def timing_calibration(dense: LoadedModel, calibration: list[str]) -> list[str]:
    """The text a model exported only to be timed is calibrated on: an encoder's static
    int8 needs ranges (CALIBRATION_FOR_TIMING passages); a decoder's weights are compressed
    data-free, since data-aware int4 (AWQ) changes the weights' values, not their speed,
    and takes longer than the timing."""
    return [] if dense.is_causal else calibration[:CALIBRATION_FOR_TIMING]


def table_setup(setup: TimingSetup) -> TimingSetup:
    """How the latency table times models: as `setup`, generating fewer tokens, more times
    a process (its statistic then rests on more timings, and a repeat costs far less than
    the process it runs in)."""
    return replace(setup, new_tokens=min(setup.new_tokens, TABLE_NEW_TOKENS), repeats=max(setup.repeats, TABLE_REPEATS))


def level_features(level: Level) -> np.ndarray:
    """A level's unknowns in the per-layer time model: a 1 at its precision's fixed cost
    (one per precision of NARROWEST_FIRST), then [groups kept, neurons kept] at its
    precision's increment and at every narrower one's; all zero when the layer is dropped."""
    features = np.zeros(3 * len(NARROWEST_FIRST))
    if not level.drop:
        rank = NARROWEST_FIRST.index(level.weights)
        features[rank] = 1.0
        for offset in range(len(NARROWEST_FIRST), len(NARROWEST_FIRST) + 2 * (rank + 1), 2):
            features[offset: offset + 2] = (level.group_keep, level.neuron_keep)
    return features


def timing_plans(menu: list[Level], num_layers: int) -> dict[str, Plan]:
    """The whole models the table is fitted to (UNIFORM_TIMED at the menu's nearest
    fractions: a 3-group menu keeps 2/3 and 1/3 of the groups, not 1/2)."""
    drop = drop_index(menu)
    if drop is None:
        raise UserError("a measured latency table needs a menu with a drop level (to time a one-layer model)")
    kept = [i for i, level in enumerate(menu) if not level.drop]
    plans = {"one layer": Plan.uniform(drop, num_layers).with_levels({0: DENSE})}
    for precision in dict.fromkeys(menu[i].weights for i in kept):
        for groups, neurons in UNIFORM_TIMED:
            level = min((i for i in kept if menu[i].weights == precision),
                        key=lambda i: abs(menu[i].group_keep - groups) + abs(menu[i].neuron_keep - neurons))
            plans[f"uniform {menu[level].name}"] = Plan.uniform(level, num_layers)
    rng = np.random.default_rng(0)
    for m in range(MIXED_PLANS):
        plan = Plan.of(rng.integers(len(menu), size=num_layers))
        if all(menu[i].drop for i in plan):
            plan = plan.with_levels({0: DENSE})
        plans[f"mixed {m}"] = plan
    return plans


def measured_table(dense: LoadedModel, menu: list[Level], runtime: str, setup: TimingSetup, calibration: list[str],
                   cache_folder: Path | None = None, log=print) -> CostTable:
    """The latency table on `runtime`, from the on-disk cache when this model, machine and
    setting were measured before."""
    cache = table_cache_path(dense, menu, runtime, setup, cache_folder)
    if cache.exists():
        return CostTable(**json.loads(cache.read_text()))
    table = layer_table(dense.model)
    num_layers = len(table)
    if num_layers < 2:
        raise UserError("a measured latency table needs a model with at least 2 layers")
    plans = timing_plans(menu, num_layers)
    with tempfile.TemporaryDirectory(prefix="ppocompress-latency-") as workdir:
        work = Path(workdir)
        log(f"measuring the latency table on {runtime}: {len(plans) + 1} models x {setup.rounds} rounds "
            f"(once; cached in {cache})")
        targets = [("reference", get_runtime(REFERENCE).export(dense, work / "reference", []), REFERENCE)]
        for n, (label, plan) in enumerate(plans.items()):
            # which units a layer keeps does not change its cost; an int8 head as the search's plans have
            model = apply_plan(dense, compression_plan(plan, menu, table, head=searched_head(dense)), quantize=False)
            targets.append((label, get_runtime(runtime).export(model, work / f"model{n}", timing_calibration(dense, calibration)),
                            runtime))
        measured = measure_latencies(targets, setup)
        features = np.array([[1.0, *sum(level_features(level) for level in plan.chosen(menu))] for plan in plans.values()])
        solution = _fit_timing_slow_ones_again(targets[1:], features, measured, setup, log)
    times = np.array([measured[label].ms for label in plans])
    base, per_level = float(solution[0]), [float(level_features(level) @ solution[1:]) for level in menu]
    fit = [{"label": label, "levels": plan.to_json(), "measured_ms": float(t), "predicted_ms": float(features[r] @ solution)}
           for r, ((label, plan), t) in enumerate(zip(plans.items(), times))]
    result = CostTable("ms", base, per_level, num_layers, reference=measured["reference"].ms, runtime=runtime, fit=fit)
    log(f"latency table: dense {runtime} {result.dense_total:.1f} ms, dense PyTorch {result.reference:.1f} ms; "
        f"largest error on the mixed plans {100 * result.fit_error():.1f}%")
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(result.to_dict()))
    return result


def anchor_reference(table: CostTable, torch_ms: float, runtime_dense_ms: float, log=print) -> CostTable:
    """The table with its reference set from dense PyTorch and the dense model on the
    table's runtime timed now, side by side: reference = the table's dense total x their
    ratio, so the per-level costs and the reference come from one consistent scale
    whatever the machine did since.

    The ratio kept is the lower of now's and the table's: a busy machine slows PyTorch far
    more than the other runtimes, so a high ratio is load, and a reference inflated by
    load would let plans through that miss the target when the delivered model is timed."""
    if table.unit != "ms" or table.runtime == "torch":
        return table  # FLOPs, or a PyTorch table: its dense total is the reference already
    now = torch_ms / runtime_dense_ms
    then = table.reference_total / table.dense_total
    log(f"dense PyTorch {torch_ms:.1f} ms, dense {table.runtime} {runtime_dense_ms:.1f} ms now (ratio {now:.2f}; "
        f"{then:.2f} when the table was measured; speedups use {min(now, then):.2f})")
    return replace(table, reference=table.dense_total * min(now, then))


def _fit_timing_slow_ones_again(targets: list[tuple], features: np.ndarray, measured: dict[str, LatencyResult],
                                setup: TimingSetup, log) -> np.ndarray:
    """The time model fitted to the timed `targets` (one per row of `features`), after the
    ones measured slower than the fit by more than RETIME_ABOVE are timed again, up to
    RETIMES times, each keeping its faster measurement in `measured`."""
    def fitted() -> np.ndarray:
        return fit_time_model(features, np.array([measured[label].ms for label, _, _ in targets]))

    solution = fitted()
    for _ in range(RETIMES):
        slow = [target for target, row in zip(targets, features) if measured[target[0]].ms > row @ solution * (1 + RETIME_ABOVE)]
        if not slow:
            break
        log(f"timing {len(slow)} of the models again: slower than the table's fit by more than {RETIME_ABOVE:.0%}")
        for label, again in measure_latencies(slow, setup).items():
            measured[label] = min(measured[label], again, key=lambda latency: latency.ms)
        solution = fitted()
    return solution


def fit_time_model(features: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The time model's unknowns (base, then level_features'), non-negative, fitted to the
    timed models' `times` (one per row of `features`) in relative error, so that small
    and large models count alike."""
    weights = 1.0 / times
    return nnls(features * weights[:, None], times * weights)[0]


def table_cache_path(dense: LoadedModel, menu: list[Level], runtime: str, setup: TimingSetup,
                     cache_folder: Path | None = None) -> Path:
    """Where the table of this model, menu, runtime, machine and timing setup is cached."""
    return (cache_folder or cache_dir()) / f"latency-{_cache_key(dense, menu, runtime, setup)}.json"


def _cache_key(dense: LoadedModel, menu: list[Level], runtime: str, setup: TimingSetup) -> str:
    """Same model, menu, machine, library versions and timing setting: same table."""
    identity = {
        "format": TABLE_FORMAT,
        "model": dense.source,
        "config": dense.config_scalars(),
        "menu": [level.to_dict() for level in menu], "setup": setup.to_dict(), "runtime": runtime,
        "versions": {name: _version(name) for name in ("torch", runtime)},
        "plans": sorted(timing_plans(menu, len(layer_table(dense.model)))),
        "machine": platform.machine(), "processor": platform.processor(), "cpu": _cpu_model(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
