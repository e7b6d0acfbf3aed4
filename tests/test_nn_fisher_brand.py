"""Puiu's low-rank K-factors as Fisher-block approximations (fisher_blocks: rs_kfac, b_kfac, b_r_kfac, b_kfac_c)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from nn_adapters import curvature, exact_fisher_blocks, fisher_blocks  # noqa: E402
from nn_adapters.fisher import BRAND_DEFAULTS, BRAND_METHODS, METHODS, OPTIONS, side_rank  # noqa: E402
from nn_adapters.preconditioner import DEFAULTS  # noqa: E402

DTYPES = [torch.float64, torch.float32]
#: Relative tolerance of factor comparisons per dtype.
RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _mlp(dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    """Sides of 13/7 (first layer) and 5/8 (second): wider than the minibatches below."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 5))
    return model.to(dtype).eval(), torch.randn(20, 12, dtype=dtype)


def _conv(dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    return model.to(dtype).eval(), torch.randn(8, 2, 4, 4, dtype=dtype)


def _wide(dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    """One layer with sides 30 and 41: ``k + oversample < d`` for small ranks, so the randomized EVD is used."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 3))
    return model.to(dtype).eval(), torch.randn(64, 40, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _splits(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == x.shape[0]
    return list(x.split(sizes))


def _eigvals_desc(M: torch.Tensor) -> torch.Tensor:
    return torch.flip(torch.linalg.eigvalsh(M.double()), dims=(0,))


def test_methods_options_and_defaults() -> None:
    assert set(BRAND_METHODS) <= set(METHODS)
    assert {"truncation_rank", "rsvd_every", "correct_every", "correct_fraction", "oversample"} <= set(OPTIONS)
    for name, value in BRAND_DEFAULTS.items():  # the optimizer's defaults
        if name in DEFAULTS:
            assert DEFAULTS[name] == value, name
    assert [side_rank(0.25, d) for d in (1, 4, 5, 8, 33, 65)] == [1, 1, 2, 2, 9, 17]
    assert side_rank(0.1, 30) == 3  # no rounding up of 0.1·30 = 3.0000000000000004
    assert side_rank(1.0, 7) == 7 and side_rank(100, 7) == 7 and side_rank(3, 7) == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_fn", [_mlp, _conv])
def test_untruncated_equals_kfac(model_fn, dtype: torch.dtype) -> None:
    """With ``truncation_rank ≥`` both sides, every method is K-FAC, for any (unequal) minibatch split."""
    model, x = model_fn(dtype)
    sizes = [3, 1, 2, x.shape[0] - 6]
    kfac = fisher_blocks(model, x, method="kfac", seed=4)
    for method in BRAND_METHODS:
        K = fisher_blocks(
            model, _splits(x, sizes), method=method, seed=4, truncation_rank=1000, rsvd_every=2, correct_every=2
        )
        for layer, ref in kfac.items():
            assert len(K[layer]) == 1
            for got, want in zip(K[layer].factors[0], ref.factors[0]):
                assert got.dtype == dtype and got.shape == want.shape
                assert _rel(got, want) < RTOL[dtype], (method, layer)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rs_kfac_spectrum(dtype: torch.dtype) -> None:
    """Top-k eigenpairs of the K-FAC factor, the tail continued at the k-th eigenvalue (or zero without)."""
    model, x = _wide(dtype)
    kfac = fisher_blocks(model, x, method="kfac", seed=0)
    k = 4
    cont = fisher_blocks(model, x, method="rs_kfac", seed=0, truncation_rank=k)
    plain = fisher_blocks(model, x, method="rs_kfac", seed=0, truncation_rank=k, continuation=False)
    tol = 1e3 * torch.finfo(dtype).eps
    for layer, ref in kfac.items():
        for M, C, P in zip(ref.factors[0], cont[layer].factors[0], plain[layer].factors[0]):
            d, kk = M.shape[0], side_rank(k, M.shape[0])
            scale = float(torch.linalg.matrix_norm(M, ord=2))
            top = _eigvals_desc(M)[:kk]
            ec, ep = _eigvals_desc(C), _eigvals_desc(P)
            assert float(ec.min()) >= -tol * scale and float(ep.min()) >= -tol * scale  # PSD
            torch.testing.assert_close(ec[:kk], top, rtol=1e-5, atol=tol * scale)
            torch.testing.assert_close(ep[:kk], top, rtol=1e-5, atol=tol * scale)
            if kk < d:
                torch.testing.assert_close(ec[kk:], top[-1].expand(d - kk), rtol=1e-5, atol=tol * scale)
                torch.testing.assert_close(ep[kk:], torch.zeros_like(ep[kk:]), rtol=0, atol=tol * scale)
                # without continuation: the best rank-k approximation, error = the tail of the spectrum
                tail = float(torch.linalg.norm(_eigvals_desc(M)[kk:]))
                assert float(torch.linalg.norm((M - P).double())) == pytest.approx(tail, rel=1e-4, abs=tol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_fn", [_mlp, _conv, _wide])
def test_truncated_rs_kfac_no_closer_than_kfac(model_fn, dtype: torch.dtype) -> None:
    """Truncation (with continuation) loses accuracy here.  Not a theorem: where K-FAC overestimates the Fisher's
    scale, shrinking its factors can lower the error (e.g. the report's autoencoder enc4 without continuation)."""
    model, x = model_fn(dtype)
    exact = exact_fisher_blocks(model, x, seed=1)
    kfac = fisher_blocks(model, x, method="kfac", seed=1)
    for rank in (1, 2, 0.25):
        rs = fisher_blocks(model, x, method="rs_kfac", seed=1, truncation_rank=rank)
        for layer, F in exact.items():
            F = F.double()
            err_rs = _rel(rs[layer].to_dense().double(), F)
            err_kfac = _rel(kfac[layer].to_dense().double(), F)
            assert err_rs >= err_kfac - 1e-4, (rank, layer, err_rs, err_kfac)


@pytest.mark.parametrize("dtype", DTYPES)
def test_b_kfac_streams_with_brand_updates(monkeypatch, dtype: torch.dtype) -> None:
    """n_M < d: Brand updates; B ⪯ K-FAC factor; no better than the best rank-(k + n) (Puiu Prop. 3.1)."""
    calls = []
    real = curvature.brand_update_sym

    def spy(U, w, A, **kw):
        calls.append((U.shape[0], U.shape[1], A.shape[1]))
        return real(U, w, A, **kw)

    monkeypatch.setattr(curvature, "brand_update_sym", spy)
    model, x = _wide(dtype)
    n, k = 4, 3
    batches = list(x.split(n))
    kfac = fisher_blocks(model, x, method="kfac", seed=2)
    b = fisher_blocks(model, batches, method="b_kfac", seed=2, truncation_rank=k, continuation=False)
    n_sides = sum(d > n for K in kfac.values() for d in (K.a_shape[0], K.b_shape[0]))
    assert len(calls) == n_sides * len(batches)
    assert all(kk <= k for _, kk, _ in calls) and all(m == n for *_, m in calls)
    rs = fisher_blocks(model, x, method="rs_kfac", seed=2, truncation_rank=k, continuation=False)
    tol = 1e3 * torch.finfo(dtype).eps
    for layer, ref in kfac.items():
        for M, B, R in zip(ref.factors[0], b[layer].factors[0], rs[layer].factors[0]):
            d = M.shape[0]
            if d <= n:  # the side is not Brand-updated: the top-k EVD, as rs_kfac
                torch.testing.assert_close(B, R, rtol=1e-5, atol=tol * float(M.abs().max()))
                continue
            scale = float(torch.linalg.matrix_norm(M, ord=2))
            assert int(torch.linalg.matrix_rank(B.double(), rtol=1e-6)) <= k + n
            assert float(_eigvals_desc(M - B).min()) >= -tol * scale  # Brand only underestimates
            lam = _eigvals_desc(M)
            best = float(torch.linalg.norm(lam[k + n :]))  # error of the best rank-(k + n) factor
            err_b = float(torch.linalg.norm((M - B).double()))
            err_rs = float(torch.linalg.norm((M - R).double()))  # = tail beyond k
            assert err_b >= best - 1e-4 * scale
            # both differ from K-FAC only by truncation: within the discarded spectrum's mass
            assert err_rs == pytest.approx(float(torch.linalg.norm(lam[k:])), rel=1e-4, abs=tol * scale)
            assert 0 < err_b < torch.linalg.norm(M)


@pytest.mark.parametrize("dtype", DTYPES)
def test_b_kfac_single_batch_is_exact(dtype: torch.dtype) -> None:
    """One minibatch narrower than the sides: the Brand representation of rank n is the K-FAC factor itself."""
    model, x = _wide(dtype)
    x = x[:5]
    kfac = fisher_blocks(model, x, method="kfac", seed=3)
    for method in ("b_kfac", "b_r_kfac", "b_kfac_c"):
        K = fisher_blocks(model, [x], method=method, seed=3, truncation_rank=2, continuation=False)
        for layer, ref in kfac.items():
            for got, want in zip(K[layer].factors[0], ref.factors[0]):
                if want.shape[0] > 5:
                    assert _rel(got, want) < 10 * RTOL[dtype], (method, layer)


def test_b_r_kfac_overwrite_helps_next_step() -> None:
    """Puiu Prop. 3.2 (l = 1): an exact rank-k overwrite before the last update gives the lower error."""
    model, x = _wide(torch.float64)
    batches = list(x.split(4))
    kfac = fisher_blocks(model, x, method="kfac", seed=5)
    opts = {"seed": 5, "truncation_rank": 3, "continuation": False, "oversample": 100}
    b = fisher_blocks(model, batches, method="b_kfac", **opts)
    br = fisher_blocks(model, batches, method="b_r_kfac", rsvd_every=1, **opts)
    differs = False
    for layer, ref in kfac.items():
        for M, B, R in zip(ref.factors[0], b[layer].factors[0], br[layer].factors[0]):
            if M.shape[0] > 4:
                assert float(torch.linalg.norm(M - R)) <= float(torch.linalg.norm(M - B)) + 1e-12
                differs |= _rel(R, B) > 1e-6
    assert differs


@pytest.mark.parametrize("dtype", DTYPES)
def test_corrected_and_overwritten_variants_are_psd_low_rank(dtype: torch.dtype) -> None:
    model, x = _wide(dtype)
    batches = list(x.split(4))
    kfac = fisher_blocks(model, x, method="kfac", seed=6)
    tol = 1e3 * torch.finfo(dtype).eps
    base = fisher_blocks(model, batches, method="b_kfac", seed=6, truncation_rank=0.25)
    for method, extra in (("b_r_kfac", {"rsvd_every": 3}), ("b_kfac_c", {"correct_every": 2})):
        K = fisher_blocks(model, batches, method=method, seed=6, truncation_rank=0.25, **extra)
        assert set(K) == set(kfac)
        for layer, ref in kfac.items():
            for M, C, B in zip(ref.factors[0], K[layer].factors[0], base[layer].factors[0]):
                assert C.dtype == dtype
                torch.testing.assert_close(C, C.T)
                ev = _eigvals_desc(C)
                assert float(ev.min()) >= -tol * float(ev.max())
                if M.shape[0] > 4:  # Brand path, truncated: continued tail, different from plain B-KFAC
                    assert _rel(C, B) > 1e-6, (method, layer)
                    assert _rel(C, M) < 1.0


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"truncation_rank": 0}, "`truncation_rank`"),
        ({"truncation_rank": -2}, "`truncation_rank`"),
        ({"truncation_rank": 1.5}, "`truncation_rank`"),
        ({"truncation_rank": 0.0}, "`truncation_rank`"),
        ({"truncation_rank": True}, "`truncation_rank`"),
        ({"truncation_rank": "4"}, "`truncation_rank`"),
        ({"rsvd_every": 0}, "`rsvd_every`"),
        ({"correct_every": 2.0}, "`correct_every`"),
        ({"oversample": 0}, "`oversample`"),
        ({"correct_fraction": 0.0}, "`correct_fraction`"),
        ({"correct_fraction": 1.5}, "`correct_fraction`"),
        ({"continuation": 1}, "`continuation`"),
    ],
)
def test_bad_options_raise(opts: dict, match: str) -> None:
    model, x = _mlp(torch.float64)
    with pytest.raises(ValueError, match=match):
        fisher_blocks(model, x, method="b_kfac", seed=0, **opts)
