"""The official temporal augmentations (StudentPairGenerator.augment) as frame-index plans.

Every augmentation only selects, repeats or reorders frames, so it is expressed as an index array
`idx` with `augmented = video[idx]`. The plan needs only the video's length, so batches can be
planned (and their padded length agreed across hosts) before any features are read.

Official rule, for videos with more than 8 frames; u ~ U(0, 1):
  u < 0.1: chunks of w ~ {4..15} frames (the video first extended by repeating itself to a
           multiple of w), each dropped with probability 0.3 (all dropped: keep all);
  u < 0.2: the same chunks, shuffled;
  u < 0.3: every 2nd frame;
  u < 0.4: every frame duplicated in place, if the video has fewer than 150 frames;
  u < 0.5: reversed;
  then the first `max_frames` (300) frames.
"""
from __future__ import annotations

import numpy as np


def augment_indices(length: int, rng: np.random.Generator, max_frames: int = 300) -> np.ndarray:
    """Frame indices of one augmented video of `length` frames (official rule, see module doc)."""
    idx = np.arange(length)
    if length > 8:
        u = rng.uniform()
        if u < 0.2:
            w = int(rng.integers(4, 16))
            offset = length % w
            if offset:
                idx = np.concatenate([idx, idx])[:length + (w - offset)]
            chunks = idx.reshape(-1, w)
            if u < 0.1:
                keep = rng.random(chunks.shape[0]) > 0.3
                if keep.any():
                    chunks = chunks[keep]
            else:
                chunks = chunks[rng.permutation(chunks.shape[0])]
            idx = chunks.reshape(-1)
        elif u < 0.3:
            idx = idx[::2]
        elif u < 0.4:
            if length < 150:
                idx = np.repeat(idx, 2)
        elif u < 0.5:
            idx = idx[::-1]
    return idx[:max_frames]


def augment(video: np.ndarray, rng: np.random.Generator, max_frames: int = 300) -> np.ndarray:
    """`video[augment_indices(len(video), rng)]`."""
    return video[augment_indices(video.shape[0], rng, max_frames)]
