"""The approximation-quality report: metrics, datasets, models, and an end-to-end run at a tiny size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from nn_adapters import datasets, models, report  # noqa: E402

# ----------------------------------------------------------------------------------------------------- metrics


def _spd(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, 2 * d))
    return X @ X.T / (2 * d)


def test_exact_approximation_has_zero_errors():
    F = _spd(12)
    assert report.frobenius_error(F, F) == 0.0
    assert report.spectrum_error(report.spectrum(F), report.spectrum(F.copy())) == 0.0


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 3.0])
def test_errors_of_a_scaled_matrix(c):
    F = _spd(9, seed=1)
    assert report.frobenius_error(F, c * F) == pytest.approx(abs(1 - c), abs=1e-13)
    assert report.spectrum_error(report.spectrum(F), report.spectrum(c * F)) == pytest.approx(abs(1 - c), abs=1e-13)


def test_hand_made_values():
    F, F_hat = np.diag([3.0, 4.0]), np.diag([0.0, 4.0])
    assert report.frobenius_error(F, F_hat) == pytest.approx(0.6)
    # same eigenvalues in another order: the sorted spectra agree, the matrices do not
    P = np.diag([1.0, 3.0])
    assert report.spectrum_error(report.spectrum(np.diag([3.0, 1.0])), report.spectrum(P)) == 0.0
    assert report.frobenius_error(np.diag([3.0, 1.0]), P) == pytest.approx(math.sqrt(8 / 10))
    # ‖(3, 1) − (2, 0)‖ / ‖(3, 1)‖
    assert report.spectrum_error([3.0, 1.0], [2.0, 0.0]) == pytest.approx(math.sqrt(2 / 10))


def test_error2_is_invariant_under_orthogonal_similarity():
    F = _spd(8, seed=2)
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((8, 8)))
    G = Q @ F @ Q.T
    assert report.spectrum_error(report.spectrum(F), report.spectrum(G)) < 1e-12
    assert report.frobenius_error(F, G) > 1e-3


def test_spectrum_is_descending_and_accepts_tensors():
    M = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    np.testing.assert_allclose(report.spectrum(M), [3.0, 1.0])
    assert report.frobenius_error(M, M.clone()) == 0.0


def test_kron_spectrum_matches_the_dense_spectrum():
    from kronalg import KronSum

    G, A = _spd(3, seed=4) - 0.2 * np.eye(3), _spd(4, seed=5)
    K = KronSum([(torch.from_numpy(G), torch.from_numpy(A))])
    np.testing.assert_allclose(report.kron_spectrum(K), report.spectrum(np.kron(G, A)), rtol=1e-12, atol=1e-14)
    assert report.kron_spectrum(KronSum([(G, A), (G, A)])) is None
    assert report.kron_spectrum(KronSum([(G + np.triu(np.ones((3, 3)), 1), A)])) is None


def test_metric_shape_mismatch_raises():
    with pytest.raises(ValueError, match="`F_hat`"):
        report.frobenius_error(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="`spec_F_hat`"):
        report.spectrum_error(np.ones(2), np.ones(3))


def test_aggregate_and_best_methods_with_ties():
    recs = []
    for seed, (a, b, c) in enumerate([(0.5, 0.1, 0.1), (0.7, 0.3, 0.3)]):
        for method, e in (("kfac", a), ("deflation", b), ("lanczos", c)):
            recs.append(
                {"seed": seed, "layer": "fc1", "method": method, "batch_label": "full", "error1": e, "error2": 0.0}
                | {"seconds": 0.01}
            )
    agg = report.aggregate(recs)
    assert agg["fc1"]["kfac"]["full"]["error1"] == pytest.approx({"mean": 0.6, "min": 0.5, "max": 0.7})
    best = report.best_methods(agg)["fc1"]["full"]
    assert best["method"] == "deflation"
    assert best["tied"] == ["lanczos"]
    assert best["error1"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------- datasets


def test_diabetes_shapes_and_standardization():
    ds = datasets.load_diabetes()
    assert tuple(ds.inputs.shape) == (442, 10)
    assert tuple(ds.targets.shape) == (442, 1)
    assert ds.inputs.dtype == torch.float64
    np.testing.assert_allclose(ds.inputs.mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.inputs.std(0, unbiased=False).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(float(ds.targets.std(unbiased=False)), 1.0, atol=1e-12)


def test_digits_images_shapes():
    ds = datasets.load_digits_images(dtype=torch.float32)
    assert tuple(ds.inputs.shape) == (1797, 1, 8, 8)
    assert ds.inputs.dtype == torch.float32
    assert tuple(ds.targets.shape) == (1797,)
    assert ds.targets.dtype == torch.int64
    assert set(ds.targets.unique().tolist()) == set(range(10))
    assert abs(float(ds.inputs.mean())) < 1e-5


def test_digits_flat_shapes_and_range():
    ds = datasets.load_digits_flat()
    assert tuple(ds.inputs.shape) == (1797, 64) == tuple(ds.targets.shape)
    assert float(ds.inputs.min()) == 0.0
    assert float(ds.inputs.max()) == 1.0
    torch.testing.assert_close(ds.inputs, ds.targets)


# ------------------------------------------------------------------------------------------------------ models


def test_model_output_shapes_and_layers():
    torch.manual_seed(0)
    mlp, cnn, ae = models.uci_mlp(), models.digits_lenet(), models.digits_autoencoder()
    assert mlp(torch.zeros(5, 10)).shape == (5, 1)
    assert cnn(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    out = ae(torch.zeros(5, 64))
    assert out.shape == (5, 64)
    assert bool(((out > 0) & (out < 1)).all())
    assert report.layer_dims(mlp) == {"fc1": (50, 11), "fc2": (1, 51)}
    assert report.layer_dims(cnn) == {"conv1": (6, 26), "conv2": (16, 55), "fc1": (32, 65), "fc2": (10, 33)}
    dims = report.layer_dims(ae)
    assert list(dims) == [f"enc{i}" for i in range(1, 5)] + [f"dec{i}" for i in range(1, 5)]
    assert dims["enc4"] == (8, 33)
    assert dims["dec1"] == (32, 9)


def test_autoencoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="`sizes`"):
        models.digits_autoencoder((64, 32, 16, 64))


# ------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    status = report.main(["--quick", "--no-progress", "--out", str(out)])
    return status, out


def test_quick_run_exits_normally_and_writes_files(quick_run):
    status, out = quick_run
    assert status == 0
    for key in report.SETTINGS:
        png = out / f"{key}.png"
        assert png.is_file()
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_json(quick_run):
    _, out = quick_run
    doc = json.loads((out / "report.json").read_text())
    assert set(doc) == {"meta", "settings"}
    assert set(doc["settings"]) == set(report.SETTINGS)
    assert doc["meta"]["methods"].keys() == report.METHODS.keys()
    assert doc["meta"]["batch_sizes"] == ["4", "full"]
    for key, s in doc["settings"].items():
        assert {"title", "loss", "fisher_samples", "layers", "train_loss", "summary", "best", "records"} <= set(s)
        assert s["layers"], key
        n_expected = len(s["layers"]) * len(report.METHODS) * 2
        assert len(s["records"]) == n_expected
        for r in s["records"]:
            assert {"seed", "batch_label", "batch_size", "method", "layer", "error1", "error2", "seconds"} <= set(r)
            for metric in ("error1", "error2", "seconds"):
                assert math.isfinite(r[metric])
                assert r[metric] >= 0
        for layer, by_label in s["best"].items():
            assert set(by_label) == {"4", "full"}
            assert all(w["method"] in report.METHODS for w in by_label.values()), layer


def test_quick_run_includes_the_puiu_methods(quick_run):
    _, out = quick_run
    doc = json.loads((out / "report.json").read_text())
    low_rank = ("rs_kfac", "b_kfac", "b_r_kfac", "b_kfac_c")
    assert set(low_rank) <= set(report.METHODS) and set(low_rank) <= set(report.RANK_ONE)
    assert doc["meta"]["truncation_rank"] == report.DEFAULT_TRUNCATION_RANK
    for m in low_rank:
        assert doc["meta"]["methods"][m] == {"method": m, "truncation_rank": report.DEFAULT_TRUNCATION_RANK}
    for s in doc["settings"].values():
        for layer, spec in s["layers"].items():
            p, r = spec["W_shape"]
            assert spec["truncation_ranks"] == [-(-p // 4), -(-r // 4)], layer
        err = {(r["layer"], r["batch_label"], r["method"]): r["error1"] for r in s["records"]}
        for (layer, label, method), e in err.items():
            if method in low_rank:  # one PSD Kronecker product: never below the optimal one
                assert e >= err[layer, label, "kpsvd"] * (1 - 1e-5) - 1e-9


def test_cli_truncation_rank(tmp_path, capsys):
    argv = ["--quick", "--no-progress", "--settings", "mlp", "--methods", "kfac", "rs_kfac", "b_kfac"]
    assert report.main([*argv, "--truncation-rank", "1000", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["meta"]["methods"]["b_kfac"]["truncation_rank"] == 1000
    err = {(r["layer"], r["batch_label"], r["method"]): r["error1"] for r in doc["settings"]["mlp"]["records"]}
    for (layer, label, _), e in err.items():  # untruncated: K-FAC
        assert e == pytest.approx(err[layer, label, "kfac"], rel=1e-8, abs=1e-12)
    assert "Puiu truncation ranks 50/50, 11/11" in capsys.readouterr().out
    for bad in ("0", "1.5", "x"):
        with pytest.raises(SystemExit) as exc:
            report.main(["--truncation-rank", bad, "--out", str(tmp_path)])
        assert exc.value.code == 2


def test_method_options_follow_the_cli():
    ap = report._parser()
    cfg = report._resolve(ap.parse_args(["--no-continuation", "--truncation-rank", "3"]), ap)
    assert report.method_options("b_kfac", cfg) == {"truncation_rank": 3, "continuation": False}
    assert report.method_options("kpsvd", cfg) == {"tol": report.TOL}
    cfg = report._resolve(ap.parse_args(["--truncation-rank", "0.5"]), ap)
    assert report.method_options("rs_kfac", cfg) == {"truncation_rank": 0.5}


def test_quick_run_kpsvd_is_no_worse_than_kfac(quick_run):
    _, out = quick_run
    doc = json.loads((out / "report.json").read_text())
    for s in doc["settings"].values():
        err = {(r["layer"], r["batch_label"], r["method"]): r["error1"] for r in s["records"]}
        for layer, label, method in err:
            if method == "kfac":
                assert err[layer, label, "kpsvd"] <= err[layer, label, "kfac"] + 1e-9


def test_quick_run_prints_table_and_winners(tmp_path, capsys):
    argv = ["--quick", "--no-progress", "--settings", "mlp", "--methods", "kfac", "kpsvd", "--out", str(tmp_path)]
    assert report.main(argv) == 0
    text = capsys.readouterr().out
    assert "Lowest mean Error 1" in text
    assert "first 24" in text
    assert str(tmp_path / "report.json") in text


def test_cli_rejects_bad_batch_size(tmp_path):
    with pytest.raises(SystemExit) as exc:
        report.main(["--batch-sizes", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_runnable_as_module():
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-m", "nn_adapters.report", "--help"], cwd=root, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "--settings" in res.stdout
