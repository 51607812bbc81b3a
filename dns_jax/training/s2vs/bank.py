"""The feature-bank fallback: augmented views extracted once, sampled by every step.

Running the frozen ResNet inside every step costs 2 x batch x window frames per step, far more
than the similarity network itself; on a CPU that is seconds per step. The bank pays for the
backbone once per stored view instead: `views` rounds, each augmenting every video of the
collection in batches of `batch_size` with the recipe's weak and strong views (video-in-video mixes
a strong view into another video of its augmentation batch, exactly as in a training batch) and
extracting their whitened region features. A step then draws a stored weak and strong view of each
of its videos and builds the same targets from the recorded sources (video, host, lambda), so the
losses are the official ones; what changes is that each video has `views` weak/strong draws in all
instead of fresh ones every step.

Layout of WORKDIR/view_bank.hdf5: attribute `dns_jax.s2vs_bank` (the settings, JSON) and per round
r a group `round_<r>` with `weak`, `strong` float16 [V, W, R, D], `host` int32 [V] (-1: not
mixed) and `lam` float32 [V], rows in the order of the training video list. A round is written
under a scratch name and renamed when complete, so an interrupted build resumes at its first
missing round; a bank of other settings is refused.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np

from dns_jax.training.s2vs.data import window_index

ATTR = "dns_jax.s2vs_bank"
SCRATCH = "__partial_round__"
_ROUND = 21          # random stream tag (seed, tag, round, ...)


class BankError(ValueError):
    """A view bank that does not fit the run (other settings or videos)."""


def _round(r: int) -> str:
    return f"round_{r:04d}"


def round_plan(num_videos: int, batch_size: int, seed: int, r: int):
    """Augmentation batches of round `r`: [(video indices, number of them kept)]. The videos are
    shuffled; the last batch is filled up with the first videos of the round (their outputs are
    dropped, they only serve as video-in-video hosts), so every batch has `batch_size` videos."""
    order = np.random.default_rng([seed, _ROUND, r]).permutation(num_videos)
    batch_size = min(batch_size, num_videos)
    out = []
    for start in range(0, num_videos, batch_size):
        chunk = order[start:start + batch_size]
        kept = len(chunk)
        if kept < batch_size:
            chunk = np.concatenate([chunk, order[:batch_size - kept]])
        out.append((chunk, kept))
    return out


def build_view_bank(path: str, frames, ids: Sequence[str], lengths: Sequence[int], views: int,
                    batch_size: int, source_frames: int, seed: int, settings: dict,
                    augment_and_extract: Callable, log: Callable[[str], None] = print,
                    progress: bool = False) -> None:
    """Fill `path` up to `views` rounds. `augment_and_extract(key, videos uint8 [b, T, S, S, 3])`
    -> (weak [b, W, R, D], strong [b, W, R, D], viv [b, b]) is the jitted augmentation + frozen
    extractor; `frames` a FrameStore holding `ids`."""
    import h5py

    settings_json = json.dumps({**settings, "ids": list(ids)}, sort_keys=True)
    with h5py.File(path, "a") as h5:
        if ATTR in h5.attrs and h5.attrs[ATTR] != settings_json:
            raise BankError(f"{path} holds views of other videos or settings; delete it or use another "
                            "work directory")
        h5.attrs[ATTR] = settings_json
        if SCRATCH in h5:
            del h5[SCRATCH]
        todo = [r for r in range(views) if _round(r) not in h5]
        if not todo:
            return
        t0, done = time.time(), 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(todo) * len(ids), unit="video", desc="view bank", dynamic_ncols=True)
        for r in todo:
            g = h5.create_group(SCRATCH)
            host = np.full(len(ids), -1, np.int32)
            lam = np.zeros(len(ids), np.float32)
            for b, (chunk, kept) in enumerate(round_plan(len(ids), batch_size, seed, r)):
                clips = []
                for row, v in enumerate(chunk):
                    rng = np.random.default_rng([seed, _ROUND, r, b, row])
                    clips.append(frames.read(ids[v], window_index(rng, lengths[v], source_frames)))
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), r), b)
                weak, strong, viv = jax.device_get(augment_and_extract(key, np.stack(clips)))
                if "weak" not in g:
                    shape = (len(ids),) + weak.shape[1:]
                    g.create_dataset("weak", shape, np.float16, chunks=(1,) + shape[1:])
                    g.create_dataset("strong", shape, np.float16, chunks=(1,) + shape[1:])
                for row in range(kept):
                    v = int(chunk[row])
                    g["weak"][v] = weak[row].astype(np.float16)
                    g["strong"][v] = strong[row].astype(np.float16)
                    off = viv[row].copy()
                    off[row] = 0.0
                    j = int(np.argmax(off))
                    if off[j] > 0:
                        host[v], lam[v] = int(chunk[j]), float(off[j])
                done += kept
                if bar is not None:
                    bar.update(kept)
            g.create_dataset("host", data=host)
            g.create_dataset("lam", data=lam)
            h5.flush()
            h5.move(SCRATCH, _round(r))
            h5.flush()
        if bar is not None:
            bar.close()
        log(f"view bank: {len(todo)} rounds of {len(ids)} videos ({done * 2} views) extracted in "
            f"{time.time() - t0:.1f} s into {path}")


class ViewBank:
    """Reads a complete bank; safe to share between reader threads. `weak(r, v)` ->
    float32 [W, R, D]; `strong(r, v)` -> (features, host index or -1, lambda)."""

    def __init__(self, path: str, views: int, num_videos: int):
        import h5py
        self.path, self.views = path, views
        self._h5 = h5py.File(path, "r")
        missing = [r for r in range(views) if _round(r) not in self._h5]
        if missing:
            raise BankError(f"{path} lacks rounds {missing[:5]} of {views}; build it first")
        self._weak = [self._h5[_round(r)]["weak"] for r in range(views)]
        self._strong = [self._h5[_round(r)]["strong"] for r in range(views)]
        self._host = [self._h5[_round(r)]["host"][:] for r in range(views)]
        self._lam = [self._h5[_round(r)]["lam"][:] for r in range(views)]
        if self._weak[0].shape[0] != num_videos:
            raise BankError(f"{path} holds {self._weak[0].shape[0]} videos, the run has {num_videos}")
        self.shape = tuple(self._weak[0].shape[1:])
        self._lock = threading.Lock()

    def weak(self, r: int, v: int) -> np.ndarray:
        with self._lock:
            return self._weak[r][v].astype(np.float32)

    def strong(self, r: int, v: int):
        with self._lock:
            x = self._strong[r][v].astype(np.float32)
        return x, int(self._host[r][v]), float(self._lam[r][v])

    def close(self):
        self._h5.close()
