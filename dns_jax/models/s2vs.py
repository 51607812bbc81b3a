"""S2VS (Kordopatis-Zilos et al., CVPR-W 2023): the self-supervised ViSiL-style similarity network.

It is the DnS fine-grained student's network, so `S2VS` is `FineGrainedStudent` (same parameters,
same official key names: an S2VS state dict loads into either) plus the official S2VS training
forward. The official `ViSiL(...)` constructor options map to fields:

    attention=True       -> indexing='att'      binarization=True -> indexing='bin', bits=binary_bits
    attention_norm=True  -> attention_norm=True symmetric, batch_norm -> the same names

and the official call options `pooling=False`, `apply_visil=False` are arguments of
`similarity_matrix` / `calculate_video_similarity`. The published files (s2vs_dns.pth,
s2vs_vcdb.pth) are the attention network without batch norm.

This module also reads network options from an official state dict's key names and shapes
(`config_from_state_dict`), for the loader in dns_jax.pretrained.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax.losses import similarity_regularization_loss
from dns_jax.models.students import FineGrainedStudent
from dns_jax.validation import add_batch_axis

Array = jax.Array

NAME = "s2vs"
FILE_NAME_PATTERN = r"s2vs"  # official files: s2vs_dns.pth, s2vs_vcdb.pth


class S2VS(FineGrainedStudent):
    """The S2VS network: `FineGrainedStudent` (see there for every option and method) with the
    official self-supervised training forward as `__call__`."""

    def __call__(self, x: Array, mask: Optional[Array] = None, train: bool = False):
        """Official forward: region features [N, T, R, D] (mask [N, T] or None) -> (similarity of
        every video with every other [N, N] in [0, 1] (hard tanh / 2 + 0.5), the similarity-range
        regularisation loss of the raw comparator output, padded cells zeroed)."""
        x, mask = add_batch_axis(x, mask)
        x = self.index_video(x, mask, train)
        out, out_mask = self.pairwise_similarity_matrices(x, x, mask, mask)
        if out_mask is not None:
            out = jnp.where(out_mask > 0, out, 0.0)
        reg_loss = similarity_regularization_loss(out)
        sim = jnp.clip(out, -1.0, 1.0) / 2.0 + 0.5
        return self.video_chamfer(sim, out_mask).reshape(x.shape[0], x.shape[0]), reg_loss


# ---------------------------------------------------------------------------------------------
# official state dicts

def _shape(state: Mapping[str, Any], key: str):
    return tuple(np.shape(state[key]))


def config_from_state_dict(state: Mapping[str, Any]) -> Dict[str, Any]:
    """S2VS constructor options read from an official state dict's keys and shapes.

    `symmetric` leaves no trace in the weights (default False; pass it as an override)."""
    cfg: Dict[str, Any] = {"indexing": "none"}
    if "attention.transform.weight" in state:
        cfg.update(indexing="att", dims=_shape(state, "attention.transform.weight")[1])
    elif "attention.context_vector.weight" in state:
        cfg.update(indexing="att", attention_norm=True, dims=_shape(state, "attention.context_vector.weight")[1])
    elif "binarization.W" in state:
        dims, bits = _shape(state, "binarization.W")
        cfg.update(indexing="bin", dims=dims, bits=bits)
    if "visil_head.conv1.0.weight" in state:
        cfg["batch_norm"] = True
    return cfg


def describe_state_dict(state: Mapping[str, Any]) -> Optional[str]:
    """What an S2VS-only state dict is (batch-norm comparator or normalised attention), for error
    messages; None for anything else (including the plain S2VS network, which is also FG-Att's)."""
    if not any(k.startswith("visil_head.") for k in state):
        return None
    if "visil_head.conv1.0.weight" in state:
        return "an S2VS network with the batch-norm comparator (s2vs, batch_norm=True)"
    if "attention.context_vector.weight" in state and "attention.transform.weight" not in state:
        return "an S2VS network with normalised attention (s2vs, attention_norm=True)"
    return None
