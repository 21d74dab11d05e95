"""Tables for the terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_bench(results, model_name: str) -> None:
    table = Table(title=f"Uniform variants of {model_name} (speedup vs dense PyTorch fp32, measured side by side)")
    for column in ("variant", "backend", "cosine", "cosine +lsq", "Lee Pearson", "size MB", "latency ms", "speedup"):
        table.add_column(column, justify="left" if column in ("variant", "backend") else "right")
    for r in results:
        none, lsq = r.quality.get("none", {}), r.quality.get("lsq", {})
        best = lsq or none
        table.add_row(r.name, r.backend, _fmt(none.get("mean_cosine")), _fmt(lsq.get("mean_cosine")),
                      _fmt(best.get("lee_pearson")), _fmt(r.size_bytes / 1e6, ".1f"), _fmt(r.latency_ms, ".1f"),
                      _fmt(r.speedup, ".2f") + "x")
    Console().print(table)


def print_evaluation(report: dict) -> None:
    table = Table(title=f"{report['model']} ({report['model_type']}), {report['evaluation_texts']} evaluation passages")
    table.add_column("metric")
    labels = [label for label in ("dense", "compressed") if label in report]
    for label in labels:
        table.add_column(label, justify="right")
    metrics = sorted({k for label in labels for k in report[label]})
    for metric in metrics:
        table.add_row(metric, *[_fmt(report[label].get(metric), ",.4f" if not isinstance(report[label].get(metric), int) else ",d")
                                for label in labels])
    Console().print(table)
