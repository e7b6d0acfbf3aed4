"""asv benchmarks for ``nn_adapters.fisher_blocks`` (every method × an MLP and a small CNN).

Layout as in ``bench_nearest.py``: a ``params`` grid, inputs built in ``setup`` from a fixed
seed with empirical cross-entropy targets, and an accuracy check in ``setup`` so a wrong answer
is never timed: on a tiny float64 model of the same kind, ``kfac``'s input factor must equal
``(1/T) E[Σ_t ā āᵀ]`` of inputs recorded by plain hooks, its Linear output factor the bias
sub-block ``E[g gᵀ]`` of the dense exact block from ``exact_fisher_blocks`` (torch.func), and the
best-Kronecker methods must be no farther from the exact block than ``kfac``.  ``backend``: ``torch`` (CPU) or
``torch-cuda`` (skipped without a GPU; the timed call synchronizes); the check runs in float64 on the CPU.
"""

from typing import ClassVar

import torch
from torch import nn

from benchmarks.bench_common import to_backend
from nn_adapters import METHODS, exact_fisher_blocks, fisher_blocks

SEED = 1234
CLASSES = 10


def _mlp(d_in: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, CLASSES)
    )


def _cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * 4 * 4, CLASSES),
    )


def _problem(kind: str, tiny: bool, batch: int, dtype: torch.dtype):
    torch.manual_seed(SEED)
    if kind == "mlp":
        model, shape = (_mlp(6, 5), (6,)) if tiny else (_mlp(64, 256), (64,))
    else:
        model, shape = (_cnn(2), (3, 16, 16)) if tiny else (_cnn(32), (3, 16, 16))
    model = model.to(dtype).eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(batch, *shape, generator=gen, dtype=dtype)
    y = torch.randint(0, CLASSES, (batch,), generator=gen)
    return model, x, y


def _layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's input factors ``ā`` (``(n, T, r)``, bias 1 appended), recorded by plain hooks."""
    out: dict[str, torch.Tensor] = {}

    def hook(module, args, _output, name):
        a = args[0].detach()
        if isinstance(module, nn.Conv2d):
            a = nn.functional.unfold(a, module.kernel_size, padding=module.padding).transpose(1, 2)
        else:
            a = a[:, None, :]
        out[name] = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=-1)

    handles = [
        m.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def _check(kind: str, method: str) -> None:
    """Accuracy gate on a tiny float64 model of the same kind, against the dense exact blocks.

    ``kfac``: the input factor must be ``(1/T) E[Σ_t ā āᵀ]`` of hooked inputs; for Linear layers
    the output factor must be the exact block's bias-bias sub-block ``E[g gᵀ]``.  The timed
    method must return a finite block of the right shape; the best-Kronecker methods must be no
    farther from the exact block than ``kfac`` (they are Frobenius-optimal among rank ≥ 1).
    """
    model, x, y = _problem(kind, tiny=True, batch=16, dtype=torch.float64)
    exact = exact_fisher_blocks(model, x, targets=y)
    kfac = fisher_blocks(model, x, method="kfac", targets=y)
    ours = kfac if method == "kfac" else fisher_blocks(model, x, method=method, targets=y)
    inputs = _layer_inputs(model, x)
    for name, F in exact.items():
        G, A = kfac[name].factors[0]
        p, r = G.shape[0], A.shape[0]
        a = inputs[name]
        A_ref = torch.einsum("nti,ntj->ij", a, a) / (a.shape[0] * a.shape[1])
        if not torch.allclose(A, A_ref, rtol=1e-10, atol=1e-12):
            raise AssertionError(f"{name}: kfac input factor differs from the hooked inputs")
        if a.shape[1] == 1:  # Linear: the bias coordinates of F are E[g gᵀ]
            G_ref = F.reshape(p, r, p, r)[:, -1, :, -1]
            if not torch.allclose(G, G_ref, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"{name}: kfac output factor differs from the exact block")
        approx = ours[name].to_dense()
        if approx.shape != F.shape or not torch.isfinite(approx).all():
            raise AssertionError(f"{name}: {method} returned a bad block")
        err = torch.linalg.norm(F - approx) / torch.linalg.norm(F)
        err_kfac = torch.linalg.norm(F - kfac[name].to_dense()) / torch.linalg.norm(F)
        if method in ("kpsvd", "kfoc", "deflation", "lanczos", "kfac_corrected") and err > err_kfac * (1 + 1e-6):
            raise AssertionError(f"{name}: {method} error {float(err):.3e} above kfac's {float(err_kfac):.3e}")


class FisherBlocks:
    """``fisher_blocks`` end to end (forward and backward included), float32, batch 32."""

    params: ClassVar[list] = [list(METHODS), ["mlp", "cnn"], ["torch", "torch-cuda"]]
    param_names: ClassVar[list] = ["method", "model", "backend"]
    timeout = 300

    def setup(self, method, model, backend="torch"):
        _, self.sync = to_backend([], backend)  # NotImplementedError without a GPU
        device = "cuda" if backend == "torch-cuda" else "cpu"
        _check(model, method)
        net, x, y = _problem(model, tiny=False, batch=32, dtype=torch.float32)
        self.model, self.x, self.y = net.to(device), x.to(device), y.to(device)

    def time_fisher_blocks(self, method, model, backend="torch"):
        fisher_blocks(self.model, self.x, method=method, targets=self.y)
        if self.sync is not None:
            self.sync()
