"""The PPO searcher: our PPO (with invalid-action masking) on CompressionEnv. It rehearses
on the env's free reward estimate built from the one-off sensitivities, scores its plan
for each target improved on that estimate, then learns from evaluations. A target set is
searched in one run: one policy, the target in its observation."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np

from ppocompress.rl import PPO, PPOConfig
from ppocompress.search.env import CompressionEnv
from ppocompress.search.on_estimate import improve_on_estimate
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import Recorder, SearchRun
from ppocompress.search.reward import one_by_one

REHEARSAL_EPISODES = 2000  # the least each PPO agent first learns from the free reward estimate
REHEARSAL_MAX_EPISODES = 8000
REHEARSAL_LOOKS = 3  # looks at the greedy plan within the least rehearsal; then one a third of it
REHEARSAL_MIN_GAIN = 0.1  # estimated reward a look must add (the plan's loss down by 10%) for rehearsal to go on
PATIENCE = 2  # updates without a new plan after which an agent is taken to have converged
FRUITLESS_AGENTS = 3  # agents in a row that proposed no new plan, after which the search stops
LEARNING_STEPS_PER_EVALUATION = 4  # an agent's most steps: this many episodes per evaluation allowed (PATIENCE ends it first)
RESTART_SEED_STEP = 1000  # agent k's seed: the run's seed + k times this
EPISODES_PER_UPDATE = 32
MINIBATCHES = 3


def ppo_search(run: SearchRun) -> None:
    """PPO agents, one after another until the evaluations are spent. Each rehearses on
    the env's free reward estimate (the layers' one-off quality drops added up: no
    evaluation spent), then learns from real evaluations with the estimate as
    potential-based shaping. Plans scored before cost nothing, so a converging agent
    trains on for free; once it proposes no new plan for PATIENCE updates, a new agent
    (next seed) starts with the evaluations left: single agents converge early, to plans
    that differ by seed. Each agent is appended to run.agents with the evaluations made
    before it. A saved run.policy is the first agent, and learns on without rehearsing.
    Each agent's first evaluations are its plan for each target improved on the estimate
    (_estimated_best_plan): one policy over a target set generalises across its targets,
    and may never propose a plan the estimate ranks first for a loose target (the dense
    model itself) on its own.

    Settings, chosen by how close rehearsal came to the exact optimum of the estimate (a
    knapsack solved by dynamic programming): 32 episodes an update (fewer were noisier),
    Monte Carlo returns (lambda 1: shaping then biases nothing), normalised observations
    (the sensitivities are small numbers), and MINIBATCHES an update (on a deep model,
    larger minibatches rehearsed as far in less time than small ones)."""
    env, recorder = run.env, run.recorder
    config = ppo_config(env.num_layers)
    score, env.shaped, env.defer_rewards = env.score_plans, True, True  # a rollout's plans scored as one batch
    fruitless = 0
    for restart in itertools.count():
        if recorder.exhausted or fruitless == FRUITLESS_AGENTS:
            return
        before = len(recorder.cache)
        if restart == 0 and run.policy is not None:
            agent = run.policy
            agent.config = config  # the rollout fits this model's depth; the network is the saved one
            agent.set_env(env)
        else:
            agent = PPO(env, config, seed=run.seed + RESTART_SEED_STEP * restart)
            env.score_plans = one_by_one(env.estimated_reward)
            _rehearse(agent, env)
            env.score_plans = score
        run.agents.append((agent, before))
        env.score_plans([_estimated_best_plan(agent, env, target) for target in range(len(env.targets))])
        most_steps = env.num_layers * recorder.max_evaluations * LEARNING_STEPS_PER_EVALUATION
        agent.learn(most_steps, callback=_until_converged(recorder))
        fruitless = fruitless + 1 if len(recorder.cache) == before else 0


def ppo_config(num_layers: int) -> PPOConfig:
    """The PPO settings of the search (see ppo_search), for a model of num_layers layers."""
    steps = num_layers * EPISODES_PER_UPDATE
    return PPOConfig(
        n_envs=1, n_steps=steps, batch_size=steps // MINIBATCHES, n_epochs=10, gamma=1.0, gae_lambda=1.0,
        learning_rate=1e-3, anneal_lr=False, ent_coef=0.01, hidden_sizes=(64, 64), target_kl=0.05,
        normalize_observations=True,
    )


def _rehearse(agent, env: CompressionEnv) -> None:
    """Learns from the estimate for REHEARSAL_EPISODES, then on while the greedy plan's
    estimated reward still rises by REHEARSAL_MIN_GAIN a look, up to REHEARSAL_MAX_EPISODES.
    A fixed length did not scale with depth: what comes near the estimate's optimum on a
    shallow model leaves a deep one far from it."""
    probe = copy.copy(env)  # scores with the estimate; walked apart from the agent's env, which is mid-rollout
    least = math.ceil(REHEARSAL_EPISODES / EPISODES_PER_UPDATE)
    most = math.ceil(REHEARSAL_MAX_EPISODES / EPISODES_PER_UPDATE)
    look = math.ceil(least / REHEARSAL_LOOKS)
    updates, previous = 0, float("-inf")
    while updates < most:
        agent.learn(look * agent.config.n_steps)
        updates += look
        reward = float(np.mean([probe.estimated_reward(_greedy_plan(agent, probe, t)) for t in range(len(env.targets))]))
        if updates >= least and reward - previous < REHEARSAL_MIN_GAIN:
            return
        previous = reward


def _greedy_plan(agent, env: CompressionEnv, target: int = 0) -> Plan:
    """The agent's most likely plan for the target set's `target`-th target, scored by the
    env's score_plans on its last step (the estimate, during rehearsal)."""
    deferring, env.defer_rewards = env.defer_rewards, False
    try:
        observation, info = env.reset(options={"target": target})
        done = False
        while not done:
            action = agent.predict(observation, deterministic=True, action_mask=info["action_mask"])
            observation, _, done, _, info = env.step(action)
    finally:
        env.defer_rewards = deferring
    return Plan.of(info["levels"])


def _estimated_best_plan(agent, env: CompressionEnv, target: int) -> Plan:
    """The agent's plan for the target set's `target`-th target, with no evaluation: its
    greedy plan, walked on the free estimate, then improved on that estimate
    (on_estimate.improve_on_estimate). A policy overshoots a target it was not trained on (its plan
    for a neighbouring target meets it with room to spare), which the improvement spends."""
    probe = copy.copy(env)  # scores with the estimate: the plan is scored once it is final
    probe.score_plans = one_by_one(env.estimated_reward)
    return improve_on_estimate(env, _greedy_plan(agent, probe, target), target)


def _until_converged(recorder: Recorder):
    """A PPO callback that stops learning after PATIENCE updates without a new evaluation."""
    seen = {"evaluations": len(recorder.cache), "idle": 0}

    def callback(agent, metrics) -> bool:
        idle = len(recorder.cache) == seen["evaluations"]
        seen["evaluations"], seen["idle"] = len(recorder.cache), seen["idle"] + 1 if idle else 0
        return seen["idle"] < PATIENCE

    return callback
