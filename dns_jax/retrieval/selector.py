"""Selector network helpers: exact self-similarity of many videos at once, and batched scores.

The official selector indexes each video alone (`index_video`, the mean of the comparator output
on the video's own frame-to-frame matrix). Here videos are padded into a few length buckets and
scored together with the refilled-padding comparator of kernels.py, which equals the unpadded
network for every length (the official masked path does not, for lengths that are not multiples
of 4); long videos go through the tiled comparator, so memory stays bounded.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from dns_jax.models import SelectorNetwork
from dns_jax.retrieval.fine import MIN_FRAMES, ScorerOptions, repeat_min_frames, tile_plan
from dns_jax.retrieval.kernels import KernelSpec, given_similarity_batch
from dns_jax.retrieval.layout import HALO, Axis, ladder_size, pow2_size
from dns_jax.validation import check_video

SELECTOR_BATCH_CELLS = 1 << 19     # f2f cells per selector self-similarity call
MLP_CHUNK = 1 << 14                # (query, video) pairs per selector MLP call: its [chunk, 100] activations
                                   # stay in cache (2.5x faster than 1 << 16 over 225,960 videos on 2 CPU
                                   # cores, same outputs bit for bit; docs/scaling.md)


def _check_selector(model):
    if not isinstance(model.module, SelectorNetwork):
        raise TypeError(f"expected a selector network, got {model.name!r}")


def self_similarities(model, videos: Sequence, options: Optional[ScorerOptions] = None) -> np.ndarray:
    """Raw region features of N videos -> (N,) float32 selector self-similarities, equal to the
    official `index_video` of each video alone (videos under 4 frames are repeated first)."""
    _check_selector(model)
    o = options or ScorerOptions()
    arrs = [repeat_min_frames(check_video(v, model.module.dims, f"video {i}"), MIN_FRAMES)
            for i, v in enumerate(videos)]
    out = np.zeros(len(arrs), np.float32)
    groups: Dict[tuple, List[int]] = {}
    for i, a in enumerate(arrs):
        groups.setdefault((ladder_size(a.shape[0]), a.shape[1]), []).append(i)
    params = model.variables["params"]["visil_head"]
    for (size, _), idx in sorted(groups.items()):
        tr, tc = tile_plan(size, size, o)
        spec = KernelSpec(sim="given", comparator=True, padding="zero", reduce="mean", clip=False,
                          precision=model.module.precision, tile_rows=tr, tile_cols=tc,
                          tile_batch=o.tile_batch)
        per_call = max(1, SELECTOR_BATCH_CELLS // (size * size))
        per_call = min(per_call, pow2_size(len(idx), 1))
        for s in range(0, len(idx), per_call):
            batch = idx[s:s + per_call]
            n = len(batch)
            x = np.zeros((per_call, size) + arrs[batch[0]].shape[1:], np.float32)
            rmaps, cmaps = [], []
            for k, i in enumerate(batch + [batch[0]] * (per_call - n)):
                t = arrs[i].shape[0]
                x[k, :t] = arrs[i]
                ax = lambda tiled: Axis(size, np.array([0]), np.array([t]), 1, HALO if tiled else 0).maps("zero")
                rmaps.append(ax(tr))
                cmaps.append(ax(tc))
            stack = lambda ms: {key: jnp.asarray(np.stack([m[key] for m in ms])) for key in ms[0]}
            f2f = model.apply("frame_to_frame_similarity", jnp.asarray(x))
            res = given_similarity_batch(params, f2f, stack(rmaps), stack(cmaps), spec)
            out[batch] = np.asarray(res)[:n, 0, 0]
    return out


def selector_scores(model, query_selfsim, target_selfsim, coarse) -> np.ndarray:
    """Selector probabilities (Q, N) from query self-similarities (Q,), target self-similarities
    (N,) and coarse similarities (Q, N): the MLP on [q_selfsim, t_selfsim, coarse] per pair."""
    _check_selector(model)
    qs = np.asarray(query_selfsim, np.float32).reshape(-1)
    ts = np.asarray(target_selfsim, np.float32).reshape(-1)
    c = np.asarray(coarse, np.float32)
    if c.shape != (qs.shape[0], ts.shape[0]):
        raise ValueError(f"coarse similarities must be (Q, N) = {(qs.shape[0], ts.shape[0])}, got {c.shape}")
    z = np.stack([np.broadcast_to(qs[:, None], c.shape), np.broadcast_to(ts[None, :], c.shape), c], -1).reshape(-1, 3)
    out = np.empty(z.shape[0], np.float32)
    chunk = min(MLP_CHUNK, ladder_size(z.shape[0]))
    for s in range(0, z.shape[0], chunk):
        zb = z[s:s + chunk]
        pad = np.zeros((chunk, 3), np.float32)
        pad[:zb.shape[0]] = zb
        out[s:s + zb.shape[0]] = np.asarray(model(jnp.asarray(pad)))[:zb.shape[0], 0]
    return out.reshape(c.shape)
