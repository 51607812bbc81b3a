"""Access to the official reference fixtures in tests/data/reference (copied from shared/reference).

Large weights are not stored in the fixtures; they are rebuilt with the numpy recipe the fixtures'
README documents, so `state_dict(name)` returns the full official state dict.
"""
import json
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "reference"


def recipe_array(seed, i, shape, std):
    """The fixtures' recipe: uniform noise with the given std, seeded by (seed, i)."""
    u = np.random.default_rng([seed, i]).random(tuple(shape))
    return ((2 * u - 1) * np.sqrt(3) * std).astype(np.float32)


class Reference:
    """One reference file: `.state` (full official state dict), `.inp`, `.out`, `.out64`, `.meta`."""

    def __init__(self, name):
        self.name = name
        z = np.load(DATA / f"{name}.npz")
        self.meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        recipe = json.loads(str(z["recipe"])) if "recipe" in z.files else {}
        self.state, self.inp, self.out, self.out64 = {}, {}, {}, {}
        for k in z.files:
            for prefix, d in (("state/", self.state), ("in/", self.inp), ("out/", self.out), ("out64/", self.out64)):
                if k.startswith(prefix):
                    d[k[len(prefix):]] = z[k]
        seed = self.meta.get("weight_seed", 20240)
        for key, r in recipe.items():
            self.state[key] = recipe_array(seed, r["i"], r["shape"], r["std"])
        self.raw = z

    def videos(self, prefix):
        """The input videos q0, q1, ... (prefix 'q') or d0, d1, d2 (prefix 'd') in order."""
        keys = sorted(k for k in self.inp if k[0] == prefix and k[1:].isdigit())
        return [self.inp[k] for k in keys]


def pad_batch(videos):
    """Official collate: zero-pad at the end of time to the longest video. -> ([B,T,R,D], mask [B,T])."""
    t = max(v.shape[0] for v in videos)
    x = np.zeros((len(videos), t) + videos[0].shape[1:], np.float32)
    m = np.zeros((len(videos), t), np.float32)
    for i, v in enumerate(videos):
        x[i, : v.shape[0]] = v
        m[i, : v.shape[0]] = 1
    return x, m


def assert_close(actual, expected, atol=1e-5, name=""):
    """float32 parity: absolute tolerance relative to the scale of the expected tensor."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    err = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert err <= atol * scale, f"{name}: max abs diff {err:.3g} > {atol * scale:.3g}"
