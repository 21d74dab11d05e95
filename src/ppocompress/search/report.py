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
from ppocompress.fileio import atomic_path, atomic_write_text, read_json_object  # noqa: E402


def _cosine(reward: float) -> float:
    return 1.0 - math.exp(-reward)


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    result = read_json_object(run_dir / "result.json", "run result", "run ppocompress compress first")
    if "curves" not in result:
        raise UserError(f"{run_dir / 'result.json'} is not a compress result; pass the --out folder of ppocompress compress")
    plots = {"policy": _policy_plot(result, run_dir / "policy.png"), "curve": _curve_plot(result, run_dir / "search_curve.png"),
             "scatter": _scatter_plot(result, run_dir / "pareto.png")}
    rows = [result] + list(result.get("baselines", {}).values())
    columns = ("searcher", "evaluations", "predicted_speedup", "measured_speedup", "measured_speedup_vs_onnx_dense", "backend",
               "cosine_heldout", "lee_pearson", "size_bytes")
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ppocompress report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}img{{max-width:100%}}</style></head><body>
<h1>ppocompress: {html.escape(str(result.get('model')))}</h1>
<p>Target speedup {html.escape(_fmt(result.get('target_speedup')))}; dense Lee Pearson {html.escape(_fmt(result.get('dense_lee_pearson')))}.
Speedups are measured in separate processes, batch 32, against the dense model in PyTorch fp32 (and in ONNX Runtime fp32);
predicted speedups come from the latency table{html.escape(_table_note(result))}. Cosine and Lee Pearson are on held-out text,
for the model on the backend shown (the faster one). Sensitivities took {html.escape(_fmt(result.get('sensitivity_evaluations')))}
evaluations, shared by all searchers and outside their budgets.</p>
<table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{table}</table>
<h2>Per-layer policy</h2><img src="{plots['policy']}"><h2>Search curve</h2><img src="{plots['curve']}">
<h2>Quality against predicted speedup, all evaluated plans</h2><img src="{plots['scatter']}">
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def _table_note(result: dict) -> str:
    table = result.get("latency_table")
    if not table:
        return " (FLOPs, not measured)"
    return f" ({table['backend']}; largest error on the mixed plans it was fitted to {100 * table['largest_error_on_mixed_plans']:.1f}%)"


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


def _policy_plot(result: dict, path: Path) -> str:
    rows = [result] + list(result.get("baselines", {}).values())
    names = [row["searcher"] for row in rows]
    layers = len(rows[0]["levels"])
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * layers, 0.8 + 0.6 * len(rows)))
    compression = np.array([[_level_weight(name) for name in row["levels"]] for row in rows])
    ax.imshow(compression, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(rows):
        for c, name in enumerate(row["levels"]):
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


def _curve_plot(result: dict, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result["curves"].items():
        if curve:
            steps, best = zip(*curve)
            ax.step(steps, [_cosine(b) for b in best], where="post", label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best calibration cosine so far")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _scatter_plot(result: dict, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    everything = []
    for name, evaluated in result["evaluated"].items():
        if evaluated:
            speedups = [e[2] for e in evaluated]
            cosines = [_cosine(e[1]) for e in evaluated]
            ax.scatter(speedups, cosines, s=8, alpha=0.5, label=name)
            everything += list(zip(speedups, cosines))
    front, best = [], -1.0
    for speedup, cosine in sorted(everything, key=lambda p: -p[0]):  # Pareto: faster and better than all others
        if cosine > best:
            front.append((speedup, cosine))
            best = cosine
    if front:
        ax.plot(*zip(*sorted(front)), color="black", linewidth=1.5, label="Pareto front")
    ax.set_xlabel("predicted speedup (latency table)")
    ax.set_ylabel("calibration cosine")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
