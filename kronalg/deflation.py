"""Deflation: an operator minus known singular triplets, never formed."""

from __future__ import annotations

from typing import Any

from ._backend import namespace_and_device
from ._checks import check_same_dtype
from .operators import KronOperator, as_operator

__all__ = ["DeflatedOperator", "deflate"]


class DeflatedOperator(KronOperator):
    """``op − U diag(S) Vh`` applied lazily.

    Parameters
    ----------
    op : KronOperator
        The operator being deflated.
    U : array of shape (m, k)
    S : array of shape (k,)
    Vh : array of shape (k, n)
    """

    def __init__(self, op: KronOperator, U: Any, S: Any, Vh: Any):
        self.op, self.U, self.S, self.Vh = op, U, S, Vh
        self.xp, self.device, self.dtype, self.shape = op.xp, op.device, op.dtype, op.shape

    def _reference_array(self) -> Any:
        return self.U

    def _matvec(self, x: Any) -> Any:
        return self.op._matvec(x) - self.U @ (self.S * (self.Vh @ x))

    def _rmatvec(self, y: Any) -> Any:
        xp = self.xp
        return self.op._rmatvec(y) - xp.matrix_transpose(self.Vh) @ (self.S * (xp.matrix_transpose(self.U) @ y))

    def _matmat(self, X: Any) -> Any:
        return self.op._matmat(X) - self.U @ (self.S[:, None] * (self.Vh @ X))

    def _rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        return self.op._rmatmat(Y) - xp.matrix_transpose(self.Vh) @ (
            self.S[:, None] * (xp.matrix_transpose(self.U) @ Y)
        )


def deflate(op: Any, U: Any, S: Any, Vh: Any) -> DeflatedOperator:
    """Operator for ``op − U diag(S) Vh``, never formed (Koroko §3.2.1).

    Products cost one product with ``op`` plus two thin GEMMs.

    Parameters
    ----------
    op : array of shape (m, n) or operator
        Matrix, kronalg operator, or operator-like object.
    U : array of shape (m, k)
        Left vectors to remove.
    S : array of shape (k,)
        Their weights (singular values).
    Vh : array of shape (k, n)
        Right vectors to remove.

    Returns
    -------
    DeflatedOperator

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import deflate
    >>> A = np.diag([3.0, 2.0, 1.0])
    >>> D = deflate(A, np.eye(3)[:, :1], np.array([3.0]), np.eye(3)[:1])
    >>> D @ np.ones(3)
    array([0., 2., 1.])
    """
    base = as_operator(op)
    namespace_and_device(U, S, Vh)
    m, n = base.shape
    if U.ndim != 2 or U.shape[0] != m:
        raise ValueError(f"`U` must have shape ({m}, k) for an operator of shape {base.shape}, got {tuple(U.shape)}")
    k = U.shape[1]
    if S.ndim != 1 or S.shape[0] != k:
        raise ValueError(f"`S` must have shape ({k},) to match `U`, got {tuple(S.shape)}")
    if Vh.ndim != 2 or Vh.shape != (k, n):
        raise ValueError(f"`Vh` must have shape ({k}, {n}), got {tuple(Vh.shape)}")
    check_same_dtype({"U": U, "S": S, "Vh": Vh})
    if U.dtype != base.dtype:
        raise TypeError(f"`U` has dtype {U.dtype} but `op` has dtype {base.dtype}")
    if base._reference_array() is not None:
        namespace_and_device(U, base._reference_array())
    return DeflatedOperator(base, U, S, Vh)
