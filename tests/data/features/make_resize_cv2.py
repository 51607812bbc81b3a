"""Regenerate resize_cv2.npz: OpenCV's own INTER_CUBIC resize + centre crop, as the official loader does.

Needs opencv-python-headless (4.14.0.94 was used); IPP is switched off because recent wheels route
INTER_CUBIC through Intel IPP, which is not OpenCV's reference implementation (and differs from it
by one level on a few percent of the pixels).

    python tests/data/features/make_resize_cv2.py
"""
import pathlib

import cv2
import numpy as np


def official_resize_crop(frame, rs_size, cc_size):
    """ViSiL/DnS `resize_frame` + `center_crop` on one frame."""
    ratio = rs_size / np.min(frame.shape[:2])
    frame = cv2.resize(frame, dsize=(0, 0), fx=ratio, fy=ratio, interpolation=cv2.INTER_CUBIC)
    top = int(np.maximum(0, (frame.shape[0] - cc_size) / 2))
    left = int(np.maximum(0, (frame.shape[1] - cc_size) / 2))
    return frame[top:top + cc_size, left:left + cc_size]


CASES = {  # name: (input height, width, rs_size, cc_size)
    "up_default": (90, 120, 256, 224),
    "down_portrait": (150, 100, 64, 60),
    "up_odd": (37, 53, 64, 48),
}

if __name__ == "__main__":
    cv2.ipp.setUseIPP(False)
    rng = np.random.default_rng(7)
    out = {"opencv_version": np.array(cv2.__version__)}
    for name, (h, w, rs, cc) in CASES.items():
        yy, xx = np.mgrid[:h, :w]
        smooth = 128 + 100 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None] * np.array([1, 0.6, -0.8])
        img = np.clip(smooth + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        out[f"{name}/input"] = img
        out[f"{name}/sizes"] = np.array([rs, cc])
        out[f"{name}/output"] = official_resize_crop(img, rs, cc)
    np.savez_compressed(pathlib.Path(__file__).with_name("resize_cv2.npz"), **out)
