"""Streaming PCA fitting: the official {mean, V, d} layout, equal to a one-shot eigendecomposition."""
import numpy as np
import pytest

from dns_jax.features import PCAFitter, PCAWhitening, build_whitening, fit_pca, load_pca
from dns_jax.features.pca import auto_shrink


def _data(n=3000, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) * np.linspace(3, 0.1, dim)[None, :]
    return (rng.normal(size=(n, dim)) @ mix.T + 5.0).astype(np.float32)


def test_streaming_equals_one_shot():
    x = _data()
    batches = [x[i:i + 97].reshape(-1, 1, x.shape[1]) for i in range(0, len(x), 97)]  # [T, R=1, D]
    pca = fit_pca(batches)
    assert pca["mean"].dtype == pca["V"].dtype == pca["d"].dtype == np.float32
    np.testing.assert_allclose(pca["mean"], x.astype(np.float64).mean(0), rtol=1e-6)
    d_ref = np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(pca["d"], d_ref, rtol=1e-5)
    assert np.all(np.diff(pca["d"]) <= 0)
    # eigenvectors: orthonormal columns that diagonalise the covariance
    V = pca["V"].astype(np.float64)
    np.testing.assert_allclose(V.T @ V, np.eye(x.shape[1]), atol=1e-5)
    cov = np.cov(x.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(V.T @ cov @ V, np.diag(pca["d"]), atol=1e-4 * pca["d"][0])


def test_fitted_whitening_whitens():
    x = _data(seed=1)
    white = build_whitening(**fit_pca([x]), dims=8)
    y = (x - white["mean"]) @ white["DVt"]
    np.testing.assert_allclose(np.cov(y.astype(np.float64), rowvar=False), np.eye(8), atol=1e-3)
    # the Flax layer applies the same projection, then L2-normalises
    out = np.asarray(PCAWhitening(x.shape[1], 8).apply({"params": white}, x[:5]))
    np.testing.assert_allclose(out, y[:5] / np.linalg.norm(y[:5], axis=1, keepdims=True), atol=1e-5)


def test_npz_round_trip_and_errors(tmp_path):
    pca = fit_pca([_data(n=200, dim=6)])
    np.savez(tmp_path / "pca.npz", **pca)
    loaded = load_pca(tmp_path / "pca.npz", dims=4)
    np.testing.assert_array_equal(loaded["DVt"], build_whitening(**pca, dims=4)["DVt"])
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pca(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="no PCA weights found"):
        load_pca({"weight": np.zeros(3)})
    with pytest.raises(ValueError, match="dims must be in 1..6"):
        load_pca(pca, dims=7)
    fitter = PCAFitter().update(np.zeros((1, 6)))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        fitter.result()
    with pytest.raises(ValueError, match="width 5 after width 6"):
        fitter.update(np.zeros((3, 5)))


def test_fit_from_feature_file_cli(tmp_path):
    h5py = pytest.importorskip("h5py")
    from dns_jax.cli import main as cli_main

    x = _data(n=600, dim=10, seed=3)
    with h5py.File(tmp_path / "regions.hdf5", "w") as h5:
        h5["v1"] = x[:270].reshape(30, 9, 10)
        h5["set/v2"] = x[270:].reshape(-1, 3, 10)
    assert cli_main(["pca", "--features", str(tmp_path / "regions.hdf5"), "--output", str(tmp_path / "pca.npz")]) == 0
    with np.load(tmp_path / "pca.npz") as z:
        got = {k: z[k] for k in z.files}
    want = fit_pca([x])  # visit order: set/v2 then v1; the sums do not depend on it
    assert "shrink" not in got      # the official layout unless --shrink is given
    np.testing.assert_allclose(got["d"], want["d"], rtol=1e-5)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-5)
    assert cli_main(["pca", "--features", str(tmp_path / "regions.hdf5"), "--output", str(tmp_path / "p2.npz"),
                 "--max-vectors", "100"]) == 0
    with np.load(tmp_path / "p2.npz") as z:  # h5py visits 'set/v2' before 'v1'
        np.testing.assert_allclose(z["mean"], x[270:370].astype(np.float64).mean(0), rtol=1e-5)


def test_shrunk_whitening_divides_by_the_regularised_eigenvalues(tmp_path):
    """shrink s: DVt[:, j] = V[:, j] / sqrt(d_j + s * mean(kept d) + eps), from an npz's `shrink` key."""
    rng = np.random.default_rng(3)
    D, dims = 12, 5
    V = np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
    d = rng.uniform(0.1, 4.0, D).astype(np.float32)
    mean = rng.normal(size=D).astype(np.float32)
    top = np.argsort(-d)[:dims]
    expect = V[:, top] / np.sqrt(d[top] + 2.5 * d[top].mean() + 1e-7)
    np.testing.assert_allclose(build_whitening(mean, V, d, dims, shrink=2.5)["DVt"], expect, rtol=1e-5)
    np.testing.assert_allclose(build_whitening(mean, V, d, dims)["DVt"], V[:, top] / np.sqrt(d[top] + 1e-7),
                               rtol=1e-6)
    np.savez(tmp_path / "p.npz", mean=mean, V=V, d=d, shrink=np.float64(2.5))
    np.testing.assert_allclose(load_pca(str(tmp_path / "p.npz"), dims)["DVt"], expect, rtol=1e-5)
    np.savez(tmp_path / "bad.npz", mean=mean, V=V, d=d, shrink=np.float64(-1))
    with pytest.raises(ValueError, match="shrink must be a number >= 0"):
        load_pca(str(tmp_path / "bad.npz"), dims)
    assert auto_shrink(512, 170) == pytest.approx(512 / 170)
    with pytest.raises(ValueError, match="positive"):
        auto_shrink(512, 0)


def test_pca_cli_stores_a_shrink_and_refuses_a_negative_one(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    from dns_jax.cli import main as cli_main
    with h5py.File(tmp_path / "regions.hdf5", "w") as h5:
        h5["v1"] = _data(n=270, dim=10, seed=4).reshape(30, 9, 10)
    out = str(tmp_path / "pca.npz")
    assert cli_main(["pca", "--features", str(tmp_path / "regions.hdf5"), "--output", out, "--shrink", "1.5"]) == 0
    with np.load(out) as z:
        assert float(z["shrink"]) == 1.5
        d, V = z["d"], z["V"]
    np.testing.assert_allclose(load_pca(out, 4)["DVt"], V[:, :4] / np.sqrt(d[:4] + 1.5 * d[:4].mean() + 1e-7),
                               rtol=1e-5)
    assert cli_main(["pca", "--features", str(tmp_path / "regions.hdf5"), "--output", out, "--shrink", "-1"]) == 2
    assert "--shrink must be a number >= 0" in capsys.readouterr().err
