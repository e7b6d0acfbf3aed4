"""asv benchmarks for the Van Loan–Pitsianis rearrangement and the partial trace.

``rearrange(M, (p, p), (p, p))`` and ``partial_trace(M, (p, p), (p, p), keep)`` for ``M = kron(A, B) + noise`` of
shape (p², p²).  ``setup`` checks the result against a reference written out in this file with ``reshape``,
``transpose`` and ``einsum`` (independently of kronalg), and for the partial trace also the identities
``PTr_b(A ⊗ B) = tr(B)·A``, ``PTr_a(A ⊗ B) = tr(A)·B`` on the noise-free product, so a wrong answer is never timed.
"""

from typing import ClassVar

import numpy as np

from benchmarks.bench_common import BACKENDS, SEED, Synced, skip_peakmem_on_gpu, to_backend, to_numpy
from kronalg import partial_trace, rearrange

SIZES = [16, 32, 64]  # M up to 4096×4096 (128 MiB)


def _problem(p):
    rng = np.random.default_rng(SEED)
    A, B = rng.standard_normal((p, p)), rng.standard_normal((p, p))
    K = np.kron(A, B)
    return A, B, K, K + 1e-3 * rng.standard_normal(K.shape)


class Rearrange(Synced):
    """``rearrange(M, (p, p), (p, p))``: (p², p²) → (p², p²), result made contiguous."""

    params: ClassVar[list] = [SIZES, BACKENDS]
    param_names: ClassVar[list] = ["p", "backend"]

    def setup(self, p, backend):
        _, _, _, M = _problem(p)
        (self.M,), self.sync = to_backend([M], backend)
        self.shape = (p, p)
        expected = M.reshape(p, p, p, p).transpose(0, 2, 1, 3).reshape(p * p, p * p)
        if not np.array_equal(to_numpy(self.func()), expected):
            raise AssertionError("rearrange disagrees with the reshape/transpose reference")

    def func(self):
        R = rearrange(self.M, self.shape, self.shape)
        return R.contiguous() if hasattr(R, "contiguous") else R.copy()

    def time_rearrange(self, p, backend):
        self._timed()

    def peakmem_rearrange(self, p, backend):
        skip_peakmem_on_gpu(backend)
        self.func()


class PartialTrace(Synced):
    """``partial_trace(M, (p, p), (p, p), keep)`` for keep ∈ {"a", "b"}."""

    params: ClassVar[list] = [SIZES, ["a", "b"], BACKENDS]
    param_names: ClassVar[list] = ["p", "keep", "backend"]

    def setup(self, p, keep, backend):
        A, B, K, M = _problem(p)
        (self.M, K_b), self.sync = to_backend([M, K], backend)
        self.shape, self.keep = (p, p), keep
        blocks = M.reshape(p, p, p, p)  # [i, r, j, s]: block (i, j), entry (r, s)
        expected = np.einsum("irjr->ij", blocks) if keep == "a" else np.einsum("iris->rs", blocks)
        if not np.allclose(to_numpy(self.func()), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max()):
            raise AssertionError("partial_trace disagrees with the einsum reference")
        exact = np.trace(B) * A if keep == "a" else np.trace(A) * B
        got = to_numpy(partial_trace(K_b, self.shape, self.shape, keep=keep))
        if not np.allclose(got, exact, rtol=1e-10, atol=1e-10 * np.abs(exact).max()):
            raise AssertionError("partial_trace of A ⊗ B is not tr(B)·A / tr(A)·B")

    def func(self):
        return partial_trace(self.M, self.shape, self.shape, keep=self.keep)

    def time_partial_trace(self, p, keep, backend):
        self._timed()

    def peakmem_partial_trace(self, p, keep, backend):
        skip_peakmem_on_gpu(backend)
        self.func()
