"""Video decoding for feature extraction: 1 frame per second, shorter side 256, centre crop 224.

Relation to the official loader (ViSiL / DnS `load_video`, OpenCV):

* Decoding uses PyAV (FFmpeg) instead of `cv2.VideoCapture` (which is FFmpeg underneath too).
  Frame *selection* is the official one: every decoded frame is counted and frame i is kept when
  `i % round(video_fps / fps) == 0`, where `video_fps` is the stream's average frame rate (OpenCV's
  CAP_PROP_FPS), replaced by 25 when missing, zero or above 144. Decoding stops at the first
  error, as OpenCV's grab/retrieve loop does; a video that yields no frame is an error here
  (OpenCV would silently return an empty array), and one that stops early (a decoding error, or
  far fewer frames than its header declares) warns, or raises with `strict=True`. Frame 0 is
  always kept, so a video shorter than one second gives one frame.
* RGB conversion: PyAV's `rgb24` conversion (libswscale). OpenCV converts to BGR24 through
  libswscale too, so the two agree as long as both link a similar FFmpeg.
* Resizing reimplements OpenCV's `INTER_CUBIC` for uint8 (Keys cubic with a = -0.75, half-pixel
  centres, replicated borders, 11-bit fixed-point weights, no antialiasing when shrinking; the
  vertical pass in float32 as OpenCV's SIMD code), with the output size
  `round(side * rs_size / shorter_side)` of `cv2.resize(fx=, fy=)`. Only the pixels that survive
  the centre crop are computed. It is bit-identical to opencv-python-headless 4.14 with IPP off
  (`cv2.ipp.setUseIPP(False)`), i.e. OpenCV's own implementation; recent wheels route
  INTER_CUBIC through Intel IPP by default, which differs from it by one level on 2-6 % of the
  pixels.
* The centre crop starts at `int((side - cc_size) / 2)`, as the official `center_crop`.

Measured: on synthetic clips (h264 and mpeg4 in mp4/avi/mkv, yuv420p and yuv444p, 24/25/29.97/30/60
fps, 240p-720p) `load_video` returned exactly the frames of the official `load_video` run with
opencv-python-headless 4.14 (IPP off): same count, every pixel equal. Variable-frame-rate files
are the known gap of the index-based rule (both loaders count decoded frames, not timestamps).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

MAX_FPS = 144
DEFAULT_FPS = 25.0

_COEF_SCALE = 1 << 11  # OpenCV INTER_RESIZE_COEF_BITS = 11


class VideoError(RuntimeError):
    """A video that cannot be used: unreadable, corrupt, without a video stream or without frames."""


def _cubic_taps(in_size: int, out_size: int, inv_scale: float, start: int, stop: int):
    """Source indices [n, 4] and fixed-point weights [n, 4] for output positions start..stop-1,
    computed in float32 exactly as OpenCV's resize does."""
    scale = 1.0 / inv_scale
    pos = ((np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    base = np.floor(pos)
    f = (pos - base).astype(np.float32)
    a = np.float32(-0.75)
    one = np.float32(1)
    f1, g = f + one, one - f
    c0 = ((a * f1 - 5 * a) * f1 + 8 * a) * f1 - 4 * a
    c1 = ((a + 2) * f - (a + 3)) * f * f + one
    c2 = ((a + 2) * g - (a + 3)) * g * g + one
    c3 = one - c0 - c1 - c2
    coef = np.stack([c0, c1, c2, c3], axis=1).astype(np.float32)
    weights = np.rint(coef * np.float32(_COEF_SCALE)).astype(np.int64)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx, weights


def resize_crop(frame: np.ndarray, rs_size: int | None = 256, cc_size: int | None = 224) -> np.ndarray:
    """uint8 `[H, W, C]` -> shorter side resized to `rs_size` (OpenCV INTER_CUBIC), then the centre
    `cc_size` x `cc_size` crop (either step skipped when None)."""
    h, w = frame.shape[:2]
    if rs_size is not None:
        ratio = rs_size / min(h, w)
        out_h, out_w = int(np.rint(h * ratio)), int(np.rint(w * ratio))
    else:
        ratio, out_h, out_w = 1.0, h, w
    top = int(max(0, (out_h - cc_size) / 2)) if cc_size is not None else 0
    left = int(max(0, (out_w - cc_size) / 2)) if cc_size is not None else 0
    bottom = min(out_h, top + cc_size) if cc_size is not None else out_h
    right = min(out_w, left + cc_size) if cc_size is not None else out_w
    if rs_size is None:
        return frame[top:bottom, left:right]
    rows, wy = _cubic_taps(h, out_h, ratio, top, bottom)
    cols, wx = _cubic_taps(w, out_w, ratio, left, right)
    # only the block of source pixels that the taps of the crop read (a view, no copy)
    r0, c0 = rows.min(), cols.min()
    src = frame[r0:rows.max() + 1, c0:cols.max() + 1]
    rows, cols = rows - r0, cols - c0
    # horizontal pass: [h', w, C] integer sums with 11-bit weights. Each product and partial sum is
    # an integer below 2^24 (255 * 4 * 2^11 at most), so float32 computes them exactly.
    taps, wx = src[:, cols].astype(np.float32), wx.astype(np.float32)      # [h', w, 4, C]
    tmp = taps[:, :, 0] * wx[:, 0, None]
    for k in (1, 2, 3):
        tmp += taps[:, :, k] * wx[:, k, None]
    # vertical pass in float32 with OpenCV's SIMD operation order (mul then add, S3 first), rounded
    # half to even: the path OpenCV's generic INTER_CUBIC takes for every pixel of the crop
    taps = tmp[rows]                                                        # [h, 4, w, C]
    wy = wy.astype(np.float32) * np.float32(1.0 / (1 << 22))
    acc = taps[:, 3] * wy[:, 3, None, None]
    for k in (2, 1, 0):
        acc = taps[:, k] * wy[:, k, None, None] + acc
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def _stream_fps(stream) -> float:
    """OpenCV's CAP_PROP_FPS: the average frame rate, else the stream's base (r_frame_rate) rate."""
    for rate in (stream.average_rate, getattr(stream, "base_rate", None)):
        if rate:
            return float(rate)
    return 0.0


def frame_step(video_fps: float, fps: float = 1) -> int:
    """Keep one decoded frame in `frame_step` (official rule; unusable rates count as 25 fps)."""
    if not video_fps or video_fps > MAX_FPS or not np.isfinite(video_fps):
        video_fps = DEFAULT_FPS
    return max(1, round(video_fps / fps))


def _open_error(path: str) -> Exception | None:
    """A clear error for paths FFmpeg would only answer "Invalid data" to, or None."""
    if not os.path.exists(path):
        return FileNotFoundError(f"video not found: {path}")
    if os.path.isdir(path):
        return VideoError(f"not a video file but a directory: {path}")
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as e:  # permission denied, I/O error, ...
        return VideoError(f"cannot read video {path}: {e.strerror or e}")
    if empty:
        return VideoError(f"empty video file (0 bytes): {path}")
    return None


def declared_frames(container, stream) -> tuple:
    """`(frames, source)`: how many frames the file says its video stream has, or `(0, None)`.

    From the stream's frame count (MP4/MOV sample tables), else its duration times its average
    rate, else the container's duration when the video is its only stream (e.g. Matroska).
    """
    if stream.frames:
        return int(stream.frames), "frame count"
    rate = _stream_fps(stream)
    if not rate:
        return 0, None
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base) * rate)), "stream duration"
    if container.duration and len(container.streams) == 1:
        return int(round(container.duration / 1_000_000 * rate)), "container duration"
    return 0, None


def truncation_tolerance(declared: int, rate: float) -> int:
    """Frames that may be missing from a declared length before a video counts as truncated:
    one second of video or 5 %, whichever is more (edit lists, rounded durations and frames a
    decoder drops at the start must not flag a whole file)."""
    return max(int(round(rate or DEFAULT_FPS)), int(0.05 * declared))


def iter_frames(path, fps: float = 1, rs_size: int | None = 256, cc_size: int | None = 224,
                all_frames: bool = False, strict: bool = False):
    """Generator over the sampled frames of a video, uint8 RGB `[H, W, 3]` each (see `load_video`).

    Frames are decoded, converted and resized one at a time, so the generator holds one decoded
    frame (plus FFmpeg's own reference buffers) whatever the length of the video.

    Errors opening the file are raised at the first `next()`. A video that stops decoding after
    some frames (a decoding error, or the stream ending well before the length its header
    declares, see `truncation_tolerance`) is truncated or corrupt: with `strict` that raises
    VideoError; otherwise the generator ends there with a RuntimeWarning naming the file, having
    yielded what decoded (the official OpenCV loop stops there silently).
    """
    path = os.fspath(path)
    err = _open_error(path)
    if err is not None:
        raise err
    try:
        import av
    except ImportError as e:
        raise ImportError("reading videos needs PyAV: pip install av") from e
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"cannot open video {path}: {e}") from e

    def truncated(message):
        if strict:
            raise VideoError(f"{message} (truncated or corrupt file)")
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise VideoError(f"no video stream in {path} (it has: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = _stream_fps(stream)
        step = 1 if all_frames else frame_step(rate, fps)
        declared, source = declared_frames(container, stream)
        count = kept = 0
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                if kept and declared - count > truncation_tolerance(declared, rate):
                    truncated(f"{path}: the video stream ended after {count} frames, its {source} "
                              f"says {declared}")
                return
            except av.FFmpegError as e:
                if not kept:
                    raise VideoError(f"cannot decode video {path}: {e}") from e
                truncated(f"{path}: decoding stopped after {count} frames: {e}")
                return
            if count % step == 0:
                kept += 1
                yield resize_crop(frame.to_ndarray(format="rgb24"), rs_size, cc_size)
            count += 1


def load_video(path, fps: float = 1, rs_size: int | None = 256, cc_size: int | None = 224,
               all_frames: bool = False, strict: bool = False) -> np.ndarray:
    """Decode a video file into uint8 RGB frames `[T, H, W, 3]` the way DnS/ViSiL sample them.

    Args:
      path: video file (anything FFmpeg reads).
      fps: frames kept per second of video (1 in DnS): one every `round(video_fps / fps)` decoded
        frames, counting from the first.
      rs_size: the shorter side is resized to this (bicubic, as OpenCV); None keeps the size.
      cc_size: centre crop size; None keeps the whole resized frame.
      all_frames: keep every decoded frame (the official `all_frames` flag).
      strict: a truncated or corrupt video that decodes only in part raises VideoError instead of
        returning the frames decoded (with a RuntimeWarning), as the official loader would.

    The whole video is held in memory; `iter_frames` (and `Extractor.extract_video`) stream it.

    Raises:
      FileNotFoundError: no such file. VideoError: a directory, an empty, unreadable or corrupt
      file, no video stream, or no frame could be decoded (with `strict`: any decoding error).
      ImportError: PyAV is not installed (`pip install av`).
    """
    frames = list(iter_frames(path, fps, rs_size, cc_size, all_frames, strict))
    if not frames:
        raise VideoError(f"no frames could be decoded from {os.fspath(path)}")
    try:
        return np.stack(frames)
    except ValueError as e:  # frame size changed mid-stream and no crop evens it out
        raise VideoError(f"{os.fspath(path)}: frames of different sizes ({e}); "
                         "pass cc_size to crop them alike") from e
