"""Linear operators with Kronecker structure, never formed densely.

A small operator base in the manner of :mod:`scipy.sparse.linalg`: the public
``matvec``/``rmatvec``/``matmat``/``rmatmat``/``@`` validate shapes and call
the private ``_matvec``/``_rmatvec``/``_matmat``/``_rmatmat`` of a subclass.

* :class:`KronSum` — ``Σ_i A_i ⊗ B_i`` from its factors.
* :class:`SampleKronSum` — ``Σ_n w_n vec(X_n) vec(X_n)ᵀ``, the second-moment
  matrix of per-sample matrices (a layer's Fisher block), from the samples or
  from rank-1 factors ``X_n = g_n a_nᵀ``.
* ``.rearranged`` of both — the Van Loan–Pitsianis rearrangement ``R(·)``
  (see :mod:`kronalg._vec`) as an operator, whose products are batched GEMMs on
  the factors: ``R(Σ A_i⊗B_i) = Σ vec(A_i) vec(B_i)ᵀ`` and
  ``R(Σ w_n vec(X_n) vec(X_n)ᵀ) = Σ w_n X_n ⊗ X_n``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ._backend import namespace_and_device
from ._checks import check_finite, check_floating, check_keep, check_same_dtype
from ._linalg import left_matmul, right_matmul
from ._vec import rearrange_blocks, unvec, vec

__all__ = [
    "KronOperator",
    "KronSum",
    "SampleKronSum",
    "RearrangedOperator",
    "MatrixOperator",
    "CallableOperator",
    "as_operator",
]

# Above this many entries an n×n Gram matrix is built in row blocks.
_GRAM_BLOCK_ENTRIES = 1 << 22


class KronOperator(ABC):
    """Base of the library's linear operators.

    Subclasses set ``xp``, ``device``, ``shape`` and ``dtype`` and implement
    ``_matvec`` and ``_rmatvec``; ``_matmat``/``_rmatmat`` default to one
    product per column.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``.
    dtype : dtype
        Floating dtype of the operator.
    """

    xp: Any
    device: Any
    shape: tuple[int, int]
    dtype: Any

    # -- public, validating ------------------------------------------------
    def matvec(self, x: Any) -> Any:
        """Apply the operator to a vector ``x`` of shape ``(n,)``; returns shape ``(m,)``."""
        self._check_operand(x, 1, self.shape[1], "x")
        return self._matvec(x)

    def rmatvec(self, y: Any) -> Any:
        """Apply the transpose to a vector ``y`` of shape ``(m,)``; returns shape ``(n,)``."""
        self._check_operand(y, 1, self.shape[0], "y")
        return self._rmatvec(y)

    def matmat(self, X: Any) -> Any:
        """Apply the operator to the columns of ``X`` of shape ``(n, k)``; returns ``(m, k)``."""
        self._check_operand(X, 2, self.shape[1], "X")
        return self._matmat(X)

    def rmatmat(self, Y: Any) -> Any:
        """Apply the transpose to the columns of ``Y`` of shape ``(m, k)``; returns ``(n, k)``."""
        self._check_operand(Y, 2, self.shape[0], "Y")
        return self._rmatmat(Y)

    def __matmul__(self, x: Any) -> Any:
        if getattr(x, "ndim", None) == 1:
            return self.matvec(x)
        if getattr(x, "ndim", None) == 2:
            return self.matmat(x)
        raise ValueError(f"`@` expects a vector of shape ({self.shape[1]},) or a matrix ({self.shape[1]}, k)")

    def to_dense(self) -> Any:
        """Form the operator as a dense ``(m, n)`` array (for tests and small sizes)."""
        eye = self.xp.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self._matmat(eye)

    # -- what subclasses provide ----------------------------------------------
    @abstractmethod
    def _matvec(self, x: Any) -> Any:
        """``A x`` for a validated vector ``x``."""

    @abstractmethod
    def _rmatvec(self, y: Any) -> Any:
        """``Aᵀ y`` for a validated vector ``y``."""

    def _matmat(self, X: Any) -> Any:
        xp = self.xp
        return xp.stack([self._matvec(X[:, j]) for j in range(X.shape[1])], axis=1)

    def _rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        return xp.stack([self._rmatvec(Y[:, j]) for j in range(Y.shape[1])], axis=1)

    def _check_operand(self, x: Any, ndim: int, n: int, name: str) -> None:
        namespace_and_device(x, self._reference_array())
        if x.ndim != ndim or x.shape[0] != n:
            want = f"({n},)" if ndim == 1 else f"({n}, k)"
            raise ValueError(f"`{name}` must have shape {want} for an operator of shape {self.shape}, got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"`{name}` has dtype {x.dtype} but the operator has dtype {self.dtype}")

    @abstractmethod
    def _reference_array(self) -> Any:
        """One of the operator's arrays (its namespace and device), or ``None`` for host operators."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of shape {self.shape} and dtype {self.dtype}>"


class RearrangedOperator(KronOperator):
    """The rearrangement ``R(M)`` of a Kronecker-structured ``M``, as an operator.

    ``R(M)`` has shape ``(p·q, r·s)`` where ``M ≈ A⊗B`` with ``A: p×q``,
    ``B: r×s``; its top singular triplets give the best Kronecker
    approximations of ``M`` (Van Loan & Pitsianis).  Built by
    :attr:`KronSum.rearranged` and :attr:`SampleKronSum.rearranged`.

    Parameters
    ----------
    parent : KronSum or SampleKronSum
        The operator ``M`` being rearranged.
    """

    def __init__(self, parent: KronSum | SampleKronSum):
        self.parent = parent
        self.xp, self.device, self.dtype = parent.xp, parent.device, parent.dtype
        (p, q), (r, s) = parent.a_shape, parent.b_shape
        self.shape = (p * q, r * s)
        self.a_shape, self.b_shape = parent.a_shape, parent.b_shape

    def _reference_array(self) -> Any:
        return self.parent._reference_array()

    def _matvec(self, x: Any) -> Any:
        return self.parent._rearranged_matvec(x)

    def _rmatvec(self, y: Any) -> Any:
        return self.parent._rearranged_rmatvec(y)

    def _matmat(self, X: Any) -> Any:
        return self.parent._rearranged_matmat(X)

    def _rmatmat(self, Y: Any) -> Any:
        return self.parent._rearranged_rmatmat(Y)

    def to_dense(self) -> Any:
        """Form ``R(M)`` densely: shape ``(p·q, r·s)`` (as many entries as ``M``)."""
        return self.parent._rearranged_dense()


# ---------------------------------------------------------------------------
# KronSum
# ---------------------------------------------------------------------------
def _split_terms(terms: Any) -> tuple[list[Any], list[Any]] | tuple[Any, Any]:
    """Accept a list of (A_i, B_i) pairs or a pair of stacked arrays."""
    if isinstance(terms, (tuple, list)) and len(terms) == 2 and all(getattr(t, "ndim", None) == 3 for t in terms):
        return terms[0], terms[1]
    if not isinstance(terms, Sequence) or isinstance(terms, (str, bytes)) or len(terms) == 0:
        raise TypeError(
            "`terms` must be a non-empty list of (A_i, B_i) pairs or a pair of stacked arrays "
            f"of shapes (k, p, q) and (k, r, s), got {type(terms).__name__}"
        )
    As, Bs = [], []
    for i, t in enumerate(terms):
        if not isinstance(t, (tuple, list)) or len(t) != 2:
            raise TypeError(f"`terms[{i}]` must be an (A, B) pair of matrices, got {type(t).__name__}")
        As.append(t[0])
        Bs.append(t[1])
    return As, Bs


class KronSum(KronOperator):
    """Implicit sum of Kronecker products ``M = Σ_i A_i ⊗ B_i``.

    Products cost two GEMMs per term; the ``(p·r, q·s)`` matrix is formed only
    by :meth:`to_dense`.

    Parameters
    ----------
    terms : list of (A_i, B_i) pairs of shapes (p, q), (r, s), or a pair of arrays (k, p, q), (k, r, s)
        The factors, as pairs or as two stacked arrays.

    Attributes
    ----------
    shape : tuple of int
        ``(p·r, q·s)``.
    a_shape, b_shape : tuple of int
        ``(p, q)`` and ``(r, s)``.
    factors : tuple of (A_i, B_i) pairs
        The terms, in order (by weight, for results of :func:`nearest_kronecker`).
    stacked : tuple of arrays
        ``(As, Bs)`` of shapes ``(k, p, q)`` and ``(k, r, s)``.
    info : object or None
        Convergence information when produced by an approximation routine.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import KronSum
    >>> A, B = np.eye(2), np.arange(4.0).reshape(2, 2)
    >>> M = KronSum([(A, B), (2 * A, B.T)])
    >>> np.allclose(M.to_dense(), np.kron(A, B) + np.kron(2 * A, B.T))
    True
    >>> x = np.ones(4)
    >>> np.allclose(M @ x, M.to_dense() @ x)
    True
    """

    def __init__(self, terms: Any, *, info: Any = None):
        As, Bs = _split_terms(terms)
        if isinstance(As, list):
            xp, device = namespace_and_device(*As, *Bs)
            for i, (A, B) in enumerate(zip(As, Bs)):
                for name, M in ((f"terms[{i}][0]", A), (f"terms[{i}][1]", B)):
                    if M.ndim != 2:
                        raise ValueError(f"`{name}` must be a matrix, got shape {tuple(M.shape)}")
                if A.shape != As[0].shape or B.shape != Bs[0].shape:
                    raise ValueError(
                        f"every term must have the shapes of the first, {tuple(As[0].shape)} ⊗ {tuple(Bs[0].shape)}; "
                        f"`terms[{i}]` is {tuple(A.shape)} ⊗ {tuple(B.shape)}"
                    )
            check_same_dtype({f"terms[{i}][{j}]": M for i, pair in enumerate(zip(As, Bs)) for j, M in enumerate(pair)})
            As, Bs = xp.stack(As), xp.stack(Bs)
        else:
            xp, device = namespace_and_device(As, Bs)
            if As.shape[0] != Bs.shape[0]:
                raise ValueError(f"stacked factors need the same number of terms, got {As.shape[0]} and {Bs.shape[0]}")
            check_same_dtype({"terms[0]": As, "terms[1]": Bs})
        check_floating(xp, As, "terms")
        self.xp, self.device, self.dtype = xp, device, As.dtype
        self._As, self._Bs = As, Bs
        _, p, q = As.shape
        _, r, s = Bs.shape
        self.a_shape, self.b_shape = (p, q), (r, s)
        self.shape = (p * r, q * s)
        self.info = info

    # -- structure -------------------------------------------------------------
    @property
    def factors(self) -> tuple[tuple[Any, Any], ...]:
        """The terms as ``((A_0, B_0), (A_1, B_1), ...)``."""
        return tuple((self._As[i, ...], self._Bs[i, ...]) for i in range(self._As.shape[0]))

    @property
    def stacked(self) -> tuple[Any, Any]:
        """The factors as two stacked arrays ``(As, Bs)``."""
        return self._As, self._Bs

    def __len__(self) -> int:
        return self._As.shape[0]

    def _reference_array(self) -> Any:
        return self._As

    @property
    def T(self) -> KronSum:
        """Transpose ``Σ A_iᵀ ⊗ B_iᵀ``."""
        xp = self.xp
        return KronSum((xp.matrix_transpose(self._As), xp.matrix_transpose(self._Bs)))

    # -- algebra -----------------------------------------------------------------
    def __add__(self, other: Any) -> KronSum:
        if not isinstance(other, KronSum):
            return NotImplemented
        if other.a_shape != self.a_shape or other.b_shape != self.b_shape:
            raise ValueError(
                f"cannot add KronSums of factor shapes {self.a_shape}⊗{self.b_shape} and "
                f"{other.a_shape}⊗{other.b_shape}"
            )
        xp = self.xp
        namespace_and_device(self._As, other._As)
        return KronSum((xp.concat([self._As, other._As]), xp.concat([self._Bs, other._Bs])))

    def __mul__(self, alpha: float) -> KronSum:
        if not isinstance(alpha, (int, float)):
            return NotImplemented
        return KronSum((alpha * self._As, self._Bs))

    __rmul__ = __mul__

    def __neg__(self) -> KronSum:
        return self * -1.0

    def __sub__(self, other: Any) -> KronSum:
        if not isinstance(other, KronSum):
            return NotImplemented
        return self + (-other)

    # -- products ---------------------------------------------------------------
    def _apply(self, X: Any, As: Any, Bs: Any) -> Any:
        """``Σ_i A_i X B_iᵀ`` for ``X`` of shape ``(m, q, s)`` -> ``(m, p, r)``."""
        xp = self.xp
        out = None
        for i in range(As.shape[0]):
            term = right_matmul(xp, left_matmul(xp, As[i, ...], X), xp.matrix_transpose(Bs[i, ...]))
            out = term if out is None else out + term
        return out

    def _matvec(self, x: Any) -> Any:
        X = unvec(self.xp, x, (self.a_shape[1], self.b_shape[1]))
        return vec(self.xp, self._apply(X[None, ...], self._As, self._Bs))[0, ...]

    def _rmatvec(self, y: Any) -> Any:
        xp = self.xp
        Y = unvec(xp, y, (self.a_shape[0], self.b_shape[0]))
        out = self._apply(Y[None, ...], xp.matrix_transpose(self._As), xp.matrix_transpose(self._Bs))
        return vec(xp, out)[0, ...]

    def _matmat(self, X: Any) -> Any:
        xp = self.xp
        Xm = unvec(xp, xp.matrix_transpose(X), (self.a_shape[1], self.b_shape[1]))
        return xp.matrix_transpose(vec(xp, self._apply(Xm, self._As, self._Bs)))

    def _rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        Ym = unvec(xp, xp.matrix_transpose(Y), (self.a_shape[0], self.b_shape[0]))
        out = self._apply(Ym, xp.matrix_transpose(self._As), xp.matrix_transpose(self._Bs))
        return xp.matrix_transpose(vec(xp, out))

    def to_dense(self) -> Any:
        """Form ``Σ A_i ⊗ B_i`` as a dense ``(p·r, q·s)`` array."""
        xp = self.xp
        (p, q), (r, s) = self.a_shape, self.b_shape
        out = None
        for i in range(len(self)):
            term = self._As[i, :, None, :, None] * self._Bs[i, None, :, None, :]
            out = term if out is None else out + term
        return xp.reshape(out, (p * r, q * s))

    # -- scalar summaries -----------------------------------------------------------
    def _require_square(self, what: str) -> None:
        (p, q), (r, s) = self.a_shape, self.b_shape
        if p != q or r != s:
            raise ValueError(f"{what} needs square factors, got A: {self.a_shape}, B: {self.b_shape}")

    def trace(self) -> Any:
        """``tr(M) = Σ_i tr(A_i) tr(B_i)`` as a 0-d array."""
        self._require_square("trace")
        xp = self.xp
        return xp.sum(xp.linalg.trace(self._As) * xp.linalg.trace(self._Bs))

    def fro_norm(self) -> Any:
        """``‖M‖_F = sqrt(Σ_ij ⟨A_i, A_j⟩⟨B_i, B_j⟩)`` as a 0-d array."""
        xp = self.xp
        k = len(self)
        Af, Bf = xp.reshape(self._As, (k, -1)), xp.reshape(self._Bs, (k, -1))
        gram = (Af @ xp.matrix_transpose(Af)) * (Bf @ xp.matrix_transpose(Bf))
        return xp.sqrt(xp.clip(xp.sum(gram), 0.0, None))

    def partial_trace(self, keep: str = "a") -> Any:
        """Partial trace: ``keep="a"`` gives ``Σ tr(B_i) A_i``, ``keep="b"`` gives ``Σ tr(A_i) B_i``.

        Parameters
        ----------
        keep : {"a", "b"}
            Which factor's space to keep.

        Returns
        -------
        array of shape (p, q) or (r, s)
        """
        check_keep(keep)
        xp = self.xp
        if keep == "a":
            if self.b_shape[0] != self.b_shape[1]:
                raise ValueError(f'keep="a" traces the B factors, which must be square; got {self.b_shape}')
            return xp.sum(xp.linalg.trace(self._Bs)[:, None, None] * self._As, axis=0)
        if self.a_shape[0] != self.a_shape[1]:
            raise ValueError(f'keep="b" traces the A factors, which must be square; got {self.a_shape}')
        return xp.sum(xp.linalg.trace(self._As)[:, None, None] * self._Bs, axis=0)

    # -- rearrangement -------------------------------------------------------
    @property
    def rearranged(self) -> RearrangedOperator:
        """``R(M) = Σ vec(A_i) vec(B_i)ᵀ`` as an operator of shape ``(p·q, r·s)``."""
        return RearrangedOperator(self)

    def _flat(self) -> tuple[Any, Any]:
        xp, k = self.xp, len(self)
        return xp.reshape(self._As, (k, -1)), xp.reshape(self._Bs, (k, -1))

    def _rearranged_matvec(self, x: Any) -> Any:
        Af, Bf = self._flat()
        return self.xp.matrix_transpose(Af) @ (Bf @ x)

    def _rearranged_rmatvec(self, y: Any) -> Any:
        Af, Bf = self._flat()
        return self.xp.matrix_transpose(Bf) @ (Af @ y)

    def _rearranged_matmat(self, X: Any) -> Any:
        return self._rearranged_matvec(X)

    def _rearranged_rmatmat(self, Y: Any) -> Any:
        return self._rearranged_rmatvec(Y)

    def _rearranged_dense(self) -> Any:
        Af, Bf = self._flat()
        return self.xp.matrix_transpose(Af) @ Bf

    def is_symmetric_structure(self) -> bool:
        """Whether every factor is square and symmetric (so ``M`` is symmetric)."""
        xp = self.xp
        if self.a_shape[0] != self.a_shape[1] or self.b_shape[0] != self.b_shape[1]:
            return False
        return bool(
            xp.all(self._As == xp.matrix_transpose(self._As)) and xp.all(self._Bs == xp.matrix_transpose(self._Bs))
        )

    def __repr__(self) -> str:
        return f"KronSum({len(self)} terms, A: {self.a_shape}, B: {self.b_shape}, dtype={self.dtype})"


# ---------------------------------------------------------------------------
# SampleKronSum
# ---------------------------------------------------------------------------
class SampleKronSum(KronOperator):
    """Second-moment matrix of per-sample matrices, ``F = Σ_n w_n vec(X_n) vec(X_n)ᵀ``.

    With ``X_n`` the per-sample gradient of a layer's weight and ``w_n = 1/n``
    this is the layer's (empirical or sampled) Fisher block.  ``F`` has shape
    ``(p·r, p·r)`` and is never formed; with ``A: p×p`` and ``B: r×r`` its
    rearrangement is ``R(F) = Σ_n w_n X_n ⊗ X_n``, so
    ``R(F) vec(V) = vec(Σ_n w_n X_n V X_nᵀ)`` and
    ``R(F)ᵀ vec(U) = vec(Σ_n w_n X_nᵀ U X_n)``, both batched GEMMs.

    Parameters
    ----------
    X : array of shape (n, p, r)
        The per-sample matrices.
    weights : None, float, or array of shape (n,)
        ``w_n``; ``None`` means 1 for every sample.

    Attributes
    ----------
    shape : tuple of int
        ``(p·r, p·r)``.
    a_shape, b_shape : tuple of int
        ``(p, p)`` and ``(r, r)``.
    n_samples : int
        ``n``.
    weights : array of shape (n,)
    is_psd : bool
        Whether all weights are non-negative (then ``F`` is PSD).

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import SampleKronSum
    >>> rng = np.random.default_rng(0)
    >>> G, A = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    >>> F = SampleKronSum.from_factors(G, A, weights=1 / 5)
    >>> X = G[:, :, None] * A[:, None, :]
    >>> dense = sum(np.outer(x.ravel(), x.ravel()) for x in X) / 5
    >>> np.allclose(F.to_dense(), dense)
    True
    """

    def __init__(self, X: Any, weights: Any = None):
        xp, device = namespace_and_device(X, weights)
        if X.ndim != 3:
            raise ValueError(f"`X` must have shape (n, p, r), got {tuple(X.shape)}")
        check_floating(xp, X, "X")
        n, p, r = X.shape
        self._init_common(xp, device, X.dtype, n, p, r, weights)
        self._X: Any = X
        self._G: Any = None
        self._A: Any = None
        self._location_factors: tuple[Any, Any] | None = None

    @classmethod
    def from_factors(cls, G: Any, A: Any, weights: Any = None) -> SampleKronSum:
        """Samples given by factors, never forming ``F``.

        Rank-1 samples ``X_n = g_n a_nᵀ`` (a Linear layer) for ``G: (n, p)``
        and ``A: (n, r)``; summed samples ``X_n = G_nᵀ A_n = Σ_t g_nt a_ntᵀ``
        (a convolution over ``T`` locations) for ``G: (n, T, p)`` and
        ``A: (n, T, r)``, in which case ``X`` of shape ``(n, p, r)`` is formed
        by one batched GEMM.

        Parameters
        ----------
        G : array of shape (n, p) or (n, T, p)
            Output-side factors (gradients with respect to pre-activations).
        A : array of shape (n, r) or (n, T, r)
            Input-side factors (layer inputs).
        weights : None, float, or array of shape (n,)
            ``w_n``; ``None`` means 1.

        Returns
        -------
        SampleKronSum
        """
        xp, device = namespace_and_device(G, A, weights)
        check_floating(xp, G, "G")
        check_same_dtype({"G": G, "A": A})
        if G.ndim != A.ndim or G.ndim not in (2, 3):
            raise ValueError(
                f"`G` and `A` must both be (n, p), (n, r) or both (n, T, p), (n, T, r); "
                f"got shapes {tuple(G.shape)} and {tuple(A.shape)}"
            )
        if G.shape[:-1] != A.shape[:-1]:
            raise ValueError(
                f"`G` and `A` must agree on the leading dimensions (n, [T]), got {tuple(G.shape)} and {tuple(A.shape)}"
            )
        if G.ndim == 3:
            self = cls(xp.matmul(xp.matrix_transpose(G), A), weights)
            self._location_factors = (G, A)
            return self
        self = cls.__new__(cls)
        n, p = G.shape
        self._init_common(xp, device, G.dtype, n, p, A.shape[1], weights)
        self._X, self._G, self._A = None, G, A
        self._location_factors = None
        return self

    def _init_common(self, xp: Any, device: Any, dtype: Any, n: int, p: int, r: int, weights: Any) -> None:
        self.xp, self.device, self.dtype = xp, device, dtype
        self.n_samples = n
        self.a_shape, self.b_shape = (p, p), (r, r)
        self.shape = (p * r, p * r)
        if weights is None:
            w = xp.ones((n,), dtype=dtype, device=device)
        elif isinstance(weights, (int, float)):
            w = xp.full((n,), float(weights), dtype=dtype, device=device)
        else:
            if weights.ndim != 1 or weights.shape[0] != n:
                raise ValueError(f"`weights` must be a float or an array of shape ({n},), got {tuple(weights.shape)}")
            check_finite(xp, weights, "weights")
            w = xp.astype(weights, dtype)
        self.weights = w
        self.is_psd = bool(xp.all(w >= 0))

    @property
    def kind(self) -> str:
        """``"rank1"`` for factor samples ``g_n a_nᵀ``, ``"dense"`` for stored ``X_n``."""
        return "rank1" if self._X is None else "dense"

    def _reference_array(self) -> Any:
        return self.weights

    @property
    def T(self) -> SampleKronSum:
        """``F`` is symmetric: returns itself."""
        return self

    def samples(self) -> Any:
        """The per-sample matrices ``X`` of shape ``(n, p, r)`` (formed for rank-1 samples)."""
        if self._X is not None:
            return self._X
        return self._G[:, :, None] * self._A[:, None, :]

    @property
    def n_locations(self) -> int:
        """``T`` of :meth:`location_factors`: 1 (rank-1), the locations (conv), or ``min(p, r)`` (dense)."""
        if self._X is None:
            return 1
        if self._location_factors is not None:
            return self._location_factors[0].shape[1]
        return min(self.a_shape[0], self.b_shape[0])

    def location_factors(self) -> tuple[Any, Any]:
        """Factors ``G: (n, T, p)``, ``A: (n, T, r)`` with ``X_n = G_nᵀ A_n``.

        ``T = 1`` for rank-1 samples, the number of locations for convolution
        samples, and ``min(p, r)`` (from a batched thin SVD) for samples given
        as dense matrices.

        Returns
        -------
        G : array of shape (n, T, p)
        A : array of shape (n, T, r)
        """
        xp = self.xp
        if self._X is None:
            return self._G[:, None, :], self._A[:, None, :]
        if self._location_factors is not None:
            return self._location_factors
        U, S, Vh = xp.linalg.svd(self._X, full_matrices=False)  # X_n = U_n diag(S_n) Vh_n
        return xp.matrix_transpose(U * S[:, None, :]), Vh

    def compact_factors(self) -> tuple[Any, Any]:
        """Like :meth:`location_factors` with the fewest terms per sample: ``T ≤ min(p, r)``.

        When a convolution has more locations than ``rank X_n ≤ min(p, r)``, a
        batched thin SVD of the ``X_n`` gives an exact factorization with fewer
        terms (what the Gram route wants: it works in ``n·T²`` coefficients).

        Returns
        -------
        G : array of shape (n, T', p)
        A : array of shape (n, T', r)
        """
        if self._X is not None and self._location_factors is not None and self.n_locations > min(*self._X.shape[1:]):
            xp = self.xp
            U, S, Vh = xp.linalg.svd(self._X, full_matrices=False)
            return xp.matrix_transpose(U * S[:, None, :]), Vh
        return self.location_factors()

    # -- products with F ---------------------------------------------------------
    def _coefficients(self, V: Any) -> Any:
        """``c[..., n] = w_n ⟨X_n, V⟩`` for ``V`` of shape ``(..., p, r)``."""
        xp = self.xp
        if self._X is None:  # c[k, n] = g_nᵀ V_k a_n
            V3 = V if V.ndim == 3 else V[None, ...]
            c = xp.sum(left_matmul(xp, self._G, V3) * self._A, axis=-1)
            c = c if V.ndim == 3 else c[0, ...]
        else:
            n, p, r = self._X.shape
            c = vec(xp, V) @ xp.matrix_transpose(xp.reshape(self._X, (n, p * r)))
        return c * self.weights

    def _combine(self, c: Any) -> Any:
        """``Σ_n c[..., n] X_n`` as ``(..., p, r)``."""
        xp = self.xp
        if self._X is None:  # Σ_n c_n g_n a_nᵀ = Gᵀ diag(c) A
            if c.ndim == 1:
                return xp.matrix_transpose(self._G) @ (c[:, None] * self._A)
            return left_matmul(xp, xp.matrix_transpose(self._G), c[:, :, None] * self._A)
        n, p, r = self._X.shape
        return unvec(xp, c @ xp.reshape(self._X, (n, p * r)), (p, r))

    def _matvec(self, x: Any) -> Any:
        p, r = self.a_shape[0], self.b_shape[0]
        return vec(self.xp, self._combine(self._coefficients(unvec(self.xp, x, (p, r)))))

    _rmatvec = _matvec

    def _matmat(self, X: Any) -> Any:
        xp = self.xp
        p, r = self.a_shape[0], self.b_shape[0]
        V = unvec(xp, xp.matrix_transpose(X), (p, r))  # (k, p, r)
        return xp.matrix_transpose(vec(xp, self._combine(self._coefficients(V))))

    _rmatmat = _matmat

    def to_dense(self) -> Any:
        """Form ``F`` as a dense ``(p·r, p·r)`` array (for tests and small sizes)."""
        xp = self.xp
        Xf = vec(xp, self.samples())
        return xp.matrix_transpose(Xf) @ (self.weights[:, None] * Xf)

    # -- scalar summaries --------------------------------------------------------
    def _squared_norms(self) -> Any:
        """``‖X_n‖_F²`` for every sample."""
        xp = self.xp
        if self._X is None:
            return xp.sum(self._G**2, axis=1) * xp.sum(self._A**2, axis=1)
        return xp.sum(vec(xp, self._X) ** 2, axis=1)

    def trace(self) -> Any:
        """``tr(F) = Σ_n w_n ‖X_n‖_F²`` as a 0-d array."""
        return self.xp.sum(self.weights * self._squared_norms())

    def gram(self, rows: slice | None = None) -> Any:
        """Gram matrix ``⟨X_n, X_m⟩`` (rows restricted to ``rows``): shape ``(n_rows, n)``.

        Parameters
        ----------
        rows : slice or None
            The samples for the rows; all when ``None``.

        Returns
        -------
        array of shape (n_rows, n)
        """
        xp = self.xp
        rows = slice(None) if rows is None else rows
        if self._X is None:
            G, A = self._G, self._A
            return (G[rows, :] @ xp.matrix_transpose(G)) * (A[rows, :] @ xp.matrix_transpose(A))
        Xf = vec(xp, self._X)
        return Xf[rows, :] @ xp.matrix_transpose(Xf)

    def fro_norm(self) -> Any:
        """``‖F‖_F = sqrt(Σ_nm w_n w_m ⟨X_n, X_m⟩²)`` from Gram blocks, as a 0-d array."""
        xp = self.xp
        n = self.n_samples
        step = max(1, _GRAM_BLOCK_ENTRIES // max(n, 1))
        total = xp.zeros((), dtype=self.dtype, device=self.device)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            block = self.gram(rows)
            total = total + xp.sum((self.weights[rows, None] * block**2) * self.weights[None, :])
        return xp.sqrt(xp.clip(total, 0.0, None))

    def partial_trace(self, keep: str = "a") -> Any:
        """Partial trace: ``keep="a"`` gives ``Σ w_n X_n X_nᵀ`` (p×p), ``keep="b"`` gives ``Σ w_n X_nᵀ X_n`` (r×r).

        Parameters
        ----------
        keep : {"a", "b"}
            Which factor's space to keep.

        Returns
        -------
        array of shape (p, p) or (r, r)
        """
        check_keep(keep)
        xp = self.xp
        w = self.weights
        if self._X is None:
            G, A = self._G, self._A
            if keep == "a":
                c = w * xp.sum(A**2, axis=1)
                return xp.matrix_transpose(G) @ (c[:, None] * G)
            c = w * xp.sum(G**2, axis=1)
            return xp.matrix_transpose(A) @ (c[:, None] * A)
        n, p, r = self._X.shape
        WX = w[:, None, None] * self._X
        if keep == "a":
            Xh = xp.reshape(xp.permute_dims(self._X, (1, 0, 2)), (p, n * r))
            WXh = xp.reshape(xp.permute_dims(WX, (1, 0, 2)), (p, n * r))
            return WXh @ xp.matrix_transpose(Xh)
        return xp.matrix_transpose(xp.reshape(WX, (n * p, r))) @ xp.reshape(self._X, (n * p, r))

    # -- rearrangement -------------------------------------------------------------
    @property
    def rearranged(self) -> RearrangedOperator:
        """``R(F) = Σ_n w_n X_n ⊗ X_n`` as an operator of shape ``(p², r²)``."""
        return RearrangedOperator(self)

    def _sandwich(self, V: Any, left: bool) -> Any:
        """``Σ_n w_n X_n V X_nᵀ`` (``left=True``, V: (k, r, r)) or ``Σ_n w_n X_nᵀ U X_n`` (U: (k, p, p))."""
        xp = self.xp
        w = self.weights
        if self._X is None:
            inner, outer = (self._A, self._G) if left else (self._G, self._A)
            # c[k, n] = w_n inner_nᵀ V_k inner_n ;  result_k = outerᵀ diag(c_k) outer
            c = w * xp.sum(left_matmul(xp, inner, V) * inner, axis=-1)
            return left_matmul(xp, xp.matrix_transpose(outer), c[:, :, None] * outer)
        n, p, r = self._X.shape
        X = self._X
        out = []
        for j in range(V.shape[0]):  # one pair of large GEMMs per operand column
            if left:
                Z = right_matmul(xp, X, V[j, ...])  # (n, p, r) = X_n V
                Zh = xp.reshape(xp.permute_dims(w[:, None, None] * Z, (1, 0, 2)), (p, n * r))
                Xh = xp.reshape(xp.permute_dims(X, (1, 0, 2)), (p, n * r))
                out.append(Zh @ xp.matrix_transpose(Xh))
            else:
                Z = left_matmul(xp, V[j, ...], X)  # (n, p, r) = U X_n
                out.append(
                    xp.matrix_transpose(xp.reshape(X, (n * p, r))) @ xp.reshape(w[:, None, None] * Z, (n * p, r))
                )
        return xp.stack(out)

    def _rearranged_matmat(self, X: Any) -> Any:
        xp = self.xp
        r = self.b_shape[0]
        V = unvec(xp, xp.matrix_transpose(X), (r, r))
        return xp.matrix_transpose(vec(xp, self._sandwich(V, left=True)))

    def _rearranged_rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        p = self.a_shape[0]
        U = unvec(xp, xp.matrix_transpose(Y), (p, p))
        return xp.matrix_transpose(vec(xp, self._sandwich(U, left=False)))

    def _rearranged_matvec(self, x: Any) -> Any:
        return self._rearranged_matmat(x[:, None])[:, 0]

    def _rearranged_rmatvec(self, y: Any) -> Any:
        return self._rearranged_rmatmat(y[:, None])[:, 0]

    def _rearranged_dense(self) -> Any:
        return rearrange_blocks(self.xp, self.to_dense(), self.a_shape, self.b_shape)

    def __repr__(self) -> str:
        return (
            f"SampleKronSum({self.n_samples} {self.kind} samples, A: {self.a_shape}, B: {self.b_shape}, "
            f"dtype={self.dtype})"
        )


# ---------------------------------------------------------------------------
# Wrapping anything operator-like
# ---------------------------------------------------------------------------
class MatrixOperator(KronOperator):
    """A dense matrix seen as an operator.

    Parameters
    ----------
    M : array of shape (m, n)
        Real floating matrix of any backend.
    """

    def __init__(self, M: Any):
        xp, device = namespace_and_device(M)
        if M.ndim != 2:
            raise ValueError(f"`op` must be a 2-D matrix or an operator, got an array of shape {tuple(M.shape)}")
        check_floating(xp, M, "op")
        self.xp, self.device, self.dtype, self.shape = xp, device, M.dtype, (M.shape[0], M.shape[1])
        self.matrix = M

    def _reference_array(self) -> Any:
        return self.matrix

    def _matvec(self, x: Any) -> Any:
        return self.matrix @ x

    def _rmatvec(self, y: Any) -> Any:
        return self.xp.matrix_transpose(self.matrix) @ y

    _matmat = _matvec
    _rmatmat = _rmatvec

    def to_dense(self) -> Any:
        """Return the matrix itself."""
        return self.matrix


class CallableOperator(KronOperator):
    """A duck-typed operator (``shape``, ``dtype``, ``matvec``, ``rmatvec``) in a known namespace.

    ``scipy.sparse.linalg.LinearOperator`` and any object with those attributes
    work; objects without ``xp``/``device`` attributes are taken to be NumPy.

    Parameters
    ----------
    op : object
        Has ``shape``, ``dtype``, ``matvec`` and ``rmatvec`` (``matmat``/``rmatmat`` optional).
    """

    def __init__(self, op: Any):
        for attr in ("shape", "dtype", "matvec", "rmatvec"):
            if not hasattr(op, attr):
                raise TypeError(
                    f"`op` must be a matrix or an operator with shape, dtype, matvec and rmatvec; "
                    f"{type(op).__name__} has no `{attr}`"
                )
        self.op = op
        xp = getattr(op, "xp", None)
        if xp is None:
            import array_api_compat.numpy as xp  # scipy LinearOperator and other host operators

            self.device = "cpu"
        else:
            self.device = getattr(op, "device", None)
        self.xp = xp
        self.shape = (int(op.shape[0]), int(op.shape[1]))
        self.dtype = self._native_dtype(op.dtype)
        self._has_matmat = hasattr(op, "matmat") and hasattr(op, "rmatmat")

    def _native_dtype(self, dtype: Any) -> Any:
        import numpy as np

        if self.xp.__name__.endswith("numpy"):
            return np.dtype(dtype)
        return dtype

    def _reference_array(self) -> Any:
        return None

    def _check_operand(self, x: Any, ndim: int, n: int, name: str) -> None:
        if x.ndim != ndim or x.shape[0] != n:
            want = f"({n},)" if ndim == 1 else f"({n}, k)"
            raise ValueError(f"`{name}` must have shape {want} for an operator of shape {self.shape}, got {x.shape}")

    def _matvec(self, x: Any) -> Any:
        return self.op.matvec(x)

    def _rmatvec(self, y: Any) -> Any:
        return self.op.rmatvec(y)

    def _matmat(self, X: Any) -> Any:
        return self.op.matmat(X) if self._has_matmat else super()._matmat(X)

    def _rmatmat(self, Y: Any) -> Any:
        return self.op.rmatmat(Y) if self._has_matmat else super()._rmatmat(Y)


def as_operator(op: Any) -> KronOperator:
    """Wrap a matrix, a kronalg operator, or a duck-typed operator as a :class:`KronOperator`.

    Parameters
    ----------
    op : array of shape (m, n), KronOperator, or operator-like
        Operator-like objects have ``shape``, ``dtype``, ``matvec``, ``rmatvec``
        (``scipy.sparse.linalg.LinearOperator`` qualifies, on NumPy).

    Returns
    -------
    KronOperator
    """
    if isinstance(op, KronOperator):
        return op
    import array_api_compat

    if array_api_compat.is_array_api_obj(op):
        return MatrixOperator(op)
    return CallableOperator(op)
