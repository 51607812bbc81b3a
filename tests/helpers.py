"""Shared test helpers: reference networks converted once per session."""
import functools

import numpy as np

from dns_jax import pretrained
from reference import Reference

REFERENCE_NETWORKS = {
    "fg_att_student": "fg_att_student",
    "fg_bin_student": "fg_bin_student",
    "fg_bin_student_trainmode": "fg_bin_student",
    "fg_none_student": "fg_student",
    "cg_student": "cg_student",
    "selector": "selector",
    "visil_head_sym512": "visil_symmetric",
    "visil_head_f512": "visil_f",
}


@functools.lru_cache(maxsize=None)
def reference(name):
    return Reference(name)


@functools.lru_cache(maxsize=None)
def network(name):
    """(Reference, wrapper from dns_jax.pretrained.load) for a reference file."""
    ref = reference(name)
    return ref, pretrained.load(REFERENCE_NETWORKS[name], ref.state)


def pairs(n_q=2, n_d=3):
    return [(i, j) for i in range(n_q) for j in range(n_d)]


def train_batch(ref):
    """The official training batch of the FG fixtures: videos in `train_videos_order`, padded."""
    vids = {f"q{i}": v for i, v in enumerate(ref.videos("q"))}
    vids.update({f"d{i}": v for i, v in enumerate(ref.videos("d"))})
    mask = ref.inp["train_videos_mask"]
    x = np.zeros(mask.shape + (9, 512), np.float32)
    for k, name in enumerate(ref.inp["train_videos_order"]):
        x[k, : vids[str(name)].shape[0]] = vids[str(name)]
    return x, mask
