"""``KroneckerPreconditioner``: Kronecker-factored natural-gradient preconditioning for any torch optimizer.

Usage::

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pre = KroneckerPreconditioner(model, approx="kfac", damping=1e-3, lr=0.1, kl_clip=1e-3)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        pre.step()  # .grad ← F̂⁻¹ .grad for every supported layer
        opt.step()

Each supported layer (``torch.nn.Linear``, ``torch.nn.Conv2d``, or a registered adapter) whose parameters all
require grad gets a curvature object (:mod:`nn_adapters.curvature`).  On steps ``k`` with ``k % factor_every == 0``
the forward/backward hooks record the layer's per-sample factors and the running estimate is updated with the
exponential moving average ``ρ = min(1 − 1/j, factor_decay)`` (``j`` the number of updates so far); on steps with
``k % inverse_every == 0`` the damped inverse is rebuilt; every step replaces ``.grad`` of the layer's weight and
bias by the matrix ``F̂_damped⁻¹ mat(∇W̄)`` split back into weight and bias.  Layers without a block, and layers that
received no gradient this step, keep their ``.grad``.  KL clipping (Ba et al. 2017; Koroko App. E) rescales all
preconditioned gradients by ``ν = min(1, sqrt(c / (η² Σ_l |⟨F̂_l⁻¹ ∇_l, ∇_l⟩|)))``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kronalg import ConvergenceWarning

from .capture import LayerCapture, check_on_unsupported, find_layers, report_unsupported
from .curvature import APPROXIMATIONS, LOWRANK, Curvature, KronSingle, make_curvature
from .statistics import FISHER_TYPES, LOSS_REDUCTIONS, TrainingStatistics

__all__ = ["APPROXIMATIONS", "DEFAULTS", "KroneckerPreconditioner"]

#: Default values of the approximation-specific options of :class:`KroneckerPreconditioner`.
DEFAULTS: dict[str, Any] = {
    "tol": None,
    "maxiter": 100,
    "psd_floor": 0.05,
    "tkfac_damping": "factored",
    "tkfac_nu": 1e-3,
    "tkfac_variant": "exact",
    "truncation_rank": 32,
    "brand_every": 1,
    "rsvd_every": 10,
    "correct_every": 5,
    "correct_fraction": 0.5,
    "oversample": 10,
    "factored_gradient": "auto",
}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _validate_options(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid options are {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **opts}
    if cfg["tol"] is not None and not (isinstance(cfg["tol"], (int, float)) and cfg["tol"] > 0):
        raise ValueError(f"`tol` must be None or a positive number, got {cfg['tol']!r}")
    _positive_int(cfg["maxiter"], "maxiter")
    if not (isinstance(cfg["psd_floor"], float) and 0 < cfg["psd_floor"] < 1):
        raise ValueError(f"`psd_floor` must be a float in (0, 1), got {cfg['psd_floor']!r}")
    if cfg["tkfac_damping"] not in ("factored", "normal", "new"):
        raise ValueError(f'`tkfac_damping` must be "factored", "normal" or "new", got {cfg["tkfac_damping"]!r}')
    if not (isinstance(cfg["tkfac_nu"], (int, float)) and cfg["tkfac_nu"] > 0):
        raise ValueError(f"`tkfac_nu` must be a positive number, got {cfg['tkfac_nu']!r}")
    if cfg["tkfac_variant"] not in ("exact", "thm4.3"):
        raise ValueError(f'`tkfac_variant` must be "exact" or "thm4.3", got {cfg["tkfac_variant"]!r}')
    if not callable(cfg["truncation_rank"]):
        _positive_int(cfg["truncation_rank"], "truncation_rank")
    for name in ("brand_every", "rsvd_every", "correct_every", "oversample"):
        _positive_int(cfg[name], name)
    if not (isinstance(cfg["correct_fraction"], (int, float)) and 0 < cfg["correct_fraction"] <= 1):
        raise ValueError(f"`correct_fraction` must be in (0, 1], got {cfg['correct_fraction']!r}")
    if cfg["factored_gradient"] not in ("auto", False):
        raise ValueError(f'`factored_gradient` must be "auto" or False, got {cfg["factored_gradient"]!r}')
    return cfg


class KroneckerPreconditioner:
    """Replace each supported layer's gradient by ``F̂_damped⁻¹ ∇`` before a ``torch.optim`` step.

    Parameters
    ----------
    model : torch.nn.Module
        The network; hooks are registered on its supported layers.
    approx : str, default "kfac"
        One of :data:`APPROXIMATIONS`: ``"kfac"``, ``"tkfac"``, ``"kpsvd"``, ``"kfoc"`` (one Kronecker product,
        factored Tikhonov damping with π); ``"deflation"``, ``"lanczos"``, ``"kfac_corrected"`` (Kronecker rank 2,
        :class:`kronalg.KronSumSolver`); ``"rs_kfac"``, ``"b_kfac"``, ``"b_r_kfac"``, ``"b_kfac_c"`` (low-rank
        K-factor inverses of Puiu 2022).  See :mod:`nn_adapters.curvature`.
    damping : float, default 1e-3
        Tikhonov damping ``λ > 0`` (factored as ``√λ/π`` and ``π√λ``); can be changed between steps.
    factor_decay : float, default 0.95
        Upper bound of the EMA weight of the old statistics, ``ρ = min(1 − 1/j, factor_decay)``.
    factor_every : int, default 1
        Record statistics every this many steps (``T_upd``).
    inverse_every : int, default 1
        Rebuild the damped inverses every this many steps (``T_inv``; the first statistics always build one).
    kl_clip : float, optional
        KL clipping constant ``c``; needs ``lr``.
    lr : float or callable, optional
        The optimizer's learning rate ``η`` (or a function returning the current one) for KL clipping.
    loss_reduction : {"mean", "sum"}, default "mean"
        How the training loss reduces over the batch (the hooks rescale gradients to per-sample ones).
    fisher : {"empirical", "sampled"}, default "empirical"
        Statistics from the training backward pass, or from targets sampled from the model: call
        :meth:`record_sampled` after the forward pass on steps where :attr:`recording` is true.
    factor_dtype : torch.dtype, optional
        Keep statistics and inverses in this dtype (e.g. ``torch.float64`` for a float32 model).
    seed : int, default 0
        Seed of the randomized steps (RS-KFAC, B-R-KFAC, B-KFAC-C).
    on_unsupported : {"warn", "raise", "ignore"}, default "warn"
        What to do about modules with trainable parameters but no adapter (they keep their gradient).
    **options
        Approximation-specific options, defaults in :data:`DEFAULTS`: ``tol``, ``maxiter`` (iterative solvers of
        kpsvd/kfoc/deflation/lanczos/kfac_corrected, warm-started from the previous step); ``psd_floor`` (rank-2
        methods, see :class:`kronalg.KronSumSolver`); ``tkfac_damping`` (``"factored"``, ``"normal"`` = Gao (5.15),
        ``"new"`` = Gao (5.16)–(5.17) with ``tkfac_nu`` = ν; the new damping ignores ``damping`` on conv layers),
        ``tkfac_variant``; ``truncation_rank`` (an int or a function of the update count: Puiu's ``r``),
        ``brand_every`` (``T_brand``, in statistics updates), ``rsvd_every`` (``T_rsvd`` of B-R-KFAC),
        ``correct_every`` (``T_correct`` of B-KFAC-C) and ``correct_fraction`` (``φ_crc``), ``oversample``;
        ``factored_gradient`` (``"auto"``: Puiu Alg. 8 for fully-connected layers with ``n < min(p, r)`` whose
        ``.grad`` is verified, by one random probe, to equal the recorded ``c·Gᵀ A``; ``False``: never).

    Attributes
    ----------
    layers : dict
        Layer name → curvature object.
    unsupported : tuple of (str, str)
        Modules with trainable parameters left untouched, and why.
    steps : int
        Calls to :meth:`step` so far.
    last_kl_scale : float
        ``ν`` of the last step (1 without clipping).

    Examples
    --------
    >>> import torch
    >>> from nn_adapters import KroneckerPreconditioner
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> pre = KroneckerPreconditioner(model, approx="kfac", damping=1e-2)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     pre.step()
    ...     opt.step()
    >>> sorted(pre.layers)
    ['0', '2']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        approx: str = "kfac",
        damping: float = 1e-3,
        factor_decay: float = 0.95,
        factor_every: int = 1,
        inverse_every: int = 1,
        kl_clip: float | None = None,
        lr: float | Callable[[], float] | None = None,
        loss_reduction: str = "mean",
        fisher: str = "empirical",
        factor_dtype: torch.dtype | None = None,
        seed: int = 0,
        on_unsupported: str = "warn",
        **options: Any,
    ):
        if approx not in APPROXIMATIONS:
            raise ValueError(f"`approx` must be one of {APPROXIMATIONS}, got {approx!r}")
        self._check_damping(damping)
        if not (isinstance(factor_decay, (int, float)) and 0 <= factor_decay < 1):
            raise ValueError(f"`factor_decay` must be in [0, 1), got {factor_decay!r}")
        _positive_int(factor_every, "factor_every")
        _positive_int(inverse_every, "inverse_every")
        if kl_clip is not None:
            if not (isinstance(kl_clip, (int, float)) and kl_clip > 0):
                raise ValueError(f"`kl_clip` must be None or a positive number, got {kl_clip!r}")
            if lr is None:
                raise ValueError("`kl_clip` needs `lr` (a number or a callable returning the current learning rate)")
        if lr is not None and not callable(lr) and not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"`lr` must be a positive number or a callable, got {lr!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"`loss_reduction` must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if fisher not in FISHER_TYPES:
            raise ValueError(f"`fisher` must be one of {FISHER_TYPES}, got {fisher!r}")
        if factor_dtype is not None and not (isinstance(factor_dtype, torch.dtype) and factor_dtype.is_floating_point):
            raise TypeError(f"`factor_dtype` must be None or a floating torch.dtype, got {factor_dtype!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
        check_on_unsupported(on_unsupported)
        self.cfg = _validate_options(options)
        self.approx = approx
        self.damping = float(damping)
        self.factor_decay = float(factor_decay)
        self.factor_every = factor_every
        self.inverse_every = inverse_every
        self.kl_clip = kl_clip
        self.lr = lr
        self.loss_reduction = loss_reduction
        self.fisher = fisher
        self.factor_dtype = factor_dtype
        self.seed = seed

        modules, unsupported = find_layers(model)
        report_unsupported(unsupported, on_unsupported)
        self.unsupported = tuple(unsupported)
        self._modules = modules
        self.layers: dict[str, Curvature] = {}
        for index, (name, (module, adapter)) in enumerate(modules.items()):
            weight = module.weight
            bias = getattr(module, "bias", None)
            p, r = adapter.to_matrix(module, weight.detach(), None if bias is None else bias.detach()).shape
            is_conv = weight.ndim > 2
            self.layers[name] = make_curvature(approx, p, r, self.cfg, is_conv=is_conv, seed=seed + 1009 * index)
        self._stats = TrainingStatistics(modules, fisher=fisher, loss_reduction=loss_reduction)
        self.steps = 0
        self.last_kl_scale = 1.0
        self.factored_steps = 0
        self._stats.armed = True

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_damping(damping: Any) -> None:
        if isinstance(damping, bool) or not (isinstance(damping, (int, float)) and 0 < damping < math.inf):
            raise ValueError(f"`damping` must be a positive finite number, got {damping!r}")

    @property
    def recording(self) -> bool:
        """Whether the current step records statistics (the hooks are armed)."""
        return self._stats.armed

    def _current_lr(self) -> float:
        return float(self.lr() if callable(self.lr) else self.lr)

    def _cast(self, x: Tensor) -> Tensor:
        return x if self.factor_dtype is None else x.to(self.factor_dtype)

    def record_sampled(self, output: Tensor, loss: str = "cross_entropy") -> None:
        """Record output gradients from targets sampled from the model (``fisher="sampled"``; one extra backward).

        Call after the forward pass and before ``loss.backward()``; does nothing on steps that do not record.

        Parameters
        ----------
        output : Tensor
            The model output (logits for ``"cross_entropy"``).
        loss : {"cross_entropy", "mse"}
            The likelihood to sample from.
        """
        if self._stats.armed:
            self._stats.record_sampled(output, loss, seed=self.seed + 7 * self.steps)

    def _tkfac_context(self) -> dict[str, float]:
        if self.approx != "tkfac" or self.cfg["tkfac_damping"] != "new":
            return {}
        beta = 1.0
        for curv in self.layers.values():
            if isinstance(curv, KronSingle) and curv.is_conv and curv.n_updates:
                delta = curv.tkfac_delta()
                if delta > 0:
                    beta = max(beta, max(self.cfg["tkfac_nu"], delta) / delta)
        return {"tkfac_beta": beta}

    def _thin_factors(self, curv: Curvature, cap: LayerCapture | None, J: Tensor) -> tuple | None:
        """``(G, A, c)`` with ``J = c·Gᵀ A`` when Puiu's Alg. 8 applies and is verified, else ``None``."""
        if self.approx not in LOWRANK or self.cfg["factored_gradient"] is False or cap is None or cap.G.ndim != 2:
            return None
        n = cap.G.shape[0]
        if n >= min(curv.p, curv.r):
            return None
        c = 1.0 / n if self.loss_reduction == "mean" else 1.0
        G, A = self._cast(cap.G), self._cast(cap.A)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + self.steps)
        z = torch.randn(curv.r, generator=gen, dtype=J.dtype).to(J.device)
        lhs, rhs = J @ z, c * (G.T @ (A @ z))
        tol = 1e3 * torch.finfo(J.dtype).eps * (torch.linalg.norm(J) * torch.linalg.norm(z) + 1e-30)
        if float(torch.linalg.norm(lhs - rhs)) > float(tol):
            return None
        return G, A, c

    # ------------------------------------------------------------------ distribution hooks (identity here)
    def _local_layers(self) -> list[str]:
        """Names of the layers whose curvature this process updates, refreshes and applies (all of them here)."""
        return list(self.layers)

    def _share_captures(self, captures: dict[str, LayerCapture]) -> dict[str, LayerCapture]:
        """The captures of the layers in :meth:`_local_layers` for the whole batch (the local ones here)."""
        return captures

    def _share_results(self, results: dict[str, Tensor | None]) -> dict[str, Tensor]:
        """Preconditioned gradients of every layer from those computed here (``None``: none this step)."""
        return {name: P for name, P in results.items() if P is not None}

    def _reduce_tkfac_context(self, context: dict[str, float]) -> dict[str, float]:
        """Combine the TKFAC context over processes (nothing to combine here)."""
        return context

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self) -> None:
        """Update statistics and inverses when due, and precondition every supported layer's ``.grad``."""
        self._check_damping(self.damping)
        captures = self._share_captures(self._stats.pop() if self._stats.armed else {})
        for name, cap in captures.items():
            curv = self.layers[name]
            decay = min(1.0 - 1.0 / (curv.n_updates + 1), self.factor_decay)
            with warnings.catch_warnings(record=True) as caught:  # a warm-started solve that stops short is
                warnings.simplefilter("always", ConvergenceWarning)  # still a usable estimate: count, don't warn
                curv.update(LayerCapture(self._cast(cap.G), self._cast(cap.A)), decay)
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    curv.diagnostics["not_converged"] = curv.diagnostics.get("not_converged", 0.0) + 1.0
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        refresh = self.steps % self.inverse_every == 0
        context = self._reduce_tkfac_context(self._tkfac_context())
        local = self._local_layers()
        for name in local:
            curv = self.layers[name]
            if curv.n_updates and (refresh or not curv.ready):
                curv.refresh(self.damping, context)

        grads: dict[str, Tensor] = {}
        for name in self.layers:
            module, adapter = self._modules[name]
            bias = getattr(module, "bias", None)
            if module.weight.grad is None or (bias is not None and bias.grad is None):
                continue
            grads[name] = adapter.to_matrix(module, module.weight.grad, None if bias is None else bias.grad)
        results: dict[str, Tensor | None] = {}
        for name in local:
            curv, J = self.layers[name], grads.get(name)
            if not curv.ready or J is None:
                results[name] = None
                continue
            Jf = self._cast(J)
            thin = self._thin_factors(curv, captures.get(name), Jf)
            self.factored_steps += thin is not None
            results[name] = curv.precondition(Jf, thin).to(J.dtype)
        shared = self._share_results(results)
        updates = [(name, grads[name], shared[name]) for name in self.layers if name in shared and name in grads]

        scale = 1.0
        if self.kl_clip is not None and updates:
            vg = sum(float(torch.sum(P * J).abs()) for _, J, P in updates) * self._current_lr() ** 2
            scale = min(1.0, math.sqrt(self.kl_clip / vg)) if vg > 0 else 1.0
        self.last_kl_scale = scale
        for name, _, P in updates:
            module, adapter = self._modules[name]
            weight, bias = adapter.from_matrix(module, P * scale if scale != 1.0 else P)
            module.weight.grad.copy_(weight.reshape(module.weight.shape))
            if bias is not None:
                module.bias.grad.copy_(bias.reshape(module.bias.shape))
        self.steps += 1
        self._stats.armed = self.steps % self.factor_every == 0

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """State for exact continuation (tensors, numbers, strings only: safe with ``weights_only=True``).

        Returns
        -------
        dict
        """
        return {
            "approx": self.approx,
            "steps": self.steps,
            "damping": self.damping,
            "factored_steps": self.factored_steps,
            "layers": {name: curv.state_dict() for name, curv in self.layers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same model structure and ``approx``).

        Parameters
        ----------
        state : dict

        Raises
        ------
        ValueError
            If ``state`` was saved for another approximation or other layers.
        """
        if state.get("approx") != self.approx:
            raise ValueError(f"`state` is for approx={state.get('approx')!r}, this preconditioner uses {self.approx!r}")
        if set(state["layers"]) != set(self.layers):
            raise ValueError(f"`state` has layers {sorted(state['layers'])}, expected {sorted(self.layers)}")
        self.steps = int(state["steps"])
        self.damping = float(state["damping"])
        self.factored_steps = int(state["factored_steps"])
        for name, curv in self.layers.items():
            curv.load_state_dict(state["layers"][name])
        self._stats.clear()
        self._stats.armed = self.steps % self.factor_every == 0

    def remove(self) -> None:
        """Remove the hooks from the model."""
        self._stats.remove()

    def __repr__(self) -> str:
        lines = [
            f"KroneckerPreconditioner(approx={self.approx!r}, damping={self.damping:g}, "
            f"factor_decay={self.factor_decay:g}, factor_every={self.factor_every}, "
            f"inverse_every={self.inverse_every}, kl_clip={self.kl_clip!r}, fisher={self.fisher!r}, "
            f"steps={self.steps})",
            f"  layers: {', '.join(f'{n!r} ({c.p}×{c.r})' for n, c in self.layers.items()) or 'none'}",
        ]
        if self.unsupported:
            lines.append("  untouched (no Fisher block): " + "; ".join(f"{n!r}: {why}" for n, why in self.unsupported))
        return "\n".join(lines)
