"""Video-in-video (official S2VS `VideoInVideo`): with probability p, video i of the batch is
shrunk into a random box of another video j (the host), and the label entry [i, j] records
lambda, the host's share. Videos are `[B, T, H, W, 3]` uint8."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from .sampling import between, integer
from .spatial import paste


class VivParams(NamedTuple):
    apply: jax.Array   # bool [B]   video i becomes a video-in-video
    host: jax.Array    # int32 [B]  the host j != i
    lam: jax.Array     # float32 [B] lambda ~ U(lam range); the donor box covers about 1 - lambda
    box: jax.Array     # int32 [B, 4] donor box in the host: top, left, height, width


def viv_params(key: jax.Array, batch: int, height: int, width: int, p: float,
               lam_range: Sequence[float]) -> VivParams:
    """Official draw: box sides int(side * sqrt(1 - lambda)), centre uniform over the frame,
    clipped to it (so the donor may be squeezed at the borders). A batch of one never mixes."""
    u = jax.random.uniform(key, (5, batch))       # apply?, host shift, lambda, centre y, centre x
    lam = between(u[2], lam_range[0], lam_range[1])
    host = (jnp.arange(batch) + integer(u[1], 1, max(batch - 1, 1))) % batch   # uniform over the others
    ratio = jnp.sqrt(1.0 - lam)
    half_h = (height * ratio).astype(jnp.int32) // 2
    half_w = (width * ratio).astype(jnp.int32) // 2
    cy = integer(u[3], 0, height - 1)
    cx = integer(u[4], 0, width - 1)
    top, bottom = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
    left, right = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
    box = jnp.stack([top, left, bottom - top, right - left], axis=-1)
    apply = (u[0] < p) & (batch > 1) & (box[:, 2] > 0) & (box[:, 3] > 0)
    return VivParams(apply, host.astype(jnp.int32), lam, box.astype(jnp.int32))


def apply_viv(videos: jax.Array, params: VivParams) -> jax.Array:
    """Output i = host videos[host[i]] with videos[i] resized into box[i], where apply[i]; the
    donors and hosts are the unmixed inputs."""
    def one(i):
        mixed = paste(videos[params.host[i]], videos[i], params.box[i])
        return jnp.where(params.apply[i], mixed, videos[i])
    return jax.vmap(one)(jnp.arange(videos.shape[0]))


def viv_matrix(params: VivParams) -> jax.Array:
    """[B, B] float32: identity, plus lambda at [i, host[i]] for every mixed video i."""
    batch = params.apply.shape[0]
    eye = jnp.eye(batch, dtype=jnp.float32)
    extra = jax.nn.one_hot(params.host, batch, dtype=jnp.float32) * (params.lam * params.apply)[:, None]
    return eye + extra


def video_in_video(key: jax.Array, videos: jax.Array, p: float, lam_range: Sequence[float]):
    """-> (mixed videos [B, T, H, W, 3] uint8, viv matrix [B, B])."""
    params = viv_params(key, videos.shape[0], videos.shape[2], videos.shape[3], p, lam_range)
    return apply_viv(videos, params), viv_matrix(params)
