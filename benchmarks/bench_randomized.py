"""asv benchmarks for ``kronalg.randomized.randomized_svd`` against scikit-learn and torch.

Layout as scipy's ``BenchSVDS``: ``params`` over the method and ``k``, a
4000×3000 matrix ``U diag(σ) Vᵀ`` with σ_i = 1/i² built in ``setup`` from a
fixed seed, and an accuracy check in ``setup`` (Frobenius error within 1 % of
the Eckart–Young optimum) so a wrong answer is never timed.  Every method gets
the same oversampling (10) and power iterations (7, scikit-learn's "auto"
for these sizes).
"""

from typing import ClassVar

import numpy as np

from kronalg.randomized import randomized_svd

SEED = 1234
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
        _CACHE["A"], _CACHE["sigma"] = (U * sigma) @ V.T, sigma
    return _CACHE["A"], _CACHE["sigma"]


class RandomizedSVD:
    """Top-k randomized SVD of a dense 4000×3000 float64 matrix (σ_i = 1/i²)."""

    params: ClassVar[list] = [["kronalg", "sklearn", "torch.svd_lowrank"], [10, 50]]
    param_names: ClassVar[list] = ["method", "k"]
    timeout = 300

    def setup(self, method, k):
        A, sigma = _matrix()
        if method == "kronalg":
            self.run = lambda: randomized_svd(A, k, oversample=OVERSAMPLE, n_iter=N_ITER, seed=0)
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
            At = torch.from_numpy(A)

            def run():
                U, S, V = torch.svd_lowrank(At, q=k + OVERSAMPLE, niter=N_ITER)
                return U.numpy()[:, :k], S.numpy()[:k], V.numpy()[:, :k].T

            self.run = run
        U, S, Vh = self.run()
        err = np.linalg.norm(A - (U[:, :k] * S[:k]) @ Vh[:k, :])
        opt = np.sqrt(np.sum(sigma[k:] ** 2))
        if not err <= 1.01 * opt:
            raise AssertionError(f"{method}: error {err:.3e} above 1.01 × optimal {opt:.3e}")

    def time_randomized_svd(self, method, k):
        self.run()

    def peakmem_randomized_svd(self, method, k):
        self.run()
