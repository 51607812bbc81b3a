"""Self-supervised S2VS training (dns_jax/training/s2vs, configs/s2vs.py, dns_jax/app/s2vs_teacher.py):
the loss combination against a hand computation, targets, schedule, the step (both modes) and its
determinism, what the network learns, a short run on real clips with resume, and bad input."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dns_jax import augmentation, pretrained
from dns_jax.config_files import load_config
from dns_jax.features.backbone import ResNet
from dns_jax.features.extractor import FeatureExtractor
from dns_jax.training import ConfigError, train, validate
from dns_jax.training.s2vs import (
    S2VSDataError,
    default_s2vs_config,
    lr_schedule,
    make_optimizer,
    make_s2vs_train_step,
    source_targets,
    ssl_loss,
    train_s2vs,
    validate_s2vs_config,
)
from dns_jax.training.s2vs.config import augmentation_config, model_config
from dns_jax.training.s2vs.data import (
    EpochSampler,
    check_collection,
    tile,
    window_index,
)
from dns_jax.training.s2vs.evaluate import (
    collection_map,
    family_ground_truth,
    read_features,
)
from dns_jax.training.step import init_state, make_mesh

D = 16          # feature dims of the small networks here
RECIPE = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "s2vs.py")


# ---------------------------------------------------------------------------------------------
# the objective

def _hand_loss(sim, labels, reg, t, lam, r, eps):
    """The official train loop's loss written out with plain numpy (exp, not log-sum-exp)."""
    n = sim.shape[0]
    e = np.exp(sim / t)
    neg = labels == 0
    pos = labels * (1 - np.eye(n))
    infonce = 0.0
    for i in range(n):
        denominator = e[i] + (e[i] * neg[i]).sum() + 1e-6
        infonce += (-np.log(e[i] / denominator) * pos[i]).sum() / pos[i].sum()
    infonce /= n
    hardest = np.where(neg, sim, -100.0).max(axis=1)
    hardneg = -np.log(np.maximum(1 - hardest, eps)).mean()
    self_sim = -np.log(np.maximum(np.diag(sim), eps)).mean()
    return infonce + lam * (hardneg + self_sim) + r * reg, infonce, hardneg, self_sim


def test_ssl_loss_combines_the_terms_as_the_official_loop():
    rng = np.random.default_rng(0)
    sim = rng.uniform(0.05, 0.95, (6, 6))
    np.fill_diagonal(sim, rng.uniform(0.6, 1.0, 6))
    viv = np.eye(3)
    viv[0, 2] = 0.4                                   # strong view 0 mixed into video 2
    labels = np.asarray(augmentation.similarity_targets(jnp.asarray(viv, jnp.float32)))
    want, infonce, hardneg, self_sim = _hand_loss(sim, labels, 2.5, 0.1, 3.0, 1.0, 1e-3)
    loss, m = ssl_loss(jnp.asarray(sim, jnp.float32), jnp.asarray(labels), jnp.float32(2.5), temperature=0.1,
                       lambda_parameter=3.0, r_parameter=1.0, eps=1e-3)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose([float(m["infonce_loss"]), float(m["hardneg_loss"]), float(m["self_loss"])],
                               [infonce, hardneg, self_sim], rtol=1e-5)
    assert float(m["sshn_loss"]) == pytest.approx(hardneg + self_sim, rel=1e-6)
    # each weight enters as written: lambda scales only the SSHN terms, r only the regulariser
    loss0, _ = ssl_loss(jnp.asarray(sim, jnp.float32), jnp.asarray(labels), jnp.float32(2.5), temperature=0.1,
                        lambda_parameter=0.0, r_parameter=0.0)
    assert float(loss0) == pytest.approx(infonce, rel=1e-5)


def test_source_targets_equal_the_batch_targets_and_see_hosts_outside_the_batch():
    viv = np.eye(4, dtype=np.float32)
    viv[0, 2], viv[3, 2], viv[1, 0] = 0.4, 0.6, 0.5
    host = np.asarray([2, 0, -1, 2], np.int32)
    lam = np.asarray([0.4, 0.5, 0.0, 0.6], np.float32)
    for mode in ("binary", "soft"):
        want = augmentation.similarity_targets(jnp.asarray(viv), mode)
        got = source_targets(jnp.arange(4, dtype=jnp.int32), jnp.asarray(host), jnp.asarray(lam), mode)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    # videos 10 and 11 both mixed into video 99, which is not in the batch: their strong views match
    got = np.asarray(source_targets(jnp.asarray([10, 11, 12]), jnp.asarray([99, 99, -1]),
                                    jnp.asarray([0.5, 0.3, 0.0]), "soft"))
    assert got[3, 4] == pytest.approx(0.15) and got[0, 1] == 0 and got[3, 5] == 0
    assert np.allclose(np.diag(got), 1) and got[0, 3] == 1


def test_schedule_is_the_official_warmup_and_cosine():
    f = lr_schedule(5e-5, 30000, 1000, 0.01, 0.1)
    assert float(f(0)) == pytest.approx(5e-7)
    assert float(f(500)) == pytest.approx(5e-7 + 500 * (5e-5 - 5e-7) / 1000)
    lr_min = 5e-6
    for t in (1000, 15000, 29999):
        assert float(f(t)) == pytest.approx(lr_min + 0.5 * (5e-5 - lr_min) * (1 + np.cos(np.pi * t / 30000)), rel=1e-5)
    assert float(f(30000)) == pytest.approx(lr_min) and float(f(40000)) == pytest.approx(lr_min)


def test_optimizer_is_adamw_with_decoupled_weight_decay():
    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, num_train_steps=10, warmup_steps=0,
                                         warmup_lr_init=0.01, final_lr=0.1, weight_decay=0.5))
    tx = make_optimizer(cfg)
    params = {"w": jnp.asarray([2.0, -1.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)   # no gradient: decay only
    np.testing.assert_allclose(np.asarray(updates["w"]), -1e-2 * 0.5 * np.asarray([2.0, -1.0]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# recipes and bad input

def test_recipes_validate_and_write_out_the_library_augmentations():
    for arg in (None, "local", "teacher"):
        cfg = validate(load_config(RECIPE, arg))
        assert cfg.network == "s2vs"
    published = load_config(RECIPE)
    assert (published.batch_size, published.num_train_steps, published.learning_rate, published.weight_decay,
            published.warmup_steps, published.temperature, published.lambda_parameter, published.r_parameter,
            published.augmentation.window_size, published.data.fps) == (64, 30000, 5e-5, 0.01, 1000, 0.03, 3.0,
                                                                       1.0, 32, 1.0)
    assert published.augmentation.to_dict() == augmentation.default_augmentation_config().to_dict()
    assert (published.init, load_config(RECIPE, "teacher").init) == ("random", "visil_f")


@pytest.mark.parametrize("change, message", [
    ({"bacth_size": 8}, "unknown config key.*'bacth_size' \\(did you mean 'batch_size'\\?\\)"),
    ({"augmentation": {"strong": {"enabled": ("global", "warp")}}}, "augmentation: unknown name 'warp'"),
    ({"augmentation": {"strong": {"randaugment": {"ops": ("rotate", "invert")}}}}, "unknown name 'invert'"),
    ({"augmentation": {"strong": {"temporal": {"p_revers": 0.1}}}}, "did you mean 'augmentation.strong.temporal.p_reverse'"),
    ({"mode": "fast"}, "mode must be one of pixels, feature_bank"),
    ({"extractor": {"dims": 128}}, "extractor.dims \\(128\\) must equal model.dims \\(512\\)"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2"),
    ({"warmup_steps": 30000}, "warmup_steps must be in"),
    ({"data": {"short_videos": "skip"}}, "data.short_videos must be one of error, loop"),
    ({"init": "identity"}, "init must be one of random, visil_f"),
    ({"init": "visil_f", "model": {"attention_norm": True}}, "init='visil_f' needs model.indexing='att' without"),
    ({"init_noise": -0.5}, "init_noise must be >= 0"),
])
def test_config_errors_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_s2vs_config({"network": "s2vs", **change})


def test_train_command_names_a_bad_s2vs_config(tmp_path, capsys):
    from dns_jax.cli import run_command
    code = run_command("train", ["--config", RECIPE + ":local", "--workdir", str(tmp_path / "w"),
                                 "--config.augmentation.strong.enabled=('global', 'warp')"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown name 'warp'" in err
    assert not (tmp_path / "w").exists()                  # refused before anything is written


def test_collections_that_cannot_be_trained_on_are_named():
    with pytest.raises(S2VSDataError, match="only 3 usable videos, fewer than the batch of 8"):
        check_collection({"a": 40, "b": 40, "c": 40}, 8, 32, "error", 1.0)
    lengths = {"a": 40, "b": 12, "c": 40, "d": 3}
    with pytest.raises(S2VSDataError, match=r"2 videos are shorter than the 32-frame window.*d \(3 frames\), b \(12"):
        check_collection(lengths, 2, 32, "error", 1.0)
    check_collection(lengths, 2, 32, "loop", 1.0)          # looped instead


def test_plain_features_split_shared_batches_back_into_videos():
    from dns_jax.training.s2vs.extractor import plain_features

    class Frames:                        # frame i of video v: value v + i
        def read(self, vid, index):
            return (int(vid) + np.asarray(index))[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)

    class Extractor:                     # batches of 4 frames -> the frame values
        def stream(self, frames):
            buf = []
            for f in frames:
                buf.append(int(f[0, 0, 0]))
                if len(buf) == 4:
                    yield np.asarray(buf)
                    buf = []
            if buf:
                yield np.asarray(buf)

    out = dict(plain_features(Extractor(), Frames(), ["1", "20", "40"], [3, 6, 2], 8))
    assert {k: v.tolist() for k, v in out.items()} == {"1": [1, 2, 3], "20": list(range(20, 26)), "40": [40, 41]}


def _write_video(path, n=20, rate=10):
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.height, s.width, s.pix_fmt = 64, 80, "yuv420p"
        for i in range(n):
            img = np.zeros((64, 80, 3), np.uint8)
            img[:, : 8 * (i % 10) + 8] = 40 + 8 * i
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def test_frame_store_raw_and_jpeg(tmp_path):
    from dns_jax.training.s2vs import FrameStore, FrameStoreError, build_frame_store
    videos = [("a", _write_video(tmp_path / "a.mp4")), ("b", _write_video(tmp_path / "b.mp4", n=10))]
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    videos.append(("bad", str(tmp_path / "bad.mp4")))
    frames = {}
    for quality in (0, 90):
        path = str(tmp_path / f"frames{quality}.hdf5")
        summary = build_frame_store(videos, path, fps=5, size=48, jpeg_quality=quality, log=lambda m: None)
        assert summary.lengths == {"a": 10, "b": 5} and [f[0] for f in summary.failed] == ["bad"]
        again = build_frame_store(videos[:2], path, fps=5, size=48, jpeg_quality=quality, log=lambda m: None)
        assert again.decoded == 0 and again.lengths == summary.lengths        # resumed: nothing decoded
        store = FrameStore(path)
        frames[quality] = store.read("a", np.asarray([3, 0, 3]))
        store.close()
        with pytest.raises(FrameStoreError, match="other settings"):
            build_frame_store(videos[:1], path, fps=1, size=48, jpeg_quality=quality)
    assert frames[0].shape == (3, 48, 48, 3) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(frames[0][0], frames[0][2])
    assert np.abs(frames[0].astype(int) - frames[90].astype(int)).mean() < 3


def test_windows_and_epochs():
    rng = np.random.default_rng(0)
    starts = {int(window_index(rng, 10, 4)[0]) for _ in range(200)}
    assert starts == set(range(6))                         # official randint(len - window)
    assert list(window_index(rng, 3, 8)) == [0, 1, 2, 0, 1, 2, 0, 1]
    assert list(tile(np.arange(2), 5)) == [0, 1, 0, 1, 0]
    s = EpochSampler(10, 4, seed=1)
    assert s.steps_per_epoch == 2
    first = np.concatenate([s.batch(0), s.batch(1)])
    assert len(set(first.tolist())) == 8                   # distinct videos within an epoch
    assert list(EpochSampler(10, 4, seed=1).batch(3)) == list(s.batch(3))   # a pure function of the step


# ---------------------------------------------------------------------------------------------
# the step

def _small_config(**changes):
    c = default_s2vs_config("local")
    c.model.dims = c.extractor.dims = D
    c.batch_size, c.num_train_steps, c.warmup_steps, c.learning_rate = 4, 50, 5, 1e-3
    for k, v in changes.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return validate_s2vs_config(c)


def _bank_batch(rng, b, w=4, r=4):
    def views():
        x = rng.normal(size=(b, w, r, D)).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    return {"weak": views(), "strong": views(), "video": np.arange(b, dtype=np.int32),
            "host": np.asarray([1] + [-1] * (b - 1), np.int32), "lam": np.asarray([0.5] + [0] * (b - 1), np.float32)}


def _setup(cfg, extractor=None, overlays=None):
    module = pretrained.build_module("s2vs", model_config(cfg))
    tx = make_optimizer(cfg)
    state = init_state(module, tx, jax.random.PRNGKey(0))
    step = make_s2vs_train_step(module, tx, make_mesh(), cfg, augmentation_config(cfg), extractor, overlays)
    return module, state, step


def test_feature_bank_step_runs_and_is_deterministic():
    cfg = _small_config()
    _, state, step = _setup(cfg)
    batch = _bank_batch(np.random.default_rng(0), 4)
    a, ma = step(state, batch, jax.random.PRNGKey(1), {})
    b, mb = step(state, batch, jax.random.PRNGKey(1), {})
    assert int(a.step) == 1 and np.isfinite(float(ma["loss"]))
    assert float(ma["loss"]) == float(mb["loss"])
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a.params, b.params)
    assert float(ma["positives_per_view"]) == pytest.approx(1.5)      # the other view; + video 1 for two rows
    assert float(ma["learning_rate"]) == pytest.approx(1e-3 * 0.01)   # warm-up starts at 1 %


@pytest.mark.slow
def test_pixel_step_augments_extracts_and_is_deterministic():
    """Clips -> views -> a (small, random) frozen ResNet + L3-iMAC + PCA -> S2VS, in one jitted step."""
    cfg = _small_config(**{"mode": "pixels", "augmentation.frame_size": 112, "augmentation.source_size": 112,
                           "augmentation.window_size": 4, "augmentation.source_frames": 6,
                           "extractor.batch_frames": 16})
    backbone = ResNet(stage_sizes=(1, 1, 1, 1), width=4)
    extractor = FeatureExtractor(backbone=backbone, normalizer="imagenet", pca_dims=D)
    frozen = extractor.init(jax.random.PRNGKey(3), jnp.zeros((1, 112, 112, 3), jnp.uint8))
    frozen["params"]["pca"]["DVt"] = jax.random.normal(jax.random.PRNGKey(4), (extractor.region_dims, D))
    overlays = augmentation.build_overlay_bank(seed=0, num_text=4, num_emoji=4)
    _, state, step = _setup(cfg, extractor, overlays)
    videos = np.random.default_rng(0).integers(0, 255, (4, 6, 112, 112, 3), dtype=np.uint8)
    a, ma = step(state, {"videos": videos}, jax.random.PRNGKey(1), frozen)
    b, mb = step(state, {"videos": videos}, jax.random.PRNGKey(1), frozen)
    c, mc = step(state, {"videos": videos}, jax.random.PRNGKey(2), frozen)
    assert np.isfinite(float(ma["loss"])) and float(ma["loss"]) == float(mb["loss"])
    assert float(mc["loss"]) != float(ma["loss"])           # another key: other views
    assert float(ma["grad_norm"]) > 0


def test_training_learns_views_of_videos_it_never_saw():
    """The step's objective does what it is for: after training on noisy views of random feature
    videos, a held-out video's weak view retrieves its strong view (at initialisation: chance)."""
    rng = np.random.default_rng(0)
    cfg = _small_config(batch_size=8, num_train_steps=40, learning_rate=2e-3)
    module, state, step = _setup(cfg)
    init_vars = jax.device_get(state.variables())

    def norm(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    def view(x):
        return norm(x + 0.25 * rng.normal(size=x.shape))

    train_videos, test_videos = norm(rng.normal(size=(64, 4, 4, D))), norm(rng.normal(size=(24, 4, 4, D)))
    losses = []
    for _ in range(cfg.num_train_steps):
        idx = rng.choice(len(train_videos), cfg.batch_size, replace=False)
        x = train_videos[idx]
        batch = {"weak": view(x), "strong": view(x), "video": idx.astype(np.int32),
                 "host": np.full(len(idx), -1, np.int32), "lam": np.zeros(len(idx), np.float32)}
        state, m = step(state, batch, jax.random.PRNGKey(1), {})
        losses.append(float(m["loss"]))
    feats = {f"w{i}": view(x) for i, x in enumerate(test_videos)}
    feats.update({f"s{i}": view(x) for i, x in enumerate(test_videos)})
    gt = {f"w{i}": [f"s{i}"] for i in range(len(test_videos))}
    before = collection_map("s2vs", module, init_vars, feats, gt)
    after = collection_map("s2vs", module, jax.device_get(state.variables()), feats, gt)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert after["mAP"] > before["mAP"] + 0.4 and after["mean_rank"] < before["mean_rank"]


# ---------------------------------------------------------------------------------------------
# a short run on real clips

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The demo collection of real clips (4 sources x 5 copies with hard edits, 10 distractors) at
    a small size, trained briefly from its own frames: offline backbone on 160-pixel views (4
    regions, half the cost of 224), PCA fitted on the clips, the feature bank."""
    from dns_jax.datasets.video_collection import make_collection
    root = tmp_path_factory.mktemp("s2vs")
    info = make_collection(str(root / "collection"), seed=0, width=128, min_seconds=4, max_seconds=5)
    cfg = default_s2vs_config("local")
    cfg.data.videos = str(info.video_dir)
    cfg.data.short_videos = "loop"
    cfg.model.dims = cfg.extractor.dims = 32
    cfg.augmentation.frame_size, cfg.augmentation.source_size, cfg.augmentation.source_frames = 160, 180, 4
    cfg.feature_bank.views, cfg.feature_bank.batch_size = 2, 8
    cfg.batch_size, cfg.num_train_steps, cfg.warmup_steps, cfg.learning_rate = 16, 200, 20, 5e-4
    cfg.log_every_steps, cfg.checkpoint_every_steps, cfg.progress_bar = 25, 100, False
    work = root / "work"
    result = train(cfg, str(work))
    return info, cfg, work, result


@pytest.mark.slow
def test_short_training_on_real_clips(real_run):
    """The SSL loss falls, and the trained network ranks each video's edited copies above the
    distractors better than at its initialisation (every member of a family as a query)."""
    info, cfg, work, result = real_run
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert {"infonce_loss", "sshn_loss", "regularization_loss", "clips_per_second"} <= set(result.history[-1])
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == cfg.num_train_steps
    feats = read_features(str(work / "features.hdf5"))
    assert set(feats) == set(info.ids) and next(iter(feats.values())).shape[1:] == (4, 32)
    gt = family_ground_truth(info.ground_truth)
    init = pretrained.init_network("s2vs", jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0), **cfg.model.to_dict())
    trained = pretrained.load("s2vs", str(work))
    before = collection_map("s2vs", init.module, init.variables, feats, gt)
    after = collection_map("s2vs", trained.module, trained.variables, feats, gt)
    assert after["mAP"] > before["mAP"] + 0.02, (before, after)
    assert after["mean_rank"] < before["mean_rank"], (before, after)
    assert after["margin"] > before["margin"] + 0.05, (before, after)


@pytest.mark.slow
def test_rerun_resumes_and_a_finished_run_returns(real_run):
    _, cfg, work, _ = real_run
    again = train_s2vs(cfg, str(work))                     # finished: nothing to do
    assert again.step == cfg.num_train_steps and not again.history
    more = ml_collections.ConfigDict(cfg.to_dict())
    more.num_train_steps, more.log_every_steps = cfg.num_train_steps + 10, 10
    longer = train_s2vs(more, str(work))                   # continues from the checkpoint
    assert longer.step == cfg.num_train_steps + 10 and longer.history[0]["step"] == cfg.num_train_steps + 10
    with pytest.raises(S2VSDataError, match="fewer than the batch of 64"):
        big = ml_collections.ConfigDict(cfg.to_dict())
        big.batch_size = 64
        train_s2vs(big, str(work.parent / "other"))


@pytest.mark.slow
def test_teacher_for_the_build(real_run, tmp_path):
    """train_s2vs_teacher: the build's call, with a recipe section; the result is a teacher."""
    from dns_jax.app.s2vs_teacher import train_s2vs_teacher
    info, cfg, work, _ = real_run
    videos = sorted((v, str(info.path(v))) for v in info.ids)
    out = tmp_path / "teacher"
    out.mkdir()
    for f in ("frames.hdf5", "pca.npz", "features.hdf5", "view_bank.hdf5"):   # reuse the decoded frames and views
        (out / f).write_bytes((work / f).read_bytes())
    recipe = {k: cfg[k].to_dict() if hasattr(cfg[k], "to_dict") else cfg[k]
              for k in ("model", "extractor", "augmentation", "feature_bank", "batch_size", "data")}
    recipe.update(num_train_steps=5, warmup_steps=1)
    messages = []
    path = train_s2vs_teacher(videos, str(work / "features.hdf5"), str(out), recipe=recipe, seed=cfg.seed,
                              progress=False, log=messages.append, pca=str(work / "pca.npz"))
    name, teacher = pretrained.load_teacher("s2vs:" + path)
    assert name == "s2vs" and teacher.dims == 32
    params = pretrained.load("s2vs", path).variables["params"]
    # the teacher recipe starts as ViSiL_f on frame blocks (init='visil_f'); 5 steps at 5e-5 barely move it
    np.testing.assert_allclose(params["visil_head"]["conv1"]["kernel"][1, 1, 0, :2], [4.0, -4.0], atol=1e-2)
    assert np.abs(params["attention"]["context_vector"]["kernel"]).max() < 1e-2
    assert any("final loss" in m for m in messages)
    with pytest.raises(ConfigError, match="unknown config key"):
        train_s2vs_teacher(videos, None, str(out), recipe={"num_steps": 5})
    pca = dict(np.load(work / "pca.npz"))
    pca["V"] = pca["V"][:, ::-1].copy()                    # another whitening than the build's
    np.savez(tmp_path / "other_pca.npz", **pca)
    with pytest.raises(ConfigError, match="does not reproduce the features"):
        train_s2vs_teacher(videos, str(work / "features.hdf5"), str(tmp_path / "t2"), recipe=recipe,
                           pca=str(tmp_path / "other_pca.npz"))


def test_the_fine_student_starts_as_its_teacher(tmp_path):
    """`fine.init='teacher'`: an S2VS teacher is the FG-Att student's network, so the build's fine
    student starts with its weights and scores pairs exactly as the teacher does; a student of
    ViSiL_f (no weights) starts as the network computing ViSiL_f on 4x4 frame blocks; an FG-Bin
    student keeps the random start."""
    from dns_jax import checkpoint
    from dns_jax.app.build import BuildOptions, fine_start_from_teacher
    from dns_jax.app.workdir import Workdir
    from tests.helpers import random_network

    teacher_dir = str(tmp_path / "teacher")
    checkpoint.save_network(teacher_dir, "s2vs", *random_network("s2vs", 3, dims=32))
    opts = BuildOptions(videos="v", workdir=str(tmp_path / "w"), recipe="build:demo", dims=32,
                        teacher=f"s2vs:{teacher_dir}")
    rc, wd, said = opts.config(), Workdir(str(tmp_path / "w")), []
    assert rc.fine.init == "teacher"
    start = fine_start_from_teacher(wd, rc, "fg_att_student", said.append)
    assert start and "starts as its s2vs teacher" in said[-1]
    student, teacher = pretrained.load("fg_att_student", start), pretrained.load("s2vs", teacher_dir)
    rng = np.random.default_rng(0)
    q, t = (rng.normal(size=(n, 9, 32)).astype(np.float32) for n in (6, 8))
    same = [float(np.asarray(net.calculate_video_similarity(net.index_video(q), net.index_video(t))).squeeze())
            for net in (student, teacher)]
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)
    assert jax.tree_util.tree_structure(student.variables) == jax.tree_util.tree_structure(teacher.variables)
    assert fine_start_from_teacher(wd, rc, "fg_bin_student", said.append) is None
    rc.teacher, rc.fine.init_noise = "visil_f", 0.0
    start = fine_start_from_teacher(wd, rc, "fg_att_student", said.append)
    assert start and "computing ViSiL_f" in said[-1]
    student = pretrained.load("fg_att_student", start)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)         # noqa: E731
    q, t = unit(q), unit(t)
    got = student.calculate_video_similarity(student.index_video(q), student.index_video(t))
    got = float(np.asarray(got).squeeze())
    sim = np.einsum("ard,bsd->abrs", q, t).max(3).mean(2)                   # ViSiL_f's frame-to-frame matrix
    blocks = lambda x: x[:4, :8].reshape(1, 4, 2, 4).max((1, 3))            # noqa: E731  (6 -> 1, 8 -> 2 rows)
    want = np.clip(blocks(np.maximum(sim, 0)) - blocks(np.maximum(-sim, 0)), -1, 1).max(1).mean()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert fine_start_from_teacher(wd, rc, "fg_bin_student", said.append) is None
