"""How `dns-jax build` distils the CG student on a small self-built collection.

The official recipe (random initialisation, teacher similarities mapped by s / 2 + 0.5, learning
rate 1e-5 for 300 epochs of DnS-100K) assumes a large collection and a trained teacher. On a few
dozen videos scored by ViSiL_f (no weights) the student ends below its own initialisation and far
below plain mean pooling of the features. Measured on the demo collection (34 videos, mAP of the
4 source clips; mean pooling 0.81):

* the randomly initialised Transformer's residual branches scramble frame vectors (mean pooling of
  its output: 0.49) -> `identity_residual_init` zeroes their last projections (0.80);
* NetVLAD's random reduction 8192 -> 256 adds projection noise larger than the near-duplicate
  signal (VLAD before it 0.80, after it 0.42) -> `reduction_pca_init` makes it an orthonormal
  projection onto the principal directions of the collection's VLAD vectors (whole network at
  initialisation: 0.80-0.84);
* unrelated pairs score ~0.05 and most near-duplicates 0.05-0.5, so every official target lies in
  [0.52, 0.76] and a near-constant cosine fits them -> `spread_targets` standardises the teacher's
  scores against the collection's background (median and MAD of all scored pairs, which are
  mostly unrelated): background pairs get target cosine 0, pairs above it a target growing with
  the log of their robust z-score; the teacher's order of pairs is kept.

(K-means centroids for NetVLAD, the other usual initialisation, made it worse here: with a few
frames per video, hard-ish assignments put copies of a clip in different clusters.)

The PCA reduction spans only the VLAD vectors of the videos it was fitted on: a few dozen videos
give a few dozen directions, the rest of the 256 are random, and a video added later (or a query
from outside the collection) lands mostly in the random part. On held-out hard copies
(`benchmarks/bench_s2vs_teachers.py`, 40 training videos, 120 added) the student started at mAP
0.58 and ended at 0.59 while mean pooling of the same features gives 0.84. The default
`init='mean_pooling'` (`mean_pooling_init`) needs no videos: near-uniform soft assignments, small
centroids and the same projection on every cluster's block make the initial network mean pooling
of its frame vectors, projected onto the leading feature dimensions (the whitening's principal
components come first); training then moves it towards the teacher. Same benchmark: 0.82 at
initialisation, 0.81 trained (ViSiL_f teacher) and 0.82 (S2VS teacher), and the training families
gain as well (0.31 -> 0.47, 0.39 -> 0.60). `init='vlad_pca'` keeps the PCA reduction.

None of this changes a layer: names and shapes stay those of the official CG student.

One vector per video stays the limit on picture-in-picture and overlaid copies: the student sums
each frame's regions before anything else, mixing the inset or the banner with the rest of the
picture. The build's default is therefore the CG student's `region_max` form (`coarse.kind`,
`region_max_config`): the 9 regions averaged over the video separately (attention-weighted,
started neutral by `neutral_attention`) and a pair scored by its best region pair. On the same
held-out benchmark it ranks at 0.91 against 0.81, and DnS at 10 % went 0.87 -> 0.91 (docs/s2vs.md).
With the fine students started at ViSiL_f on frame blocks (0.967) that recall held DnS at 10 % at
0.933, so the regions are also kept per temporal segment (`coarse.segments`, 3 by default: each of
3 equal stretches of the video has its own 9 vectors): a trimmed or re-timed copy meets the stretch
it copies instead of an average over unrelated frames, and a pair scores the mean of its 3 best
vector pairs (`coarse.top_pairs`; the best of 729 pairs rises for unrelated videos too). The CG
student then ranks at 0.947 and DnS at 10 % at 0.968. It costs 9 x segments x dims floats per video,
(9 x segments)^2 products per pair, and has no faiss stage.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from dns_jax import checkpoint
from dns_jax.datasets.stores import open_features
from dns_jax.models.registry import build_module
from dns_jax.training.pairs import PairSet, read_pairs, write_pairs


def fit_spread(sims: np.ndarray, floor: float = 3.0) -> Dict:
    """Parameters of `spread_scores` fitted on similarities [P] of one scorer, most of them of
    unrelated pairs: their median and robust std (1.4826 MAD) describe the background; `top` is
    the robust z-score of the largest similarity. Scale-free: a scorer whose similarities are all
    tiny but ordered still spreads over [0, 1]."""
    sims = np.asarray(sims, np.float64)
    m = float(np.median(sims))
    scale = max(1.4826 * float(np.median(np.abs(sims - m))), 1e-9)
    return {"rule": "spread", "median": m, "scale": scale, "floor": floor, "top": float((sims.max() - m) / scale)}


def spread_scores(sims: np.ndarray, params: Dict) -> np.ndarray:
    """Similarities [P] -> cosine-like scores in [0, 1] (`params` from `fit_spread`): with
    z = (s - median) / scale, pairs within `floor` robust stds of the background get 0, the rest
    log(1 + z - floor) / log(1 + top - floor). Monotone: the scorer's order is kept."""
    z = (np.asarray(sims, np.float64) - params["median"]) / params["scale"]
    top, floor = params["top"], params["floor"]
    if top <= floor:
        return np.zeros_like(z)
    return np.clip(np.log1p(np.maximum(z - floor, 0.0)) / np.log1p(top - floor), 0.0, 1.0)


def fit_quantile_map(fine: np.ndarray, coarse: np.ndarray, points: int = 257) -> Dict:
    """Parameters of `quantile_scores`: `points` quantiles (at most one per 4 pairs, so that a few
    pairs do not make steep stretches that magnify float noise) of the fine student's raw
    similarities [P] and of the CG student's cosines [P] on the same training pairs. DnS then
    gives a re-ranked video the CG cosine at its fine score's quantile: the fine student's best
    pairs land where the CG student puts its best, whatever the two scales (spreading the fine
    scores like the teacher's left re-ranked copies under distractors the CG scores above its
    own targets)."""
    q = np.linspace(0.0, 1.0, int(np.clip(len(fine) // 4 + 1, 2, points)))
    return {"rule": "quantiles", "fine": np.quantile(np.asarray(fine, np.float64), q).tolist(),
            "coarse": np.quantile(np.asarray(coarse, np.float64), q).tolist()}


def quantile_scores(raw: np.ndarray, params: Dict) -> np.ndarray:
    """Raw fine similarities [...] -> the CG scale (`params` from `fit_quantile_map`): piecewise
    linear between the quantiles, plus 1e-4 x raw so that scores beyond the fitted range (or on a
    flat stretch) keep the fine student's order. Monotone."""
    raw = np.asarray(raw, np.float64)
    return np.interp(raw, params["fine"], params["coarse"]) + 1e-4 * raw


def spread_targets(pairs: PairSet, floor: float = 3.0) -> PairSet:
    """The teacher's pair file with similarities s' such that the CG loss's official mapping
    s' / 2 + 0.5 gives the spread target cosine (s' = 2 t - 1); parameters in meta['cg_targets']."""
    params = fit_spread(np.array([s for _, _, s, _ in pairs.all_pairs()]), floor)
    out: Dict[int, Dict] = {}
    for q, pools in pairs.pairs.items():
        out[q] = {}
        for kind in ("positives", "negatives"):
            targets, sims = list(pools.get(kind, {})), np.array(list(pools.get(kind, {}).values()))
            out[q][kind] = dict(zip(targets, (2.0 * spread_scores(sims, params) - 1.0).tolist()))
    meta = dict(pairs.meta, cg_targets=dict(params, stored="2 * target - 1"))
    return PairSet(list(pairs.index), out, meta)


# ---------------------------------------------------------------------------------------------
# initialisation

def identity_residual_init(variables) -> Dict:
    """`variables` with the last projection of every Transformer residual branch (self-attention
    `out_proj` and feed-forward `linear2`) zeroed, so the initialised encoder passes each frame
    through its LayerNorms only (randomly initialised branches scramble a frame vector as much as
    they keep it). Gradients still reach every parameter."""
    params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    enc = params.get("transformer_layer")
    if enc is None:
        return variables
    enc = dict(enc)
    for name, layer in enc.items():
        if not name.startswith("layers_"):
            continue
        layer = dict(layer)
        attn = dict(layer["self_attn"])
        attn["out_proj"] = {k: np.zeros_like(v) for k, v in attn["out_proj"].items()}
        layer["self_attn"] = attn
        layer["linear2"] = {k: np.zeros_like(v) for k, v in layer["linear2"].items()}
        enc[name] = layer
    params["transformer_layer"] = enc
    return {**variables, "params": params}


def _padded_batches(videos: Sequence[np.ndarray], batch: int = 32):
    """Videos [T, R, D] -> (batch [B, T', R, D], mask [B, T']) padded to a power-of-two length."""
    order = sorted(range(len(videos)), key=lambda i: videos[i].shape[0])
    for s in range(0, len(order), batch):
        group = [videos[i] for i in order[s:s + batch]]
        t = 1 << max(int(max(v.shape[0] for v in group)) - 1, 0).bit_length()
        x = np.zeros((len(group), t) + group[0].shape[1:], np.float32)
        m = np.zeros((len(group), t), np.float32)
        for j, v in enumerate(group):
            x[j, :v.shape[0]], m[j, :v.shape[0]] = v, 1.0
        yield x, m


def vlad_vectors(module, variables, videos: Sequence[np.ndarray]) -> np.ndarray:
    """[N, K * D]: what NetVLAD's `reduction_layer` receives (the intra- and globally normalised
    VLAD) for every video [T, R, D], recorded by intercepting that layer's call."""
    def capture(params, x, mask):
        seen = []

        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == "reduction_layer" and context.method_name == "__call__":
                seen.append(args[0])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            module.apply(params, x, mask, method="index_video")
        if not seen:
            raise ValueError("this CG student has no NetVLAD reduction layer")
        return seen[0]

    capture = jax.jit(capture)
    out = []
    for x, m in _padded_batches(videos):
        out.append(np.asarray(capture(variables, x, m)))
    return np.concatenate(out)


def reduction_pca_init(module, variables, videos: Sequence[np.ndarray], seed: int = 0) -> Dict:
    """`variables` with NetVLAD's `reduction_layer` kernel [K * D, out] set to an orthonormal
    projection onto the principal directions of the collection's VLAD vectors (all of them when
    the collection has fewer than `out` videos, completed by random orthonormal directions), so
    the reduction keeps the similarities of the collection's videos instead of adding the noise
    of a random projection, which on a small collection drowns the near-duplicate signal."""
    params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    vlad_params = dict(params.get("netvlad_layer", {}))
    if "reduction_layer" not in vlad_params:
        return variables
    kernel = vlad_params["reduction_layer"]["kernel"]
    n_in, n_out = kernel.shape
    v = vlad_vectors(module, variables, videos).astype(np.float64)
    _, sv, vt = np.linalg.svd(v, full_matrices=False)
    basis = vt[sv > sv[0] * 1e-6][:n_out].T                       # [K * D, r]
    if basis.shape[1] < n_out:
        rng = np.random.default_rng(seed)
        extra = rng.normal(size=(n_in, n_out - basis.shape[1]))
        extra -= basis @ (basis.T @ extra)
        basis = np.concatenate([basis, np.linalg.qr(extra)[0]], axis=1)
    vlad_params["reduction_layer"] = {"kernel": basis.astype(kernel.dtype)}
    params["netvlad_layer"] = vlad_params
    return {**variables, "params": params}


def mean_pooling_init(variables, scale: float = 0.1) -> Dict:
    """`variables` with NetVLAD set up to start as mean pooling: centroids [K, D] and the
    assignment projection `conv` [D, K] multiplied by `scale` (soft assignments near 1 / K, residuals
    near the frame vectors themselves), and `reduction_layer` [K * D, out] = the same projection
    P [D, out] on every cluster's block, divided by sqrt(K), with P keeping the first `out` feature
    dimensions (all D and zero columns when out > D). With `scale=0` every cluster's intra-normalised
    block is u = l2(sum_t x_t) and the output before the LayerNorm is P^T u: mean pooling of the
    frame vectors, for any video, seen or not. `scale` > 0 breaks the clusters' symmetry so training
    can specialise them."""
    params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    vlad_params = dict(params.get("netvlad_layer", {}))
    if "reduction_layer" not in vlad_params:
        return variables
    k, d = vlad_params["centroids"].shape
    kernel = vlad_params["reduction_layer"]["kernel"]
    vlad_params["centroids"] = vlad_params["centroids"] * scale
    vlad_params["conv"] = vlad_params["conv"] * scale
    block = np.eye(d, kernel.shape[1], dtype=kernel.dtype)
    vlad_params["reduction_layer"] = {"kernel": np.tile(block, (k, 1)) / np.sqrt(k).astype(kernel.dtype)}
    params["netvlad_layer"] = vlad_params
    return {**variables, "params": params}


# ---------------------------------------------------------------------------------------------
# the build stage's inputs

INITS = ("mean_pooling", "vlad_pca")
# the CG student a build distils (configs/build.py coarse.kind): the official one vector per video
# (Transformer + NetVLAD), or region vectors with the best region pair as similarity
KINDS = ("netvlad", "region_max")


def initial_variables(model_config: Dict, videos: Sequence[np.ndarray], seed: int = 0,
                      init: str = "mean_pooling") -> Dict:
    """A freshly initialised CG student (`model_config`: its constructor options) with the
    identity residual branches and NetVLAD started as mean pooling (`init='mean_pooling'`,
    `videos` unused) or with the PCA reduction fitted on `videos` ([T, R, D] each; 'vlad_pca').
    A region-vector student (`region_max`) starts with a neutral attention (`init` unused)."""
    if init not in INITS:
        raise ValueError(f"coarse.init {init!r}: expected one of {', '.join(INITS)}")
    module = build_module("cg_student", model_config)
    init_fn = jax.jit(lambda key: module.init(key, method="init_all"))   # op by op is much slower
    variables = init_fn(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
    if model_config.get("region_max"):
        return neutral_attention(variables)
    variables = identity_residual_init(variables)
    if init == "mean_pooling":
        return mean_pooling_init(variables)
    return reduction_pca_init(module, variables, videos, seed)


def region_max_config(dims: int, segments: int = 1, top_pairs: int = 1) -> Dict:
    """Constructor options of the CG student as region vectors (`coarse.kind='region_max'`): no
    Transformer or NetVLAD; the attention weights each frame's regions in the average over time
    (over each of `segments` equal stretches of the video, `coarse.segments`); a pair scores the
    mean of its `top_pairs` best vector pairs (`coarse.top_pairs`)."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"coarse.segments {segments!r}: expected a whole number >= 1")
    pairs = (9 * segments) ** 2
    if isinstance(top_pairs, bool) or not isinstance(top_pairs, int) or not 1 <= top_pairs <= pairs:
        raise ValueError(f"coarse.top_pairs {top_pairs!r}: expected a whole number from 1 to {pairs} (the vector "
                         f"pairs of two videos with {segments} segments)")
    return dict(dims=int(dims), attention=True, transformer=False, netvlad=False, region_max=True, num_regions=9,
                num_segments=int(segments), top_pairs=int(top_pairs))


def neutral_attention(variables) -> Dict:
    """`variables` with the attention's context vector zeroed: every weight is sigmoid(0) = 0.5, so
    a region-vector student starts as the plain mean of each region's L2-normalised features over
    the video (what `benchmarks/bench_coarse_references.py` calls region max)."""
    params = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    att = dict(params["attention_layer"])
    att["context_vector"] = {"kernel": np.zeros_like(att["context_vector"]["kernel"])}
    params["attention_layer"] = att
    return {**variables, "params": params}


def prepare(teacher_pairs: str, features: str, model_config: Dict, out_dir: str, seed: int = 0,
            max_videos: int = 4096, floor: float = 3.0, init: str = "mean_pooling", log=print) -> Tuple[str, str, Dict]:
    """Write the CG training inputs to `out_dir`: the pair file of spread targets and the initial
    checkpoint (for the trainer's `pairs` and `init_from`; `init` as in `initial_variables`).
    Returns (pairs path, checkpoint dir, the spread parameters of the teacher's scores).
    With `init='vlad_pca'` the reduction's PCA uses at most `max_videos` videos of `features`, drawn
    at random."""
    if init not in INITS:
        raise ValueError(f"coarse.init {init!r}: expected one of {', '.join(INITS)}")
    os.makedirs(out_dir, exist_ok=True)
    targets = spread_targets(read_pairs(teacher_pairs), floor)
    pairs_path = write_pairs(targets, os.path.join(out_dir, "cg_targets.json.gz"))
    t = targets.meta["cg_targets"]
    log(f"coarse: targets spread against the background of the teacher's scores (median {t['median']:.3f}, "
        f"robust std {t['scale']:.4f}; pairs within {t['floor']:g} stds -> cosine 0)")
    videos = []
    if init == "vlad_pca":
        store = open_features(features)
        ids = sorted(store.ids())
        if len(ids) > max_videos:
            ids = sorted(np.random.default_rng(seed).choice(ids, max_videos, replace=False).tolist())
        videos = [store[v] for v in ids]
    variables = initial_variables(model_config, videos, seed, init)
    init_dir = os.path.join(out_dir, "cg_init")
    tmp = init_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save_network(tmp, "cg_student", model_config, variables)
    shutil.rmtree(init_dir, ignore_errors=True)
    os.replace(tmp, init_dir)
    if model_config.get("region_max"):
        segments = int(model_config.get("num_segments", 1))
        over = f"each of {segments} stretches of the video" if segments > 1 else "the video"
        log(f"coarse: initial network: region vectors as plain means over {over} (neutral attention)")
    else:
        start = (f"a PCA reduction of {len(videos)} videos' VLAD vectors" if init == "vlad_pca"
                 else "NetVLAD started as mean pooling of the frame vectors")
        log(f"coarse: initial network with identity Transformer residuals and {start}")
    return pairs_path, init_dir, dict(t)
