"""S2VS augmentations (dns_jax.augmentation): each op on its own, the views, the batch targets,
and the config. Clips are tiny (compile time dominates on CPU); frames whose pixels encode
their index make temporal edits readable."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import augmentation as aug
from dns_jax.augmentation import geometric, photometric, randaugment, temporal
from dns_jax.augmentation.overlay_bank import OverlayBank

KEYS = jax.random.split(jax.random.key(0), 256)


def indexed_clip(num_frames, height=4, width=4):
    """[T, H, W, 3] uint8 where every pixel of frame t is t."""
    return jnp.broadcast_to(jnp.arange(num_frames, dtype=jnp.uint8)[:, None, None, None],
                            (num_frames, height, width, 3))


def frame_ids(frames):
    return np.asarray(frames[:, 0, 0, 0]).tolist()


def over_keys(fn, n=len(KEYS)):
    """fn(key) for the first n keys, jitted and vmapped once, as numpy."""
    return jax.device_get(jax.jit(jax.vmap(fn))(KEYS[:n]))


def random_clip(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape), jnp.uint8)


# -- config -------------------------------------------------------------------------------------

def test_default_config_is_the_published_recipe():
    c = aug.validate_augmentation_config(aug.default_augmentation_config())
    assert (c.frame_size, c.window_size, c.source_frames) == (224, 32, 64)
    assert c.weak.crop_scale == (0.8, 1.0) and c.strong.crop_scale == (0.5, 1.0)
    assert (c.strong.randaugment.num_ops, c.strong.randaugment.magnitude) == (2, 9)
    assert c.strong.frame.p_text == c.strong.frame.p_emoji == 0.3 and c.strong.frame.p_blur == 0.5
    assert c.strong.frame.overlay_size == (0.2, 0.5) and c.strong.frame.overlay_opacity == (0.7, 1.0)
    t = c.strong.temporal
    assert (t.p_shuffle_dropout, t.p_fast_forward, t.p_slow_motion, t.p_reverse, t.p_pause) == (0.5, .1, .1, .1, .1)
    assert t.fast_forward == (2, 3) and t.slow_motion == (2, 2)
    assert (c.strong.video_in_video.p, c.strong.video_in_video.lam) == (0.3, (0.3, 0.7))
    assert set(c.strong.enabled) == {"global", "frame", "temporal", "video_in_video"}


def test_partial_dict_config_keeps_defaults_and_lists_become_tuples():
    c = aug.validate_augmentation_config({"window_size": 8, "strong": {"enabled": ["temporal"]}})
    assert c.window_size == 8 and c.strong.enabled == ("temporal",) and c.frame_size == 224
    c = aug.validate_augmentation_config({"strong": {"enabled": "temporal, frame"}})
    assert c.strong.enabled == ("temporal", "frame")


@pytest.mark.parametrize("config, named", [
    ({"strong": {"temporal": {"p_revers": 0.1}}}, "strong.temporal.p_revers"),
    ({"weak_view": {}}, "weak_view"),
    ({"strong": {"enabled": ("global", "colour")}}, "colour"),
    ({"strong": {"enabled": "GT,temporal"}}, "unknown name 'GT' in strong.enabled"),
    ({"frame_size": 224.0}, "frame_size"),
    ({"strong": {"randaugment": {"ops": ("rotate", "invert")}}}, "invert"),
    ({"labels": "fuzzy"}, "fuzzy"),
    ({"strong": {"video_in_video": {"p": 1.5}}}, "strong.video_in_video.p"),
    ({"strong": {"temporal": {"p_reverse": 0.6}}}, "sum"),
    ({"strong": {"crop_scale": (0.9, 0.5)}}, "strong.crop_scale"),
    ({"strong": {"temporal": {"segment_frames": (0, 4)}}}, "strong.temporal.segment_frames"),
    ({"strong": {"randaugment": {"magnitude": 31}}}, "magnitude"),
])
def test_bad_config_is_a_clear_error(config, named):
    with pytest.raises(aug.AugmentationConfigError, match=named):
        aug.validate_augmentation_config(config)


def test_views_reject_unknown_names():
    with pytest.raises(aug.AugmentationConfigError, match="sepia"):
        aug.weak_view(KEYS[0], indexed_clip(4), {"strong": {"randaugment": {"ops": ("sepia",)}}})


# -- spatial ------------------------------------------------------------------------------------

def test_crop_box_scale_and_ratio_ranges():
    boxes = over_keys(lambda k: aug.crop_box(k, 60, 80, (0.5, 1.0), (3 / 4, 4 / 3)))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 80).all()
    area = h * w / (60 * 80)
    assert area.min() > 0.5 - 0.03 and area.max() <= 1.0          # rounding of the sides only
    assert area.min() < 0.6 and area.max() > 0.9                  # the range is really covered
    aspect = w / h
    assert aspect.min() > 0.75 - 0.05 and aspect.max() < 4 / 3 + 0.05
    assert len({tuple(b) for b in boxes}) > 200


def test_crop_box_falls_back_to_a_central_crop():
    # no 10-attempt crop of a 1-pixel-high strip has an aspect ratio in [3/4, 4/3]
    box = np.asarray(jax.jit(lambda k: aug.crop_box(k, 1, 40, (0.5, 1.0), (3 / 4, 4 / 3)))(KEYS[0]))
    assert box.tolist() == [0, 19, 1, 1]   # torchvision: h = 1, w = round(1 * 4/3) = 1, centred


def test_resized_crop_takes_the_box():
    cols = jnp.broadcast_to(jnp.arange(32, dtype=jnp.uint8)[None, None, :, None], (2, 16, 32, 3))
    crop = jax.jit(aug.resized_crop, static_argnums=2)
    same = crop(cols, jnp.array([0, 8, 16, 16]), 16)              # no resize: exact columns 8..23
    np.testing.assert_array_equal(np.asarray(same[0, 5, :, 0]), np.arange(8, 24))
    half = np.asarray(crop(cols, jnp.array([0, 0, 16, 32]), 16))[0, 0, :, 0]
    np.testing.assert_allclose(half, np.arange(16) * 2 + 0.5, atol=0.51)   # 2:1 average of pairs


def test_flip_mirrors_and_random_flip_is_all_or_nothing():
    clip = random_clip((3, 5, 7, 3))
    np.testing.assert_array_equal(np.asarray(aug.hflip(clip)), np.asarray(clip)[:, :, ::-1])
    outs = over_keys(lambda k: aug.random_hflip(k, clip, 0.5), 16)
    flipped = [np.array_equal(o, np.asarray(clip)[:, :, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, clip) for f, o in zip(flipped, outs))
    assert 0 < sum(flipped) < 16


# -- geometric and photometric ops --------------------------------------------------------------

def test_rotate_is_counter_clockwise_about_the_centre():
    img = random_clip((1, 5, 5, 3))
    np.testing.assert_array_equal(np.asarray(jax.jit(geometric.rotate)(img, 90.0)), np.rot90(np.asarray(img), 1, axes=(1, 2)))


def test_translate_moves_content_and_fills_black():
    img = random_clip((1, 6, 8, 3), seed=1)
    move = jax.jit(geometric.translate)
    out = np.asarray(move(img, 3.0, 0.0))
    np.testing.assert_array_equal(out[:, :, 3:], np.asarray(img)[:, :, :-3])
    assert (out[:, :, :3] == 0).all()
    down = np.asarray(move(img, 0.0, 2.0))
    np.testing.assert_array_equal(down[:, 2:], np.asarray(img)[:, :-2])


def test_shear_x_about_the_top_left_corner():
    img = random_clip((1, 8, 8, 3), seed=2)
    out = np.asarray(jax.jit(geometric.shear_x)(img, 0.5))
    # pixel-centre coordinates from the top-left corner: x_in = x_out + 0.5 * y
    for r in range(8):
        for c in range(8):
            src = int(np.round(c + 0.5 * (r + 0.5)))
            want = np.asarray(img)[0, r, src] if src < 8 else np.zeros(3)
            np.testing.assert_array_equal(out[0, r, c], want)


def test_colour_ops_on_known_values():
    px = lambda *v: jnp.asarray(np.array(v, np.uint8).reshape(1, 1, -1, 3))
    np.testing.assert_array_equal(photometric.brightness(px(101, 200, 7), 0.5), px(50, 100, 3))
    np.testing.assert_array_equal(photometric.posterize(px(255, 3, 128), 7), px(254, 2, 128))
    np.testing.assert_array_equal(photometric.solarize(px(200, 100, 178), 178.5), px(55, 100, 178))
    grey = photometric.saturation(px(255, 0, 0), 0.0)
    np.testing.assert_array_equal(grey, px(76, 76, 76))           # int(0.2989 * 255)
    img = random_clip((2, 6, 6, 3), seed=3)
    np.testing.assert_array_equal(jax.jit(photometric.sharpness)(img, 1.0), img)
    flat = np.asarray(jax.jit(photometric.contrast)(img, 0.0))
    assert (flat == flat[:, :1, :1]).all()                         # each frame one grey level


def test_autocontrast_and_equalize():
    img = jnp.asarray(np.linspace(50, 150, 48).reshape(1, 4, 4, 3).astype(np.uint8))
    out = np.asarray(photometric.autocontrast(img))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    two = np.where(np.arange(1024).reshape(32, 32) < 512, 100, 200).astype(np.uint8)
    equalize = jax.jit(photometric.equalize)
    eq = np.asarray(equalize(jnp.asarray(np.stack([two] * 3, -1)[None])))
    assert set(np.unique(eq).tolist()) == {0, 255}                  # two levels -> black and white
    uniform = (np.arange(1024) // 4).reshape(1, 32, 32, 1).repeat(3, -1).astype(np.uint8)
    np.testing.assert_array_equal(equalize(jnp.asarray(uniform)), uniform)


def test_gaussian_blur():
    blur = jax.jit(photometric.gaussian_blur, static_argnums=2)
    const = jnp.full((1, 15, 15, 3), 77, jnp.uint8)
    np.testing.assert_array_equal(blur(const, 2.0, 6), const)
    dot = jnp.zeros((1, 15, 15, 3), jnp.uint8).at[:, 7, 7].set(255)
    np.testing.assert_array_equal(blur(dot, 0.1, 6), dot)
    wide = np.asarray(blur(dot, 2.0, 6)).astype(float)
    assert wide[0, 7, 7, 0] < 20 and wide[0, 7, 9, 0] > 0 and abs(wide[..., 0].sum() - 255) < 30


def test_randaugment_magnitudes_at_9_of_31():
    m = randaugment.magnitudes(31, 9, 224, 224)
    assert m["shear_x"] == (pytest.approx(0.09), True) and m["rotate"] == (pytest.approx(9.0), True)
    assert m["translate_x"][0] == pytest.approx(150 / 331 * 224 * 0.3)
    assert m["brightness"] == (pytest.approx(0.27), True) and m["posterize"] == (7.0, False)
    assert m["solarize"] == (pytest.approx(178.5), False)


def test_randaugment_draws_only_from_its_ops():
    img = random_clip((2, 8, 8, 3), seed=4)
    np.testing.assert_array_equal(aug.rand_augment(KEYS[0], img, 2, 9, ("identity",)), img)
    np.testing.assert_array_equal(aug.rand_augment(KEYS[1], img, 2, 9, ("posterize",)),
                                  photometric.posterize(img, 7))
    outs = {o.tobytes() for o in over_keys(lambda k: aug.rand_augment(k, img, 1, 9, ("brightness",)), 12)}
    want = {np.asarray(photometric.brightness(img, f)).tobytes() for f in (1.27, 0.73)}
    assert outs == want                                              # both signs, nothing else


# -- overlays -----------------------------------------------------------------------------------

def solid_bank(color=(255, 0, 0)):
    """One opaque square emoji, and one line of 10 characters 4 px wide each (10 px high)."""
    emoji = np.zeros((1, 8, 8, 4), np.uint8)
    emoji[..., :3], emoji[..., 3] = color, 255
    return OverlayBank(text_alpha=np.full((1, 10, 40), 255, np.uint8),
                       text_extent=np.arange(4, 41, 4, dtype=np.float32)[None],
                       text_size=np.asarray(10.0, np.float32), emoji=emoji)


def test_emoji_params_ranges():
    bank = solid_bank()
    p = over_keys(lambda k: aug.emoji_params(k, bank, (40, 60), (0.2, 0.5), (0.7, 1.0)))
    side = np.asarray(p.height)
    assert side.min() >= np.floor(0.2 * 40) and side.max() <= 0.5 * 40 and side.max() > 0.4 * 40
    assert (np.asarray(p.top) >= 0).all() and (np.asarray(p.top + p.height) <= 40).all()
    assert (np.asarray(p.left) >= 0).all() and (np.asarray(p.left + p.width) <= 60).all()
    op = np.asarray(p.opacity)
    assert op.min() >= 0.7 and op.max() <= 1.0 and op.max() - op.min() > 0.2


def test_emoji_blends_inside_its_box_at_its_opacity():
    bank = solid_bank()
    frame = jnp.zeros((40, 60, 3), jnp.uint8)
    def draw(k):
        p = aug.emoji_params(k, bank, (40, 60), (0.2, 0.5), (0.7, 1.0))
        return p, aug.apply_emoji(frame, bank, p)
    params, outs = over_keys(draw, 4)
    for i, out in enumerate(outs):
        p = jax.tree.map(lambda x: x[i], params)
        t, l, s = int(p.top), int(p.left), int(p.height)
        inside = np.zeros((40, 60), bool)
        inside[t:t + s, l:l + s] = True
        assert (out[~inside] == 0).all()
        np.testing.assert_array_equal(out[inside, 0], np.round(255 * float(p.opacity)))
        assert (out[inside, 1:] == 0).all()


def test_text_stays_in_frame_with_whole_characters():
    bank = solid_bank()
    p = over_keys(lambda k: aug.text_params(k, bank, (40, 60), (0.2, 0.5), (0.7, 1.0)))
    assert np.asarray(p.visible).all()
    font = np.asarray(p.height) / 1.0                       # bank line height = font size here
    assert font.min() >= np.floor(0.2 * 40) and font.max() <= 0.5 * 40
    chars = np.asarray(p.width) / (4 * font / 10)           # 4 px per character at size 10
    np.testing.assert_allclose(chars, np.round(chars), atol=1e-4)
    assert chars.min() >= 1 and len(set(np.round(chars).tolist())) > 3
    assert (np.asarray(p.left + p.width) <= 60 + 1e-4).all() and (np.asarray(p.top + p.height) <= 40 + 1e-4).all()
    frame = jnp.zeros((40, 60, 3), jnp.uint8)
    one = jax.tree.map(lambda x: x[0], p)
    out = np.asarray(jax.jit(aug.apply_text)(frame, bank, one))
    ys, xs = np.nonzero(out.max(-1))
    assert ys.min() >= np.floor(one.top) and ys.max() < one.top + one.height + 1
    assert xs.min() >= np.floor(one.left) and xs.max() < one.left + one.width
    col = np.asarray(one.color) * float(one.opacity)
    np.testing.assert_allclose(out[int(one.top) + 2, int(one.left) + 2], np.round(col), atol=1)


def test_overlay_bank_is_deterministic_and_drawn():
    a, b = aug.build_overlay_bank(seed=1, num_text=3, num_emoji=3), aug.build_overlay_bank(seed=1, num_text=3, num_emoji=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.text_alpha.max() == 255 and (np.diff(a.text_extent, axis=1) > 0).all()
    assert a.emoji.shape[1:] == (64, 64, 4) and 0 < (a.emoji[..., 3] > 0).mean() < 1
    c = aug.build_overlay_bank(seed=2, num_text=3, num_emoji=3)
    assert not np.array_equal(a.emoji, c.emoji)


# -- temporal -----------------------------------------------------------------------------------

def planned(plan):
    return np.asarray(plan.index)[:int(plan.length)].tolist()


def test_reverse_fast_forward_slow_motion():
    assert planned(aug.reverse_plan(6)) == [5, 4, 3, 2, 1, 0]
    assert planned(aug.fast_forward_plan(KEYS[0], 10, (3, 3))) == [0, 3, 6, 9]
    assert planned(aug.slow_motion_plan(KEYS[0], 4, (2, 2))) == [0, 0, 1, 1, 2, 2, 3, 3]
    factors = set(over_keys(lambda k: aug.fast_forward_plan(k, 12, (2, 3)).length, 20).tolist())
    assert factors == {6, 4}                                        # x2 and x3 both drawn


def test_pause_repeats_one_frame():
    plans = over_keys(lambda k: aug.pause_plan(k, 10, (0, 7)), 20)
    for i in range(20):
        seq = planned(jax.tree.map(lambda x: x[i], plans))
        assert sorted(set(seq)) == list(range(10)) and seq == sorted(seq)
        extra = len(seq) - 10
        assert 0 <= extra <= 7
        repeated = [v for v in set(seq) if seq.count(v) > 1]
        assert len(repeated) == (1 if extra else 0) and (not repeated or repeated[0] <= 8)


def segments_of(seq, num_frames, seg):
    """seq is a permutation of the first num_frames // seg aligned segments of length seg."""
    chunks = [seq[i:i + seg] for i in range(0, len(seq), seg)]
    return (sorted(seq) == list(range(num_frames // seg * seg))   # the tail T mod L is discarded
            and all(c == list(range(c[0], c[0] + seg)) and c[0] % seg == 0 for c in chunks))


def test_shuffle_permutes_whole_segments():
    shuffled = 0
    plans = over_keys(lambda k: aug.shuffle_dropout_plan(k, 24, (4, 6), 1.0, 0.0, 0.5, 0.5), 20)
    for i in range(20):
        plan = jax.tree.map(lambda x: x[i], plans)
        seq = planned(plan)
        assert (np.asarray(plan.fill) == temporal.KEEP).all()
        assert any(segments_of(seq, 24, L) for L in (4, 5, 6))
        shuffled += seq != sorted(seq)
    assert shuffled > 15


def test_dropout_removes_or_blanks_whole_segments():
    removed = replaced = 0
    clip = indexed_clip(24, 3, 3) + 1                               # no frame is black
    def plan_and_frames(k):
        plan = aug.shuffle_dropout_plan(k, 24, (4, 4), 0.0, 0.3, 0.5, 0.5)
        return plan, aug.gather_frames(k, clip, plan)
    plans, gathered = over_keys(plan_and_frames, 40)
    for i in range(40):
        plan, frames = jax.tree.map(lambda x: x[i], plans), gathered[i]
        seq, fill = planned(plan), np.asarray(plan.fill)[:int(plan.length)]
        assert seq == sorted(seq) and len(seq) % 4 == 0
        removed += len(seq) < 24
        for start in range(0, len(seq), 4):                        # fills cover whole segments
            assert len(set((fill[start:start + 4] != 0).tolist())) == 1
        if (fill != 0).any():
            replaced += 1
            for i in np.nonzero(fill == temporal.BLACK)[0]:
                assert (frames[i] == 0).all()
            for i in np.nonzero(fill == temporal.NOISE)[0]:
                assert frames[i].std() > 20
            for i in np.nonzero(fill == 0)[0]:
                assert (frames[i] == seq[i] + 1).all()
    assert removed > 3 and replaced > 3


def test_dropout_of_every_segment_is_not_applied():
    # official quirk: marks (1 removed, 2 blanked) must sum below the segment count
    plans = over_keys(lambda k: aug.shuffle_dropout_plan(k, 16, (4, 4), 0.0, 1.0, 0.0, 0.5), 4)
    assert (plans.index == np.arange(16)).all() and (plans.fill == 0).all() and (plans.length == 16).all()


def test_window_tiles_short_clips_and_keeps_length():
    short = over_keys(lambda k: aug.window_plan(k, aug.identity_plan(5), 8), 30)
    assert (short.length == 8).all()
    for seq in short.index.tolist():
        assert all((b - a) % 5 == 1 for a, b in zip(seq, seq[1:]))
    assert set(short.index[:, 0].tolist()) == {0, 1}      # doubled to 10 frames, offset < 10 - 8
    long = over_keys(lambda k: aug.window_plan(k, aug.identity_plan(16), 8), 80)
    assert set(long.index[:, 0].tolist()) == set(range(8))   # official randint(16 - 8): 0..7


def only(**probs):
    """The temporal config with every edit probability 0 except `probs`."""
    edits = ("p_shuffle_dropout", "p_fast_forward", "p_slow_motion", "p_reverse", "p_pause")
    given = dict(dict.fromkeys(edits, 0.0), **probs)
    return aug.validate_augmentation_config({"strong": {"temporal": given}}).strong.temporal


def test_random_temporal_edit_follows_its_probabilities():
    plans = over_keys(lambda k: aug.random_temporal_edit(k, 6, only(p_reverse=0.4, p_slow_motion=0.3)), 32)
    kinds = []
    for i in range(32):
        seq = planned(jax.tree.map(lambda x: x[i], plans))
        kinds.append({(5, 4, 3, 2, 1, 0): "reverse", (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5): "slow",
                      (0, 1, 2, 3, 4, 5): "none"}[tuple(seq)])
    assert set(kinds) == {"reverse", "slow", "none"}


# -- video-in-video and targets ----------------------------------------------------------------

def test_viv_params_and_pasting():
    params = jax.jit(aug.viv_params, static_argnums=(1, 2, 3, 4, 5))
    p = params(KEYS[0], 6, 20, 30, 1.0, (0.3, 0.7))
    host, lam, box = np.asarray(p.host), np.asarray(p.lam), np.asarray(p.box)
    assert np.asarray(p.apply).all() and (host != np.arange(6)).all()
    assert lam.min() >= 0.3 and lam.max() <= 0.7
    assert (box[:, :2] >= 0).all() and (box[:, 0] + box[:, 2] <= 20).all() and (box[:, 1] + box[:, 3] <= 30).all()
    # unclipped boxes have sides int(side * sqrt(1 - lambda)) rounded down to even
    assert (box[:, 2] <= np.floor(20 * np.sqrt(1 - lam))).all()
    videos = jnp.asarray((10 * (np.arange(6) + 1)).astype(np.uint8)[:, None, None, None, None] * np.ones((6, 2, 20, 30, 3), np.uint8))
    mixed = np.asarray(jax.jit(aug.apply_viv)(videos, p))
    for i in range(6):
        t, l, h, w = box[i]
        inside = np.zeros((20, 30), bool)
        inside[t:t + h, l:l + w] = True
        assert (mixed[i][:, inside] == 10 * (i + 1)).all()           # the donor, shrunk
        assert (mixed[i][:, ~inside] == 10 * (host[i] + 1)).all()    # the host around it
    none = params(KEYS[0], 6, 20, 30, 0.0, (0.3, 0.7))
    np.testing.assert_array_equal(jax.jit(aug.apply_viv)(videos, none), videos)
    assert not np.asarray(params(KEYS[0], 1, 20, 30, 1.0, (0.3, 0.7)).apply).any()


def test_viv_matrix_places_lambda_at_donor_host():
    p = aug.VivParams(apply=jnp.array([True, False, True]), host=jnp.array([1, 2, 1]),
                      lam=jnp.array([0.4, 0.9, 0.6]), box=jnp.zeros((3, 4), jnp.int32))
    np.testing.assert_allclose(aug.viv_matrix(p), [[1, .4, 0], [0, 1, 0], [0, .6, 1]])


def test_similarity_targets_binary_and_soft():
    viv = jnp.array([[1, .4, 0], [0, 1, 0], [0, 0, 1]], jnp.float32)   # strong 0 = video 0 inside video 1
    w0, w1, w2, s0, s1, s2 = range(6)
    binary = np.asarray(aug.similarity_targets(viv, "binary"))
    want = np.eye(6)
    for a, b in [(w0, s0), (w1, s1), (w2, s2), (s0, w1), (s0, s1)]:
        want[a, b] = want[b, a] = 1
    np.testing.assert_array_equal(binary, want)
    soft = np.asarray(aug.similarity_targets(viv, "soft"))
    want_soft = want.copy()
    for a, b in [(s0, w1), (s0, s1)]:
        want_soft[a, b] = want_soft[b, a] = 0.4
    np.testing.assert_allclose(soft, want_soft, rtol=1e-6)
    with pytest.raises(ValueError, match="fuzzy"):
        aug.similarity_targets(viv, "fuzzy")


# -- views and batch (jitted) -------------------------------------------------------------------

SMALL = {"frame_size": 16, "window_size": 6}


def test_weak_view_is_a_window_crop_and_flip():
    weak = jax.jit(functools.partial(aug.weak_view, cfg=SMALL))
    clip = indexed_clip(12, 20, 24)
    out = weak(KEYS[0], clip)
    assert out.shape == (6, 16, 16, 3) and out.dtype == jnp.uint8
    ids = frame_ids(out)
    assert ids == list(range(ids[0], ids[0] + 6)) and 0 <= ids[0] < 6
    assert (np.asarray(out) == np.asarray(ids)[:, None, None, None]).all()
    np.testing.assert_array_equal(weak(KEYS[0], clip), out)
    other = random_clip((12, 20, 24, 3))
    assert not np.array_equal(weak(KEYS[1], other), weak(KEYS[2], other))


def test_strong_view_needs_a_bank_for_overlays():
    with pytest.raises(ValueError, match="overlay bank"):
        aug.strong_view(KEYS[0], indexed_clip(4), SMALL)


@pytest.fixture(scope="module")
def batches():
    """The full recipe (video-in-video always on) at 16 px / 6 frames, jitted once, run on
    three keys: (key 0, key 0 again, key 1)."""
    bank = aug.build_overlay_bank(seed=0, num_text=4, num_emoji=4)
    cfg = dict(SMALL, strong={"video_in_video": {"p": 1.0}})
    run = jax.jit(functools.partial(aug.augment_batch, cfg=cfg))
    videos = jnp.stack([random_clip((12, 20, 24, 3), seed=b) for b in range(3)])
    return [jax.device_get(run(k, videos, bank=bank)) for k in (KEYS[3], KEYS[3], KEYS[4])]


def test_augment_batch_shapes_and_determinism(batches):
    (weak, strong, labels), again, other = batches
    assert weak.shape == strong.shape == (3, 6, 16, 16, 3) and labels.shape == (6, 6)
    assert weak.dtype == strong.dtype == np.uint8 and labels.dtype == np.float32
    for x, y in zip(batches[0], again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(weak, other[0]) and not np.array_equal(strong, other[1])


def test_augment_batch_labels(batches):
    for _, _, labels in batches:
        np.testing.assert_array_equal(labels, labels.T)
        assert (np.diag(labels) == 1).all() and all(labels[i, 3 + i] == 1 for i in range(3))
        assert ((labels == 0) | (labels == 1)).all()
        # every strong view was mixed into another video: it matches that video's weak view too
        assert all(labels[3 + i, :3].sum() == 2 for i in range(3))
