"""Dense Kronecker products and the Kronecker matrix-vector product."""

from __future__ import annotations

from typing import Any

from ._backend import namespace_and_device
from ._checks import check_matrix, check_same_dtype

__all__ = ["kron", "kron_matvec"]


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
    return xp.matmul(xp.matmul(A, X), xp.matrix_transpose(B))
