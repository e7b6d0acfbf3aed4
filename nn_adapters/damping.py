"""Factored Tikhonov damping of a Kronecker product (Martens & Grosse §6.3).

``F + λI`` is not a Kronecker product; K-FAC damps each factor instead,

    (G ⊗ A) + λI  ≈  (G + (√λ/π) I) ⊗ (A + π√λ I),

with the trace-norm ``π = sqrt((tr A / r) / (tr G / p))`` (factors in the design's
order: ``G`` output side, ``p × p``; ``A`` input side, ``r × r``).  This π
minimizes the norm of the cross terms ``(√λ/π) A + π√λ G`` measured by the
trace norm, and makes the two added multiples of the identity balance the
average eigenvalue of each factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["damped_factors", "symmetric_eigh", "trace_norm_pi"]


def trace_norm_pi(G: Tensor, A: Tensor) -> float:
    """``π = sqrt((tr A / r) / (tr G / p))``, 1 when either trace is not positive.

    Parameters
    ----------
    G : Tensor of shape (p, p)
        Output-side factor.
    A : Tensor of shape (r, r)
        Input-side factor.

    Returns
    -------
    float
    """
    mean_g = float(torch.diagonal(G).sum()) / G.shape[0]
    mean_a = float(torch.diagonal(A).sum()) / A.shape[0]
    if not (mean_g > 0 and mean_a > 0 and math.isfinite(mean_g) and math.isfinite(mean_a)):
        return 1.0
    return math.sqrt(mean_a / mean_g)


def damped_factors(G: Tensor, A: Tensor, damping: float, pi: float | None = None) -> tuple[Tensor, Tensor]:
    """``(G + (√λ/π) I, A + π√λ I)``: factored Tikhonov damping with strength ``λ = damping``.

    Parameters
    ----------
    G : Tensor of shape (p, p)
    A : Tensor of shape (r, r)
    damping : float
        ``λ ≥ 0``.
    pi : float, optional
        The split; :func:`trace_norm_pi` when omitted.

    Returns
    -------
    G_damped : Tensor of shape (p, p)
    A_damped : Tensor of shape (r, r)
    """
    if not (isinstance(damping, (int, float)) and damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"`damping` must be a finite number >= 0, got {damping!r}")
    pi = trace_norm_pi(G, A) if pi is None else pi
    root = math.sqrt(damping)
    eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return G + (root / pi) * eye_g, A + (root * pi) * eye_a


def symmetric_eigh(M: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of the symmetric part of ``M``, retried in float64 when LAPACK fails to converge.

    Float32 ``syevd`` in torch's CPU LAPACK fails on some K-factors with many repeated eigenvalues (e.g. the zero
    eigenvalues of inputs that are always 0, such as border pixels of digits): it raises, or returns NaN without
    raising.  The float64 solve of the same matrix succeeds and is cast back.

    Parameters
    ----------
    M : Tensor of shape (d, d)

    Returns
    -------
    eigenvalues : Tensor of shape (d,)
        Ascending.
    eigenvectors : Tensor of shape (d, d)
    """
    S = 0.5 * (M + M.T)
    try:
        w, Q = torch.linalg.eigh(S)
        if bool(torch.isfinite(w).all()) and bool(torch.isfinite(Q).all()):
            return w, Q
    except torch.linalg.LinAlgError:
        pass
    if S.dtype == torch.float64 or not bool(torch.isfinite(S).all()):
        raise ValueError(f"the symmetric eigendecomposition of a {tuple(S.shape)} factor failed (non-finite input?)")
    w, Q = torch.linalg.eigh(S.to(torch.float64))
    return w.to(S.dtype), Q.to(S.dtype)
