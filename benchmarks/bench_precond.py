"""asv benchmarks for ``KroneckerPreconditioner.step`` (every approximation × a wide MLP and a small CNN).

Each benchmark times one training step — forward, backward, ``pre.step()`` and an SGD step — with statistics and
inverse refresh on every step (``factor_every = inverse_every = 1``: the most expensive schedule), and the same step
without a preconditioner as the peer (``approx="none"``), so the ratio of the two is the per-step overhead in units
of a plain gradient step.  ``setup`` first checks on the same model that one K-FAC step's ``.grad`` equals the dense
``((G + √λ/π I) ⊗ (A + π√λ I))⁻¹ vec J`` of the last layer (so a wrong answer is never timed; the check runs in
float64 on the CPU).  ``backend``: ``torch`` (CPU) or ``torch-cuda`` (skipped without a GPU; the timed step
synchronizes).
"""

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.bench_common import to_backend
from nn_adapters import APPROXIMATIONS, KroneckerPreconditioner

SEED = 1234


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def _batch(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, 64, generator=gen) if kind == "mlp" else torch.randn(n, 1, 8, 8, generator=gen)
    return x, torch.randint(0, 10, (n,), generator=gen)


def _check_kfac_last_layer(kind: str) -> None:
    torch.manual_seed(SEED)
    model = (_mlp() if kind == "mlp" else _cnn()).double()
    x, y = _batch(kind, 32)
    x = x.double()
    last = model[-1]
    inputs: dict[str, torch.Tensor] = {}
    last.register_forward_hook(lambda m, a, o: inputs.update(a=a[0].detach(), out=o))
    pre = KroneckerPreconditioner(model, approx="kfac", damping=1e-2)
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    J = torch.cat([last.weight.grad, last.bias.grad[:, None]], dim=1).clone()
    g = out.grad * x.shape[0]
    a = torch.cat([inputs["a"], torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    G, A = g.T @ g / x.shape[0], a.T @ a / x.shape[0]
    pre.step()
    pi = math.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
    root = math.sqrt(1e-2)
    M = torch.kron(G + root / pi * torch.eye(G.shape[0], dtype=G.dtype), A + root * pi * torch.eye(A.shape[0]))
    expected = torch.linalg.solve(M, J.reshape(-1)).reshape(J.shape)
    got = torch.cat([last.weight.grad, last.bias.grad[:, None]], dim=1)
    if not torch.linalg.norm(got - expected) <= 1e-7 * torch.linalg.norm(expected):
        raise AssertionError("KroneckerPreconditioner K-FAC step disagrees with the dense damped inverse")


class TimePreconditionerStep:
    """One training step with each approximation (``"none"``: plain SGD, the peer)."""

    params: ClassVar = (["none", *APPROXIMATIONS], ["mlp", "cnn"], ["torch", "torch-cuda"])
    param_names: ClassVar = ["approx", "model", "backend"]
    timeout = 300

    def setup(self, approx: str, kind: str, backend: str = "torch") -> None:
        _, self.sync = to_backend([], backend)  # NotImplementedError without a GPU
        device = "cuda" if backend == "torch-cuda" else "cpu"
        _check_kfac_last_layer(kind)
        torch.manual_seed(SEED)
        self.model = (_mlp() if kind == "mlp" else _cnn()).to(device)
        self.x, self.y = (t.to(device) for t in _batch(kind, 128))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.pre = None
        if approx != "none":
            self.pre = KroneckerPreconditioner(self.model, approx=approx, damping=1e-2)
        for _ in range(3):  # warm up: statistics exist, warm starts are in place
            self.time_step(approx, kind, backend)

    def time_step(self, approx: str, kind: str, backend: str = "torch") -> None:
        """Forward, backward, preconditioning, SGD step."""
        self.opt.zero_grad()
        F.cross_entropy(self.model(self.x), self.y).backward()
        if self.pre is not None:
            self.pre.step()
        self.opt.step()
        if self.sync is not None:
            self.sync()
