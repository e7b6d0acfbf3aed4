"""Small dense helpers shared by the decompositions (all in the caller's namespace)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import asarray_on, device_of

__all__ = ["sign_of", "column_signs", "svd_flip", "random_normal", "default_tol", "left_matmul", "right_matmul"]


def sign_of(xp: Any, x: Any) -> Any:
    """``-1`` where ``x < 0``, else ``+1``, in the dtype of ``x``."""
    return 1.0 - 2.0 * xp.astype(x < 0, x.dtype)


def column_signs(xp: Any, U: Any) -> Any:
    """Signs making the largest-magnitude entry of each column of ``U`` positive."""
    m, k = U.shape
    idx = xp.argmax(xp.abs(U), axis=0)
    flat = xp.reshape(xp.matrix_transpose(U), (-1,))
    pivots = xp.take(flat, idx + xp.arange(k, dtype=idx.dtype, device=device_of(U)) * m)
    return sign_of(xp, pivots)


def svd_flip(xp: Any, U: Any, Vh: Any) -> tuple[Any, Any]:
    """Deterministic signs for singular vectors: largest entry of each ``u_i`` positive.

    Parameters
    ----------
    xp : module
        Namespace.
    U : array of shape (m, k)
    Vh : array of shape (k, n)

    Returns
    -------
    U, Vh : arrays with the same shapes, columns/rows multiplied by ±1 together.
    """
    signs = column_signs(xp, U)
    return U * signs[None, :], Vh * signs[:, None]


def random_normal(xp: Any, shape: tuple[int, ...], *, dtype: Any, device: Any, seed: Any) -> Any:
    """Standard normal draws made with NumPy from ``seed``, cast and moved to ``device``.

    Every backend thus starts from the same numbers for the same seed.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return asarray_on(xp, rng.standard_normal(shape), dtype=dtype, device=device)


def default_tol(xp: Any, dtype: Any) -> float:
    """Default relative tolerance of iterative methods: 1e-10 in float64, 1e-5 in float32."""
    return 1e-5 if float(xp.finfo(dtype).eps) > 1e-10 else 1e-10


def left_matmul(xp: Any, M: Any, X: Any) -> Any:
    """``M @ X_i`` for every matrix of a stack, as one 2-D GEMM.

    NumPy's broadcast ``matmul`` of a 2-D matrix with a stack runs far below
    GEMM speed; folding the stack into the columns keeps it one BLAS call.

    Parameters
    ----------
    xp : module
        Namespace.
    M : array of shape (c, a)
    X : array of shape (k, a, b)

    Returns
    -------
    array of shape (k, c, b)
    """
    k, a, b = X.shape
    cols = xp.reshape(xp.permute_dims(X, (1, 0, 2)), (a, k * b))
    return xp.permute_dims(xp.reshape(M @ cols, (M.shape[0], k, b)), (1, 0, 2))


def right_matmul(xp: Any, X: Any, M: Any) -> Any:
    """``X_i @ M`` for every matrix of a stack, as one 2-D GEMM.

    Parameters
    ----------
    xp : module
        Namespace.
    X : array of shape (k, a, b)
    M : array of shape (b, c)

    Returns
    -------
    array of shape (k, a, c)
    """
    k, a, b = X.shape
    return xp.reshape(xp.reshape(X, (k * a, b)) @ M, (k, a, M.shape[1]))
