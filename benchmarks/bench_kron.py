"""asv benchmarks for Kronecker matvecs: ``kron_matvec`` and ``KronSum``.

Every class follows scipy's ``BenchSVDS`` layout: a ``params`` grid whose
``method`` axis holds the dense baseline (``np.kron(A, B) @ vec(X)``, feasible
only for small factors), inputs built in ``setup`` from a fixed seed, and an
accuracy check in ``setup`` against rows of the dense Kronecker product, so a
wrong answer is never timed. ``setup`` raises ``NotImplementedError`` for
infeasible combinations, which asv reports as skipped.

The ``backend`` axis runs the same arrays through NumPy, torch on the CPU and
torch on CUDA (skipped when no GPU is present). CUDA timings synchronize
inside the timed function, as scipy's ``XPBenchmark`` does.
"""

from typing import ClassVar

import numpy as np

from kronalg import KronSum, kron_matvec

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - only when run outside asv
    SkipNotImplemented = NotImplementedError

SEED = 1234
SIZES = [64, 256, 1024]
BACKENDS = ["numpy", "torch", "torch-cuda"]
DENSE_MAX = 64  # np.kron of two 64x64 factors is 4096x4096 (128 MiB)
N_CHECK_ROWS = 8  # rows of kron(A, B) used as the dense reference


def _to_backend(arrays, backend):
    """Convert NumPy arrays to ``backend``; raise NotImplementedError if absent."""
    if backend == "numpy":
        return arrays, None
    if torch is None:
        raise NotImplementedError("torch is not installed")
    if backend == "torch":
        return [torch.from_numpy(a) for a in arrays], None
    if backend == "torch-cuda":
        if not torch.cuda.is_available():
            raise NotImplementedError("CUDA is not available")
        return [torch.from_numpy(a).cuda() for a in arrays], torch.cuda.synchronize
    raise ValueError(f"unknown backend {backend!r}")


def _to_numpy(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return x.cpu().numpy()
    return np.asarray(x)


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


class KronMatvec:
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
        (self.A, self.B, self.X), self.sync = _to_backend([A, B, X], backend)
        if method == "kron_matvec":
            self.func = self._implicit
        else:
            xp = np if backend == "numpy" else torch
            self.func = lambda: self._dense(xp)
        # accuracy check: a wrong answer is never timed
        Y = _to_numpy(self.func())
        _check_against_kron_rows([(A, B)], X, Y, rng)

    def _implicit(self):
        return kron_matvec(self.A, self.B, self.X)

    def _dense(self, xp):
        K = xp.kron(self.A, self.B)
        vecX = self.X.reshape(*self.batch_shape, -1)
        return (vecX @ K.T).reshape(self.X.shape)

    def time_matvec(self, n, method, backend):
        self.func()
        if self.sync is not None:
            self.sync()

    def peakmem_matvec(self, n, method, backend):
        if self.sync is not None:
            # peakmem measures host RSS, which says nothing about GPU memory
            raise SkipNotImplemented("peakmem is host memory only")
        self.func()


class KronMatvecBatched(KronMatvec):
    """As KronMatvec, with a batch of 16 right-hand sides X of shape (16, n, n).

    Sizes stop at 512: at n=1024 the one checked call alone takes about a second
    on two cores, which would break the "setup under 2 s" budget.
    """

    params: ClassVar[list] = [[64, 256, 512], *KronMatvec.params[1:]]
    batch_shape = (16,)


class KronSumMatvec:
    """Implicit two-term KronSum times a vector (k=1) or 8 columns (k=8)."""

    params: ClassVar[list] = [SIZES, [1, 8]]
    param_names: ClassVar[list] = ["n", "k"]

    def setup(self, n, k):
        rng = np.random.default_rng(SEED)
        self.terms = [(rng.standard_normal((n, n)), rng.standard_normal((n, n))) for _ in range(2)]
        self.op = KronSum(self.terms)
        if k == 1:
            self.v = rng.standard_normal(n * n)
            Y = self.op @ self.v
            X_check, Y_check = self.v.reshape(n, n), Y.reshape(n, n)
        else:
            self.v = rng.standard_normal((n * n, k))
            Y = self.op.matmat(self.v)
            # column c of V is vec of the matrix V[:, c].reshape(n, n)
            X_check = self.v.T.reshape(k, n, n)
            Y_check = Y.T.reshape(k, n, n)
        _check_against_kron_rows(self.terms, X_check, Y_check, rng)

    def time_matvec(self, n, k):
        if k == 1:
            self.op @ self.v
        else:
            self.op.matmat(self.v)

    def peakmem_matvec(self, n, k):
        if k == 1:
            self.op @ self.v
        else:
            self.op.matmat(self.v)
