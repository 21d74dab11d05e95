"""Every bad input a new user tried, as a table: each fails in one line with the right exit
code, before any long work, and leaves no output behind. Also: one run per output folder,
and the top-level guard for errors that are not the user's."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file, save_file

from compress_models import save_tiny_model
from ppocompress.cli import main
from ppocompress.search.results import RESULT_FORMAT
from ppocompress.search.state import STATE_FORMAT

LINES = [f"passage {i} tells of {w} and of what follows from it" for i, w in
         enumerate(["rivers", "cities", "music", "trade", "weather", "law", "food", "stars"] * 10)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the cases name: a tiny model and broken copies of it, text, configs, states."""
    root = tmp_path_factory.mktemp("bad")
    model = save_tiny_model("bert", root / "model")
    for name, damage in (("truncated", lambda data: data[: len(data) // 2]), ("garbage", lambda data: bytes(range(256)) * 4)):
        shutil.copytree(model, root / name)
        weights = root / name / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    shutil.copytree(model, root / "missing")
    weights = load_file(str(model / "model.safetensors"))
    dropped = next(name for name in weights if "encoder.layer.0.attention.self.query.weight" in name)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(root / "missing" / "model.safetensors"))
    (root / "text.txt").write_text("\n".join(LINES))
    (root / "a_file").write_text("not a folder")
    for name, config in {"float_int": {"n_steps": 64.5}, "str_sizes": {"hidden_sizes": "64"}, "str_steps": {"n_steps": "x"},
                         "str_gamma": {"gamma": "x"}, "zero_width": {"hidden_sizes": [0]}}.items():
        (root / f"{name}.json").write_text(json.dumps(config))
    for name, space in {"range_grid": {"learning_rate": {"low": 1e-5, "high": 1e-3}}, "bad_field": {"lr": [1e-3]},
                        "bad_range": {"clip_range": {"low": 0.3, "high": 0.1}}, "zero_steps": {"n_steps": [0, 32]}}.items():
        (root / f"space_{name}.json").write_text(json.dumps(space))
    (root / "no_searcher").mkdir()
    (root / "no_searcher" / "result.json").write_text(json.dumps({"format": RESULT_FORMAT, "model": "x"}))
    (root / "interrupted").mkdir()
    (root / "interrupted" / "state.json").write_text(json.dumps({"format": STATE_FORMAT, "settings": {},
                                                                 "evaluations": {"0": 1.0}, "finished": {}, "measurements": {}}))
    (root / "no_settings").mkdir()
    (root / "no_settings" / "state.json").write_text(json.dumps({"format": STATE_FORMAT, "evaluations": {}}))
    return root


CASES = [  # (arguments; {root}, {out} filled in), exit code, words the one line must hold
    ("compress --model {root}/truncated --out {out}", 2, "not a readable safetensors file"),
    ("compress --model {root}/garbage --out {out}", 2, "not a readable safetensors file"),
    ("compress --model {root}/missing --text {root}/text.txt --cost flops --out {out}", 2, "lacks 1 of the weights"),
    ("compress --model {root}/no/such/folder --out {out}", 2, "does not exist"),
    ("compress --out {root}/a_file", 2, "is a file, not a folder"),
    ("report {root}/a_file", 2, "is not a folder"),
    ("report {root}/no_searcher", 2, "lacks the field 'runtime'"),
    ("compress --resume --out {root}/no_settings", 2, "lacks the field 'settings'"),
    ("compress --resume --out {out}", 2, "nothing to resume"),
    ("compress --model {root}/model --text {root}/text.txt --cost flops --out {root}/interrupted", 2,
     "holds an interrupted run's measurements; add --resume"),
    ("rl CartPole-v1 --config {root}/float_int.json --out {out}", 2, "n_steps must be a whole number, got 64.5"),
    ("rl CartPole-v1 --config {root}/str_sizes.json --out {out}", 2, "hidden_sizes must be a list of whole numbers"),
    ("rl CartPole-v1 --config {root}/str_steps.json --out {out}", 2, "n_steps must be a whole number, got 'x'"),
    ("rl CartPole-v1 --config {root}/str_gamma.json --out {out}", 2, "gamma must be a number, got 'x'"),
    ("rl CartPole-v1 --config {root}/zero_width.json --out {out}", 2, "each of width >= 1"),
    ("rl CartPole-v1 --seed -1 --out {out}", 2, "--seed must be >= 0"),
    ("rl NoSuchEnv-v0 --out {out}", 2, "NoSuchEnv-v0"),
    ("rl CartPole-v1 --trials 4 --out {out}", 2, "belong to a sweep"),
    ("rl CartPole-v1 --sweep bayes --out {out}", 2, "unknown sweep 'bayes'"),
    ("rl CartPole-v1 --sweep random --out {out}", 2, "a random sweep needs --trials >= 1"),
    ("rl CartPole-v1 --sweep grid --trials 16 --out {out}", 2, "the grid has 324 combinations, not --trials 16"),
    ("rl CartPole-v1 --sweep grid --space {root}/space_range_grid.json --out {out}", 2, "a grid cannot enumerate"),
    ("rl CartPole-v1 --sweep random --trials 2 --space {root}/space_bad_field.json --out {out}", 2,
     "'lr' is not a PPOConfig field"),
    ("rl CartPole-v1 --sweep random --trials 2 --space {root}/space_bad_range.json --out {out}", 2, "needs numbers low < high"),
    ("rl CartPole-v1 --sweep grid --space {root}/space_zero_steps.json --out {out}", 2, "n_steps must be >= 1"),
    ("rl CartPole-v1 --sweep random --trials 2 --space {root}/no_such.json --out {out}", 2, "does not exist"),
    ("rl CartPole-v1 --sweep random --trials 1 --ray 127.0.0.1:1 --out {out}", 2, "cannot reach a Ray cluster at '127.0.0.1:1'"),
    ("rl CartPole-v1 --sweep random --trials 1 --ray somewhere --out {out}", 2, "is not host:port or auto"),
    ("compress --target-speedup 0 --out {out}", 2, "--target-speedup must be >= 1"),
    ("compress --target-speedup -1 --out {out}", 2, "--target-speedup must be >= 1"),
    ("compress --target-speedup nan --out {out}", 2, "must be a finite number"),
    ("compress --target-speedup inf --out {out}", 2, "must be a finite number"),
    ("compress --target-size 1.5 --out {out}", 2, "--target-size must be a fraction"),
    ("compress --target-size 0 --out {out}", 2, "--target-size must be a fraction"),
    ("compress --model {root}/model --text {root}/text.txt --cost flops --target-speedup 50 --out {out}", 2, "cannot be met"),
    ("compress --threads 0 --out {out}", 2, "threads must be >= 1"),
    ("compress --threads 1000 --out {out}", 2, "--threads 1000 is more than the"),
    ("evaluate --threads 1000", 2, "--threads 1000 is more than the"),
    ("bench --threads 1000", 2, "--threads 1000 is more than the"),
    ("compress --seed -1 --out {out}", 2, "--seed must be >= 0"),
    ("compress --evals 0 --out {out}", 2, "--evals must be >= 1"),
    ("compress --searcher annealing --out {out}", 2, "unknown searcher"),
    ("compress --runtime tpu --out {out}", 2, "unknown runtime"),
    ("compress --recover magic --out {out}", 2, "magic"),
    ("compress --cost guess --out {out}", 2, "--cost must be measured or flops"),
    ("compress --trust-remote-code --target-speedup nan --out {out}", 2, "must be a finite number"),
    ("compress --model {root}/model --text {root}/no_such.txt --cost flops --out {out}", 2, "does not exist"),
    ("compress --no-such-option", 2, "No such option"),
]


@pytest.mark.parametrize("arguments, code, words", CASES, ids=[c[0].split(" --out")[0] for c in CASES])
def test_bad_input_fails_in_one_line_and_leaves_nothing(inputs, tmp_path, capsys, arguments, code, words):
    out = tmp_path / "out"
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    assert main(arguments.format(root=inputs, out=out).split()) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], captured.err
    assert not out.exists()
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before  # nothing written beside the inputs


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed here")
def test_an_env_whose_optional_dependency_is_missing_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["rl", "LunarLander-v3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'LunarLander-v3' needs a package that is not installed: Box2D" in err
    assert not out.exists()


def _hold_lock(folder) -> subprocess.Popen:
    """Another process that holds the run lock of `folder` until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from ppocompress.fileio import run_lock
        with run_lock({str(folder)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_the_same_folder_is_refused_and_a_killed_runs_lock_is_not_in_the_way(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        for command in (["compress", "--model", str(inputs / "model"), "--text", str(inputs / "text.txt"), "--cost", "flops"],
                        ["rl", "CartPole-v1", "--steps", "64"]):
            assert main([*command, "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"process {holder.pid}" in err and "is writing to" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused runs wrote nothing
    assert main(["rl", "CartPole-v1", "--steps", "64", "--eval-episodes", "1", "--no-progress", "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()


def test_an_unexpected_error_is_one_line_exit_1_with_the_traceback_in_a_log(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PPOCOMPRESS_CACHE", str(tmp_path / "cache"))

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr("ppocompress.rl.job.train_and_export", broken)
    assert main(["rl", "CartPole-v1", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unexpected RuntimeError: the disk went away;" in err and "--debug" in err
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    assert str(log) in err and "Traceback" in log.read_text() and "second line" in log.read_text()
    with pytest.raises(RuntimeError, match="the disk went away"):
        main(["--debug", "rl", "CartPole-v1", "--out", str(tmp_path / "x")])


def test_version_is_printed(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ppocompress ")
