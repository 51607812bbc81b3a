"""The S2VS training objective, combined as the official training loop does:

    loss = InfoNCE(sim, labels; temperature)
           + lambda_parameter * (hardest-negative + self-similarity)
           + r_parameter * similarity-range regularisation

where `sim` [2B, 2B] is the network's similarity of every view with every other (in [0, 1]),
`labels` the batch's targets (> 0: same source video) and the regularisation term the network's
own sum over the raw comparator outputs (S2VS.__call__). The published weights are
temperature 0.03, lambda 3 and r 1.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax

from dns_jax.losses import infonce_loss, sshn_loss


def ssl_loss(similarity: jax.Array, labels: jax.Array, regularization: jax.Array, *,
             temperature: float, lambda_parameter: float, r_parameter: float,
             eps: float = 1e-3) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """-> (total loss, {'loss', 'infonce_loss', 'hardneg_loss', 'self_loss', 'sshn_loss',
    'regularization_loss'}), every entry a scalar."""
    infonce = infonce_loss(similarity, labels, temperature)
    hardneg, self_sim = sshn_loss(similarity, labels, eps)
    sshn = hardneg + self_sim
    loss = infonce + lambda_parameter * sshn + r_parameter * regularization
    return loss, {"loss": loss, "infonce_loss": infonce, "hardneg_loss": hardneg, "self_loss": self_sim,
                  "sshn_loss": sshn, "regularization_loss": regularization}
