"""A short tour: nearest Kronecker products and the (A⊗B ± C⊗D)⁻¹ solver, with their errors.

Run as ``python -m kronalg.demo``.  Prints, for a Fisher-like matrix built
from per-sample gradients, the error of its best Kronecker-rank-1/2/3
approximations against the dense SVD bound, and for the solver the residual
against ``numpy.linalg.solve`` on the formed matrix.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kronalg import KronSumSolver, SampleKronSum, nearest_kronecker, rearrange


def _random_spd(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, 1.0 / cond, n)) @ Q.T


def nearest_demo(rng: np.random.Generator, n: int = 64, p: int = 12, r: int = 10) -> None:
    """Print the KPSVD errors of a Fisher-like second-moment matrix, next to K-FAC's."""
    A = rng.standard_normal((n, r)) * np.linspace(2.0, 0.2, r) + 0.5  # layer inputs
    G = rng.standard_normal((n, p)) * (0.2 + np.abs(A[:, :1]))  # output gradients, scale tied to the input
    F = SampleKronSum.from_factors(G, A, weights=1.0 / n)
    dense = F.to_dense()
    S = np.linalg.svd(rearrange(dense, (p, p), (r, r)), compute_uv=False)
    kfac = np.kron(G.T @ G / n, A.T @ A / n)
    print(f"Nearest Kronecker products of F = E[vec(g aᵀ) vec(g aᵀ)ᵀ], {n} samples, F: {F.shape}")
    print(f"  K-FAC E[ggᵀ]⊗E[aaᵀ]: ‖F − F̂‖/‖F‖ = {np.linalg.norm(dense - kfac) / np.linalg.norm(dense):.3e}")
    print(f"  {'rank':>4}  {'‖F − F̂‖/‖F‖':>14}  {'SVD bound':>10}  {'time [ms]':>9}")
    for k in (1, 2, 3):
        t0 = time.perf_counter()
        K = nearest_kronecker(F, rank=k)
        ms = 1e3 * (time.perf_counter() - t0)
        err = np.linalg.norm(dense - K.to_dense()) / np.linalg.norm(dense)
        bound = np.sqrt(np.sum(S[k:] ** 2) / np.sum(S**2))
        print(f"  {k:>4}  {err:>14.3e}  {bound:>10.3e}  {ms:>9.2f}")
    A0, B0 = K.factors[0]
    print(
        f"  leading factors symmetric PSD: min eig {np.linalg.eigvalsh(A0).min():.2e}, "
        f"{np.linalg.eigvalsh(B0).min():.2e}"
    )


def solver_demo(rng: np.random.Generator, p: int = 24, r: int = 20) -> None:
    """Print solver residuals against a dense solve, for sign ±1 and ill-conditioned factors."""
    print(f"\nSolving (A⊗B ± C⊗D) vec(U) = vec(V), factors {p}×{p} and {r}×{r}")
    print(f"  {'case':<28}  {'kronalg residual':>16}  {'dense residual':>14}")
    cases = [("sign +1, cond 1e2", +1, 1e2), ("sign −1, cond 1e2", -1, 1e2), ("sign +1, cond 1e8", +1, 1e8)]
    for name, sign, cond in cases:
        A, B = _random_spd(rng, p, cond), _random_spd(rng, r, cond)
        C, D = _random_spd(rng, p, cond), _random_spd(rng, r, cond)
        if sign < 0:  # keep the system positive definite: A⊗B − c·C⊗D with c < 1/λmax(A⁻¹C)λmax(B⁻¹D)
            C = 0.5 * C / np.max(np.abs(np.linalg.eigvals(np.linalg.solve(A, C))))
            D = D / np.max(np.abs(np.linalg.eigvals(np.linalg.solve(B, D))))
        V = rng.standard_normal((p, r))
        M = np.kron(A, B) + sign * np.kron(C, D)
        U = KronSumSolver(A, B, C, D, sign=sign).solve(V)
        u_dense = np.linalg.solve(M, V.reshape(-1))
        res = np.linalg.norm(M @ U.reshape(-1) - V.reshape(-1)) / np.linalg.norm(V)
        res_dense = np.linalg.norm(M @ u_dense - V.reshape(-1)) / np.linalg.norm(V)
        print(f"  {name:<28}  {res:>16.2e}  {res_dense:>14.2e}")


def main(argv: list[str] | None = None) -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random problems")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    nearest_demo(rng)
    solver_demo(rng)


if __name__ == "__main__":
    main()
