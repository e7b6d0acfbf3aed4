"""Side-by-side: kronalg.randomized_svd vs scikit-learn, torch.svd_lowrank and scipy svds (PROPACK).

Run as ``python -m benchmarks.compare_randomized``.  One run builds a 4000×3000
matrix ``A = U diag(σ) Vᵀ`` with known spectrum (σ_i = 1/i² and σ_i = 0.9^{i−1}),
so the optimal rank-k error ``sqrt(Σ_{i>k} σ_i²)`` is exact, and times every
method at *equal* oversampling and power iterations (torch's ``q`` is the
sketch size ``k + oversample``, its ``niter`` the power iterations).  Reported:
best-of-``repeat`` wall time (methods timed round-robin), ``‖A − U S Vh‖_F / optimal``, and the time ratio
kronalg/sklearn.  PROPACK (a Lanczos method, converged to tolerance) is a
reference for time and accuracy, not an equal-work comparison.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kronalg.randomized import randomized_svd


def singular_vectors(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal ``U`` (m×r) and ``V`` (n×r), ``r = min(m, n)``, from QR of Gaussians (no SVD)."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return U, V


def best_time(fn, repeat: int):
    out, best = None, np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=4000)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=None, help="power iterations (default: sklearn's auto rule)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-propack", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="limit BLAS/torch threads (stabler on a busy host)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn

        threadpool_limits(args.threads)

    try:
        from sklearn.utils.extmath import randomized_svd as sk_rsvd
    except ImportError:
        sk_rsvd = None
    try:
        import torch
    except ImportError:
        torch = None
    from scipy.sparse.linalg import svds

    m, n, p = args.m, args.n, args.oversample
    r = min(m, n)
    i = np.arange(1, r + 1, dtype=np.float64)
    spectra = {"1/i^2": 1.0 / i**2, "0.9^(i-1)": 0.9 ** (i - 1)}
    if torch is not None and args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads() if torch is not None else "?"
    print(f"A: {m}x{n} float64, oversample={p}, best of {args.repeat}; torch threads: {threads}")
    header = f"{'spectrum':<10} {'k':>3} {'q':>2} {'method':<17} {'time [s]':>9} {'err/opt':>10} {'kronalg/sk':>11}"
    print(header)
    print("-" * len(header))
    U0, V0 = singular_vectors(m, n)
    for name, sigma in spectra.items():
        A = (U0 * sigma) @ V0.T
        At = torch.from_numpy(A) if torch is not None else None
        for k in args.ks:
            q = args.n_iter if args.n_iter is not None else (7 if k < 0.1 * r else 4)
            opt = np.sqrt(np.sum(sigma[k:] ** 2))

            def err(U, S, Vh, A=A, k=k, opt=opt):
                U, S, Vh = np.asarray(U)[:, :k], np.asarray(S)[:k], np.asarray(Vh)[:k, :]
                return np.linalg.norm(A - (U * S) @ Vh) / opt

            # methods as (name, call, to (U, S, Vh) on the host, repeats); timed round-robin so that a
            # busy host's load drifts over all methods alike, best time per method kept
            methods = [("kronalg", lambda A=A, k=k, q=q: randomized_svd(A, k, oversample=p, n_iter=q, seed=0), tuple)]
            if sk_rsvd is not None:
                methods.append(
                    ("sklearn", lambda A=A, k=k, q=q: sk_rsvd(A, k, n_oversamples=p, n_iter=q, random_state=0), tuple)
                )
            if torch is not None:
                methods.append(
                    (
                        "kronalg[torch]",
                        lambda At=At, k=k, q=q: randomized_svd(At, k, oversample=p, n_iter=q, seed=0),
                        lambda r: tuple(x.numpy() for x in r),
                    )
                )
                torch.manual_seed(0)
                methods.append(
                    (
                        "torch.svd_lowrank",
                        lambda At=At, k=k, q=q: torch.svd_lowrank(At, q=k + p, niter=q),
                        lambda r: (r[0].numpy(), r[1].numpy(), r[2].T.numpy()),
                    )
                )
            best = {name: np.inf for name, _, _ in methods}
            outputs = {}
            for _ in range(args.repeat):
                for name_m, fn, host in methods:
                    t, out = best_time(fn, 1)
                    best[name_m] = min(best[name_m], t)
                    outputs[name_m] = host(out)
            runs = {name_m: (best[name_m], err(*outputs[name_m])) for name_m, _, _ in methods}
            if not args.no_propack:
                t, (U, S, Vh) = best_time(lambda A=A, k=k: svds(A, k, solver="propack", random_state=0), 1)
                order = np.argsort(S)[::-1]
                runs["svds(propack)"] = (t, err(U[:, order], S[order], Vh[order, :]))
            t_sk = runs.get("sklearn", (np.nan,))[0]
            for method, (t, e) in runs.items():
                ratio = f"{runs['kronalg'][0] / t_sk:11.2f}" if method == "kronalg" and sk_rsvd is not None else ""
                print(f"{name:<10} {k:>3} {q:>2} {method:<17} {t:9.3f} {e:10.6f} {ratio}")


if __name__ == "__main__":
    main()
