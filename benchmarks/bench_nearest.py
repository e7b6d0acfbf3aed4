"""asv benchmarks for ``nearest_kronecker`` (Van Loan–Pitsianis KPSVD).

Layout as in scipy's ``BenchSVDS``: a ``params`` grid, inputs built in
``setup`` from a fixed seed, and an accuracy check in ``setup`` against a full
``np.linalg.svd`` of the rearranged matrix computed directly there, so a wrong
answer is never timed.  ``NearestMethods`` runs every ``method`` of ``NEAREST_METHODS`` on the same implicit input
and checks that each reaches the Eckart–Young optimum.  All classes have the ``backend`` axis of
``benchmarks/bench_common.py`` (GPU backends are skipped without a device; their timings synchronize).
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg import NEAREST_METHODS, SampleKronSum, nearest_kronecker

NOISE = 1e-3  # relative Frobenius size of the noise added to kron(A, B)
RTOL = 1e-8


def _rearranged(M, p, q, r, s):
    """Van Loan–Pitsianis rearrangement, written out here independently of kronalg."""
    return M.reshape(p, r, q, s).transpose(0, 2, 1, 3).reshape(p * q, r * s)


def _check(result, M_dense, a_shape, b_shape, rank, sv_rtol=1e-8, res_rtol=1e-6):
    """Compare a nearest_kronecker result with a direct dense SVD of R(M)."""
    sigma = np.linalg.svd(_rearranged(M_dense, *a_shape, *b_shape), compute_uv=False)
    norm_M = np.linalg.norm(M_dense)
    best = np.sqrt(np.sum(sigma[rank:] ** 2)) / norm_M  # Eckart–Young optimum
    actual = np.linalg.norm(M_dense - to_numpy(result.to_dense())) / norm_M
    reported = float(result.info.relative_residual)
    if not np.isclose(actual, best, rtol=res_rtol, atol=RTOL):
        raise AssertionError(f"residual {actual:.3e} != optimal {best:.3e}")
    if not np.isclose(reported, actual, rtol=1e-6, atol=RTOL):
        raise AssertionError(f"reported residual {reported:.3e} != {actual:.3e}")
    if not np.allclose(to_numpy(result.info.singular_values)[:rank], sigma[:rank], rtol=sv_rtol):
        raise AssertionError("singular values disagree with np.linalg.svd")
    return actual


class NearestDense(Synced):
    """Dense M = kron(A, B) + noise of shape (p², p²), method="svd"."""

    params: ClassVar[list] = [[8, 16, 32], [1, 2], BACKENDS]
    param_names: ClassVar[list] = ["p", "rank", "backend"]
    timeout = 300

    def setup(self, p, rank, backend):
        rng = np.random.default_rng(SEED)
        K = np.kron(rng.standard_normal((p, p)), rng.standard_normal((p, p)))
        N = rng.standard_normal(K.shape)
        N *= NOISE * np.linalg.norm(K) / np.linalg.norm(N)
        M = K + N
        (self.M,), self.sync = to_backend([M], backend)
        self.shape, self.rank = (p, p), rank
        residual = _check(self.func(), M, self.shape, self.shape, rank)
        # kron(A, B) itself is a candidate, so the optimum is below the noise level
        if residual > np.linalg.norm(N) / np.linalg.norm(M):
            raise AssertionError(f"residual {residual:.3e} above the noise level")
        self.residual = residual

    def func(self):
        return nearest_kronecker(self.M, self.shape, self.shape, rank=self.rank, method="svd")

    def time_nearest(self, p, rank, backend):
        self._timed()

    def peakmem_nearest(self, p, rank, backend):
        skip_peakmem_on_gpu(backend)
        self.func()

    def track_relative_residual(self, p, rank, backend):
        return self.residual

    track_relative_residual.unit = "relative"


def _sample_sum(n, p, backend):
    """Fisher-like ``SampleKronSum.from_factors(G, A, weights=1/n)`` on ``backend`` and its dense NumPy matrix."""
    rng = np.random.default_rng(SEED)
    G = rng.standard_normal((n, p))
    A = rng.standard_normal((n, p))  # r = p
    (Gb, Ab), sync = to_backend([G, A], backend)
    F = SampleKronSum.from_factors(Gb, Ab, weights=1.0 / n)
    # dense reference: sum_n w vec(g a^T) vec(g a^T)^T, formed directly here
    V = np.einsum("ni,nj->nij", G, A).reshape(n, p * p)
    return F, V.T @ V / n, sync


class NearestSampleSum(Synced):
    """Implicit Fisher-like SampleKronSum.from_factors(G, A, weights=1/n), rank 1."""

    params: ClassVar[list] = [[32, 256], [16, 32], BACKENDS]
    param_names: ClassVar[list] = ["n", "p", "backend"]
    timeout = 300  # the default 60 s is too short for p = 32 on a loaded 2-core machine

    def setup(self, n, p, backend):
        self.F, F_dense, self.sync = _sample_sum(n, p, backend)
        self.residual = _check(self.func(), F_dense, (p, p), (p, p), rank=1)

    def func(self):
        return nearest_kronecker(self.F, rank=1, method="svd")

    def time_nearest(self, n, p, backend):
        self._timed()

    def peakmem_nearest(self, n, p, backend):
        skip_peakmem_on_gpu(backend)
        self.func()

    def track_relative_residual(self, n, p, backend):
        return self.residual

    track_relative_residual.unit = "relative"


class NearestMethods(Synced):
    """Every ``nearest_kronecker`` method on the implicit ``SampleKronSum`` (n = 256 samples, p = 24), rank 2.

    ``"svd"`` forms the (p², p²) rearranged matrix; the others work through products with it (``"gram"`` through
    the sample Gram matrix).  Each must reach the Eckart–Young optimum of the dense reference.
    """

    params: ClassVar[list] = [[m for m in NEAREST_METHODS if m != "auto"], BACKENDS]
    param_names: ClassVar[list] = ["method", "backend"]
    timeout = 120
    n, p, rank = 256, 24, 2

    def setup(self, method, backend):
        self.method = method
        self.F, F_dense, self.sync = _sample_sum(self.n, self.p, backend)
        # randomized: a few power iterations, not converged to tol, so within 1e-4 of the optimum
        loose = method == "randomized"
        self.residual = _check(
            self.func(),
            F_dense,
            (self.p,) * 2,
            (self.p,) * 2,
            self.rank,
            sv_rtol=1e-3 if loose else 1e-6,
            res_rtol=1e-4 if loose else 1e-6,
        )

    def func(self):
        return nearest_kronecker(self.F, rank=self.rank, method=self.method, seed=0)

    def time_nearest(self, method, backend):
        self._timed()

    def track_relative_residual(self, method, backend):
        return self.residual

    track_relative_residual.unit = "relative"
