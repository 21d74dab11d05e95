"""Changes to the code change no behaviour unless meant to: the same seed on the same tiny
model scores the same plans in the same order, with the same rewards, and every searcher
ends with the same plan as recorded (tests/golden/search_behaviour_<kernels>.json;
search_behaviour.py says when it was last recorded; a record that could not be made again
after a change of the finalists' rule keeps its searches and drops its final plans).

The record is bit for bit, so it is kept per set of CPU kernels torch picks (AVX2, AVX512):
rewards grow like -log(1 - cosine), and near cosine 1 the last bit of a float32 matmul,
which differs between them, is enough to reorder a search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def test_the_search_scores_the_same_plans_as_before_the_reorganisation(tmp_path):
    kernels = torch.backends.cpu.get_cpu_capability().lower()
    golden = HERE / "golden" / f"search_behaviour_{kernels}.json"
    if not golden.is_file():
        pytest.skip(f"no record for {kernels} kernels; make one with: python tests/search_behaviour.py OUT > {golden}")
    run = subprocess.run([sys.executable, str(HERE / "search_behaviour.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    now = json.loads(run.stdout)
    before = json.loads(golden.read_text())
    assert now.keys() == before.keys()
    for run_name, targets in before.items():
        assert now[run_name].keys() == targets.keys()
        for target, searchers in targets.items():
            assert now[run_name][target].keys() == searchers.keys()
            for name, expected in searchers.items():
                got = now[run_name][target][name]
                where = f"{run_name} {target} {name}"
                assert [levels for levels, _ in got["evaluated"]] == [levels for levels, _ in expected["evaluated"]], where
                assert [r for _, r in got["evaluated"]] == pytest.approx([r for _, r in expected["evaluated"]], abs=1e-6), where
                if "best" in expected:  # a record made before the last change of the finalists' rule has none
                    assert got["best"] == expected["best"], where
