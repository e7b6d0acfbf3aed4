"""kronalg: linear algebra for sums of Kronecker products on any array-API backend.

Conventions: ``vec`` is row-major, ``(A ⊗ B) vec(X) = vec(A @ X @ Bᵀ)``, and the
rearrangement ``R`` maps ``A ⊗ B`` to ``vec(A) vec(B)ᵀ`` (see ``kronalg._vec``).
The same call runs on NumPy, CuPy and torch arrays; results keep the inputs'
namespace, dtype and device.
"""

from .aggregate import StreamingKronecker
from .brand import ContinuedSpectrum, brand_light_correction, brand_update, brand_update_sym, spectrum_continuation
from .deflation import DeflatedOperator, deflate
from .kron import kron, kron_matvec, rearrange, unrearrange
from .lanczos import lanczos_svd
from .nearest import NEAREST_METHODS, NearestKroneckerInfo, nearest_kronecker
from .operators import KronOperator, KronSum, RearrangedOperator, SampleKronSum, as_operator
from .partial_trace import partial_trace
from .power import power_svd
from .randomized import randomized_eigh, randomized_svd
from .results import ConvergenceInfo, ConvergenceWarning, EighResult, SVDResult
from .solve import KronSumSolver, KronSumSolverWarning, solve_kron_sum

__all__ = [
    "NEAREST_METHODS",
    "ContinuedSpectrum",
    "ConvergenceInfo",
    "ConvergenceWarning",
    "DeflatedOperator",
    "EighResult",
    "KronOperator",
    "KronSum",
    "KronSumSolver",
    "KronSumSolverWarning",
    "NearestKroneckerInfo",
    "RearrangedOperator",
    "SVDResult",
    "SampleKronSum",
    "StreamingKronecker",
    "as_operator",
    "brand_light_correction",
    "brand_update",
    "brand_update_sym",
    "deflate",
    "kron",
    "kron_matvec",
    "lanczos_svd",
    "nearest_kronecker",
    "partial_trace",
    "power_svd",
    "randomized_eigh",
    "randomized_svd",
    "rearrange",
    "solve_kron_sum",
    "spectrum_continuation",
    "unrearrange",
]
__version__ = "0.1.0"
