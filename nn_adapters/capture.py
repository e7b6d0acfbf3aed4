"""Record each supported layer's inputs and output gradients of the per-sample loss.

For every module with a registered adapter (:mod:`nn_adapters.registry`) a
forward hook records the layer's input factors ``ā`` (bias coordinate 1
appended, convolution patches via ``unfold``) and registers a hook on the
layer's output that records the gradient ``g`` with respect to the
pre-activation.  The backward pass is run here on the **sum** of the per-sample
negative log-likelihoods, so each row of ``g`` is exactly the gradient of that
sample's own loss: no rescaling by the batch size is needed or applied (the
Scale rule of the design).  Parameters' ``.grad`` are never touched.

The per-sample decomposition assumes samples do not interact in the forward
pass (use ``model.eval()`` for BatchNorm).  A layer called more than once per
forward pass (weight sharing) is rejected.

Targets
-------
``targets="sampled"`` draws ``y`` from the model's predictive distribution
(true Fisher): categorical on the logits for ``loss="cross_entropy"``,
``y = f(x) + ε``, ``ε ~ N(0, I)`` for ``loss="mse"``.  The draws come from a
NumPy generator seeded by ``seed`` and consumed sample by sample, so they are
the same for the same seed and sample order whatever the minibatch split,
device or dtype.  Given targets give the empirical Fisher.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LayerAdapter
from .registry import get_adapter

__all__ = [
    "LOSSES",
    "FisherBlocks",
    "LayerCapture",
    "UnsupportedLayerWarning",
    "capture_batches",
    "find_layers",
    "iter_batches",
    "per_sample_nll",
    "sample_targets",
]

#: The supported negative log-likelihoods.
LOSSES = ("cross_entropy", "mse")

#: Accepted string values of ``targets``.
TARGET_MODES = ("sampled", "empirical")

#: Accepted values of ``on_unsupported``.
ON_UNSUPPORTED = ("warn", "raise", "ignore")


class UnsupportedLayerWarning(UserWarning):
    """A module with trainable parameters has no Fisher block (no adapter, or an unsupported configuration)."""


class FisherBlocks(dict):
    """``dict`` layer name → block, plus the layers that were left out.

    Attributes
    ----------
    unsupported : tuple of (str, str)
        ``(module name, reason)`` of every module with trainable parameters
        that has no block.
    n_samples : int
        Number of samples the blocks average over.
    """

    def __init__(self, *args: Any, unsupported: tuple = (), n_samples: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.unsupported = tuple(unsupported)
        self.n_samples = n_samples


@dataclasses.dataclass(frozen=True)
class LayerCapture:
    """One layer's factors for one minibatch: ``X_n = G_nᵀ A_n`` (or ``g_n a_nᵀ``).

    Attributes
    ----------
    G : Tensor of shape (n, p) or (n, T, p)
        Output gradients of the per-sample negative log-likelihood.
    A : Tensor of shape (n, r) or (n, T, r)
        Layer inputs (patches for convolutions), bias coordinate appended.
    """

    G: Tensor
    A: Tensor


def check_loss(loss: Any) -> str:
    """Validate ``loss``.

    Parameters
    ----------
    loss : str
        One of :data:`LOSSES`.

    Returns
    -------
    str
    """
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    return loss


def check_on_unsupported(on_unsupported: Any) -> str:
    """Validate ``on_unsupported``.

    Parameters
    ----------
    on_unsupported : str
        One of :data:`ON_UNSUPPORTED`.

    Returns
    -------
    str
    """
    if not isinstance(on_unsupported, str) or on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"`on_unsupported` must be one of {ON_UNSUPPORTED}, got {on_unsupported!r}")
    return on_unsupported


def make_rng(seed: Any) -> np.random.Generator:
    """The NumPy generator behind sampled targets.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None
        ``None`` draws fresh entropy (not reproducible).

    Returns
    -------
    numpy.random.Generator
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"`seed` must be an int, a numpy Generator or None, got {type(seed).__name__}")
    return np.random.default_rng(seed)


def per_sample_nll(output: Tensor, y: Tensor, loss: str) -> Tensor:
    """Negative log-likelihood of each sample.

    ``cross_entropy``: ``−log softmax(f)_y`` (summed over extra positions for
    outputs ``(n, C, *)``); ``y`` holds class indices ``(n, *)`` or class
    probabilities ``(n, C, *)``.  ``mse``: ``½‖y − f(x)‖²`` over all non-batch
    dimensions (Gaussian, unit variance, constants dropped).

    Parameters
    ----------
    output : Tensor of shape (n, ...)
        Model output (logits for cross-entropy).
    y : Tensor
        Targets.
    loss : {"cross_entropy", "mse"}

    Returns
    -------
    Tensor of shape (n,)
    """
    n = output.shape[0]
    if loss == "cross_entropy":
        if output.ndim < 2:
            raise ValueError(f"cross-entropy needs logits of shape (n, C, ...), got {tuple(output.shape)}")
        nll = F.cross_entropy(output, y, reduction="none")
        return nll.reshape(n, -1).sum(dim=1)
    if y.shape != output.shape:
        raise ValueError(f"mse targets must have the output's shape {tuple(output.shape)}, got {tuple(y.shape)}")
    return 0.5 * ((output - y) ** 2).reshape(n, -1).sum(dim=1)


def sample_targets(output: Tensor, loss: str, rng: np.random.Generator) -> Tensor:
    """Targets drawn from the model's predictive distribution.

    ``cross_entropy``: ``y ~ Categorical(softmax(f))`` by inverse-CDF sampling
    with one uniform per sample (and position); ``mse``: ``y = f + ε``,
    ``ε ~ N(0, I)``.  Draws are made on the host by ``rng`` in sample order,
    cast to the output's dtype and moved to its device.

    Parameters
    ----------
    output : Tensor of shape (n, C, ...) or (n, ...)
        Model output.
    loss : {"cross_entropy", "mse"}
    rng : numpy.random.Generator

    Returns
    -------
    Tensor
        Class indices of shape (n, ...) (int64), or real targets of the output's shape.
    """
    output = output.detach()
    if loss == "cross_entropy":
        if output.ndim < 2:
            raise ValueError(f"cross-entropy needs logits of shape (n, C, ...), got {tuple(output.shape)}")
        probs = torch.softmax(output.movedim(1, -1), dim=-1)
        u = torch.as_tensor(rng.random(probs.shape[:-1]), dtype=probs.dtype).to(probs.device)
        cdf = torch.cumsum(probs, dim=-1)
        y = (cdf < u[..., None]).sum(dim=-1)
        return torch.clamp(y, max=probs.shape[-1] - 1).to(torch.int64)
    noise = torch.as_tensor(rng.standard_normal(tuple(output.shape)), dtype=output.dtype).to(output.device)
    return output + noise


def _split_pair(element: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(element, Tensor):
        return element, None
    if isinstance(element, (tuple, list)) and len(element) >= 2 and isinstance(element[0], Tensor):
        return element[0], element[1]
    raise TypeError(f"each minibatch must be a tensor or an (x, y) pair, got {type(element).__name__}")


def iter_batches(inputs: Any, targets: Any) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Normalize ``(inputs, targets)`` to minibatches ``(x, y)``, ``y = None`` meaning "sample".

    Accepted combinations:

    * ``inputs`` a tensor ``(N, ...)``: ``targets`` ``"sampled"`` or a tensor with ``N`` rows.
    * ``inputs`` an iterable of tensors (or of ``(x, y)`` pairs, e.g. a
      ``DataLoader``): ``targets`` ``"sampled"`` (any ``y`` is ignored),
      ``"empirical"`` (the pairs' ``y`` are used), or an iterable of target
      tensors of the same length.

    Parameters
    ----------
    inputs : Tensor or iterable
    targets : str, Tensor or iterable

    Yields
    ------
    x : Tensor of shape (n, ...)
    y : Tensor or None
    """
    if isinstance(targets, str) and targets not in TARGET_MODES:
        raise ValueError(
            f"`targets` must be one of {TARGET_MODES}, a tensor, or an iterable of tensors; got {targets!r}"
        )
    if isinstance(inputs, Tensor):
        if isinstance(targets, str):
            if targets == "empirical":
                raise ValueError('`targets="empirical"` needs `inputs` to yield (x, y) pairs; pass the targets tensor')
            yield inputs, None
            return
        if not isinstance(targets, Tensor):
            raise TypeError(
                f"with a tensor `inputs`, `targets` must be a tensor or 'sampled', got {type(targets).__name__}"
            )
        if targets.shape[0] != inputs.shape[0]:
            raise ValueError(f"`targets` has {targets.shape[0]} rows but `inputs` has {inputs.shape[0]}")
        yield inputs, targets
        return
    if not isinstance(inputs, Iterable):
        raise TypeError(f"`inputs` must be a tensor or an iterable of minibatches, got {type(inputs).__name__}")
    if isinstance(targets, Tensor):
        raise TypeError(
            "a tensor `targets` needs `inputs` as one tensor; with minibatches pass an iterable of target "
            'tensors, or (x, y) pairs with targets="empirical"'
        )
    if isinstance(targets, str):
        for element in inputs:
            x, y = _split_pair(element)
            if targets == "empirical" and y is None:
                raise ValueError('`targets="empirical"` needs every minibatch to be an (x, y) pair')
            yield x, (y if targets == "empirical" else None)
        return
    sentinel = object()
    it_x, it_y = iter(inputs), iter(targets)
    while True:
        element, y = next(it_x, sentinel), next(it_y, sentinel)
        if element is sentinel and y is sentinel:
            return
        if element is sentinel or y is sentinel:
            raise ValueError("`inputs` and `targets` must yield the same number of minibatches")
        x, _ = _split_pair(element)
        if not isinstance(y, Tensor) or y.shape[0] != x.shape[0]:
            raise ValueError("each target minibatch must be a tensor with as many rows as its input minibatch")
        yield x, y


def find_layers(model: nn.Module) -> tuple[dict[str, tuple[nn.Module, LayerAdapter]], list[tuple[str, str]]]:
    """Supported layers with trainable parameters, and the modules that are left out.

    A module is a layer when an adapter is registered for its type and all its
    parameters require grad; modules whose parameters are all frozen are
    skipped silently; any other module owning trainable parameters is
    reported as unsupported.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    layers : dict
        Module name (as in ``model.named_modules()``) → ``(module, adapter)``.
    unsupported : list of (str, str)
        ``(module name, reason)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    layers: dict[str, tuple[nn.Module, LayerAdapter]] = {}
    unsupported: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        trainable = [p.requires_grad for p in params]
        if not any(trainable):
            continue
        adapter = get_adapter(module)
        if adapter is None:
            unsupported.append((name, f"no adapter registered for {type(module).__name__}"))
            continue
        reason = adapter.unsupported_reason(module)
        if reason is None and not all(trainable):
            reason = "some of its parameters are frozen (requires_grad=False) and others are not"
        if reason is not None:
            unsupported.append((name, reason))
            continue
        layers[name] = (module, adapter)
    return layers, unsupported


def report_unsupported(unsupported: list[tuple[str, str]], on_unsupported: str) -> None:
    """Warn or raise about left-out modules, as ``on_unsupported`` says.

    Parameters
    ----------
    unsupported : list of (str, str)
    on_unsupported : {"warn", "raise", "ignore"}
    """
    if not unsupported or on_unsupported == "ignore":
        return
    listing = "; ".join(f"{name or '<root>'!r}: {reason}" for name, reason in unsupported)
    message = f"no Fisher block for {len(unsupported)} module(s) with trainable parameters: {listing}"
    if on_unsupported == "raise":
        raise ValueError(message)
    warnings.warn(message, UnsupportedLayerWarning, stacklevel=3)


def _capture_batch(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, LayerAdapter]],
    x: Tensor,
    y: Tensor | None,
    loss: str,
    rng: np.random.Generator,
) -> dict[str, LayerCapture]:
    inputs: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    shapes: dict[str, tuple[torch.Size, torch.dtype, torch.device]] = {}

    def forward_hook(name: str, module: nn.Module, adapter: LayerAdapter) -> Any:
        def hook(mod: nn.Module, args: tuple, output: Tensor) -> None:
            if name in inputs:
                raise ValueError(
                    f"layer {name!r} ran more than once in one forward pass; weight sharing is not supported"
                )
            inputs[name] = adapter.input_factors(module, args[0])
            shapes[name] = (output.shape, output.dtype, output.device)
            if output.requires_grad:

                def record(grad: Tensor) -> None:
                    grads[name] = adapter.output_factors(module, grad)

                output.register_hook(record)

        return hook

    handles = [m.register_forward_hook(forward_hook(n, m, a)) for n, (m, a) in layers.items()]
    try:
        with torch.enable_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if y is None:
        y = sample_targets(output, loss, rng)
    total = per_sample_nll(output, y, loss).sum()
    params = [p for name, (m, _) in layers.items() if name in inputs for p in m.parameters(recurse=False)]
    if total.requires_grad and params:
        torch.autograd.grad(total, params, allow_unused=True)
    result = {}
    for name, (module, adapter) in layers.items():
        if name not in inputs:  # the layer did not run: no block
            continue
        if name not in grads:  # ran but does not reach the loss: zero gradients
            shape, dtype, device = shapes[name]
            grads[name] = adapter.output_factors(module, torch.zeros(shape, dtype=dtype, device=device))
        result[name] = LayerCapture(grads[name], inputs[name])
    return result


def capture_batches(
    model: nn.Module,
    inputs: Any,
    *,
    targets: Any = "sampled",
    loss: str = "cross_entropy",
    seed: Any = None,
    layers: dict[str, tuple[nn.Module, LayerAdapter]] | None = None,
) -> Iterator[tuple[int, dict[str, LayerCapture]]]:
    """Per-minibatch factors ``(G, A)`` of every supported layer.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its samples must not interact in the forward pass.
    inputs : Tensor or iterable
        See :func:`iter_batches`.
    targets : "sampled", "empirical", Tensor or iterable
        See :func:`iter_batches`.
    loss : {"cross_entropy", "mse"}
        The negative log-likelihood.
    seed : int or None
        Seed of the sampled targets.
    layers : dict, optional
        From :func:`find_layers` (found here when omitted).

    Yields
    ------
    n : int
        The minibatch's number of samples.
    captures : dict
        Layer name → :class:`LayerCapture` with ``G`` of shape (n, p) or
        (n, T, p) and ``A`` of shape (n, r) or (n, T, r).
    """
    check_loss(loss)
    rng = make_rng(seed)
    if layers is None:
        layers, _ = find_layers(model)
    for x, y in iter_batches(inputs, targets):
        yield x.shape[0], _capture_batch(model, layers, x, y, loss, rng)
