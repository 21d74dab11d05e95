"""What each level of each layer costs: a latency table measured once and cached.

Layers of the supported families share one shape, so the table is per level, measured on
whole models (the same code path users run): the dense model, a one-layer model, and for
every level a model with all layers at that level, each in its own process, in
interleaved rounds. Then
    layer_ms(dense) = (T_dense - T_one) / (L - 1),   base = T_one - layer_ms(dense),
    layer_ms(level) = (T_level - base) / L,          layer_ms(drop) = 0,
and a plan's predicted latency is base + the sum of its layers' costs. FLOPs give the
same kind of table without measuring (the fallback, and a cross-check).
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ppocompress.compress import CompressionPlan, LayerPlan, LoadedModel, apply_plan, layer_table, save
from ppocompress.compress.cost import measure_latencies, model_flops
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

    @property
    def dense_total(self) -> float:
        return self.base + self.num_layers * self.per_level[0]

    def total(self, levels: list[int]) -> float:
        return self.base + sum(self.per_level[i] for i in levels)

    def speedup(self, levels: list[int]) -> float:
        return self.dense_total / self.total(levels)

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


def measured_table(dense: LoadedModel, menu: list[Level], batch_size: int = 32, seq_len: int = 64, threads: int = 2,
                   rounds: int = 2, cache_dir: Path | None = None, log=print) -> CostTable:
    """The latency table, from the on-disk cache when this model/machine/setting was measured before."""
    key = _cache_key(dense, menu, batch_size, seq_len, threads)
    cache = (cache_dir or default_cache_dir()) / f"latency-{key}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return CostTable(**data)
    table = layer_table(dense.model)
    num_layers = len(table)
    if num_layers < 2:
        raise UserError("a measured latency table needs a model with at least 2 layers")
    with tempfile.TemporaryDirectory(prefix="ppocompress-latency-") as workdir:
        work = Path(workdir)
        one_layer = CompressionPlan([LayerPlan(drop=i > 0) for i in range(num_layers)])
        targets = [("dense", save(dense, work / "dense"), "torch"),
                   ("one", save(apply_plan(dense, one_layer), work / "one"), "torch")]
        for i, level in enumerate(menu):
            if not level.drop and i > 0:
                targets.append((f"level{i}", save(apply_plan(dense, uniform_plan(table, level)), work / f"level{i}"), "torch"))
        log(f"measuring the latency table: {len(targets)} models x {rounds} rounds (cached afterwards in {cache})")
        measured = measure_latencies(targets, rounds=rounds, batch_size=batch_size, seq_len=seq_len, threads=threads)
    t_dense, t_one = measured["dense"].median_ms, measured["one"].median_ms
    dense_layer = max((t_dense - t_one) / (num_layers - 1), 1e-6)
    base = max(t_one - dense_layer, 0.0)
    per_level = []
    for i, level in enumerate(menu):
        if level.drop:
            per_level.append(0.0)
        elif i == 0:
            per_level.append(dense_layer)
        else:
            per_level.append(max((measured[f"level{i}"].median_ms - base) / num_layers, 1e-6))
    result = CostTable("ms", base, per_level, num_layers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(result.to_dict()))
    return result


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "ppocompress"


def _cache_key(dense: LoadedModel, menu: list[Level], batch_size: int, seq_len: int, threads: int) -> str:
    """Same model, menu, machine, library versions and timing setting: same table."""
    identity = {
        "model": dense.source,
        "config": {k: v for k, v in sorted(dense.base_config.items()) if isinstance(v, (int, float, str, bool))},
        "menu": [level.to_dict() for level in menu],
        "batch": batch_size, "seq": seq_len, "threads": threads,
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
