"""The actor-critic network: MLP bodies, an action head for the action space, a value head."""

from __future__ import annotations

import contextlib
import math

import torch
from gymnasium import spaces
from torch import nn

from ppocompress.rl.config import PPOConfig
from ppocompress.rl.distributions import DiagGaussian, MultiCategorical
from ppocompress.rl.normalization import ObservationNormalizer
from ppocompress.rl.spaces import (
    action_logit_sizes,
    encode_observations,
    observation_dim,
)


@contextlib.contextmanager
def one_thread():
    """torch on one thread for the block. PPO's networks are far too small to gain from a
    second intra-op thread: each kernel split in two waits for the other thread, and on a
    busy machine that thread may be descheduled for milliseconds (a batched matmul of the
    update took 25 us on one thread, 8 ms on two with the other core busy). Used around
    the policy's own work only: an env step keeps the caller's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _SigmoidTanh(torch.autograd.Function):
    """tanh computed as 2 sigmoid(2x) - 1 (max error ~2e-7), backward 1 - y^2.

    torch.tanh's vectorised kernel is several times slower than sigmoid's on common x86
    CPUs, and tanh is the single largest cost of a small PPO network's forward pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class FastTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SigmoidTanh.apply(x)
        return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)  # same arithmetic, no autograd node


ACTIVATIONS = {"tanh": FastTanh, "relu": nn.ReLU}


def orthogonal_linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """Linear layer with orthogonal weights and zero bias (PPO's usual init: the small
    policy-head gain makes the first policy near uniform, which keeps early updates safe)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class StackedMLP(nn.Module):
    """`copies` independent MLPs of the same shape on the same input, computed together.

    Actor and critic bodies are two such MLPs. PPO's networks are so small that the cost
    is the number of kernel launches, not arithmetic; one batched matmul per layer for
    both networks halves those launches in the forward and backward pass. Each copy is
    initialised exactly like its own nn.Linear stack (orthogonal, gain sqrt 2, zero bias).
    """

    def __init__(self, copies: int, in_features: int, hidden_sizes: tuple[int, ...], activation: str):
        super().__init__()
        self.copies = copies
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for size in hidden_sizes:
            weight = torch.empty(copies, in_features, size)
            for i in range(copies):
                nn.init.orthogonal_(weight[i].T, math.sqrt(2))
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(copies, 1, size)))
            in_features = size
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in) -> (copies, batch, hidden[-1])."""
        h = x.unsqueeze(0).expand(self.copies, *x.shape)
        for weight, bias in zip(self.weights, self.biases):
            h = self.activation(torch.baddbmm(bias, h, weight))
        return h


class ActorCritic(nn.Module):
    """Maps features to an action distribution and a value.

    `features` are encoded (and, if enabled, normalised) observations; rollouts store
    features rather than raw observations so that the update sees exactly the inputs the
    rollout saw, which is what makes the first probability ratio exactly 1.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, config: PPOConfig):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        obs_dim = observation_dim(observation_space)
        hidden = config.hidden_sizes
        self.obs_normalizer = (
            ObservationNormalizer(obs_dim, config.clip_normalized) if config.normalize_observations else None
        )
        # A shared network uses one body for both heads; separate bodies (SB3's default)
        # keep the value loss from fighting the policy loss over shared features.
        self.bodies = StackedMLP(1 if config.shared_network else 2, obs_dim, hidden, config.activation)
        self.value_head = orthogonal_linear(hidden[-1], 1, 1.0)
        self.logit_sizes = action_logit_sizes(action_space)
        if self.logit_sizes is not None:
            self.action_head = orthogonal_linear(hidden[-1], sum(self.logit_sizes), 0.01)
            self.log_std = None
        else:
            action_dim = int(action_space.shape[0])
            self.action_head = orthogonal_linear(hidden[-1], action_dim, 0.01)
            self.log_std = nn.Parameter(torch.full((action_dim,), float(config.log_std_init)))

    def features(self, observations, update_normalizer: bool = False) -> torch.Tensor:
        """Raw observations (numpy or tensor, batched) to network inputs."""
        x = encode_observations(self.observation_space, observations)
        if self.obs_normalizer is not None:
            if update_normalizer:
                self.obs_normalizer.update(x)
            x = self.obs_normalizer(x)
        return x

    def forward(self, features: torch.Tensor, action_mask: torch.Tensor | None = None):
        """Returns (distribution, value) for a batch of features."""
        # unbind's backward is one stack; indexing's is a zero-filled copy per index, then a sum.
        hidden = self.bodies(features).unbind(0)
        actor_hidden, critic_hidden = hidden[0], hidden[-1]
        value = self.value_head(critic_hidden).squeeze(-1)
        return self.distribution(actor_hidden, action_mask), value

    def distribution(self, actor_hidden: torch.Tensor, action_mask: torch.Tensor | None):
        out = self.action_head(actor_hidden)
        if self.logit_sizes is None:
            return DiagGaussian(out, self.log_std)
        return MultiCategorical(out, self.logit_sizes, action_mask)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.bodies(features)[-1]).squeeze(-1)
