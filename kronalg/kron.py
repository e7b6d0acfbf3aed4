"""Dense Kronecker products and the Kronecker matrix-vector product."""

from __future__ import annotations

from typing import Any

from ._backend import namespace_and_device
from ._checks import check_matrix, check_same_dtype, check_shape_pair
from ._linalg import left_matmul, right_matmul
from ._vec import rearrange_blocks, unrearrange_blocks

__all__ = ["kron", "kron_matvec", "rearrange", "unrearrange"]


def kron(A: Any, B: Any) -> Any:
    """Dense Kronecker product ``A ⊗ B``.

    ``(A ⊗ B)[i·r + k, j·s + l] = A[i, j] B[k, l]``, the same as ``numpy.kron``.

    Parameters
    ----------
    A : array of shape (p, q)
    B : array of shape (r, s)

    Returns
    -------
    array of shape (p·r, q·s)

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import kron
    >>> kron(np.eye(2), np.ones((1, 2)))
    array([[1., 1., 0., 0.],
           [0., 0., 1., 1.]])
    """
    xp, _ = namespace_and_device(A, B)
    check_matrix(A, "A")
    check_matrix(B, "B")
    check_same_dtype({"A": A, "B": B})
    (p, q), (r, s) = A.shape, B.shape
    K = A[:, None, :, None] * B[None, :, None, :]
    return xp.reshape(K, (p * r, q * s))


def kron_matvec(A: Any, B: Any, X: Any) -> Any:
    """Kronecker product applied to matrices: ``A @ X @ Bᵀ = (A ⊗ B) vec(X)``.

    Never forms ``A ⊗ B``; costs two GEMMs per matrix in the batch.

    Parameters
    ----------
    A : array of shape (p, q)
    B : array of shape (r, s)
    X : array of shape (..., q, s)
        One matrix or a batch of them; ``vec`` is row-major, so a vector ``x``
        of length ``q·s`` is ``x.reshape(q, s)``.

    Returns
    -------
    array of shape (..., p, r)

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import kron, kron_matvec
    >>> A, B, X = np.arange(6.).reshape(2, 3), np.eye(2), np.ones((3, 2))
    >>> np.allclose(kron_matvec(A, B, X).reshape(-1), kron(A, B) @ X.reshape(-1))
    True
    """
    xp, _ = namespace_and_device(A, B, X)
    check_matrix(A, "A")
    check_matrix(B, "B")
    check_same_dtype({"A": A, "B": B, "X": X})
    if X.ndim < 2:
        raise ValueError(f"`X` must have shape (..., {A.shape[1]}, {B.shape[1]}), got {tuple(X.shape)}")
    if X.shape[-2] != A.shape[1] or X.shape[-1] != B.shape[1]:
        raise ValueError(
            f"`X` must have shape (..., {A.shape[1]}, {B.shape[1]}) to match `A` {tuple(A.shape)} "
            f"and `B` {tuple(B.shape)}, got {tuple(X.shape)}"
        )
    if X.ndim == 2:
        return (A @ X) @ xp.matrix_transpose(B)
    lead = X.shape[:-2]
    X3 = xp.reshape(X, (-1, X.shape[-2], X.shape[-1]))
    Y = right_matmul(xp, left_matmul(xp, A, X3), xp.matrix_transpose(B))
    return xp.reshape(Y, (*lead, A.shape[0], B.shape[0]))


def _check_rearrange_shapes(M: Any, a_shape: Any, b_shape: Any, name: str, rearranged: bool) -> tuple:
    (p, q), (r, s) = check_shape_pair(a_shape, "a_shape"), check_shape_pair(b_shape, "b_shape")
    check_matrix(M, name)
    want = (p * q, r * s) if rearranged else (p * r, q * s)
    if tuple(M.shape) != want:
        what = "(p*q, r*s)" if rearranged else "(p*r, q*s)"
        raise ValueError(
            f"`{name}` must have shape {what} = {want} for `a_shape` {(p, q)} and `b_shape` {(r, s)}, "
            f"got {tuple(M.shape)}"
        )
    return (p, q), (r, s)


def rearrange(M: Any, a_shape: Any, b_shape: Any) -> Any:
    """Van Loan–Pitsianis rearrangement ``R(M)``, with ``R(A ⊗ B) = vec(A) vec(B)ᵀ``.

    ``R(M) = M.reshape(p, r, q, s).transpose(0, 2, 1, 3).reshape(p*q, r*s)``, so
    ``‖M − A⊗B‖_F = ‖R(M) − vec(A) vec(B)ᵀ‖_F`` and nearest Kronecker
    products are read off the singular triplets of ``R(M)``.

    Parameters
    ----------
    M : array of shape (p·r, q·s)
    a_shape : pair of int
        ``(p, q)``.
    b_shape : pair of int
        ``(r, s)``.

    Returns
    -------
    array of shape (p·q, r·s)

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import rearrange
    >>> A, B = np.arange(4.0).reshape(2, 2), np.ones((3, 3))
    >>> np.allclose(rearrange(np.kron(A, B), (2, 2), (3, 3)), np.outer(A.ravel(), B.ravel()))
    True
    """
    xp, _ = namespace_and_device(M)
    a, b = _check_rearrange_shapes(M, a_shape, b_shape, "M", rearranged=False)
    return rearrange_blocks(xp, M, a, b)


def unrearrange(R: Any, a_shape: Any, b_shape: Any) -> Any:
    """Inverse of :func:`rearrange`: ``unrearrange(rearrange(M)) = M``.

    Parameters
    ----------
    R : array of shape (p·q, r·s)
    a_shape : pair of int
        ``(p, q)``.
    b_shape : pair of int
        ``(r, s)``.

    Returns
    -------
    array of shape (p·r, q·s)

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import rearrange, unrearrange
    >>> M = np.arange(36.0).reshape(6, 6)
    >>> np.array_equal(unrearrange(rearrange(M, (2, 3), (3, 2)), (2, 3), (3, 2)), M)
    True
    """
    xp, _ = namespace_and_device(R)
    a, b = _check_rearrange_shapes(R, a_shape, b_shape, "R", rearranged=True)
    return unrearrange_blocks(xp, R, a, b)
