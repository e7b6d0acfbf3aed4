"""Kronecker approximations of each layer's Fisher block, ``F ≈ Σ_i G_i ⊗ A_i``.

``F = E[vec(DW̄) vec(DW̄)ᵀ]`` with ``W̄ = [W | b]`` (bias last column), row-major
vec, and factors in the order (output side ``G``, input side ``A``).  The
per-sample gradients are ``X_n = g_n ā_nᵀ`` (Linear) or ``Σ_t ds_t â_tᵀ``
(Conv2d); ``F`` is held implicitly as a :class:`kronalg.SampleKronSum` with
weights ``1/N`` over all ``N`` samples, never formed.

Methods
-------
``"kfac"``
    ``E[g gᵀ] ⊗ E[ā āᵀ]``; Conv2d follows KFC (K-FOC eq. 9): ``G = E[Σ_t ds ds ᵀ]``,
    ``A = (1/T) E[Σ_t â âᵀ]``.
``"tkfac"``
    Trace-restricted K-FAC: ``PTr_in(F) ⊗ PTr_out(F) / tr(F)`` from the exact partial
    traces (Gao eq. 4.9; keeps ``tr F̂ = tr F``).  ``tkfac_variant="thm4.3"`` uses
    Gao's Thm 4.3 instead (locations assumed uncorrelated: the partial traces of
    ``Σ_t E[ds_t ds_tᵀ ⊗ â_t â_tᵀ]``).
``"kpsvd"``
    The best Kronecker product (Koroko §3.1): top singular pair of ``R(F)``.
``"deflation"``, ``"lanczos"``
    Best Kronecker rank ``rank`` (default 2) by deflated power SVDs or restarted
    Lanczos (Koroko §3.2).
``"kfac_corrected"``
    K-FAC plus the best Kronecker product of the residual ``F − K-FAC``
    (Koroko §3.3), computed by Lanczos on the deflated ``R(F)``.
``"kfoc"``
    K-FOC (Schnaus et al.): the best Kronecker product of each minibatch's block,
    combined over minibatches by ``aggregate="running"`` or ``"approx"``
    (:class:`kronalg.StreamingKronecker`).  On a single batch it equals ``"kpsvd"``.
``"rs_kfac"``, ``"b_kfac"``, ``"b_r_kfac"``, ``"b_kfac_c"``
    The low-rank K-factors of Puiu (2022), computed by the optimizer's own
    :class:`nn_adapters.curvature.BrandFamily` (Brand update interval 1).  The
    K-FAC factors ``G`` and ``A`` are each held as ``U diag(w) Uᵀ`` of rank
    ``k = truncation_rank`` (capped at the side's dimension ``d``).  ``rs_kfac``
    (§2.2): top-``k`` randomized EVD of the exact K-FAC factor (an exact ``eigh``
    when ``k + oversample ≥ d``, the sketch then spanning the whole side).
    ``b_kfac`` (§3.1, Alg. 4): per minibatch, truncate to ``k`` then apply the
    symmetric Brand update with the batch's columns, so the result has rank up
    to ``k + n_M`` (``n_M = n`` for Linear, ``n·T`` for Conv2d) and no
    ``d × d`` matrix is formed; ``b_r_kfac`` (§3.3, Alg. 5) overwrites the Brand
    representation by the randomized EVD of the exact running factor every
    ``rsvd_every`` minibatches; ``b_kfac_c`` (§3.4, Alg. 6–7) applies the light
    correction to ``max(1, ⌊correct_fraction·k'⌋)`` randomly chosen modes
    (``k'`` the current rank) every ``correct_every`` minibatches, the first
    included.  As in the optimizer (Puiu §3.5), a side is Brand-updated only
    when the first minibatch has ``n_M < d``; otherwise it falls back to the
    ``rs_kfac`` computation.  The result is one Kronecker pair ``(Ĝ, Â)``, each factor
    ``M̂ = U diag(w) Uᵀ + μ (I − U Uᵀ)`` with ``μ = min w`` (Puiu's spectrum
    continuation at zero damping, :func:`kronalg.spectrum_continuation`: the
    ``d − k`` missing eigenvalues set to the smallest kept one).  This is the
    factor whose damped inverse the optimizer applies, so the report measures
    the curvature it really uses; ``continuation=False`` gives the plain
    ``U diag(w) Uᵀ``.  A side with ``k ≥ d`` is not truncated: it is the exact
    K-FAC factor (up to rounding and directions of numerically zero
    eigenvalue), without continuation.

Minibatches are combined exactly wherever the method allows: K-FAC and TKFAC sum
their statistics; ``kpsvd``, ``deflation``, ``lanczos`` and ``kfac_corrected``
concatenate every minibatch's factors into one ``SampleKronSum`` (memory
``N·T·(p + r)``); ``kfoc`` and the Puiu methods stream.  The Puiu methods keep
the exact running mean over the minibatches seen so far: the ``j``-th
minibatch of ``n_j`` samples enters with decay ``ρ_j = N_{j−1}/N_j``
(``N_j = n_1 + … + n_j``), i.e. ``ρ_j = 1 − 1/j`` for equal batch sizes, so that
without truncation they equal ``"kfac"`` on the whole data.  Their randomized
steps are seeded by ``seed + 1009·(layer index)`` (``seed = 0`` when ``None``)
and the update count, as in the optimizer.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from kronalg import (
    KronSum,
    SampleKronSum,
    StreamingKronecker,
    deflate,
    lanczos_svd,
    nearest_kronecker,
    spectrum_continuation,
)
from kronalg.nearest import NEAREST_METHODS, factors_from_triplets

from .capture import (
    FisherBlocks,
    LayerCapture,
    capture_batches,
    check_loss,
    check_on_unsupported,
    find_layers,
    report_unsupported,
)
from .layers.linear import kfac_factor_sums

__all__ = [
    "BRAND_DEFAULTS",
    "BRAND_METHODS",
    "METHODS",
    "OPTIONS",
    "check_truncation_rank",
    "fisher_blocks",
    "fisher_sample_sums",
    "kfac_corrected",
    "side_rank",
    "tkfac",
]

#: The approximation methods of :func:`fisher_blocks`.
METHODS = (
    "kfac",
    "tkfac",
    "kpsvd",
    "deflation",
    "lanczos",
    "kfac_corrected",
    "kfoc",
    "rs_kfac",
    "b_kfac",
    "b_r_kfac",
    "b_kfac_c",
)

#: The low-rank K-factor methods of Puiu (2022).
BRAND_METHODS = ("rs_kfac", "b_kfac", "b_r_kfac", "b_kfac_c")

#: Extra options of :func:`fisher_blocks` and the methods that use them (others ignore them).
OPTIONS = {
    "tol": "kpsvd, deflation, lanczos, kfac_corrected, kfoc: tolerance of iterative solvers",
    "maxiter": "kpsvd, deflation, lanczos, kfac_corrected, kfoc: iteration cap of iterative solvers",
    "rank": "deflation, lanczos: Kronecker rank (default 2)",
    "nearest_method": 'kpsvd, kfoc: the nearest_kronecker method per block/batch (default "auto")',
    "aggregate": 'kfoc: "running" (default) or "approx"',
    "tkfac_variant": 'tkfac: "exact" (default) or "thm4.3"',
    "truncation_rank": (
        "rs_kfac, b_kfac, b_r_kfac, b_kfac_c: rank k of each K-factor, an int >= 1 (capped at the side's "
        "dimension d) or a float fraction in (0, 1] (k = ceil(fraction·d) per side); default 32, as the optimizer"
    ),
    "rsvd_every": "b_r_kfac: randomized-EVD overwrite every this many minibatches (default 10)",
    "correct_every": "b_kfac_c: light correction every this many minibatches (default 5)",
    "correct_fraction": "b_kfac_c: fraction in (0, 1] of the modes corrected (default 0.5)",
    "oversample": "rs_kfac, b_r_kfac, and sides with n_M >= d: oversampling of the randomized EVD (default 10)",
    "continuation": "rs_kfac, b_kfac, b_r_kfac, b_kfac_c: spectrum continuation of truncated sides (default True)",
}

#: Defaults of the Puiu options (the optimizer's, :data:`nn_adapters.preconditioner.DEFAULTS`).
BRAND_DEFAULTS: dict[str, Any] = {
    "truncation_rank": 32,
    "rsvd_every": 10,
    "correct_every": 5,
    "correct_fraction": 0.5,
    "oversample": 10,
    "continuation": True,
}

_EXACT_SUM_METHODS = ("kpsvd", "deflation", "lanczos", "kfac_corrected")


def _validate(method: Any, loss: Any, on_unsupported: Any, opts: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    check_loss(loss)
    check_on_unsupported(on_unsupported)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid options are {sorted(OPTIONS)}")
    cfg = {"tol": None, "maxiter": None, "rank": 2, "nearest_method": "auto", "aggregate": "running"}
    cfg["tkfac_variant"] = "exact"
    cfg.update(BRAND_DEFAULTS)
    cfg.update(opts)
    if cfg["tol"] is not None and not (isinstance(cfg["tol"], (int, float)) and cfg["tol"] > 0):
        raise ValueError(f"`tol` must be a positive number, got {cfg['tol']!r}")
    maxiter = cfg["maxiter"]
    if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1):
        raise ValueError(f"`maxiter` must be a positive int, got {maxiter!r}")
    rank = cfg["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    if cfg["nearest_method"] not in NEAREST_METHODS:
        raise ValueError(f"`nearest_method` must be one of {NEAREST_METHODS}, got {cfg['nearest_method']!r}")
    if cfg["aggregate"] not in ("running", "approx"):
        raise ValueError(f'`aggregate` must be "running" or "approx", got {cfg["aggregate"]!r}')
    if cfg["tkfac_variant"] not in ("exact", "thm4.3"):
        raise ValueError(f'`tkfac_variant` must be "exact" or "thm4.3", got {cfg["tkfac_variant"]!r}')
    check_truncation_rank(cfg["truncation_rank"])
    for name in ("rsvd_every", "correct_every", "oversample"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    fraction = cfg["correct_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"`correct_fraction` must be a number in (0, 1], got {fraction!r}")
    if not isinstance(cfg["continuation"], bool):
        raise ValueError(f"`continuation` must be a bool, got {cfg['continuation']!r}")
    return cfg


def check_truncation_rank(value: Any) -> int | float:
    """Validate a ``truncation_rank``: an int ``≥ 1`` or a float fraction in ``(0, 1]``.

    Parameters
    ----------
    value : int or float
        The rank, or the fraction of each side's dimension.

    Returns
    -------
    int or float
        ``value``.

    Raises
    ------
    ValueError
        On any other value (``bool`` included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`truncation_rank` must be a positive int or a float in (0, 1], got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"`truncation_rank` must be a positive int or a float in (0, 1], got {value!r}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"`truncation_rank` must be a positive int or a float in (0, 1], got {value!r}")
    return value


def side_rank(truncation_rank: int | float, d: int) -> int:
    """The rank kept on a K-factor side of dimension ``d``.

    Parameters
    ----------
    truncation_rank : int or float
        An int ``k ≥ 1`` or a fraction ``f`` in ``(0, 1]``.
    d : int
        The side's dimension.

    Returns
    -------
    int
        ``min(k, d)``, or ``ceil(f·d)`` (at least 1, at most ``d``).

    Examples
    --------
    >>> side_rank(32, 11), side_rank(0.25, 50), side_rank(0.25, 1)
    (11, 13, 1)
    """
    if isinstance(truncation_rank, float):
        return min(d, max(1, math.ceil(round(truncation_rank * d, 9))))
    return min(int(truncation_rank), d)


# -- per-layer accumulators -------------------------------------------------------


class _Concat:
    """Keeps every minibatch's factors: the exact ``SampleKronSum`` of all samples."""

    def __init__(self) -> None:
        self.G: list[Tensor] = []
        self.A: list[Tensor] = []

    def update(self, cap: LayerCapture, n: int) -> None:
        self.G.append(cap.G)
        self.A.append(cap.A)

    def sample_sum(self, N: int) -> SampleKronSum:
        if len(self.G) > 1:
            self.G, self.A = [torch.cat(self.G)], [torch.cat(self.A)]
        return SampleKronSum.from_factors(self.G[0], self.A[0], weights=1.0 / N)


class _Kfac:
    def __init__(self) -> None:
        self.G: Tensor | None = None
        self.A: Tensor | None = None

    def update(self, cap: LayerCapture, n: int) -> None:
        G, A = kfac_factor_sums(cap.G, cap.A)
        self.G = G if self.G is None else self.G + G
        self.A = A if self.A is None else self.A + A

    def result(self, N: int, cfg: dict) -> KronSum:
        return KronSum([(self.G / N, self.A / N)])


class _Tkfac:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.Pa: Tensor | None = None
        self.Pb: Tensor | None = None
        self.tr: Tensor | None = None

    def update(self, cap: LayerCapture, n: int) -> None:
        G, A = cap.G, cap.A
        if self.variant == "thm4.3" and G.ndim == 3:  # locations as independent rank-1 samples
            G, A = G.reshape(-1, G.shape[-1]), A.reshape(-1, A.shape[-1])
        S = SampleKronSum.from_factors(G, A)
        Pa, Pb, tr = S.partial_trace("a"), S.partial_trace("b"), S.trace()
        if self.Pa is None:
            self.Pa, self.Pb, self.tr = Pa, Pb, tr
        else:
            self.Pa, self.Pb, self.tr = self.Pa + Pa, self.Pb + Pb, self.tr + tr

    def result(self, N: int, cfg: dict) -> KronSum:
        return tkfac(self.Pa / N, self.Pb / N, self.tr / N)


class _Kfoc:
    def __init__(self, cfg: dict) -> None:
        self.stream = StreamingKronecker(
            cfg["aggregate"], method=cfg["nearest_method"], tol=cfg["tol"], maxiter=cfg["maxiter"]
        )

    def update(self, cap: LayerCapture, n: int) -> None:
        self.stream.update(SampleKronSum.from_factors(cap.G, cap.A, weights=1.0 / n), weight=float(n))

    def result(self, N: int, cfg: dict) -> KronSum:
        return self.stream.estimate()


class _ExactSum(_Concat):
    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def result(self, N: int, cfg: dict) -> KronSum:
        S = self.sample_sum(N)
        tol, maxiter = cfg["tol"], cfg["maxiter"]
        if self.method == "kpsvd":
            return nearest_kronecker(S, rank=1, method=cfg["nearest_method"], tol=tol, maxiter=maxiter)
        if self.method in ("deflation", "lanczos"):
            rank = min(cfg["rank"], S.a_shape[0] ** 2, S.b_shape[0] ** 2)
            K = nearest_kronecker(S, rank=rank, method=self.method, tol=tol, maxiter=maxiter)
            pairs = [K.factors[0], *(_clean_pair(C, D) for C, D in K.factors[1:])]
            return KronSum(pairs, info=K.info)
        Gs, As = kfac_factor_sums(self.G[0], self.A[0])  # sample_sum left one concatenated batch
        return kfac_corrected(S, Gs / N, As / N, tol=tol, maxiter=maxiter)


@functools.cache
def _brand_block_class() -> type:
    """:class:`~nn_adapters.curvature.BrandFamily` with a per-side rank (an int, or a fraction of the side).

    Built on first use: :mod:`nn_adapters.curvature` imports this module.
    """
    from .curvature import BrandFamily

    class BrandBlock(BrandFamily):
        def _rank(self, d: int) -> int:
            return side_rank(self.cfg["truncation_rank"], d)

    return BrandBlock


class _Brand:
    """Streams minibatches through the optimizer's ``BrandFamily`` with the exact running-mean decay."""

    def __init__(self, method: str, cfg: dict, seed: int) -> None:
        self.method, self.seed = method, seed
        self.cfg = {name: cfg[name] for name in BRAND_DEFAULTS} | {"brand_every": 1}
        self.curv: Any = None
        self.seen = 0

    def update(self, cap: LayerCapture, n: int) -> None:
        if self.curv is None:
            p, r = cap.G.shape[-1], cap.A.shape[-1]
            self.curv = _brand_block_class()(self.method, p, r, self.cfg, seed=self.seed)
        decay = self.seen / (self.seen + n)  # ρ_j = N_{j-1}/N_j: the exact running mean
        self.curv.update(cap, decay)
        self.seen += n

    def result(self, N: int, cfg: dict) -> KronSum:
        self.curv.refresh(0.0)  # the randomized EVD of the sides kept dense (rs_kfac, and n_M >= d)
        low = self.curv.low
        return KronSum([tuple(self._factor(low["U_" + s], low["w_" + s]) for s in ("G", "A"))])

    def _factor(self, U: Tensor, w: Tensor) -> Tensor:
        """``U diag(w) Uᵀ``, plus ``min(w)·(I − U Uᵀ)`` when the side is truncated (spectrum continuation)."""
        d = U.shape[0]
        M = (U * w[None, :]) @ U.T
        truncated = side_rank(self.cfg["truncation_rank"], d) < d
        if self.cfg["continuation"] and truncated and 0 < U.shape[1] < d:
            w_tail, mu = spectrum_continuation(w, 0.0)
            M = (U * w_tail[None, :]) @ U.T + mu * torch.eye(d, dtype=U.dtype, device=U.device)
        return 0.5 * (M + M.T)


def _accumulator(method: str, cfg: dict, index: int, seed: int | None) -> Any:
    if method == "kfac":
        return _Kfac()
    if method == "tkfac":
        return _Tkfac(cfg["tkfac_variant"])
    if method == "kfoc":
        return _Kfoc(cfg)
    if method in BRAND_METHODS:
        return _Brand(method, cfg, (0 if seed is None else seed) + 1009 * index)
    return _ExactSum(method)


# -- the approximations from statistics ----------------------------------------------


def tkfac(Pa: Tensor, Pb: Tensor, trace: Tensor) -> KronSum:
    """Trace-restricted Kronecker product ``Pa ⊗ Pb / tr`` (Gao et al. eq. 4.9).

    With ``Pa = PTr_in(F)``, ``Pb = PTr_out(F)`` and ``tr = tr(F)`` the result
    has the trace of ``F``.  The scale ``1/tr`` is split evenly between the
    factors; a zero trace gives zero factors.

    Parameters
    ----------
    Pa : Tensor of shape (p, p)
        Output-side partial trace ``Σ_n w_n X_n X_nᵀ``.
    Pb : Tensor of shape (r, r)
        Input-side partial trace ``Σ_n w_n X_nᵀ X_n``.
    trace : Tensor of shape ()
        ``tr(F)``.

    Returns
    -------
    KronSum
        One term ``(Pa/√tr, Pb/√tr)``.
    """
    scale = torch.where(trace > 0, torch.rsqrt(torch.clamp(trace, min=torch.finfo(trace.dtype).tiny)), 0.0)
    return KronSum([(Pa * scale, Pb * scale)])


def _clean_pair(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Project a Kronecker pair of a symmetric matrix onto its (anti)symmetric form.

    For symmetric ``M``, ``R(M)`` commutes with transposition of both factors,
    so a simple singular pair is exactly symmetric or exactly antisymmetric;
    this removes what an iterative solver left of the other part (up to its
    tolerance) and makes the product exactly symmetric.
    """
    sym_A, anti_A = 0.5 * (A + A.T), 0.5 * (A - A.T)
    if torch.linalg.norm(sym_A) >= torch.linalg.norm(anti_A):
        return sym_A, 0.5 * (B + B.T)
    return anti_A, 0.5 * (B - B.T)


def kfac_corrected(
    S: SampleKronSum, G: Tensor, A: Tensor, *, tol: float | None = None, maxiter: int | None = None
) -> KronSum:
    """K-FAC plus the best Kronecker product of the residual: ``G ⊗ A + C ⊗ D`` (Koroko §3.3).

    ``C ⊗ D`` is the leading singular pair of ``R(F − G⊗A) = R(F) − vec(G) vec(A)ᵀ``,
    found by Lanczos on the deflated implicit operator (``F`` is never formed).

    Parameters
    ----------
    S : SampleKronSum
        The block ``F`` of shape ``(p·r, p·r)``.
    G : Tensor of shape (p, p)
        K-FAC output-side factor.
    A : Tensor of shape (r, r)
        K-FAC input-side factor.
    tol : float, optional
        Lanczos tolerance.
    maxiter : int, optional
        Lanczos restart cap.

    Returns
    -------
    KronSum
        Two terms, K-FAC first; ``.info`` is the Lanczos convergence info.
    """
    p, r = G.shape[0], A.shape[0]
    nG, nA = torch.linalg.norm(G), torch.linalg.norm(A)
    if float(nG) == 0.0 or float(nA) == 0.0:
        residual_op = S.rearranged
    else:
        u = (G.reshape(-1) / nG)[:, None]
        vh = (A.reshape(-1) / nA)[None, :]
        residual_op = deflate(S.rearranged, u, (nG * nA).reshape(1), vh)
    triplets = lanczos_svd(residual_op, 1, tol=tol, maxiter=maxiter, seed=0)
    Cs, Ds = factors_from_triplets(S.xp, *triplets, (p, p), (r, r), symmetric=False)
    C, D = _clean_pair(Cs[0], Ds[0])
    return KronSum([(G, A), (C, D)], info=triplets.info)


# -- public entry points -------------------------------------------------------------


def _run(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss: str,
    seed: Any,
    on_unsupported: str,
    make: Any,
) -> tuple[dict[str, Any], int, list[tuple[str, str]]]:
    layers, unsupported = find_layers(model)
    report_unsupported(unsupported, on_unsupported)
    accs: dict[str, Any] = {}
    N = 0
    for n, captures in capture_batches(model, inputs, targets=targets, loss=loss, seed=seed, layers=layers):
        N += n
        for name, cap in captures.items():
            if name not in accs:
                accs[name] = make()
            accs[name].update(cap, n)
    if N == 0:
        raise ValueError("`inputs` holds no samples")
    return accs, N, unsupported


def fisher_sample_sums(
    model: nn.Module,
    inputs: Any,
    *,
    targets: Any = "sampled",
    loss: str = "cross_entropy",
    seed: int | None = None,
    on_unsupported: str = "warn",
) -> FisherBlocks:
    """Each supported layer's exact Fisher block as an implicit :class:`kronalg.SampleKronSum`.

    ``F = (1/N) Σ_n vec(X_n) vec(X_n)ᵀ`` over all ``N`` samples of all
    minibatches, ``X_n`` the per-sample gradient of ``W̄ = [W | b]`` (shape
    ``(p, r)``).  ``.to_dense()``, ``.trace()``, ``.partial_trace()`` and
    ``nearest_kronecker`` work on it without forming the ``(p·r)²`` matrix.

    Parameters
    ----------
    model : torch.nn.Module
        Network whose samples do not interact in the forward pass (eval mode).
    inputs : Tensor of shape (N, ...), or iterable of minibatches
        One tensor, an iterable of tensors, or an iterable of ``(x, y)`` pairs.
    targets : "sampled", "empirical", Tensor, or iterable of Tensor
        ``"sampled"``: drawn from the model (true Fisher); a tensor (with a
        tensor ``inputs``) or an iterable of tensors (one per minibatch), or
        ``"empirical"`` with ``(x, y)`` minibatches: given targets (empirical Fisher).
    loss : {"cross_entropy", "mse"}
        Categorical on logits, or Gaussian with unit variance (``½‖y − f‖²``).
    seed : int or None
        Seed of the sampled targets (the same draws as :func:`exact_fisher_blocks`).
    on_unsupported : {"warn", "raise", "ignore"}
        What to do about modules with trainable parameters but no block (they
        are listed in ``.unsupported`` in every case).

    Returns
    -------
    FisherBlocks
        dict layer name → ``SampleKronSum`` of shape ``(p·r, p·r)`` with factor
        shapes ``(p, p)``, ``(r, r)``; ``.unsupported``, ``.n_samples``.
    """
    _validate("kfac", loss, on_unsupported, {})
    accs, N, unsupported = _run(model, inputs, targets, loss, seed, on_unsupported, _Concat)
    return FisherBlocks(
        {name: acc.sample_sum(N) for name, acc in accs.items()}, unsupported=tuple(unsupported), n_samples=N
    )


def fisher_blocks(
    model: nn.Module,
    inputs: Any,
    *,
    method: str,
    targets: Any = "sampled",
    loss: str = "cross_entropy",
    seed: int | None = None,
    on_unsupported: str = "warn",
    **opts: Any,
) -> FisherBlocks:
    """Kronecker approximation ``F ≈ Σ_i G_i ⊗ A_i`` of each supported layer's Fisher block.

    Parameters
    ----------
    model : torch.nn.Module
        Network whose samples do not interact in the forward pass (eval mode).
    inputs : Tensor of shape (N, ...), or iterable of minibatches
        See :func:`fisher_sample_sums`.
    method : str
        The approximation, one of :data:`METHODS`: ``"kfac"``, ``"tkfac"``,
        ``"kpsvd"``, ``"deflation"``, ``"lanczos"``, ``"kfac_corrected"``,
        ``"kfoc"``, ``"rs_kfac"``, ``"b_kfac"``, ``"b_r_kfac"``, ``"b_kfac_c"``
        (see the module docstring).  The last four (Puiu
        2022) stream the minibatches in order and return one pair of low-rank
        K-factors with spectrum continuation.
    targets : "sampled", "empirical", Tensor, or iterable of Tensor
        See :func:`fisher_sample_sums`.
    loss : {"cross_entropy", "mse"}
        The negative log-likelihood.
    seed : int or None
        Seed of the sampled targets.
    on_unsupported : {"warn", "raise", "ignore"}
        See :func:`fisher_sample_sums`.
    **opts
        ``tol``, ``maxiter``, ``rank``, ``nearest_method``, ``aggregate``,
        ``tkfac_variant``; for the Puiu methods ``truncation_rank`` (int ``≥ 1``
        or a fraction in ``(0, 1]`` of each side's dimension; default 32, the
        optimizer's), ``rsvd_every`` (10), ``correct_every`` (5),
        ``correct_fraction`` (0.5), ``oversample`` (10) and ``continuation``
        (True) (see :data:`OPTIONS` and :data:`BRAND_DEFAULTS`); options a
        method does not use are ignored, unknown names raise.

    Returns
    -------
    FisherBlocks
        dict layer name (as in ``model.named_modules()``) → :class:`kronalg.KronSum`
        of shape ``(p·r, p·r)``, factors ``(G_i, A_i)`` of shapes ``(p, p)``
        (output side) and ``(r, r)`` (input side); ``p = out`` or ``c_out``,
        ``r = in (+1)`` or ``c_in·kh·kw (+1)``.

    Raises
    ------
    ValueError
        On an unknown ``method``, ``loss`` or option, or a bad option value.

    Examples
    --------
    >>> import torch
    >>> from nn_adapters import fisher_blocks
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    >>> blocks = fisher_blocks(model, torch.randn(16, 4), method="kfac", seed=0)
    >>> [(name, K.a_shape, K.b_shape) for name, K in blocks.items()]
    [('0', (3, 3), (5, 5)), ('2', (2, 2), (4, 4))]
    """
    cfg = _validate(method, loss, on_unsupported, opts)
    index = itertools.count()
    accs, N, unsupported = _run(
        model, inputs, targets, loss, seed, on_unsupported, lambda: _accumulator(method, cfg, next(index), seed)
    )
    return FisherBlocks(
        {name: acc.result(N, cfg) for name, acc in accs.items()}, unsupported=tuple(unsupported), n_samples=N
    )
