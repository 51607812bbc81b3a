"""PCA whitening of region vectors (DnS `PCA`), loading its weights, and fitting new ones.

Two weight layouts exist:

* the official download (`pca_resnet50_vcdb_1M.pth`): `{'mean' [D], 'V' [D, D], 'd' [D]}`, the
  eigenvectors in the columns of `V` and their eigenvalues in `d`, in no particular order;
* the built layer (the DnS extractor's state dict): `pca.mean` [D] and `pca.DVt` [D, n], the top-n
  whitening projection already transposed so that the forward pass is `x @ DVt`.

`build_whitening` turns the first into the second exactly as the official layer does, in float32.
`PCAFitter` produces the first layout from a user's own region vectors. A fitted file may also hold
`shrink` (a scalar, absent in official files): the kept eigenvalues are then regularised to
`d_k + shrink * mean(kept d)` before the whitening divides by their square roots, which keeps a small
collection's whitening from dividing down exactly the directions its own videos vary in
(`auto_shrink`, docs/features.md).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dns_jax import pth

from .regions import l2_normalize

EIG_EPS = 1e-7


class PCAWhitening(nn.Module):
    """`[..., in_dims] -> [..., dims]`: subtract `mean`, multiply by `DVt`, L2-normalise.

    Variables: `params/mean [in_dims]`, `params/DVt [in_dims, dims]`. The matmul runs at full
    float32 precision on every backend (it is cheap next to the CNN).
    """
    in_dims: int
    dims: int

    @nn.compact
    def __call__(self, x):
        mean = self.param("mean", nn.initializers.zeros, (self.in_dims,), jnp.float32)
        dvt = self.param("DVt", nn.initializers.zeros, (self.in_dims, self.dims), jnp.float32)
        x = jnp.matmul(x - mean, dvt, precision=jax.lax.Precision.HIGHEST)
        return l2_normalize(x)


def parse_shrink(value: Any, what: str = "shrink", allow_auto: bool = False):
    """An eigenvalue shrink from a number or its text: a finite float >= 0, or 'auto' where allowed;
    otherwise ValueError naming `what`."""
    if allow_auto and isinstance(value, str) and value == "auto":
        return value
    try:
        shrink = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        shrink = float("nan")
    if not (np.isfinite(shrink) and shrink >= 0):
        raise ValueError(f"{what} must be {repr('auto') + ' or ' if allow_auto else ''}a number >= 0, got {value!r}")
    return shrink


def build_whitening(mean, V, d, dims: int | None = None, shrink: float = 0.0) -> dict:
    """Official `{mean, V, d}` -> `{'mean' [D], 'DVt' [D, dims]}` (float32, as the official layer).

    Keeps the `dims` components with the largest eigenvalues `d` (descending) and scales each by
    `1 / sqrt(d + 1e-7)`; `DVt[:, j] = V[:, idx_j] / sqrt(d[idx_j] + 1e-7)`. With `shrink` > 0 the
    kept eigenvalues become `d + shrink * mean(kept d)` (shrink 0: the official layer exactly).
    """
    mean = np.asarray(mean, np.float32)
    V = np.asarray(V, np.float32)
    d = np.asarray(d, np.float32)
    D = mean.shape[0]
    if V.shape != (D, D) or d.shape != (D,):
        raise ValueError(f"PCA weights: expected mean [D], V [D, D], d [D]; got mean {mean.shape}, "
                         f"V {V.shape}, d {d.shape}")
    dims = D if dims is None else int(dims)
    if not 0 < dims <= D:
        raise ValueError(f"PCA dims must be in 1..{D}, got {dims}")
    shrink = parse_shrink(shrink, "PCA weights: the eigenvalue shrink")
    idx = np.argsort(-d, kind="stable")[:dims]
    kept = d[idx] + np.float32(shrink) * d[idx].mean() if shrink else d[idx]
    scale = np.float32(1.0) / np.sqrt(kept + np.float32(EIG_EPS))
    return {"mean": mean, "DVt": np.ascontiguousarray(V[:, idx] * scale[None, :])}


def _find_prefix(keys, *suffixes) -> str | None:
    """A prefix p such that p + s is a key for every suffix s (shortest first), or None."""
    keys = set(keys)
    for k in sorted(keys, key=len):
        if k.endswith(suffixes[0]):
            p = k[: len(k) - len(suffixes[0])]
            if all(p + s in keys for s in suffixes) and (p == "" or p[-1] in "./:"):
                return p
    return None


def load_pca(source: Any, dims: int | None = 512) -> dict:
    """PCA whitening weights `{'mean' [D], 'DVt' [D, dims]}` (float32 numpy) from any known layout.

    Args:
      source: a mapping of arrays or a path (`.npz`, or a `.pth` read without torch) holding either
        the official download `{mean, V, d}` or a built layer `{..mean, ..DVt}` (e.g. the DnS
        extractor's `pca.mean` / `pca.DVt`). Keys may carry a prefix (`pca.`, `cnn.pca.`, ...).
      dims: number of components to keep (official layout), or the expected width of a built
        `DVt` (None: keep what is there).
    """
    name = source if isinstance(source, (str, os.PathLike)) else "the PCA mapping"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"PCA weights not found: {path}")
        if path.endswith(".npz"):
            with np.load(path) as z:
                source = {k: z[k] for k in z.files}
        else:
            source = pth.load_state_dict(path)
    if not isinstance(source, Mapping):
        raise TypeError(f"PCA weights must be a path or a mapping, got {type(source).__name__}")
    p = _find_prefix(source.keys(), "DVt", "mean")
    if p is not None:
        dvt = np.asarray(source[p + "DVt"], np.float32)
        mean = np.asarray(source[p + "mean"], np.float32)
        if dvt.ndim != 2 or mean.shape != (dvt.shape[0],):
            raise ValueError(f"{name}: {p}DVt {dvt.shape} does not fit {p}mean {mean.shape}")
        if dims is not None and dvt.shape[1] != dims:
            raise ValueError(f"{name}: {p}DVt keeps {dvt.shape[1]} components, {dims} were asked "
                             "for (pass the official {mean, V, d} download to choose the width)")
        return {"mean": mean, "DVt": dvt}
    p = _find_prefix(source.keys(), "V", "d", "mean")
    if p is not None:
        shrink = np.asarray(source.get(p + "shrink", 0.0), np.float64)
        if shrink.shape != ():
            raise ValueError(f"{name}: {p}shrink must be a scalar, got shape {shrink.shape}")
        return build_whitening(source[p + "mean"], source[p + "V"], source[p + "d"], dims, float(shrink))
    raise ValueError(f"{name}: no PCA weights found (expected keys mean/V/d or mean/DVt); "
                     f"keys: {sorted(source.keys())[:10]}")


def whitening_matrices(source: Any, dims: int) -> tuple:
    """(mean [D], DVt [D, dims]) float32 of a PCA file or mapping in the official layout."""
    p = load_pca(source, dims)
    return np.asarray(p["mean"], np.float32), np.asarray(p["DVt"], np.float32)


def apply_whitening(x: np.ndarray, mean: np.ndarray, dvt: np.ndarray) -> np.ndarray:
    """[..., D] -> [..., dims] on the host: subtract the mean, project, L2-normalise (the official
    order; `PCAWhitening` is the same on the device)."""
    y = (np.asarray(x, np.float32) - mean) @ dvt
    return (y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class PCAFitter:
    """Streaming PCA over region vectors with bounded memory, giving the official `{mean, V, d}`.

    Accumulates the count, the sum and `X^T X` in float64 (O(D^2) memory, independent of the
    number of vectors); the data are shifted by the first batch's mean before accumulating so that
    the covariance does not lose digits to cancellation. `result()` eigendecomposes the covariance
    (divided by n - 1).

        fitter = PCAFitter()
        for feats in videos:                # [T, R, 3840] region vectors
            fitter.update(feats)
        pca = fitter.result()               # {'mean', 'V', 'd'}; then build_whitening(**pca, dims=512)
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._gram = None

    def update(self, x) -> "PCAFitter":
        x = np.asarray(x, np.float64)
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            return self
        if self._shift is None:
            dim = x.shape[1]
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(dim)
            self._gram = np.zeros((dim, dim))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"PCAFitter: vectors of width {x.shape[1]} after width {self._shift.shape[0]}")
        x = x - self._shift
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._gram += x.T @ x
        return self

    def result(self) -> dict:
        if self.count < 2:
            raise ValueError(f"PCAFitter: need at least 2 vectors, got {self.count}")
        n = self.count
        mu = self._sum / n
        cov = (self._gram - n * np.outer(mu, mu)) / (n - 1)
        cov = (cov + cov.T) / 2
        d, V = np.linalg.eigh(cov)
        d = np.clip(d, 0.0, None)
        order = np.argsort(-d, kind="stable")
        return {"mean": (mu + self._shift).astype(np.float32),
                "V": np.ascontiguousarray(V[:, order]).astype(np.float32),
                "d": d[order].astype(np.float32)}


def auto_shrink(dims: int, frames: int) -> float:
    """The eigenvalue shrink `dims / frames` for a whitening of `dims` components fitted on the region
    vectors of `frames` frames: large for a few dozen short videos (whose whitening would otherwise
    divide down the very directions their near-duplicates share), vanishing for a real collection
    (10^5 frames: 0.005, the official whitening in effect)."""
    if dims <= 0 or frames <= 0:
        raise ValueError(f"auto_shrink: dims and frames must be positive, got {dims} and {frames}")
    return float(dims) / float(frames)


def fit_pca(batches: Iterable) -> dict:
    """Official `{mean, V, d}` from an iterable of region-vector arrays `[..., D]`."""
    fitter = PCAFitter()
    for b in batches:
        fitter.update(b)
    return fitter.result()


def fit_pca_hdf5(path, max_vectors: int | None = None, progress: bool = False) -> dict:
    """Fit on every `[T, R, D]` dataset of a feature file (e.g. written by `extract` without PCA),
    in file order, stopping after `max_vectors` region vectors."""
    import h5py
    from tqdm import tqdm

    names = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        fitter = PCAFitter()
        for name in tqdm(names, unit="video", disable=not progress):
            x = h5[name][:]
            x = x.reshape(-1, x.shape[-1])
            if max_vectors is not None:
                x = x[: max_vectors - fitter.count]
            fitter.update(x)
            if max_vectors is not None and fitter.count >= max_vectors:
                break
    return fitter.result()
