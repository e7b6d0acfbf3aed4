"""asv benchmarks for ``KronSumSolver``: setup (factorize once) and solve (four GEMMs), NumPy float64.

Inputs come from :func:`benchmarks.compare.make_problem` (random well-conditioned SPD ``A, B``, symmetric indefinite
``C, D``, ``A⊗B + C⊗D`` positive definite) with a fixed seed.  ``setup`` checks the answer through the operator
``A U Bᵀ + C U Dᵀ`` (relative residual below 1e-12) so a wrong answer is never timed.
"""

from typing import ClassVar

import numpy as np

from kronalg.solve import KronSumSolver

try:
    from benchmarks.compare import make_problem
except ImportError:  # asv imports benchmark modules without the repository root on the path
    from compare import make_problem

SIZES = [64, 256, 512, 1024]


class KronSumSolverBench:
    """``KronSumSolver(A, B, C, D)`` and ``.solve(V)`` at factor size p = r."""

    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]
    timeout = 300

    def setup(self, size):
        self.A, self.B, self.C, self.D = make_problem(size)
        rng = np.random.default_rng(size)
        self.V = rng.standard_normal((size, size))
        self.solver = KronSumSolver(self.A, self.B, self.C, self.D)
        U = self.solver.solve(self.V)
        res = np.linalg.norm(self.A @ U @ self.B.T + self.C @ U @ self.D.T - self.V) / np.linalg.norm(self.V)
        if not res < 1e-12:
            raise AssertionError(f"KronSumSolver residual {res:.2e} at size {size}")

    def time_setup(self, size):
        KronSumSolver(self.A, self.B, self.C, self.D)

    def time_solve(self, size):
        self.solver.solve(self.V)

    def peakmem_setup(self, size):
        KronSumSolver(self.A, self.B, self.C, self.D)

    def peakmem_solve(self, size):
        self.solver.solve(self.V)
