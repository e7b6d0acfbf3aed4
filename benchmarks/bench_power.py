"""asv benchmarks for ``power_svd`` and ``deflate`` (engines of ``nearest_kronecker`` "power" and "deflation").

The test matrix is ``A = U diag(σ) Vᵀ`` (1000×800, ``σ_i = 1/i``, so ``σ₁/σ₂ = 2``) from QR factors of Gaussians with
a fixed seed; ``U``, ``σ``, ``V`` are known, so ``setup`` checks each answer against them (leading singular value,
residual ``‖A v − σ u‖``, and the deflated product against ``(A − U_k diag(σ_k) V_kᵀ) X`` formed densely) and a wrong
answer is never timed.  ``backend`` axis as in ``benchmarks/bench_common.py``.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg import deflate, power_svd

M, N, K_DEFLATE, N_COLS = 1000, 800, 10, 8
TOL = 1e-10

_CACHE: dict = {}


def _factors():
    """``U`` (M×N), ``σ`` (N), ``V`` (N×N), built once per process."""
    if not _CACHE:
        rng = np.random.default_rng(SEED)
        U, _ = np.linalg.qr(rng.standard_normal((M, N)))
        V, _ = np.linalg.qr(rng.standard_normal((N, N)))
        s = 1.0 / np.arange(1, N + 1)
        _CACHE.update(U=U, s=s, V=V, A=(U * s) @ V.T)
    return _CACHE["U"], _CACHE["s"], _CACHE["V"], _CACHE["A"]


def _check_top(result, A, sigma):
    S, U, Vh = to_numpy(result.S), to_numpy(result.U), to_numpy(result.Vh)
    if not np.isclose(S[0], sigma, rtol=1e-8):
        raise AssertionError(f"σ₁ = {S[0]!r}, expected {sigma!r}")
    residual = np.linalg.norm(A @ Vh[0] - S[0] * U[:, 0]) / sigma
    if residual > 1e-4:
        raise AssertionError(f"residual ‖A v − σ u‖/σ = {residual:.2e}")


class PowerSVD(Synced):
    """Leading singular triplet of the dense 1000×800 matrix by ``power_svd`` (tol 1e-10)."""

    params: ClassVar[list] = [BACKENDS]
    param_names: ClassVar[list] = ["backend"]

    def setup(self, backend):
        _, s, _, A = _factors()
        (self.A,), self.sync = to_backend([A], backend)
        _check_top(self.func(), A, s[0])

    def func(self):
        return power_svd(self.A, tol=TOL, seed=SEED)

    def time_power_svd(self, backend):
        self._timed()

    def peakmem_power_svd(self, backend):
        skip_peakmem_on_gpu(backend)
        self.func()


class Deflate(Synced):
    """``deflate(A, U_k, σ_k, V_kᵀ)`` with the top k = 10 triplets removed: a product with 8 columns, and
    ``power_svd`` of the deflated operator (which must find ``σ₁₁``)."""

    params: ClassVar[list] = [["matmat", "power_svd"], BACKENDS]
    param_names: ClassVar[list] = ["operation", "backend"]

    def setup(self, operation, backend):
        U, s, V, A = _factors()
        k = K_DEFLATE
        X = np.random.default_rng(SEED + 1).standard_normal((N, N_COLS))
        (self.A, Uk, sk, Vhk, self.X), self.sync = to_backend([A, U[:, :k], s[:k], V[:, :k].T, X], backend)
        self.D = deflate(self.A, Uk, sk, Vhk)
        if operation == "matmat":
            self.func = lambda: self.D @ self.X
            expected = (A - (U[:, :k] * s[:k]) @ V[:, :k].T) @ X
            if not np.allclose(to_numpy(self.func()), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max()):
                raise AssertionError("deflated product disagrees with the dense A − U_k diag(σ_k) V_kᵀ")
        else:
            self.func = lambda: power_svd(self.D, tol=TOL, seed=SEED)
            _check_top(self.func(), A - (U[:, :k] * s[:k]) @ V[:, :k].T, s[k])

    def time_deflated(self, operation, backend):
        self._timed()
