"""Side-by-side timing of the symmetric Brand update against dense ``eigh`` (and randomized EVD when available).

Run from the repository root::

    python -m benchmarks.compare_brand [--dims 1024 2048 4096] [--rank 220] [--batch 256]

For each ``d`` the K-factor is ``M = ρ U diag(w) Uᵀ + A Aᵀ`` with ``U`` of shape (d, r) and ``A`` of shape (d, n),
the B-KFAC update of Puiu (2022, Alg. 4).  Timed, best of ``--repeat`` runs, all NumPy float64 in one process:

* ``brand``: ``brand_update_sym(U, w, A, decay=ρ, rank=r)`` — the low-rank factors in, the rank-r EVD out;
* ``eigh``: ``numpy.linalg.eigh(M)`` of the dense updated matrix; *forming M is excluded* (it costs d²(r+n) more);
* ``reigh``: ``kronalg.randomized.randomized_eigh(M, r)`` on the dense M (forming excluded), if that module exists.

Also printed: the ratio eigh/brand, brand's time per d (linear in d means a constant ``ms/1k-rows``), the error of
the Brand eigenvalues against ``eigh``, and the orthogonality drift ``max|UᵀU − I|`` after ``--drift-updates``
successive updates at d = 1024 in float64.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kronalg.brand import brand_update_sym

RHO = 0.95


def _best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _problem(d, r, n, seed):
    """A rank-r EVD with a decaying spectrum (built by Brand itself from an empty basis) and a batch factor."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, r)) * np.logspace(0, -3, r)[None, :]
    w, U = brand_update_sym(np.zeros((d, 0)), np.zeros(0), X)
    A = np.sqrt((1 - RHO) / n) * rng.standard_normal((d, n))
    return U, w, A


def _randomized():
    try:
        from kronalg.randomized import randomized_eigh
    except ImportError:
        return None
    return randomized_eigh


def _drift(d, r, n, updates, seed):
    rng = np.random.default_rng(seed)
    U, w, _ = _problem(d, r, n, seed)
    for _ in range(updates):
        A = np.sqrt((1 - RHO) / n) * rng.standard_normal((d, n))
        w, U = brand_update_sym(U[:, :r], w[:r], A, decay=RHO)
    return float(np.abs(U.T @ U - np.eye(U.shape[1])).max()), U.shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--rank", type=int, default=220)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (eigh: best of 1 above d=2048)")
    parser.add_argument("--drift-updates", type=int, default=200)
    parser.add_argument("--drift-dim", type=int, default=1024)
    parser.add_argument("--drift-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r, n = args.rank, args.batch
    reigh = _randomized()

    print(f"brand_update_sym vs dense eigh: r={r}, n={n}, rho={RHO}, NumPy float64 (forming M excluded)")
    head = f"{'d':>6} {'brand [s]':>10} {'ms/1k rows':>11} {'eigh [s]':>10} {'eigh/brand':>11}"
    head += f" {'reigh [s]':>10} {'reigh/brand':>12} {'max|Δλ|/λ1':>11}"
    print(head)
    for d in args.dims:
        U, w, A = _problem(d, r, n, args.seed)
        brand_update_sym(U, w, A, decay=RHO, rank=r)  # warm-up
        t_brand, (lam, _) = _best(lambda U=U, w=w, A=A: brand_update_sym(U, w, A, decay=RHO, rank=r), args.repeat)
        M = RHO * (U * w) @ U.T + A @ A.T
        t_eigh, (ev, _) = _best(lambda M=M: np.linalg.eigh(M), 1 if d > 2048 else args.repeat)
        err = float(np.abs(lam - ev[::-1][:r]).max() / ev[-1])
        if reigh is not None:
            t_r, _ = _best(lambda M=M: reigh(M, r, seed=0), args.repeat)
            rcol = f"{t_r:10.3f} {t_r / t_brand:12.1f}"
        else:
            rcol = f"{'n/a':>10} {'n/a':>12}"
        row = f"{d:6d} {t_brand:10.3f} {1e6 * t_brand / d:11.2f} {t_eigh:10.3f} {t_eigh / t_brand:11.1f} {rcol}"
        print(f"{row} {err:11.1e}")
    drift, shape = _drift(args.drift_dim, r, args.drift_batch, args.drift_updates, args.seed)
    print(
        f"orthogonality drift after {args.drift_updates} updates (d={args.drift_dim}, r={r}, "
        f"n={args.drift_batch}, float64): max|UᵀU − I| = {drift:.2e}, U shape {shape}"
    )


if __name__ == "__main__":
    main()
