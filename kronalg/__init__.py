"""kronalg: linear algebra for sums of Kronecker products on any array-API backend.

Conventions: ``vec`` is row-major, ``(A ⊗ B) vec(X) = vec(A @ X @ Bᵀ)``, and the
rearrangement ``R`` maps ``A ⊗ B`` to ``vec(A) vec(B)ᵀ`` (see ``kronalg._vec``).
"""

from .kron import kron, kron_matvec, rearrange, unrearrange
from .nearest import NearestKroneckerInfo, nearest_kronecker
from .operators import KronOperator, KronSum, RearrangedOperator, SampleKronSum
from .partial_trace import partial_trace

__all__ = [
    "KronOperator",
    "KronSum",
    "NearestKroneckerInfo",
    "RearrangedOperator",
    "SampleKronSum",
    "kron",
    "kron_matvec",
    "nearest_kronecker",
    "partial_trace",
    "rearrange",
    "unrearrange",
]
__version__ = "0.1.0"
