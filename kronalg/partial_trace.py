"""Partial traces of a matrix with Kronecker block structure."""

from __future__ import annotations

from typing import Any

from ._backend import namespace_and_device
from ._checks import check_keep, check_matrix, check_shape_pair
from ._vec import block_view

__all__ = ["partial_trace"]


def partial_trace(M: Any, a_shape: Any, b_shape: Any, keep: str = "a") -> Any:
    """Partial trace of ``M`` seen as a ``p×q`` grid of ``r×s`` blocks.

    ``keep="a"``: ``PTr_b(M)[i, j] = tr(M_ij)`` (needs ``r = s``);
    ``keep="b"``: ``PTr_a(M) = Σ_i M_ii`` (needs ``p = q``).
    For ``M = A ⊗ B`` these are ``tr(B)·A`` and ``tr(A)·B``.

    Parameters
    ----------
    M : array of shape (p·r, q·s)
    a_shape : pair of int
        ``(p, q)``, the shape of the outer (A) factor.
    b_shape : pair of int
        ``(r, s)``, the shape of the inner (B) factor.
    keep : {"a", "b"}
        Which factor's space to keep.

    Returns
    -------
    array of shape (p, q) for ``keep="a"``, (r, s) for ``keep="b"``

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import partial_trace
    >>> A, B = np.diag([1.0, 2.0]), np.diag([3.0, 4.0])
    >>> partial_trace(np.kron(A, B), (2, 2), (2, 2), keep="a")
    array([[ 7.,  0.],
           [ 0., 14.]])
    """
    xp, _ = namespace_and_device(M)
    check_matrix(M, "M")
    check_keep(keep)
    (p, q), (r, s) = check_shape_pair(a_shape, "a_shape"), check_shape_pair(b_shape, "b_shape")
    if M.shape != (p * r, q * s):
        raise ValueError(
            f"`M` must have shape (p*r, q*s) = ({p * r}, {q * s}) for `a_shape` {(p, q)} and "
            f"`b_shape` {(r, s)}, got {tuple(M.shape)}"
        )
    M4 = block_view(xp, M, (p, q), (r, s))  # M4[i, k, j, l]
    if keep == "a":
        if r != s:
            raise ValueError(f'keep="a" traces out the B blocks, which must be square; `b_shape` is {(r, s)}')
        return xp.linalg.trace(xp.permute_dims(M4, (0, 2, 1, 3)))
    if p != q:
        raise ValueError(f'keep="b" sums the diagonal blocks, so the A grid must be square; `a_shape` is {(p, q)}')
    return xp.linalg.trace(xp.permute_dims(M4, (1, 3, 0, 2)))
