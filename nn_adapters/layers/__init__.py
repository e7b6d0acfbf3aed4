"""Layer adapters: the parameter ⇄ matrix map and factor statistics of each layer type.

``linear`` and ``conv`` hold pure functions of captured tensors; this module
holds :class:`LayerAdapter`, the interface the registry stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

__all__ = ["LayerAdapter"]


class LayerAdapter(ABC):
    """Interface of a layer adapter (subclass it and implement the abstract methods).

    The per-sample gradient of ``W̄`` is ``X_n = G_nᵀ A_n = Σ_t g_nt a_ntᵀ``,
    with ``G`` from :meth:`output_factors` and ``A`` from :meth:`input_factors`
    (``T = 1`` for a plain Linear layer, given as 2-D arrays).
    """

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this module instance cannot be handled (``None`` when it can).

        Parameters
        ----------
        module : torch.nn.Module
            The layer.

        Returns
        -------
        str or None
        """
        return None

    @abstractmethod
    def input_factors(self, module: nn.Module, x: Tensor) -> Tensor:
        """Layer inputs ``ā`` (bias coordinate 1 appended when the layer has a bias).

        Parameters
        ----------
        module : torch.nn.Module
            The layer.
        x : Tensor
            The layer's input, batch first.

        Returns
        -------
        Tensor of shape (n, r) or (n, T, r)
        """

    @abstractmethod
    def output_factors(self, module: nn.Module, grad_output: Tensor) -> Tensor:
        """Output gradients ``g`` of the per-sample loss, matching :meth:`input_factors`.

        Parameters
        ----------
        module : torch.nn.Module
            The layer.
        grad_output : Tensor
            Gradient with respect to the layer's output, batch first.

        Returns
        -------
        Tensor of shape (n, p) or (n, T, p)
        """

    @abstractmethod
    def to_matrix(self, module: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``W̄ = [W | b]`` from a weight (and bias), batched over leading dims.

        Parameters
        ----------
        module : torch.nn.Module
            The layer (for its geometry).
        weight : Tensor of shape ``(..., *module.weight.shape)``
        bias : Tensor of shape (..., p) or None

        Returns
        -------
        Tensor of shape (..., p, r)
        """

    @abstractmethod
    def from_matrix(self, module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
        """Inverse of :meth:`to_matrix`: ``(weight, bias)`` shaped like the module's parameters.

        Parameters
        ----------
        module : torch.nn.Module
            The layer.
        matrix : Tensor of shape (p, r)

        Returns
        -------
        weight : Tensor
        bias : Tensor or None
        """
