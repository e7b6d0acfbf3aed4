"""asv benchmarks for ``lanczos_svd`` against ``scipy.sparse.linalg.svds`` (ARPACK, PROPACK).

Layout as in scipy's ``BenchSVDS``: a ``params`` grid with the reference
solvers as values of the method parameter, the 4000×3000 test matrix
``A = U diag(1/i²) Vᵀ`` built once in ``setup`` from QR factors of Gaussian
matrices, and an accuracy check in ``setup`` so a wrong answer is never timed.
``track_matvecs`` counts products with ``A`` and ``Aᵀ`` through a counting
``LinearOperator`` (one per column of a block product).  ``backend``: ``lanczos_svd`` runs on every backend of
``benchmarks/bench_common.py`` (on torch/CuPy with the plain array, not the counting wrapper); the SciPy solvers run
on NumPy only and are skipped elsewhere.
"""

from typing import ClassVar

import numpy as np
from scipy.sparse.linalg import svds

from benchmarks.bench_common import BACKENDS, require_numpy, to_backend, to_numpy
from benchmarks.compare_lanczos import SEED, CountingOperator, make_matrix
from kronalg.lanczos import lanczos_svd

M, N = 4000, 3000
TOL = 1e-10


def _solve(method, op, k):
    if method == "kronalg_lanczos":
        U, S, Vh = lanczos_svd(op, k, tol=TOL, seed=SEED)
        return U, S, Vh
    solver = method
    v0 = np.random.default_rng(SEED).standard_normal(min(op.shape) if solver == "arpack" else op.shape[0])
    maxiter = min(max(10 * k, 200), min(op.shape)) if solver == "propack" else None
    U, S, Vh = svds(op, k=k, tol=TOL, solver=solver, v0=v0, maxiter=maxiter)
    order = np.argsort(S)[::-1]
    return U[:, order], S[order], Vh[order]


class BenchLanczosSVD:
    """Top-k triplets of a dense 4000×3000 matrix with ``σ_i = 1/i²``."""

    params: ClassVar[list] = [["kronalg_lanczos", "arpack", "propack"], [1, 10, 50], BACKENDS]
    param_names: ClassVar[list] = ["method", "k", "backend"]
    timeout = 300

    def setup_cache(self):
        s = 1.0 / np.arange(1, N + 1, dtype=np.float64) ** 2
        return make_matrix(M, N, s), s

    def setup(self, cache, method, k, backend):
        A, s = cache
        if method != "kronalg_lanczos":
            require_numpy(backend, method)
        (self.Ab,), self.sync = to_backend([A], backend)
        self.A, self.k, self.method, self.backend = A, k, method, backend
        U, S, Vh = (to_numpy(x) for x in _solve(method, self._op(), k))
        residual = np.max(np.linalg.norm(A @ Vh.T - U * S, axis=0)) / s[0]
        if not np.allclose(S, s[:k], rtol=1e-8) or residual > 1e-8:
            raise AssertionError(f"{method}: wrong answer (σ error or residual {residual:.2e})")

    def _op(self):
        return CountingOperator(self.A) if self.backend == "numpy" else self.Ab

    def time_svd(self, cache, method, k, backend):
        _solve(method, self._op(), k)
        if self.sync is not None:
            self.sync()

    def track_matvecs(self, cache, method, k, backend):
        require_numpy(backend, "the counting operator")
        op = CountingOperator(self.A)
        _solve(method, op, k)
        return op.count

    track_matvecs.unit = "products with A or Aᵀ"
