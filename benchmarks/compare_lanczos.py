"""Side-by-side: ``kronalg.lanczos_svd`` against ``scipy.sparse.linalg.svds`` (ARPACK, PROPACK).

Run as ``python -m benchmarks.compare_lanczos`` (``--quick`` for a small run).
In one run, for the top ``k`` triplets of two dense test matrices with known
singular values — (a) ``σ_i = 1/i²`` and (b) ``σ`` log-spaced from 1 to
``1/cond`` — every solver gets the same ``tol`` and the same operator, a
``LinearOperator`` that counts its products with ``A`` and ``Aᵀ`` (one per
column of a block product).  Reported: products, best wall time, the largest
relative residual ``max(‖A v − σ u‖, ‖Aᵀ u − σ v‖)/σ_1`` of the triplets, and
the largest relative error ``|σ̂_i − σ_i|/σ_i`` against the known values.

Note that ``svds`` passes ``tol**2`` to both ARPACK (which works on ``AᵀA``)
and PROPACK; ``lanczos_svd`` stops on the residual ``≤ tol·σ_1``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.sparse.linalg import LinearOperator, svds

from kronalg.lanczos import lanczos_svd

SEED = 1234


class CountingOperator(LinearOperator):
    """``A`` as a LinearOperator that counts products with ``A`` and ``Aᵀ``."""

    def __init__(self, A: np.ndarray):
        super().__init__(dtype=A.dtype, shape=A.shape)
        self.A = A
        self.AT = A.T
        self.count = 0

    def _matvec(self, x):
        self.count += 1
        return self.A @ x

    def _rmatvec(self, y):
        self.count += 1
        return self.AT @ y

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.A @ X

    def _rmatmat(self, Y):
        self.count += Y.shape[1]
        return self.AT @ Y

    def _adjoint(self):
        return _Adjoint(self)


class _Adjoint(LinearOperator):
    def __init__(self, parent: CountingOperator):
        super().__init__(dtype=parent.dtype, shape=(parent.shape[1], parent.shape[0]))
        self.parent = parent

    def _matvec(self, x):
        return self.parent._rmatvec(x)

    def _rmatvec(self, y):
        return self.parent._matvec(y)

    def _matmat(self, X):
        return self.parent._rmatmat(X)

    def _rmatmat(self, Y):
        return self.parent._matmat(Y)


def make_matrix(m: int, n: int, s: np.ndarray, seed: int = SEED) -> np.ndarray:
    """``A = U diag(s) Vᵀ`` with Haar-like orthonormal ``U`` (m×r), ``V`` (n×r) from QR of Gaussians."""
    rng = np.random.default_rng(seed)
    r = s.shape[0]
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (U * s) @ V.T


def spectra(n: int, cond: float) -> dict[str, np.ndarray]:
    """The two test spectra (descending)."""
    i = np.arange(1, n + 1, dtype=np.float64)
    return {"1/i^2": 1.0 / i**2, f"logspace 1..{1 / cond:.0e}": np.logspace(0.0, -np.log10(cond), n)}


def run_solver(method: str, op: CountingOperator, k: int, tol: float):
    """Top-k triplets by one method: returns (U, S, Vh) with S descending."""
    if method == "kronalg":
        U, S, Vh = lanczos_svd(op, k, tol=tol, seed=SEED)
        return U, S, Vh
    v0 = np.random.default_rng(SEED).standard_normal(min(op.shape) if method == "arpack" else op.shape[0])
    # PROPACK does not restart: its `maxiter` is the largest Krylov dimension (default 10k, too small for k=1)
    maxiter = min(max(10 * k, 200), min(op.shape)) if method == "propack" else None
    U, S, Vh = svds(op, k=k, tol=tol, solver=method, v0=v0, maxiter=maxiter)
    order = np.argsort(S)[::-1]
    return U[:, order], S[order], Vh[order, :]


def measure(method: str, A: np.ndarray, s: np.ndarray, k: int, tol: float, repeat: int) -> dict:
    """Products, best time, residual and singular-value error of one solver."""
    best = np.inf
    for _ in range(repeat):
        op = CountingOperator(A)
        t0 = time.perf_counter()
        try:
            U, S, Vh = run_solver(method, op, k, tol)
        except Exception as exc:  # report a solver failure as a row instead of stopping the run
            return {"matvecs": op.count, "time": np.nan, "residual": np.nan, "sv_error": np.nan, "error": exc}
        best = min(best, time.perf_counter() - t0)
        count = op.count
    r1 = np.linalg.norm(A @ Vh.T - U * S, axis=0)
    r2 = np.linalg.norm(A.T @ U - Vh.T * S, axis=0)
    residual = float(np.max(np.maximum(r1, r2)) / s[0])
    sv_error = float(np.max(np.abs(S - s[:k]) / s[:k]))
    return {"matvecs": count, "time": best, "residual": residual, "sv_error": sv_error}


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1000×800 matrix, k in (1, 10), one repeat")
    parser.add_argument("--m", type=int, default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--k", type=int, nargs="+", default=None)
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--cond", type=float, default=1e10)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    m = args.m or (1000 if args.quick else 4000)
    n = args.n or (800 if args.quick else 3000)
    ks = args.k or ([1, 10] if args.quick else [1, 10, 50])
    repeat = args.repeat or (1 if args.quick else 3)
    methods = ["kronalg", "arpack", "propack"]

    print(f"top-k SVD of dense {m}x{n} matrices, tol={args.tol:g}, best of {repeat}; matvecs = products with A and Aᵀ")
    header = (
        f"{'spectrum':<22} {'k':>3} {'method':<8} {'matvecs':>8} {'time [s]':>9} {'max res/σ1':>11} {'max |Δσ|/σ':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, s in spectra(min(m, n), args.cond).items():
        A = make_matrix(m, n, s)
        for k in ks:
            rows = {meth: measure(meth, A, s, k, args.tol, repeat) for meth in methods}
            for meth, r in rows.items():
                print(
                    f"{name:<22} {k:>3} {meth:<8} {r['matvecs']:>8d} {r['time']:>9.4f} "
                    f"{r['residual']:>11.2e} {r['sv_error']:>11.2e}"
                )
            ratio = rows["kronalg"]["time"] / rows["propack"]["time"]
            mv = rows["kronalg"]["matvecs"] / rows["propack"]["matvecs"]
            print(f"{'':<22} {'':>3} kronalg/propack: time x{ratio:.2f}, matvecs x{mv:.2f}")


if __name__ == "__main__":
    main()
