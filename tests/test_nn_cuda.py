"""nn_adapters on torch CUDA: every Fisher approximation and every preconditioner, against the CPU result.

Each test runs the same float64 model and data on the CPU and on the GPU and checks that the GPU results live on the
GPU (no host round-trip of the factors) and agree with the CPU ones.  Everything here skips without a CUDA device;
the CPU paths are covered by ``test_nn_fisher.py`` and ``test_nn_precond.py``.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from nn_adapters import (  # noqa: E402
    APPROXIMATIONS,
    METHODS,
    KroneckerPreconditioner,
    exact_fisher_blocks,
    fisher_blocks,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

F64 = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 6), nn.Tanh(), nn.Linear(6, 4)
    ).to(F64)


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 5, 5, generator=gen, dtype=F64), torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.parametrize("method", METHODS)
def test_fisher_blocks_on_cuda_match_cpu(method: str) -> None:
    model, (x, y) = _model(), _data()
    cpu = fisher_blocks(model, x, method=method, targets=y, tol=1e-12)
    gpu = fisher_blocks(copy.deepcopy(model).cuda(), x.cuda(), method=method, targets=y.cuda(), tol=1e-12)
    assert set(cpu) == set(gpu)
    for name in cpu:
        for A, B in gpu[name].factors:
            assert A.is_cuda and B.is_cuda and A.dtype == B.dtype == F64
        dense_gpu, dense_cpu = gpu[name].to_dense().cpu(), cpu[name].to_dense()
        assert torch.linalg.norm(dense_gpu - dense_cpu) <= 1e-8 * torch.linalg.norm(dense_cpu)


def test_exact_fisher_blocks_on_cuda_match_cpu() -> None:
    model, (x, y) = _model(), _data()
    cpu = exact_fisher_blocks(model, x, targets=y, loss="cross_entropy")
    gpu = exact_fisher_blocks(copy.deepcopy(model).cuda(), x.cuda(), targets=y.cuda(), loss="cross_entropy")
    for name in cpu:
        assert gpu[name].is_cuda
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_preconditioner_on_cuda_matches_cpu(approx: str) -> None:
    x, y = _data()
    results = {}
    for device in ("cpu", "cuda"):
        model = _model().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pre = KroneckerPreconditioner(model, approx=approx, damping=1e-2, truncation_rank=4, tol=1e-12)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
            pre.step()
            opt.step()
        for p in model.parameters():
            assert p.grad.device.type == device and torch.isfinite(p.grad).all()
        results[device] = [p.detach().cpu() for p in model.parameters()]
    for p_cpu, p_gpu in zip(results["cpu"], results["cuda"]):
        torch.testing.assert_close(p_gpu, p_cpu, rtol=1e-7, atol=1e-9)
