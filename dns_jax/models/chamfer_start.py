"""A start for the ViSiL-style network (the FG-Att student, S2VS) that already computes ViSiL_f.

ViSiL_f, the weightless teacher, is the video Chamfer of the frame-to-frame region-Chamfer matrix.
The FG-Att network computes it once its attention is uniform and its comparator passes the matrix
through: with the context vector at zero every region weight is sigmoid(0) = 1/2, so the
frame-to-frame matrix is S / 4; the first conv's centre tap carries +4 and -4 of it into two channels,
ReLU splits S into its positive and negative parts, the next convs' centre taps carry those two
channels through both max-pools and the last 1x1 conv subtracts them. The network then gives

    chamfer(clip(maxpool4x4(relu(S)) - maxpool4x4(relu(-S)), -1, 1))

(`maxpool4x4`: the comparator's two 2x2 max-pools, floored), ViSiL_f on 4x4 blocks of frames: a
copy whose frames are a second off (speed changes, trims) still meets its source's frames. Every
other weight keeps its random initialisation times `noise_scale`, so training starts from this
similarity instead of a random one and every channel still learns.
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import numpy as np

ATTENTION_SCALE = 4.0      # 1 / (1/2 * 1/2): the uniform attention halves both sides of each product


def chamfer_start(variables: Dict[str, Any], noise_scale: float = 0.1) -> Dict[str, Any]:
    """Variables of an FG-Att / S2VS network (indexing 'att' without `attention_norm`, comparator
    without batch norm) -> new variables computing ViSiL_f on 4x4 frame blocks (module docstring),
    the other weights scaled by `noise_scale` (0: exactly that similarity)."""
    params = variables.get("params", {})
    head, attention = params.get("visil_head", {}), params.get("attention", {})
    needed = {"conv1", "conv2", "conv3", "fconv"}
    if not needed <= set(head) or "context_vector" not in attention or "transform" not in attention:
        raise ValueError("chamfer_start needs the attention ('att', no attention_norm) and the plain comparator "
                         f"(no batch norm) of an FG-Att / S2VS network; got parameters {sorted(params)} "
                         f"with comparator {sorted(head)}")
    if not (np.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"chamfer_start: noise_scale must be a number >= 0, got {noise_scale!r}")
    out = jax.tree_util.tree_map(lambda a: np.array(a, np.float32) * np.float32(noise_scale), dict(variables))
    att, h = out["params"]["attention"], out["params"]["visil_head"]
    att["context_vector"]["kernel"][:] = 0.0
    centre = h["conv1"]["kernel"].shape[0] // 2
    h["conv1"]["kernel"][:, :, :, :2] = 0.0
    h["conv1"]["kernel"][centre, centre, 0, 0] = ATTENTION_SCALE
    h["conv1"]["kernel"][centre, centre, 0, 1] = -ATTENTION_SCALE
    for name in ("conv2", "conv3"):
        k = h[name]["kernel"]
        k[:, :, :, :2] = 0.0             # the two carrying channels read nothing else
        k[centre, centre, 0, 0] = 1.0
        k[centre, centre, 1, 1] = 1.0
    h["fconv"]["kernel"][:, :, :2, :] = 0.0
    h["fconv"]["kernel"][0, 0, 0, 0] = 1.0
    h["fconv"]["kernel"][0, 0, 1, 0] = -1.0
    for name in ("conv1", "conv2", "conv3"):
        h[name]["bias"][:2] = 0.0
    h["fconv"]["bias"][:] = 0.0
    return out
