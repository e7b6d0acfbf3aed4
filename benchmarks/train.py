"""Training benchmark: SGD, Adam, every Kronecker preconditioner and Martens–Grosse K-FAC on small digits problems.

Run ``python -m benchmarks.train`` (``--help`` for options; ``--quick`` for a run of a few seconds).  The problems
(:mod:`benchmarks.train_models`) are the Hinton–Salakhutdinov deep autoencoder scaled to the 8 × 8 digits and a
small CNN classifier, both on scikit-learn's bundled digits.

Methods
-------
- ``sgd``: ``torch.optim.SGD`` with momentum 0.9; ``adam``: ``torch.optim.Adam`` (default betas).
- one method per approximation of :class:`nn_adapters.preconditioner.KroneckerPreconditioner` (``kfac``,
  ``tkfac``, ``kpsvd``, ...): the preconditioner rewrites the gradients and SGD (momentum 0 or 0.9, from the grid)
  takes the step, as kfac-pytorch does, with the fixed options of :data:`PRECONDITIONER_OPTIONS` (KL clipping uses
  the step's lr).
- ``kfac_opt`` and ``kfac_opt_tridiag``: :class:`nn_adapters.kfac.KFAC`, Martens & Grosse's optimizer with
  block-diagonal and block-tridiagonal inverses (its own momentum, re-scaling and adaptive damping).

Protocol
--------
1. *Tuning*: for every problem and method, one short run (seed :data:`TUNE_SEED`, ``--tune-epochs`` epochs) per
   setting of the method family's grid (:data:`GRIDS`: lr for SGD and Adam, lr × damping for the preconditioners,
   initial damping for K-FAC); the setting with the lowest final full-training-set loss wins (non-finite counts as
   +∞, ties go to the earlier grid entry).  Tuning runs evaluate only that final loss.
2. *Runs*: the winner is trained for ``--epochs`` epochs from seeds 0…``--seeds``−1.  A seed fixes the initial
   parameters (the same for every method) and the minibatch order (reshuffled every epoch, the incomplete last
   batch dropped).
3. *Evaluation*: the loss on the whole training set is computed ``EVALS_PER_EPOCH`` times per epoch on a hook-free
   copy of the model, outside the timed region.  Wall time is the sum of ``time.perf_counter`` differences around
   each step (zero_grad, forward, backward, preconditioner, optimizer step; batch indexing excluded).  Torch runs on
   ``--threads`` threads (default 1, see :data:`DEFAULT_THREADS`) with subnormal floats flushed to zero.
4. *Overhead*: in the seeded runs, every step is preceded by one plain step (forward, backward, SGD with momentum)
   of a hook-free copy of the model on the same minibatch, timed the same way; overhead = (median step time of the
   method) / (median plain step time) over the steps of a run, averaged over seeds.  The median ignores the rare
   steps that recompute inverses, so the table also gives the ratio of means (amortized cost).
5. *Target*: the target loss is the mean over seeds of the final training loss of the reference method (``adam`` if
   it ran, else ``sgd``, else the first method).  Time to target is read on the seed-mean curve (mean loss and mean
   elapsed time at each evaluation), linearly interpolated between the two evaluations that bracket the first
   crossing; "—" when the curve never reaches it.

Outputs in ``--out`` (default ``train-results/``): ``table.md`` (also printed), ``results.json`` (settings, tuning
scores, every curve) and ``<problem>.png`` (loss vs epochs and vs wall time, seed mean with min–max band).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nn_adapters.curvature import APPROXIMATIONS

__all__ = [
    "GRIDS",
    "METHODS",
    "Method",
    "main",
    "summarize",
    "seconds_to_target",
    "train_run",
]

#: Seed of the tuning runs (distinct from the reported seeds 0, 1, ...).
TUNE_SEED = 1000
DEFAULT_SEEDS = 3
DEFAULT_TUNE_EPOCHS = 3
EVALS_PER_EPOCH = 2
#: One torch thread: the layers are tiny, and with two threads every parallel region waits for both cores, so any
#: other load on a 2-core machine stalls the steps 2-4x with long spikes (measured); one thread is steady.
DEFAULT_THREADS = 1
DEFAULT_OUT = Path("train-results")
#: Plain-step reference: SGD with momentum, small lr (the value does not change the cost of a step).
REFERENCE_LR = 1e-3
MOMENTUM = 0.9

#: The approximations of ``KroneckerPreconditioner`` benchmarked, in table order.
PRECONDITIONER_APPROXIMATIONS: tuple[str, ...] = APPROXIMATIONS

#: Options of ``KroneckerPreconditioner`` common to every approximation (lr and damping come from the grid).
PRECONDITIONER_OPTIONS: dict[str, Any] = {
    "factor_decay": 0.95,
    "factor_every": 1,
    "inverse_every": 10,
    "kl_clip": 1e-3,
    "loss_reduction": "mean",
}

#: Options of ``KFAC`` besides the tuned initial damping λ: Martens & Grosse's defaults (T1 = 5, T2 = T3 = 20,
#: momentum, re-scaling, adaptive λ and γ), no weight decay (like every other method here).
KFAC_OPTIONS: dict[str, Any] = {"loss_reduction": "mean", "factor_decay": 0.95}

#: Search grid per method family (``--quick`` uses :data:`QUICK_GRIDS`).
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "sgd": {"lr": (0.01, 0.03, 0.1, 0.3)},
    "adam": {"lr": (1e-3, 3e-3, 1e-2, 3e-2)},
    "precond": {"lr": (0.1, 0.3), "damping": (1e-4, 1e-3), "momentum": (0.0, 0.9)},
    "kfac": {"damping": (1e-3, 1e-2, 1e-1, 1.0)},
}
QUICK_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "sgd": {"lr": (0.03,)},
    "adam": {"lr": (3e-3,)},
    "precond": {"lr": (0.1,), "damping": (1e-2,)},
    "kfac": {"damping": (0.1,)},
}
QUICK = {"seeds": 1, "epochs": 1, "tune_epochs": 1, "samples": 384, "batch_size": 64}


@dataclass(frozen=True)
class Method:
    """One optimization method of the benchmark.

    Attributes
    ----------
    key : str
        Name on the command line and in the outputs.
    family : {"sgd", "adam", "precond", "kfac"}
        How it is built, and which grid it is tuned on.
    approx : str, optional
        ``KroneckerPreconditioner`` approximation (family ``"precond"``).
    structure : str, optional
        ``KFAC`` inverse structure (family ``"kfac"``).
    """

    key: str
    family: str
    approx: str | None = None
    structure: str | None = None


#: Method key → :class:`Method`, in table order.
METHODS: dict[str, Method] = {
    "sgd": Method("sgd", "sgd"),
    "adam": Method("adam", "adam"),
    **{a: Method(a, "precond", approx=a) for a in PRECONDITIONER_APPROXIMATIONS},
    "kfac_opt": Method("kfac_opt", "kfac", structure="block_diagonal"),
    "kfac_opt_tridiag": Method("kfac_opt_tridiag", "kfac", structure="block_tridiagonal"),
}


def method_availability() -> dict[str, str | None]:
    """Which methods this installation can run.

    Returns
    -------
    dict
        Method key → ``None`` when available, else the reason (a missing module or approximation).
    """
    out: dict[str, str | None] = {"sgd": None, "adam": None}
    try:
        from nn_adapters.preconditioner import APPROXIMATIONS
    except ImportError as exc:
        APPROXIMATIONS, why = (), f"nn_adapters.preconditioner unavailable ({exc})"
    else:
        why = "not in nn_adapters.preconditioner.APPROXIMATIONS"
    for a in PRECONDITIONER_APPROXIMATIONS:
        out[a] = None if a in APPROXIMATIONS else why
    try:
        from nn_adapters.kfac import KFAC  # noqa: F401
    except ImportError as exc:
        kfac_why: str | None = f"nn_adapters.kfac unavailable ({exc})"
    else:
        kfac_why = None
    out["kfac_opt"] = out["kfac_opt_tridiag"] = kfac_why
    return out


# ------------------------------------------------------------------------------------------------- optimizers


class Unsupported(Exception):
    """A method cannot be built for a problem (e.g. a layer type or a loss it does not know)."""


StepFn = Callable[[Any, Any], Any]


def build_step(
    method: Method, model: Any, loss_fn: Callable[[Any, Any], Any], hp: dict[str, float], problem: Any, *, seed: int
) -> StepFn:
    """One training step of ``method`` on ``model``, as a function of the minibatch.

    Parameters
    ----------
    method : Method
        The method.
    model : torch.nn.Module
        The model (hooked by the preconditioner or K-FAC when they are built).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, a batch mean.
    hp : dict
        Hyperparameters: ``lr`` and/or ``damping``.
    problem : benchmarks.train_models.Problem
        The problem (its likelihood is passed to K-FAC).
    seed : int
        Seed of the methods' own random draws (sampled targets, sketches).

    Returns
    -------
    callable
        ``step(x, y)`` performs one update and returns the minibatch loss (a detached tensor).

    Raises
    ------
    Unsupported
        When the method's constructor rejects the model or the loss.
    """
    import torch

    if method.family == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=MOMENTUM)
    elif method.family == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    if method.family in ("sgd", "adam"):

        def step(x: Any, y: Any) -> Any:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step
    if method.family == "precond":
        from nn_adapters.preconditioner import KroneckerPreconditioner

        sgd = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp.get("momentum", MOMENTUM))
        try:
            pre = KroneckerPreconditioner(
                model, approx=method.approx, damping=hp["damping"], lr=hp["lr"], seed=seed, **PRECONDITIONER_OPTIONS
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise Unsupported(f"{type(exc).__name__}: {exc}") from exc

        def pstep(x: Any, y: Any) -> Any:
            sgd.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            pre.step()
            sgd.step()
            return loss.detach()

        return pstep
    if method.family == "kfac":
        from nn_adapters.kfac import KFAC

        from .train_models import BernoulliAsCategorical, bernoulli_as_categorical_loss

        net, kloss = model, loss_fn
        if problem.likelihood == "bernoulli":  # K-FAC knows categorical likelihoods: Bernoulli = 2 classes (0, z)
            net, kloss = BernoulliAsCategorical(model), bernoulli_as_categorical_loss
        try:
            kopt = KFAC(
                net,
                damping=hp["damping"],
                loss="cross_entropy",
                structure=method.structure,
                weight_decay=0.0,
                seed=seed,
                **KFAC_OPTIONS,
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise Unsupported(f"{type(exc).__name__}: {exc}") from exc

        def kstep(x: Any, y: Any) -> Any:
            def closure() -> Any:
                kopt.zero_grad(set_to_none=True)
                loss = kloss(net(x), y)
                loss.backward()
                return loss

            return kopt.step(closure).detach()

        return kstep
    raise ValueError(f"`method.family` must be one of 'sgd', 'adam', 'precond', 'kfac', got {method.family!r}")


def _plain_step(model: Any, loss_fn: Callable[[Any, Any], Any]) -> StepFn:
    """A plain SGD-with-momentum step on ``model`` (the unit of the overhead column).

    Parameters
    ----------
    model : torch.nn.Module
        A hook-free copy of the trained model.
    loss_fn : callable
        The loss.

    Returns
    -------
    callable
        ``step(x, y)``.
    """
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=REFERENCE_LR, momentum=MOMENTUM)

    def step(x: Any, y: Any) -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class RunResult:
    """One training run.

    Attributes
    ----------
    steps, epochs, seconds, losses : list
        The evaluations: step count, epochs done, elapsed timed seconds, full-training-set loss.
    status : str
        ``"ok"``, ``"diverged"`` (a non-finite loss; the run stops), ``"failed"`` (an exception; see ``error``) or
        ``"unsupported"``.
    error : str
        The exception text when the status is not ``"ok"``.
    step_times, plain_times : list of float
        Seconds of each method step and of each plain reference step (empty when not measured).
    warnings : dict
        ``"Category: message start"`` → count of the warnings the run emitted (recorded, not shown).
    """

    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    status: str = "ok"
    error: str = ""
    step_times: list[float] = field(default_factory=list)
    plain_times: list[float] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Last evaluated loss, +∞ unless the run finished.

        Returns
        -------
        float
            The loss.
        """
        return self.losses[-1] if self.status == "ok" and self.losses else math.inf


def _eval_steps(steps_per_epoch: int, epochs: int, evals_per_epoch: int) -> list[int]:
    """Step counts after which the full training loss is evaluated.

    Parameters
    ----------
    steps_per_epoch : int
        Minibatches per epoch.
    epochs : int
        Epochs of the run.
    evals_per_epoch : int
        Evaluations per epoch (0: only at the end).

    Returns
    -------
    list of int
        Increasing step counts ending with ``steps_per_epoch * epochs``.
    """
    if evals_per_epoch < 1:
        return [steps_per_epoch * epochs]
    k = min(evals_per_epoch, steps_per_epoch)
    pts = {round(j * steps_per_epoch / k) for j in range(1, k * epochs + 1)}
    return sorted(pts | {steps_per_epoch * epochs})


def train_run(
    problem: Any,
    method: Method,
    hp: dict[str, float],
    data: tuple[Any, Any],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    evals_per_epoch: int = EVALS_PER_EPOCH,
    measure_overhead: bool = False,
    max_steps: int | None = None,
) -> RunResult:
    """Train one model with one method and record its loss curve.

    Parameters
    ----------
    problem : benchmarks.train_models.Problem
        The problem (model builder and loss).
    method : Method
        The method.
    hp : dict
        Its hyperparameters (``lr``, ``damping``).
    data : tuple of Tensor
        Training inputs and targets.
    seed : int
        Fixes the initial parameters and the minibatch order.
    epochs : int
        Number of passes over the data.
    batch_size : int
        Minibatch size; the incomplete last batch of an epoch is dropped.
    evals_per_epoch : int, default 2
        Full-training-set evaluations per epoch (plus one before the first step); 0 evaluates only before the
        first and after the last step.
    measure_overhead : bool, default False
        Precede every step by a timed plain SGD step on a hook-free copy (same minibatch).
    max_steps : int, optional
        Stop after this many steps (warm-up runs).

    Returns
    -------
    RunResult
        The curve, status, step timings and the warnings emitted (recorded, not shown).
    """
    if data[0].shape[0] < batch_size:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds the number of samples ({data[0].shape[0]})")
    res = RunResult()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(
            problem,
            method,
            hp,
            data,
            res,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            evals_per_epoch=evals_per_epoch,
            measure_overhead=measure_overhead,
            max_steps=max_steps,
        )
    for w in caught:
        key = f"{w.category.__name__}: {str(w.message)[:60]}"
        key = key.split(" iterations")[0] if "did not converge" in key else key
        res.warnings[key] = res.warnings.get(key, 0) + 1
    return res


def _train(
    problem: Any,
    method: Method,
    hp: dict[str, float],
    data: tuple[Any, Any],
    res: RunResult,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    evals_per_epoch: int,
    measure_overhead: bool,
    max_steps: int | None,
) -> None:
    """The body of :func:`train_run`, filling ``res``.

    Parameters
    ----------
    problem, method, hp, data
        As in :func:`train_run`.
    res : RunResult
        Filled in place.
    seed, epochs, batch_size, evals_per_epoch, measure_overhead, max_steps
        As in :func:`train_run`.
    """
    import torch

    x, y = data
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    torch.manual_seed(seed)
    model = problem.build().to(dtype=x.dtype)
    evaluator = copy.deepcopy(model)  # hook-free: evaluation never reaches the method's hooks
    plain = _plain_step(copy.deepcopy(model), problem.loss) if measure_overhead else None

    def evaluate(step: int, elapsed: float) -> bool:
        evaluator.load_state_dict(model.state_dict())
        with torch.no_grad():
            value = float(problem.loss(evaluator(x), y))
        res.steps.append(step)
        res.epochs.append(step / steps_per_epoch)
        res.seconds.append(elapsed)
        res.losses.append(value)
        return math.isfinite(value)

    try:
        step_fn = build_step(method, model, problem.loss, hp, problem, seed=seed)
    except Unsupported as exc:
        res.status, res.error = "unsupported", str(exc)
        return
    torch.manual_seed(seed)  # methods that sample (targets, sketches) draw from here
    gen = torch.Generator().manual_seed(seed)
    checkpoints = _eval_steps(steps_per_epoch, epochs, evals_per_epoch)
    elapsed, step = 0.0, 0
    evaluate(0, 0.0)
    try:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for b in range(steps_per_epoch):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                if plain is not None:
                    t0 = time.perf_counter()
                    plain(xb, yb)
                    res.plain_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                loss = step_fn(xb, yb)
                dt = time.perf_counter() - t0
                elapsed += dt
                step += 1
                if measure_overhead:
                    res.step_times.append(dt)
                if not math.isfinite(float(loss)):
                    res.status, res.error = "diverged", f"non-finite minibatch loss at step {step}"
                    return
                if step == checkpoints[0]:
                    checkpoints.pop(0)
                    if not evaluate(step, elapsed):
                        res.status, res.error = "diverged", f"non-finite training loss at step {step}"
                        return
                if max_steps is not None and step >= max_steps:
                    return
    except Exception as exc:  # a benchmark reports a method that breaks instead of stopping every other one
        where = traceback.extract_tb(exc.__traceback__)[-1]
        res.status = "failed"
        res.error = f"{type(exc).__name__}: {str(exc)[:300]} [{Path(where.filename).name}:{where.lineno}]"


# ------------------------------------------------------------------------------------------------- analysis


def seconds_to_target(seconds: Sequence[float], losses: Sequence[float], target: float) -> float:
    """First time a loss curve reaches ``target``, linearly interpolated between evaluations.

    Parameters
    ----------
    seconds : sequence of float
        Increasing evaluation times (the first is usually 0).
    losses : sequence of float
        The loss at each time.
    target : float
        The loss to reach (``loss <= target``).

    Returns
    -------
    float
        ``t_{k-1} + (l_{k-1} − target) / (l_{k-1} − l_k) · (t_k − t_{k-1})`` for the first ``k`` with
        ``l_k <= target`` (``t_0`` if the first loss already qualifies), NaN when the curve never reaches it.

    Examples
    --------
    >>> seconds_to_target([0.0, 1.0, 2.0], [3.0, 2.0, 1.0], 1.5)
    1.5
    """
    t = np.asarray(seconds, dtype=float)
    v = np.asarray(losses, dtype=float)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"`seconds` and `losses` must be 1-d of equal length, got {t.shape} and {v.shape}")
    hit = np.flatnonzero(v <= target)
    if hit.size == 0:
        return math.nan
    k = int(hit[0])
    if k == 0:
        return float(t[0])
    drop = v[k - 1] - v[k]
    frac = (v[k - 1] - target) / drop if drop > 0 else 1.0
    return float(t[k - 1] + frac * (t[k] - t[k - 1]))


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max.

    Parameters
    ----------
    values : sequence of float
        At least one value.

    Returns
    -------
    dict
        ``mean``, ``std`` (0 for one value), ``min``, ``max``.
    """
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarize(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Seed statistics of one method's runs.

    Parameters
    ----------
    runs : sequence of RunResult
        One run per seed.

    Returns
    -------
    dict
        ``status`` ("ok" when every seed finished), ``final`` (stats of the final loss over finished seeds),
        ``curve`` (per evaluation: step, epoch, mean seconds, mean/min/max loss, over finished seeds),
        ``overhead_median`` and ``overhead_mean`` (per-run ratios averaged over seeds; NaN when not measured),
        ``step_ms`` (median method step, ms) and ``plain_ms`` (median plain step, ms).
    """
    ok = [r for r in runs if r.status == "ok"]
    bad = [r for r in runs if r.status != "ok"]
    out: dict[str, Any] = {
        "status": "ok" if not bad else bad[0].status,
        "errors": sorted({r.error for r in bad}),
        "finished": len(ok),
        "seeds": len(runs),
        "warnings": {},
    }
    for r in runs:
        for k, c in r.warnings.items():
            out["warnings"][k] = out["warnings"].get(k, 0) + c
    if ok:
        length = min(len(r.losses) for r in ok)
        L = np.array([r.losses[:length] for r in ok])
        T = np.array([r.seconds[:length] for r in ok])
        out["final"] = _stats([r.final_loss for r in ok])
        out["curve"] = {
            "steps": ok[0].steps[:length],
            "epochs": ok[0].epochs[:length],
            "seconds": T.mean(axis=0).tolist(),
            "loss_mean": L.mean(axis=0).tolist(),
            "loss_min": L.min(axis=0).tolist(),
            "loss_max": L.max(axis=0).tolist(),
        }
    timed = [r for r in runs if r.step_times and r.plain_times]
    if timed:
        out["overhead_median"] = float(np.mean([np.median(r.step_times) / np.median(r.plain_times) for r in timed]))
        out["overhead_mean"] = float(np.mean([np.mean(r.step_times) / np.mean(r.plain_times) for r in timed]))
        out["step_ms"] = 1e3 * float(np.median(np.concatenate([r.step_times for r in timed])))
        out["plain_ms"] = 1e3 * float(np.median(np.concatenate([r.plain_times for r in timed])))
    else:
        out["overhead_median"] = out["overhead_mean"] = out["step_ms"] = out["plain_ms"] = math.nan
    return out


def reference_method(methods: Sequence[str]) -> str:
    """The method whose final loss sets the target: ``adam``, else ``sgd``, else the first.

    Parameters
    ----------
    methods : sequence of str
        Methods of the run, in table order.

    Returns
    -------
    str
        The reference method key.
    """
    for m in ("adam", "sgd"):
        if m in methods:
            return m
    return methods[0]


def add_targets(summary: dict[str, dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Fill time and epochs to target in each method's summary (in place).

    Parameters
    ----------
    summary : dict
        Method key → :func:`summarize` output.
    methods : sequence of str
        Methods in table order.

    Returns
    -------
    dict
        ``reference``, ``target`` (NaN when the reference did not finish) and ``reference_time``.
    """
    ref = reference_method(methods)
    target = summary[ref]["final"]["mean"] if "final" in summary[ref] else math.nan
    for m in methods:
        s = summary[m]
        c = s.get("curve")
        if c is None or not math.isfinite(target) or s["status"] != "ok":
            s["seconds_to_target"] = s["epochs_to_target"] = math.nan
            continue
        s["seconds_to_target"] = seconds_to_target(c["seconds"], c["loss_mean"], target)
        s["epochs_to_target"] = seconds_to_target(c["epochs"], c["loss_mean"], target)
    ref_time = summary[ref].get("seconds_to_target", math.nan)
    for m in methods:
        t = summary[m]["seconds_to_target"]
        summary[m]["time_ratio"] = t / ref_time if ref_time and ref_time > 0 and math.isfinite(t) else math.nan
    return {"reference": ref, "target": target, "reference_time": ref_time}


# ------------------------------------------------------------------------------------------------- reporting


def _num(v: float, spec: str = ".3g") -> str:
    """A table cell for a number ("—" for NaN or ∞).

    Parameters
    ----------
    v : float
        The value.
    spec : str
        Format spec.

    Returns
    -------
    str
        The cell.
    """
    return format(v, spec) if v is not None and math.isfinite(v) else "—"


def _hp_text(hp: dict[str, float]) -> tuple[str, str]:
    """The lr and damping cells.

    Parameters
    ----------
    hp : dict
        Hyperparameters.

    Returns
    -------
    tuple of str
        lr cell, damping cell.
    """
    lr = _num(hp["lr"], "g") if "lr" in hp else "—"
    if "momentum" in hp:
        lr += f" (momentum {_num(hp['momentum'], 'g')})"
    return (lr, _num(hp["damping"], "g") if "damping" in hp else "—")


def format_table(problem: Any, result: dict[str, Any], cfg: Config) -> str:
    """Markdown section for one problem.

    Parameters
    ----------
    problem : benchmarks.train_models.Problem
        The problem.
    result : dict
        Output of :func:`run_problem`.
    cfg : Config
        Options.

    Returns
    -------
    str
        Header lines and a markdown table.
    """
    tgt = result["target"]
    lines = [
        f"### {problem.key}: {problem.title}",
        "",
        f"Loss: {problem.loss_text}. {result['samples']} samples, batch {result['batch_size']}, "
        f"{result['epochs']} epochs ({result['steps_per_epoch']} steps each), seeds {list(cfg.seeds)}; tuned on "
        f"seed {TUNE_SEED} for {result['tune_epochs']} epoch(s). Target = mean final loss of "
        f"`{tgt['reference']}` = {_num(tgt['target'], '.4g')}.",
        "",
        "| method | lr | damping | final loss (mean ± std) | time to target [s] | × ref time | epochs to target "
        "| step overhead (median) | (mean) | total time [s] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in cfg.methods:
        s = result["summary"][m]
        lr, damp = _hp_text(result["best"][m])
        if "final" in s:
            f = s["final"]
            final = f"{f['mean']:.4g} ± {f['std']:.2g}"
            if s["finished"] < s["seeds"]:
                final += f" ({s['seeds'] - s['finished']} seed(s) {s['status']})"
        else:
            final = s["status"]
        total = s["curve"]["seconds"][-1] if "curve" in s and s["status"] == "ok" else math.nan
        lines.append(
            f"| {m} | {lr} | {damp} | {final} | {_num(s['seconds_to_target'])} | {_num(s['time_ratio'], '.2f')} "
            f"| {_num(s['epochs_to_target'], '.2f')} | {_num(s['overhead_median'], '.2f')} "
            f"| {_num(s['overhead_mean'], '.2f')} | {_num(total)} |"
        )
    notes = [f"- `{m}`: {e}" for m in cfg.methods for e in result["summary"][m]["errors"]]
    notes += [
        f"- `{m}`: {c} × {w} (over all seeds)" for m in cfg.methods for w, c in result["summary"][m]["warnings"].items()
    ]
    notes += [f"- `{m}` (tuning): {e}" for m, e in result.get("tune_errors", {}).items()]
    if notes:
        lines += ["", "Problems:", *notes]
    return "\n".join(lines)


_BASELINE_STYLE = {"sgd": ("0.45", "--"), "adam": ("black", "--")}


def plot_problem(problem: Any, result: dict[str, Any], cfg: Config, path: Path) -> Path:
    """Training loss vs epochs and vs wall time, seed mean with min–max band.

    Parameters
    ----------
    problem : benchmarks.train_models.Problem
        The problem.
    result : dict
        Output of :func:`run_problem`.
    cfg : Config
        Options.
    path : pathlib.Path
        PNG file to write.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    floor = result["loss_floor"]
    fig = Figure(figsize=(12.5, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    axes[0].set_xlim(0, max(result["epochs"], 1e-9))
    cmap = colormaps["tab20"]
    others = [m for m in cfg.methods if m not in _BASELINE_STYLE]
    for m in cfg.methods:
        c = result["summary"][m].get("curve")
        if c is None:
            continue
        color, ls = _BASELINE_STYLE.get(m, (cmap(others.index(m) % 20) if m in others else None, "-"))
        mean = np.asarray(c["loss_mean"]) - floor
        lo, hi = np.asarray(c["loss_min"]) - floor, np.asarray(c["loss_max"]) - floor
        for i, xs in enumerate((np.asarray(c["epochs"]), np.asarray(c["seconds"]))):
            keep = xs > 0 if i == 1 else slice(None)  # the time axis is logarithmic: t = 0 is left out
            axes[i].plot(xs[keep], mean[keep], ls, color=color, lw=1.5, label=m)
            axes[i].fill_between(xs[keep], lo[keep], hi[keep], color=color, alpha=0.12, lw=0)
    tgt = result["target"]["target"]
    ylabel = "training loss" if floor == 0 else f"training loss − {floor:.4g} (its minimum on this data)"
    axes[1].set_xscale("log")
    for ax, xl in zip(axes, ("epochs", "wall time of the steps [s] (log scale)")):
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3, which="both")
        if math.isfinite(tgt):
            ax.axhline(tgt - floor, color="red", lw=0.8, ls=":")
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(
        f"{problem.title}\n{problem.loss_text}; mean and min–max over {len(cfg.seeds)} seed(s); "
        f"dotted: target (final loss of {result['target']['reference']})",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class Config:
    """Resolved command-line options.

    Attributes
    ----------
    problems, methods : tuple of str
        What to run.
    seeds : tuple of int
        Seeds of the reported runs.
    epochs, tune_epochs : int or None
        Epochs of the reported and tuning runs (``None``: the problem's default / :data:`DEFAULT_TUNE_EPOCHS`).
    samples : int or None
        Use the first ``samples`` digits (``None``: all 1797).
    batch_size : int or None
        Minibatch size (``None``: the problem's default).
    grids : dict
        Search grid per method family.
    out : pathlib.Path
        Output folder.
    progress : bool
        Show a progress bar.
    threads : int
        ``torch.set_num_threads`` during the run.
    quick : bool
        Whether ``--quick`` was given.
    """

    problems: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int | None
    tune_epochs: int
    samples: int | None
    batch_size: int | None
    grids: dict[str, dict[str, tuple[float, ...]]]
    out: Path
    progress: bool
    threads: int
    quick: bool


def grid_settings(family: str, grids: dict[str, dict[str, tuple[float, ...]]]) -> list[dict[str, float]]:
    """Every hyperparameter setting of a family's grid, in grid order.

    Parameters
    ----------
    family : str
        Method family.
    grids : dict
        Family → parameter name → values.

    Returns
    -------
    list of dict
        The Cartesian product, lr varying slowest.

    Examples
    --------
    >>> grid_settings("precond", {"precond": {"lr": (0.1, 0.3), "damping": (1e-3,)}})
    [{'lr': 0.1, 'damping': 0.001}, {'lr': 0.3, 'damping': 0.001}]
    """
    g = grids[family]
    names = list(g)
    return [dict(zip(names, vals)) for vals in itertools.product(*(g[k] for k in names))]


def run_problem(problem: Any, cfg: Config, bar: Any) -> dict[str, Any]:
    """Tune and run every method on one problem.

    Parameters
    ----------
    problem : benchmarks.train_models.Problem
        The problem.
    cfg : Config
        Options.
    bar : tqdm.tqdm
        Progress bar, advanced by one per training run.

    Returns
    -------
    dict
        ``best`` (method → hyperparameters), ``tuning`` (method → list of setting and score), ``runs`` (method →
        list of per-seed curves), ``summary`` (method → :func:`summarize`), ``target`` and sizes.
    """
    import torch

    from .train_models import digits

    data = digits(images=problem.images, n=cfg.samples)
    x64 = data[1].double() if not problem.images else None
    floor = 0.0
    if x64 is not None:  # BCE against soft pixels cannot go below the pixels' own entropy
        floor = float(-(torch.xlogy(x64, x64) + torch.xlogy(1 - x64, 1 - x64)).sum(1).mean())
    batch = cfg.batch_size or problem.batch_size
    epochs = cfg.epochs or problem.epochs
    # warm-up (allocator, lazy imports), untimed and discarded
    train_run(problem, METHODS["sgd"], {"lr": 0.01}, data, seed=0, epochs=1, batch_size=batch, max_steps=5)
    best: dict[str, dict[str, float]] = {}
    tuning: dict[str, list[dict[str, Any]]] = {}
    tune_errors: dict[str, str] = {}
    for m in cfg.methods:
        method = METHODS[m]
        settings = grid_settings(method.family, cfg.grids)
        tuning[m] = []
        if len(settings) == 1:
            best[m] = settings[0]
            continue
        for hp in settings:
            bar.set_postfix_str(f"{problem.key} tune {m} {hp}", refresh=False)
            r = train_run(
                problem, method, hp, data, seed=TUNE_SEED, epochs=cfg.tune_epochs, batch_size=batch, evals_per_epoch=0
            )
            bar.update(1)
            tuning[m].append(
                {
                    "hp": hp,
                    "final_loss": _finite(r.final_loss),
                    "status": r.status,
                    "error": r.error,
                    "seconds": r.seconds[-1] if r.seconds else None,
                }
            )
            if r.status == "unsupported":
                bar.update(len(settings) - len(tuning[m]))
                break
        scores = [t["final_loss"] if t["final_loss"] is not None else math.inf for t in tuning[m]]
        best[m] = tuning[m][int(np.argmin(scores))]["hp"]
        if all(t["status"] != "ok" for t in tuning[m]):
            tune_errors[m] = f"no grid setting finished ({tuning[m][0]['status']}: {tuning[m][0]['error']})"
    runs: dict[str, list[RunResult]] = {}
    for m in cfg.methods:
        runs[m] = []
        for seed in cfg.seeds:
            bar.set_postfix_str(f"{problem.key} {m} seed {seed}", refresh=False)
            r = train_run(
                problem, METHODS[m], best[m], data, seed=seed, epochs=epochs, batch_size=batch, measure_overhead=True
            )
            runs[m].append(r)
            bar.update(1)
    summary = {m: summarize(runs[m]) for m in cfg.methods}
    target = add_targets(summary, cfg.methods)
    return {
        "best": best,
        "tuning": tuning,
        "tune_errors": tune_errors,
        "runs": runs,
        "summary": summary,
        "target": target,
        "samples": int(data[0].shape[0]),
        "batch_size": batch,
        "epochs": epochs,
        "tune_epochs": cfg.tune_epochs,
        "steps_per_epoch": int(data[0].shape[0]) // batch,
        "loss_floor": floor,
    }


def count_runs(cfg: Config) -> int:
    """Number of training runs (for the progress bar).

    Parameters
    ----------
    cfg : Config
        Options.

    Returns
    -------
    int
        Tuning runs plus seeded runs over all problems.
    """
    per_problem = 0
    for m in cfg.methods:
        k = len(grid_settings(METHODS[m].family, cfg.grids))
        per_problem += (k if k > 1 else 0) + len(cfg.seeds)
    return per_problem * len(cfg.problems)


def _finite(v: Any) -> Any:
    """JSON-safe number: ``None`` for NaN and ±∞, recursively through dicts and lists.

    Parameters
    ----------
    v : Any
        A value.

    Returns
    -------
    Any
        The value with non-finite floats replaced.
    """
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(w) for w in v]
    return v


def _run_json(r: RunResult) -> dict[str, Any]:
    """A run's JSON record (curve and timing summary; per-step times are left out).

    Parameters
    ----------
    r : RunResult
        The run.

    Returns
    -------
    dict
        Curve, status, and median/mean step times in seconds.
    """
    timing = {}
    if r.step_times:
        timing = {
            "step_median_s": float(np.median(r.step_times)),
            "step_mean_s": float(np.mean(r.step_times)),
            "plain_median_s": float(np.median(r.plain_times)),
            "plain_mean_s": float(np.mean(r.plain_times)),
        }
    return {
        "status": r.status,
        "error": r.error,
        "warnings": r.warnings,
        "steps": r.steps,
        "epochs": r.epochs,
        "seconds": r.seconds,
        "losses": r.losses,
        **timing,
    }


def _parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    from .train_models import PROBLEMS

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.train",
        description=(
            "Train small digits models with SGD, Adam, every KroneckerPreconditioner approximation and K-FAC; "
            "tune lr/damping on a short run, then report loss curves, time to a target loss and per-step overhead."
        ),
    )
    ap.add_argument("--problems", nargs="+", choices=tuple(PROBLEMS), default=None, help="default: autoencoder cnn")
    ap.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=None, help="default: all available")
    ap.add_argument("--seeds", type=int, default=None, metavar="N", help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the seeded runs (default: per problem, 10)")
    ap.add_argument(
        "--tune-epochs", type=int, default=None, help=f"epochs of each tuning run (default {DEFAULT_TUNE_EPOCHS})"
    )
    ap.add_argument("--samples", type=int, default=None, metavar="N", help="use the first N digits (default all)")
    ap.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: per problem, 128)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"torch threads (default {DEFAULT_THREADS})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny run (tests): 1 seed, 1 epoch, 384 samples, batch 64, one grid point per family",
    )
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def _resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Config:
    """Validate the options and fill the defaults (``--quick`` changes defaults; explicit options win).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.
    ap : argparse.ArgumentParser
        The parser, for error messages.

    Returns
    -------
    Config
        The options.
    """
    from .train_models import DEFAULT_PROBLEMS

    q: dict[str, Any] = QUICK if args.quick else {}
    avail = method_availability()
    if args.methods:
        missing = [f"{m} ({avail[m]})" for m in args.methods if avail[m] is not None]
        if missing:
            ap.error("`--methods` not available: " + "; ".join(missing))
        methods = tuple(dict.fromkeys(args.methods))
    else:
        methods = tuple(m for m in METHODS if avail[m] is None)
    seeds = args.seeds if args.seeds is not None else q.get("seeds", DEFAULT_SEEDS)
    tune = args.tune_epochs if args.tune_epochs is not None else q.get("tune_epochs", DEFAULT_TUNE_EPOCHS)
    for name, v in (("--seeds", seeds), ("--tune-epochs", tune), ("--threads", args.threads)):
        if v < 1:
            ap.error(f"`{name}` must be >= 1, got {v}")
    for name, v in (("--epochs", args.epochs), ("--samples", args.samples), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            ap.error(f"`{name}` must be >= 1, got {v}")
    return Config(
        problems=tuple(dict.fromkeys(args.problems or DEFAULT_PROBLEMS)),
        methods=methods,
        seeds=tuple(range(seeds)),
        epochs=args.epochs if args.epochs is not None else q.get("epochs"),
        tune_epochs=tune,
        samples=args.samples if args.samples is not None else q.get("samples"),
        batch_size=args.batch_size if args.batch_size is not None else q.get("batch_size"),
        grids=QUICK_GRIDS if args.quick else GRIDS,
        out=args.out,
        progress=not args.no_progress,
        threads=args.threads,
        quick=args.quick,
    )


def _meta(cfg: Config, seconds: float, argv: Sequence[str], unavailable: dict[str, str]) -> dict[str, Any]:
    """Run metadata for the JSON file.

    Parameters
    ----------
    cfg : Config
        Options.
    seconds : float
        Total wall time of the benchmark.
    argv : sequence of str
        The arguments.
    unavailable : dict
        Methods not run → reason.

    Returns
    -------
    dict
        Options, rules, versions.
    """
    import torch

    return {
        "command": " ".join(["python -m benchmarks.train", *argv]),
        "problems": list(cfg.problems),
        "methods": {
            m: {"family": METHODS[m].family, "approx": METHODS[m].approx, "structure": METHODS[m].structure}
            for m in cfg.methods
        },
        "unavailable": unavailable,
        "seeds": list(cfg.seeds),
        "tune_seed": TUNE_SEED,
        "grids": {k: {n: list(v) for n, v in g.items()} for k, g in cfg.grids.items()},
        "preconditioner_options": {**PRECONDITIONER_OPTIONS, "optimizer": "SGD(momentum from the grid)"},
        "evals_per_epoch": EVALS_PER_EPOCH,
        "target_rule": "mean final training loss of the reference method (adam, else sgd, else the first), "
        "crossing read on each method's seed-mean curve with linear interpolation",
        "overhead_rule": "per run: median (and mean) method step time / median (and mean) time of a plain "
        "SGD-momentum step on a hook-free copy, same minibatches; averaged over seeds",
        "timing_rule": "time.perf_counter around zero_grad+forward+backward+preconditioner+optimizer step; "
        "evaluation, batch indexing and the plain reference steps excluded",
        "dtype": "float32",
        "flush_denormal": True,
        "torch_threads": cfg.threads,
        "total_seconds": seconds,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": platform.machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    cfg = _resolve(ap.parse_args(argv), ap)
    import torch
    from tqdm import tqdm

    from .train_models import PROBLEMS

    unavailable = {m: why for m, why in method_availability().items() if why is not None and m not in cfg.methods}
    cfg.out.mkdir(parents=True, exist_ok=True)
    print(
        f"benchmarks.train: {len(cfg.problems)} problem(s) × {len(cfg.methods)} method(s) × {len(cfg.seeds)} "
        f"seed(s), {count_runs(cfg)} training runs, torch threads {cfg.threads}.",
        flush=True,
    )
    if unavailable:
        print("Not run: " + "; ".join(f"{m} ({w})" for m, w in unavailable.items()), flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    # Saturated sigmoids (the sparse-initialized autoencoder) produce subnormal floats, which x86 CPUs process
    # ~10-100x slower; flushing them to zero keeps step times a function of the method, not of the trajectory.
    flushed = torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    try:
        with tqdm(
            total=count_runs(cfg), disable=not cfg.progress, file=sys.stderr, unit="run", dynamic_ncols=True
        ) as bar:
            for key in cfg.problems:
                results[key] = run_problem(PROBLEMS[key], cfg, bar)
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)
    seconds = time.perf_counter() - t0
    sections = [format_table(PROBLEMS[k], results[k], cfg) for k in cfg.problems]
    text = (
        "## Training benchmark\n\n"
        "Step overhead is in units of one plain SGD step (forward + backward + update) on the same minibatches. "
        "Preconditioners run on top of SGD, with momentum 0 or 0.9 from the grid.\n\n" + "\n\n".join(sections) + "\n"
    )
    print("\n" + text)
    (cfg.out / "table.md").write_text(text)
    paths = [plot_problem(PROBLEMS[k], results[k], cfg, cfg.out / f"{k}.png") for k in cfg.problems]
    doc = {
        "meta": _meta(cfg, seconds, argv, unavailable),
        "problems": {
            k: {
                "title": PROBLEMS[k].title,
                "loss": PROBLEMS[k].loss_text,
                "loss_floor": r["loss_floor"],
                "samples": r["samples"],
                "batch_size": r["batch_size"],
                "epochs": r["epochs"],
                "tune_epochs": r["tune_epochs"],
                "steps_per_epoch": r["steps_per_epoch"],
                "target": r["target"],
                "best": r["best"],
                "tuning": r["tuning"],
                "summary": r["summary"],
                "runs": {m: [_run_json(x) for x in runs] for m, runs in r["runs"].items()},
            }
            for k, r in results.items()
        },
    }
    json_path = cfg.out / "results.json"
    json_path.write_text(json.dumps(_finite(doc), indent=1, allow_nan=False))
    print(f"Done in {seconds:.1f} s. Wrote:")
    for p in [cfg.out / "table.md", json_path, *paths]:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
