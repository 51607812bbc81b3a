"""Host-side bank of overlay patches, rendered once with Pillow (no fonts or images read from
disk or network): random strings in Pillow's built-in default font, and emoji-like coloured
shapes. The JAX overlays (`overlay.py`) scale, colour and blend them."""
from __future__ import annotations

import math
import string
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_CHARS = string.ascii_letters + string.digits + string.punctuation
_SHAPES = ("face", "heart", "star", "ring", "triangle", "diamond", "flower", "square")
_SUPERSAMPLE = 4


class OverlayBank(NamedTuple):
    """Arrays only, so a bank is a pytree argument of jitted functions.

    text_alpha: uint8 [Nt, Ht, Wt]   glyph coverage of one line of text at `text_size` px
    text_extent: float32 [Nt, L]     x extent (px) of the first 1..L characters
    text_size: float32 []            font size the text was rendered at
    emoji: uint8 [Ne, P, P, 4]       RGBA shapes, transparent background
    """
    text_alpha: np.ndarray
    text_extent: np.ndarray
    text_size: np.ndarray
    emoji: np.ndarray


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)   # FreeType build of Pillow >= 10.1: scalable
    except (TypeError, AttributeError, ImportError, OSError):
        return ImageFont.load_default()            # fixed bitmap font


def _text_line(font, text: str, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font)
    return np.asarray(canvas, np.uint8)


def _render_text(rng: np.random.Generator, count: int, length: int, size: int):
    font = _font(size)
    texts = ["".join(rng.choice(list(_CHARS), size=length)) for _ in range(count)]
    extents = np.array([[font.getlength(t[:k + 1]) for k in range(length)] for t in texts], np.float32)
    boxes = [font.getbbox(t) for t in texts]
    height = max(b[3] for b in boxes) + 1
    width = int(math.ceil(max(max(b[2] for b in boxes), extents.max()))) + 1
    alpha = np.stack([_text_line(font, t, height, width) for t in texts])
    return alpha, extents


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, s: int, fill, accent) -> None:
    m = s // 16                                           # margin
    if shape == "face":
        draw.ellipse([m, m, s - m, s - m], fill=fill)
        e = s // 10
        for cx in (s * 3 // 8, s * 5 // 8):
            draw.ellipse([cx - e, s * 3 // 8 - e, cx + e, s * 3 // 8 + e], fill=accent)
        draw.arc([s // 4, s // 4, s * 3 // 4, s * 3 // 4], 20, 160, fill=accent, width=max(1, s // 16))
    elif shape == "heart":
        r = s // 4
        draw.ellipse([m, m + r // 2, m + 2 * r, m + r // 2 + 2 * r], fill=fill)
        draw.ellipse([s - m - 2 * r, m + r // 2, s - m, m + r // 2 + 2 * r], fill=fill)
        draw.polygon([(m + r // 8, m + 3 * r // 2), (s - m - r // 8, m + 3 * r // 2), (s // 2, s - m)], fill=fill)
    elif shape == "star":
        c, ro, ri = s / 2, s / 2 - m, s / 5
        pts = [(c + (ro if i % 2 == 0 else ri) * math.sin(i * math.pi / 5),
                c - (ro if i % 2 == 0 else ri) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(pts, fill=fill)
    elif shape == "ring":
        draw.ellipse([m, m, s - m, s - m], fill=fill)
        draw.ellipse([s // 4, s // 4, s * 3 // 4, s * 3 // 4], fill=accent)
    elif shape == "triangle":
        draw.polygon([(s // 2, m), (s - m, s - m), (m, s - m)], fill=fill)
        draw.ellipse([s * 7 // 16, s * 3 // 8, s * 9 // 16, s * 5 // 8], fill=accent)
    elif shape == "diamond":
        draw.polygon([(s // 2, m), (s - m, s // 2), (s // 2, s - m), (m, s // 2)], fill=fill)
    elif shape == "flower":
        r = s // 5
        for k in range(6):
            cx = s / 2 + (s / 2 - m - r) * math.cos(k * math.pi / 3)
            cy = s / 2 + (s / 2 - m - r) * math.sin(k * math.pi / 3)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        draw.ellipse([s / 2 - r, s / 2 - r, s / 2 + r, s / 2 + r], fill=accent)
    else:  # square
        draw.rounded_rectangle([m, m, s - m, s - m], radius=s // 6, fill=fill)
        draw.rectangle([s * 3 // 8, s * 3 // 8, s * 5 // 8, s * 5 // 8], fill=accent)


def _render_emoji(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    big = size * _SUPERSAMPLE
    patches = []
    for i in range(count):
        image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        accent = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        _draw_shape(ImageDraw.Draw(image), _SHAPES[i % len(_SHAPES)], big, fill, accent)
        patch = np.asarray(image.resize((size, size), Image.Resampling.BOX), np.uint8).copy()
        patch[..., :3] = np.where(patch[..., 3:] == 0, 0, patch[..., :3])   # no colour where clear
        patches.append(patch)
    return np.stack(patches)


def build_overlay_bank(seed: int = 0, num_text: int = 64, num_emoji: int = 32,
                       text_length: int = 32, text_size: int = 32, emoji_size: int = 64) -> OverlayBank:
    """Render `num_text` random strings of `text_length` characters and `num_emoji` shapes
    (deterministic in `seed`)."""
    if min(num_text, num_emoji, text_length, text_size, emoji_size) < 1:
        raise ValueError("overlay bank sizes must be positive")
    rng = np.random.default_rng(seed)
    alpha, extents = _render_text(rng, num_text, text_length, text_size)
    return OverlayBank(text_alpha=alpha, text_extent=extents,
                       text_size=np.asarray(text_size, np.float32),
                       emoji=_render_emoji(rng, num_emoji, emoji_size))
