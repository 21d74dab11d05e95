"""Tables for the terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_bench(results, model_name: str, causal: bool = False) -> None:
    from ppocompress.search.results import quality_columns

    quality = quality_columns(causal)
    speed = ("decode speedup", "prefill speedup") if causal else ("speedup",)
    table = Table(title=f"Variants of {model_name} (speedup vs dense PyTorch fp32, measured side by side)")
    for column in ("variant", "runtime", *(header for header, _, _ in quality), "size MB", "latency ms", *speed):
        table.add_column(column, justify="left" if column in ("variant", "runtime") else "right")
    for r in results:
        speedups = (r.speedup, r.prefill_speedup) if causal else (r.speedup,)
        table.add_row(r.name, r.runtime, *(_fmt(getattr(r, field), spec) for _, field, spec in quality),
                      _fmt(r.size_bytes / 1e6, ".1f"), _fmt(r.latency_ms, ".1f"), *(_fmt(x, ".2f") + "x" for x in speedups))
    Console().print(table)


def print_evaluation(report: dict) -> None:
    table = Table(title=f"{report['model']} ({report['model_type']}) on {report['runtime']}, "
                        f"{report['evaluation_texts']} evaluation passages")
    table.add_column("metric")
    labels = [label for label in ("dense", "compressed") if label in report]
    for label in labels:
        table.add_column(label, justify="right")
    metrics = sorted({k for label in labels for k in report[label]})
    for metric in metrics:
        table.add_row(metric, *[_fmt(report[label].get(metric), ",.4f" if not isinstance(report[label].get(metric), int) else ",d")
                                for label in labels])
    Console().print(table)
    if "distillation" in report:
        from ppocompress.compress.recovery.distillation import DistillReport

        Console().print(distillation_line(DistillReport.from_dict(report["distillation"])))


def distillation_line(report) -> str:
    """A DistillReport in a line: how long, on what, from which validation fidelity to which, and why it stopped."""
    return (f"distillation: {report.steps} steps in {report.seconds / 60:.1f} min on {report.passages} passages, validation "
            f"fidelity {report.validation[0][1]:.4f} -> {report.best_fidelity:.4f} (best at step {report.best_step}; "
            f"stopped: {report.stopped})")


SUMMARY_WIDTH = 80  # the summary must read in an 80-column terminal


def short_level(name: str) -> str:
    """A menu level in a few characters: "h50-f25-int8" -> "h50f25q", "drop" -> "-"."""
    return "-" if name == "drop" else name.replace("-int8", "q").replace("-", "")


def print_compress(result) -> None:
    """The searchers side by side with the dense alternatives, then one plan line each."""
    from ppocompress.search.results import quality_columns

    console = Console(width=SUMMARY_WIDTH)
    target = f"{result.target_value:g}x speedup" if result.target_kind == "speedup" else f"size {result.target_value:g}"
    timed = "decode" if result.timing.generates else "batch"
    table = Table(title=f"{result.model} on {result.runtime}, target {target}", title_justify="left",
                  caption=f"{timed} speedups: dense PyTorch fp32 {result.reference_latency.ms:.0f} ms, and the dense int8 model on "
                          f"{result.runtime} (vs int8); quality on held-out text", caption_justify="left")
    quality = quality_columns(result.causal)
    for column in ("model", "predicted", "speedup", "vs int8", *(header for header, _, _ in quality), "MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [*result.searchers.values(), result.dense_int8, result.dense]
    for row in rows:
        name = row.name + (" *" if row.name == result.searcher else "")
        table.add_row(name, _fmt(row.predicted_speedup, ".2f"), _fmt(row.speedup, ".2f") + "x",
                      _fmt(row.speedup_vs_dense_int8, ".2f") + "x", *(_fmt(getattr(row, field), spec) for _, field, spec in quality),
                      _fmt(row.size_bytes / 1e6, ".1f"))
    console.print(table)
    low, high = result.delivered.speedup_range()
    console.print(f"* delivered: {low:.2f}x to {high:.2f}x from round to round ({result.timing.rounds} interleaved "
                  "rounds). Plans, a level per layer (h/f: % of attention groups / FFN neurons kept, q: int8, -: dropped):")
    for row in result.searchers.values():
        console.print(f"  {row.name:<13}" + " ".join(short_level(name) for name in row.levels))
    if result.delivered.distillation is not None:
        console.print("delivered plan's " + distillation_line(result.delivered.distillation))
    if result.run_seconds:
        console.print(f"run time {result.run_time()}")
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


def print_family(family) -> None:
    """A family run: per target, the delivered model's measured speed and every searcher's
    held-out quality side by side, then the delivered plans (which layers go first)."""
    from ppocompress.search.results import quality_columns

    console = Console(width=SUMMARY_WIDTH)
    first = family.members[0]
    header, field, spec = quality_columns(first.causal)[0]
    searchers = list(first.searchers)
    table = Table(title=f"{first.model} on {first.runtime}: {len(family.members)} targets, {first.searcher} delivered",
                  title_justify="left", caption=f"speedup of the delivered model vs dense PyTorch fp32 and vs the dense int8 model; "
                                                f"held-out {header} of each searcher's plan", caption_justify="left")
    for column in ("target", "speedup", "vs int8", *(name[:10] for name in searchers), "int8"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for member in family.members:
        table.add_row(member.target_label, _fmt(member.delivered.speedup, ".2f") + "x",
                      _fmt(member.delivered.speedup_vs_dense_int8, ".2f") + "x",
                      *(_fmt(getattr(member.searchers[name], field), spec) for name in searchers),
                      _fmt(getattr(member.dense_int8, field), spec))
    console.print(table)
    console.print(f"{first.searcher}'s plans, a level per layer (h/f: % of attention groups / FFN neurons kept, q: int8, -: dropped):")
    for member in family.members:
        console.print(f"  {member.target_label:<9}" + " ".join(short_level(name) for name in member.delivered.levels))
    console.print("evaluations: " + ", ".join(f"{name} {count}" for name, count in family.evaluations.items())
                  + (f"; policy saved in {family.policy}/" if family.policy else ""))
    for member in family.members:
        for warning in member.warnings:
            console.print(f"[bold yellow]warning:[/] {member.target_label}: {warning}")
