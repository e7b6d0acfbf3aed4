"""``torch.nn.Linear``: the matrix ``W̄ = [W | b]`` and its per-sample factors.

For an input ``x`` of shape ``(n, in)`` the per-sample gradient of ``W̄`` (shape
``(out, in+1)``) is ``g āᵀ`` with ``ā = [x; 1]`` and ``g`` the gradient of the
sample's loss with respect to the pre-activation ``W x + b``.  Inputs with
extra dimensions ``(n, *, in)`` (sequences) give ``Σ_t g_t ā_tᵀ`` over the
``T = prod(*)`` positions, handled like convolution locations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import LayerAdapter

__all__ = [
    "LinearAdapter",
    "append_ones",
    "kfac_factor_sums",
    "linear_from_matrix",
    "linear_input_factors",
    "linear_output_factors",
    "linear_to_matrix",
]


def append_ones(x: Tensor) -> Tensor:
    """``[x, 1]`` along the last dimension.

    Parameters
    ----------
    x : Tensor of shape (..., r)

    Returns
    -------
    Tensor of shape (..., r + 1)
    """
    return torch.cat([x, x.new_ones((*x.shape[:-1], 1))], dim=-1)


def linear_input_factors(x: Tensor, has_bias: bool) -> Tensor:
    """Input factors ``ā`` of a Linear layer.

    Parameters
    ----------
    x : Tensor of shape (n, in) or (n, *, in)
        The layer's input.
    has_bias : bool
        Append the bias coordinate 1.

    Returns
    -------
    Tensor of shape (n, r) or (n, T, r)
        ``r = in + 1`` with a bias, ``in`` without; ``T = prod(*)``.
    """
    x = x.detach()
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    return append_ones(x) if has_bias else x


def linear_output_factors(grad_output: Tensor) -> Tensor:
    """Output factors ``g`` of a Linear layer.

    Parameters
    ----------
    grad_output : Tensor of shape (n, out) or (n, *, out)

    Returns
    -------
    Tensor of shape (n, out) or (n, T, out)
    """
    g = grad_output.detach()
    return g.reshape(g.shape[0], -1, g.shape[-1]) if g.ndim > 2 else g


def linear_to_matrix(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``W̄ = [W | b]``, batched over leading dimensions.

    Parameters
    ----------
    weight : Tensor of shape (..., out, in)
    bias : Tensor of shape (..., out) or None

    Returns
    -------
    Tensor of shape (..., out, in + 1) or (..., out, in)
    """
    return weight if bias is None else torch.cat([weight, bias[..., None]], dim=-1)


def linear_from_matrix(matrix: Tensor, has_bias: bool) -> tuple[Tensor, Tensor | None]:
    """Split ``W̄`` back into ``(W, b)``.

    Parameters
    ----------
    matrix : Tensor of shape (..., out, r)
    has_bias : bool
        Whether the last column is the bias.

    Returns
    -------
    weight : Tensor of shape (..., out, r - 1) or (..., out, r)
    bias : Tensor of shape (..., out) or None
    """
    if not has_bias:
        return matrix, None
    return matrix[..., :-1], matrix[..., -1]


def kfac_factor_sums(G: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """Unnormalized K-FAC statistics ``(Σ_n Σ_t g gᵀ, Σ_n (1/T) Σ_t ā āᵀ)``.

    Divided by the number of samples ``N`` they are the K-FAC factors
    ``E[g gᵀ]`` and ``E[ā āᵀ]`` (output side, input side); for location factors
    this is the KFC convention of K-FOC eq. 9 (sum over locations on the
    output side, mean on the input side).

    Parameters
    ----------
    G : Tensor of shape (n, p) or (n, T, p)
    A : Tensor of shape (n, r) or (n, T, r)

    Returns
    -------
    G_sum : Tensor of shape (p, p)
    A_sum : Tensor of shape (r, r)
    """
    if G.ndim == 2:
        return G.T @ G, A.T @ A
    T = A.shape[1]
    Gf = G.reshape(-1, G.shape[-1])
    Af = A.reshape(-1, A.shape[-1])
    return Gf.T @ Gf, (Af.T @ Af) / T


class LinearAdapter(LayerAdapter):
    """Adapter for :class:`torch.nn.Linear`: ``W̄`` of shape ``(out, in + 1)``."""

    def unsupported_reason(self, module: nn.Module) -> str | None:  # noqa: D102
        return None

    def input_factors(self, module: nn.Module, x: Tensor) -> Tensor:  # noqa: D102
        return linear_input_factors(x, module.bias is not None)

    def output_factors(self, module: nn.Module, grad_output: Tensor) -> Tensor:  # noqa: D102
        return linear_output_factors(grad_output)

    def to_matrix(self, module: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: D102
        return linear_to_matrix(weight, bias)

    def from_matrix(self, module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:  # noqa: D102
        return linear_from_matrix(matrix, module.bias is not None)
