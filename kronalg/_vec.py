"""Every reshape of the library lives here.

Convention (fixed): **vec is row-major** (C order), ``vec(X) = X.reshape(-1)``,
the flattening of NumPy and torch.  Then, for ``A: p×q``, ``B: r×s`` and
``X: q×s``::

    (A ⊗ B) vec(X) = vec(A @ X @ B.T)          (result p×r)

and the Van Loan–Pitsianis rearrangement of ``M`` of shape ``(p·r, q·s)`` is::

    R(M) = M.reshape(p, r, q, s).transpose(0, 2, 1, 3).reshape(p*q, r*s)

so that ``R(A ⊗ B) = vec(A) vec(B)ᵀ`` and ``‖M − A⊗B‖_F = ‖R(M) − vec(A) vec(B)ᵀ‖_F``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["vec", "unvec", "rearrange_blocks", "unrearrange_blocks", "block_view"]


def vec(xp: Any, X: Any) -> Any:
    """Row-major vectorization of the last two axes: ``(..., p, r) -> (..., p*r)``."""
    return xp.reshape(X, (*X.shape[:-2], X.shape[-2] * X.shape[-1]))


def unvec(xp: Any, v: Any, shape: tuple[int, int]) -> Any:
    """Inverse of :func:`vec` on the last axis: ``(..., p*r) -> (..., p, r)``."""
    return xp.reshape(v, (*v.shape[:-1], shape[0], shape[1]))


def block_view(xp: Any, M: Any, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> Any:
    """View ``M`` of shape ``(p·r, q·s)`` as the 4-D array ``M4[i, k, j, l]``.

    ``M4[i, :, j, :]`` is the ``(i, j)`` block of size ``r×s``.
    """
    (p, q), (r, s) = a_shape, b_shape
    return xp.reshape(M, (p, r, q, s))


def rearrange_blocks(xp: Any, M: Any, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> Any:
    """``R(M)`` of shape ``(p·q, r·s)``; see the module docstring."""
    (p, q), (r, s) = a_shape, b_shape
    M4 = block_view(xp, M, a_shape, b_shape)
    return xp.reshape(xp.permute_dims(M4, (0, 2, 1, 3)), (p * q, r * s))


def unrearrange_blocks(xp: Any, R: Any, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> Any:
    """Inverse of :func:`rearrange_blocks`: ``(p·q, r·s) -> (p·r, q·s)``."""
    (p, q), (r, s) = a_shape, b_shape
    R4 = xp.reshape(R, (p, q, r, s))
    return xp.reshape(xp.permute_dims(R4, (0, 2, 1, 3)), (p * r, q * s))
