"""Parity of the frame-feature extractor with the official DnS FeatureExtractor (backbone.npz)."""
import pathlib

import numpy as np
import pytest

from dns_jax.features import (build_whitening, convert_torchvision_resnet, imagenet_normalize,
                              load_extractor, load_pca)
from dns_jax.features.regions import adaptive_max_pool, l3_imac
from tests.reference import Reference, assert_close

ATOL = 1e-4  # a 50-layer float32 network; the official run is float32 too


@pytest.fixture(scope="module")
def ref():
    return Reference("backbone")


@pytest.fixture(scope="module")
def official_pca(ref):
    """The synthetic stand-in for the official `{mean, V, d}` download (V rebuilt from the recipe)."""
    return {"mean": ref.raw["download/pca/mean"], "d": ref.raw["download/pca/d"],
            "V": ref.state["download:pca.V"]}


@pytest.fixture(scope="module")
def extractor(ref, official_pca):
    return load_extractor(ref.state, official_pca, dims=512, batch_size=2)


def test_converter_report(ref):
    variables, report = convert_torchvision_resnet(ref.state)
    assert report.prefix == "cnn." and report.ok
    assert {"cnn.fc.weight", "cnn.fc.bias", "cnn.bn1.num_batches_tracked"} <= set(report.ignored)
    assert set(report.skipped) == {"normalizer.scale", "normalizer.mean", "normalizer.std", "download:pca.V"}
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert variables["params"]["layer4_0"]["downsample_conv"]["kernel"].shape == (1, 1, 1024, 2048)
    np.testing.assert_array_equal(variables["batch_stats"]["layer2_3"]["bn2"]["var"],
                                  ref.state["cnn.layer2.3.bn2.running_var"])


def test_converter_errors(ref):
    bare = {k[4:]: v for k, v in ref.state.items() if k.startswith("cnn.")}
    bad = {**bare, "layer3.1.conv2.weight": np.zeros((256, 128, 3, 3), np.float32),
           "layer3.1.conv3.weight": np.zeros((1024, 128, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"(?s)layer3\.1\.conv2\.weight: \(256, 128, 3, 3\).*layer3\.1\.conv3"):
        convert_torchvision_resnet(bad)
    missing = {k: v for k, v in bare.items() if k != "layer1.2.bn3.running_var"}
    with pytest.raises(ValueError, match="missing: batch_stats/layer1_2/bn3/var"):
        convert_torchvision_resnet(missing)
    _, report = convert_torchvision_resnet({**bare, "layer5.0.conv1.weight": np.zeros(1)}, strict=False)
    assert report.unexpected == ["layer5.0.conv1.weight"]
    with pytest.raises(ValueError, match="unexpected: layer5.0.conv1.weight"):
        convert_torchvision_resnet({**bare, "layer5.0.conv1.weight": np.zeros(1)})


def test_normalizer(ref):
    x = np.asarray(imagenet_normalize(ref.inp["frames_224x224_uint8"]), np.float64)
    assert_close(x.mean(axis=(0, 1, 2)), ref.out["normalized_mean_per_channel"], atol=1e-6)


def test_regions_3840(ref):
    ex = load_extractor(ref.state, None, batch_size=2)
    assert ex.dims == 3840
    assert_close(ex(ref.inp["frames_224x224_uint8"]), ref.out["regions_3840"], atol=ATOL, name="regions_3840")


def test_features_512(extractor, ref):
    out = extractor(ref.inp["frames_224x224_uint8"])
    assert out.dtype == np.float32 and out.shape == (2, 9, 512)
    assert_close(out, ref.out["features_512"], atol=ATOL, name="features_512")


def test_features_512_rect(ref, official_pca):
    ex = load_extractor(ref.state, official_pca, dims=512, batch_size=1)
    out = ex(ref.inp["frames_224x288_uint8"])
    assert out.shape == (1, 12, 512) == ex.output_shape(1, 224, 288)
    assert_close(out, ref.out["features_512_rect"], atol=ATOL, name="features_512_rect")


def test_batches_are_padded_and_cut(extractor, ref):
    frames = ref.inp["frames_224x224_uint8"]
    out = extractor(np.concatenate([frames, frames[:1]]))  # 3 frames in batches of 2
    assert out.shape == (3, 9, 512)
    np.testing.assert_allclose(out[2], out[0], atol=1e-6)
    assert extractor(frames[:0]).shape == (0, 9, 512)


def test_built_pca_layout_matches_official(ref, official_pca, extractor):
    built = build_whitening(**official_pca, dims=512)
    dns_state = {**ref.state, "pca.mean": built["mean"], "pca.DVt": built["DVt"]}
    loaded = load_pca(dns_state, 512)
    np.testing.assert_array_equal(loaded["DVt"], built["DVt"])
    np.testing.assert_array_equal(extractor.variables["params"]["pca"]["DVt"], built["DVt"])
    with pytest.raises(ValueError, match="keeps 512 components, 256 were asked"):
        load_pca(dns_state, 256)


def test_build_whitening_formula():
    rng = np.random.default_rng(0)
    V = rng.normal(size=(6, 6)).astype(np.float32)
    d = np.array([0.5, 3.0, 0.1, 2.0, 0.0, 1.0], np.float32)
    out = build_whitening(np.zeros(6), V, d, dims=3)
    want = V[:, [1, 3, 5]] / np.sqrt(d[[1, 3, 5]] + 1e-7)
    np.testing.assert_allclose(out["DVt"], want, rtol=1e-6)


def test_adaptive_max_pool_bins():
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 3)).astype(np.float32)
    got = np.asarray(adaptive_max_pool(x, (3, 4)))
    # torch bins: [floor(i*in/out), ceil((i+1)*in/out))
    rows = [(0, 2), (1, 4), (3, 5)]
    cols = [(0, 2), (1, 4), (3, 6), (5, 7)]
    want = np.stack([np.stack([x[:, r0:r1, c0:c1].max(axis=(1, 2)) for c0, c1 in cols], 1) for r0, r1 in rows], 1)
    np.testing.assert_array_equal(got, want)


def test_l3_imac_grid_and_errors():
    rng = np.random.default_rng(2)
    stages = [rng.random((1, s, s + s // 4 + 1, c)).astype(np.float32)
              for s, c in ((56, 4), (28, 8), (14, 16), (7, 32))]
    out = np.asarray(l3_imac(stages))
    assert out.shape == (1, 12, 60)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than its region kernel 28"):
        l3_imac([s[:, :20] for s in stages])


def test_extractor_input_errors(extractor):
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        extractor(np.zeros((2, 224, 224), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        extractor(np.zeros((1, 224, 224, 3), np.int32))
    with pytest.raises(FileNotFoundError, match="not a known backbone name"):
        load_extractor("resnet50_imagenet_please")


def test_pth_paths_go_through_dns_jax_pth(ref, official_pca, tmp_path, monkeypatch):
    """A .pth backbone/PCA path is read with dns_jax.pth.load_state_dict (torch-free)."""
    import dns_jax.pth
    from dns_jax.features.extractor import _backbone

    files = {"resnet50.pth": {k: v for k, v in ref.state.items() if k.startswith("cnn.")},
             "pca.pth": official_pca}
    for name in files:
        (tmp_path / name).write_bytes(b"stand-in")
    monkeypatch.setattr(dns_jax.pth, "load_state_dict", lambda p: files[pathlib.Path(p).name])
    model, normalizer, variables, name = _backbone(tmp_path / "resnet50.pth", None)
    assert (normalizer, name, model.width) == ("imagenet", "resnet50.pth", 64)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  ref.state["cnn.conv1.weight"].transpose(2, 3, 1, 0))
    pca = load_pca(tmp_path / "pca.pth", dims=512)
    np.testing.assert_array_equal(pca["DVt"], build_whitening(**official_pca, dims=512)["DVt"])
    bad_norm = {**files["resnet50.pth"], "normalizer.mean": np.array([0.5, 0.5, 0.5], np.float32)}
    with pytest.raises(ValueError, match="normalizer.mean"):
        _backbone(bad_norm, None)
