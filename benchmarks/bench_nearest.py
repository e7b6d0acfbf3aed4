"""asv benchmarks for ``nearest_kronecker`` (Van Loan–Pitsianis KPSVD).

Layout as in scipy's ``BenchSVDS``: a ``params`` grid, inputs built in
``setup`` from a fixed seed, and an accuracy check in ``setup`` against a full
``np.linalg.svd`` of the rearranged matrix computed directly there, so a wrong
answer is never timed.
"""

from typing import ClassVar

import numpy as np

from kronalg import SampleKronSum, nearest_kronecker

SEED = 1234
NOISE = 1e-3  # relative Frobenius size of the noise added to kron(A, B)
RTOL = 1e-8


def _rearranged(M, p, q, r, s):
    """Van Loan–Pitsianis rearrangement, written out here independently of kronalg."""
    return M.reshape(p, r, q, s).transpose(0, 2, 1, 3).reshape(p * q, r * s)


def _check(result, M_dense, a_shape, b_shape, rank):
    """Compare a nearest_kronecker result with a direct dense SVD of R(M)."""
    sigma = np.linalg.svd(_rearranged(M_dense, *a_shape, *b_shape), compute_uv=False)
    norm_M = np.linalg.norm(M_dense)
    best = np.sqrt(np.sum(sigma[rank:] ** 2)) / norm_M  # Eckart–Young optimum
    actual = np.linalg.norm(M_dense - result.to_dense()) / norm_M
    reported = result.info.relative_residual
    if not np.isclose(actual, best, rtol=1e-6, atol=RTOL):
        raise AssertionError(f"residual {actual:.3e} != optimal {best:.3e}")
    if not np.isclose(reported, actual, rtol=1e-6, atol=RTOL):
        raise AssertionError(f"reported residual {reported:.3e} != {actual:.3e}")
    if not np.allclose(result.info.singular_values[:rank], sigma[:rank], rtol=1e-8):
        raise AssertionError("singular values disagree with np.linalg.svd")
    return actual


class NearestDense:
    """Dense M = kron(A, B) + noise of shape (p², p²), method="svd"."""

    params: ClassVar[list] = [[8, 16, 32], [1, 2]]
    param_names: ClassVar[list] = ["p", "rank"]

    def setup(self, p, rank):
        rng = np.random.default_rng(SEED)
        K = np.kron(rng.standard_normal((p, p)), rng.standard_normal((p, p)))
        N = rng.standard_normal(K.shape)
        N *= NOISE * np.linalg.norm(K) / np.linalg.norm(N)
        self.M = K + N
        self.shape = (p, p)
        result = nearest_kronecker(self.M, self.shape, self.shape, rank=rank, method="svd")
        residual = _check(result, self.M, self.shape, self.shape, rank)
        # kron(A, B) itself is a candidate, so the optimum is below the noise level
        if residual > np.linalg.norm(N) / np.linalg.norm(self.M):
            raise AssertionError(f"residual {residual:.3e} above the noise level")
        self.residual = residual

    def time_nearest(self, p, rank):
        nearest_kronecker(self.M, self.shape, self.shape, rank=rank, method="svd")

    def peakmem_nearest(self, p, rank):
        nearest_kronecker(self.M, self.shape, self.shape, rank=rank, method="svd")

    def track_relative_residual(self, p, rank):
        return self.residual

    track_relative_residual.unit = "relative"


class NearestSampleSum:
    """Implicit Fisher-like SampleKronSum.from_factors(G, A, weights=1/n), rank 1."""

    params: ClassVar[list] = [[32, 256], [16, 32]]
    param_names: ClassVar[list] = ["n", "p"]

    def setup(self, n, p):
        rng = np.random.default_rng(SEED)
        G = rng.standard_normal((n, p))
        A = rng.standard_normal((n, p))  # r = p
        self.F = SampleKronSum.from_factors(G, A, weights=1.0 / n)
        result = nearest_kronecker(self.F, rank=1, method="svd")
        # dense reference: sum_n w vec(g a^T) vec(g a^T)^T, formed directly here
        V = np.einsum("ni,nj->nij", G, A).reshape(n, p * p)
        F_dense = V.T @ V / n
        self.residual = _check(result, F_dense, (p, p), (p, p), rank=1)

    def time_nearest(self, n, p):
        nearest_kronecker(self.F, rank=1, method="svd")

    def peakmem_nearest(self, n, p):
        nearest_kronecker(self.F, rank=1, method="svd")

    def track_relative_residual(self, n, p):
        return self.residual

    track_relative_residual.unit = "relative"
