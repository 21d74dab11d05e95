"""The search's behaviour on a tiny model, as data: run in a process of its own by
test_search_behaviour.py (a near-1 cosine can move by an ulp after hundreds of other tests
in one process) and compared with tests/golden/search_behaviour_<kernels>.json, recorded before the
code was reorganised and again at each intended change of behaviour (the estimate's losses
added on the KL scale, and the estimate searcher); the AVX2 record was added later, from the
same code, on an AVX2-only machine. Last change: the finalists include the plan the estimate
ranks first, which changed one final plan in the AVX2 record; made on an AVX2-only machine,
the AVX512 record keeps its searches and lost its final plans (record it again there).
`python tests/search_behaviour.py OUT` prints it as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from compress_models import PASSAGES, save_tiny_model  # noqa: E402
from ppocompress.search import job as job_module  # noqa: E402
from ppocompress.search.job import CompressSettings, run_compress  # noqa: E402


def searched(out: Path, **settings) -> dict:
    """Every searcher's scored plans in order (menu levels and reward) and its best plan."""
    found = {}

    def keep(prepared, settings, target, finals, results, folder, log, floor=None, judged=None):
        found[target.label] = {name: {"best": list(map(int, finals[name])),
                                      "evaluated": [[list(map(int, e.plan)), round(float(e.reward), 9)]
                                                    for e in result.evaluated]}
                               for name, result in results.items()}
        return SimpleNamespace(to_json=lambda: "{}")

    job_module.deliver = keep
    job_module.write_report = lambda out: None
    import ppocompress.search.report as report
    report.write_report = report.write_target_set_report = lambda out: None
    run_compress(CompressSettings(**settings), out, log=lambda _: None)
    return found


def main(root: Path) -> dict:
    model = save_tiny_model("bert", root / "bert")
    text = root / "text.txt"
    text.write_text("\n".join(PASSAGES))
    common = dict(model=str(model), text=str(text), cost="flops", runtime="onnxruntime", recovery="lsq", seed=3,
                  calibration_texts=80, evaluation_texts=36)
    return {"single": searched(root / "single", target_speedup=2.5, evals=20, **common),
            "family": searched(root / "family", target_speedup=None, target_set_speedups=[2.0, 3.0], evals=24, **common)}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), sort_keys=True))
