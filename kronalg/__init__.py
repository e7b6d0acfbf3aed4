"""kronalg: linear algebra for sums of Kronecker products on any array-API backend."""

from .kron import kron, kron_matvec
from .partial_trace import partial_trace

__all__ = ["kron", "kron_matvec", "partial_trace"]
__version__ = "0.1.0"
