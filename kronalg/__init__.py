"""kronalg: linear algebra for sums of Kronecker products on any array-API backend.

Conventions: ``vec`` is row-major, ``(A ⊗ B) vec(X) = vec(A @ X @ Bᵀ)``, and the
rearrangement ``R`` maps ``A ⊗ B`` to ``vec(A) vec(B)ᵀ`` (see ``kronalg._vec``).
"""

from .aggregate import StreamingKronecker
from .deflation import DeflatedOperator, deflate
from .kron import kron, kron_matvec, rearrange, unrearrange
from .nearest import NearestKroneckerInfo, nearest_kronecker
from .operators import KronOperator, KronSum, RearrangedOperator, SampleKronSum, as_operator
from .partial_trace import partial_trace
from .results import ConvergenceInfo, ConvergenceWarning, EighResult, SVDResult

__all__ = [
    "ConvergenceInfo",
    "ConvergenceWarning",
    "DeflatedOperator",
    "EighResult",
    "SVDResult",
    "StreamingKronecker",
    "as_operator",
    "deflate",
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
