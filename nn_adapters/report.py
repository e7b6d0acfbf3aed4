"""Approximation-quality report: how close each Kronecker approximation comes to the exact Fisher block.

Reproduces, on data that ships with scikit-learn, the experiment of the papers' figures — K-FOC Fig. 1 (relative
Frobenius error vs batch size, min–max band over runs), Koroko et al. Fig. 1 (Error 1 and Error 2 of layer 5 of
an autoencoder) and TKFAC Fig. 2 (TKFAC vs K-FAC), with the low-rank K-factors of Puiu (2022) alongside:

- ``mlp``: one hidden layer of 50 units on the diabetes regression set, Gaussian likelihood (``loss="mse"``);
- ``lenet``: a LeNet-style CNN on the 8 × 8 digits, categorical likelihood (``loss="cross_entropy"``);
- ``autoencoder``: the 64-128-64-32-8-32-64-128-64 digits autoencoder, sigmoid output with a Gaussian likelihood.

Each model is first trained briefly with Adam (seeded), so that the Fisher is that of a reasonable network. Then,
for every seed, the exact Fisher block ``F`` of each studied layer is computed from per-sample gradients on the
first ``--max-samples`` samples ("full"), with targets sampled from the model's predictive distribution, and every
method builds ``F̂`` from minibatches of each batch size covering the same samples and the same sampled targets.

The methods: K-FAC, TKFAC, KPSVD, deflation and Lanczos (Kronecker rank 2), K-FAC corrected, K-FOC (running and
approx aggregation), and Puiu's RS-KFAC, B-KFAC, B-R-KFAC and B-KFAC-C (``fisher_blocks`` streams the minibatches
through the optimizer's ``BrandFamily``; see :mod:`nn_adapters.fisher`).  The studied layers are small (each side of
``W̄`` has at most 65 rows or columns), so the optimizer's default truncation rank of 32 would leave most sides
untruncated, i.e. equal to K-FAC.  The report therefore keeps ``k = ceil(d/4)`` eigenpairs of each side of dimension
``d`` (``--truncation-rank 0.25``; an int gives the same rank to every side): a quarter of each spectrum, where the
leading modes hold most of the mass of a K-factor, so the truncation error shows while the approximation stays
useful.  A side of dimension 1–4 keeps its single mode ``k = 1``, and a side with ``k ≥ d`` (``d = 1``) is exact.
B-KFAC's Brand path is used on the sides with ``n_M < d`` (small batch sizes); on the others, and for RS-KFAC, the
top-``k`` EVD of the exact K-FAC factor is used, so at large batch sizes the four methods can coincide.  Each
truncated side carries Puiu's spectrum continuation (its ``d − k`` missing eigenvalues set to the smallest kept one,
the factor whose damped inverse the optimizer applies); ``--no-continuation`` measures the plain ``U diag(w) Uᵀ``.

Error 1 = ‖F − F̂‖_F / ‖F‖_F; Error 2 = ‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂ with spectra sorted in descending
order (Koroko et al. §4.1); time = wall time of ``fisher_blocks`` for the
studied layers (layers whose block has more than ``--max-dim`` rows are frozen and skipped).

Run ``kronalg-report`` or ``python -m nn_adapters.report`` (``--help`` for options). The output folder receives a
JSON file with every number and one PNG figure per setting.

References
----------
.. [1] D. Schnaus, J. Lee, R. Triebel, "Kronecker-Factored Optimal Curvature", 2021, §4 and Fig. 1.
.. [2] A. Koroko et al., "Efficient approximations of the Fisher matrix in neural networks using Kronecker
   product singular value decomposition", §4.1 and Fig. 1.
.. [3] K.-X. Gao et al., "A Trace-restricted Kronecker-Factored Approximation to Natural Gradient", §4.3, Fig. 2.
.. [4] C. O. Puiu, "Brand New K-FACs: speeding up K-FAC with online decomposition updates", 2022, §2.2, §3.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "SETTINGS",
    "Setting",
    "aggregate",
    "best_methods",
    "frobenius_error",
    "kron_spectrum",
    "main",
    "method_options",
    "spectrum",
    "spectrum_error",
]

#: Tolerance of the iterative solvers: Koroko et al. §4 use ε = 1e-6 for power SVD and Lanczos.
TOL = 1e-6

#: Default truncation rank of the Puiu methods: the fraction 1/4 of each K-factor side, ``k = ceil(d/4)`` (see the
#: module docstring).
DEFAULT_TRUNCATION_RANK = 0.25

#: Report method name → (``fisher_blocks`` method, extra options).  Each method uses kronalg's default engine for
#: its problem (exact Gram stages for small batches, restarted Lanczos otherwise); a ``ConvergenceWarning`` of an
#: iterative engine would be recorded in the JSON.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "kfac": ("kfac", {}),
    "tkfac": ("tkfac", {}),
    "kpsvd": ("kpsvd", {"tol": TOL}),
    "deflation": ("deflation", {"tol": TOL}),
    "lanczos": ("lanczos", {"tol": TOL}),
    "kfac_corrected": ("kfac_corrected", {"tol": TOL}),
    "kfoc_running": ("kfoc", {"aggregate": "running", "tol": TOL}),
    "kfoc_approx": ("kfoc", {"aggregate": "approx", "tol": TOL}),
    "rs_kfac": ("rs_kfac", {"truncation_rank": DEFAULT_TRUNCATION_RANK}),
    "b_kfac": ("b_kfac", {"truncation_rank": DEFAULT_TRUNCATION_RANK}),
    "b_r_kfac": ("b_r_kfac", {"truncation_rank": DEFAULT_TRUNCATION_RANK}),
    "b_kfac_c": ("b_kfac_c", {"truncation_rank": DEFAULT_TRUNCATION_RANK}),
}

#: The Puiu methods, whose ``truncation_rank`` is set by ``--truncation-rank``.
LOW_RANK = ("rs_kfac", "b_kfac", "b_r_kfac", "b_kfac_c")

#: Methods whose approximation does not depend on the minibatch split (they aggregate exact sums); K-FOC and the
#: Puiu methods stream (RS-KFAC's running factor is exact, but its randomized EVD is seeded by the update count).
#: Unless ``--every-batch-size`` is given they are computed once per seed, at the largest batch size.
BATCH_INVARIANT = ("kfac", "tkfac", "kpsvd", "deflation", "lanczos", "kfac_corrected")
#: Methods that return one Kronecker product (the others return two terms).
RANK_ONE = ("kfac", "tkfac", "kpsvd", "kfoc_running", "kfoc_approx", *LOW_RANK)
DEFAULT_BATCH_SIZES: tuple[str, ...] = ("1", "10", "100", "full")
DEFAULT_MAX_SAMPLES = 500
DEFAULT_MAX_DIM = 1000
DEFAULT_SEEDS = 3
DEFAULT_TRAIN_STEPS = 200
QUICK = {"seeds": 1, "batch_sizes": ("4", "full"), "max_samples": 24, "train_steps": 5}
FULL = "full"
TIE_RTOL = 1e-6
TIE_ATOL = 1e-12


# ----------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One experiment of the report: a dataset, a model, a likelihood, and how to train it briefly.

    Attributes
    ----------
    key : str
        Name used on the command line and in the JSON file.
    title : str
        Human-readable description.
    paper : str
        The papers' experiment it mirrors.
    load : callable
        ``load(dtype=..., device=...)`` returning a :class:`nn_adapters.datasets.Dataset`.
    build : callable
        ``build()`` returning a fresh ``torch.nn.Module`` (parameters drawn from torch's global generator).
    loss : str
        ``"mse"`` or ``"cross_entropy"``, for training and for the Fisher.
    lr : float
        Adam learning rate of the brief training.
    train_batch : int
        Minibatch size of the brief training.
    """

    key: str
    title: str
    paper: str
    load: Callable[..., Any]
    build: Callable[[], Any]
    loss: str
    lr: float = 1e-2
    train_batch: int = 64


def _settings() -> dict[str, Setting]:
    """The three settings of the report, keyed by name.

    Returns
    -------
    dict of str to Setting
        ``mlp``, ``lenet`` and ``autoencoder``.
    """
    from . import datasets, models

    return {
        "mlp": Setting(
            "mlp",
            "MLP 10-50-1 (ReLU) on diabetes, Gaussian likelihood (mse)",
            "K-FOC §4.1 / Fig. 1 top (UCI regression, 50 hidden units)",
            datasets.load_diabetes,
            models.uci_mlp,
            "mse",
        ),
        "lenet": Setting(
            "lenet",
            "LeNet-style CNN on 8×8 digits, categorical likelihood (cross_entropy)",
            "K-FOC §4.2 / Fig. 1 bottom (LeNet-5 on MNIST)",
            datasets.load_digits_images,
            models.digits_lenet,
            "cross_entropy",
        ),
        "autoencoder": Setting(
            "autoencoder",
            "autoencoder 64-128-64-32-8-32-64-128-64 (ReLU, sigmoid out) on digits, Gaussian likelihood (mse)",
            "Koroko §4.1 / Fig. 1 (layer 5 of the MNIST autoencoder); TKFAC Fig. 2",
            datasets.load_digits_flat,
            models.digits_autoencoder,
            "mse",
            lr=3e-3,
        ),
    }


SETTINGS: tuple[str, ...] = ("mlp", "lenet", "autoencoder")


# ------------------------------------------------------------------------------------------------------ metrics


def _as_numpy(M: Any) -> np.ndarray:
    """Host float64 copy of a matrix (torch tensor, NumPy array or anything with ``to_dense``).

    Parameters
    ----------
    M : array-like or torch.Tensor or kronalg.KronSum
        The matrix.

    Returns
    -------
    numpy.ndarray
        A float64 array on the host.
    """
    if hasattr(M, "to_dense") and not hasattr(M, "numpy"):
        M = M.to_dense()
    if hasattr(M, "detach"):
        M = M.detach().to("cpu").double().numpy()
    return np.asarray(M, dtype=np.float64)


def frobenius_error(F: Any, F_hat: Any) -> float:
    """Error 1: the relative Frobenius error ‖F − F̂‖_F / ‖F‖_F.

    Parameters
    ----------
    F : array-like of shape (d, d)
        The exact matrix (nonzero).
    F_hat : array-like of shape (d, d)
        Its approximation.

    Returns
    -------
    float
        The relative error, computed in float64 on the host.

    Examples
    --------
    >>> F = np.diag([4.0, 1.0])
    >>> frobenius_error(F, F), round(frobenius_error(F, 0.5 * F), 12)
    (0.0, 0.5)
    """
    F, F_hat = _as_numpy(F), _as_numpy(F_hat)
    if F.shape != F_hat.shape:
        raise ValueError(f"`F_hat` must have the shape of `F` {F.shape}, got {F_hat.shape}")
    return float(np.linalg.norm(F - F_hat) / np.linalg.norm(F))


def spectrum(M: Any) -> np.ndarray:
    """Eigenvalues of the symmetric part of ``M`` in descending order.

    Parameters
    ----------
    M : array-like of shape (d, d)
        A (nearly) symmetric matrix; ``(M + Mᵀ)/2`` is used.

    Returns
    -------
    numpy.ndarray of shape (d,)
        The spectrum, largest first.

    Examples
    --------
    >>> spectrum(np.diag([1.0, 3.0, 2.0]))
    array([3., 2., 1.])
    """
    M = _as_numpy(M)
    return np.linalg.eigvalsh(0.5 * (M + M.T))[::-1].copy()


def kron_spectrum(K: Any, *, rtol: float = 1e-10) -> np.ndarray | None:
    """Spectrum of a one-term Kronecker sum ``G ⊗ A`` with symmetric factors, from the factors' spectra.

    The eigenvalues of ``G ⊗ A`` are the products ``λ_i(G) μ_j(A)``: ``O(p³ + r³)`` instead of ``O((p·r)³)``.
    The symmetric part of ``G ⊗ A`` differs from ``sym(G) ⊗ sym(A)`` only by ``skew(G) ⊗ skew(A)``, so factors
    symmetric to ``rtol`` give :func:`spectrum` of the dense product to rounding.

    Parameters
    ----------
    K : kronalg.KronSum
        The approximation.
    rtol : float, default 1e-10
        Largest relative asymmetry ``‖M − Mᵀ‖_F / ‖M‖_F`` of a factor.

    Returns
    -------
    numpy.ndarray of shape (p·r,) or None
        The spectrum, largest first; ``None`` when ``K`` has several terms or a factor is not symmetric (then use
        :func:`spectrum` of ``K.to_dense()``).

    Examples
    --------
    >>> from kronalg import KronSum
    >>> kron_spectrum(KronSum([(np.diag([2.0, 1.0]), np.diag([3.0, -1.0]))]))
    array([ 6.,  3., -1., -2.])
    """
    if len(K.factors) != 1:
        return None
    eigs = []
    for M in K.factors[0]:
        M = _as_numpy(M)
        norm = np.linalg.norm(M)
        if np.linalg.norm(M - M.T) > rtol * norm:
            return None
        eigs.append(np.linalg.eigvalsh(0.5 * (M + M.T)))
    return np.sort(np.outer(eigs[0], eigs[1]).ravel())[::-1].copy()


def spectrum_error(spec_F: Any, spec_F_hat: Any) -> float:
    """Error 2: ‖spec(F) − spec(F̂)‖₂ / ‖spec(F)‖₂ for spectra sorted the same way (Koroko §4.1).

    Parameters
    ----------
    spec_F : array-like of shape (d,)
        Spectrum of the exact matrix, e.g. from :func:`spectrum`.
    spec_F_hat : array-like of shape (d,)
        Spectrum of the approximation, sorted the same way.

    Returns
    -------
    float
        The relative ℓ2 error of the spectra.

    Examples
    --------
    >>> F = np.diag([3.0, 1.0])
    >>> round(spectrum_error(spectrum(F), spectrum(2 * F)), 12)
    1.0
    """
    a, b = np.asarray(spec_F, dtype=np.float64), np.asarray(spec_F_hat, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"`spec_F_hat` must have the shape of `spec_F` {a.shape}, got {b.shape}")
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# ---------------------------------------------------------------------------------------------------- the model


def _loss_value(out: Any, y: Any, loss: str) -> Any:
    """Mean per-sample training loss (½‖y − f‖² for mse, cross-entropy on logits otherwise).

    Parameters
    ----------
    out : torch.Tensor
        Model outputs.
    y : torch.Tensor
        Targets.
    loss : str
        ``"mse"`` or ``"cross_entropy"``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    import torch.nn.functional as tf

    if loss == "mse":
        return 0.5 * (out - y).pow(2).sum(dim=1).mean()
    return tf.cross_entropy(out, y)


def train_briefly(model: Any, x: Any, y: Any, *, loss: str, steps: int, lr: float, batch: int, seed: int) -> float:
    """Train with Adam for a few steps on seeded random minibatches; return the final full-data loss.

    Parameters
    ----------
    model : torch.nn.Module
        The model, trained in place.
    x, y : torch.Tensor
        Training inputs and targets.
    loss : str
        ``"mse"`` or ``"cross_entropy"``.
    steps : int
        Number of Adam steps (0 leaves the model untouched).
    lr : float
        Learning rate.
    batch : int
        Minibatch size.
    seed : int
        Seed of the minibatch draws.

    Returns
    -------
    float
        The mean loss on ``(x, y)`` after training.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(batch, n),), generator=gen).to(x.device)
        opt.zero_grad()
        _loss_value(model(x[idx]), y[idx], loss).backward()
        opt.step()
    with torch.no_grad():
        return float(_loss_value(model(x), y, loss))


def layer_dims(model: Any) -> dict[str, tuple[int, int]]:
    """Shape (rows, cols) of ``W̄ = [W | b]`` for every Linear and Conv2d layer.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    dict of str to (int, int)
        Layer name → (output side, input side); the Fisher block is (rows·cols) × (rows·cols).
    """
    from torch import nn

    dims = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            dims[name] = (int(mod.weight.shape[0]), int(mod.weight[0].numel()) + (mod.bias is not None))
    return dims


# ---------------------------------------------------------------------------------------------- Fisher blocks


def _approximate(
    model: Any, batches: Sequence[Any], method: str, *, loss: str, seed: int, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The approximation ``method`` (a key of :data:`METHODS`) of every layer's block, from ``batches``.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    batches : sequence of torch.Tensor
        Minibatches covering the Fisher samples.
    method : str
        Report method name.
    loss : str
        The likelihood.
    seed : int
        Seed of the sampled targets.
    options : dict, optional
        Options of ``fisher_blocks`` replacing those of :data:`METHODS`.

    Returns
    -------
    dict of str to kronalg.KronSum
        Layer name → approximation.
    """
    from . import fisher_blocks

    name, opts = METHODS[method]
    opts = {**opts, **(options or {})}
    return fisher_blocks(model, batches, method=name, targets="sampled", loss=loss, seed=seed, **opts)


def method_options(method: str, cfg: Config) -> dict[str, Any]:
    """The ``fisher_blocks`` options of a report method under the run's options.

    Parameters
    ----------
    method : str
        Report method name (a key of :data:`METHODS`).
    cfg : Config
        Options of the run (``truncation_rank`` for the Puiu methods).

    Returns
    -------
    dict
        The options of :data:`METHODS`, with ``truncation_rank`` from ``cfg`` (and ``continuation=False`` under
        ``--no-continuation``) for the methods in :data:`LOW_RANK`.
    """
    opts = dict(METHODS[method][1])
    if method in LOW_RANK:
        opts["truncation_rank"] = cfg.truncation_rank
        if not cfg.continuation:
            opts["continuation"] = False
    return opts


def _exact(model: Any, x: Any, *, loss: str, seed: int, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Dense exact Fisher blocks of ``layers`` on the host, in float64.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    x : torch.Tensor
        The Fisher samples.
    loss : str
        The likelihood.
    seed : int
        Seed of the sampled targets (the same draws as :func:`_approximate`).
    layers : sequence of str
        Layers to return.

    Returns
    -------
    dict of str to numpy.ndarray
        Layer name → exact block.
    """
    from . import exact_fisher_blocks

    dims = layer_dims(model)
    biggest = max((dims[k][0] * dims[k][1]) ** 2 for k in layers)
    blocks = exact_fisher_blocks(model, x, targets="sampled", loss=loss, seed=seed, max_entries=biggest)
    return {name: _as_numpy(blocks[name]) for name in layers}


def _freeze_others(model: Any, layers: Sequence[str]) -> None:
    """Freeze the parameters of every Linear/Conv2d layer not in ``layers``, so that no block is built for it.

    The forward pass and the gradients reaching the studied layers are unchanged; ``fisher_blocks`` and
    ``exact_fisher_blocks`` skip layers whose parameters are all frozen.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model, modified in place.
    layers : sequence of str
        The studied layers.
    """
    all_layers = layer_dims(model)
    for name, mod in model.named_modules():
        if name in all_layers and name not in layers:
            mod.requires_grad_(False)


def _measure(
    model: Any,
    batches: Sequence[Any],
    method: str,
    loss: str,
    seed: int,
    exact: dict[str, np.ndarray],
    specs: dict[str, np.ndarray],
    device: Any,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Time one approximation of every studied layer and measure its errors.

    Warnings raised by the approximation (e.g. an iterative solver's ``ConvergenceWarning``) are recorded, not
    shown.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    batches : sequence of torch.Tensor
        Minibatches of the Fisher samples.
    method : str
        Report method name.
    loss : str
        The likelihood.
    seed : int
        Seed of the sampled targets.
    exact : dict of str to numpy.ndarray
        Exact blocks of the studied layers.
    specs : dict of str to numpy.ndarray
        Their spectra.
    device : torch.device
        Device, for synchronization.
    options : dict, optional
        Options of ``fisher_blocks`` replacing those of :data:`METHODS` (see :func:`method_options`).

    Returns
    -------
    list of dict
        Per layer: ``method``, ``layer``, ``error1``, ``error2``, ``seconds`` (all layers together),
        ``warnings`` (messages), ``reused`` (False).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _synchronize(device)
        t0 = time.perf_counter()
        approx = _approximate(model, batches, method, loss=loss, seed=seed, options=options)
        _synchronize(device)
        seconds = time.perf_counter() - t0
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    out = []
    for layer, F in exact.items():
        F_hat = _as_numpy(approx[layer].to_dense())
        spec_hat = kron_spectrum(approx[layer])  # one symmetric pair: from the factors, much cheaper
        spec_hat = spectrum(F_hat) if spec_hat is None else spec_hat
        out.append(
            {
                "method": method,
                "layer": layer,
                "error1": frobenius_error(F, F_hat),
                "error2": spectrum_error(specs[layer], spec_hat),
                "seconds": seconds,
                "warnings": messages,
                "reused": False,
            }
        )
    return out


def _synchronize(device: Any) -> None:
    """Wait for queued CUDA work so that wall times are honest.

    Parameters
    ----------
    device : torch.device
        The device in use.
    """
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class Config:
    """Resolved options of one report run.

    Attributes
    ----------
    settings : tuple of str
        Settings to run.
    methods : tuple of str
        Report method names.
    batch_sizes : tuple of str
        Batch sizes as given (integers or ``"full"``).
    seeds : tuple of int
        Seeds.
    max_samples : int
        Cap of "full": the first ``max_samples`` samples of each dataset.
    max_dim : int
        Layers whose Fisher block has more rows are not studied.
    train_steps : int
        Adam steps of the brief training.
    device : str
        Torch device.
    dtype : str
        ``"float64"`` or ``"float32"``.
    out : pathlib.Path
        Output folder.
    progress : bool
        Show the progress bar.
    threads : int
        Torch intra-op threads during the run.
    every_batch_size : bool
        Recompute the batch-invariant methods at every batch size (to time them there).
    truncation_rank : int or float
        ``truncation_rank`` of the Puiu methods: a rank, or a fraction of each K-factor side.
    continuation : bool
        Spectrum continuation of the Puiu methods' truncated sides.
    """

    settings: tuple[str, ...]
    methods: tuple[str, ...]
    batch_sizes: tuple[str, ...]
    seeds: tuple[int, ...]
    max_samples: int
    max_dim: int
    train_steps: int
    device: str
    dtype: str
    out: Path
    progress: bool
    threads: int = 1
    every_batch_size: bool = False
    truncation_rank: int | float = DEFAULT_TRUNCATION_RANK
    continuation: bool = True


def _batch_size(label: str, n: int) -> int:
    """Numeric batch size of a label (``"full"`` → ``n``), capped at ``n``.

    Parameters
    ----------
    label : str
        An integer or ``"full"``.
    n : int
        Number of Fisher samples.

    Returns
    -------
    int
        The batch size.
    """
    return n if label == FULL else min(int(label), n)


def _studied_layers(model: Any, max_dim: int) -> dict[str, tuple[int, int]]:
    """Layers whose Fisher block has at most ``max_dim`` rows.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    max_dim : int
        Bound on rows·cols of ``W̄``.

    Returns
    -------
    dict of str to (int, int)
        Layer name → shape of ``W̄``.
    """
    return {k: v for k, v in layer_dims(model).items() if v[0] * v[1] <= max_dim}


def _layer_info(shape: tuple[int, int], cfg: Config) -> dict[str, Any]:
    """Shape, block size and the Puiu methods' truncation ranks of one studied layer.

    Parameters
    ----------
    shape : (int, int)
        Shape ``(p, r)`` of ``W̄``.
    cfg : Config
        Options.

    Returns
    -------
    dict
        ``W_shape``, ``block_dim`` and ``truncation_ranks`` (output side, input side).
    """
    from .fisher import side_rank

    p, r = shape
    ranks = [side_rank(cfg.truncation_rank, p), side_rank(cfg.truncation_rank, r)]
    return {"W_shape": [p, r], "block_dim": p * r, "truncation_ranks": ranks}


def run_setting(setting: Setting, cfg: Config, bar: Any) -> dict[str, Any]:
    """Run one setting over every seed, batch size and method.

    Parameters
    ----------
    setting : Setting
        The experiment.
    cfg : Config
        Options.
    bar : tqdm.tqdm
        Progress bar, advanced once per (seed, batch size, method).

    Returns
    -------
    dict
        ``info`` (description, samples, layers, training losses) and ``records`` (one per seed, batch size,
        method and layer with ``error1``, ``error2`` and ``seconds``).
    """
    import torch

    dtype = getattr(torch, cfg.dtype)
    data = setting.load(dtype=dtype, device=cfg.device)
    n = min(cfg.max_samples, int(data.inputs.shape[0]))
    x_fisher = data.inputs[:n]
    torch.manual_seed(0)
    layers = _studied_layers(setting.build(), cfg.max_dim)
    info = {
        "title": setting.title,
        "paper": setting.paper,
        "loss": setting.loss,
        "dataset_size": int(data.inputs.shape[0]),
        "fisher_samples": n,
        "layers": {k: _layer_info(v, cfg) for k, v in layers.items()},
        "train": {"optimizer": "Adam", "lr": setting.lr, "steps": cfg.train_steps, "batch": setting.train_batch},
        "train_loss": {},
    }
    records = []
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        model = setting.build().to(device=cfg.device, dtype=dtype)
        info["train_loss"][str(seed)] = train_briefly(
            model,
            data.inputs,
            data.targets,
            loss=setting.loss,
            steps=cfg.train_steps,
            lr=setting.lr,
            batch=setting.train_batch,
            seed=seed,
        )
        model.eval()
        _freeze_others(model, list(layers))
        _approximate(model, [x_fisher[:2]], "kfac", loss=setting.loss, seed=seed)  # warm-up, not timed
        exact = _exact(model, x_fisher, loss=setting.loss, seed=seed, layers=list(layers))
        specs = {k: spectrum(F) for k, F in exact.items()}
        cache: dict[str, list[dict[str, Any]]] = {}
        for label in sorted(cfg.batch_sizes, key=lambda lb: -_batch_size(lb, n)):  # largest first
            b = _batch_size(label, n)
            batches = list(torch.split(x_fisher, b))
            for method in cfg.methods:
                bar.set_postfix_str(f"{setting.key} seed={seed} b={label} {method}", refresh=False)
                if method in cache:
                    records += [{**r, "batch_label": label, "batch_size": b, "reused": True} for r in cache[method]]
                else:
                    opts = method_options(method, cfg)
                    recs = _measure(model, batches, method, setting.loss, seed, exact, specs, cfg.device, opts)
                    recs = [{"seed": seed, "batch_label": label, "batch_size": b, **r} for r in recs]
                    records += recs
                    if method in BATCH_INVARIANT and not cfg.every_batch_size:
                        cache[method] = recs
                bar.update(1)
    return {"info": info, "records": records}


# ---------------------------------------------------------------------------------------------------- summary


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Mean, min and max over seeds of each metric.

    Parameters
    ----------
    records : sequence of dict
        Records of :func:`run_setting` (keys ``layer``, ``method``, ``batch_label``, ``error1``, ``error2``,
        ``seconds``).

    Returns
    -------
    dict
        ``[layer][method][batch_label][metric]`` → ``{"mean", "min", "max"}``, and
        ``[layer][method][batch_label]["reused"]`` (every record copied from another batch size).

    Examples
    --------
    >>> recs = [{"layer": "fc", "method": "kfac", "batch_label": "1", "error1": e, "error2": 0.0, "seconds": 1.0}
    ...         for e in (0.1, 0.3)]
    >>> aggregate(recs)["fc"]["kfac"]["1"]["error1"]["mean"]
    0.2
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["layer"], r["method"], r["batch_label"]), []).append(r)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (layer, method, label), rs in groups.items():
        stats = {}
        for metric in ("error1", "error2", "seconds"):
            v = np.array([r[metric] for r in rs], dtype=np.float64)
            stats[metric] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        stats["reused"] = all(r.get("reused", False) for r in rs)
        out.setdefault(layer, {}).setdefault(method, {})[label] = stats
    return out


def best_methods(agg: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The method with the lowest mean Error 1 per layer and batch size, with the ones tied with it.

    Parameters
    ----------
    agg : dict
        Output of :func:`aggregate`.

    Returns
    -------
    dict
        ``[layer][batch_label]`` → ``{"method", "error1", "tied", "rank1_method", "rank1_error1"}`` (the last two:
        the best Kronecker-rank-1 method, cheapest to invert); ``tied`` lists the methods within
        ``1e-6·best + 1e-12`` of the best (e.g. deflation and lanczos, which compute the same optimal rank-2
        approximation).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for layer, by_method in agg.items():
        labels = sorted(next(iter(by_method.values())), key=lambda lb: (lb == FULL, 0 if lb == FULL else int(lb)))
        for label in labels:
            means = {m: by_method[m][label]["error1"]["mean"] for m in by_method if label in by_method[m]}
            best = min(means, key=means.__getitem__)
            tol = TIE_RTOL * means[best] + TIE_ATOL
            tied = [m for m in means if m != best and means[m] - means[best] <= tol]
            rank1 = {m: v for m, v in means.items() if m in RANK_ONE}
            best1 = min(rank1, key=rank1.__getitem__) if rank1 else None
            out.setdefault(layer, {})[label] = {
                "method": best,
                "error1": means[best],
                "tied": tied,
                "rank1_method": best1,
                "rank1_error1": rank1.get(best1),
            }
    return out


def _fmt(v: float) -> str:
    """A number in 9 characters, 3 significant digits (at most 8 of them used, so cells never touch).

    Parameters
    ----------
    v : float
        The value.

    Returns
    -------
    str
        Right-aligned text.
    """
    return f"{v:9.3g}"


def format_table(key: str, result: dict[str, Any], agg: dict[str, Any], cfg: Config) -> str:
    """The terminal table of one setting: mean Error 1, Error 2 and time per method and batch size.

    Parameters
    ----------
    key : str
        Setting name.
    result : dict
        Output of :func:`run_setting`.
    agg : dict
        Output of :func:`aggregate` on its records.
    cfg : Config
        Options.

    Returns
    -------
    str
        The table.
    """
    info = result["info"]
    n = info["fisher_samples"]
    head = "".join(f"{lb:>9}" for lb in cfg.batch_sizes)
    losses = ", ".join(f"{v:.3g}" for v in info["train_loss"].values())
    lines = [
        f"== {key}: {info['title']}",
        f"   {info['paper']}",
        f"   trained {info['train']['steps']} Adam steps (final loss per seed: {losses}); exact Fisher on the first "
        f"{n} of {info['dataset_size']} samples ('full' = batch size {n}); columns: batch size",
    ]
    low_rank = any(m in LOW_RANK for m in cfg.methods)
    for layer, spec in info["layers"].items():
        p, r = spec["W_shape"]
        ranks = spec["truncation_ranks"]
        ranks = f"; Puiu truncation ranks {ranks[0]}/{p}, {ranks[1]}/{r}" if low_rank else ""
        lines.append(f"-- layer {layer}: W̄ {p}×{r}, block {p * r}×{p * r}{ranks}; mean over {len(cfg.seeds)} seed(s)")
        width = 9 * len(cfg.batch_sizes)
        groups = ("Error 1", "Error 2", "time [ms]")
        lines.append(f"   {'method':<15}|" + "|".join(f" {g:<{width - 1}.{width - 1}}" for g in groups))
        lines.append(f"   {'':<15}|{head}|{head}|{head}")
        for method in cfg.methods:
            row = agg[layer][method]
            e1 = "".join(_fmt(row[lb]["error1"]["mean"]) for lb in cfg.batch_sizes)
            e2 = "".join(_fmt(row[lb]["error2"]["mean"]) for lb in cfg.batch_sizes)
            ms = "".join(
                f"{'same':>9}" if row[lb]["reused"] else _fmt(1e3 * row[lb]["seconds"]["mean"])
                for lb in cfg.batch_sizes
            )
            lines.append(f"   {method:<15}|{e1}|{e2}|{ms}")
    if any(agg[la][m][lb]["reused"] for la in agg for m in agg[la] for lb in agg[la][m]):
        lines.append(
            "   'same': the method sums minibatch statistics exactly, so F̂ does not depend on the batch size; it was "
            "computed once per seed at the largest (--every-batch-size to recompute and time it at each)"
        )
    return "\n".join(lines)


def format_winners(best: dict[str, dict[str, dict[str, dict[str, Any]]]], infos: dict[str, Any]) -> str:
    """Which method had the lowest mean Error 1, per setting, layer and batch size.

    Parameters
    ----------
    best : dict
        ``[setting]`` → output of :func:`best_methods`.
    infos : dict
        ``[setting]`` → ``info`` of :func:`run_setting`.

    Returns
    -------
    str
        One line per setting and layer.
    """
    lines = [
        "Lowest mean Error 1 (‖F − F̂‖_F/‖F‖_F) per setting, layer and batch size ('=' marks ties), and the best "
        "Kronecker-rank-1 method when the winner is rank 2:"
    ]
    for key, by_layer in best.items():
        n = infos[key]["fisher_samples"]
        for layer, by_label in by_layer.items():
            cells = []
            for label, w in by_label.items():
                names = [w["method"], *w["tied"]]
                name = "=".join(names) if len(names) <= 3 else f"{len(names)} methods tie"
                cell = f"b={n if label == FULL else label}: {name} ({w['error1']:.3g})"
                if w["rank1_method"] is not None and w["rank1_method"] not in names:
                    cell += f", rank-1: {w['rank1_method']} ({w['rank1_error1']:.3g})"
                cells.append(cell)
            lines.append(f"  {key} {layer}:")
            lines += [f"      {c}" for c in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ plots

_STYLE = {
    "kfac": ("tab:green", "-"),
    "tkfac": ("tab:olive", "--"),
    "kpsvd": ("tab:blue", "-"),
    "deflation": ("tab:purple", "-"),
    "lanczos": ("tab:pink", ":"),
    "kfac_corrected": ("tab:brown", "-."),
    "kfoc_running": ("tab:red", "-"),
    "kfoc_approx": ("tab:orange", "--"),
    "rs_kfac": ("tab:cyan", "-"),
    "b_kfac": ("tab:gray", "-"),
    "b_r_kfac": ("black", "--"),
    "b_kfac_c": ("gold", ":"),
}


def plot_setting(key: str, result: dict[str, Any], agg: dict[str, Any], cfg: Config, path: Path) -> Path:
    """Error 1 and Error 2 vs batch size, one panel per layer, mean line and min–max band over seeds.

    Parameters
    ----------
    key : str
        Setting name.
    result : dict
        Output of :func:`run_setting`.
    agg : dict
        Output of :func:`aggregate` on its records.
    cfg : Config
        Options.
    path : pathlib.Path
        PNG file to write.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.figure import Figure

    info = result["info"]
    n = info["fisher_samples"]
    layers = list(info["layers"])
    xs = [_batch_size(lb, n) for lb in cfg.batch_sizes]
    ticks = [f"full\n({n})" if lb == FULL else lb for lb in cfg.batch_sizes]
    fig = Figure(figsize=(4.2 * max(len(layers), 1) + 0.5, 7.0), layout="constrained")
    axes = fig.subplots(2, max(len(layers), 1), squeeze=False)
    ylabels = (
        r"Error 1: $\|F-\hat F\|_F\,/\,\|F\|_F$",
        r"Error 2: $\|\mathrm{spec}(F)-\mathrm{spec}(\hat F)\|_2\,/\,\|\mathrm{spec}(F)\|_2$",
    )
    for col, layer in enumerate(layers):
        p, r = info["layers"][layer]["W_shape"]
        for row, metric in enumerate(("error1", "error2")):
            ax = axes[row, col]
            for method in cfg.methods:
                st = [agg[layer][method][lb][metric] for lb in cfg.batch_sizes]
                color, ls = _STYLE.get(method, (None, "-"))
                mean = [s["mean"] for s in st]
                ax.plot(xs, mean, ls, color=color, marker="o", ms=3, lw=1.6, label=method)
                ax.fill_between(xs, [s["min"] for s in st], [s["max"] for s in st], color=color, alpha=0.15, lw=0)
            if len(set(xs)) > 1:
                ax.set_xscale("log")
            ax.set_xticks(xs, ticks)
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{layer}  (block {p * r}×{p * r})")
            else:
                ax.set_xlabel("batch size")
            if col == 0:
                ax.set_ylabel(ylabels[row], fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    width = fig.get_figwidth()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), max(3, int(width / 1.6))), fontsize=9
    )
    fig.suptitle(
        f"{info['title']}\nexact Fisher on {n} samples, mean and min–max over {len(cfg.seeds)} seed(s)", fontsize=10
    )
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    ap = argparse.ArgumentParser(
        prog="kronalg-report",
        description=(
            "How close is each Kronecker approximation of the Fisher (K-FAC, TKFAC, KPSVD, deflation, Lanczos, "
            "K-FAC corrected, K-FOC, and Puiu's RS-KFAC, B-KFAC, B-R-KFAC, B-KFAC-C) to the exact block? Trains "
            "three small networks briefly on scikit-learn's bundled data and reports Error 1, Error 2 and wall time "
            "vs batch size."
        ),
    )
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=None, help="experiments (default: all)")
    ap.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=None, help="methods (default: all)")
    ap.add_argument(
        "--batch-sizes", nargs="+", default=None, metavar="B", help="integers or 'full' (default: 1 10 100 full)"
    )
    ap.add_argument("--seeds", type=int, default=None, metavar="N", help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    ap.add_argument(
        "--max-samples",
        type=int,
        default=None,
        metavar="N",
        help=f"'full' = the first N samples of each dataset (default {DEFAULT_MAX_SAMPLES})",
    )
    ap.add_argument(
        "--max-dim",
        type=int,
        default=DEFAULT_MAX_DIM,
        metavar="D",
        help=f"study the layers whose Fisher block has at most D rows (default {DEFAULT_MAX_DIM})",
    )
    ap.add_argument(
        "--train-steps", type=int, default=None, help=f"Adam steps before measuring (default {DEFAULT_TRAIN_STEPS})"
    )
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, or auto (cuda when present)")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="default float64")
    ap.add_argument("--out", type=Path, default=Path("kronalg-report"), help="output folder (default kronalg-report/)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the blocks are small, threads only add hand-offs)",
    )
    ap.add_argument(
        "--every-batch-size",
        action="store_true",
        help="recompute the methods that do not depend on the minibatch split (all but K-FOC) at every batch "
        "size, to time them there (default: once per seed, at the largest batch size)",
    )
    ap.add_argument(
        "--truncation-rank",
        type=_truncation_rank,
        default=DEFAULT_TRUNCATION_RANK,
        metavar="K",
        help="rank of each K-factor side in RS-KFAC/B-KFAC/B-R-KFAC/B-KFAC-C: an int, or a fraction in (0, 1] of "
        "the side's dimension d (k = ceil(fraction·d)); default 0.25 (the layers are small: a fixed 32 would leave "
        "most sides untruncated)",
    )
    ap.add_argument(
        "--no-continuation",
        action="store_true",
        help="Puiu methods: plain U diag(w) Uᵀ factors, without the spectrum continuation of the truncated sides",
    )
    ap.add_argument("--quick", action="store_true", help="tiny run (for tests): 1 seed, 24 samples, b in {4, full}")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def _truncation_rank(text: str) -> int | float:
    """Parse ``--truncation-rank``: an int ``≥ 1``, or a float in ``(0, 1]`` (a fraction of each side).

    Parameters
    ----------
    text : str
        The argument.

    Returns
    -------
    int or float
        The rank or fraction.

    Raises
    ------
    argparse.ArgumentTypeError
        On anything else.
    """
    from .fisher import check_truncation_rank

    try:
        value: int | float = int(text) if text.strip().lstrip("+").isdigit() else float(text)
        return check_truncation_rank(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes an int >= 1 or a fraction in (0, 1], got {text!r}") from None


def _resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Config:
    """Validate the arguments and fill defaults (``--quick`` changes the defaults, explicit options win).

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
    import torch

    q = QUICK if args.quick else {}
    batch = tuple(args.batch_sizes or q.get("batch_sizes", DEFAULT_BATCH_SIZES))
    for b in batch:
        if b != FULL and not (b.isdigit() and int(b) > 0):
            ap.error(f"`--batch-sizes` takes positive integers or 'full', got {b!r}")
    seeds = args.seeds if args.seeds is not None else q.get("seeds", DEFAULT_SEEDS)
    max_samples = args.max_samples if args.max_samples is not None else q.get("max_samples", DEFAULT_MAX_SAMPLES)
    steps = args.train_steps if args.train_steps is not None else q.get("train_steps", DEFAULT_TRAIN_STEPS)
    if seeds < 1 or max_samples < 1 or steps < 0 or args.max_dim < 1 or args.threads < 1:
        ap.error("`--seeds`, `--max-samples`, `--max-dim`, `--threads` must be >= 1 and `--train-steps` >= 0")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        ap.error(f"`--device` {device!r} asked for, but torch sees no CUDA device")
    return Config(
        settings=tuple(dict.fromkeys(args.settings or SETTINGS)),
        methods=tuple(dict.fromkeys(args.methods or METHODS)),
        batch_sizes=tuple(dict.fromkeys(batch)),
        seeds=tuple(range(seeds)),
        max_samples=max_samples,
        max_dim=args.max_dim,
        train_steps=steps,
        device=device,
        dtype=args.dtype,
        out=args.out,
        progress=not args.no_progress,
        threads=args.threads,
        every_batch_size=args.every_batch_size,
        truncation_rank=args.truncation_rank,
        continuation=not args.no_continuation,
    )


def _meta(cfg: Config, seconds: float) -> dict[str, Any]:
    """Run metadata for the JSON file.

    Parameters
    ----------
    cfg : Config
        Options.
    seconds : float
        Total wall time.

    Returns
    -------
    dict
        Options, versions and notes.
    """
    import torch

    import kronalg

    return {
        "command": " ".join(["kronalg-report", *sys.argv[1:]]),
        "settings": list(cfg.settings),
        "methods": {m: {"method": METHODS[m][0], **method_options(m, cfg)} for m in cfg.methods},
        "truncation_rank": cfg.truncation_rank,
        "continuation": cfg.continuation,
        "truncation_note": (
            "rs_kfac, b_kfac, b_r_kfac, b_kfac_c keep k eigenpairs of each K-factor side of dimension d: "
            "k = ceil(truncation_rank·d) for a fraction, min(truncation_rank, d) for an int (per layer in "
            "settings.*.layers.*.truncation_ranks); truncated sides get Puiu's spectrum continuation (the missing "
            "eigenvalues set to the smallest kept one) unless continuation is false; B-KFAC's "
            "Brand path is used on sides with n_M < d, the top-k EVD of the exact K-FAC factor elsewhere"
        ),
        "batch_sizes": list(cfg.batch_sizes),
        "seeds": list(cfg.seeds),
        "max_samples": cfg.max_samples,
        "max_dim": cfg.max_dim,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "targets": "sampled from the model's predictive distribution (true Fisher), seeded per seed",
        "full_note": f"'full' means the first {cfg.max_samples} samples of each dataset (or all, if fewer)",
        "training_note": f"each model is first trained with Adam for {cfg.train_steps} seeded steps",
        "seconds_note": "wall time of fisher_blocks for the studied layers (the others are frozen)",
        "reused_note": (
            "records with reused=true copy the result of the largest batch size: the method aggregates minibatches "
            "exactly, so F_hat does not depend on the batch size"
        ),
        "solver_tolerance": TOL,
        "error1": "||F - F_hat||_F / ||F||_F",
        "error2": (
            "||spec(F) - spec(F_hat)||_2 / ||spec(F)||_2, spectra sorted descending (eigvalsh; for a one-term F_hat "
            "= G x A with symmetric factors, the products of the factors' eigenvalues)"
        ),
        "total_seconds": seconds,
        "versions": {
            "kronalg": kronalg.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": cfg.threads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report (the ``kronalg-report`` console script).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status 0.
    """
    ap = _parser()
    cfg = _resolve(ap.parse_args(argv), ap)
    import torch
    from tqdm import tqdm

    settings = _settings()
    cfg.out.mkdir(parents=True, exist_ok=True)
    print(
        f"kronalg-report: {len(cfg.settings)} setting(s) × {len(cfg.seeds)} seed(s) × batch sizes "
        f"{', '.join(cfg.batch_sizes)} × {len(cfg.methods)} methods on {cfg.device}/{cfg.dtype}.\n"
        f"Each model is first trained briefly with Adam ({cfg.train_steps} seeded steps); the exact Fisher uses "
        f"targets sampled from the model and 'full' = the first {cfg.max_samples} samples.",
        flush=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    total = len(cfg.settings) * len(cfg.seeds) * len(cfg.batch_sizes) * len(cfg.methods)
    results, aggs, best = {}, {}, {}
    try:
        with tqdm(total=total, disable=not cfg.progress, file=sys.stderr, unit="fit", dynamic_ncols=True) as bar:
            for key in cfg.settings:
                results[key] = run_setting(settings[key], cfg, bar)
                aggs[key] = aggregate(results[key]["records"])
                best[key] = best_methods(aggs[key])
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    for key in cfg.settings:
        print("\n" + format_table(key, results[key], aggs[key], cfg))
    infos = {k: r["info"] for k, r in results.items()}
    print("\n" + format_winners(best, infos))
    paths = [plot_setting(k, results[k], aggs[k], cfg, cfg.out / f"{k}.png") for k in cfg.settings]
    doc = {
        "meta": _meta(cfg, seconds),
        "settings": {
            k: {**results[k]["info"], "summary": aggs[k], "best": best[k], "records": results[k]["records"]}
            for k in cfg.settings
        },
    }
    json_path = cfg.out / "report.json"
    json_path.write_text(json.dumps(doc, indent=1, allow_nan=False))
    warned = sorted(
        {(k, r["method"]) for k in cfg.settings for r in results[k]["records"] if r["warnings"] and not r["reused"]}
    )
    if warned:
        print(
            "\nSolver warnings (details in the JSON records) from: " + ", ".join(f"{k}/{m}" for k, m in warned),
        )
    print(f"\nDone in {seconds:.1f} s. Wrote:")
    for p in [json_path, *paths]:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
