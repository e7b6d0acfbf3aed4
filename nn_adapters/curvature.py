"""Per-layer curvature for optimizers: running statistics, damped inverse, preconditioned gradient.

Every class here follows one layer's Fisher block ``F`` (factor order: output side ``G`` of size ``p``, input side
``A`` of size ``r``; gradients as ``p × r`` matrices ``J = mat(∇W̄)``) through three operations:

* ``update(capture, decay)`` — fold one minibatch's per-sample factors into the running estimate with the
  exponential moving average ``F̄ ← ρ F̄ + (1 − ρ) F_batch``, ``ρ = decay`` (the caller passes
  ``ρ = min(1 − 1/k, factor_decay)``, so the first update is the batch alone);
* ``refresh(damping, context)`` — rebuild the damped inverse representation;
* ``precondition(J, capture)`` — ``F̂_damped⁻¹ J``.

Families
--------
Single Kronecker product ``F̂ = G ⊗ A`` (``kfac``, ``tkfac``, ``kpsvd``, ``kfoc``), inverted as
``(G + (√λ/π) I)⁻¹ J (A + π√λ I)⁻¹`` through the eigendecompositions of ``G`` and ``A`` (factored Tikhonov damping,
M&G §6.3; TKFAC's damping (5.15)–(5.17) as options).  ``kpsvd`` is the best Kronecker product of the running
Fisher ``ρ F̂_prev + (1 − ρ) F_batch`` (the previous approximation standing in for the old average, solved by
warm-started Lanczos on the implicit rearrangement); ``kfoc`` first reduces each batch to its best Kronecker product
(warm-started) and averages those exactly (the two-term Gram route).

Kronecker rank 2 ``F̂ = G₁ ⊗ A₁ + G₂ ⊗ A₂`` (``deflation``, ``lanczos``, ``kfac_corrected``): the same running
target, reduced to rank 2 by deflated power iterations, block Lanczos, or K-FAC (exact running factors) plus the best
Kronecker product of the residual.  The damped system ``(G₁ + (√λ/π) I) ⊗ (A₁ + π√λ I) + G₂ ⊗ A₂`` is solved with
:class:`kronalg.KronSumSolver`; a rank-2 estimate of a PSD matrix can be indefinite, so the solver's eigenvalues
``1 + s₁ᵢ s₂ⱼ`` below ``psd_floor`` are raised to it (``psd_floor = 0.05`` by default) — the projection onto the
positive definite matrices in the eigenbasis of the pencil.  An antisymmetric second pair (possible for a symmetric
``F``, but not invertible by M&G App. B) is dropped at refresh time and counted.

Low-rank K-factor inverses (``rs_kfac``, ``b_kfac``, ``b_r_kfac``, ``b_kfac_c``; Puiu Alg. 1, 4, 5, 7): each K-factor
``M`` (= ``G`` or ``A`` of K-FAC) is held as ``U diag(w) Uᵀ`` and applied as
``(U diag(w′) Uᵀ + λ′ I)⁻¹ = U[(w′ + λ′)⁻¹ − 1/λ′]Uᵀ + I/λ′`` after spectrum continuation (``w′ = w − min w``,
``λ′ = λ + min w``, Puiu §3.5).  ``rs_kfac`` recomputes ``U, w`` by randomized EVD of the exact running factor;
``b_kfac`` truncates to ``rank`` and applies the symmetric Brand update with the batch, never forming a ``d × d``
matrix; ``b_r_kfac`` overwrites the Brand representation by a randomized EVD every ``rsvd_every`` steps; ``b_kfac_c``
applies Puiu's light correction every ``correct_every`` steps.  For a fully-connected layer whose batch is narrower
than the layer, the gradient ``J = c·Gᵀ A`` is preconditioned in factored form (Puiu Alg. 8:
``(Γ⁻¹ Gᵀ)(A Ā⁻¹)·c``), linear in the layer width.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import torch
from torch import Tensor

from kronalg import KronSum, KronSumSolver, SampleKronSum, deflate, lanczos_svd, nearest_kronecker, power_svd
from kronalg.brand import brand_light_correction, brand_update_sym, spectrum_continuation
from kronalg.nearest import factors_from_triplets
from kronalg.randomized import randomized_eigh
from kronalg.results import SVDResult

from .capture import LayerCapture
from .damping import symmetric_eigh, trace_norm_pi
from .fisher import _clean_pair, tkfac
from .layers.linear import kfac_factor_sums

__all__ = [
    "APPROXIMATIONS",
    "BrandFamily",
    "Curvature",
    "KronRank2",
    "KronSingle",
    "make_curvature",
]

#: Every approximation a :class:`~nn_adapters.KroneckerPreconditioner` can use.
APPROXIMATIONS = (
    "kfac",
    "tkfac",
    "kpsvd",
    "kfoc",
    "deflation",
    "lanczos",
    "kfac_corrected",
    "rs_kfac",
    "b_kfac",
    "b_r_kfac",
    "b_kfac_c",
)

SINGLE = ("kfac", "tkfac", "kpsvd", "kfoc")
RANK2 = ("deflation", "lanczos", "kfac_corrected")
LOWRANK = ("rs_kfac", "b_kfac", "b_r_kfac", "b_kfac_c")


def _batch_sum(cap: LayerCapture, weight: float) -> SampleKronSum:
    """The minibatch's Fisher block ``weight·Σ_n vec(X_n) vec(X_n)ᵀ`` as an implicit sum."""
    return SampleKronSum.from_factors(cap.G, cap.A, weights=weight)


def _pairs_as_triplets(pairs: list[tuple[Tensor, Tensor]], weights: list[float]) -> SVDResult:
    """``R(Σ_i c_i G_i ⊗ A_i) = Σ_i c_i vec(G_i) vec(A_i)ᵀ`` as (unit vectors, signed weights)."""
    us, ss, vs = [], [], []
    for (G, A), c in zip(pairs, weights):
        nG, nA = torch.linalg.norm(G), torch.linalg.norm(A)
        tiny = torch.finfo(G.dtype).tiny
        us.append(G.reshape(-1) / torch.clamp(nG, min=tiny))
        vs.append(A.reshape(-1) / torch.clamp(nA, min=tiny))
        ss.append(c * nG * nA)
    return SVDResult(torch.stack(us, dim=1), torch.stack(ss), torch.stack(vs, dim=0))


def _ema_rearranged(cap: LayerCapture, decay: float, previous: list[tuple[Tensor, Tensor]], extra: Any = None) -> Any:
    """Implicit ``R(ρ Σ prev + (1 − ρ) F_batch − extra)`` (``extra`` a list of pairs subtracted)."""
    n = cap.G.shape[0]
    op = _batch_sum(cap, (1.0 - decay) / n).rearranged
    pairs, weights = [], []
    if decay > 0 and previous:
        pairs += previous
        weights += [-decay] * len(previous)  # deflate subtracts: a negative weight adds
    if extra:
        pairs += extra
        weights += [1.0] * len(extra)
    if not pairs:
        return op
    U, S, Vh = _pairs_as_triplets(pairs, weights)
    return deflate(op, U, S, Vh)


def _pairs_from_triplets(triplets: SVDResult, p: int, r: int) -> list[tuple[Tensor, Tensor]]:
    """Factor pairs of ``R``'s triplets: the leading pair symmetric PSD, later ones (anti)symmetric."""
    xp = array_api_compat.array_namespace(triplets.S)
    As, Bs = factors_from_triplets(xp, triplets.U, triplets.S, triplets.Vh, (p, p), (r, r), symmetric=True)
    pairs = [(As[0], Bs[0])]
    pairs += [_clean_pair(As[i], Bs[i]) for i in range(1, As.shape[0])]
    return pairs


def _triplet_slice(triplets: SVDResult | None, start: int, stop: int) -> SVDResult | None:
    """Triplets ``start:stop`` of a warm start (``None`` stays ``None``)."""
    if triplets is None:
        return None
    return SVDResult(triplets.U[:, start:stop], triplets.S[start:stop], triplets.Vh[start:stop])


def _psd_part(M: Tensor) -> Tensor:
    """Nearest symmetric PSD matrix (Frobenius): the eigenvalues of the symmetric part clipped at zero."""
    w, Q = _eigh_psd(M)
    return (Q * w[None, :]) @ Q.T


def _krylov_dim(op: Any, k: int) -> int:
    """A short Krylov cycle: warm starts from the previous step usually converge in one or two of them."""
    return min(2 * k + 6, min(op.shape))


def _eigh_psd(M: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the symmetric part of ``M`` with eigenvalues clipped at zero."""
    w, Q = symmetric_eigh(M)
    return torch.clamp(w, min=0.0), Q


class Curvature:
    """Base class: one layer's curvature estimate and damped inverse.

    Parameters
    ----------
    approx : str
        One of :data:`APPROXIMATIONS`.
    p, r : int
        Sizes of the output-side and input-side factors.
    cfg : dict
        Options (see :class:`~nn_adapters.KroneckerPreconditioner`).
    """

    def __init__(self, approx: str, p: int, r: int, cfg: dict):
        self.approx, self.p, self.r, self.cfg = approx, p, r, cfg
        self.n_updates = 0
        self.ready = False
        self.diagnostics: dict[str, float] = {}

    # subclasses: update, refresh, precondition, _state, _load
    def update(self, cap: LayerCapture, decay: float) -> None:  # noqa: D102
        raise NotImplementedError

    def refresh(self, damping: float, context: dict | None = None) -> None:  # noqa: D102
        raise NotImplementedError

    def precondition(self, J: Tensor, thin: tuple[Tensor, Tensor, float] | None = None) -> Tensor:  # noqa: D102
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically (tensors, numbers, strings)."""
        return {"n_updates": self.n_updates, "ready": self.ready, **self._state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.n_updates = int(state["n_updates"])
        self.ready = bool(state["ready"])
        self._load(state)

    def _state(self) -> dict:
        raise NotImplementedError

    def _load(self, state: dict) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# one Kronecker product
# ---------------------------------------------------------------------------------------------------------------


class KronSingle(Curvature):
    """``F̂ = G ⊗ A`` from K-FAC, TKFAC, KPSVD or K-FOC statistics, inverted with factored damping."""

    def __init__(self, approx: str, p: int, r: int, cfg: dict, *, is_conv: bool = False):
        super().__init__(approx, p, r, cfg)
        self.is_conv = is_conv
        self.stats: dict[str, Tensor] = {}
        self.inverse_inputs: dict[str, Any] = {}
        self._inv: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    # statistics -----------------------------------------------------------------------------------------------
    def update(self, cap: LayerCapture, decay: float) -> None:
        """Fold one batch into the running statistics (see the module docstring)."""
        n = cap.G.shape[0]
        if self.approx == "kfac":
            G, A = kfac_factor_sums(cap.G, cap.A)
            new = {"G": G / n, "A": A / n}
        elif self.approx == "tkfac":
            Gc, Ac = cap.G, cap.A
            if self.cfg["tkfac_variant"] == "thm4.3" and Gc.ndim == 3:
                Gc, Ac = Gc.reshape(-1, Gc.shape[-1]), Ac.reshape(-1, Ac.shape[-1])
            S = SampleKronSum.from_factors(Gc, Ac, weights=1.0 / n)
            new = {"Pa": S.partial_trace("a"), "Pb": S.partial_trace("b"), "tr": S.trace()}
        elif self.approx == "kpsvd":
            new = self._kpsvd_update(cap, decay)
        else:
            new = self._kfoc_update(cap, decay)
        if self.approx in ("kfac", "tkfac") and self.stats and decay > 0:
            new = {k: decay * self.stats[k] + (1.0 - decay) * v for k, v in new.items()}
        self.stats = new
        self.n_updates += 1

    def _previous_pair(self) -> list[tuple[Tensor, Tensor]]:
        return [(self.stats["G"], self.stats["A"])] if self.stats else []

    def _kpsvd_update(self, cap: LayerCapture, decay: float) -> dict[str, Tensor]:
        previous = self._previous_pair()
        op = _ema_rearranged(cap, decay, previous)
        x0 = _pairs_as_triplets(previous, [1.0]) if previous else None
        triplets = lanczos_svd(
            op, 1, krylov_dim=_krylov_dim(op, 1), x0=x0, tol=self.cfg["tol"], maxiter=self.cfg["maxiter"], seed=0
        )
        self.diagnostics["iterations"] = float(triplets.info.iterations)
        (G, A), *_ = _pairs_from_triplets(triplets, self.p, self.r)
        return {"G": G, "A": A}

    def _kfoc_update(self, cap: LayerCapture, decay: float) -> dict[str, Tensor]:
        batch = _batch_sum(cap, 1.0 / cap.G.shape[0])
        x0 = self.stats.get("batch_G"), self.stats.get("batch_A")
        x0 = None if x0[0] is None else x0
        K = nearest_kronecker(batch, rank=1, method="auto", tol=self.cfg["tol"], maxiter=self.cfg["maxiter"], x0=x0)
        Lb, Rb = K.factors[0]
        if self.stats and decay > 0:
            both = KronSum([(self.stats["G"], decay * self.stats["A"]), (Lb, (1.0 - decay) * Rb)])
            G, A = nearest_kronecker(both, rank=1, method="gram").factors[0]
        else:
            G, A = Lb, Rb
        return {"G": G, "A": A, "batch_G": Lb, "batch_A": Rb}

    def factors(self) -> tuple[Tensor, Tensor]:
        """The current undamped ``(G, A)``."""
        if self.approx == "tkfac":
            return tkfac(self.stats["Pa"], self.stats["Pb"], self.stats["tr"]).factors[0]
        return self.stats["G"], self.stats["A"]

    # inverse ----------------------------------------------------------------------------------------------------
    def refresh(self, damping: float, context: dict | None = None) -> None:
        """Damped inverse from the current factors.

        ``context["tkfac_beta"]`` is the network-wide β of TKFAC's new damping (5.17).
        """
        G, A = self.factors()
        mode = self.cfg["tkfac_damping"] if self.approx == "tkfac" else "factored"
        root = math.sqrt(damping)
        if mode == "factored":
            pi = trace_norm_pi(G, A)
            shift_g, shift_a = root / pi, root * pi
        elif mode == "normal":  # TKFAC (5.15): √λ on both factors
            shift_g, shift_a = root, root
        else:  # TKFAC "new" (5.16-5.17)
            delta = float(self.stats["tr"])
            if self.is_conv:
                delta_t = max(self.cfg["tkfac_nu"], delta)
                scale = math.sqrt(delta_t / delta) if delta > 0 else 1.0
                G, A = scale * G, scale * A
                shift_g, shift_a = delta_t / self.p, delta_t / self.r
            else:
                beta = (context or {}).get("tkfac_beta", 1.0)
                G, A = math.sqrt(beta) * G, math.sqrt(beta) * A
                shift_g, shift_a = root, root
        self.inverse_inputs = {"G": G, "A": A, "shift_g": shift_g, "shift_a": shift_a}
        self._build_inverse()
        self.ready = True

    def _build_inverse(self) -> None:
        inp = self.inverse_inputs
        dg, Qg = _eigh_psd(inp["G"])
        da, Qa = _eigh_psd(inp["A"])
        self._inv = (Qg, 1.0 / (dg + inp["shift_g"]), Qa, 1.0 / (da + inp["shift_a"]))

    def precondition(self, J: Tensor, thin: tuple[Tensor, Tensor, float] | None = None) -> Tensor:
        """``(G + s_g I)⁻¹ J (A + s_a I)⁻¹`` by the eigenbases."""
        Qg, ig, Qa, ia = self._inv
        Z = (Qg.T @ J @ Qa) * (ig[:, None] * ia[None, :])
        return Qg @ Z @ Qa.T

    def tkfac_delta(self) -> float:
        """``tr F`` of the running TKFAC statistics (δ of Gao et al. eq. 4.9)."""
        return float(self.stats["tr"])

    def _state(self) -> dict:
        return {"stats": dict(self.stats), "inverse_inputs": dict(self.inverse_inputs)}

    def _load(self, state: dict) -> None:
        self.stats = dict(state["stats"])
        self.inverse_inputs = dict(state["inverse_inputs"])
        if self.ready:
            self._build_inverse()


# ---------------------------------------------------------------------------------------------------------------
# Kronecker rank 2
# ---------------------------------------------------------------------------------------------------------------


class KronRank2(Curvature):
    """``F̂ = G₁ ⊗ A₁ + G₂ ⊗ A₂`` (deflation, Lanczos, KFAC-corrected), solved with ``KronSumSolver``."""

    def __init__(self, approx: str, p: int, r: int, cfg: dict):
        super().__init__(approx, p, r, cfg)
        self.pairs: list[tuple[Tensor, Tensor]] = []
        self.kfac: dict[str, Tensor] = {}
        self.inverse_inputs: dict[str, Any] = {}
        self._solver: KronSumSolver | None = None
        self.diagnostics = {"clipped": 0.0, "dropped_antisymmetric": 0.0}

    def update(self, cap: LayerCapture, decay: float) -> None:
        """Running rank-2 estimate of ``ρ F̂_prev + (1 − ρ) F_batch`` (warm-started)."""
        tol, maxiter = self.cfg["tol"], self.cfg["maxiter"]
        previous = self.pairs
        x0 = _pairs_as_triplets(previous, [1.0] * len(previous)) if previous else None
        if self.approx == "kfac_corrected":
            n = cap.G.shape[0]
            G, A = kfac_factor_sums(cap.G, cap.A)
            G, A = G / n, A / n
            if self.kfac and decay > 0:
                G = decay * self.kfac["G"] + (1.0 - decay) * G
                A = decay * self.kfac["A"] + (1.0 - decay) * A
            self.kfac = {"G": G, "A": A}
            op = _ema_rearranged(cap, decay, previous, extra=[(G, A)])
            triplets = power_svd(op, x0=_triplet_slice(x0, 1, 2), tol=tol, maxiter=maxiter, seed=0)
            xp = array_api_compat.array_namespace(triplets.S)
            Cs, Ds = factors_from_triplets(
                xp, triplets.U, triplets.S, triplets.Vh, (self.p, self.p), (self.r, self.r), symmetric=False
            )
            self.pairs = [(G, A), _clean_pair(Cs[0], Ds[0])]
            self.diagnostics["iterations"] = float(triplets.info.iterations)
        elif self.approx == "lanczos":
            op = _ema_rearranged(cap, decay, previous)
            triplets = lanczos_svd(op, 2, krylov_dim=_krylov_dim(op, 2), x0=x0, tol=tol, maxiter=maxiter, seed=0)
            self.pairs = _pairs_from_triplets(triplets, self.p, self.r)
            self.diagnostics["iterations"] = float(triplets.info.iterations)
        else:  # deflation: two power SVDs, the second on the deflated operator
            op = _ema_rearranged(cap, decay, previous)
            first = power_svd(op, x0=_triplet_slice(x0, 0, 1), tol=tol, maxiter=maxiter, seed=0)
            second = power_svd(
                deflate(op, first.U, first.S, first.Vh),
                x0=_triplet_slice(x0, 1, 2),
                tol=tol,
                maxiter=maxiter,
                seed=1,
            )
            both = SVDResult(
                torch.cat([first.U, second.U], dim=1),
                torch.cat([first.S, second.S]),
                torch.cat([first.Vh, second.Vh], dim=0),
            )
            self.pairs = _pairs_from_triplets(both, self.p, self.r)
            self.diagnostics["iterations"] = float(first.info.iterations + second.info.iterations)
        self.n_updates += 1

    def refresh(self, damping: float, context: dict | None = None) -> None:
        """``KronSumSolver((G₁ + (√λ/π)I), (A₁ + π√λ I), G₂, A₂, psd_floor=...)``."""
        (G1, A1), (C, D) = self.pairs
        pi = trace_norm_pi(G1, A1)
        root = math.sqrt(damping)
        antisymmetric = bool(torch.linalg.norm(C + C.T) < torch.linalg.norm(C - C.T))
        self.inverse_inputs = {"G": G1, "A": A1, "C": C, "D": D, "shift_g": root / pi, "shift_a": root * pi}
        self.inverse_inputs["use_second"] = not antisymmetric
        self.diagnostics["dropped_antisymmetric"] += float(antisymmetric)
        self._build_inverse()
        self.ready = True

    def _build_inverse(self) -> None:
        inp = self.inverse_inputs
        G, A = inp["G"], inp["A"]
        # The leading pair of an indefinite running target (G₂⊗A₂ can be indefinite) may have slightly indefinite
        # factors: project them onto the PSD cone before the damping shift, as for a single Kronecker product.
        Gd = _psd_part(G) + inp["shift_g"] * torch.eye(self.p, dtype=G.dtype, device=G.device)
        Ad = _psd_part(A) + inp["shift_a"] * torch.eye(self.r, dtype=A.dtype, device=A.device)
        C, D = (inp["C"], inp["D"]) if inp["use_second"] else (0.0, 0.0)
        self._solver = KronSumSolver(Gd, Ad, C, D, sign=+1, psd_floor=self.cfg["psd_floor"], refine=False)
        self.diagnostics["clipped"] = float(self._solver.n_clipped)

    def precondition(self, J: Tensor, thin: tuple[Tensor, Tensor, float] | None = None) -> Tensor:
        """``(G₁ᵈ ⊗ A₁ᵈ + G₂ ⊗ A₂)⁻¹ vec J``."""
        return self._solver.solve(J)

    def factors(self) -> list[tuple[Tensor, Tensor]]:
        """The current undamped pairs."""
        return list(self.pairs)

    def _state(self) -> dict:
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "kfac": dict(self.kfac),
            "inverse_inputs": dict(self.inverse_inputs),
        }

    def _load(self, state: dict) -> None:
        self.pairs = [tuple(pair) for pair in state["pairs"]]
        self.kfac = dict(state["kfac"])
        self.inverse_inputs = dict(state["inverse_inputs"])
        if self.ready:
            self._build_inverse()


# ---------------------------------------------------------------------------------------------------------------
# low-rank K-factor inverses (Puiu)
# ---------------------------------------------------------------------------------------------------------------


def lowrank_inverse_apply(U: Tensor, w: Tensor, damping: Tensor, X: Tensor) -> Tensor:
    """``(U diag(w) Uᵀ + λ I)⁻¹ X = U[(w + λ)⁻¹ − 1/λ](Uᵀ X) + X/λ``.

    Parameters
    ----------
    U : Tensor of shape (d, k)
        Orthonormal columns.
    w : Tensor of shape (k,)
        Eigenvalues (``w + λ > 0``).
    damping : Tensor of shape ()
        ``λ > 0``.
    X : Tensor of shape (d, m)

    Returns
    -------
    Tensor of shape (d, m)
    """
    coef = 1.0 / (w + damping) - 1.0 / damping
    return U @ (coef[:, None] * (U.T @ X)) + X / damping


class BrandFamily(Curvature):
    """Low-rank K-factors ``U diag(w) Uᵀ`` (RS-KFAC, B-KFAC, B-R-KFAC, B-KFAC-C; Puiu 2022)."""

    def __init__(self, approx: str, p: int, r: int, cfg: dict, *, seed: int = 0):
        super().__init__(approx, p, r, cfg)
        self.seed = seed
        self.dense: dict[str, Tensor] = {}  # exact running K-factors (not kept by pure B-KFAC)
        self.low: dict[str, Tensor] = {}  # "U_G", "w_G", "U_A", "w_A"
        self.inverse_inputs: dict[str, Any] = {}
        self.modes: dict[str, str] = {}  # side → "brand" or "rsvd"
        self.step = 0

    def _rank(self, d: int) -> int:
        rank = self.cfg["truncation_rank"]
        rank = rank(self.step) if callable(rank) else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"`truncation_rank` must be (or return) a positive int, got {rank!r}")
        return min(rank, d)

    def _columns(self, cap: LayerCapture) -> dict[str, Tensor]:
        """``M`` with ``M Mᵀ`` the batch K-factor: ``Gᵀ/√n`` and ``Aᵀ/√n`` (locations folded in for conv)."""
        G, A = cap.G, cap.A
        n = G.shape[0]
        if G.ndim == 3:
            T = A.shape[1]
            G, A = G.reshape(-1, G.shape[-1]), A.reshape(-1, A.shape[-1]) / math.sqrt(T)
        return {"G": G.T / math.sqrt(n), "A": A.T / math.sqrt(n)}

    def _randomized(self, side: str) -> None:
        """Top-``k`` EVD of the running factor: randomized (Halko et al.), or exact when the sketch would span it."""
        M = self.dense[side]
        d = M.shape[0]
        k = self._rank(d)
        if k + self.cfg["oversample"] >= d:  # the sketch is the whole space: the randomized EVD is an exact one
            w, U = symmetric_eigh(M)
            w, U = torch.flip(w, dims=(0,))[:k], torch.flip(U, dims=(1,))[:, :k]
        else:
            res = randomized_eigh(M, k, oversample=self.cfg["oversample"], seed=self.seed + 7919 * self.step)
            w, U = res.eigenvalues, res.eigenvectors
        self.low["U_" + side], self.low["w_" + side] = U, torch.clamp(w, min=0.0)

    def _brand_side(self, side: str, M: Tensor) -> bool:
        """Whether this side is Brand-updated: ``n_M < d`` (Puiu §3.5), fixed at the first update."""
        if side not in self.modes:
            brand = self.approx != "rs_kfac" and M.shape[1] < M.shape[0]
            self.modes[side] = "brand" if brand else "rsvd"
        return self.modes[side] == "brand"

    def update(self, cap: LayerCapture, decay: float) -> None:
        """Running K-factors and their low-rank representations (Puiu Alg. 1, 4, 5, 7)."""
        cols = self._columns(cap)
        brand_due = self.step % self.cfg["brand_every"] == 0
        for side in ("G", "A"):
            M = cols[side]
            brand = self._brand_side(side, M)
            if self.approx == "b_r_kfac" and brand and self.step % self.cfg["rsvd_every"] == 0 and self.step:
                self._randomized(side)  # Alg. 5: overwrite B_{k-1} by an RSVD of the running factor
            if not brand or self.approx != "b_kfac":
                batch = M @ M.T
                old = self.dense.get(side)
                self.dense[side] = batch if old is None or decay == 0 else decay * old + (1.0 - decay) * batch
            if brand and (brand_due or "U_" + side not in self.low):
                self._brand_update(side, M, decay)
        if self.approx == "b_kfac_c" and self.step % self.cfg["correct_every"] == 0:
            for side in ("G", "A"):
                if self.modes[side] != "brand":
                    continue
                U, w = self.low["U_" + side], self.low["w_" + side]
                n_correct = max(1, int(self.cfg["correct_fraction"] * U.shape[1]))
                res = brand_light_correction(U, w, self.dense[side], n_correct, seed=self.seed + 104729 * self.step)
                self.low["U_" + side], self.low["w_" + side] = res.eigenvectors, torch.clamp(res.eigenvalues, min=0.0)
        self.step += 1
        self.n_updates += 1

    def _brand_update(self, side: str, M: Tensor, decay: float) -> None:
        """Alg. 4: truncate to the rank, then ``U diag(w) Uᵀ ← ρ U diag(w) Uᵀ + (1 − ρ) M Mᵀ`` by Brand."""
        U = self.low.get("U_" + side)
        if U is None:
            U, w, decay = M.new_zeros((M.shape[0], 0)), M.new_zeros((0,)), 0.0
        else:
            k = self._rank(M.shape[0])
            U, w = U[:, :k], self.low["w_" + side][:k]
        res = brand_update_sym(U, w, math.sqrt(1.0 - decay) * M, decay=decay)
        self.low["U_" + side], self.low["w_" + side] = res.eigenvectors, torch.clamp(res.eigenvalues, min=0.0)

    def refresh(self, damping: float, context: dict | None = None) -> None:
        """Continue the spectra and split the damping by π (traces of the running factors, or of ``U diag(w) Uᵀ``)."""
        for side in ("G", "A"):
            if self.modes[side] == "rsvd":
                self._randomized(side)
        tr = {
            side: float(torch.trace(self.dense[side])) if side in self.dense else float(self.low["w_" + side].sum())
            for side in ("G", "A")
        }
        mean_g, mean_a = tr["G"] / self.p, tr["A"] / self.r
        pi = math.sqrt(mean_a / mean_g) if mean_g > 0 and mean_a > 0 else 1.0
        root = math.sqrt(damping)
        self.inverse_inputs = {"shift_G": root / pi, "shift_A": root * pi}
        for side in ("G", "A"):
            self.inverse_inputs["U_" + side] = self.low["U_" + side]
            self.inverse_inputs["w_" + side] = self.low["w_" + side]
        self.ready = True

    def _side(self, side: str) -> tuple[Tensor, Tensor, Tensor]:
        inp = self.inverse_inputs
        U, w = inp["U_" + side], inp["w_" + side]
        if w.shape[0] == 0:
            return U, w, torch.as_tensor(inp["shift_" + side], dtype=U.dtype, device=U.device)
        w2, lam = spectrum_continuation(w, inp["shift_" + side])
        if U.shape[1] == U.shape[0]:  # full rank: the tail is empty, nothing to continue
            w2, lam = w, torch.as_tensor(inp["shift_" + side], dtype=U.dtype, device=U.device)
        return U, w2, lam

    def precondition(self, J: Tensor, thin: tuple[Tensor, Tensor, float] | None = None) -> Tensor:
        """``Γ⁻¹ J Ā⁻¹`` with the low-rank inverses.

        With ``thin = (G, A, c)`` such that ``J = c·Gᵀ A`` (``G`` of shape (n, p), ``A`` of shape (n, r)) the thin
        factors are preconditioned first and multiplied once (Puiu Alg. 8): ``O((k + r)·(p + r)·n)`` instead of
        ``O(k·p·r)`` for the two sides plus the final ``p·n·r`` product.
        """
        Ug, wg, lg = self._side("G")
        Ua, wa, la = self._side("A")
        if thin is not None:
            G, A, c = thin
            left = lowrank_inverse_apply(Ug, wg, lg, G.T)  # (p, n)
            right = lowrank_inverse_apply(Ua, wa, la, A.T)  # (r, n)
            return (c * left) @ right.T
        X = lowrank_inverse_apply(Ug, wg, lg, J)
        return lowrank_inverse_apply(Ua, wa, la, X.T).T

    def _state(self) -> dict:
        return {
            "dense": dict(self.dense),
            "low": dict(self.low),
            "inverse_inputs": dict(self.inverse_inputs),
            "step": self.step,
            "modes": dict(self.modes),
        }

    def _load(self, state: dict) -> None:
        self.dense = dict(state["dense"])
        self.low = dict(state["low"])
        self.inverse_inputs = dict(state["inverse_inputs"])
        self.step = int(state["step"])
        self.modes = dict(state["modes"])


def make_curvature(approx: str, p: int, r: int, cfg: dict, *, is_conv: bool, seed: int) -> Curvature:
    """The curvature object for one layer.

    Parameters
    ----------
    approx : str
        One of :data:`APPROXIMATIONS`.
    p, r : int
        Factor sizes (output side, input side).
    cfg : dict
        Validated options.
    is_conv : bool
        Whether the layer has spatial locations (TKFAC's conv damping).
    seed : int
        Seed of this layer's randomized steps.

    Returns
    -------
    Curvature
    """
    if approx in SINGLE:
        return KronSingle(approx, p, r, cfg, is_conv=is_conv)
    if approx in RANK2:
        return KronRank2(approx, p, r, cfg)
    if approx in LOWRANK:
        return BrandFamily(approx, p, r, cfg, seed=seed)
    raise ValueError(f"`approx` must be one of {APPROXIMATIONS}, got {approx!r}")
