"""ResNet-50 backbones for frame features, and conversion of torchvision weights.

The module works in NHWC and returns the outputs of the four residual stages (torchvision's
`layer1..layer4`), which is all the L3-iMAC region pooling needs: the classifier head
(`avgpool`, `fc`) is never built.

Two weight sources share this one module:

* torchvision `resnet50` state dicts (the DnS extractor's `cnn.*` keys): 64 base channels, the
  stride of a downsampling block on its 3x3 conv (ResNet "v1.5"), BatchNorm in inference mode with
  the stored running statistics, and a 3x3/2 stem max-pool padded by one on every side.
* Caffe-style ResNet-50 exports such as Yahoo's ResNet-50-1by2 (see `offline.py`): the stride on
  the first 1x1 conv of the block (ResNet "v1"), BatchNorm already folded into conv biases, a
  stem max-pool padded only at the bottom/right, and (for 1by2) a stem wider than the stages.

Variable tree (mirrors torchvision names so that a mismatch report is readable):
``params/conv1/kernel``, ``params/bn1/{scale,bias}``, ``batch_stats/bn1/{mean,var}``,
``params/layer{L}_{B}/conv{1,2,3}``, ``.../bn{1,2,3}``, ``.../downsample_conv``, ``.../downsample_bn``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

RESNET50_STAGES = (3, 4, 6, 3)
BN_EPS = 1e-5


def _conv_bn(x, features, kernel, stride, padding, name, bn_name, fused_bn, precision, dtype):
    """conv (+ inference BatchNorm). With `fused_bn` the BN lives in the conv's bias instead."""
    x = nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)), use_bias=fused_bn,
                precision=precision, dtype=dtype, name=name)(x)
    if not fused_bn:
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=dtype, name=bn_name)(x)
    return x


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 (planes) -> 3x3 (planes) -> 1x1 (4 * planes), plus shortcut.

    Attributes:
      planes: width of the two inner convs; the block outputs `4 * planes` channels.
      stride: spatial stride of the block (1 or 2).
      downsample: project the shortcut with a strided 1x1 conv (+ BN).
      stride_on_1x1: put the stride on the first 1x1 conv (Caffe / ResNet v1) instead of the 3x3
        conv (torchvision / ResNet v1.5). Same output geometry, different numbers.
      fused_bn: convs carry a bias and there is no BatchNorm (BN folded into the weights).
    """
    planes: int
    stride: int = 1
    downsample: bool = False
    stride_on_1x1: bool = False
    fused_bn: bool = False
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x):  # x: [N, H, W, C]
        kw = dict(fused_bn=self.fused_bn, precision=self.precision, dtype=self.dtype)
        s1, s3 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
        y = nn.relu(_conv_bn(x, self.planes, 1, s1, 0, "conv1", "bn1", **kw))
        y = nn.relu(_conv_bn(y, self.planes, 3, s3, 1, "conv2", "bn2", **kw))
        y = _conv_bn(y, 4 * self.planes, 1, 1, 0, "conv3", "bn3", **kw)
        if self.downsample:
            x = _conv_bn(x, 4 * self.planes, 1, self.stride, 0, "downsample_conv", "downsample_bn", **kw)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet trunk (stem + 4 bottleneck stages) returning every stage output.

    `__call__(x)` takes normalised frames `x: [N, H, W, 3]` (float) and returns the tuple
    `(layer1 [N, H/4, W/4, 4w], layer2 [.., 8w], layer3 [.., 16w], layer4 [N, H/32, W/32, 32w])`
    with `w = width` (64 for ResNet-50: 256/512/1024/2048 channels). The stem conv has
    `stem_width` channels (default: `width`).
    """
    stage_sizes: Sequence[int] = RESNET50_STAGES
    width: int = 64
    stride_on_1x1: bool = False
    fused_bn: bool = False
    stem_pool_padding: tuple = ((1, 1), (1, 1))
    stem_width: int | None = None
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = _conv_bn(x, self.stem_width or self.width, 7, 2, 3, "conv1", "bn1", self.fused_bn, self.precision, self.dtype)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.stem_pool_padding)
        stages = []
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = Bottleneck(planes=self.width * 2 ** i, stride=2 if (i > 0 and j == 0) else 1,
                               downsample=(j == 0), stride_on_1x1=self.stride_on_1x1,
                               fused_bn=self.fused_bn, precision=self.precision, dtype=self.dtype,
                               name=f"layer{i + 1}_{j}")(x)
            stages.append(x)
        return tuple(stages)


def resnet50(**kwargs) -> ResNet:
    """torchvision ResNet-50 geometry (stride on the 3x3 conv, BatchNorm, padded stem pool)."""
    return ResNet(stage_sizes=RESNET50_STAGES, width=64, **kwargs)


def variable_shapes(model: nn.Module, image_hw=(64, 64)) -> dict:
    """Flat `{(collection, *path): shape}` of every variable of `model`, without computing anything."""
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_hw, 3), jnp.float32))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    """`{(a, b, c): v}` -> `{a: {b: {c: v}}}`."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return out


@dataclasses.dataclass
class ConversionReport:
    """What happened to each key of a converted state dict.

    missing: Flax variables that no source key provided (`collection/path` strings).
    unexpected: source keys that do not belong to the network.
    ignored: source keys that belong to the network but are not needed (classifier, BN counters).
    skipped: keys outside the selected prefix (e.g. `normalizer.*` / `pca.*` of a DnS extractor).
    """
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self):
        def show(xs):
            return ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")
        parts = [f"prefix {self.prefix!r}"]
        if self.missing:
            parts.append(f"missing: {show(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected: {show(self.unexpected)}")
        return "; ".join(parts)


_TV_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
          "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_TV_KEY = re.compile(r"^(?:(?P<stem>conv1|bn1)|layer(?P<layer>\d+)\.(?P<block>\d+)\."
                     r"(?P<part>conv\d|bn\d|downsample\.0|downsample\.1))\.(?P<field>\w+)$")


def _torchvision_target(name: str):
    """torchvision key (prefix removed) -> ((collection, *path), is_conv) or None if not a trunk key."""
    m = _TV_KEY.match(name)
    if m is None:
        return None
    if m["stem"]:
        module = (m["stem"],)
    else:
        part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m["part"], m["part"])
        module = (f"layer{m['layer']}_{m['block']}", part)
    field = m["field"]
    if module[-1].startswith("conv") or module[-1] == "downsample_conv":
        return ((("params",) + module + ("kernel",)), True) if field == "weight" else None
    if field in _TV_BN:
        coll, leaf = _TV_BN[field]
        return ((coll,) + module + (leaf,)), False
    return None


def detect_prefix(keys, anchor="layer1.0.conv1.weight") -> str:
    """The prefix under which a torchvision ResNet sits in `keys` ('' or e.g. 'cnn.')."""
    hits = sorted(k[: -len(anchor)] for k in keys if k.endswith(anchor))
    hits = [p for p in hits if p == "" or p.endswith(".")]
    if not hits:
        raise ValueError(f"no torchvision ResNet found in the state dict: no key ends with {anchor!r}")
    if len(hits) > 1:
        raise ValueError(f"several ResNets in the state dict (prefixes {hits}); pass prefix=")
    return hits[0]


def convert_torchvision_resnet(state_dict: Mapping[str, Any], model: ResNet | None = None, *,
                               prefix: str | None = None, strict: bool = True):
    """torchvision ResNet state dict -> Flax variables for `model` (default: `resnet50()`).

    Args:
      state_dict: name -> array (numpy, torch-free). Conv weights are `(O, I, kH, kW)`.
      model: the `ResNet` the variables are for; its shapes are checked against every tensor.
      prefix: key prefix of the ResNet (`'cnn.'` in the DnS extractor); detected when None.
      strict: raise when a variable is missing or a key under the prefix is unexpected.

    Returns:
      `(variables, report)`: `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays, and a
      `ConversionReport`. A shape mismatch always raises (listing every mismatched key).
    """
    model = resnet50() if model is None else model
    if prefix is None:
        prefix = detect_prefix(state_dict.keys())
    expected = variable_shapes(model)
    report = ConversionReport(prefix=prefix)
    flat, mismatched = {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            report.skipped.append(key)
            continue
        name = key[len(prefix):]
        target = _torchvision_target(name)
        if target is None:
            if name.startswith("fc.") or name.endswith("num_batches_tracked"):
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
            continue
        path, is_conv = target
        if path not in expected:
            report.unexpected.append(key)
            continue
        value = np.asarray(value, np.float32)
        if is_conv:
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
        if value.shape != expected[path]:
            mismatched.append(f"{key}: {tuple(np.shape(state_dict[key]))} -> {value.shape}, "
                              f"expected {expected[path]} for {'/'.join(path)}")
            continue
        flat[path] = value
    if mismatched:
        raise ValueError("shape mismatch converting the ResNet state dict:\n  " + "\n  ".join(mismatched))
    report.missing = ["/".join(p) for p in expected if p not in flat]
    if strict and not report.ok:
        raise ValueError(f"cannot convert the ResNet state dict: {report}")
    return unflatten(flat), report
