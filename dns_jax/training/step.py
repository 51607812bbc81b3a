"""The one training step shared by every student and the selector, and its sharding.

`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))` is the only part
that depends on the network:
  * fine-grained students: L1 between the student's and the teacher's (positive, negative)
    similarities + r * similarity-regularisation loss (official: a sum over the batch);
  * coarse-grained student: the same L1, with teacher similarities mapped to [0, 1] (s / 2 + 0.5);
  * selector: BCE of the probability that the fine student is needed, BatchNorm statistics updated.
Rows with weight 0 (padding of an epoch's last batch) contribute nothing.

`make_train_step` jits `train_step` over a mesh of all devices (of all hosts): the batch is sharded
along its first axis ('data'), parameters and optimizer state are replicated, so the same code
runs on one CPU, several GPUs or a pod slice; XLA inserts the gradient all-reduce.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dns_jax.losses import binary_cross_entropy, distillation_l1

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any      # {'batch_stats': ...} for the selector, {} otherwise
    opt_state: Any

    def variables(self) -> Dict[str, Any]:
        """The Flax variables dict ('params' and any model state), as checkpoints store it."""
        return {"params": self.params, **self.model_state}


def make_optimizer(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam (torch defaults); weight decay as torch's Adam applies it (L2 added to the gradient).
    The learning rate is a hyperparameter in the state, so it is logged and can be changed."""
    def build(learning_rate):
        parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        return optax.chain(*parts, optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8))
    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


@functools.lru_cache(maxsize=16)
def _jitted_init(module):
    # jitted (op by op, init compiles every small op separately) and cached per module config
    return jax.jit(functools.partial(module.init, method="init_all"))


def init_state(module, tx: optax.GradientTransformation, rng) -> TrainState:
    """Fresh parameters (threefry, computed once and replicated) and optimizer state."""
    # The partitionable threefry variant compiles 2-3x slower on CPU (seconds per network) and
    # buys nothing here: initialisation runs unsharded, once.
    partitionable = getattr(jax, "threefry_partitionable", None)
    with partitionable(False) if partitionable is not None else contextlib.nullcontext():
        variables = _jitted_init(module)(rng)
    return state_from_variables(variables, tx)


def state_from_variables(variables, tx: optax.GradientTransformation) -> TrainState:
    """Step 0 with the Flax `variables` ({'params': ..., other collections}) and a fresh optimizer."""
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params))


# ---------------------------------------------------------------------------------------------
# losses

def _flatten_videos(batch):
    v, m = batch["videos"], batch["masks"]
    n, k = v.shape[:2]
    return v.reshape((n * k,) + v.shape[2:]), m.reshape((n * k,) + m.shape[2:]), n, k


def fine_student_loss(module, r_parameter: float) -> Callable:
    """Distillation L1 + r * regularisation for FineGrainedStudent (official train_student.py)."""

    def loss_fn(params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        videos, masks, n, k = _flatten_videos(batch)
        x = module.apply(variables, videos, masks, True, method="index_video")  # all 3n at once
        x = x.reshape((n, k) + x.shape[1:])
        m = masks.reshape(n, k, -1)

        def one(a, p, q, am, pm, qm):  # per triplet, so padding rows can be left out of reg_loss
            pos, neg, reg = module.apply(variables, a[None], p[None], q[None], am[None], pm[None], qm[None])
            return pos[0, 0], neg[0, 0], reg

        pos, neg, reg = jax.vmap(one)(x[:, 0], x[:, 1], x[:, 2], m[:, 0], m[:, 1], m[:, 2])
        w = batch["weights"]
        t = batch["targets"]
        distill = distillation_l1(pos, neg, t[:, 0], t[:, 1], w)
        reg_loss = jnp.sum(reg * w)
        loss = distill + r_parameter * reg_loss
        metrics = {"loss": loss, "distillation_loss": distill, "regularization_loss": reg_loss}
        return loss, (metrics, model_state)

    return loss_fn


def coarse_student_loss(module) -> Callable:
    """Distillation L1 for CoarseGrainedStudent, teacher targets mapped to [0, 1]."""

    def loss_fn(params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        videos, masks, n, k = _flatten_videos(batch)
        # Padded frames never reach a real output (key-padding mask, masked NetVLAD), but as zero
        # vectors their per-frame L2 normalisation has an infinite gradient that turns into NaN
        # when multiplied by zero; any non-zero filler avoids that without changing the outputs.
        videos = jnp.where(masks[:, :, None, None] > 0, videos, 1.0)
        x = module.apply(variables, videos, masks, True, method="index_video", rngs={"dropout": rng})
        x = x.reshape(n, k, -1)
        pos, neg, _ = module.apply(variables, x[:, 0], x[:, 1], x[:, 2])
        t = batch["targets"] / 2.0 + 0.5
        distill = distillation_l1(pos, neg, t[:, 0], t[:, 1], batch["weights"])
        return distill, ({"loss": distill, "distillation_loss": distill}, model_state)

    return loss_fn


def selector_loss(module) -> Callable:
    """BCE of SelectorNetwork on [query selfsim, target selfsim, coarse similarity]."""

    def loss_fn(params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        videos, masks, n, k = _flatten_videos(batch)
        selfsim = module.apply(variables, videos, masks, method="index_video").reshape(n, k)
        z = jnp.concatenate([selfsim, batch["coarse"][:, None]], axis=1)
        prob, updates = module.apply(variables, z, True, rngs={"dropout": rng}, mutable=["batch_stats"])
        w = batch["weights"]
        loss = binary_cross_entropy(prob, batch["labels"], w)
        correct = ((prob[:, 0] > 0.5) == (batch["labels"] > 0.5)).astype(jnp.float32)
        acc = jnp.sum(correct * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, ({"loss": loss, "accuracy": acc}, {**model_state, **updates})

    return loss_fn


def make_loss_fn(network: str, module, r_parameter: float = 1e-3) -> Callable:
    if network.startswith("fg_"):
        return fine_student_loss(module, r_parameter)
    if network == "cg_student":
        return coarse_student_loss(module)
    if network == "selector":
        return selector_loss(module)
    raise ValueError(f"no training loss for network {network!r}")


# ---------------------------------------------------------------------------------------------
# the step

def train_step(state: TrainState, batch, rng, *, loss_fn, tx):
    """One optimisation step -> (new state, scalar metrics). `rng` is the run's base key; the
    step's key is derived from it and the step number, so a resumed run draws the same numbers."""
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = opt_state.hyperparams["learning_rate"]
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-d mesh ('data') over all devices of all processes, with automatic sharding propagation."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def shardings(mesh):
    """(replicated, batch-sharded) NamedShardings of `mesh`."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))


def make_train_step(loss_fn, tx, mesh) -> Callable:
    """jit(train_step) with the batch sharded over `mesh` and everything else replicated."""
    replicated, data = shardings(mesh)
    step = functools.partial(train_step, loss_fn=loss_fn, tx=tx)
    return jax.jit(step, in_shardings=(replicated, data, replicated),
                   out_shardings=(replicated, replicated))


def global_batch(arrays: Dict[str, Any], mesh) -> Dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded over the mesh's 'data' axis."""
    _, data = shardings(mesh)
    if jax.process_count() == 1:
        return jax.device_put(dict(arrays), data)   # one batched transfer
    return {k: jax.make_array_from_process_local_data(data, v) for k, v in arrays.items()}
