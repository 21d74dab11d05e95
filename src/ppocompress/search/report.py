"""report.html and its plots, rebuilt from a run's result.json (`ppocompress report DIR`)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ppocompress.errors import UserError  # noqa: E402
from ppocompress.fileio import atomic_path, atomic_write_text  # noqa: E402
from ppocompress.search.results import (  # noqa: E402
    CompressResult,
    FamilyResult,
    quality_columns,
)


def _fidelity(reward: float) -> float:
    return 1.0 - math.exp(-reward)


def write_report(run_dir: Path) -> Path:
    """report.html of a run, or of a family run (then each member's too)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; pass the --out folder of ppocompress compress")
    if (run_dir / "family.json").exists():
        family = FamilyResult.from_dir(run_dir)
        for folder in family.folders:
            write_report(run_dir / folder)
        return write_family_report(run_dir)
    result = CompressResult.from_file(run_dir / "result.json")
    plots = {"policy": _policy_plot(result, run_dir / "policy.png"), "curve": _curve_plot(result, run_dir / "search_curve.png"),
             "scatter": _scatter_plot(result, run_dir / "pareto.png")}
    quality = quality_columns(result.causal, detailed=True)
    prefill = result.timing.generates  # speedup is then of decoding; prefill's beside it
    columns = ("model", "runtime", "evaluations", "predicted speedup", "speedup", "over rounds", "vs dense int8",
               *(("prefill speedup",) if prefill else ()), *(f"{header} held-out" for header, _, _ in quality), "size MB")
    rows = []
    for row in [*result.searchers.values(), result.dense_int8, result.dense]:
        name = row.name + (" (delivered)" if row.name == result.searcher else "")
        cells = (name, row.runtime, row.evaluations, row.predicted_speedup, f"{row.speedup:.2f}x",
                 "{:.2f}-{:.2f}x".format(*row.speedup_range()), f"{row.speedup_vs_dense_int8:.2f}x",
                 *((f"{result.prefill_speedup(row):.2f}x",) if prefill else ()),
                 *(getattr(row, field) for _, field, _ in quality), f"{row.size_bytes / 1e6:.1f}")
        style = ' class="delivered"' if row.name == result.searcher else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    plan_rows = "".join(f"<tr><td>{html.escape(row.name)}</td>" + "".join(f"<td>{html.escape(level)}</td>" for level in row.levels)
                        + "</tr>" for row in result.searchers.values())
    layers = len(result.delivered.levels)
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    target = f"{result.target_value:g}x speedup" if result.target_kind == "speedup" else f"size {result.target_value:g}"
    timing = result.timing
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ppocompress report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}tr.delivered{{font-weight:bold}}img{{max-width:100%}}
.warnings{{color:#a04000}}</style></head><body>
<h1>ppocompress: {html.escape(result.model)} on {html.escape(result.runtime)}</h1>
<p>Target {html.escape(target)}. Delivered: the {html.escape(result.searcher)} plan, {result.delivered.speedup:.2f}x faster than
dense PyTorch fp32 and {result.delivered.speedup_vs_dense_int8:.2f}x faster than the dense model with int8 on {html.escape(result.runtime)}
(what a user gets without a search); {html.escape(_quality_sentence(result))}</p>
{f'<ul class="warnings">{warnings}</ul>' if warnings else ''}
<p>Every model timed in its own process, {timing.rounds} interleaved rounds, {html.escape(_timing_note(result))},
{timing.threads} threads, {timing.statistic} of the timings; dense PyTorch fp32 {result.reference_latency.ms:.1f} ms. Predicted
speedups come from the latency table{html.escape(_table_note(result))}. Sensitivities took {result.sensitivity_evaluations}
evaluations, shared by all searchers and outside their budgets.{html.escape(_run_time(result))}</p>
{_generations(result)}
<table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{''.join(rows)}</table>
<h2>Plans per layer</h2>
<table><tr><th>searcher</th>{''.join(f'<th>layer {i}</th>' for i in range(layers))}</tr>{plan_rows}</table>
<h2>Using the delivered model</h2>
<pre>{html.escape(_usage(result, run_dir / 'model'))}</pre>
<h2>Files in {html.escape(str(run_dir))}</h2>
{_files(run_dir)}
<h2>Per-layer policy</h2><img src="{plots['policy']}"><h2>Search curve</h2><img src="{plots['curve']}">
<h2>Quality against predicted speedup, all evaluated plans</h2><img src="{plots['scatter']}">
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def write_family_report(run_dir: Path) -> Path:
    """report.html of a family: every member's measured point and each searcher's, the
    plans across targets, and links to the members' own reports."""
    family = FamilyResult.from_dir(run_dir)
    first = family.members[0]
    header, field, _ = quality_columns(first.causal)[0]
    plots = {"pareto": _family_pareto_plot(family, run_dir / "family_pareto.png"),
             "plans": _family_plans_plot(family, run_dir / "family_plans.png")}
    searchers = list(first.searchers)
    columns = ("target", "member", "speedup", "vs dense int8", *(f"{name} {header}" for name in searchers),
               f"dense int8 {header}", "size MB")
    rows = []
    for folder, member in zip(family.folders, family.members):
        delivered = member.delivered
        cells = (member.target_label, f'<a href="{html.escape(folder)}/report.html">{html.escape(folder)}</a>',
                 f"{delivered.speedup:.2f}x", f"{delivered.speedup_vs_dense_int8:.2f}x",
                 *(html.escape(_fmt(getattr(member.searchers[name], field))) for name in searchers),
                 html.escape(_fmt(getattr(member.dense_int8, field))), f"{delivered.size_bytes / 1e6:.1f}")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    evaluations = ", ".join(f"{html.escape(name)} {count}" for name, count in family.evaluations.items())
    warnings = "".join(f"<li>{html.escape(m.target_label)}: {html.escape(w)}</li>" for m in family.members for w in m.warnings)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ppocompress family report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}img{{max-width:100%}}.warnings{{color:#a04000}}</style>
</head><body>
<h1>ppocompress: a family of {len(family.members)} models of {html.escape(first.model)} on {html.escape(first.runtime)}</h1>
<p>One {html.escape(first.searcher)} search for every target; the other searchers ran per target on the same total
budget. Evaluations over the family: {evaluations}. Each member was delivered, judged on held-out text and timed side by
side with dense PyTorch fp32 and the dense int8 model in its own folder.{
    f' The search policy is saved in {html.escape(family.policy)}/ (start a new run from it with --policy).' if family.policy else ''}</p>
{f'<ul class="warnings">{warnings}</ul>' if warnings else ''}
<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{''.join(rows)}</table>
<h2>Measured speed and held-out quality</h2><img src="{plots['pareto']}">
<h2>Plans across targets</h2><img src="{plots['plans']}">
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def _family_pareto_plot(family: FamilyResult, path: Path) -> str:
    first = family.members[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in first.searchers:
        points = sorted((m.searchers[name].speedup, m.searchers[name].fidelity) for m in family.members)
        ax.plot(*zip(*points), marker="*" if name == first.searcher else "o", markersize=11 if name == first.searcher else 5,
                label=name + (" (delivered)" if name == first.searcher else ""))
    int8 = [(m.dense_int8.speedup, m.dense_int8.fidelity) for m in family.members]
    ax.scatter(*zip(*int8), marker="X", s=90, color="black", label=f"dense int8 on {first.runtime} (each member's run)", zorder=3)
    ax.set_xlabel("speedup vs dense PyTorch fp32, measured")
    ax.set_ylabel(f"{first.fidelity_name.split(' of ')[0]} to dense on held-out text")
    ax.ticklabel_format(axis="y", useOffset=False)  # qualities near 1 read as themselves
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _family_plans_plot(family: FamilyResult, path: Path) -> str:
    """The delivered searcher's level per layer, a row per target: which layers go first."""
    levels = [m.delivered.levels for m in family.members]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 + 1.1 * len(levels[0])), 1.2 + 0.6 * len(levels)))
    kept = np.array([[_level_weight(name) for name in row] for row in levels])
    ax.imshow(kept, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(levels):
        for c, name in enumerate(row):
            ax.text(c, r, name, ha="center", va="center", fontsize=7, color="black" if kept[r, c] > 0.5 else "white")
    ax.set_yticks(range(len(levels)), [m.target_label for m in family.members])
    ax.set_xticks(range(len(levels[0])), [f"layer {i}" for i in range(len(levels[0]))])
    ax.set_title(f"{family.members[0].searcher}'s level per layer for each target\n(brighter = more kept; int8 counts as 0.6)",
                 fontsize=10)
    return _save(fig, path)


def _quality_sentence(result: CompressResult) -> str:
    delivered = result.delivered
    if result.causal:
        return (f"on held-out text, KL {delivered.kl_heldout:.4f} to the dense next-token distributions, top-1 agreement "
                f"{delivered.top1_agreement:.3f}, perplexity {delivered.perplexity_heldout:.2f} (dense {result.dense.perplexity_heldout:.2f}).")
    return (f"mean cosine {delivered.cosine_heldout:.4f} to the dense embeddings on held-out text; dense Lee Pearson "
            f"{result.dense_lee_pearson:.4f}.")


def _timing_note(result: CompressResult) -> str:
    timing = result.timing
    if timing.generates:
        decode, prefill = result.reference_latency.tokens_per_s(timing)
        return (f"a {timing.seq_len}-token prompt then {timing.new_tokens} tokens generated with the KV cache, speedups of decode "
                f"(dense PyTorch fp32: {decode:.1f} tokens/s decode, {prefill:.0f} tokens/s prefill)")
    return f"batch {timing.batch_size} x {timing.seq_len} tokens"


def _generations(result: CompressResult) -> str:
    """Greedy continuations by the dense and the delivered model, side by side."""
    if not result.generations:
        return ""
    rows = "".join(f"<tr><td>{html.escape(prompt)}</td><td>{html.escape(dense)}</td><td>{html.escape(delivered)}</td></tr>"
                   for prompt, dense, delivered in zip(result.generations["prompts"], result.generations["dense"],
                                                       result.generations[result.searcher]))
    return (f'<h2>Greedy generations</h2><table style="text-align:left"><tr><th>prompt</th><th>dense</th>'
            f"<th>delivered ({html.escape(result.searcher)})</th></tr>{rows}</table>")


def _usage(result: CompressResult, model_dir: Path) -> str:
    load = f'import ppocompress                                   # PyTorch, the exact pruned model\nmodel = ppocompress.load("{model_dir}")'
    if result.causal:
        return (load + "\nids = model.tokenizer(\"The capital of France is\", return_tensors=\"pt\").input_ids\n"
                "print(model.tokenizer.decode(model.model.generate(ids, max_new_tokens=40)[0]))")
    return (load + "\n\nfrom sentence_transformers import SentenceTransformer  # the served files\n"
            f'model = SentenceTransformer("{model_dir}", backend="openvino")  # or backend="onnx"')


def _run_time(result: CompressResult) -> str:
    return f" The run took {result.run_time()} on this machine." if result.run_seconds else ""


# What each file of a run's folder is for, by its path in the folder.
FILE_ROLES = {
    "result.json": "every number in this report (ppocompress report rebuilds it)",
    "state.json": "the search's saved state, which --resume continues from",
    "report.html": "this page",
    "model/model.safetensors": "the pruned weights, for ppocompress.load (PyTorch)",
    "model/compression.json": "the plan, the dense model's config and where it came from",
    "model/onnx/model.onnx": "the model for ONNX Runtime (sentence-transformers backend=\"onnx\")",
    "model/openvino/openvino_model.xml": "the model for OpenVINO (sentence-transformers backend=\"openvino\"), beside its .bin",
    "policy/model.safetensors": "the PPO search policy's weights; --policy policy starts a new search from it",
    "policy.png": "the plans per layer, as a picture",
    "search_curve.png": "each searcher's best calibration quality against evaluations",
    "pareto.png": "every evaluated plan's quality against predicted speedup",
}


def _files(run_dir: Path) -> str:
    """The folder's files with their sizes, what the known ones are for."""
    rows = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)):
        name = path.relative_to(run_dir).as_posix()
        rows.append(f"<tr><td style=\"text-align:left\">{html.escape(name)}</td><td>{path.stat().st_size / 1e6:.2f}</td>"
                    f"<td style=\"text-align:left\">{html.escape(FILE_ROLES.get(name, ''))}</td></tr>")
    return f"<table><tr><th>file</th><th>MB</th><th>what for</th></tr>{''.join(rows)}</table>"


def _table_note(result: CompressResult) -> str:
    table = result.latency_table
    if not table:
        return " (FLOPs, not measured)"
    return f" (measured on {table['runtime']}; largest error on the mixed plans it was fitted to {100 * table['largest_error_on_mixed_plans']:.1f}%)"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path.name


def _policy_plot(result: CompressResult, path: Path) -> str:
    rows = list(result.searchers.values())
    names = [row.name for row in rows]
    layers = len(rows[0].levels)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * layers, 0.8 + 0.6 * len(rows)))
    compression = np.array([[_level_weight(name) for name in row.levels] for row in rows])
    ax.imshow(compression, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(rows):
        for c, name in enumerate(row.levels):
            ax.text(c, r, name, ha="center", va="center", fontsize=7, color="black" if compression[r, c] > 0.5 else "white")
    ax.set_yticks(range(len(rows)), names)
    ax.set_xticks(range(layers), [f"layer {i}" for i in range(layers)])
    ax.set_title("level chosen per layer (brighter = more of the layer kept; int8 counts as 0.6)")
    return _save(fig, path)


def _level_weight(name: str) -> float:
    """How much of a layer a level keeps, for the heatmap's colour."""
    if name == "drop":
        return 0.0
    parts = name.split("-")
    keep = (int(parts[0][1:]) + int(parts[1][1:])) / 200
    return keep * (0.6 if name.endswith("int8") else 1.0)


def _curve_plot(result: CompressResult, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result.curves.items():
        if curve:
            steps, best = zip(*curve)
            ax.step(steps, [_fidelity(b) for b in best], where="post", label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"best calibration {result.fidelity_name.split(' of ')[0]} so far")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _scatter_plot(result: CompressResult, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    everything = []
    for name, evaluated in result.evaluated.items():
        if evaluated:
            speedups = [e[2] for e in evaluated]
            cosines = [_fidelity(e[1]) for e in evaluated]
            ax.scatter(speedups, cosines, s=8, alpha=0.5, label=name)
            everything += list(zip(speedups, cosines))
    front, best = [], -1.0
    for speedup, cosine in sorted(everything, key=lambda p: -p[0]):  # Pareto: faster and better than all others
        if cosine > best:
            front.append((speedup, cosine))
            best = cosine
    if front:
        ax.plot(*zip(*sorted(front)), color="black", linewidth=1.5, label="Pareto front")
    delivered = [*result.searchers.values()]
    ax.scatter([m.speedup for m in delivered], [m.fidelity for m in delivered], marker="*", s=120, color="tab:red",
               edgecolor="black", label="delivered plans, measured (held-out)", zorder=3)
    ax.scatter([result.dense_int8.speedup], [result.dense_int8.fidelity], marker="X", s=110, color="black",
               label=f"dense int8 on {result.runtime}, measured (held-out)", zorder=3)
    ax.set_xlabel("speedup vs dense PyTorch fp32 (dots: predicted by the latency table)")
    ax.set_ylabel(f"{result.fidelity_name.split(' of ')[0]} to dense (dots: calibration text)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
