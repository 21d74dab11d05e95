"""The PPO update: ratio 1 on the first minibatch, KL control, annealing, gradient
clipping, the optimizer and the network initialisation."""

import math

import numpy as np
import pytest
import torch

import ppocompress.rl.ppo as ppo_module
from ppocompress.rl import PPO
from ppocompress.rl.policy import ACTIVATIONS, StackedMLP, _StackedMLPFunction
from rl_toy_envs import tiny_config


def learn_metrics(agent: PPO, steps: int) -> list[dict]:
    history: list[dict] = []
    agent.learn(steps, callback=lambda _agent, metrics: history.append(dict(metrics)))
    return history


@pytest.mark.parametrize("normalize_observations", [False, True])
@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "RLToy/MultiDiscrete-v0", "RLToy/Box-v0", "RLToy/MaskedMultiDiscrete-v0"]
)
def test_first_ratio_deviation_is_at_most_1e_6_on_every_update(env_id, normalize_observations):
    agent = PPO(env_id, tiny_config(normalize_observations=normalize_observations), seed=0)
    history = learn_metrics(agent, 256)
    assert len(history) == 4
    for metrics in history:
        assert metrics["first_ratio_deviation"] <= 1e-6


def test_target_kl_tiny_stops_the_epochs_early():
    agent = PPO("CartPole-v1", tiny_config(n_epochs=8, batch_size=16, learning_rate=1e-3, target_kl=1e-5), seed=0)
    history = learn_metrics(agent, 128)
    assert len(history) == 2
    assert all(m["epochs_run"] < 8 for m in history)


def test_target_kl_none_runs_every_epoch():
    agent = PPO("CartPole-v1", tiny_config(n_epochs=8, batch_size=16, learning_rate=1e-3, target_kl=None), seed=0)
    history = learn_metrics(agent, 128)
    assert [m["epochs_run"] for m in history] == [8, 8]


def test_adaptive_kl_penalty_halves_the_coefficient_when_kl_is_far_below_target():
    agent = PPO("CartPole-v1", tiny_config(kl_penalty_target=1e6, kl_coef=0.2), seed=0)
    history = learn_metrics(agent, 64)
    assert agent.kl_coef == pytest.approx(0.1)
    assert history[0]["kl_coef"] == pytest.approx(0.1)


def test_adaptive_kl_penalty_doubles_the_coefficient_when_kl_is_far_above_target():
    agent = PPO("CartPole-v1", tiny_config(kl_penalty_target=1e-12, kl_coef=0.2), seed=0)
    history = learn_metrics(agent, 64)
    assert agent.kl_coef == pytest.approx(0.4)
    assert history[0]["kl_coef"] == pytest.approx(0.4)


def test_adaptive_kl_penalty_off_leaves_the_coefficient_alone():
    agent = PPO("CartPole-v1", tiny_config(kl_penalty_target=None, kl_coef=0.2), seed=0)
    learn_metrics(agent, 128)
    assert agent.kl_coef == 0.2


def record_optimizer_steps(agent: PPO, record) -> None:
    """Calls record(agent) right before every optimizer step."""
    original_step = agent.optimizer.step

    def step(*args, **kwargs):
        record(agent)
        return original_step(*args, **kwargs)

    agent.optimizer.step = step


def test_linear_learning_rate_annealing_per_update():
    lr, n = 1e-3, 4
    agent = PPO("CartPole-v1", tiny_config(learning_rate=lr, anneal_lr=True), seed=0)
    used: list[float] = []
    record_optimizer_steps(agent, lambda a: used.append(a.optimizer.lr))
    history = learn_metrics(agent, n * 64)
    expected = [lr * (1 - u / n) for u in range(n)]
    assert [m["learning_rate"] for m in history] == pytest.approx(expected, rel=1e-12)
    steps_per_update = 2 * 2  # n_epochs * minibatches
    assert used == pytest.approx(np.repeat(expected, steps_per_update).tolist(), rel=1e-12)


def test_constant_learning_rate_without_annealing():
    agent = PPO("CartPole-v1", tiny_config(learning_rate=1e-3, anneal_lr=False), seed=0)
    history = learn_metrics(agent, 192)
    assert [m["learning_rate"] for m in history] == [1e-3] * 3


def test_linear_clip_range_annealing_per_update(monkeypatch):
    eps, n = 0.3, 4
    used: list[float] = []
    original = ppo_module.clipped_surrogate_loss

    def recording_loss(ratio, advantages, clip_range):
        used.append(clip_range)
        return original(ratio, advantages, clip_range)

    monkeypatch.setattr(ppo_module, "clipped_surrogate_loss", recording_loss)
    agent = PPO("CartPole-v1", tiny_config(clip_range=eps, anneal_clip_range=True), seed=0)
    history = learn_metrics(agent, n * 64)
    expected = [eps * (1 - u / n) for u in range(n)]
    assert [m["clip_range"] for m in history] == pytest.approx(expected, rel=1e-12)
    assert used == pytest.approx(np.repeat(expected, 4).tolist(), rel=1e-12)


def test_gradients_are_clipped_to_max_grad_norm_before_each_step():
    max_norm = 0.05
    agent = PPO("CartPole-v1", tiny_config(max_grad_norm=max_norm, n_epochs=3), seed=0)
    norms: list[float] = []

    def total_grad_norm(a):
        grads = [p.grad.detach().flatten() for p in a.policy.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())

    record_optimizer_steps(agent, total_grad_norm)
    history = learn_metrics(agent, 128)
    assert len(norms) == 2 * 3 * 2
    assert max(norms) <= max_norm * (1 + 1e-4)
    # the clipping was active: the pre-clip norms (the grad_norm metric) exceed the limit
    assert max(m["grad_norm"] for m in history) > max_norm


def test_adam_uses_eps_1e_5():
    assert PPO("CartPole-v1", tiny_config(), seed=0).optimizer.eps == 1e-5


def test_flat_adam_steps_exactly_like_torch_adam_on_separate_parameters():
    from ppocompress.rl.flat_parameters import FlatAdam, FlatParameters

    generator = torch.Generator().manual_seed(0)
    ours, theirs = (torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    flat = FlatParameters(ours)
    flat_adam = FlatAdam(flat, lr=3e-3, eps=1e-5)
    torch_adam = torch.optim.Adam(theirs.parameters(), lr=3e-3, eps=1e-5)
    for step in range(5):
        x = torch.randn(7, 3, generator=generator)
        flat.zero_grad()
        ours(x).pow(2).sum().backward()
        torch_adam.zero_grad()
        theirs(x).pow(2).sum().backward()
        flat_adam.lr = torch_adam.param_groups[0]["lr"] = 3e-3 * (1 - step / 5)
        flat_adam.step()
        torch_adam.step()
    for mine, reference in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    state = flat_adam.per_parameter_state()
    for i, param in enumerate(theirs.parameters()):
        torch.testing.assert_close(state[f"{i}.exp_avg_sq"], torch_adam.state[param]["exp_avg_sq"], rtol=1e-6, atol=1e-12)
        assert state[f"{i}.step"].item() == torch_adam.state[param]["step"].item() == 5


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(weight.detach().double())


@pytest.mark.parametrize("env_id", ["CartPole-v1", "RLToy/MultiDiscrete-v0", "RLToy/Box-v0"])
@pytest.mark.parametrize("shared", [False, True])
def test_orthogonal_init_gains(env_id, shared):
    config = tiny_config(hidden_sizes=(32, 16, 8), shared_network=shared)
    policy = PPO(env_id, config, seed=3).policy
    head = singular_values(policy.action_head.weight)
    torch.testing.assert_close(head, torch.full_like(head, 0.01), rtol=1e-5, atol=0)
    value = singular_values(policy.value_head.weight)
    torch.testing.assert_close(value, torch.ones_like(value), rtol=1e-5, atol=0)
    copies = 1 if shared else 2
    assert len(policy.bodies.weights) == 3
    for weight in policy.bodies.weights:
        assert weight.shape[0] == copies
        for copy in weight:
            sv = singular_values(copy)
            torch.testing.assert_close(sv, torch.full_like(sv, math.sqrt(2)), rtol=1e-5, atol=0)
    for bias in [*policy.bodies.biases, policy.action_head.bias, policy.value_head.bias]:
        assert torch.count_nonzero(bias) == 0


def test_actor_and_critic_bodies_are_initialised_independently():
    policy = PPO("CartPole-v1", tiny_config(), seed=0).policy
    first = policy.bodies.weights[0]
    assert not torch.allclose(first[0], first[1])


def test_shared_network_builds_one_body_and_trains():
    agent = PPO("CartPole-v1", tiny_config(shared_network=True), seed=0)
    assert agent.policy.bodies.copies == 1
    assert all(w.shape[0] == 1 for w in agent.policy.bodies.weights)
    before = [p.detach().clone() for p in agent.policy.bodies.parameters()]
    history = learn_metrics(agent, 256)
    assert agent.num_timesteps == 256
    assert all(math.isfinite(m["policy_loss"]) and math.isfinite(m["value_loss"]) for m in history)
    # the shared body received gradients from the losses and moved
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.policy.bodies.parameters()))


def test_value_clipping_config_trains_with_finite_losses():
    agent = PPO("CartPole-v1", tiny_config(clip_range_vf=0.2, ent_coef=0.01), seed=0)
    history = learn_metrics(agent, 128)
    assert all(math.isfinite(m["value_loss"]) and math.isfinite(m["entropy"]) for m in history)


def stacked_mlp(name: str, dtype=torch.float32, input_dim: int = 5) -> StackedMLP:
    torch.manual_seed(0)
    body = StackedMLP(2, input_dim, (7, 3), name).to(dtype)
    with torch.no_grad():
        for bias in body.biases:
            bias.normal_()  # zero biases would hide a wrong bias gradient
    return body


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_stacked_mlp_matches_separate_torch_mlps_in_value_and_gradient(name):
    body = stacked_mlp(name)
    reference = torch.tanh if name == "tanh" else torch.relu
    x = (torch.randn(11, 5, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_(True)
    out = body(x)
    weights = [w.detach().clone().requires_grad_(True) for w in body.weights]
    biases = [b.detach().clone().requires_grad_(True) for b in body.biases]
    x_ref = x.detach().clone().requires_grad_(True)
    expected = []
    for copy in range(2):
        h = x_ref
        for weight, bias in zip(weights, biases):
            h = reference(h @ weight[copy] + bias[copy])
        expected.append(h)
    expected = torch.stack(expected)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for mine, theirs in zip([x, *body.weights, *body.biases], [x_ref, *weights, *biases]):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_stacked_mlp_backward_passes_gradcheck():
    body = stacked_mlp("tanh", torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in (*body.weights, *body.biases)]
    assert torch.autograd.gradcheck(lambda x, *ps: _StackedMLPFunction.apply(ACTIVATIONS["tanh"], x, *ps), (x, *params))


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_stacked_mlp_gives_identical_values_with_and_without_autograd(name):
    # Rollouts run without autograd, updates with it: equal outputs keep the first ratio at 1.
    body = stacked_mlp(name)
    x = torch.randn(257, 5, generator=torch.Generator().manual_seed(0)) * 4
    with torch.inference_mode():
        without = body(x)
    assert torch.equal(without, body(x).detach())
