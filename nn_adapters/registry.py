"""Layer type → adapter registry.

An *adapter* tells the capture and Fisher code how one layer type maps onto
kronalg's sample factors: which inputs ``ā`` and output gradients ``g`` to
record, and how its parameters map to the matrix ``W̄ = [W | b]`` (bias last
column).  Built-in adapters cover :class:`torch.nn.Linear` and
:class:`torch.nn.Conv2d`; :func:`register_adapter` adds or replaces one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import LayerAdapter
from .layers.conv import Conv2dAdapter
from .layers.linear import LinearAdapter

__all__ = ["LayerAdapter", "get_adapter", "register_adapter", "registered_adapters"]


_ADAPTERS: dict[type, LayerAdapter] = {}


def register_adapter(layer_type: type, adapter: Any) -> None:
    """Use ``adapter`` for every module of type ``layer_type`` (and its subclasses).

    Parameters
    ----------
    layer_type : type
        A subclass of :class:`torch.nn.Module`.
    adapter : LayerAdapter or None
        The adapter; ``None`` removes the registration.

    Raises
    ------
    TypeError
        If ``layer_type`` is not a module class or ``adapter`` lacks the adapter methods.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"`layer_type` must be a subclass of torch.nn.Module, got {layer_type!r}")
    if adapter is None:
        _ADAPTERS.pop(layer_type, None)
        return
    needed = ("unsupported_reason", "input_factors", "output_factors", "to_matrix", "from_matrix")
    missing = [m for m in needed if not callable(getattr(adapter, m, None))]
    if missing:
        raise TypeError(f"`adapter` must define {needed}; {type(adapter).__name__} lacks {missing}")
    _ADAPTERS[layer_type] = adapter


def get_adapter(module: nn.Module) -> LayerAdapter | None:
    """The adapter registered for ``type(module)`` or its nearest base class, else ``None``.

    Parameters
    ----------
    module : torch.nn.Module
        The layer.

    Returns
    -------
    LayerAdapter or None
    """
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


def registered_adapters() -> dict[type, LayerAdapter]:
    """A copy of the registry.

    Returns
    -------
    dict
        Layer type → adapter.
    """
    return dict(_ADAPTERS)


def _register_builtins() -> None:
    register_adapter(nn.Linear, LinearAdapter())
    register_adapter(nn.Conv2d, Conv2dAdapter())


_register_builtins()
