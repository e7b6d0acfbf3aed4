"""asv benchmarks for the symmetric Brand update (B-KFAC's K-factor refresh, Puiu 2022 Alg. 4).

Layout as in scipy's ``BenchSVDS``: a ``params`` grid whose ``method`` axis holds the dense baseline
(``numpy.linalg.eigh`` of the updated d×d matrix, forming it excluded) next to ``brand_update_sym``; inputs built in
``setup`` from a fixed seed; an accuracy check in ``setup`` against the dense eigenvalues so a wrong answer is never
timed.  The dense ``eigh`` at d = 4096 takes tens of seconds on a laptop-class CPU, so it is skipped here and measured
once by ``python -m benchmarks.compare_brand`` instead.
"""

from typing import ClassVar

import numpy as np

from kronalg.brand import brand_update_sym

SEED = 1234
RANK = 220
BATCH = 256
RHO = 0.95


class BrandUpdateSym:
    """``decay·U diag(w) Uᵀ + A Aᵀ`` → its rank-220 EVD; U: (d, 220), A: (d, 256), NumPy float64."""

    params: ClassVar[list] = [[1024, 4096], ["brand", "eigh"]]
    param_names: ClassVar[list] = ["d", "method"]
    timeout = 300

    def setup(self, d, method):
        if method == "eigh" and d > 2048:
            raise NotImplementedError("dense eigh at this size is measured by benchmarks.compare_brand")
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((d, RANK)) * np.logspace(0, -3, RANK)[None, :]
        self.w, self.U = brand_update_sym(np.zeros((d, 0)), np.zeros(0), X)
        self.A = np.sqrt((1 - RHO) / BATCH) * rng.standard_normal((d, BATCH))
        lam, V = brand_update_sym(self.U, self.w, self.A, decay=RHO, rank=RANK)
        if np.abs(V.T @ V - np.eye(RANK)).max() > 1e-12:
            raise AssertionError("brand_update_sym lost orthonormality")
        if d <= 2048:  # the accuracy check needs the dense reference
            self.M = RHO * (self.U * self.w) @ self.U.T + self.A @ self.A.T
            exact = np.linalg.eigvalsh(self.M)[::-1][:RANK]
            if not np.allclose(lam, exact, rtol=1e-9, atol=1e-12 * exact[0]):
                raise AssertionError("brand_update_sym eigenvalues disagree with numpy.linalg.eigvalsh")

    def _run(self, method):
        if method == "brand":
            brand_update_sym(self.U, self.w, self.A, decay=RHO, rank=RANK)
        else:
            np.linalg.eigh(self.M)

    def time_update(self, d, method):
        self._run(method)

    def peakmem_update(self, d, method):
        self._run(method)
