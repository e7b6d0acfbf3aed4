"""asv benchmarks for Kronecker matvecs: ``kron_matvec`` and ``KronSum``.

Every class follows scipy's ``BenchSVDS`` layout: a ``params`` grid whose
``method`` axis holds the dense baseline (``np.kron(A, B) @ vec(X)``, feasible
only for small factors), inputs built in ``setup`` from a fixed seed, and an
accuracy check in ``setup`` against rows of the dense Kronecker product, so a
wrong answer is never timed. ``setup`` raises ``NotImplementedError`` for
infeasible combinations, which asv reports as skipped.

The ``backend`` axis runs the same arrays through NumPy, torch on the CPU, torch on
CUDA and CuPy (skipped when absent: no GPU, CuPy not installed). GPU timings synchronize
inside the timed function, as scipy's ``XPBenchmark`` does.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import (
    BACKENDS,
    SEED,
    Synced,
    array_module,
    skip_peakmem_on_gpu,
    to_backend,
    to_numpy,
)
from kronalg import KronSum, kron_matvec

SIZES = [64, 256, 1024]
DENSE_MAX = 64  # np.kron of two 64x64 factors is 4096x4096 (128 MiB)
N_CHECK_ROWS = 8  # rows of kron(A, B) used as the dense reference


def _check_against_kron_rows(terms, X, Y, rng):
    """Check Y = sum_i A_i X B_i^T against rows of the dense sum of np.kron.

    X has shape (..., q, s) with its columns of vec in the last two axes; Y has
    shape (..., p, r). Only ``N_CHECK_ROWS`` rows of the dense matrix are built,
    so the check is cheap even when the full product would not fit in memory.
    """
    p, r = terms[0][0].shape[0], terms[0][1].shape[0]
    vecX = X.reshape(*X.shape[:-2], -1)
    vecY = Y.reshape(*Y.shape[:-2], -1)
    norm_X = np.linalg.norm(vecX, axis=-1)
    rows = rng.choice(p * r, size=min(N_CHECK_ROWS, p * r), replace=False)
    for row in rows:
        i, j = divmod(int(row), r)
        dense_row = sum(np.kron(A[i], B[j]) for A, B in terms)
        expected = vecX @ dense_row
        scale = np.linalg.norm(dense_row) * norm_X
        err = np.abs(vecY[..., row] - expected)
        if np.any(err > 1e-10 * scale):
            raise AssertionError(f"wrong answer in row {row}: error {err.max():.3e}")


class KronMatvec(Synced):
    """(A ⊗ B) vec(X) for square n×n factors: implicit vs dense Kronecker."""

    params: ClassVar[list] = [SIZES, ["kron_matvec", "dense_kron"], BACKENDS]
    param_names: ClassVar[list] = ["n", "method", "backend"]
    batch_shape = ()

    def setup(self, n, method, backend):
        if method == "dense_kron" and n > DENSE_MAX:
            raise NotImplementedError("np.kron(A, B) too large")
        rng = np.random.default_rng(SEED)
        A = rng.standard_normal((n, n))
        B = rng.standard_normal((n, n))
        X = rng.standard_normal((*self.batch_shape, n, n))
        (self.A, self.B, self.X), self.sync = to_backend([A, B, X], backend)
        if method == "kron_matvec":
            self.func = self._implicit
        else:
            xp = array_module(backend)
            self.func = lambda: self._dense(xp)
        # accuracy check: a wrong answer is never timed
        Y = to_numpy(self.func())
        _check_against_kron_rows([(A, B)], X, Y, rng)

    def _implicit(self):
        return kron_matvec(self.A, self.B, self.X)

    def _dense(self, xp):
        K = xp.kron(self.A, self.B)
        vecX = self.X.reshape(*self.batch_shape, -1)
        return (vecX @ K.T).reshape(self.X.shape)

    def time_matvec(self, n, method, backend):
        self._timed()

    def peakmem_matvec(self, n, method, backend):
        skip_peakmem_on_gpu(backend)
        self.func()


class KronMatvecBatched(KronMatvec):
    """As KronMatvec, with a batch of 16 right-hand sides X of shape (16, n, n).

    Sizes stop at 512: at n=1024 the one checked call alone takes about a second
    on two cores, which would break the "setup under 2 s" budget.
    """

    params: ClassVar[list] = [[64, 256, 512], *KronMatvec.params[1:]]
    batch_shape = (16,)


class KronSumMatvec(Synced):
    """Implicit two-term KronSum times a vector (k=1) or 8 columns (k=8)."""

    params: ClassVar[list] = [SIZES, [1, 8], BACKENDS]
    param_names: ClassVar[list] = ["n", "k", "backend"]

    def setup(self, n, k, backend):
        rng = np.random.default_rng(SEED)
        terms = [(rng.standard_normal((n, n)), rng.standard_normal((n, n))) for _ in range(2)]
        v = rng.standard_normal(n * n) if k == 1 else rng.standard_normal((n * n, k))
        (A1, B1, A2, B2, self.v), self.sync = to_backend([*terms[0], *terms[1], v], backend)
        self.op = KronSum([(A1, B1), (A2, B2)])
        self.func = (lambda: self.op @ self.v) if k == 1 else (lambda: self.op.matmat(self.v))
        Y = to_numpy(self.func())
        if k == 1:
            X_check, Y_check = v.reshape(n, n), Y.reshape(n, n)
        else:
            # column c of V is vec of the matrix V[:, c].reshape(n, n)
            X_check, Y_check = v.T.reshape(k, n, n), Y.T.reshape(k, n, n)
        _check_against_kron_rows(terms, X_check, Y_check, rng)

    def time_matvec(self, n, k, backend):
        self._timed()

    def peakmem_matvec(self, n, k, backend):
        skip_peakmem_on_gpu(backend)
        self.func()
