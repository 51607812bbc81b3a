"""The S2VS train step, its optimizer and schedule, and the frozen extractor inside it.

One step (official `train_one_epoch`):
  * 'pixels': uint8 clips [B, T, S, S, 3] -> weak and strong views and the video-in-video matrix
    (dns_jax.augmentation, keyed by the run's key and the step) -> the frozen extractor (ResNet
    trunk, L3-iMAC, PCA; no gradient) on all 2 x B x W frames -> features [2B, W, R, D];
  * 'feature_bank': the stored features of a weak and a strong view of each video, with the
    sources (video, host, lambda) the targets are built from;
then S2VS's training forward (similarity of every view with every other, [2B, 2B] in [0, 1], and
the regularisation term), the SSL loss (losses.ssl_loss) and an AdamW update.

The step is jitted over a mesh of every device of every host like the distillation step
(training/step.py): the batch is sharded along its first axis, parameters, optimizer state and the
extractor's weights are replicated; the all-pairs similarity spans the whole global batch.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import optax

from dns_jax.augmentation import augment_views, similarity_targets
from dns_jax.training.s2vs.losses import ssl_loss
from dns_jax.training.step import TrainState, shardings


def lr_schedule(learning_rate: float, total_steps: int, warmup_steps: int, warmup_lr_init: float,
                final_lr: float) -> Callable:
    """The official schedule (timm CosineLRScheduler with t_initial = total_steps, warmup_t =
    warmup_steps, updated every iteration, no warm-up prefix): from warmup_lr_init x lr, linear
    to lr over the warm-up, then lr_min + (lr - lr_min) (1 + cos(pi t / total)) / 2 with t
    counted from step 0 (so the cosine starts slightly below lr), lr_min = final_lr x lr."""
    lr_min = final_lr * learning_rate
    lr_init = warmup_lr_init * learning_rate

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = lr_init + t * (learning_rate - lr_init) / max(warmup_steps, 1)
        cosine = lr_min + 0.5 * (learning_rate - lr_min) * (1.0 + jnp.cos(math.pi * t / total_steps))
        cosine = jnp.where(t < total_steps, cosine, lr_min)
        return jnp.where(t < warmup_steps, warm, cosine)

    return schedule


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW (torch defaults: betas 0.9, 0.999, eps 1e-8; decoupled weight decay on every
    parameter) on the official schedule; the learning rate of each step is kept in the state."""
    schedule = lr_schedule(cfg.learning_rate, cfg.num_train_steps, cfg.warmup_steps, cfg.warmup_lr_init,
                           cfg.final_lr)
    return optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, b1=0.9, b2=0.999, eps=1e-8,
                                                 weight_decay=cfg.weight_decay)


def source_targets(video: jax.Array, host: jax.Array, lam: jax.Array, mode: str = "binary") -> jax.Array:
    """Targets [2B, 2B] of a batch of B weak views then B strong views from each view's sources:
    its video (share 1) and, for a strong view mixed into another video, that host (share lam;
    host -1: none). binary: 1 where two views share a source; soft: the largest product of the
    shares of a shared source. The same rule as augmentation.similarity_targets, which sees only
    hosts inside the batch; here a host may be any video of the collection."""
    b = video.shape[0]
    vid = jnp.concatenate([video, video])
    hst = jnp.concatenate([jnp.full((b,), -1, host.dtype), host])
    share = jnp.concatenate([jnp.zeros((b,), jnp.float32), jnp.where(host >= 0, lam, 0.0).astype(jnp.float32)])
    has = hst >= 0
    same = (vid[:, None] == vid[None, :]).astype(jnp.float32)
    a_in_b = ((vid[:, None] == hst[None, :]) & has[None, :]) * share[None, :]   # a's video hosts b
    b_in_a = ((hst[:, None] == vid[None, :]) & has[:, None]) * share[:, None]
    both = ((hst[:, None] == hst[None, :]) & has[:, None] & has[None, :]) * (share[:, None] * share[None, :])
    soft = jnp.maximum(jnp.maximum(same, a_in_b), jnp.maximum(b_in_a, both))
    if mode == "binary":
        return (soft > 0).astype(jnp.float32)
    if mode == "soft":
        return soft
    raise ValueError(f"unknown label mode {mode!r}; expected 'binary' or 'soft'")


def extract_frames(extractor, variables, frames: jax.Array, batch_frames: int) -> jax.Array:
    """The frozen extractor on frames [N, S, S, 3] uint8 -> [N, R, D], `batch_frames` at a time
    (lax.map bounds the activations held at once); no gradient flows into it."""
    n = frames.shape[0]
    chunk = min(batch_frames, n)
    pad = -n % chunk
    if pad:
        frames = jnp.concatenate([frames, jnp.zeros((pad,) + frames.shape[1:], frames.dtype)])
    chunks = frames.reshape((-1, chunk) + frames.shape[1:])
    out = jax.lax.map(lambda x: extractor.apply(variables, x), chunks)
    out = out.reshape((-1,) + out.shape[2:])[:n]
    return jax.lax.stop_gradient(out)


def augment_and_extract(key, videos, frozen, *, extractor, aug_cfg, overlays, batch_frames):
    """uint8 clips [B, T, S, S, 3] -> (weak [B, W, R, D], strong [B, W, R, D], viv [B, B])."""
    weak, strong, viv = augment_views(key, videos, aug_cfg, overlays)
    b, w = weak.shape[:2]
    frames = jnp.concatenate([weak, strong]).reshape((2 * b * w,) + weak.shape[2:])
    feats = extract_frames(extractor, frozen, frames, batch_frames)
    feats = feats.reshape((2, b, w) + feats.shape[1:])
    return feats[0], feats[1], viv


def make_bank_fn(extractor, aug_cfg, overlays, batch_frames: int, frozen) -> Callable:
    """jit(key, videos) -> augment_and_extract(...) with the extractor's weights bound."""
    fn = jax.jit(functools.partial(augment_and_extract, extractor=extractor, aug_cfg=aug_cfg,
                                   overlays=overlays, batch_frames=batch_frames))
    return lambda key, videos: fn(key, videos, frozen)


def s2vs_train_step(state: TrainState, batch: Dict[str, jax.Array], rng, frozen, *, module, tx, cfg,
                    aug_cfg, extractor=None, overlays=None):
    """One optimisation step -> (new state, scalar metrics); see the module docstring."""
    step_rng = jax.random.fold_in(rng, state.step)
    if "videos" in batch:
        weak, strong, viv = augment_and_extract(step_rng, batch["videos"], frozen, extractor=extractor,
                                                aug_cfg=aug_cfg, overlays=overlays,
                                                batch_frames=cfg.extractor.batch_frames)
        labels = similarity_targets(viv, aug_cfg.labels)
    else:
        weak, strong = batch["weak"], batch["strong"]
        labels = source_targets(batch["video"], batch["host"], batch["lam"], aug_cfg.labels)
    features = jnp.concatenate([weak, strong]).astype(jnp.float32)

    def loss_fn(params):
        sim, reg = module.apply({"params": params, **state.model_state}, features, None, True)
        return ssl_loss(sim, labels, reg, temperature=cfg.temperature, lambda_parameter=cfg.lambda_parameter,
                        r_parameter=cfg.r_parameter, eps=cfg.sshn_eps)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = opt_state.hyperparams["learning_rate"]
    metrics["positives_per_view"] = jnp.mean(jnp.sum(labels, axis=1) - 1.0)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_s2vs_train_step(module, tx, mesh, cfg, aug_cfg, extractor=None, overlays=None) -> Callable:
    """jit(s2vs_train_step) with the batch sharded over `mesh` and everything else replicated:
    `step(state, batch, rng, frozen)`; `frozen` is the extractor's variables ({} without one)."""
    replicated, data = shardings(mesh)
    step = functools.partial(s2vs_train_step, module=module, tx=tx, cfg=cfg, aug_cfg=aug_cfg,
                             extractor=extractor, overlays=overlays)
    return jax.jit(step, in_shardings=(replicated, data, replicated, replicated),
                   out_shardings=(replicated, replicated))


def frozen_variables(variables: Any, mesh) -> Any:
    """The extractor's weights placed once on every device of `mesh`."""
    replicated, _ = shardings(mesh)
    return jax.device_put(variables, replicated)
