"""Regenerate the S2VS reference fixtures in this folder (see README.md here).

Needs real PyTorch, einops and a checkout of the official S2VS code; only for regenerating: the
test-suite never imports torch. From the repository root, in a throwaway environment:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy einops
    /tmp/torchenv/bin/python tests/data/reference/s2vs/make_fixtures.py \\
        --official /path/to/s2vs-checkout [--shared shared/reference/s2vs]

`--official` is a checkout of github gkordo/s2vs (the fixtures were made at 03eb0c9); its
`model/` package is imported, run and nothing of it is copied here. `--shared` also refreshes the
trimmed copies of the project's shared reference files (s2vs_att.npz, s2vs_losses.npz).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))
from reference import recipe_array  # noqa: E402

SEED = 20241
DIMS, REGIONS = 64, 4
LENGTHS = OrderedDict(q0=9, q1=6, d0=13, d1=7)    # d0 holds a noisy copy of q0, q1 a copy of d1's start
RECIPE_MIN = 10_000                                # float tensors this big are rebuilt by the recipe
CASES = OrderedDict(
    att_sym=dict(attention=True, symmetric=True),
    attnorm_bn=dict(attention=True, attention_norm=True, batch_norm=True),
    bin=dict(binarization=True, binary_bits=DIMS),
    none=dict(),
)
# 'none' gets a 6x larger comparator output (fconv weight x6, bias 0) so that its raw output leaves
# [-1, 1] and the forward's regularisation loss is not trivially 0
FCONV = {"none": (6.0, 0.0)}


def _l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_videos():
    """Unit-norm region features [T, R, DIMS] with near-duplicate frames, so that the frame-to-frame
    matrices have structure (a diagonal of high values) rather than noise around 0."""
    rng = np.random.default_rng(SEED)
    v = {k: _l2n(rng.standard_normal((t, REGIONS, DIMS))) for k, t in LENGTHS.items()}
    v["d0"][2:11] = _l2n(v["q0"] + 0.3 * rng.standard_normal(v["q0"].shape) / np.sqrt(DIMS))
    v["q1"][:4] = _l2n(v["d1"][1:5] + 0.5 * rng.standard_normal((4, REGIONS, DIMS)) / np.sqrt(DIMS))
    return {k: a.astype(np.float32) for k, a in v.items()}


def pad_batch(videos):
    t = max(v.shape[0] for v in videos)
    x = np.zeros((len(videos), t) + videos[0].shape[1:], np.float32)
    m = np.zeros((len(videos), t), np.float32)
    for i, v in enumerate(videos):
        x[i, :v.shape[0]], m[i, :v.shape[0]] = v, 1
    return x, m


def build(official, name, ctor):
    """The official network with seeded weights; big tensors follow the recipe (stored as such)."""
    sys.path.insert(0, official)
    from model.similarity_network import ViSiL
    torch.hub.load_state_dict_from_url = lambda *a, **k: {"proj": torch.zeros(DIMS, DIMS)}  # no ITQ download
    net = ViSiL(dims=DIMS, **ctor)
    gen = np.random.default_rng([SEED, 1])
    state, recipe = OrderedDict(), {}
    for i, (key, value) in enumerate(net.state_dict().items()):
        shape = tuple(value.shape)
        if not value.is_floating_point():
            state[key] = value.numpy()
            continue
        std = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
        if value.numel() >= RECIPE_MIN:
            recipe[key] = {"shape": list(shape), "i": i, "std": float(std)}
            arr = recipe_array(SEED, i, shape, std)
        elif key.endswith("running_var"):
            arr = gen.uniform(0.5, 1.5, shape)
        elif key.endswith(".1.weight"):        # BatchNorm scale
            arr = gen.uniform(0.8, 1.2, shape)
        elif key == "attention.context_vector.weight":
            arr = 3.0 * gen.standard_normal(shape) * std  # not unit norm: attention_norm divides by it
        else:
            arr = gen.uniform(-np.sqrt(3), np.sqrt(3), shape) * std
        state[key] = np.asarray(arr, np.float32)
    if name in FCONV:
        scale, bias = FCONV[name]
        state["visil_head.fconv.weight"] = state["visil_head.fconv.weight"] * np.float32(scale)
        state["visil_head.fconv.bias"] = np.full_like(state["visil_head.fconv.bias"], bias)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return net, {k: v for k, v in state.items() if k not in recipe}, recipe


def calibrate_batch_norm(net, videos):
    """Running statistics from the f2f matrices of these videos (a train-mode pass with momentum 1),
    so that eval-mode outputs are neither constant nor saturated by the hard tanh."""
    bns = [m for m in net.visil_head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        x = torch.from_numpy(videos["q0"])[None]
        t = torch.from_numpy(videos["d0"])[None]
        sim, _ = net.frame_to_frame_similarity(net.index_video(x), net.index_video(t))
        for bn in bns:
            bn.momentum = 1.0
        net.visil_head.train()
        net.visil_head(sim)
        net.eval()
        for bn in bns:
            bn.momentum = 0.1
            bn.num_batches_tracked.zero_()


def run_outputs(net, videos, batched):
    """Every output the tests compare, as numpy, in the network's dtype."""
    out = {}
    idx = {k: net.index_video(torch.from_numpy(v).to(net_dtype(net))) for k, v in videos.items()}
    for k, v in idx.items():
        out[f"index/{k}"] = v
    for q in ("q0", "q1"):
        for d in ("d0", "d1"):
            p = f"{q}_{d}"
            out[f"f2f/{p}"] = net.similarity_matrix(idx[q], idx[d], apply_visil=False)[0][0, 0]
            out[f"sim_matrix/{p}"] = net.similarity_matrix(idx[q], idx[d])[0][0, 0]
            out[f"sim_matrix_nopool/{p}"] = net.similarity_matrix(idx[q], idx[d], pooling=False)[0][0, 0]
            out[f"sim/{p}"] = net.calculate_video_similarity(idx[q], idx[d])[0, 0]
            out[f"sim_nopool/{p}"] = net.calculate_video_similarity(idx[q], idx[d], pooling=False)[0, 0]
            out[f"sim_f2f/{p}"] = net.calculate_video_similarity(idx[q], idx[d], apply_visil=False)[0, 0]
    dtype = net_dtype(net)
    if batched:
        (q, qm), (t, tm) = [tuple(torch.from_numpy(a).to(dtype) for a in pad_batch([videos[k] for k in ks]))
                            for ks in (("q0", "q1"), ("d0", "d1"))]
        qi, ti = net.index_video(q, qm), net.index_video(t, tm)
        for name, kw in (("sim", {}), ("sim_nopool", {"pooling": False}), ("sim_f2f", {"apply_visil": False})):
            # what calculate_video_similarity(q, t, q_mask, t_mask) means (the official one raises)
            out[f"batch/{name}"] = net.v2v_sim(*net.similarity_matrix(qi, ti, query_mask=qm, target_mask=tm, **kw))
    x, m = pad_batch(list(videos.values()))
    x, m = torch.from_numpy(x).to(dtype), torch.from_numpy(m).to(dtype)
    out["forward/sim"], out["forward/loss"] = net(x, m) if batched else net(x)
    if hasattr(net, "binarization"):
        net.train()
        out["forward_train/sim"], out["forward_train/loss"] = net(x, m)
        net.eval()
    return {k: v.detach().numpy() for k, v in out.items()}


def net_dtype(net):
    return next(net.parameters()).dtype


def make_case(official, name, ctor):
    torch.manual_seed(0)
    videos = make_videos()
    net, state, recipe = build(official, name, ctor)
    net.eval()
    if ctor.get("batch_norm"):
        calibrate_batch_norm(net, videos)
        state.update({k: v.numpy().copy() for k, v in net.state_dict().items() if ".1." in k})
    batched = not ctor.get("batch_norm")  # the batch-norm comparator does not fit a frame mask
    with torch.no_grad():
        out32 = run_outputs(net, videos, batched)
        out64 = run_outputs(net.double(), videos, batched)
    meta = {"network": "S2VS ViSiL", "source": "gkordo/s2vs 03eb0c9", "ctor": dict(dims=DIMS, **ctor),
            "weight_seed": SEED, "lengths": LENGTHS, "batched": [["q0", "q1"], ["d0", "d1"]] if batched else None,
            "forward": "net(all four videos padded, mask)" if batched else "net(all four videos padded, no mask)"}
    arrays = {"meta": json.dumps(meta), "recipe": json.dumps(recipe)}
    arrays.update({f"state/{k}": v for k, v in state.items()})
    arrays.update({f"in/{k}": v for k, v in videos.items()})
    arrays.update({f"out/{k}": v for k, v in out32.items()})
    arrays.update({f"out64/{k}": v for k, v in out64.items() if not k.startswith("index/")})
    np.savez_compressed(os.path.join(HERE, f"s2vs_d{DIMS}_{name}.npz"), **arrays)
    for k, v in out32.items():
        if not k.startswith("index/") and v.size > 1 and (np.ptp(v) < 1e-3 or np.abs(v).min() >= 1):
            print(f"warning: {name} {k} is nearly constant or saturated: {v.min()}..{v.max()}")
    return net.float(), state, recipe


def write_official_checkpoint(net, name):
    """An official-format training checkpoint (utils.save_model's layout) holding this case."""
    import argparse as ap
    args = ap.Namespace(similarity_network="ViSiL", dims=DIMS, attention=True, attention_norm=True,
                        batch_norm=True, temperature=0.03, learning_rate=4e-5, experiment_path="/tmp/s2vs")
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.learning_rate)
    torch.save({"args": args, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": 12, "epoch": 3}, os.path.join(HERE, f"s2vs_d{DIMS}_{name}_ref.pth"))


def trim_shared(shared):
    """Copies of the shared reference files without what the tests can rebuild or do not need: the
    padded batch inputs (the tests pad in/* themselves), float64 index outputs and d1's index."""
    z = np.load(os.path.join(shared, "s2vs_att.npz"))
    drop = lambda k: k.startswith(("in/batch_q", "in/batch_t")) and not k.endswith("_mask") \
        or k.startswith("out64/index/") or k == "out/index/d1"
    np.savez_compressed(os.path.join(HERE, "s2vs_att.npz"), **{k: z[k] for k in z.files if not drop(k)})
    z = np.load(os.path.join(shared, "s2vs_losses.npz"))
    np.savez_compressed(os.path.join(HERE, "s2vs_losses.npz"), **{k: z[k] for k in z.files})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="checkout of the official S2VS code")
    parser.add_argument("--shared", help="the project's shared/reference/s2vs folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, ctor in CASES.items():
        net, _, _ = make_case(args.official, name, ctor)
        if name == "attnorm_bn":
            write_official_checkpoint(net, name)
    if args.shared:
        trim_shared(args.shared)


if __name__ == "__main__":
    main()
