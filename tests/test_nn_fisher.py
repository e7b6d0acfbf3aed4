"""Fisher blocks of torch layers against the dense exact block (nn_adapters.fisher_blocks)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kronalg import SampleKronSum, kron  # noqa: E402
from nn_adapters import (  # noqa: E402
    METHODS,
    UnsupportedLayerWarning,
    exact_fisher_blocks,
    fisher_blocks,
    fisher_sample_sums,
    get_adapter,
    register_adapter,
    sample_targets,
)
from nn_adapters.capture import make_rng  # noqa: E402
from nn_adapters.fisher import BRAND_METHODS  # noqa: E402

LOSSES = ["cross_entropy", "mse"]


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))
    return model, torch.randn(16, 4)


def _conv() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2, dilation=2, bias=False),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return model, torch.randn(10, 2, 8, 8)


def _conv_variants() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 2, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
        nn.ReLU(inplace=True),
        nn.Conv2d(2, 2, 3, padding="same", padding_mode="reflect"),
        nn.Flatten(),
        nn.Linear(2 * 5 * 2, 3),
    )
    return model, torch.randn(9, 1, 5, 5)


def _sequence() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(20, 3))
    return model, torch.randn(8, 5, 3)


MODELS = {"mlp": _mlp, "conv": _conv, "conv_variants": _conv_variants, "sequence": _sequence}


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model, x = MODELS[name]()
    return model.double().eval(), x.double()


def rel_err(K, dense: torch.Tensor) -> float:
    return float(torch.linalg.norm(K.to_dense() - dense) / torch.linalg.norm(dense))


@pytest.fixture(scope="module")
def cases() -> dict:
    """Model, input, exact blocks and every method's blocks, for each model and loss (computed once)."""
    out = {}
    for name in MODELS:
        for loss in LOSSES:
            model, x = make(name)
            exact = exact_fisher_blocks(model, x, loss=loss, seed=3)
            blocks = {m: fisher_blocks(model, x, method=m, loss=loss, seed=3) for m in METHODS}
            out[name, loss] = (model, x, exact, blocks)
    return out


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(MODELS))
def test_sample_sum_equals_exact_block(name: str, loss: str) -> None:
    model, x = make(name)
    exact = exact_fisher_blocks(model, x, loss=loss, seed=1)
    sums = fisher_sample_sums(model, x, loss=loss, seed=1)
    assert set(sums) == set(exact) and len(sums) >= 2
    for layer, S in sums.items():
        assert isinstance(S, SampleKronSum)
        torch.testing.assert_close(S.to_dense(), exact[layer], rtol=1e-10, atol=1e-12)
    assert sums.n_samples == exact.n_samples == x.shape[0]


def _hand_kfac(model: nn.Module, x: torch.Tensor, loss: str, seed: int) -> dict:
    """K-FAC factors from retained activations and gradients, written out independently."""
    model = copy.deepcopy(model)
    for module in model.modules():  # retain_grad would see the gradient after an in-place activation
        if getattr(module, "inplace", False):
            module.inplace = False
    saved = {}

    def hook(name):
        def fn(module, args, output):
            output.retain_grad()
            saved[name] = (module, args[0].detach().clone(), output)

        return fn

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    out = model(x)
    for h in handles:
        h.remove()
    y = sample_targets(out, loss, make_rng(seed))
    if loss == "cross_entropy":
        total = F.cross_entropy(out, y, reduction="sum")
    else:
        total = 0.5 * ((out - y) ** 2).sum()
    total.backward()
    n = x.shape[0]
    result = {}
    for name, (module, inp, output) in saved.items():
        if isinstance(module, nn.Linear):
            a = inp.reshape(n, -1, inp.shape[-1])
            g = output.grad.reshape(n, -1, output.shape[-1])
        else:
            padded = inp
            padding = module.padding
            if isinstance(padding, str) or module.padding_mode != "zeros":
                padded = F.pad(inp, module._reversed_padding_repeated_twice, mode=module.padding_mode)
                padding = 0
            a = F.unfold(padded, module.kernel_size, module.dilation, padding, module.stride).transpose(1, 2)
            g = output.grad.flatten(2).transpose(1, 2)
        if module.bias is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        T = a.shape[1]
        G = torch.einsum("ntp,ntq->pq", g, g) / n
        A = torch.einsum("ntp,ntq->pq", a, a) / (n * T)
        result[name] = (G, A)
    return result


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(MODELS))
def test_kfac_is_hand_computed_kronecker_product(cases: dict, name: str, loss: str) -> None:
    model, x, _, blocks = cases[name, loss]
    hand = _hand_kfac(model, x, loss, seed=3)
    for layer, K in blocks["kfac"].items():
        ((G, A),) = K.factors
        torch.testing.assert_close(G, hand[layer][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(A, hand[layer][1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(K.to_dense(), kron(*hand[layer]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(MODELS))
def test_error_ordering(cases: dict, name: str, loss: str) -> None:
    _, _, exact, blocks = cases[name, loss]
    slack = 1e-8
    for layer, dense in exact.items():
        err = {m: rel_err(blocks[m][layer], dense) for m in METHODS}
        for m in ("kfac", "tkfac", "kfoc"):  # the KPSVD is the optimal Kronecker product
            assert err["kpsvd"] <= err[m] + slack, (layer, err)
        for m in ("deflation", "lanczos"):
            assert err[m] <= err["kpsvd"] + slack, (layer, err)
            assert len(blocks[m][layer]) == 2
        assert err["kfac_corrected"] <= err["kfac"] + slack, (layer, err)
        for m in BRAND_METHODS:  # the default truncation rank 32 covers these small layers: K-FAC itself
            assert abs(err[m] - err["kfac"]) < 1e-9, (m, layer, err)
        assert abs(err["deflation"] - err["lanczos"]) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(MODELS))
def test_factor_shapes_order_and_symmetry(cases: dict, name: str, loss: str) -> None:
    model, _, exact, blocks = cases[name, loss]
    modules = dict(model.named_modules())
    for m in METHODS:
        for layer, K in blocks[m].items():
            module = modules[layer]
            p = module.weight.shape[0]
            r = module.weight[0].numel() + (module.bias is not None)
            assert K.a_shape == (p, p) and K.b_shape == (r, r), m
            assert K.shape == exact[layer].shape
            dense = K.to_dense()
            torch.testing.assert_close(dense, dense.T, rtol=1e-8, atol=1e-12)
            if m in ("kfac", "tkfac", "kpsvd", "kfoc", *BRAND_METHODS):  # a single PSD pair
                assert len(K) == 1, m
                for factor in K.factors[0]:
                    assert float(torch.linalg.eigvalsh(factor).min()) >= -1e-10 * float(factor.abs().max())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", list(MODELS))
def test_tkfac_preserves_trace(cases: dict, name: str, loss: str) -> None:
    _, _, exact, blocks = cases[name, loss]
    for layer, dense in exact.items():
        torch.testing.assert_close(blocks["tkfac"][layer].trace(), torch.trace(dense), rtol=1e-12, atol=0.0)


def test_tkfac_thm43_variant() -> None:
    model, x = make("mlp")  # Linear layers: Thm 4.3 reduces to eq. 4.9
    a = fisher_blocks(model, x, method="tkfac", seed=0)
    b = fisher_blocks(model, x, method="tkfac", seed=0, tkfac_variant="thm4.3")
    for layer in a:
        torch.testing.assert_close(a[layer].to_dense(), b[layer].to_dense())
    model, x = make("conv")
    b = fisher_blocks(model, x, method="tkfac", seed=0, tkfac_variant="thm4.3")
    S = fisher_sample_sums(model, x, seed=0)
    G, A = S["0"].location_factors()
    flat = SampleKronSum.from_factors(G.reshape(-1, G.shape[-1]), A.reshape(-1, A.shape[-1]), weights=1 / x.shape[0])
    torch.testing.assert_close(b["0"].trace(), flat.trace())  # the trace of Σ_t E[ds ds ᵀ ⊗ â âᵀ]


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_kfoc_single_batch_equals_kpsvd(cases: dict, name: str) -> None:
    _, _, _, blocks = cases[name, "cross_entropy"]
    for layer, K in blocks["kpsvd"].items():
        torch.testing.assert_close(blocks["kfoc"][layer].to_dense(), K.to_dense(), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("aggregate", ["running", "approx"])
def test_kfoc_streams_minibatches(aggregate: str) -> None:
    model, x = make("conv")
    exact = exact_fisher_blocks(model, x, seed=2)
    kpsvd = fisher_blocks(model, x, method="kpsvd", seed=2)
    kfoc = fisher_blocks(model, list(x.split(3)), method="kfoc", seed=2, aggregate=aggregate)
    for layer, dense in exact.items():
        assert rel_err(kpsvd[layer], dense) <= rel_err(kfoc[layer], dense) + 1e-10
        assert rel_err(kfoc[layer], dense) < 1.0


def test_kfac_exact_for_linear_layer_with_mse() -> None:
    """One linear layer, Gaussian likelihood: E[g gᵀ] = I independently of ā, so K-FAC is the Fisher."""
    torch.manual_seed(0)
    d_in, d_out, m = 3, 4, 5
    model = nn.Linear(d_in, d_out).double()
    inputs = torch.randn(m, d_in, dtype=torch.float64)
    x = inputs.repeat_interleave(d_out, dim=0)  # each input with residuals √d e_1 … √d e_d: E[ε εᵀ] = I exactly
    residual = (d_out**0.5) * torch.eye(d_out, dtype=torch.float64).repeat(m, 1)
    with torch.no_grad():
        y = model(x) + residual
    exact = exact_fisher_blocks(model, x, targets=y, loss="mse")[""]
    K = fisher_blocks(model, x, method="kfac", targets=y, loss="mse")[""]
    torch.testing.assert_close(K.to_dense(), exact, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(K.factors[0][0], torch.eye(d_out, dtype=torch.float64))


@pytest.mark.parametrize("method", ["kfac", "tkfac", "kpsvd", "deflation", "lanczos", "kfac_corrected"])
def test_minibatches_equal_one_tensor(method: str) -> None:
    model, x = make("conv")
    whole = fisher_blocks(model, x, method=method, seed=5)
    parts = fisher_blocks(model, list(x.split(4)), method=method, seed=5)
    assert parts.n_samples == whole.n_samples
    for layer, K in whole.items():
        torch.testing.assert_close(parts[layer].to_dense(), K.to_dense(), rtol=1e-7, atol=1e-10)


def test_minibatch_target_forms() -> None:
    model, x = make("mlp")
    y = torch.randint(0, 3, (x.shape[0],))
    whole = fisher_sample_sums(model, x, targets=y)
    as_lists = fisher_sample_sums(model, list(x.split(5)), targets=list(y.split(5)))
    as_pairs = fisher_sample_sums(model, list(zip(x.split(5), y.split(5))), targets="empirical")
    sampled_pairs = fisher_sample_sums(model, list(zip(x.split(5), y.split(5))), seed=1)  # y ignored
    sampled = fisher_sample_sums(model, x, seed=1)
    for layer, S in whole.items():
        torch.testing.assert_close(as_lists[layer].to_dense(), S.to_dense())
        torch.testing.assert_close(as_pairs[layer].to_dense(), S.to_dense())
        torch.testing.assert_close(sampled_pairs[layer].to_dense(), sampled[layer].to_dense())


@pytest.mark.parametrize("loss", LOSSES)
def test_empirical_fisher(loss: str) -> None:
    model, x = make("conv")
    y = torch.randint(0, 3, (x.shape[0],)) if loss == "cross_entropy" else torch.randn(x.shape[0], 3).double()
    exact = exact_fisher_blocks(model, x, targets=y, loss=loss)
    sums = fisher_sample_sums(model, x, targets=y, loss=loss)
    sampled = fisher_sample_sums(model, x, loss=loss, seed=0)
    for layer, dense in exact.items():
        torch.testing.assert_close(sums[layer].to_dense(), dense, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(sampled[layer].to_dense(), dense)


def test_same_seed_same_targets() -> None:
    model, x = make("mlp")
    a = fisher_sample_sums(model, x, seed=7)
    b = fisher_sample_sums(model, list(x.split(3)), seed=7)
    c = fisher_sample_sums(model, x, seed=8)
    for layer in a:
        torch.testing.assert_close(a[layer].to_dense(), b[layer].to_dense())
        assert not torch.allclose(a[layer].to_dense(), c[layer].to_dense())


def test_unsupported_layers_are_reported() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1, groups=2), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(16, 3)
    ).double()
    frozen = nn.Linear(3, 3).double().requires_grad_(False)
    model.append(frozen)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    with pytest.warns(UnsupportedLayerWarning, match="groups=2") as record:
        blocks = fisher_blocks(model, x, method="kfac", seed=0)
    assert "GroupNorm" in str(record[0].message)
    assert set(blocks) == {"0", "4"}  # the frozen layer is skipped silently
    assert [name for name, _ in blocks.unsupported] == ["1", "2"]
    with pytest.raises(ValueError, match="no Fisher block"):
        fisher_blocks(model, x, method="kfac", seed=0, on_unsupported="raise")
    quiet = fisher_sample_sums(model, x, seed=0, on_unsupported="ignore")
    assert len(quiet.unsupported) == 2
    with pytest.warns(UnsupportedLayerWarning):
        exact = exact_fisher_blocks(model, x, seed=0)
    assert set(exact) == {"0", "4"}


def test_weight_sharing_rejected() -> None:
    lin = nn.Linear(3, 3).double()
    model = nn.Sequential(lin, nn.Tanh(), lin)
    with pytest.raises(ValueError, match="more than once"):
        fisher_blocks(model, torch.randn(4, 3, dtype=torch.float64), method="kfac", seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "kfca"}, "`method` must be one of"),
        ({"method": "kfac", "loss": "nll"}, "`loss` must be one of"),
        ({"method": "kfac", "tolerance": 1e-3}, r"unknown option\(s\) \['tolerance'\]; valid options"),
        ({"method": "kfoc", "aggregate": "mean"}, "`aggregate`"),
        ({"method": "tkfac", "tkfac_variant": "4.3"}, "`tkfac_variant`"),
        ({"method": "lanczos", "rank": 0}, "`rank`"),
        ({"method": "kpsvd", "tol": -1.0}, "`tol`"),
        ({"method": "kpsvd", "maxiter": 0}, "`maxiter`"),
        ({"method": "kpsvd", "nearest_method": "qr"}, "`nearest_method`"),
        ({"method": "rs_kfac", "truncation_rank": 0}, "`truncation_rank`"),
        ({"method": "b_kfac_c", "correct_fraction": 2.0}, "`correct_fraction`"),
        ({"method": "kfac", "targets": "true"}, "`targets` must be one of"),
        ({"method": "kfac", "on_unsupported": "skip"}, "`on_unsupported`"),
    ],
)
def test_argument_errors(kwargs: dict, match: str) -> None:
    model, x = make("mlp")
    with pytest.raises(ValueError, match=match):
        fisher_blocks(model, x, seed=0, **kwargs)


def test_target_form_errors() -> None:
    model, x = make("mlp")
    y = torch.randint(0, 3, (x.shape[0],))
    with pytest.raises(TypeError, match="a tensor `targets` needs `inputs` as one tensor"):
        fisher_blocks(model, list(x.split(4)), method="kfac", targets=y)
    with pytest.raises(ValueError, match="same number of minibatches"):
        fisher_blocks(model, list(x.split(4)), method="kfac", targets=list(y.split(4))[:3])
    with pytest.raises(ValueError, match="rows"):
        fisher_blocks(model, x, method="kfac", targets=y[:3])
    with pytest.raises(ValueError, match="empirical"):
        fisher_blocks(model, list(x.split(4)), method="kfac", targets="empirical")
    with pytest.raises(ValueError, match="no samples"):
        fisher_blocks(model, [], method="kfac")


def test_parameter_matrix_round_trip() -> None:
    model, _ = make("conv")
    for layer in (model[0], model[2], model[4]):
        adapter = get_adapter(layer)
        W = adapter.to_matrix(layer, layer.weight, layer.bias)
        p = layer.weight.shape[0]
        assert W.shape == (p, layer.weight[0].numel() + (layer.bias is not None))
        if layer.bias is not None:
            torch.testing.assert_close(W[:, -1], layer.bias)  # bias is the last column
        weight, bias = adapter.from_matrix(layer, W)
        torch.testing.assert_close(weight, layer.weight)
        assert (bias is None) == (layer.bias is None)


def test_register_adapter() -> None:
    class MyLinear(nn.Linear):
        pass

    assert get_adapter(MyLinear(2, 2)) is get_adapter(nn.Linear(2, 2))  # found through the MRO
    with pytest.raises(TypeError, match="`layer_type`"):
        register_adapter(int, get_adapter(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="`adapter` must define"):
        register_adapter(MyLinear, object())
    register_adapter(nn.Linear, get_adapter(nn.Linear(2, 2)))  # replacing is allowed
