"""Adam, step for step as ``torch.optim.Adam`` (L2 weight decay, bias correction).

For each parameter p with gradient g, at its own step count t (parameters
whose ``.grad`` is None are skipped and their count does not advance, as in
PyTorch)::

    g   <- g + weight_decay * p                    (only if weight_decay != 0)
    m   <- beta1 m + (1 - beta1) g
    v   <- beta2 v + (1 - beta2) g²
    p   <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The moments live on the parameter's device in its dtype; parameter data and
moments are updated in place (parameters are owned by their module).
"""
import math
from typing import Any, Dict, Iterable, Tuple

import numpy as np

from refimpl.backend import to_numpy

__all__ = ["Adam"]


class Adam:
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0).

    params : iterable of Tensors with ``requires_grad=True`` (e.g.
    ``module.parameters()``); their order fixes the state dict's indices.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("Adam: params is empty; pass module.parameters()")
        for i, p in enumerate(self.params):
            if not getattr(p, "requires_grad", False):
                raise ValueError(f"Adam: params[{i}] is not a Tensor with requires_grad=True")
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"Adam: lr, eps and weight_decay must be >= 0, got lr={lr}, "
                             f"eps={eps}, weight_decay={weight_decay}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam: betas must be two numbers in [0, 1), got {betas}")
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.steps = [0] * len(self.params)
        self.exp_avg = [None] * len(self.params)       # m, allocated at a parameter's first step
        self.exp_avg_sq = [None] * len(self.params)    # v

    def zero_grad(self) -> None:
        """Reset every parameter's gradient to None."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != p.shape:
                raise ValueError(f"Adam: params[{i}].grad has shape {tuple(p.grad.shape)}, "
                                 f"expected {p.shape}")
            xp, g = p.xp, p.grad
            if self.exp_avg[i] is None:
                self.exp_avg[i] = xp.zeros_like(p.data)
                self.exp_avg_sq[i] = xp.zeros_like(p.data)
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            self.steps[i] += 1
            t = self.steps[i]
            if self.weight_decay != 0:
                g = g + self.weight_decay * p.data
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * (g * g)
            step_size = self.lr / (1 - beta1 ** t)
            denom = xp.sqrt(v)
            denom /= math.sqrt(1 - beta2 ** t)
            denom += self.eps
            update = m / denom
            update *= step_size
            p.data -= update

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as NumPy arrays and Python numbers.

        ``{"state": {"i": {"step", "exp_avg", "exp_avg_sq"}}, "param_groups":
        [{"lr", "betas", "eps", "weight_decay"}]}`` (PyTorch's layout, with the
        parameter index as a string key so that checkpoint files can store it);
        parameters never stepped have no entry in ``state``.
        """
        state = {str(i): {"step": self.steps[i],
                     "exp_avg": np.array(to_numpy(self.exp_avg[i]), copy=True),
                     "exp_avg_sq": np.array(to_numpy(self.exp_avg_sq[i]), copy=True)}
                 for i in range(len(self.params)) if self.exp_avg[i] is not None}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                 "weight_decay": self.weight_decay}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (moments copied onto each parameter's device/dtype)."""
        state, (group,) = state_dict["state"], state_dict["param_groups"]
        bad = [i for i in state if not 0 <= int(i) < len(self.params)]
        if bad:
            raise ValueError(f"Adam.load_state_dict: state has entries {bad} for an optimizer "
                             f"of {len(self.params)} parameters")
        for i, entry in state.items():
            p = self.params[int(i)]
            for key in ("exp_avg", "exp_avg_sq"):
                if tuple(entry[key].shape) != p.shape:
                    raise ValueError(f"Adam.load_state_dict: state[{i}][{key!r}] has shape "
                                     f"{tuple(entry[key].shape)}, parameter {i} has {p.shape}")
        self.lr, self.eps = float(group["lr"]), float(group["eps"])
        self.betas = tuple(float(b) for b in group["betas"])
        self.weight_decay = float(group["weight_decay"])
        self.steps = [0] * len(self.params)
        self.exp_avg = [None] * len(self.params)
        self.exp_avg_sq = [None] * len(self.params)
        for i, entry in state.items():
            i = int(i)
            p = self.params[i]
            self.steps[i] = int(entry["step"])
            self.exp_avg[i] = p.xp.asarray(to_numpy(entry["exp_avg"]).astype(p.dtype))
            self.exp_avg_sq[i] = p.xp.asarray(to_numpy(entry["exp_avg_sq"]).astype(p.dtype))
