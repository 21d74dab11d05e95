"""A stopped command says so: exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM),
one line, the command that resumes it when there is something to resume, and no staging
folder, lock or empty output folder left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from ppocompress.errors import Interrupted
from ppocompress.search.job import STATE_FILE, _worth_resuming
from ppocompress.stopping import stopped_by_signals

WAIT_SECONDS = 120


def _as_in_a_terminal() -> None:
    """A command started in the background of a script ignores SIGINT; in a terminal it does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ppocompress.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal)


def _wait_for(condition, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.2)


class _Object:
    pass


def test_a_signal_that_lands_where_python_ignores_exceptions_still_stops_the_command():
    """CI sent SIGTERM while an import ran a weakref callback: Python printed "Exception
    ignored" and the run went on."""
    with pytest.raises(Interrupted) as stopped, stopped_by_signals():
        target = _Object()
        ref = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGTERM))
        del target  # the callback runs, the handler raises inside it, Python ignores that
        for _ in range(100):
            time.sleep(0.01)
    assert stopped.value.signal_number == signal.SIGTERM and ref() is None


def test_a_signal_that_an_extension_wraps_in_its_own_error_still_stops_the_command():
    """CI sent SIGTERM while openvino's compiled module initialized: it came out as
    ImportError("initialization failed"), caused by the stop, and the run exited 1."""
    def initialize_extension() -> None:
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException as exc:
            raise ImportError("initialization failed") from exc

    with pytest.raises(Interrupted) as stopped, stopped_by_signals():
        initialize_extension()
    assert stopped.value.signal_number == signal.SIGTERM


def test_an_error_with_no_stop_in_its_chain_is_left_as_it_is():
    with pytest.raises(ImportError), stopped_by_signals():
        try:
            raise ValueError("inner")
        except ValueError as exc:
            raise ImportError("outer") from exc


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_training_run_exits_128_plus_the_signal_and_leaves_nothing(tmp_path, number):
    out = tmp_path / "run"
    process = _start("rl", "CartPole-v1", "--steps", "10000000", "--no-progress", "--out", str(out))
    _wait_for(lambda: out.exists() and any(".staging-" in p.name for p in out.iterdir()), process)
    time.sleep(1.0)  # into the training loop
    process.send_signal(number)
    _, err = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 128 + number
    assert err.strip().splitlines() == [f"error: interrupted by {signal.Signals(number).name}"]
    assert not out.exists()  # the run made the folder and finished nothing in it


@pytest.mark.slow
def test_a_stopped_compress_run_names_the_command_that_resumes_it(job_inputs, tmp_path):
    model, text = job_inputs
    out = tmp_path / "out"
    args = ["compress", "--model", str(model), "--text", str(text), "--cost", "flops", "--evals", "6", "--no-baselines",
            "--recover", "none", "--out", str(out)]
    process = _start(*args)
    _wait_for(lambda: _worth_resuming(out / STATE_FILE), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 143
    last = err.strip().splitlines()[-1]
    assert last == f"error: interrupted by SIGTERM; continue it with: ppocompress {' '.join(args)} --resume"
    assert not [p for p in Path(out).rglob("*") if ".staging-" in p.name or p.name == ".lock"]
    resumed = subprocess.run([sys.executable, "-m", "ppocompress.cli", *args, "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "result.json").exists()


def test_a_child_a_library_forks_during_a_command_dies_when_it_is_terminated():
    """OpenVINO's telemetry sender is such a child: with the command's handler it would
    outlive terminate() wherever it blocks outside Python, and the command would wait at exit."""
    import multiprocessing

    with stopped_by_signals():
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        child.start()
        time.sleep(0.5)
        child.terminate()
        child.join(10)
    assert child.exitcode == -signal.SIGTERM  # killed by the signal, not stopped by the command's handler
