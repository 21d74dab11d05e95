"""`ppocompress rl`: outputs, the summary line, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ppocompress.cli import main
from ppocompress.rl import PPO
from ppocompress.rl.job import OUTPUT_FILES


def test_rl_writes_all_outputs_and_prints_mean_return(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["rl", "CartPole-v1", "--steps", "512", "--seed", "3", "--out", str(out), "--eval-episodes", "2",
                 "--no-progress"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.search(r"mean_return=(-?[0-9.]+)", line)
    assert match and float(match.group(1)) > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("update,steps,") and len(rows) == 1 + 2  # 512 steps = 2 rollouts of 8x32
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    agent = PPO.load(out)
    assert agent.num_timesteps == 512 and agent.seed == 3


def test_rl_config_file_is_used(tmp_path, capsys):
    config = tmp_path / "ppo.json"
    config.write_text(json.dumps({"n_envs": 2, "n_steps": 16, "batch_size": 32, "n_epochs": 1}))
    out = tmp_path / "run"
    assert main(["rl", "CartPole-v1", "--steps", "64", "--out", str(out), "--config", str(config),
                 "--eval-episodes", "1", "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["n_envs"] == 2 and saved["n_steps"] == 16 and saved["n_epochs"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["rl", "NoSuchEnv-v0", "--steps", "10"], "unknown environment id"),
        (["rl", "CartPole-v1", "--steps", "-5"], "--steps must be >= 0"),
        (["rl", "CartPole-v1", "--steps", "abc"], "--steps"),
        (["rl", "CartPole-v1", "--no-such-option"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert not out.exists()


def test_unwritable_out_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["rl", "CartPole-v1", "--steps", "64", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write to --out" in err


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"learning_rat": 1}', "unknown PPO config key")])
def test_bad_config_file_is_one_line_and_writes_nothing(tmp_path, capsys, content, message):
    config = tmp_path / "bad.json"
    config.write_text(content)
    out = tmp_path / "run"
    assert main(["rl", "CartPole-v1", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_failed_run_leaves_no_partial_outputs(tmp_path, monkeypatch, capsys):
    from ppocompress.rl import job

    def explode(*args, **kwargs):
        raise RuntimeError("boom in evaluation")

    monkeypatch.setattr(job, "evaluate", explode)
    monkeypatch.setenv("PPOCOMPRESS_CACHE", str(tmp_path / "cache"))  # where the traceback is logged
    out = tmp_path / "run"
    assert main(["rl", "CartPole-v1", "--steps", "256", "--out", str(out), "--no-progress"]) == 1
    assert "unexpected RuntimeError: boom in evaluation" in capsys.readouterr().err
    assert not out.exists()  # the run made the folder: no metrics.csv, model, staging folder or lock, no folder
    out.mkdir()
    assert main(["rl", "CartPole-v1", "--steps", "256", "--out", str(out), "--no-progress"]) == 1
    assert list(out.iterdir()) == []  # a folder that was there stays, with nothing of the failed run


def test_console_script_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "ppocompress.cli", "rl", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--steps", "--seed", "--out", "--config", "--eval-episodes", "--progress", "--sweep", "--trials",
                   "--space", "--ray"):
        assert option in result.stdout


def test_progress_goes_to_stderr_and_stdout_holds_only_the_result(tmp_path, capsys):
    assert main(["rl", "CartPole-v1", "--steps", "256", "--eval-episodes", "1", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("done env=CartPole-v1") and captured.out.count("\n") == 1
    assert "PPO" in captured.err  # the progress bar's last frame
