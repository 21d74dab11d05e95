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


def print_compress(report: dict) -> None:
    """The searchers side by side: what each plan was predicted to do and what it did."""
    target = (f"speedup {report['target_speedup']}x" if report.get("target_speedup") is not None
              else f"size {report.get('target_size')}")
    table = Table(title=f"{report['model']}: target {target}, {report['evaluations']} evaluations a searcher "
                        f"(speedups vs dense PyTorch fp32 at {report['dense_latency_ms']:.0f} ms, measured side by side)")
    for column in ("searcher", "backend", "predicted", "measured", "vs ORT dense", "cosine held-out", "Lee Pearson",
                   "size MB", "plan"):
        table.add_column(column, justify="left" if column in ("searcher", "backend", "plan") else "right")
    for row in [report, *report.get("baselines", {}).values()]:
        size = row["onnx_size_bytes"] if row["backend"] == "onnxruntime" else row["size_bytes"]
        table.add_row(row["searcher"], row["backend"], _fmt(row.get("predicted_speedup"), ".2f"),
                      _fmt(row["measured_speedup"], ".2f") + "x", _fmt(row["measured_speedup_vs_onnx_dense"], ".2f") + "x",
                      _fmt(row["cosine_heldout"]), _fmt(row["lee_pearson"]), _fmt(size / 1e6, ".1f"), " ".join(row["levels"]))
    Console().print(table)
    Console().print(f"dense: Lee Pearson {report['dense_lee_pearson']:.4f}, {report['dense_size_bytes'] / 1e6:.1f} MB")
