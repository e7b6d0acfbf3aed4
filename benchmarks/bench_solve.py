"""asv benchmarks for ``KronSumSolver``: setup (factorize once) and solve (four GEMMs), float64.

Inputs come from :func:`benchmarks.compare.make_problem` (random well-conditioned SPD ``A, B``, symmetric indefinite
``C, D``, ``A⊗B + C⊗D`` positive definite) with a fixed seed.  ``setup`` checks the answer through the operator
``A U Bᵀ + C U Dᵀ`` (relative residual below 1e-12) so a wrong answer is never timed.
``backend`` axis as in ``benchmarks/bench_common.py`` (GPU timings synchronize).
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, Synced, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg.solve import KronSumSolver

try:
    from benchmarks.compare import make_problem
except ImportError:  # asv imports benchmark modules without the repository root on the path
    from compare import make_problem

SIZES = [64, 256, 512, 1024]


class KronSumSolverBench(Synced):
    """``KronSumSolver(A, B, C, D)`` and ``.solve(V)`` at factor size p = r."""

    params: ClassVar[list] = [SIZES, BACKENDS]
    param_names: ClassVar[list] = ["size", "backend"]
    timeout = 300

    def setup(self, size, backend):
        A, B, C, D = make_problem(size)
        V = np.random.default_rng(size).standard_normal((size, size))
        (self.A, self.B, self.C, self.D, self.V), self.sync = to_backend([A, B, C, D, V], backend)
        self.solver = KronSumSolver(self.A, self.B, self.C, self.D)
        U = to_numpy(self.solver.solve(self.V))
        res = np.linalg.norm(A @ U @ B.T + C @ U @ D.T - V) / np.linalg.norm(V)
        if not res < 1e-12:
            raise AssertionError(f"KronSumSolver residual {res:.2e} at size {size}")

    def _setup_solver(self):
        return KronSumSolver(self.A, self.B, self.C, self.D)

    def _solve(self):
        return self.solver.solve(self.V)

    def time_setup(self, size, backend):
        self.func = self._setup_solver
        self._timed()

    def time_solve(self, size, backend):
        self.func = self._solve
        self._timed()

    def peakmem_setup(self, size, backend):
        skip_peakmem_on_gpu(backend)
        self._setup_solver()

    def peakmem_solve(self, size, backend):
        skip_peakmem_on_gpu(backend)
        self._solve()
