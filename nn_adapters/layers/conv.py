"""``torch.nn.Conv2d``: ``W̄ = [W | b]`` of shape ``(c_out, c_in·kh·kw + 1)`` and patch factors.

The input patches ``â_t`` come from :func:`torch.nn.functional.unfold` (its
feature order ``(c_in, kh, kw)`` matches ``weight.reshape(c_out, -1)``), one
per output location ``t``; the per-sample gradient of ``W̄`` is
``Σ_t ds_t â_tᵀ`` with ``ds_t`` the gradient at location ``t`` of the output.
Any stride, dilation and padding (including ``"same"`` and non-zero padding
modes); ``groups`` must be 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import LayerAdapter
from .linear import append_ones, kfac_factor_sums

__all__ = [
    "Conv2dAdapter",
    "conv2d_from_matrix",
    "conv2d_input_factors",
    "conv2d_output_factors",
    "conv2d_to_matrix",
    "kfc_factor_sums",
]


def conv2d_input_factors(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Patch factors ``â`` of a Conv2d layer.

    Parameters
    ----------
    module : torch.nn.Conv2d
        The layer (kernel size, stride, dilation, padding).
    x : Tensor of shape (n, c_in, H, W)
        The layer's input.

    Returns
    -------
    Tensor of shape (n, T, c_in·kh·kw [+ 1])
        One row per output location, the bias coordinate 1 appended when the
        layer has a bias.
    """
    x = x.detach()
    if x.ndim == 3:  # unbatched input is not supported by the per-sample statistics
        raise ValueError(f"Conv2d input must be batched (n, c, H, W), got shape {tuple(x.shape)}")
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    patches = patches.transpose(1, 2)  # (n, T, c_in·kh·kw)
    return append_ones(patches) if module.bias is not None else patches


def conv2d_output_factors(grad_output: Tensor) -> Tensor:
    """Output factors ``ds`` of a Conv2d layer.

    Parameters
    ----------
    grad_output : Tensor of shape (n, c_out, H', W')

    Returns
    -------
    Tensor of shape (n, T, c_out)
        ``T = H'·W'``, locations in the order of :func:`~torch.nn.functional.unfold`.
    """
    g = grad_output.detach()
    return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)


def conv2d_to_matrix(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``W̄ = [W | b]`` with ``W`` reshaped to ``(c_out, c_in·kh·kw)``, batched over leading dims.

    Parameters
    ----------
    weight : Tensor of shape (..., c_out, c_in, kh, kw)
    bias : Tensor of shape (..., c_out) or None

    Returns
    -------
    Tensor of shape (..., c_out, c_in·kh·kw [+ 1])
    """
    W = weight.reshape(*weight.shape[:-3], -1)
    return W if bias is None else torch.cat([W, bias[..., None]], dim=-1)


def conv2d_from_matrix(matrix: Tensor, weight_shape: tuple[int, ...], has_bias: bool) -> tuple[Tensor, Tensor | None]:
    """Split ``W̄`` back into ``(weight, bias)``.

    Parameters
    ----------
    matrix : Tensor of shape (c_out, c_in·kh·kw [+ 1])
    weight_shape : tuple of int
        ``(c_out, c_in, kh, kw)``.
    has_bias : bool
        Whether the last column is the bias.

    Returns
    -------
    weight : Tensor of shape weight_shape
    bias : Tensor of shape (c_out,) or None
    """
    if has_bias:
        return matrix[..., :-1].reshape(weight_shape), matrix[..., -1]
    return matrix.reshape(weight_shape), None


def kfc_factor_sums(G: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """Unnormalized KFC statistics ``(Σ_n Σ_t ds ds ᵀ, Σ_n (1/T) Σ_t â âᵀ)`` (K-FOC eq. 9).

    Parameters
    ----------
    G : Tensor of shape (n, T, p)
    A : Tensor of shape (n, T, r)

    Returns
    -------
    G_sum : Tensor of shape (p, p)
    A_sum : Tensor of shape (r, r)
    """
    if G.ndim != 3:
        raise ValueError(f"`G` must have shape (n, T, p), got {tuple(G.shape)}")
    return kfac_factor_sums(G, A)


class Conv2dAdapter(LayerAdapter):
    """Adapter for :class:`torch.nn.Conv2d` with ``groups=1``."""

    def unsupported_reason(self, module: nn.Module) -> str | None:  # noqa: D102
        if module.groups != 1:
            return f"Conv2d with groups={module.groups} (only groups=1 is supported)"
        return None

    def input_factors(self, module: nn.Module, x: Tensor) -> Tensor:  # noqa: D102
        return conv2d_input_factors(module, x)

    def output_factors(self, module: nn.Module, grad_output: Tensor) -> Tensor:  # noqa: D102
        return conv2d_output_factors(grad_output)

    def to_matrix(self, module: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: D102
        return conv2d_to_matrix(weight, bias)

    def from_matrix(self, module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:  # noqa: D102
        return conv2d_from_matrix(matrix, tuple(module.weight.shape), module.bias is not None)
