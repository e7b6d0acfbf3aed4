"""Kronecker approximation of a sum that arrives batch by batch (K-FOC §3.2).

The target is the weighted mean of batch matrices, ``F = Σ_p ω_p F_p / Σ_p ω_p``
(each ``F_p`` a :class:`~kronalg.KronSum` or :class:`~kronalg.SampleKronSum`,
e.g. a batch's Fisher block with ``weights = 1/n_p``).  Each batch is first
reduced to its best Kronecker product ``L_p ⊗ R_p``; two strategies combine them:

* ``"running"`` (K-FOC_running): keep ``L̂ ⊗ R̂`` and replace it after batch ``p`` by
  the best Kronecker product of ``(1 − c) L̂⊗R̂ + c L_p⊗R_p`` with ``c = ω_p / Σ_{q≤p} ω_q``.
  That is a two-term sum, solved exactly by the Gram route at negligible cost.
* ``"approx"`` (K-FOC_approx): ``F ≈ mean_p(L_p) ⊗ mean_p(R_p)``, assuming independence
  between batches.  Factors are normalized to ``‖L_p‖_F = 1`` (K-FOC §3.1) so the means
  are taken on a common scale, and signs follow the symmetric-PSD convention.
"""

from __future__ import annotations

from typing import Any

from .nearest import nearest_kronecker
from .operators import KronSum, SampleKronSum

__all__ = ["StreamingKronecker"]


class StreamingKronecker:
    """Streaming Kronecker-product estimate of a weighted mean of batch matrices.

    Parameters
    ----------
    strategy : {"running", "approx"}
        How per-batch factors are combined (see the module docstring).
    method : str
        ``nearest_kronecker`` method for each batch (default ``"auto"``).
    tol : float, optional
        Tolerance of iterative methods.
    maxiter : int, optional
        Iteration cap of iterative methods.

    Attributes
    ----------
    n_batches : int
        Batches seen.
    total_weight : float
        ``Σ_p ω_p``.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import SampleKronSum, StreamingKronecker
    >>> rng = np.random.default_rng(0)
    >>> stream = StreamingKronecker("running")
    >>> for _ in range(3):
    ...     G, A = rng.standard_normal((8, 3)), rng.standard_normal((8, 4))
    ...     _ = stream.update(SampleKronSum.from_factors(G, A, weights=1 / 8))
    >>> stream.estimate().a_shape, stream.estimate().b_shape
    ((3, 3), (4, 4))
    """

    def __init__(
        self, strategy: str = "running", *, method: str = "auto", tol: float | None = None, maxiter: int | None = None
    ):
        if strategy not in ("running", "approx"):
            raise ValueError(f'`strategy` must be "running" or "approx", got {strategy!r}')
        self.strategy, self.method, self.tol, self.maxiter = strategy, method, tol, maxiter
        self.n_batches = 0
        self.total_weight = 0.0
        self._L: Any = None
        self._R: Any = None
        self._last: KronSum | None = None

    def update(self, batch: KronSum | SampleKronSum, weight: float = 1.0) -> KronSum:
        """Add one batch matrix ``F_p`` with weight ``ω_p``; returns the batch's own ``L_p ⊗ R_p``.

        Parameters
        ----------
        batch : KronSum or SampleKronSum
            The batch's matrix, with square factor shapes matching earlier batches.
        weight : float
            ``ω_p > 0``, e.g. the batch size for a sample-weighted mean.

        Returns
        -------
        KronSum
            The batch's best Kronecker product, normalized so that ``‖L_p‖_F = 1``.
        """
        if not isinstance(batch, (KronSum, SampleKronSum)):
            raise TypeError(f"`batch` must be a KronSum or SampleKronSum, got {type(batch).__name__}")
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise ValueError(f"`weight` must be a positive number, got {weight!r}")
        if self._L is not None and (tuple(self._L.shape), tuple(self._R.shape)) != (batch.a_shape, batch.b_shape):
            raise ValueError(
                f"`batch` has factor shapes {batch.a_shape} ⊗ {batch.b_shape}, earlier batches had "
                f"{tuple(self._L.shape)} ⊗ {tuple(self._R.shape)}"
            )
        K = nearest_kronecker(batch, rank=1, method=self.method, tol=self.tol, maxiter=self.maxiter, x0=self._last)
        self._last = K
        L, R = _normalized(K)
        self.n_batches += 1
        self.total_weight += float(weight)
        c = float(weight) / self.total_weight
        if self._L is None:
            self._L, self._R = L, R
        elif self.strategy == "approx":
            self._L = (1 - c) * self._L + c * L
            self._R = (1 - c) * self._R + c * R
        else:
            both = KronSum([(self._L, (1 - c) * self._R), (L, c * R)])
            self._L, self._R = _normalized(nearest_kronecker(both, rank=1, method="gram"))
        return KronSum([(L, R)])

    def estimate(self) -> KronSum:
        """The current estimate ``L̂ ⊗ R̂`` of the weighted mean.

        Returns
        -------
        KronSum
            One term.

        Raises
        ------
        ValueError
            Before the first :meth:`update`.
        """
        if self._L is None:
            raise ValueError("no batch seen yet: call `update` first")
        return KronSum([(self._L, self._R)])


def _normalized(K: KronSum) -> tuple[Any, Any]:
    """The leading pair of ``K`` rescaled to ``‖L‖_F = 1`` (the product is unchanged)."""
    xp = K.xp
    L, R = K.factors[0]
    norm = xp.sqrt(xp.sum(L**2))
    safe = xp.where(norm > 0, norm, xp.ones_like(norm))
    return L / safe, R * safe
