"""Dense exact Fisher blocks from per-sample gradients — the independent reference.

Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` over
``torch.func.functional_call``, not from the hooks of :mod:`nn_adapters.capture`,
so comparing the two validates the capture.  Each layer's gradient is flattened
as ``vec(DW̄)`` with ``W̄ = [W | b]`` (bias last column; Conv2d weights reshaped to
``(c_out, c_in·kh·kw)``, the order of ``unfold``) and row-major vec; the block is
``F = (1/N) Σ_n vec(DW̄_n) vec(DW̄_n)ᵀ``.  Sampled targets are drawn by the same
function and generator as :func:`nn_adapters.fisher_blocks`, so the same ``seed``
gives the same targets.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .capture import (
    FisherBlocks,
    check_loss,
    check_on_unsupported,
    find_layers,
    iter_batches,
    make_rng,
    per_sample_nll,
    report_unsupported,
    sample_targets,
)

__all__ = ["exact_fisher_blocks"]


def _block_size(module: nn.Module) -> int:
    p = module.weight.shape[0]
    r = module.weight[0].numel() + (1 if getattr(module, "bias", None) is not None else 0)
    return p * r


def exact_fisher_blocks(
    model: nn.Module,
    inputs: Any,
    *,
    targets: Any = "sampled",
    loss: str = "cross_entropy",
    seed: int | None = None,
    max_entries: int = 2**24,
    on_unsupported: str = "warn",
) -> FisherBlocks:
    """Dense exact Fisher block ``E[vec(DW̄) vec(DW̄)ᵀ]`` of each supported layer.

    Parameters
    ----------
    model : torch.nn.Module
        Network whose samples do not interact in the forward pass (eval mode);
        it must run under ``torch.func.vmap`` on single samples.
    inputs : Tensor of shape (N, ...), or iterable of minibatches
        As for :func:`nn_adapters.fisher_blocks`.
    targets : "sampled", "empirical", Tensor, or iterable of Tensor
        As for :func:`nn_adapters.fisher_blocks`.
    loss : {"cross_entropy", "mse"}
        The negative log-likelihood.
    seed : int or None
        Seed of the sampled targets (the same draws as ``fisher_blocks``).
    max_entries : int
        Largest number of entries ``(p·r)²`` of one dense block; a larger block raises.
    on_unsupported : {"warn", "raise", "ignore"}
        What to do about modules with trainable parameters but no block.

    Returns
    -------
    FisherBlocks
        dict layer name → Tensor of shape ``(p·r, p·r)``; ``.unsupported``, ``.n_samples``.

    Raises
    ------
    ValueError
        On a block with more than ``max_entries`` entries (checked before any
        computation), a bad ``loss``, or bad inputs/targets.
    """
    check_loss(loss)
    check_on_unsupported(on_unsupported)
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise ValueError(f"`max_entries` must be a positive int, got {max_entries!r}")
    layers, unsupported = find_layers(model)
    for name, (module, _) in layers.items():
        d = _block_size(module)
        if d * d > max_entries:
            raise ValueError(
                f"the dense Fisher block of layer {name!r} has ({d}·{d}) = {d * d} entries, more than "
                f"`max_entries`={max_entries}; pass a larger `max_entries` (e.g. max_entries={d * d}) to allow it"
            )
    report_unsupported(unsupported, on_unsupported)
    rng = make_rng(seed)
    wanted = {
        f"{name}.{pn}" if name else pn for name, (m, _) in layers.items() for pn, _ in m.named_parameters(recurse=False)
    }
    named = dict(model.named_parameters())
    diff = {k: v.detach() for k, v in named.items() if k in wanted}
    fixed = {k: v.detach() for k, v in named.items() if k not in wanted}
    fixed.update(dict(model.named_buffers()))

    def sample_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **params}, (x[None, ...],))
        return per_sample_nll(out, y[None, ...], loss)[0]

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    blocks: dict[str, Tensor] = {}
    N = 0
    for x, y in iter_batches(inputs, targets):
        if y is None:
            with torch.no_grad():
                y = sample_targets(functional_call(model, {**fixed, **diff}, (x,)), loss, rng)
        grads = per_sample_grad(diff, x, y)
        n = x.shape[0]
        N += n
        for name, (module, adapter) in layers.items():
            prefix = f"{name}." if name else ""
            bias = grads.get(prefix + "bias") if module.bias is not None else None
            D = adapter.to_matrix(module, grads[prefix + "weight"], bias).reshape(n, -1)
            block = D.T @ D
            blocks[name] = block if name not in blocks else blocks[name] + block
    if N == 0:
        raise ValueError("`inputs` holds no samples")
    return FisherBlocks({k: v / N for k, v in blocks.items()}, unsupported=tuple(unsupported), n_samples=N)
