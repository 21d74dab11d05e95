"""The compression task as a registered Gymnasium env: gymnasium.make builds it on a tiny
model, Gymnasium's checker accepts it, and its episodes meet the target."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ppocompress  # noqa: F401  (registers ppocompress/Compress-v0)
from ppocompress.errors import UserError
from ppocompress.search import CompressionEnv, Target, factory
from ppocompress.search.evaluator import PlanEvaluator
from ppocompress.search.factory import make_env
from ppocompress.search.plan import Plan
from ppocompress.search.reward import reward_from_fidelity
from ppocompress.search.settings import FLOOR_INT8_SPEEDUPS, CompressSettings

ENV_ID = "ppocompress/Compress-v0"


@pytest.fixture(scope="session")
def files(job_inputs):
    return job_inputs


def arguments(files, **overrides) -> dict:
    """A tiny model priced by FLOPs (nothing timed), scored as ONNX Runtime runs it."""
    model_dir, text = files
    values = dict(model=str(model_dir), target_speedup=1.5, cost="flops", runtime="onnxruntime", text=str(text),
                  log=lambda line: None)
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def env(files):
    made = gymnasium.make(ENV_ID, **arguments(files))
    yield made
    made.close()


def test_gymnasium_make_builds_the_compression_env_for_the_target(env):
    task = env.unwrapped
    assert isinstance(task, CompressionEnv) and env.spec.id == ENV_ID
    assert task.targets == [Target("speedup", 1.5)] and task.num_layers == 3
    assert task.action_space == gymnasium.spaces.Discrete(len(task.menu))


def test_the_env_passes_the_gymnasium_checker(env):
    env.unwrapped.action_space.seed(0)  # the checker steps with samples of the action space: the same ones every run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught if "gymnasium" in w.filename] == []  # it reports most problems as warnings


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_masked_episode_ends_with_a_plan_meeting_the_target_and_a_finite_reward(env, seed):
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    done = False
    while not done:
        _, reward, done, truncated, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        assert not truncated
    assert len(info["levels"]) == 3 and env.unwrapped.is_valid_plan(info["levels"])
    assert env.unwrapped.cost.speedup(info["levels"]) >= 1.5 - 1e-9 and math.isfinite(reward)


def test_a_plan_is_scored_with_the_search_reward_and_evaluated_once(env, monkeypatch):
    task = env.unwrapped
    # the cheapest kept level everywhere: no seeded episode above ends with it, so it is scored here first
    plan = Plan.uniform(len(task.menu) - 2, task.num_layers)
    assert task.is_valid_plan(plan)
    qualities = []
    original = PlanEvaluator.quality

    def recording(self, levels, fidelity="low"):
        qualities.append(original(self, levels, fidelity))
        return qualities[-1]

    monkeypatch.setattr(PlanEvaluator, "quality", recording)
    first, again = task.score_plan(plan), task.score_plan(plan)
    assert len(qualities) == 1 and first == again == reward_from_fidelity(qualities[0])


@pytest.mark.parametrize("overrides, message", [
    (dict(target_speedup=0.5), "must be >= 1, got 0.5"),
    (dict(target_speedup=2.0, target_size=0.5), "exactly one of"),
    (dict(target_size=1.5, target_speedup=None), "must be a fraction in (0, 1]"),
    (dict(cost="latency"), "--cost must be measured or flops"),
    (dict(runtime="gpu"), "unknown runtime 'gpu'"),
    (dict(recovery="magic"), "unknown recovery 'magic'"),
])
def test_a_bad_argument_raises_a_user_error_before_the_model_is_loaded(files, overrides, message, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("prepare() ran: the model was loaded despite a bad argument")

    monkeypatch.setattr(factory, "prepare", must_not_run)
    with pytest.raises(UserError) as raised:
        gymnasium.make(ENV_ID, **arguments(files, **overrides))
    assert message in str(raised.value)


def test_the_factory_defaults_are_those_of_ppocompress_compress():
    defaults = {f.name: f.default for f in dataclasses.fields(CompressSettings)}
    parameters = inspect.signature(make_env).parameters
    shared = [name for name in parameters if name in defaults]
    assert len(shared) == len(parameters) - 1  # all but log
    assert {name: parameters[name].default for name in shared} == {name: defaults[name] for name in shared}


@pytest.mark.parametrize("given, targets", [
    ({}, [Target("int8-speedup", value) for value in FLOOR_INT8_SPEEDUPS]),  # no target: `ppocompress compress`'s
    (dict(target_size=0.5), [Target("size", 0.5)]),
    (dict(target_set_speedups=[3.0, 1.5]), [Target("speedup", 1.5), Target("speedup", 3.0)]),  # a target set, taken in turn
    (dict(target_set_int8_speedups=[1.3, 1.1]), [Target("int8-speedup", 1.1), Target("int8-speedup", 1.3)]),
])
def test_the_env_is_built_for_the_targets_ppocompress_compress_would_search(given, targets, monkeypatch):
    class Stop(Exception):
        pass

    asked = []

    def stop(settings, state, save_state, log):
        asked.append(settings.targets())
        raise Stop  # before the embedded model is loaded

    monkeypatch.setattr(factory, "prepare", stop)
    with pytest.raises(Stop):
        make_env(**given)
    assert asked == [targets]


def test_importing_ppocompress_registers_the_env_without_torch_or_transformers():
    code = ("import sys, gymnasium, ppocompress; "
            f"assert {ENV_ID!r} in gymnasium.registry; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
