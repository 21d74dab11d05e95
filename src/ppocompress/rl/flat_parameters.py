"""A module's parameters as views of one tensor, their gradients as views of another, and
Adam on that tensor.

The optimizer's step, gradient clipping and clearing then each run once on one tensor
instead of once per parameter: at PPO's network sizes an operation's overhead costs far
more than its arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam


class FlatParameters:
    """Owns `param`, one flat leaf tensor holding every parameter of `module` (each
    parameter becomes a view of it) with a `.grad` of which each parameter's `.grad` is a
    view. Backward accumulates into those views, so clear with `zero_grad`, never by
    setting a parameter's `.grad` to None."""

    def __init__(self, module: nn.Module):
        params = list(module.parameters())
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.param.grad = torch.zeros_like(self.param)
        for p, data, grad in zip(params, self.views(self.param.data), self.views(self.param.grad)):
            p.data = data
            p.grad = grad

    def __len__(self) -> int:
        return len(self.shapes)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """flat (laid out like `param`) as one tensor per parameter, shaped like it."""
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes), self.shapes)]

    def zero_grad(self) -> None:
        self.param.grad.zero_()


class FlatAdam:
    """Adam on FlatParameters' one tensor: torch's fused kernel through its functional form,
    without torch.optim.Optimizer's per-step bookkeeping (hooks, grouping, state checks),
    which at PPO's sizes costs more than the step itself."""

    def __init__(self, flat: FlatParameters, lr: float, eps: float, betas: tuple[float, float] = (0.9, 0.999)):
        self.flat = flat
        self.lr = lr
        self.eps = eps
        self.betas = betas
        self.exp_avg = torch.zeros_like(flat.param)
        self.exp_avg_sq = torch.zeros_like(flat.param)
        self.steps = torch.zeros(())  # a float tensor, as the fused kernel wants

    @torch.no_grad()
    def step(self) -> None:
        adam(
            [self.flat.param], [self.flat.param.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
            foreach=False, fused=True, capturable=False, differentiable=False, grad_scale=None, found_inf=None,
            has_complex=False, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
            weight_decay=0.0, eps=self.eps, maximize=False,
        )

    def per_parameter_state(self) -> dict[str, torch.Tensor]:
        """`<parameter index>.<key>` -> tensor, the layout torch.optim.Adam's state has."""
        state = {}
        for i, (avg, avg_sq) in enumerate(zip(self.flat.views(self.exp_avg), self.flat.views(self.exp_avg_sq))):
            state.update({f"{i}.exp_avg": avg.clone(), f"{i}.exp_avg_sq": avg_sq.clone(), f"{i}.step": self.steps.clone()})
        return state

    def load_per_parameter_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of per_parameter_state; a ValueError if the moments do not fit these parameters."""
        for i, view in enumerate(self.flat.views(self.flat.param)):
            for key in ("exp_avg", "exp_avg_sq"):
                if state[f"{i}.{key}"].numel() != view.numel():
                    raise ValueError(f"Adam's {key} of parameter {i} has {state[f'{i}.{key}'].numel()} values, "
                                     f"the parameter {view.numel()}")
        n = len(self.flat)
        self.exp_avg = torch.cat([state[f"{i}.exp_avg"].reshape(-1) for i in range(n)]).float()
        self.exp_avg_sq = torch.cat([state[f"{i}.exp_avg_sq"].reshape(-1) for i in range(n)]).float()
        self.steps = state["0.step"].reshape(()).float().clone()
