"""Implicit KPSVD of a layer's Fisher block, in units of one K-FAC factor computation.

Run as ``python -m benchmarks.compare_kpsvd`` (unset ``OPENBLAS_CORETYPE`` for the numbers).
For each problem, in one run: the time to form the two K-FAC factors ``GᵀG/n`` and ``AᵀA/n``
(the unit), then ``nearest_kronecker`` by ``"gram"`` (exact), ``"power"`` cold and warm-started
from a slightly perturbed previous answer, ``"lanczos"``, and scipy's ``svds`` (ARPACK) on a
``LinearOperator`` of the same rearranged operator, each with its relative residual against
the exact answer.  The accuracy check comes first: a method whose answer is off is marked.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse.linalg as sla

from kronalg import KronSum, SampleKronSum, nearest_kronecker


def best_time(f: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def kfac_time(F: SampleKronSum, repeat: int) -> float:
    """Time of the two K-FAC factors (the unit of the table)."""
    G, A = (x.reshape(-1, x.shape[-1]) for x in F.location_factors())
    n = F.n_samples
    return best_time(lambda: (G.T @ G / n, A.T @ A / n), repeat)


def perturbed(K: KronSum, rng: np.random.Generator, size: float = 1e-2) -> KronSum:
    """A previous answer: the exact factors with a relative perturbation."""
    A, B = K.factors[0]

    def nudge(M: np.ndarray) -> np.ndarray:
        D = rng.standard_normal(M.shape)
        return M + size * np.linalg.norm(M) * D / np.linalg.norm(D)

    return KronSum([(nudge(A), nudge(B))])


def arpack_time(F: SampleKronSum, repeat: int, tol: float) -> float:
    """scipy svds (ARPACK) for the top triplet of the same rearranged operator."""
    R = F.rearranged
    op = sla.LinearOperator(
        R.shape, matvec=lambda x: R.matvec(np.ravel(x)), rmatvec=lambda y: R.rmatvec(np.ravel(y)), dtype=R.dtype
    )
    return best_time(lambda: sla.svds(op, k=1, tol=tol, solver="arpack", random_state=0), repeat)


def rows_for(name: str, F: SampleKronSum, methods: list[str], repeat: int, rng: np.random.Generator) -> list[str]:
    """Benchmark one problem; returns printable rows."""
    unit = kfac_time(F, repeat)
    exact = nearest_kronecker(F, rank=1, method="gram" if "gram" in methods else "lanczos", tol=1e-12)
    sigma = float(exact.info.singular_values[0])
    out = [f"{name}: K-FAC factors {unit * 1e3:.2f} ms (= 1.0)"]
    tol = 1e-6
    for method in methods:
        kwargs: dict = {"rank": 1, "method": method.split("-")[0], "tol": tol}
        if method.endswith("warm"):
            kwargs["x0"] = perturbed(exact, rng)
        if method == "arpack":
            t = arpack_time(F, repeat, tol)
            out.append(f"  {'svds arpack':<16} {t / unit:8.2f}×")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = best_time(lambda kw=kwargs: nearest_kronecker(F, **kw), repeat)
            K = nearest_kronecker(F, **kwargs)
        err = abs(float(K.info.singular_values[0]) - sigma) / sigma
        diff = np.linalg.norm(K.factors[0][0] - exact.factors[0][0]) / np.linalg.norm(exact.factors[0][0])
        out.append(
            f"  {method:<16} {t / unit:8.2f}×   iters {K.info.iterations:4d}   σ rel.err {err:.1e}   "
            f"factor rel.diff {diff:.1e}"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="p = r of Linear layers")
    parser.add_argument("--samples", type=int, default=256, help="n, samples per batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-conv", action="store_true", help="skip the convolution problem")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    methods = ["gram", "power-cold", "power-warm", "lanczos", "arpack"]
    for p in args.sizes:
        G = rng.standard_normal((args.samples, p))
        A = rng.standard_normal((args.samples, p)) + 0.3
        F = SampleKronSum.from_factors(G, A, weights=1.0 / args.samples)
        print("\n".join(rows_for(f"Linear n={args.samples} p=r={p}", F, methods, args.repeat, rng)))
    if not args.no_conv:
        n, T, p, r = 32, 64, 64, 577
        G = rng.standard_normal((n, T, p)) / np.sqrt(T)
        A = rng.standard_normal((n, T, r)) + 0.3
        F = SampleKronSum.from_factors(G, A, weights=1.0 / n)
        methods = ["power-cold", "power-warm", "lanczos", "lanczos-warm"]
        print("\n".join(rows_for(f"Conv n={n} T={T} p={p} r={r}", F, methods, args.repeat, rng)))


if __name__ == "__main__":
    main()
