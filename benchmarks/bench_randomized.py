"""asv benchmarks for ``kronalg.randomized.randomized_svd`` against scikit-learn and torch.

Layout as scipy's ``BenchSVDS``: ``params`` over the method and ``k``, a
4000×3000 matrix ``U diag(σ) Vᵀ`` with σ_i = 1/i² built in ``setup`` from a
fixed seed, and an accuracy check in ``setup`` (Frobenius error within 1 % of
the Eckart–Young optimum) so a wrong answer is never timed.  Every method gets
the same oversampling (10) and power iterations (7, scikit-learn's "auto"
for these sizes).  ``backend``: ``kronalg`` runs on every backend of ``benchmarks/bench_common.py``; scikit-learn
on NumPy only, ``torch.svd_lowrank`` on torch and torch-cuda only (other combinations are skipped).
``RandomizedEigh`` times ``randomized_eigh`` on the symmetric ``V diag(σ) Vᵀ`` with the same check.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, require_numpy, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg.randomized import randomized_eigh, randomized_svd

M, N = 4000, 3000
OVERSAMPLE, N_ITER = 10, 7

_CACHE: dict = {}


def _matrix():
    """``A = U diag(1/i²) Vᵀ`` (built once per process: QR of Gaussians, no full SVD)."""
    if "A" not in _CACHE:
        rng = np.random.default_rng(SEED)
        sigma = 1.0 / np.arange(1, N + 1) ** 2
        U, _ = np.linalg.qr(rng.standard_normal((M, N)))
        V, _ = np.linalg.qr(rng.standard_normal((N, N)))
        _CACHE["A"], _CACHE["sigma"], _CACHE["V"] = (U * sigma) @ V.T, sigma, V
    return _CACHE["A"], _CACHE["sigma"]


def _symmetric():
    """``V diag(1/i²) Vᵀ`` (N×N, symmetric positive definite), from the same ``V``."""
    if "S" not in _CACHE:
        _matrix()
        V, sigma = _CACHE["V"], _CACHE["sigma"]
        _CACHE["S"] = (V * sigma) @ V.T
    return _CACHE["S"], _CACHE["sigma"]


class RandomizedSVD(Synced):
    """Top-k randomized SVD of a dense 4000×3000 float64 matrix (σ_i = 1/i²)."""

    params: ClassVar[list] = [["kronalg", "sklearn", "torch.svd_lowrank"], [10, 50], BACKENDS]
    param_names: ClassVar[list] = ["method", "k", "backend"]
    timeout = 300

    def setup(self, method, k, backend):
        if method == "sklearn":
            require_numpy(backend, "scikit-learn")
        if method == "torch.svd_lowrank" and backend not in ("torch", "torch-cuda"):
            raise NotImplementedError("torch.svd_lowrank runs on torch tensors only")
        A, sigma = _matrix()
        if method == "kronalg":
            (Ab,), self.sync = to_backend([A], backend)
            self.run = lambda: tuple(randomized_svd(Ab, k, oversample=OVERSAMPLE, n_iter=N_ITER, seed=0))
        elif method == "sklearn":
            try:
                from sklearn.utils.extmath import randomized_svd as sk_rsvd
            except ImportError:
                raise NotImplementedError("scikit-learn is not installed") from None
            self.run = lambda: sk_rsvd(A, k, n_oversamples=OVERSAMPLE, n_iter=N_ITER, random_state=0)
        else:
            try:
                import torch
            except ImportError:
                raise NotImplementedError("torch is not installed") from None
            (At,), self.sync = to_backend([A], backend)

            def run():
                U, S, V = torch.svd_lowrank(At, q=k + OVERSAMPLE, niter=N_ITER)
                return U[:, :k], S[:k], V[:, :k].T

            self.run = run
        self.func = self.run
        U, S, Vh = (to_numpy(x) for x in self.run())
        err = np.linalg.norm(A - (U[:, :k] * S[:k]) @ Vh[:k, :])
        opt = np.sqrt(np.sum(sigma[k:] ** 2))
        if not err <= 1.01 * opt:
            raise AssertionError(f"{method}: error {err:.3e} above 1.01 × optimal {opt:.3e}")

    def time_randomized_svd(self, method, k, backend):
        self._timed()

    def peakmem_randomized_svd(self, method, k, backend):
        skip_peakmem_on_gpu(backend)
        self.run()


class RandomizedEigh(Synced):
    """Top-k ``randomized_eigh`` of the dense 3000×3000 symmetric ``V diag(σ) Vᵀ`` (σ_i = 1/i²)."""

    params: ClassVar[list] = [[10, 50], BACKENDS]
    param_names: ClassVar[list] = ["k", "backend"]
    timeout = 300

    def setup(self, k, backend):
        S, sigma = _symmetric()
        (Sb,), self.sync = to_backend([S], backend)
        self.func = lambda: randomized_eigh(Sb, k, oversample=OVERSAMPLE, n_iter=N_ITER, seed=0)
        w, Q = (to_numpy(x) for x in self.func())
        err = np.linalg.norm(S - (Q[:, :k] * w[:k]) @ Q[:, :k].T)
        opt = np.sqrt(np.sum(sigma[k:] ** 2))
        if not err <= 1.01 * opt:
            raise AssertionError(f"randomized_eigh: error {err:.3e} above 1.01 × optimal {opt:.3e}")

    def time_randomized_eigh(self, k, backend):
        self._timed()

    def peakmem_randomized_eigh(self, k, backend):
        skip_peakmem_on_gpu(backend)
        self.func()
