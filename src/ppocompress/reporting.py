"""Tables for the terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ppocompress.compress.measure.retrieval import TOP_K
from ppocompress.compress.recovery.distillation import DistillReport
from ppocompress.search.levels import SHORT_NAME_KEY
from ppocompress.search.results import quality_columns


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_bench(results, model_name: str, causal: bool = False) -> None:
    """The variants side by side, with the held-out quality that bench measured (no retrieval: it judges no corpus)."""
    quality = [column for column in quality_columns(causal, detailed=True) if any(getattr(r, column[1]) is not None
                                                                                   for r in results)]
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
        values = [report[label].get(metric) for label in labels]
        table.add_row(metric, *[_fmt(value, ",d" if isinstance(value, int) else ",.4f") for value in values])
    Console().print(table)
    if "distillation" in report:
        Console().print(distillation_line(DistillReport.from_dict(report["distillation"])))


def distillation_line(report) -> str:
    """A DistillReport in a line: how long, on what, from which validation fidelity to which, and why it stopped."""
    return (f"distillation: {report.steps} steps in {report.seconds / 60:.1f} min on {report.passages} passages, validation "
            f"fidelity {report.validation[0][1]:.4f} -> {report.best_fidelity:.4f} (best at step {report.best_step}; "
            f"stopped: {report.stopped})")


SUMMARY_WIDTH = 80  # the summary must read in an 80-column terminal


def short_levels(levels) -> str:
    """A plan's levels (search.levels.Level), each in a few characters (SHORT_NAME_KEY)."""
    return " ".join(level.short_name for level in levels)


def print_compress(result) -> None:
    """The searchers side by side with the dense alternatives, then one plan line each."""
    console = Console(width=SUMMARY_WIDTH)
    target = result.target.description
    timed = "decode" if result.timing.generates else "batch"
    table = Table(title=f"{result.model} on {result.runtime}, target {target}", title_justify="left",
                  caption=f"{timed} speedups: dense PyTorch fp32 {result.reference_latency.ms:.0f} ms, and the dense int8 model "
                          f"on {result.runtime} (vs int8); quality on held-out text{_retrieval_note(result)}",
                  caption_justify="left")
    quality = quality_columns(result.causal)
    for column in ("model", "predicted", "speedup", "vs\nint8", *(header for header, _, _ in quality), "MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [*result.searchers.values(), *result.alternatives.values(), result.dense_int8, result.dense]
    for row in rows:
        name = row.name + (" *" if row is result.delivered else "")
        table.add_row(name, _fmt(row.predicted_speedup, ".2f"), _fmt(row.speedup, ".2f") + "x",
                      _fmt(row.speedup_vs_dense_int8, ".2f") + "x",
                      *(_fmt(getattr(row, field), spec) for _, field, spec in quality),
                      _fmt(row.size_bytes / 1e6, ".1f"))
    console.print(table)
    low, high = result.delivered.speedup_range()
    console.print(f"* delivered: {low:.2f}x to {high:.2f}x from round to round ({result.timing.rounds} interleaved "
                  f"rounds). Plans, a level per layer ({SHORT_NAME_KEY}):")
    for row in result.searchers.values():
        console.print(f"  {row.name:<13}" + short_levels(row.levels))
    if result.delivered.distillation is not None:
        console.print("delivered plan's " + distillation_line(result.delivered.distillation))
    if result.floor is not None:
        console.print(floor_line(result))
    if result.run_seconds:
        console.print(f"run time {result.run_time()}")
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


def floor_line(result) -> str:
    """What a quality floor chose, and on what: each probe's quality on validation text,
    by recovery (a second recovery's probes, distillations, after the first's), then the
    targets not probed, with the search's score of their plan."""
    floor = result.floor
    by_recovery: dict[str, list[str]] = {}
    for probe in floor.probes:
        by_recovery.setdefault(probe.recovery, []).append(f"{probe.target} {probe.quality:.4f}")
    parts = ["probed " + "; ".join(f"{recovery}: {', '.join(made)}" for recovery, made in by_recovery.items())
             ] if by_recovery else []
    if floor.skipped:
        parts.append("not probed, as the search scored them: "
                     + ", ".join(f"{label} {score:.4f}" for label, score in floor.skipped.items()))
    chosen = (f"{floor.chosen} delivered, recovered by {floor.chosen_probe.recovery}" if floor.met
              else "none met it, dense int8 delivered")
    return (f"floor {result.fidelity_short_name} {floor.min_quality:g} on validation text: {chosen} "
            f"({'; '.join(parts)}); on held-out text {result.delivered.fidelity:.4f}")


def _retrieval_note(result) -> str:
    """What the summary's retrieval columns are, if the result has them."""
    passages = result.dense.retrieval_passages
    if passages is None:
        return ""
    task = ("" if result.dense.task_recall_at_10 is None else
            f", task@{TOP_K}: share of sentences with another of their own document among their {TOP_K} nearest")
    return (f". Among {passages:,} held-out passages, nbr@{TOP_K}: share of the dense model's {TOP_K} nearest "
            f"neighbours found{task}")


def print_target_set(target_set) -> None:
    """A target set's run (search.results.TargetSetResult): per target, the delivered
    model's measured speed and every searcher's held-out quality side by side, then the
    delivered plans (which layers go first)."""
    console = Console(width=SUMMARY_WIDTH)
    first = target_set.members[0]
    header, field, spec = quality_columns(first.causal)[0]
    searchers = list(first.searchers)
    table = Table(title=f"{first.model} on {first.runtime}: {len(target_set.members)} targets, {first.searcher} delivered",
                  title_justify="left",
                  caption=f"speedup of the delivered model vs dense PyTorch fp32 and vs the dense int8 model; "
                          f"held-out {header} of each searcher's plan", caption_justify="left")
    for column in ("target", "speedup", "vs int8", *(name[:10] for name in searchers), "int8"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for member in target_set.members:
        table.add_row(member.target_label, _fmt(member.delivered.speedup, ".2f") + "x",
                      _fmt(member.delivered.speedup_vs_dense_int8, ".2f") + "x",
                      *(_fmt(getattr(member.searchers[name], field), spec) for name in searchers),
                      _fmt(getattr(member.dense_int8, field), spec))
    console.print(table)
    console.print(f"{first.searcher}'s plans, a level per layer ({SHORT_NAME_KEY}):")
    for member in target_set.members:
        console.print(f"  {member.target_label:<9}" + short_levels(member.delivered.levels))
    console.print("evaluations: " + ", ".join(f"{name} {count}" for name, count in target_set.evaluations.items())
                  + (f"; policy saved in {target_set.policy}/" if target_set.policy else ""))
    for member in target_set.members:
        for warning in member.warnings:
            console.print(f"[bold yellow]warning:[/] {member.target_label}: {warning}")
