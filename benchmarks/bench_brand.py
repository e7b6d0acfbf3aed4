"""asv benchmarks for the symmetric Brand update (B-KFAC's K-factor refresh, Puiu 2022 Alg. 4).

Layout as in scipy's ``BenchSVDS``: a ``params`` grid whose ``method`` axis holds the dense baseline
(``numpy.linalg.eigh`` of the updated d×d matrix, forming it excluded) next to ``brand_update_sym``; inputs built in
``setup`` from a fixed seed; an accuracy check in ``setup`` against the dense eigenvalues so a wrong answer is never
timed.  The dense ``eigh`` at d = 4096 takes tens of seconds on a laptop-class CPU, so it is skipped here and measured
once by ``python -m benchmarks.compare_brand`` instead.  ``BrandUpdate`` (the general thin-SVD update) and
``BrandLightCorrection`` (Puiu Alg. 6) are checked against ``numpy.linalg.svd``/``eigvalsh`` of the dense matrices.
Every class has the ``backend`` axis of ``benchmarks/bench_common.py``; the dense baselines run on NumPy only.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, require_numpy, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg.brand import brand_light_correction, brand_update, brand_update_sym

RANK = 220
BATCH = 256
RHO = 0.95


class BrandUpdateSym(Synced):
    """``decay·U diag(w) Uᵀ + A Aᵀ`` → its rank-220 EVD; U: (d, 220), A: (d, 256), NumPy float64."""

    params: ClassVar[list] = [[1024, 4096], ["brand", "eigh"], BACKENDS]
    param_names: ClassVar[list] = ["d", "method", "backend"]
    timeout = 300

    def setup(self, d, method, backend):
        if method == "eigh":
            require_numpy(backend, "the dense eigh baseline")
            if d > 2048:
                raise NotImplementedError("dense eigh at this size is measured by benchmarks.compare_brand")
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((d, RANK)) * np.logspace(0, -3, RANK)[None, :]
        self.w, self.U = brand_update_sym(np.zeros((d, 0)), np.zeros(0), X)
        self.A = np.sqrt((1 - RHO) / BATCH) * rng.standard_normal((d, BATCH))
        (self.Ub, self.wb, self.Ab), self.sync = to_backend([self.U, self.w, self.A], backend)
        self.method = method
        lam, V = (to_numpy(x) for x in brand_update_sym(self.Ub, self.wb, self.Ab, decay=RHO, rank=RANK))
        if np.abs(V.T @ V - np.eye(RANK)).max() > 1e-12:
            raise AssertionError("brand_update_sym lost orthonormality")
        if d <= 2048:  # the accuracy check needs the dense reference
            self.M = RHO * (self.U * self.w) @ self.U.T + self.A @ self.A.T
            exact = np.linalg.eigvalsh(self.M)[::-1][:RANK]
            if not np.allclose(lam, exact, rtol=1e-9, atol=1e-12 * exact[0]):
                raise AssertionError("brand_update_sym eigenvalues disagree with numpy.linalg.eigvalsh")

    def func(self):
        if self.method == "brand":
            return brand_update_sym(self.Ub, self.wb, self.Ab, decay=RHO, rank=RANK)
        return np.linalg.eigh(self.M)

    def time_update(self, d, method, backend):
        self._timed()

    def peakmem_update(self, d, method, backend):
        skip_peakmem_on_gpu(backend)
        self.func()


class BrandUpdate(Synced):
    """Thin SVD of ``U diag(S) Vh + A Bᵀ`` (m = 1000, n = 800, k = 100 kept, c = 32 update columns)."""

    params: ClassVar[list] = [BACKENDS]
    param_names: ClassVar[list] = ["backend"]
    m, n, k, c = 1000, 800, 100, 32

    def setup(self, backend):
        rng = np.random.default_rng(SEED)
        U, _ = np.linalg.qr(rng.standard_normal((self.m, self.k)))
        V, _ = np.linalg.qr(rng.standard_normal((self.n, self.k)))
        S = np.logspace(0, -2, self.k)
        A = 0.1 * rng.standard_normal((self.m, self.c))
        B = 0.1 * rng.standard_normal((self.n, self.c))
        arrays, self.sync = to_backend([U, S, V.T, A, B], backend)
        self.func = lambda: brand_update(*arrays, rank=self.k)
        U2, S2, Vh2 = (to_numpy(x) for x in self.func())
        dense = (U * S) @ V.T + A @ B.T
        exact = np.linalg.svd(dense, compute_uv=False)[: self.k]
        if not np.allclose(S2, exact, rtol=1e-9, atol=1e-12 * exact[0]):
            raise AssertionError("brand_update singular values disagree with numpy.linalg.svd")
        if np.linalg.norm(dense @ Vh2.T - U2 * S2) > 1e-9 * exact[0]:
            raise AssertionError("brand_update triplets are not singular triplets of the updated matrix")

    def time_brand_update(self, backend):
        self._timed()

    def peakmem_brand_update(self, backend):
        skip_peakmem_on_gpu(backend)
        self.func()


class BrandLightCorrection(Synced):
    """``brand_light_correction`` of a drifted rank-220 EVD against the exact d×d matrix, half of the modes."""

    params: ClassVar[list] = [[1024, 2048], BACKENDS]
    param_names: ClassVar[list] = ["d", "backend"]

    def setup(self, d, backend):
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((d, RANK)) * np.logspace(0, -3, RANK)[None, :]
        M = X @ X.T + 1e-2 * np.eye(d)
        w_exact, Q = np.linalg.eigh(M)
        # a drifted representation: the top eigenvectors, slightly rotated, with underestimated eigenvalues
        R, _ = np.linalg.qr(np.eye(RANK) + 1e-2 * rng.standard_normal((RANK, RANK)))
        U = Q[:, ::-1][:, :RANK] @ R
        w = 0.9 * w_exact[::-1][:RANK]
        (Ub, wb, Mb), self.sync = to_backend([U, w, M], backend)
        self.func = lambda: brand_light_correction(Ub, wb, Mb, RANK // 2, seed=SEED)
        lam, V = (to_numpy(x) for x in self.func())
        before = np.linalg.norm(M - (U * w) @ U.T)
        after = np.linalg.norm(M - (V * lam) @ V.T)
        if np.abs(V.T @ V - np.eye(RANK)).max() > 1e-10 or not after < before:
            raise AssertionError(f"light correction: orthonormality lost or error not reduced ({after:.3e})")
        if np.any(np.diff(lam) > 0):
            raise AssertionError("light correction eigenvalues are not descending")
        # every corrected mode is a Ritz pair: vᵀ M v = λ (the uncorrected ones keep 0.9× their Rayleigh quotient)
        rayleigh = np.einsum("ij,ij->j", V, M @ V)
        if np.sum(np.abs(rayleigh - lam) <= 1e-9 * np.abs(lam).max()) < RANK // 2:
            raise AssertionError("fewer than n_correct modes are Ritz pairs of M")

    def time_light_correction(self, d, backend):
        self._timed()
