"""report.html and its plots, rebuilt from a run's result.json (`ppocompress report DIR`).
A target set's run (--targets) gets a page of its own over its members' (the family report)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ppocompress.compress.measure.retrieval import TOP_K  # noqa: E402
from ppocompress.errors import UserError  # noqa: E402
from ppocompress.fileio import atomic_path, atomic_write_text  # noqa: E402
from ppocompress.reporting import floor_line  # noqa: E402
from ppocompress.search.files import (  # noqa: E402
    OUT_FOLDER,
    POLICY_DIR,
    REPORT_FILE,
    RESULT_FILE,
    STATE_FILE,
    TARGET_SET_FILE,
)
from ppocompress.search.levels import KEPT_SHARE_KEY, Level  # noqa: E402
from ppocompress.search.results import (  # noqa: E402
    CompressResult,
    TargetSetResult,
    quality_columns,
)
from ppocompress.search.reward import fidelity_from_reward  # noqa: E402

STYLE = """<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:4px 10px;text-align:right}
table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}tr.delivered{font-weight:bold}img{max-width:100%}
.warnings{color:#a04000}</style>"""


def write_report(run_dir: Path) -> Path:
    """report.html of a run, or of a target set's run (then each member's too)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; {OUT_FOLDER}")
    if (run_dir / TARGET_SET_FILE).exists():
        target_set = TargetSetResult.from_dir(run_dir)
        for folder in target_set.folders:
            write_report(run_dir / folder)
        return write_target_set_report(run_dir)
    result = CompressResult.from_file(run_dir / RESULT_FILE)
    plots = {"policy": _policy_plot(result, run_dir / "policy.png"), "curve": _curve_plot(result, run_dir / "search_curve.png"),
             "scatter": _scatter_plot(result, run_dir / "pareto.png")}
    timing = result.timing
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    return _write_page(run_dir, "ppocompress report", f"""
<h1>ppocompress: {html.escape(result.model)} on {html.escape(result.runtime)}</h1>
<p>Target {html.escape(_target_sentence(result))}. Delivered: {html.escape(_delivered_name(result))},
{result.delivered.speedup:.2f}x faster than dense PyTorch fp32 and {result.delivered.speedup_vs_dense_int8:.2f}x faster than
the dense model with int8 on {html.escape(result.runtime)} (what a user gets without a search);
{html.escape(_quality_sentence(result))}</p>
{f'<ul class="warnings">{warnings}</ul>' if warnings else ''}
<p>Every model timed in its own process, {timing.rounds} interleaved rounds, {html.escape(_timing_note(result))},
{timing.threads} threads, {timing.statistic} of the timings; dense PyTorch fp32 {result.reference_latency.ms:.1f} ms. Predicted
speedups come from the latency table{html.escape(_table_note(result))}. Sensitivities took {result.sensitivity_evaluations}
evaluations, shared by all searchers and not counted in their evaluations.{html.escape(_run_time(result))}</p>
{_generations(result)}
{_models_table(result)}
<h2>Plans per layer</h2>
{_plans_table(result)}
<h2>Using the delivered model</h2>
<pre>{html.escape(_usage(result, run_dir / 'model'))}</pre>
<h2>Files in {html.escape(str(run_dir))}</h2>
{_files(run_dir)}
<h2>Per-layer policy</h2><img src="{plots['policy']}"><h2>Search curve</h2><img src="{plots['curve']}">
<h2>Quality against predicted speedup, all evaluated plans</h2><img src="{plots['scatter']}">""")


def _write_page(run_dir: Path, title: str, body: str) -> Path:
    """run_dir's report.html: `body` under the reports' one head and style."""
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>\n{STYLE}</head><body>{body}\n</body></html>'
    atomic_write_text(run_dir / REPORT_FILE, page)
    return run_dir / REPORT_FILE


def _html_table(columns: Iterable[str], rows: Iterable[str]) -> str:
    """A table of header cells `columns` over rows already made ("<tr>...</tr>")."""
    return f"<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{''.join(rows)}</table>"


def _models_table(result: CompressResult) -> str:
    """Every searcher's delivered model beside the dense ones: speed, held-out quality, size."""
    quality = quality_columns(result.causal, detailed=True)
    prefill = result.timing.generates  # speedup is then of decoding; prefill's beside it
    columns = ("model", "runtime", "evaluations", "predicted speedup", "speedup", "over rounds", "vs dense int8",
               *(("prefill speedup",) if prefill else ()), *(f"{header} held-out" for header, _, _ in quality), "size MB")
    rows = []
    for row in [*result.searchers.values(), *result.alternatives.values(), result.dense_int8, result.dense]:
        name = row.name + (" (delivered)" if row is result.delivered else "")
        cells = (name, row.runtime, row.evaluations, row.predicted_speedup, f"{row.speedup:.2f}x",
                 "{:.2f}-{:.2f}x".format(*row.speedup_range()), f"{row.speedup_vs_dense_int8:.2f}x",
                 *((f"{result.prefill_speedup(row):.2f}x",) if prefill else ()),
                 *(getattr(row, field) for _, field, _ in quality), f"{row.size_bytes / 1e6:.1f}")
        style = ' class="delivered"' if row is result.delivered else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    return _html_table(columns, rows)


def _plans_table(result: CompressResult) -> str:
    """Each searcher's level per layer, by name."""
    layers = len(result.searchers[result.searcher].levels)
    rows = (f"<tr><td>{html.escape(row.name)}</td>" + "".join(f"<td>{html.escape(level.name)}</td>" for level in row.levels)
            + "</tr>" for row in result.searchers.values())
    return _html_table(["searcher", *(f"layer {i}" for i in range(layers))], rows)


def write_target_set_report(run_dir: Path) -> Path:
    """report.html of a target set (a family, to its users): every member's measured point
    and each searcher's, the plans across targets, and links to the members' own reports."""
    target_set = TargetSetResult.from_dir(run_dir)
    first = target_set.members[0]
    plots = {"pareto": _target_set_pareto_plot(target_set, run_dir / "family_pareto.png"),
             "plans": _target_set_plans_plot(target_set, run_dir / "family_plans.png")}
    evaluations = ", ".join(f"{html.escape(name)} {count}" for name, count in target_set.evaluations.items())
    warnings = "".join(f"<li>{html.escape(m.target_label)}: {html.escape(w)}</li>"
                       for m in target_set.members for w in m.warnings)
    policy = target_set.policy
    return _write_page(run_dir, "ppocompress family report", f"""
<h1>ppocompress: a family of {len(target_set.members)} models of {html.escape(first.model)} on {html.escape(first.runtime)}</h1>
<p>One {html.escape(first.searcher)} search for every target; the other searchers ran per target on as many evaluations
in all. Evaluations over the family: {evaluations}. Each member was delivered, judged on held-out text and timed side by
side with dense PyTorch fp32 and the dense int8 model in its own folder.{
    f' The search policy is saved in {html.escape(policy)}/ (start a new run from it with --policy).' if policy else ''}</p>
{f'<ul class="warnings">{warnings}</ul>' if warnings else ''}
{_members_table(target_set)}
<h2>Measured speed and held-out quality</h2><img src="{plots['pareto']}">
<h2>Plans across targets</h2><img src="{plots['plans']}">""")


def _members_table(target_set: TargetSetResult) -> str:
    """Per target: the delivered model's speed and every searcher's held-out quality, with a link to its report."""
    first = target_set.members[0]
    header, field, _ = quality_columns(first.causal)[0]
    searchers = list(first.searchers)
    columns = ("target", "member", "speedup", "vs dense int8", *(f"{name} {header}" for name in searchers),
               f"dense int8 {header}", "size MB")
    rows = []
    for folder, member in zip(target_set.folders, target_set.members):
        delivered = member.delivered
        cells = (member.target_label, f'<a href="{html.escape(folder)}/{REPORT_FILE}">{html.escape(folder)}</a>',
                 f"{delivered.speedup:.2f}x", f"{delivered.speedup_vs_dense_int8:.2f}x",
                 *(html.escape(_fmt(getattr(member.searchers[name], field))) for name in searchers),
                 html.escape(_fmt(getattr(member.dense_int8, field))), f"{delivered.size_bytes / 1e6:.1f}")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return _html_table(columns, rows)


def _target_set_pareto_plot(target_set: TargetSetResult, path: Path) -> str:
    first = target_set.members[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in first.searchers:
        points = sorted((m.searchers[name].speedup, m.searchers[name].fidelity) for m in target_set.members)
        ax.plot(*zip(*points), marker="*" if name == first.searcher else "o", markersize=11 if name == first.searcher else 5,
                label=name + (" (delivered)" if name == first.searcher else ""))
    int8 = [(m.dense_int8.speedup, m.dense_int8.fidelity) for m in target_set.members]
    ax.scatter(*zip(*int8), marker="X", s=90, color="black", label=f"dense int8 on {first.runtime} (each member's run)", zorder=3)
    ax.set_xlabel("speedup vs dense PyTorch fp32, measured")
    ax.set_ylabel(f"{first.fidelity_short_name} to dense on held-out text")
    ax.ticklabel_format(axis="y", useOffset=False)  # qualities near 1 read as themselves
    return _save(fig, path, ax)


def _target_set_plans_plot(target_set: TargetSetResult, path: Path) -> str:
    """The delivered searcher's level per layer, a row per target: which layers go first."""
    rows = [m.delivered.levels for m in target_set.members]
    title = f"{target_set.members[0].searcher}'s level per layer for each target\n({KEPT_SHARE_KEY})"
    return _levels_heatmap(rows, [m.target_label for m in target_set.members], title, (1.4, 1.2), path)


def _policy_plot(result: CompressResult, path: Path) -> str:
    rows = list(result.searchers.values())
    return _levels_heatmap([row.levels for row in rows], [row.name for row in rows],
                           f"level chosen per layer ({KEPT_SHARE_KEY})", (1.4, 0.8), path)


def _levels_heatmap(rows: list[tuple[Level, ...]], labels: list[str], title: str, margins: tuple[float, float],
                    path: Path) -> str:
    """Plans as a heatmap, a row per plan, each layer coloured by how much its level keeps
    and labelled with the level's name; margins: inches beside and above the cells."""
    layers = len(rows[0])
    fig, ax = plt.subplots(figsize=(max(6.0, margins[0] + 1.1 * layers), margins[1] + 0.6 * len(rows)))
    kept = np.array([[level.kept_share for level in row] for row in rows])
    ax.imshow(kept, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(rows):
        for c, level in enumerate(row):
            ax.text(c, r, level.name, ha="center", va="center", fontsize=7, color="black" if kept[r, c] > 0.5 else "white")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xticks(range(layers), [f"layer {i}" for i in range(layers)])
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _target_sentence(result: CompressResult) -> str:
    """The target, or the target a quality floor chose and on what (reporting.floor_line)."""
    return result.target.description if result.floor is None else f"{result.target.description}; {floor_line(result)}"


def _delivered_name(result: CompressResult) -> str:
    return f"the {result.searcher} plan" if result.delivered is not result.dense_int8 else "the dense int8 model"


def _quality_sentence(result: CompressResult) -> str:
    delivered = result.delivered
    if result.causal:
        return (f"on held-out text, KL {delivered.kl_heldout:.4f} to the dense next-token distributions, top-1 agreement "
                f"{delivered.top1_agreement:.3f}, perplexity {delivered.perplexity_heldout:.2f} "
                f"(dense {result.dense.perplexity_heldout:.2f}).")
    return (f"mean cosine {delivered.cosine_heldout:.4f} to the dense embeddings on held-out text; dense Lee Pearson "
            f"{result.dense_lee_pearson:.4f}.{_retrieval_sentence(result)}")


def _retrieval_sentence(result: CompressResult) -> str:
    """The delivered model's retrieval beside the dense model's, if it was judged."""
    delivered, dense = result.delivered, result.dense
    if delivered.neighbour_recall_at_10 is None:
        return ""
    task = (" The text's documents are unknown, so there is no labelled task." if delivered.task_recall_at_10 is None
            else f" A held-out sentence finds another of its own document among its {TOP_K} nearest for "
                 f"{delivered.task_recall_at_10:.1%} of the queries, MRR {delivered.task_mrr:.3f} (the dense model on "
                 f"{result.runtime}: {dense.task_recall_at_10:.1%}, MRR {dense.task_mrr:.3f}).")
    return (f" Among {delivered.retrieval_passages:,} held-out passages, it finds {delivered.neighbour_recall_at_10:.1%} "
            f"of the dense model's {TOP_K} nearest neighbours of a passage.{task}")


def _timing_note(result: CompressResult) -> str:
    timing = result.timing
    if timing.generates:
        decode, prefill = result.reference_latency.tokens_per_s(timing)
        return (f"a {timing.seq_len}-token prompt then {timing.new_tokens} tokens generated with the KV cache, "
                f"speedups of decode (dense PyTorch fp32: {decode:.1f} tokens/s decode, {prefill:.0f} tokens/s prefill)")
    return f"batch {timing.batch_size} x {timing.seq_len} tokens"


def _generations(result: CompressResult) -> str:
    """Greedy continuations by the dense and the delivered model, side by side."""
    if not result.generations:
        return ""
    rows = "".join(f"<tr><td>{html.escape(prompt)}</td><td>{html.escape(dense)}</td><td>{html.escape(delivered)}</td></tr>"
                   for prompt, dense, delivered in zip(result.generations["prompts"], result.generations["dense"],
                                                       result.generations[result.delivered.name]))
    return (f'<h2>Greedy generations</h2><table style="text-align:left"><tr><th>prompt</th><th>dense</th>'
            f"<th>delivered ({html.escape(_delivered_name(result))})</th></tr>{rows}</table>")


def _usage(result: CompressResult, model_dir: Path) -> str:
    load = (f'import ppocompress                                   # PyTorch, the exact pruned model\n'
            f'model = ppocompress.load("{model_dir}")')
    if result.causal:
        return (load + "\nids = model.tokenizer(\"The capital of France is\", return_tensors=\"pt\").input_ids\n"
                "print(model.tokenizer.decode(model.model.generate(ids, max_new_tokens=40)[0]))")
    return (load + "\n\nfrom sentence_transformers import SentenceTransformer  # the served files\n"
            f'model = SentenceTransformer("{model_dir}", backend="openvino")  # or backend="onnx"')


def _run_time(result: CompressResult) -> str:
    return f" The run took {result.run_time()} on this machine." if result.run_seconds else ""


# What each file of a run's folder is for, by its path in the folder.
FILE_ROLES = {
    RESULT_FILE: "every number in this report (ppocompress report rebuilds it)",
    STATE_FILE: "the search's saved state, which --resume continues from",
    REPORT_FILE: "this page",
    "model/model.safetensors": "the pruned weights, for ppocompress.load (PyTorch)",
    "model/compression.json": "the plan, the dense model's config and where it came from",
    "model/onnx/model.onnx": "the model for ONNX Runtime (sentence-transformers backend=\"onnx\")",
    "model/openvino/openvino_model.xml": "the model for OpenVINO (sentence-transformers backend=\"openvino\"), beside its .bin",
    f"{POLICY_DIR}/model.safetensors": f"the PPO search policy's weights; --policy {POLICY_DIR} starts a new search from it",
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
    error = 100 * table["largest_error_on_mixed_plans"]
    return f" (measured on {table['runtime']}; largest error on the mixed plans it was fitted to {error:.1f}%)"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def _save(fig, path: Path, ax=None) -> str:
    """The figure as a PNG at `path` (with `ax`: its legend and grid first); the file's name."""
    if ax is not None:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path.name


def _curve_plot(result: CompressResult, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result.curves.items():
        if curve:
            steps, best = zip(*curve)
            ax.step(steps, [fidelity_from_reward(b) for b in best], where="post", label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"best calibration {result.fidelity_short_name} so far")
    return _save(fig, path, ax)


def _scatter_plot(result: CompressResult, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    everything = []
    for name, evaluated in result.evaluated.items():
        if evaluated:
            speedups = [e.predicted_speedup for e in evaluated]
            cosines = [fidelity_from_reward(e.reward) for e in evaluated]
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
    ax.set_ylabel(f"{result.fidelity_short_name} to dense (dots: calibration text)")
    return _save(fig, path, ax)
