"""Synthetic CG vectors for tests and benchmarks of the coarse stage.

Isotropic Gaussian vectors are the worst case for product quantisation and
look nothing like CG student outputs, which are L2-normalised, share a mean
direction (every cosine is positive), concentrate their variance in a few
hundred directions, and come in near-duplicate groups (re-encodes, edits of
one video) inside broader topics.  :class:`SyntheticCG` draws vectors with
that structure, deterministically and chunk by chunk (so 10^7 of them never
have to be held at once):

* a fixed orthonormal basis ``B`` [rank, dims] spans the structured part;
  latent coordinate ``i`` has standard deviation ``(i + 1) ** (-decay / 2)``
  (a power-law spectrum);
* ``topics`` topic centres ``t`` and ``n // group_size`` near-duplicate
  groups, group ``g`` belonging to topic ``g % topics`` with centre
  ``t + group_spread * z``; each video picks a group uniformly at random
  (so group sizes are Poisson with mean ``group_size``);
* a video is ``normalise(offset * mu + (s * (group centre + dup_spread *
  z)) @ B + noise * n)`` with ``mu`` a fixed unit mean direction and ``n``
  isotropic Gaussian noise in all ``dims`` dimensions;
* queries (:meth:`queries`) are new members of random groups, so each has
  its near-duplicates in the collection, as in near-duplicate retrieval.

:meth:`stats` measures the cosines this gives (defaults, 10^5 vectors: about
0.9 within a group, 0.6 within a topic, 0.4 between unrelated videos).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Tuple

import numpy as np

BLOCK = 1 << 16  # rows drawn from one random stream: vectors(a, b) is the same however it is cut


@dataclasses.dataclass(frozen=True)
class SyntheticCG:
    """``n`` unit-norm ``dims``-d vectors with topic and near-duplicate structure."""

    n: int
    dims: int = 1024
    rank: int = 256
    decay: float = 1.0
    topics: int = 1000
    group_size: float = 8.0
    group_spread: float = 1.1
    dup_spread: float = 0.55
    offset: float = 1.18
    noise: float = 0.32
    seed: int = 0

    def __post_init__(self):
        if self.n <= 0 or self.dims <= 0 or not 0 < self.rank <= self.dims:
            raise ValueError(f"need n > 0 and 0 < rank <= dims, got {self}")
        rng = np.random.default_rng([self.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((self.dims, self.rank + 1)))
        object.__setattr__(self, "_mu", q[:, 0].astype(np.float32))
        object.__setattr__(self, "_basis", np.ascontiguousarray(q[:, 1:].T, np.float32))
        scale = (np.arange(self.rank) + 1.0) ** (-self.decay / 2)
        object.__setattr__(self, "_scale", (scale / np.linalg.norm(scale)).astype(np.float32))
        object.__setattr__(self, "_groups", None)

    @property
    def n_groups(self) -> int:
        return max(1, int(self.n / self.group_size))

    def _group_centres(self) -> np.ndarray:
        """[n_groups, rank] latent group centres (made once: 0.5 KB per group)."""
        if self._groups is None:
            rng = np.random.default_rng([self.seed, 1])
            topic = rng.standard_normal((self.topics, self.rank), np.float32)
            g = rng.standard_normal((self.n_groups, self.rank), np.float32)
            g *= np.float32(self.group_spread)
            g += topic[np.arange(self.n_groups) % self.topics]
            object.__setattr__(self, "_groups", g)
        return self._groups

    def _embed(self, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Latent [B, rank] -> unit-norm [B, dims] float32."""
        x = (latent * self._scale) @ self._basis
        x += np.float32(self.offset) * self._mu
        x += np.float32(self.noise / np.sqrt(self.dims)) * rng.standard_normal(x.shape, np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def _members(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        latent = self._group_centres()[groups]
        latent += np.float32(self.dup_spread) * rng.standard_normal(latent.shape, np.float32)
        return self._embed(latent, rng)

    def _block(self, b: int) -> Tuple[np.ndarray, np.ndarray]:
        """Rows [b * BLOCK, ...) of the collection: (vectors, group ids)."""
        rows = min(BLOCK, self.n - b * BLOCK)
        rng = np.random.default_rng([self.seed, 2, b])
        groups = rng.integers(0, self.n_groups, rows)
        return self._members(groups, rng), groups

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the collection -> [stop - start, dims] float32."""
        stop = self.n if stop is None else min(stop, self.n)
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range [{start}, {stop}) for n = {self.n}")
        out = np.empty((stop - start, self.dims), np.float32)
        for b in range(start // BLOCK, -(-stop // BLOCK)):
            lo = b * BLOCK
            block, _ = self._block(b)
            a, z = max(start, lo), min(stop, lo + block.shape[0])
            out[a - start:z - start] = block[a - lo:z - lo]
        return out

    def groups(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Group id of rows [start, stop) -> [stop - start] int64."""
        stop = self.n if stop is None else min(stop, self.n)
        out = []
        for b in range(start // BLOCK, -(-stop // BLOCK)):
            rows = min(BLOCK, self.n - b * BLOCK)
            g = np.random.default_rng([self.seed, 2, b]).integers(0, self.n_groups, rows)
            lo = b * BLOCK
            out.append(g[max(start, lo) - lo:min(stop, lo + rows) - lo])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def chunks(self, size: int) -> Iterator[Tuple[int, np.ndarray]]:
        """(start row, [<= size, dims] vectors) over the whole collection."""
        for start in range(0, self.n, size):
            yield start, self.vectors(start, start + size)

    def queries(self, count: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """``count`` new members of random groups -> (vectors [count, dims], group ids)."""
        rng = np.random.default_rng([self.seed, 3, seed])
        groups = rng.integers(0, self.n_groups, count)
        return self._members(groups, rng), groups

    def stats(self, sample: int = 100_000, pairs: int = 20_000, seed: int = 0) -> dict:
        """Mean cosine of two videos of one group, of one topic (other groups), and unrelated."""
        x = self.vectors(0, min(sample, self.n))
        g = self.groups(0, x.shape[0])

        def adjacent(key: np.ndarray, differ: np.ndarray | None = None) -> float:
            order = np.argsort(key, kind="stable")
            a, b = order[:-1], order[1:]
            keep = key[a] == key[b]
            if differ is not None:
                keep &= differ[a] != differ[b]
            return float(np.mean(np.einsum("ij,ij->i", x[a[keep]], x[b[keep]])))

        a, b = np.random.default_rng(seed).integers(0, x.shape[0], (2, pairs))
        keep = (g[a] % self.topics) != (g[b] % self.topics)
        return {"group": adjacent(g), "topic": adjacent(g % self.topics, g),
                "unrelated": float(np.mean(np.einsum("ij,ij->i", x[a[keep]], x[b[keep]])))}
