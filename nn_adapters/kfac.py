"""K-FAC as a ``torch.optim.Optimizer``: Martens & Grosse's complete update.

Each step of :class:`KFAC` does, on the minibatch of the closure:

1. **Statistics** (M&G §5).  The closure's forward pass records each supported
   layer's inputs ``ā``; a forward hook on the model then backpropagates the
   per-sample negative log-likelihood of targets *sampled from the model*
   (true Fisher) down to the layer outputs, giving ``g``.  The Kronecker
   factors ``G = E[g gᵀ]`` (output side) and ``A = E[ā āᵀ]`` (input side) —
   and, for the block-tridiagonal inverse, the cross moments
   ``G_{i,i+1} = E[g_i g_{i+1}ᵀ]``, ``A_{i,i+1} = E[ā_i ā_{i+1}ᵀ]`` of
   consecutive layers — are averaged with ``ε = min(1 − 1/k, factor_decay)``.
2. **Proposal** ``Δ = −F̂⁻¹ ∇h`` (§4.2, §4.3) with factored Tikhonov damping
   (§6.3) of strength ``γ`` (§6.6): each diagonal block is
   ``(G + (γ/π) I) ⊗ (A + πγ I)``, ``π`` the trace-norm split.
3. **Step** ``δ = α Δ + μ δ₀`` (§6.4, §7) with ``α, μ`` minimizing the
   quadratic model ``M(δ) = ½ δᵀ(F + (λ + η) I)δ + ∇hᵀδ`` built on the *exact*
   Fisher of the minibatch, whose quadratic forms come from Jacobian-vector
   products (App. C): ``uᵀ F v = mean_n (J_n u)ᵀ F_R (J_n v)``.
4. **Adaptation**: ``λ`` by the Levenberg–Marquardt rule every ``T1`` steps
   (§6.5), ``γ`` by trying ``{γ, ω₂γ, γ/ω₂}`` every ``T2`` steps (§6.6), the
   approximate inverse refreshed every ``T3`` steps (§8).

Conventions follow the design: row-major vec, ``W̄ = [W | b]``, factors in
the order (output side, input side), so a block acts on a matrix ``V`` of
shape ``(p, r)`` as ``(G ⊗ A) vec V = vec(G V Aᵀ)``.

References
----------
J. Martens and R. Grosse, "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML 2015 (arXiv:1503.05671).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from kronalg import KronSumSolver
from kronalg.solve import KronSumSolverWarning

from .capture import LOSSES, find_layers, make_rng
from .damping import symmetric_eigh, trace_norm_pi
from .layers import LayerAdapter
from .layers.linear import LinearAdapter, kfac_factor_sums
from .statistics import LOSS_REDUCTIONS, TrainingStatistics

__all__ = ["STRUCTURES", "KFAC", "minimize_quadratic_model"]

#: Structures of the approximate inverse Fisher.
STRUCTURES = ("block_diagonal", "block_tridiagonal")

#: LM thresholds on the reduction ratio ρ (M&G §6.5).
RHO_HIGH = 0.75
RHO_LOW = 0.25


_JVP_READY = False


def _prepare_jvp() -> None:
    """Import torch's forward-AD decompositions once, silencing their ``torch.jit.script`` deprecation warning.

    Forward AD loads them on its first use; in recent torch that import calls
    ``torch.jit.script`` and emits a ``DeprecationWarning`` users cannot act on.
    """
    global _JVP_READY
    if _JVP_READY:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except Exception:  # pragma: no cover - layout of torch internals changed; forward AD imports it itself
            pass
    _JVP_READY = True


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_positive_int(value: Any, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}")
    return int(value)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return value


def _check_real(value: Any, name: str, *, low: float, strict: bool) -> float:
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    bad = value <= low if strict else value < low
    if not math.isfinite(value) or bad:
        raise ValueError(f"`{name}` must be finite and {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def _check_bounds(value: Any, name: str) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_real(v) for v in value)):
        raise TypeError(f"`{name}` must be a pair (low, high) of numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"`{name}` must satisfy 0 < low <= high < inf, got {value!r}")
    return low, high


def minimize_quadratic_model(curvature: Any, grad_dots: Any) -> tuple[list[float], float]:
    """Minimize ``q(c) = ½ cᵀ C c + bᵀ c`` over the coefficients ``c`` of a few directions.

    ``C_jk = u_jᵀ (F + (λ + η) I) u_k`` and ``b_j = ∇hᵀ u_j`` for the directions
    ``u = (Δ, δ₀)`` give M&G's ``(α, μ)`` (§7), and ``u = (Δ,)`` the re-scaling
    ``α = −∇hᵀΔ / (ΔᵀFΔ + (λ+η)‖Δ‖²)`` (§6.4).  Solved in float64 on the host as
    ``c = −C⁺ b`` with a pseudo-inverse (eigenvalues below ``1e-12·max`` dropped),
    so a zero or repeated direction gets coefficient 0 instead of a NaN.

    Parameters
    ----------
    curvature : array_like of shape (k, k)
        Symmetric positive semi-definite ``C``.
    grad_dots : array_like of shape (k,)
        ``b``.

    Returns
    -------
    coefficients : list of float
        The minimizer ``c`` (``[α]`` or ``[α, μ]``).
    change : float
        ``q(c) = M(δ) − M(0) ≤ 0`` at the minimizer.

    Examples
    --------
    >>> c, change = minimize_quadratic_model([[2.0, 0.0], [0.0, 4.0]], [-2.0, 4.0])
    >>> c, change
    ([1.0, -1.0], -3.0)
    """
    C = np.asarray(curvature, dtype=np.float64)
    b = np.asarray(grad_dots, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or b.shape != (C.shape[0],):
        raise ValueError(f"`curvature` must be (k, k) and `grad_dots` (k,), got {C.shape} and {b.shape}")
    if not (np.all(np.isfinite(C)) and np.all(np.isfinite(b))):
        return [0.0] * b.shape[0], 0.0
    w, Q = np.linalg.eigh(0.5 * (C + C.T))
    keep = w > 1e-12 * max(float(np.max(np.abs(w))), np.finfo(np.float64).tiny)
    coef = -(Q[:, keep] @ ((Q[:, keep].T @ b) / w[keep]))
    change = float(0.5 * coef @ C @ coef + b @ coef)
    return [float(c) for c in coef], change


class _Layer:
    """One supported layer: its module, adapter and the names of its parameters."""

    __slots__ = ("adapter", "bias", "module", "name", "weight")

    def __init__(self, name: str, module: nn.Module, adapter: LayerAdapter, names: dict[int, str]):
        self.name = name
        self.module = module
        self.adapter = adapter
        self.weight = names[id(module.weight)]
        bias = getattr(module, "bias", None)
        self.bias = names[id(bias)] if isinstance(bias, Tensor) else None

    def to_matrix(self, vectors: dict[str, Tensor]) -> Tensor:
        bias = vectors[self.bias] if self.bias is not None else None
        return self.adapter.to_matrix(self.module, vectors[self.weight], bias)

    def from_matrix(self, matrix: Tensor, out: dict[str, Tensor]) -> None:
        weight, bias = self.adapter.from_matrix(self.module, matrix)
        out[self.weight] = weight.reshape(self.module.weight.shape)
        if self.bias is not None:
            out[self.bias] = bias


class KFAC(torch.optim.Optimizer):
    r"""K-FAC with Martens & Grosse's damping, re-scaling, momentum and adaptive ``λ``, ``γ``.

    The update is ``δ = α Δ + μ δ₀`` with ``Δ = −F̂⁻¹ ∇h`` (``F̂`` the damped
    K-FAC approximation, block-diagonal or block-tridiagonal inverse) and
    ``(α, μ) = argmin M(α Δ + μ δ₀)``, ``M(δ) = ½ δᵀ(F + (λ+η) I)δ + ∇hᵀδ`` with the
    exact minibatch Fisher ``F``.  ``h`` is the closure's loss plus ``(η/2)‖θ‖²``.

    Parameters
    ----------
    model : torch.nn.Module
        The network.  Every trainable parameter is optimized.  Its forward must
        return one tensor: logits of shape (n, C, ...) for ``"cross_entropy"``,
        predictions of shape (n, ...) for ``"mse"``.
    damping : float
        Initial Levenberg–Marquardt ``λ > 0``.  The default 150 is M&G's (they
        advise erring on the large side); it changes by ``ω₁ = (19/20)^T1`` every
        ``T1`` steps, i.e. at most 19/20 per step, so it takes ~25 steps to fall by
        a factor 3.6.  For a mean-reduced loss on a small model the Fisher is O(1)
        or smaller and 1e-2 to 1 gets going at once.
    loss : {"cross_entropy", "mse"}
        The likelihood behind the closure's loss: categorical on logits, or unit
        Gaussian with per-sample loss ``½‖y − f(x)‖²`` (output Fisher ``F_R = I``).
    loss_reduction : {"mean", "sum"}
        How the closure's loss reduces over the batch.  The Fisher is that of the
        per-sample NLL averaged over the batch (``"mean"``), multiplied by the
        batch size for ``"sum"``, so that ``M`` is the model of the closure's loss.
        For ``"mse"`` the closure must compute ``½ Σ_outputs (f − y)²`` per sample
        (``F.mse_loss`` divides by the output size and drops the ½: its gradient
        is ``2/d`` times the one the Fisher describes).
    structure : {"block_diagonal", "block_tridiagonal"}
        The approximate inverse (M&G §4.2 or §4.3).  Tridiagonal coupling is used
        inside *chains*: maximal runs of ``nn.Linear`` layers that are consecutive
        in forward execution order among the supported layers, see 2-D inputs
        (``T = 1``) and the same number of rows.  Other layers (Conv2d, sequence inputs, isolated Linear) use the
        block-diagonal inverse.
    factor_decay : float
        Cap on the EMA weight of the old factors, ``ε = min(1 − 1/k, factor_decay)``,
        ``0 <= factor_decay < 1``.
    T1 : int
        λ adaptation interval (``ω₁ = (19/20)^T1``).
    T2 : int
        γ adaptation interval (``ω₂ = sqrt(19/20)^T2``).
    T3 : int
        Refresh interval of the approximate inverse (also refreshed at steps 1–3 and
        at every γ adaptation step).
    momentum : bool
        Use ``μ δ₀`` (§7); needs ``rescale=True``.
    rescale : bool
        Choose ``α`` from the exact-Fisher model (§6.4).  ``False`` takes ``δ = Δ``
        (``α = 1``, ``μ = 0``): plain factored-damping K-FAC, where ``γ`` alone
        sets the step length.
    adapt_damping : bool
        Levenberg–Marquardt ``λ`` (§6.5); costs one more closure call every ``T1`` steps.
    adapt_gamma : bool
        Greedy ``γ`` (§6.6); costs two more inverses and JVPs every ``T2`` steps.
    weight_decay : float
        ``η >= 0``: ``(η/2)‖θ‖²`` (all parameters, biases included) is added to the
        objective and ``η I`` to the curvature; ``γ`` starts at ``sqrt(λ + η)``.
        Read from ``param_groups[0]["weight_decay"]`` at every step.
    max_update_norm : float or None
        If given, ``δ`` is scaled down to this Euclidean norm when longer.
    damping_bounds : tuple of float
        ``λ`` is clipped to ``[low, high]``.
    gamma_bounds : tuple of float
        ``γ`` is clipped to ``[low, high]``.
    seed : int, numpy.random.Generator or None
        Source of the sampled targets (NumPy draws, as in
        :func:`nn_adapters.sample_targets`); its state is saved in ``state_dict``.

    Attributes
    ----------
    damping : float
        The current ``λ``.
    gamma : float
        The current ``γ``.
    info : dict
        Diagnostics of the last step: ``step``, ``loss``, ``alpha``, ``mu``,
        ``model_change`` (``M(δ) − M(0)``, NaN when no model was needed), ``rho``
        (None off λ steps), ``damping`` and ``gamma`` (after adaptation),
        ``gamma_candidates``, ``refreshed`` (inverse rebuilt), ``update_norm``
        ``‖δ‖₂`` and ``tridiagonal_fallbacks`` (running count).
    unsupported : list of (str, str)
        Modules with trainable parameters but no adapter, with the reason.

    Raises
    ------
    TypeError
        For a non-module ``model`` or arguments of the wrong kind.
    ValueError
        For out-of-range arguments, ``momentum=True`` with ``rescale=False``, or a
        model without trainable parameters.

    Notes
    -----
    *Using it.*  ``step`` needs a closure (zero the grads, forward, ``loss.backward()``,
    return the loss).  A forward hook on ``model`` remembers the inputs of the
    closure's forward passes (for the JVPs) and runs the sampled-target backward
    to the layer outputs (graph retained, ``.grad`` untouched) right after each
    one.  When λ is adapted, the closure is called a second time at ``θ + δ``
    with statistics off; ``.grad`` is restored afterwards, so after ``step``
    it holds the gradient of the closure's loss at the old ``θ``.

    *Parameters without a block* (modules with no adapter, parameters owned by
    containers): their proposal is ``−∇h/γ²``, what a K-FAC block with zero
    statistics gives, and they take part in the exact-Fisher model and get the
    same ``α, μ`` as everything else.

    *Block-tridiagonal inverse.*  With damped diagonal factors
    ``G_i ← G_i + (γ/π_i) I``, ``A_i ← A_i + π_i γ I`` (the cross moments are not
    damped), ``Ψ_{i,i+1} = Ψ^G ⊗ Ψ^A``, ``Ψ^G = G_{i,i+1} G_{i+1}⁻¹``,
    ``Ψ^A = A_{i,i+1} A_{i+1}⁻¹``, and
    ``Σ_{i|i+1} = G_i ⊗ A_i − (Ψ^G G_{i+1} Ψ^Gᵀ) ⊗ (Ψ^A A_{i+1} Ψ^Aᵀ)``, inverted with
    :class:`kronalg.KronSumSolver` (``sign=−1``); ``F̂⁻¹ = Ξᵀ Λ Ξ`` is applied by one
    backward and one forward substitution along the chain.  ``Σ_{i|i+1}`` is a
    Schur complement of a damped PSD matrix, so it is positive definite in exact
    arithmetic; if the solver still declares it not positive definite (float32,
    extreme conditioning) or a solve is inaccurate, that chain falls back to the
    block-diagonal inverse and ``info["tridiagonal_fallbacks"]`` counts it.

    *Cost.*  Per step: the closure, one sampled-target backward to the layer
    outputs, one JVP forward pass per direction (``Δ``, plus ``δ₀`` with
    momentum; one more ``Δ`` per extra γ candidate on γ steps), and a second
    closure call on λ steps.  Inverses: two symmetric eigendecompositions per
    layer per refresh (block-diagonal, reused for every γ candidate); the
    tridiagonal inverse adds a Cholesky per factor and a generalized
    eigendecomposition per factor pair for each γ.

    *Where the pieces help* (30 full-batch steps on a 6-16-3 tanh MLP with a
    teacher, best initial λ of a small grid; ``docs/kfac_optimizer.md``).
    Re-scaling plus momentum carry the method: cross-entropy 0.21 with both,
    0.52 with re-scaling only, 0.78 for plain factored damping at its best fixed
    ``γ`` (smaller ``γ`` diverges), against 0.51 for SGD with momentum at its
    best learning rate.  Adaptive λ and γ made no measurable difference over 30
    steps (0.22 with both fixed); they are what keeps a long run safe without
    tuning, at the price of one extra closure call every ``T1`` steps.  The
    tridiagonal inverse gave no gain on this one-hidden-layer network.  Prefer
    plain damping (``rescale=False, momentum=False``, adaptation off) only where
    the exact-Fisher JVPs are unavailable or misleading: models whose forward
    is not ``torch.func``-transformable, dropout or batch statistics that make
    the minibatch Fisher inconsistent with the closure's loss.

    *Caveats.*  Samples must not interact in the forward pass; dropout in train
    mode makes each JVP forward draw its own mask; BatchNorm buffers are not
    updated by the JVP passes (they run on copies).

    References
    ----------
    J. Martens and R. Grosse, "Optimizing neural networks with Kronecker-factored
    approximate curvature", ICML 2015.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> opt = KFAC(model, damping=1.0, seed=0)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.cross_entropy(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> first = opt.step(closure).item()
    >>> for _ in range(9):
    ...     last = opt.step(closure).item()
    >>> last < first
    True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = 150.0,
        loss: str = "cross_entropy",
        loss_reduction: str = "mean",
        structure: str = "block_diagonal",
        factor_decay: float = 0.95,
        T1: int = 5,
        T2: int = 20,
        T3: int = 20,
        momentum: bool = True,
        rescale: bool = True,
        adapt_damping: bool = True,
        adapt_gamma: bool = True,
        weight_decay: float = 1e-5,
        max_update_norm: float | None = None,
        damping_bounds: tuple[float, float] = (1e-8, 1e8),
        gamma_bounds: tuple[float, float] = (1e-4, 1e4),
        seed: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        damping = _check_real(damping, "damping", low=0.0, strict=True)
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
        if not isinstance(loss_reduction, str) or loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"`loss_reduction` must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if not isinstance(structure, str) or structure not in STRUCTURES:
            raise ValueError(f"`structure` must be one of {STRUCTURES}, got {structure!r}")
        factor_decay = _check_real(factor_decay, "factor_decay", low=0.0, strict=False)
        if factor_decay >= 1.0:
            raise ValueError(f"`factor_decay` must be in [0, 1), got {factor_decay!r}")
        self.T1 = _check_positive_int(T1, "T1")
        self.T2 = _check_positive_int(T2, "T2")
        self.T3 = _check_positive_int(T3, "T3")
        self.momentum = _check_bool(momentum, "momentum")
        self.rescale = _check_bool(rescale, "rescale")
        self.adapt_damping = _check_bool(adapt_damping, "adapt_damping")
        self.adapt_gamma = _check_bool(adapt_gamma, "adapt_gamma")
        if momentum and not rescale:
            raise ValueError("`momentum=True` needs `rescale=True` (μ comes from the exact-Fisher model)")
        weight_decay = _check_real(weight_decay, "weight_decay", low=0.0, strict=False)
        if max_update_norm is not None:
            max_update_norm = _check_real(max_update_norm, "max_update_norm", low=0.0, strict=True)
        self.damping_bounds = _check_bounds(damping_bounds, "damping_bounds")
        self.gamma_bounds = _check_bounds(gamma_bounds, "gamma_bounds")
        self._rng = make_rng(seed)

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("`model` has no trainable parameters")
        super().__init__([p for _, p in named], {"weight_decay": weight_decay})
        self._model = model
        self._named = named
        self.loss = loss
        self.loss_reduction = loss_reduction
        self.structure = structure
        self.factor_decay = factor_decay
        self.max_update_norm = max_update_norm
        self.omega1 = (19.0 / 20.0) ** self.T1
        self.omega2 = math.sqrt(19.0 / 20.0) ** self.T2

        names = {id(p): n for n, p in named}
        found, self.unsupported = find_layers(model)
        self._layers = {name: _Layer(name, m, a, names) for name, (m, a) in found.items()}
        covered = {q for layer in self._layers.values() for q in (layer.weight, layer.bias) if q is not None}
        self._loose = [n for n, _ in named if n not in covered]
        self._stats = TrainingStatistics(found, fisher="sampled", loss_reduction=loss_reduction, record_in_eval=True)
        self._hook = model.register_forward_hook(self._root_hook, with_kwargs=True)

        # Global state (saved by state_dict).
        self._step = 0
        self._lambda = damping
        self._gamma = self._clip_gamma(math.sqrt(damping + weight_decay))
        self._factors: dict[str, dict[str, Any]] = {}
        self._cross: dict[tuple[str, str], dict[str, Any]] = {}
        self._chains: list[list[str]] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._fallbacks = 0
        # Derived caches (rebuilt from the snapshot).
        self._eig: dict[str, tuple[Tensor, Tensor, Tensor, Tensor, float]] | None = None
        self._tri: dict[float, list[Any]] = {}
        # Per-step transients.
        self._recording = False
        self._batches: list[tuple[tuple, dict, int]] = []
        self.info: dict[str, Any] = {}
        self._initialized = True

    # ------------------------------------------------------------------ properties
    @property
    def damping(self) -> float:
        """The current Levenberg–Marquardt ``λ``."""
        return self._lambda

    @property
    def gamma(self) -> float:
        """The current factored-damping strength ``γ``."""
        return self._gamma

    @property
    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Running K-FAC factors ``(G, A)`` of each layer (per-sample scale, no damping)."""
        return {name: (f["G"], f["A"]) for name, f in self._factors.items()}

    @property
    def cross_factors(self) -> dict[tuple[str, str], tuple[Tensor, Tensor]]:
        """Running cross moments ``(G_{i,i+1}, A_{i,i+1})`` of consecutive chain layers (tridiagonal only)."""
        return {pair: (f["G"], f["A"]) for pair, f in self._cross.items()}

    @property
    def chains(self) -> list[list[str]]:
        """Chains of Linear layers coupled by the block-tridiagonal inverse (empty for block-diagonal)."""
        return [list(c) for c in (self._chains or []) if len(c) > 1]

    # ------------------------------------------------------------------ torch.optim plumbing
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only used by the constructor: KFAC owns all of the model's trainable parameters.

        Parameters
        ----------
        param_group : dict
            The single group.

        Raises
        ------
        ValueError
            When called after construction.
        """
        if getattr(self, "_initialized", False):
            raise ValueError("KFAC optimizes all trainable parameters of its model; it takes no extra param groups")
        super().add_param_group(param_group)

    def remove(self) -> None:
        """Remove the hooks from the model (the optimizer can no longer step)."""
        self._hook.remove()
        self._stats.remove()

    def __repr__(self) -> str:
        unsupported = ", ".join(f"{n or '<root>'!r}" for n, _ in self.unsupported) or "none"
        return (
            f"KFAC(structure={self.structure!r}, loss={self.loss!r}, damping={self._lambda:.4g}, "
            f"gamma={self._gamma:.4g}, weight_decay={self.param_groups[0]['weight_decay']:g}, "
            f"momentum={self.momentum}, rescale={self.rescale}, T1={self.T1}, T2={self.T2}, T3={self.T3}, "
            f"step={self._step}, layers={list(self._layers)}, chains={self.chains}, unsupported=[{unsupported}])"
        )

    # ------------------------------------------------------------------ hooks
    def _root_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._recording:
            return
        if not isinstance(output, Tensor):
            raise TypeError(f"KFAC needs the model to return one tensor, got {type(output).__name__}")
        detach = lambda v: v.detach() if isinstance(v, Tensor) else v  # noqa: E731
        self._batches.append(
            (tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()}, output.shape[0])
        )
        if output.requires_grad:
            self._stats.record_sampled(output, self.loss, self._rng)

    # ------------------------------------------------------------------ vectors
    def _params(self) -> dict[str, Tensor]:
        return {n: p for n, p in self._named}

    @staticmethod
    def _dot(u: dict[str, Tensor], v: dict[str, Tensor]) -> float:
        return float(sum((u[k] * v[k]).sum() for k in u))

    def _curvature_scale(self) -> float:
        n = sum(b[2] for b in self._batches)
        return float(n) if self.loss_reduction == "sum" else 1.0

    # ------------------------------------------------------------------ statistics
    def _update_factors(self, captures: dict[str, Any]) -> None:
        decay = self.factor_decay

        def ema(store: dict, key: Any, G: Tensor, A: Tensor) -> None:
            old = store.get(key)
            count = 1 if old is None else old["count"] + 1
            eps = min(1.0 - 1.0 / count, decay)
            if old is not None:
                G = eps * old["G"] + (1.0 - eps) * G
                A = eps * old["A"] + (1.0 - eps) * A
            store[key] = {"G": G, "A": A, "count": count}

        for name, cap in captures.items():
            n = cap.A.shape[0]
            G, A = kfac_factor_sums(cap.G, cap.A)
            ema(self._factors, name, 0.5 * (G + G.T) / n, 0.5 * (A + A.T) / n)
        if self._chains is None:
            self._chains = self._find_chains(captures)
        for chain in self._chains:
            for a, b in itertools.pairwise(chain):
                ca, cb = captures.get(a), captures.get(b)
                if ca is None or cb is None or ca.A.shape[0] != cb.A.shape[0]:
                    continue
                n = ca.A.shape[0]
                ema(self._cross, (a, b), ca.G.T @ cb.G / n, ca.A.T @ cb.A / n)

    def _find_chains(self, captures: dict[str, Any]) -> list[list[str]]:
        if self.structure != "block_tridiagonal":
            return []
        chains: list[list[str]] = []
        current: list[str] = []
        for name, cap in captures.items():
            ok = isinstance(self._layers[name].adapter, LinearAdapter) and cap.A.ndim == 2 and cap.G.ndim == 2
            if ok and current and captures[current[-1]].A.shape[0] == cap.A.shape[0]:
                current.append(name)
                continue
            if len(current) > 1:
                chains.append(current)
            current = [name] if ok else []
        if len(current) > 1:
            chains.append(current)
        return chains

    def _take_snapshot(self) -> None:
        s = self._curvature_scale()
        self._snapshot = {
            "step": self._step,
            "factors": {name: {"G": f["G"] * s, "A": f["A"]} for name, f in self._factors.items()},
            "cross": {pair: {"G": f["G"] * s, "A": f["A"]} for pair, f in self._cross.items()},
        }
        self._eig = None
        self._tri = {}

    # ------------------------------------------------------------------ inverse
    def _eigen(self) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor, float]]:
        if self._eig is None:
            self._eig = {}
            for name, f in self._snapshot["factors"].items():
                G, A = f["G"], f["A"]
                eG, QG = symmetric_eigh(G)
                eA, QA = symmetric_eigh(A)
                self._eig[name] = (QG, eG.clamp_min(0), QA, eA.clamp_min(0), trace_norm_pi(G, A))
        return self._eig

    def _block_solve(self, name: str, V: Tensor, gamma: float) -> Tensor:
        """``(G + (γ/π) I)⁻¹ V (A + πγ I)⁻¹`` from the eigendecompositions of the snapshot factors."""
        QG, eG, QA, eA, pi = self._eigen()[name]
        den = (eG + gamma / pi)[:, None] * (eA + gamma * pi)[None, :]
        return QG @ ((QG.T @ V @ QA) / den) @ QA.T

    def _damped(self, name: str, gamma: float) -> tuple[Tensor, Tensor]:
        f = self._snapshot["factors"][name]
        pi = self._eigen()[name][4]
        G, A = f["G"], f["A"]
        eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        return G + (gamma / pi) * eye_g, A + (gamma * pi) * eye_a

    @staticmethod
    def _regression(S_damped: Tensor, S_cross: Tensor) -> tuple[Tensor, Tensor]:
        """``Ψ = S_c S⁻¹`` and ``Ψ S Ψᵀ = S_c S⁻¹ S_cᵀ`` (symmetric by construction) for SPD ``S``."""
        L = torch.linalg.cholesky(S_damped)
        X = torch.linalg.solve_triangular(L, S_cross.T, upper=False)
        C = X.T @ X
        psi = torch.cholesky_solve(S_cross.T, L).T
        return psi, 0.5 * (C + C.T)

    def _chain_plans(self, gamma: float) -> list[Any]:
        if gamma in self._tri:
            return self._tri[gamma]
        plans: list[Any] = []
        for chain in self._chains or []:
            if len(chain) < 2:
                continue
            snap = self._snapshot
            if any(n not in snap["factors"] for n in chain) or any(
                (a, b) not in snap["cross"] for a, b in itertools.pairwise(chain)
            ):
                plans.append((chain, None))
                continue
            try:
                links = []
                damped = [self._damped(n, gamma) for n in chain]
                for i, (a, b) in enumerate(itertools.pairwise(chain)):
                    cross = snap["cross"][(a, b)]
                    psi_g, c_g = self._regression(damped[i + 1][0], cross["G"])
                    psi_a, c_a = self._regression(damped[i + 1][1], cross["A"])
                    with warnings.catch_warnings():
                        warnings.simplefilter("error", KronSumSolverWarning)
                        solver = KronSumSolver(damped[i][0], damped[i][1], c_g, c_a, sign=-1)
                    links.append((psi_g, psi_a, solver))
                plans.append((chain, links))
            except (ValueError, KronSumSolverWarning, torch.linalg.LinAlgError):
                self._fallbacks += 1
                plans.append((chain, None))
        self._tri[gamma] = plans
        return plans

    def _chain_solve(self, chain: list[str], links: list[Any], V: list[Tensor], gamma: float) -> list[Tensor] | None:
        """``Ξᵀ Λ Ξ V`` along one chain (M&G §4.3), ``None`` if a conditional solve is inaccurate."""
        m = len(chain)
        W = [V[i] - links[i][0] @ V[i + 1] @ links[i][1].T for i in range(m - 1)] + [V[-1]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", KronSumSolverWarning)
                Z = [links[i][2].solve(W[i]) for i in range(m - 1)]
        except KronSumSolverWarning:
            return None
        Z.append(self._block_solve(chain[-1], W[-1], gamma))
        return [Z[0]] + [Z[i] - links[i - 1][0].T @ Z[i - 1] @ links[i - 1][1] for i in range(1, m)]

    def _precondition(self, vectors: dict[str, Tensor], gamma: float) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        mats = {name: layer.to_matrix(vectors) for name, layer in self._layers.items()}
        done: set[str] = set()
        if self.structure == "block_tridiagonal":
            for chain, links in self._chain_plans(gamma):
                if links is None:
                    continue
                U = self._chain_solve(chain, links, [mats[n] for n in chain], gamma)
                if U is None:
                    self._fallbacks += 1
                    continue
                for n, u in zip(chain, U):
                    self._layers[n].from_matrix(u, out)
                    done.add(n)
        factors = self._snapshot["factors"]
        for name, layer in self._layers.items():
            if name in done:
                continue
            if name in factors:
                layer.from_matrix(self._block_solve(name, mats[name], gamma), out)
            else:  # no statistics yet: the block of zero factors, γ² I
                layer.from_matrix(mats[name] / gamma**2, out)
        for name in self._loose:
            out[name] = vectors[name] / gamma**2
        return {name: out[name] for name in vectors}  # the input's key order (torch.func needs equal structures)

    def precondition(self, vectors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Apply the current damped approximate inverse: ``F̂⁻¹ v`` (``v/γ²`` for parameters without a block).

        Parameters
        ----------
        vectors : dict
            Parameter name (as in ``model.named_parameters()``) → Tensor of the
            parameter's shape, for every trainable parameter.

        Returns
        -------
        dict
            Parameter name → Tensor of the parameter's shape.

        Raises
        ------
        RuntimeError
            Before the first step (no statistics).
        ValueError
            If a parameter is missing or has the wrong shape.
        """
        if self._snapshot is None:
            raise RuntimeError("KFAC.precondition needs statistics: call step(closure) first")
        for name, p in self._named:
            if name not in vectors or tuple(vectors[name].shape) != tuple(p.shape):
                raise ValueError(f"`vectors` must map {name!r} to a tensor of shape {tuple(p.shape)}")
        return self._precondition(vectors, self._gamma)

    # ------------------------------------------------------------------ exact Fisher
    def _output_jvps(self, tangents: list[dict[str, Tensor]]) -> list[tuple[Tensor, list[Tensor]]]:
        _prepare_jvp()
        primals = {n: p.detach() for n, p in self._named}
        results = []
        with torch.no_grad():
            for args, kwargs, _ in self._batches:
                buffers = {n: b.clone() for n, b in self._model.named_buffers()}

                def f(params: dict[str, Tensor], args: tuple = args, kwargs: dict = kwargs, buffers: dict = buffers):
                    return functional_call(self._model, {**params, **buffers}, args, kwargs)

                out, jvs = None, []
                for t in tangents:
                    out, jv = jvp(f, (primals,), (t,))
                    jvs.append(jv)
                results.append((out, jvs))
        return results

    def _fisher_form(self, jvps: list[tuple[Tensor, list[Tensor]]], i: int, j: int) -> float:
        """``u_iᵀ F u_j`` from the stored ``J u`` (mean over samples, times the curvature scale)."""
        total = 0.0
        n = 0
        for out, jvs in jvps:
            u, v = jvs[i], jvs[j]
            if self.loss == "cross_entropy":
                p = torch.softmax(out, dim=1)
                value = (p * u * v).sum() - ((p * u).sum(dim=1) * (p * v).sum(dim=1)).sum()
            else:
                value = (u * v).sum()
            total += float(value)
            n += out.shape[0]
        return total * self._curvature_scale() / max(n, 1)

    def fisher_gram(self, directions: list[dict[str, Tensor]]) -> Tensor:
        """``[u_iᵀ F u_j]``: the exact Fisher of the last step's minibatch between directions, by JVPs.

        ``uᵀ F v = (s/N) Σ_n (J_n u)ᵀ F_R (J_n v)``, ``F_R = diag(p) − p pᵀ`` (softmax
        ``p``) for cross-entropy and ``I`` for mse, ``s = N`` for ``loss_reduction="sum"``
        and 1 for ``"mean"``.  No damping is included.

        Parameters
        ----------
        directions : list of dict
            Each maps every trainable parameter's name to a tensor of its shape.

        Returns
        -------
        Tensor of shape (k, k), float64
            The Gram matrix.

        Raises
        ------
        RuntimeError
            Before the first step (no remembered minibatch).
        """
        if not self._batches:
            raise RuntimeError("KFAC.fisher_gram needs a remembered minibatch: call step(closure) first")
        jvps = self._output_jvps(directions)
        k = len(directions)
        gram = torch.zeros(k, k, dtype=torch.float64)
        for i in range(k):
            for j in range(i, k):
                gram[i, j] = gram[j, i] = self._fisher_form(jvps, i, j)
        return gram

    # ------------------------------------------------------------------ the step
    def _clip_gamma(self, gamma: float) -> float:
        low, high = self.gamma_bounds
        return min(max(gamma, low), high)

    def _run_closure(self, closure: Callable[[], Any], *, record: bool) -> tuple[Any, float]:
        self._recording = record
        self._stats.armed = record
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self._recording = False
            self._stats.armed = False
        if isinstance(loss, Tensor) and loss.numel() == 1:
            value = float(loss.detach())
        elif _is_real(loss):
            value = float(loss)
        else:
            raise TypeError(f"the closure must return the loss (a scalar tensor or number), got {type(loss).__name__}")
        return loss, value

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One K-FAC update on the closure's minibatch.

        Parameters
        ----------
        closure : callable
            Zeroes the gradients, runs the model on the minibatch, calls
            ``loss.backward()`` and returns the loss.  Required: it supplies the
            inputs for the statistics and JVPs, and ``h(θ + δ)`` for ``λ``.

        Returns
        -------
        Tensor or float
            The closure's loss at the parameters before the update.

        Raises
        ------
        TypeError
            If ``closure`` is None or not callable, or returns no scalar loss.
        RuntimeError
            If the closure did not run the model's forward pass.
        """
        if closure is None:
            raise TypeError("KFAC.step needs a `closure` (zero_grad, forward, loss.backward(), return loss)")
        if not callable(closure):
            raise TypeError(f"`closure` must be callable, got {type(closure).__name__}")
        eta = float(self.param_groups[0]["weight_decay"])
        self._batches = []
        self._stats.clear()
        loss, loss_value = self._run_closure(closure, record=True)
        if not self._batches:
            raise RuntimeError("the closure did not run the model's forward pass (KFAC hooks the model)")
        captures = self._stats.pop()
        self._step += 1
        k = self._step
        self._update_factors(captures)

        params = self._params()
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) + eta * p for n, p in params.items()}
        gamma_step = self.adapt_gamma and k % self.T2 == 0
        refreshed = self._snapshot is None or k <= 3 or k % self.T3 == 0 or gamma_step
        if refreshed:
            self._take_snapshot()
        candidates = [self._gamma]
        if gamma_step:
            for g in (self._clip_gamma(self.omega2 * self._gamma), self._clip_gamma(self._gamma / self.omega2)):
                if g not in candidates:
                    candidates.append(g)

        prev = None
        if self.momentum and all("prev_update" in self.state[p] for p in params.values()):
            prev = {n: self.state[p]["prev_update"] for n, p in params.items()}
        need_model = self.rescale or self.adapt_damping or len(candidates) > 1
        shift = self._lambda + eta

        best = None
        prev_jvps = self._output_jvps([prev]) if (prev is not None and need_model) else None
        for gamma in candidates:
            delta = {n: -v for n, v in self._precondition(grads, gamma).items()}
            dirs = [delta] if prev is None else [delta, prev]
            coef, change = [1.0] + [0.0] * (len(dirs) - 1), float("nan")
            if need_model:
                jvps = self._output_jvps([delta])
                if prev_jvps is not None:
                    jvps = [(out, jv + pj[1]) for (out, jv), pj in zip(jvps, prev_jvps)]
                C = np.empty((len(dirs), len(dirs)))
                for i in range(len(dirs)):
                    for j in range(i, len(dirs)):
                        C[i, j] = C[j, i] = self._fisher_form(jvps, i, j) + shift * self._dot(dirs[i], dirs[j])
                b = np.array([self._dot(grads, d) for d in dirs])
                if self.rescale:
                    coef, change = minimize_quadratic_model(C, b)
                else:
                    change = 0.5 * float(C[0, 0]) + float(b[0])
            score = change if math.isfinite(change) else math.inf
            if best is None or score < best[0]:
                best = (score, change, gamma, coef, dirs, C if need_model else None, b if need_model else None)

        _, change, gamma, coef, dirs, C, b = best
        self._gamma = gamma
        update = {n: sum(c * d[n] for c, d in zip(coef, dirs) if c != 0.0) for n in params}
        update = {n: (u if isinstance(u, Tensor) else torch.zeros_like(params[n])) for n, u in update.items()}
        norm = math.sqrt(self._dot(update, update))
        if self.max_update_norm is not None and norm > self.max_update_norm:
            c = self.max_update_norm / norm
            update = {n: c * u for n, u in update.items()}
            coef = [c * x for x in coef]
            norm = self.max_update_norm
            if C is not None:
                cv = np.asarray(coef)
                change = float(0.5 * cv @ C @ cv + b @ cv)

        lambda_step = self.adapt_damping and k % self.T1 == 0
        sq_before = self._dot(params, params) if lambda_step and eta > 0 else 0.0
        for n, p in params.items():
            p.add_(update[n])
            if self.momentum:
                self.state[p]["prev_update"] = update[n]

        rho = None
        if lambda_step and math.isfinite(change) and change < 0:
            saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in params.items()}
            try:
                _, new_value = self._run_closure(closure, record=False)
            finally:
                for n, p in params.items():
                    p.grad = saved[n]
            sq_after = self._dot(params, params) if eta > 0 else 0.0
            rho = (new_value - loss_value + 0.5 * eta * (sq_after - sq_before)) / change
            if not math.isfinite(rho):
                rho = -math.inf
            low, high = self.damping_bounds
            if rho > RHO_HIGH:
                self._lambda = max(low, self.omega1 * self._lambda)
            elif rho < RHO_LOW:
                self._lambda = min(high, self._lambda / self.omega1)

        self.info = {
            "step": k,
            "loss": loss_value,
            "alpha": coef[0],
            "mu": coef[1] if len(coef) > 1 else 0.0,
            "model_change": change,
            "rho": rho,
            "damping": self._lambda,
            "gamma": self._gamma,
            "gamma_candidates": candidates,
            "refreshed": refreshed,
            "update_norm": norm,
            "tridiagonal_fallbacks": self._fallbacks,
        }
        return loss

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state, loadable with ``torch.load(..., weights_only=True)``.

        Holds the base ``state`` (each parameter's previous update ``δ₀``) and
        ``param_groups``, plus ``"kfac"``: step counter, ``λ``, ``γ``, the running
        factors and cross moments with their counts, the factors the current
        inverse was built from, the chains, the fallback counter and the
        target sampler's state (a JSON string).

        Returns
        -------
        dict
        """
        state = super().state_dict()

        def pack(store: dict) -> dict:
            return {name: dict(f) for name, f in store.items()}

        def pack_cross(store: dict) -> list:
            return [{"pair": list(pair), **f} for pair, f in store.items()]

        snapshot: dict[str, Any] = {}
        if self._snapshot is not None:
            snapshot = {
                "step": self._snapshot["step"],
                "factors": pack(self._snapshot["factors"]),
                "cross": pack_cross(self._snapshot["cross"]),
            }
        rng_state = json.dumps(self._rng.bit_generator.state, default=lambda o: np.asarray(o).tolist())
        state["kfac"] = {
            "step": self._step,
            "damping": self._lambda,
            "gamma": self._gamma,
            "fallbacks": self._fallbacks,
            "structure": self.structure,
            "loss": self.loss,
            "has_chains": self._chains is not None,
            "chains": [list(c) for c in (self._chains or [])],
            "factors": pack(self._factors),
            "cross": pack_cross(self._cross),
            "snapshot": snapshot,
            "rng": rng_state,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (tensors moved to the parameters' device and dtype).

        Parameters
        ----------
        state_dict : dict
            From :meth:`state_dict` of a KFAC on the same architecture.

        Raises
        ------
        ValueError
            If the ``"kfac"`` entry is missing or was saved with another
            ``structure``/``loss`` or for other layers.
        """
        if not isinstance(state_dict, dict) or "kfac" not in state_dict:
            raise ValueError("`state_dict` has no 'kfac' entry; it was not saved by KFAC.state_dict()")
        state_dict = dict(state_dict)
        kf = state_dict.pop("kfac")
        for key in ("structure", "loss"):
            if kf[key] != getattr(self, key):
                raise ValueError(
                    f"`state_dict` was saved with {key}={kf[key]!r}, this optimizer has {getattr(self, key)!r}"
                )
        unknown = set(kf["factors"]) - set(self._layers)
        if unknown:
            raise ValueError(f"`state_dict` has factors for layers this model lacks: {sorted(unknown)}")
        super().load_state_dict(state_dict)

        def ref(name: str) -> Tensor:
            return self._layers[name].module.weight

        def unpack(store: dict, counts: bool) -> dict:
            out = {}
            for name, f in store.items():
                r = ref(name)
                entry = {"G": f["G"].to(device=r.device, dtype=r.dtype), "A": f["A"].to(device=r.device, dtype=r.dtype)}
                if counts:
                    entry["count"] = int(f["count"])
                out[name] = entry
            return out

        def unpack_cross(items: list, counts: bool) -> dict:
            out = {}
            for f in items:
                a, b = f["pair"]
                r = ref(a)
                entry = {"G": f["G"].to(device=r.device, dtype=r.dtype), "A": f["A"].to(device=r.device, dtype=r.dtype)}
                if counts:
                    entry["count"] = int(f["count"])
                out[(a, b)] = entry
            return out

        self._step = int(kf["step"])
        self._lambda = float(kf["damping"])
        self._gamma = float(kf["gamma"])
        self._fallbacks = int(kf["fallbacks"])
        self._chains = [list(c) for c in kf["chains"]] if kf["has_chains"] else None
        self._factors = unpack(kf["factors"], True)
        self._cross = unpack_cross(kf["cross"], True)
        snap = kf["snapshot"]
        self._snapshot = None
        if snap:
            self._snapshot = {
                "step": int(snap["step"]),
                "factors": unpack(snap["factors"], False),
                "cross": unpack_cross(snap["cross"], False),
            }
        self._eig, self._tri = None, {}
        self._rng.bit_generator.state = json.loads(kf["rng"])
