"""A generated video collection for trying (and testing) training with no data at hand.

Each family is a source video -- a few "scenes", each a random set of region vectors held for a run
of frames with small per-frame jitter -- plus near-duplicate copies made by temporal edits (cut a
segment, speed up or slow down, reverse part, splice in foreign frames) and region noise of varying
strength, so teacher similarities spread over a range. Distractors are unrelated videos made the
same way. All region vectors are L2-normalised, like the real PCA-whitened L3-iMAC features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np


@dataclass
class SyntheticCollection:
    videos: Dict[str, np.ndarray]        # id -> float32 [T, R, D]
    family: Dict[str, int]               # id -> family number (-1 for distractors)
    train_ids: List[str]
    holdout_ids: List[str]               # videos of the held-out families (validation)

    def relevant(self, query: str) -> List[str]:
        f = self.family[query]
        return [v for v, g in self.family.items() if g == f and v != query] if f >= 0 else []


def _l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _source_video(rng, length, regions, dims):
    scenes = max(1, length // int(rng.integers(4, 9)))
    cuts = np.sort(rng.choice(np.arange(1, length), size=min(scenes - 1, length - 1), replace=False))
    base = rng.standard_normal((scenes, regions, dims))
    scene_of = np.searchsorted(cuts, np.arange(length), side="right")
    frames = base[scene_of] + 0.3 * rng.standard_normal((length, regions, dims))
    return _l2n(frames)


def _edit(rng, video, noise, foreign):
    """A near-duplicate: one temporal edit, then region noise of strength `noise`."""
    t = video.shape[0]
    kind = rng.integers(5)
    if kind == 0 and t >= 8:                       # cut a segment (keep >= half)
        keep = int(rng.integers(t // 2, t + 1))
        start = int(rng.integers(0, t - keep + 1))
        video = video[start:start + keep]
    elif kind == 1:                                # speed change
        video = video[::2] if rng.random() < 0.5 else np.repeat(video, 2, axis=0)
    elif kind == 2 and t >= 4:                     # reverse a part
        a = int(rng.integers(0, t // 2))
        video = np.concatenate([video[:a], video[a:][::-1]])
    elif kind == 3:                                # splice in foreign frames
        n = int(rng.integers(1, max(2, t // 3)))
        at = int(rng.integers(0, t))
        video = np.concatenate([video[:at], foreign[:n], video[at:]])
    video = video + noise * rng.standard_normal(video.shape) / np.sqrt(video.shape[-1]) * 4.0
    return _l2n(video)


def make_collection(num_families: int = 48, family_size: int = 4, num_distractors: int = 64,
                    min_frames: int = 8, max_frames: int = 40, regions: int = 9, dims: int = 512,
                    noise: float = 0.35, seed: int = 0, holdout_families: int = 8) -> SyntheticCollection:
    """Families of `family_size` videos (a source + near-duplicates) and unrelated distractors.

    The last `holdout_families` families and a proportional share of distractors are held out.
    """
    if family_size < 2:
        raise ValueError(f"family_size must be >= 2 (a source and a copy), got {family_size}")
    if min_frames < 4 or max_frames < min_frames:
        raise ValueError(f"need 4 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    rng = np.random.default_rng(seed)
    videos, family = {}, {}
    length = lambda: int(rng.integers(min_frames, max_frames + 1))
    for f in range(num_families):
        src = _source_video(rng, length(), regions, dims)
        foreign = _source_video(rng, max_frames, regions, dims)
        videos[f"f{f:04d}_0"] = src.astype(np.float32)
        family[f"f{f:04d}_0"] = f
        for k in range(1, family_size):
            strength = noise * float(rng.uniform(0.3, 2.0))
            v = _edit(rng, src, strength, foreign)
            vid = f"f{f:04d}_{k}"
            videos[vid] = v[:max(max_frames, min_frames)].astype(np.float32)
            family[vid] = f
    for d in range(num_distractors):
        vid = f"d{d:05d}"
        videos[vid] = _source_video(rng, length(), regions, dims).astype(np.float32)
        family[vid] = -1
    holdout_families = min(holdout_families, max(num_families - 1, 0))
    first_held = num_families - holdout_families
    held_distractors = num_distractors * holdout_families // max(num_families, 1)
    holdout = [v for v, f in family.items()
               if f >= first_held or (f < 0 and int(v[1:]) >= num_distractors - held_distractors)]
    held = set(holdout)
    train = [v for v in videos if v not in held]
    return SyntheticCollection(videos, family, train, holdout)


def from_config(cfg) -> SyntheticCollection:
    """The collection described by a `config.synthetic` block."""
    return make_collection(num_families=cfg.num_families, family_size=cfg.family_size,
                           num_distractors=cfg.num_distractors, min_frames=cfg.min_frames,
                           max_frames=cfg.max_frames, regions=cfg.regions, dims=cfg.dims,
                           noise=cfg.noise, seed=cfg.seed, holdout_families=cfg.holdout_families)
