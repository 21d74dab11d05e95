"""The actor-critic network: MLP bodies, an action head for the action space, a value head."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

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
    busy machine that thread may be descheduled for far longer than the kernel itself takes.
    Used around the policy's own work only: an env step keeps the caller's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Activation:
    """An activation as the stacked bodies compute it: y = output(scale * z) for a layer's
    pre-activation z (the scale is folded into the layer's matmul), and dL/dz from y."""

    scale: float
    output: Callable[[torch.Tensor], torch.Tensor]  # may work in place on its argument
    gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (dL/dy, y) -> dL/dz


def _tanh_of_half(z2: torch.Tensor) -> torch.Tensor:
    """tanh(z) from 2z as 2 sigmoid(2z) - 1 (max error ~2e-7): torch.tanh's vectorised
    kernel is several times slower than sigmoid's on common x86 CPUs, and tanh is the
    single largest cost of a small PPO network's forward pass."""
    return torch.sigmoid_(z2).mul_(2.0).sub_(1.0)


ACTIVATIONS = {
    "tanh": Activation(2.0, _tanh_of_half, torch.ops.aten.tanh_backward),
    "relu": Activation(1.0, torch.relu_, lambda grad, y: torch.ops.aten.threshold_backward(grad, y, 0.0)),
}


def _stacked_layers(activation: Activation, x: torch.Tensor, weights, biases) -> list[torch.Tensor]:
    """Every layer's input, then the last layer's output, of the stacked MLPs."""
    h = x.unsqueeze(0).expand(weights[0].shape[0], *x.shape)
    layers = [h]
    for weight, bias in zip(weights, biases):
        h = activation.output(torch.baddbmm(bias, h, weight, beta=activation.scale, alpha=activation.scale))
        layers.append(h)
    return layers


class _StackedMLPFunction(torch.autograd.Function):
    """The stacked MLPs' forward and backward as one autograd node, the backward written out
    (four kernels a layer). At PPO's sizes an update costs per operation, not arithmetic,
    and one node costs less than an autograd node per operation."""

    @staticmethod
    def forward(ctx, activation: Activation, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        n = len(params) // 2
        layers = _stacked_layers(activation, x, params[:n], params[n:])
        ctx.activation = activation
        ctx.save_for_backward(*layers, *params[:n])
        return layers[-1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        n = (len(saved) - 1) // 2
        layers, weights = saved[: n + 1], saved[n + 1 :]
        weight_grads: list[torch.Tensor] = [None] * n
        bias_grads: list[torch.Tensor] = [None] * n
        input_needs_grad = ctx.needs_input_grad[1]
        for i in reversed(range(n)):
            grad = ctx.activation.gradient(grad, layers[i + 1])
            weight_grads[i] = torch.bmm(layers[i].transpose(1, 2), grad)
            bias_grads[i] = grad.sum(dim=1, keepdim=True)
            if i > 0 or input_needs_grad:
                grad = torch.bmm(grad, weights[i].transpose(1, 2))
        input_grad = grad.sum(dim=0) if input_needs_grad else None
        return None, input_grad, *weight_grads, *bias_grads


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) without nn.Module's call machinery (for hooks the heads never have), which
    costs as much as a head's own small matmul."""
    return nn.functional.linear(x, layer.weight, layer.bias)


POLICY_HEAD_GAIN = 0.01  # PPO's usual init: a near-uniform first policy, which keeps early updates safe


def orthogonal_linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """Linear layer with orthogonal weights and zero bias (PPO's usual init; see POLICY_HEAD_GAIN)."""
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
        self.activation = ACTIVATIONS[activation]
        self._params = (*self.weights, *self.biases)  # read per call; a ParameterList's iteration costs more than the layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in) -> (copies, batch, hidden[-1])."""
        params = self._params
        if torch.is_grad_enabled() and (x.requires_grad or params[0].requires_grad):
            return _StackedMLPFunction.apply(self.activation, x, *params)
        n = len(self.weights)
        return _stacked_layers(self.activation, x, params[:n], params[n:])[-1]  # the same arithmetic


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
            self.action_head = orthogonal_linear(hidden[-1], sum(self.logit_sizes), POLICY_HEAD_GAIN)
            self.log_std = None
        else:
            action_dim = int(action_space.shape[0])
            self.action_head = orthogonal_linear(hidden[-1], action_dim, POLICY_HEAD_GAIN)
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
        value = _linear(self.value_head, critic_hidden).squeeze(-1)
        return self.distribution(actor_hidden, action_mask), value

    def distribution(self, actor_hidden: torch.Tensor, action_mask: torch.Tensor | None):
        out = _linear(self.action_head, actor_hidden)
        if self.logit_sizes is None:
            return DiagGaussian(out, self.log_std)
        return MultiCategorical(out, self.logit_sizes, action_mask)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        return _linear(self.value_head, self.bodies(features)[-1]).squeeze(-1)
