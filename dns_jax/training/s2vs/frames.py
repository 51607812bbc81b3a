"""The decoded frames of an S2VS training collection: WORKDIR/frames.hdf5.

Each video is decoded once (PyAV, `fps` frames per second, the shorter side resized to `size`
with OpenCV's bicubic filter and the centre `size` x `size` square kept) and stored under its id,
either raw (`uint8 [T, size, size, 3]`, one chunk per frame) or, with `jpeg_quality` > 0, as one
JPEG per frame (a variable-length `uint8` dataset `[T]`; the official code also trains from JPEG
frames). Training steps then read windows of consecutive frames without decoding the videos again.

Writes are atomic per video (a scratch dataset renamed to the id when complete), so an interrupted
build resumes where it stopped; the settings are stored in the file and a build with other
settings is refused. Videos that cannot be decoded are reported and left out.
"""
from __future__ import annotations

import io
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from dns_jax.features.video import VideoError, iter_frames

ATTR = "dns_jax.s2vs_frames"
SCRATCH = "__dns_jax_partial__"


class FrameStoreError(ValueError):
    """A frame file that cannot be used (other settings, missing video)."""


@dataclass
class FrameSummary:
    lengths: Dict[str, int]                                  # id -> frames, every usable video
    failed: List[Tuple[str, str, str]] = field(default_factory=list)   # (id, path, message)
    decoded: int = 0                                         # videos decoded by this call
    seconds: float = 0.0


def _settings(fps: float, size: int, jpeg_quality: int) -> str:
    return json.dumps({"fps": float(fps), "size": int(size), "jpeg_quality": int(jpeg_quality)}, sort_keys=True)


def _encode(frames: np.ndarray, quality: int):
    from PIL import Image
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=int(quality))
        out.append(np.frombuffer(buf.getvalue(), np.uint8))
    return out


def _decode(blob: np.ndarray) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(blob.tobytes())).convert("RGB"))


def _write(h5, video_id: str, frames: np.ndarray, quality: int) -> None:
    import h5py
    tmp = f"{SCRATCH}/{uuid.uuid4().hex}"
    if quality:
        blobs = _encode(frames, quality)
        ds = h5.create_dataset(tmp, (len(blobs),), dtype=h5py.vlen_dtype(np.uint8))
        for i, b in enumerate(blobs):
            ds[i] = b
    else:
        h5.create_dataset(tmp, data=frames, chunks=(1,) + frames.shape[1:])
    h5.flush()
    if "/" in video_id:
        h5.require_group(video_id.rsplit("/", 1)[0])
    h5.move(tmp, video_id)
    h5.flush()


def build_frame_store(videos: Sequence[Tuple[str, str]], path: str, fps: float = 1.0, size: int = 256,
                      jpeg_quality: int = 0, log: Callable[[str], None] = print) -> FrameSummary:
    """Decode every video of `videos` ([(id, path)]) that `path` does not hold yet.
    Returns the frame count of every usable video and the ones that failed."""
    import h5py

    t0 = time.time()
    settings = _settings(fps, size, jpeg_quality)
    summary = FrameSummary({})
    with h5py.File(path, "a") as h5:
        if ATTR in h5.attrs and h5.attrs[ATTR] != settings:
            raise FrameStoreError(f"{path} holds frames decoded with other settings ({h5.attrs[ATTR]}, now "
                                  f"{settings}); delete it or use another work directory")
        h5.attrs[ATTR] = settings
        if SCRATCH in h5:
            del h5[SCRATCH]
        for vid, video_path in videos:
            if vid in h5 and isinstance(h5[vid], h5py.Dataset):
                summary.lengths[vid] = int(h5[vid].shape[0])
                continue
            try:
                frames = [f for f in iter_frames(video_path, fps=fps, rs_size=size, cc_size=size, strict=True)]
                if not frames:
                    raise VideoError(f"no frames could be decoded from {video_path}")
            except (VideoError, OSError, ValueError) as e:
                summary.failed.append((vid, video_path, f"{type(e).__name__}: {e}"))
                continue
            _write(h5, vid, np.stack(frames), jpeg_quality)
            summary.lengths[vid] = len(frames)
            summary.decoded += 1
        if SCRATCH in h5:
            del h5[SCRATCH]
    summary.seconds = time.time() - t0
    if summary.decoded:
        log(f"frames: decoded {summary.decoded} videos ({sum(summary.lengths.values())} frames in all) "
            f"at {fps:g} fps into {path} in {summary.seconds:.1f} s")
    for vid, video_path, msg in summary.failed:
        log(f"frames: FAILED {vid} ({video_path}): {msg}")
    return summary


class FrameStore:
    """Reads windows of frames from a frame file; safe to share between reader threads."""

    def __init__(self, path: str):
        import h5py
        self.path = path
        self._h5 = h5py.File(path, "r")
        settings = json.loads(self._h5.attrs[ATTR])
        self.size, self.jpeg_quality = int(settings["size"]), int(settings["jpeg_quality"])
        self._lock = threading.Lock()

    def length(self, video_id: str) -> int:
        with self._lock:
            return int(self._h5[video_id].shape[0])

    def read(self, video_id: str, index: np.ndarray) -> np.ndarray:
        """uint8 [len(index), size, size, 3]: the frames at `index` (any order, repeats allowed)."""
        index = np.asarray(index, np.int64)
        unique, inverse = np.unique(index, return_inverse=True)
        with self._lock:
            if video_id not in self._h5:
                raise FrameStoreError(f"{self.path} has no frames of video {video_id!r}")
            ds = self._h5[video_id]
            if self.jpeg_quality:
                blobs = [ds[int(i)] for i in unique]
            else:
                frames = ds[unique]
        if self.jpeg_quality:
            frames = np.stack([_decode(b) for b in blobs])
        return frames[inverse.reshape(-1)]

    def close(self):
        self._h5.close()
