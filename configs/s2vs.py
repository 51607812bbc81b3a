"""S2VS: self-supervised training of the video similarity network (Kordopatis-Zilos et al.,
"Self-Supervised Video Similarity Learning", CVPR-W 2023).

The published recipe (gkordo/s2vs `train.py` defaults and `scripts/train_ssl.sh`): clips of
2 x 32 frames at 1 frame/s, a weak and a strong view of each, the frozen ResNet-50 L3-iMAC +
PCA extractor inside the step, InfoNCE (temperature 0.03) + 3 x (hardest-negative + self-similarity)
+ 1 x similarity-range regularisation, AdamW 5e-5 with weight decay 0.01, a cosine schedule with
1k warm-up iterations, 30k iterations of 64 videos. Every value is written out here; the library
only validates (dns_jax/training/s2vs/config.py). See docs/s2vs.md.

    dns-jax train --config configs/s2vs.py --workdir DIR --config.data.videos=/videos \\
        --config.extractor.backbone=resnet50.pth --config.extractor.pca=pca_resnet50_vcdb_1M.pth
    dns-jax train --config configs/s2vs.py:local --workdir DIR --config.data.videos=/videos

Arguments (`:ARG`): none = the published recipe (placeholder paths: override them);
'local' = a small run that a 2-core CPU finishes in minutes (offline backbone, PCA fitted on the
videos, 4-frame windows, the feature-bank fallback); 'teacher' = the recipe `dns-jax build
--teacher s2vs` uses for a collection of a few dozen short videos (dns_jax/app/s2vs_teacher.py).
"""
import ml_collections


def _augmentation(window_size, source_frames):
    """The S2VS augmentations (dns_jax/augmentation, docs/augmentation.md), every value written out."""
    a = ml_collections.ConfigDict()
    a.frame_size = 224                  # views are frame_size x frame_size
    a.window_size = window_size         # frames per view (official --window_sz)
    a.source_frames = source_frames     # consecutive frames loaded per video (official 2 x window)
    a.source_size = 256                 # frames are resized (shorter side) and centre-cropped to this
    a.labels = "binary"                 # 'binary' (official targets) or 'soft' (video-in-video lambda kept)
    a.weak = ml_collections.ConfigDict(dict(crop_scale=(0.8, 1.0), crop_ratio=(3 / 4, 4 / 3), p_flip=0.5))
    a.strong = ml_collections.ConfigDict()
    a.strong.enabled = ("global", "frame", "temporal", "video_in_video")   # --augmentations GT,FT,TT,ViV
    a.strong.crop_scale = (0.5, 1.0)
    a.strong.crop_ratio = (3 / 4, 4 / 3)
    a.strong.p_flip = 0.5
    a.strong.randaugment = ml_collections.ConfigDict(dict(
        num_ops=2, magnitude=9, num_bins=31,
        ops=("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
             "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")))
    a.strong.frame = ml_collections.ConfigDict(dict(
        p_text=0.3, p_emoji=0.3, overlay_size=(0.2, 0.5), overlay_opacity=(0.7, 1.0),
        p_blur=0.5, blur_radius=(0.1, 2.0)))
    a.strong.temporal = ml_collections.ConfigDict(dict(
        p_shuffle_dropout=0.5, p_fast_forward=0.1, p_slow_motion=0.1, p_reverse=0.1, p_pause=0.1,
        segment_frames=(4, 15), p_shuffle=0.5, p_dropout=0.3, p_remove=0.5, p_black=0.5,
        fast_forward=(2, 3), slow_motion=(2, 2),
        pause_frames=(0, max(window_size // 4 - 1, 0))))   # official PauseVideo(window_sz // 4)
    a.strong.video_in_video = ml_collections.ConfigDict(dict(p=0.3, lam=(0.3, 0.7)))
    return a


def get_config(arg=None):
    if arg not in (None, "", "local", "teacher"):
        raise ValueError(f"configs/s2vs.py takes no argument, 'local' or 'teacher', got {arg!r}")
    small = arg in ("local", "teacher")
    c = ml_collections.ConfigDict()
    c.network = "s2vs"
    # 'pixels': decode -> augment -> frozen extractor -> network, all inside the step (the official
    # loop; needs an accelerator to be fast). 'feature_bank': the views are augmented and extracted
    # once (feature_bank.views weak/strong pairs per video) and each step samples them: the same
    # losses at a fraction of the cost, the fallback for CPUs (docs/s2vs.md).
    c.mode = "feature_bank" if small else "pixels"
    # network constructor options (official ViSiL(dims=512, attention=True)); dims = extractor.dims
    dims = 64 if small else 512
    c.model = ml_collections.ConfigDict(dict(
        dims=dims,
        indexing="att",
        attention_norm=False,
        batch_norm=False,
        symmetric=False,
        precision="highest"))

    # -- data: a folder of videos (every video file below it) or a list file (`id<TAB>path` or a
    # path per line), decoded once at `fps` into WORKDIR/frames.hdf5 ------------------------------
    c.data = ml_collections.ConfigDict(dict(
        videos="" if arg == "teacher" else "/path/to/videos",
        fps=1.0,
        # a video with fewer frames than augmentation.window_size: 'error' (the run stops and names
        # them) or 'loop' (its frames are repeated, as the official loader's augmentations do)
        short_videos="loop" if arg == "teacher" else "error",
        percentage=100.0,               # official --percentage: the first part of the sorted list
        jpeg_quality=0 if small else 90,   # frames stored as JPEG of this quality; 0: raw uint8
        num_threads=2,                  # grain reader threads
        prefetch=2))

    # -- the frozen extractor: backbone (torchvision ResNet-50 weights, or the offline
    # 'resnet50_1by2_opennsfw') + L3-iMAC + PCA whitening to `dims`; pca '' = fitted on the videos
    c.extractor = ml_collections.ConfigDict(dict(
        backbone="resnet50_1by2_opennsfw" if small else "/path/to/resnet50.pth",
        pca="" if small else "/path/to/pca_resnet50_vcdb_1M.pth",
        dims=dims,
        batch_frames=64 if small else 512,   # frames per extractor call (official --batch_sz_fe)
        precision="default"))           # convolutions: 'default' (TF32 on GPUs) or 'highest'

    window = 4 if small else 32
    c.augmentation = _augmentation(window, 2 * window)

    # -- the fallback: a bank of pre-extracted views (WORKDIR/view_bank.hdf5) -------------------
    c.feature_bank = ml_collections.ConfigDict(dict(
        views=4 if small else 8,        # weak/strong view pairs per video
        batch_size=8 if small else 32))  # videos augmented together (video-in-video hosts among them)

    # -- optimisation (official train.py) --------------------------------------------------------
    c.batch_size = 16 if small else 64          # videos per step (2 x batch_size views)
    c.num_train_steps = {None: 30000, "": 30000, "local": 200, "teacher": 300}[arg]
    # the published 5e-5 also suits a few dozen videos: on the demo collection faster rates
    # (1e-4, 2e-4) overfit the view bank and rank worse (docs/s2vs.md)
    c.learning_rate = 5e-5
    c.final_lr = 0.1                            # lr_min = final_lr x learning_rate
    c.warmup_steps = 30 if small else 1000
    c.warmup_lr_init = 0.01                     # warm-up starts at warmup_lr_init x learning_rate
    c.weight_decay = 0.01                       # AdamW (decoupled)
    c.temperature = 0.03                        # InfoNCE
    c.lambda_parameter = 3.0                    # weight of hardest-negative + self-similarity
    c.r_parameter = 1.0                         # weight of the similarity-range regulariser
    c.sshn_eps = 1e-3                           # log clamp of the SSHN terms
    c.seed = 0
    c.init_from = ""                            # start from trained weights (.pth or checkpoint)
    # without init_from: 'random' (the official start) or 'visil_f' (the network starts computing
    # ViSiL_f on 4x4 frame blocks, dns_jax/models/chamfer_start.py, its other weights x init_noise;
    # the teacher recipe's: on the held-out hard edits of bench_s2vs_teachers.py the teacher went
    # 0.928 -> 0.954 mAP, where a random start gave anything from chance to 0.87 before training)
    c.init = "visil_f" if arg == "teacher" else "random"
    c.init_noise = 0.1

    # -- bookkeeping -----------------------------------------------------------------------------
    c.checkpoint_every_steps = 100 if small else 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 10 if small else 100
    c.progress_bar = True

    # -- multi-host: jax.distributed.initialize arguments (-1 / '': from the environment) ----------
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=-1, process_id=-1))
    return c
