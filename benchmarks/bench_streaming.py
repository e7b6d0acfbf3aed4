"""asv benchmarks for ``StreamingKronecker`` (K-FOC's batch-by-batch Kronecker estimate of a weighted mean).

Eight Fisher-like batches ``SampleKronSum.from_factors(G_p, A_p, weights=1/n)`` (n = 64 samples, G, A of shape
(64, 32)) are fed to a fresh ``StreamingKronecker`` and the estimate is read; timed per strategy and backend.  Before
timing, ``setup`` checks (1) on batches that are exact multiples ``c_p·(L ⊗ R)`` that both strategies return the
weighted mean ``(Σ ω_p c_p / Σ ω_p)·L ⊗ R`` exactly, and (2) that each batch's returned ``L_p ⊗ R_p`` reaches the
Eckart–Young optimum of that batch's dense matrix (rearranged and SVD'd in this file), so a wrong answer is never
timed.  ``backend`` axis as in ``benchmarks/bench_common.py``.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, to_backend, to_numpy
from kronalg import KronSum, SampleKronSum, StreamingKronecker

N_BATCHES, N_SAMPLES, P = 8, 64, 32


def _rearranged_sigma(F, p):
    return np.linalg.svd(F.reshape(p, p, p, p).transpose(0, 2, 1, 3).reshape(p * p, p * p), compute_uv=False)


class Streaming(Synced):
    """``StreamingKronecker(strategy)``: 8 updates and one ``estimate()``."""

    params: ClassVar[list] = [["running", "approx"], BACKENDS]
    param_names: ClassVar[list] = ["strategy", "backend"]
    timeout = 120

    def setup(self, strategy, backend):
        rng = np.random.default_rng(SEED)
        factors = [(rng.standard_normal((N_SAMPLES, P)), rng.standard_normal((N_SAMPLES, P))) for _ in range(N_BATCHES)]
        arrays, self.sync = to_backend([a for pair in factors for a in pair], backend)
        self.batches = [
            SampleKronSum.from_factors(arrays[2 * i], arrays[2 * i + 1], weights=1.0 / N_SAMPLES)
            for i in range(N_BATCHES)
        ]
        self.weights = [float(w) for w in rng.uniform(0.5, 2.0, N_BATCHES)]
        self.strategy = strategy

        # (1) proportional batches: the estimate is the weighted mean exactly
        L = rng.standard_normal((6, 6))
        R = rng.standard_normal((5, 5))
        L, R = L @ L.T + np.eye(6), R @ R.T + np.eye(5)  # symmetric positive definite: no sign ambiguity
        scales = rng.uniform(0.5, 2.0, 4)
        (Lb, Rb), _ = to_backend([L, R], backend)
        stream = StreamingKronecker(strategy)
        for c, w in zip(scales, self.weights[:4]):
            stream.update(KronSum([(Lb, float(c) * Rb)]), weight=w)
        expected = np.average(scales, weights=self.weights[:4]) * np.kron(L, R)
        got = to_numpy(stream.estimate().to_dense())
        if not np.allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max()):
            raise AssertionError(f"{strategy}: estimate of proportional batches is not their weighted mean")

        # (2) each batch's own Kronecker factor is optimal for that batch
        stream = StreamingKronecker(strategy)
        for (G, A), batch, w in zip(factors[:2], self.batches[:2], self.weights[:2]):
            Kp = stream.update(batch, weight=w)
            V = np.einsum("ni,nj->nij", G, A).reshape(N_SAMPLES, P * P)
            F = V.T @ V / N_SAMPLES
            sigma = _rearranged_sigma(F, P)
            Kd = to_numpy(Kp.to_dense())
            # Kp is normalized (‖L_p‖ = 1): compare the best multiple of it with the optimum
            alpha = np.vdot(Kd, F) / np.vdot(Kd, Kd)
            residual = np.linalg.norm(F - alpha * Kd)
            best = np.sqrt(np.sum(sigma[1:] ** 2))
            if not np.isclose(residual, best, rtol=1e-6):
                raise AssertionError(f"{strategy}: batch factor residual {residual:.6e} != optimal {best:.6e}")
        self.func = self._stream
        if not np.all(np.isfinite(to_numpy(self.func().to_dense()))):
            raise AssertionError(f"{strategy}: non-finite estimate")

    def _stream(self):
        stream = StreamingKronecker(self.strategy)
        for batch, w in zip(self.batches, self.weights):
            stream.update(batch, weight=w)
        return stream.estimate()

    def time_stream(self, strategy, backend):
        self._timed()
