"""`dns-jax build`: a DnS system trained on a folder of the user's own videos, with no labels and
no downloaded weights. Every value the build uses is written out here; the command-line flags of
`dns-jax build` (--dims, --steps, --batch-size, --teacher, --seed) override the matching fields.

    dns-jax build --videos DIR --workdir WORK                 # this recipe
    dns-jax build --videos DIR --workdir WORK --recipe build:demo

Arguments: none = own videos (official network sizes), 'demo' = the generated demo collection
(34 videos: fewer steps, a CG student sized for a few dozen videos).
"""
import ml_collections


def get_config(arg=None):
    if arg not in (None, "", "demo"):
        raise ValueError(f"configs/build.py takes no argument or 'demo', got {arg!r}")
    demo = arg == "demo"
    c = ml_collections.ConfigDict()

    # -- features: frames at `fps`, shorter side `rs_size`, centre crop `cc_size`; the offline
    # ResNet-50-1by2 backbone unless --backbone names torchvision ResNet-50 weights; PCA whitening
    # fitted on the collection unless --pca names the official file ---------------------------------
    c.features = ml_collections.ConfigDict(dict(
        backbone="resnet50_1by2_opennsfw",
        dims=512,                       # whitened feature dims, the input of every network
        # eigenvalues of the collection-fitted whitening regularised to d_k + shrink * mean(d):
        # 'auto' = dims / frames of the fit (about 3 for the 34-video demo, 0.005 at 10^5 frames);
        # a number as text ("0": the official full whitening; docs/features.md); unused with --pca
        whitening_shrink="auto",
        fps=1.0,
        rs_size=256,
        cc_size=224))

    # -- teacher: scores the training pairs; 'visil_f' needs no weights (frame-level Chamfer of
    # region Chamfer similarities); 's2vs' trains the S2VS network self-supervised on the collection
    # itself first (configs/s2vs.py:teacher, with the `s2vs` keys below written over it); a path
    # ('s2vs:/w/s2vs_dns.pth', 'visil:/w/visil.pth') uses given weights ------------------------------
    c.teacher = "visil_f"
    c.s2vs = ml_collections.ConfigDict(dict(
        num_train_steps=100 if demo else 300))
    c.teacher_job = ml_collections.ConfigDict(dict(
        num_candidates=32,              # per query, nearest by mean feature (at most videos - 1)
        num_positives=4,                # best-scored candidates kept as positives
        num_negatives=8,                # random others (at most videos - 5)
        batch_size=64))                 # pairs per teacher call
    c.min_videos = 4                    # fewer usable videos cannot form training triplets

    # -- students and selector: training steps, triplets (pairs for the selector) per step -------
    steps = 200 if demo else 300
    c.batch_size = 16
    c.seed = 0
    c.fine = ml_collections.ConfigDict(dict(
        network="fg_att_student",
        # demo: 3x the other networks' steps; on videos added after the build (benchmarks/
        # bench_s2vs_teachers.py) the ViSiL_f build's fine student went 0.861 -> 0.898 mAP with 600
        # steps (teacher 0.904), while the CG student lost with more (docs/s2vs.md)
        steps=3 * steps if demo else steps,
        # 'teacher': the student starts as its teacher: an S2VS teacher's weights (the FG-Att student's
        # own network), or for ViSiL_f the weights with which the network computes ViSiL_f on 4x4
        # frame blocks (dns_jax/models/chamfer_start.py; its other weights x init_noise): on the
        # held-out hard edits of bench_s2vs_teachers.py the ViSiL_f build's student went 0.898 ->
        # 0.967 mAP; 'random': the official start
        init="teacher",
        init_noise=0.1,
        learning_rate=1e-4))            # the paper's
    c.coarse = ml_collections.ConfigDict(dict(
        network="cg_student",
        # which CG student: 'region_max' (each of the 9 regions averaged over the video, weighted by a
        # distilled attention; a pair scores its best region pair, so picture-in-picture and overlaid
        # copies match on the regions they keep; 9 x dims floats per video, searched exactly, no faiss
        # stage) or 'netvlad' (the official one vector per video: Transformer + NetVLAD, the `model`,
        # `init` keys below; for faiss at 10^7 videos). On held-out hard copies region_max ranks at
        # 0.91 mAP against 0.81 (benchmarks/bench_s2vs_teachers.py, docs/s2vs.md)
        kind="region_max",
        # region_max only: the region vectors of this many equal stretches of the video (9 x segments
        # unit vectors per video, the best of (9 x segments)^2 pairs), so a copy of part of a video
        # matches the stretch it copies; 1: one average over the whole video. On the held-out hard
        # copies of bench_s2vs_teachers.py 3 segments lift the CG student 0.913 -> 0.946 mAP and DnS at
        # 10 % 0.933 -> 0.968 (fine student 0.967), for 3x the coarse storage and 9x its products
        # (docs/s2vs.md, docs/retrieval.md; 1 for the fastest coarse search of very large collections)
        segments=3,
        # region_max only: a pair scores the mean of its `top_pairs` best vector-pair cosines (1: the
        # best alone). The best of 729 pairs of unrelated videos rises with their number and buried
        # picture-in-picture copies of the demo under distractors; the mean of the 3 best ranks the
        # demo's copies at 1.000 (0.977 with the best alone) and the held-out copies as well (weight-
        # free probes on the same features: held-out 0.946 -> 0.947, demo families 0.918 -> 0.933,
        # whole collection 0.831 -> 0.845; docs/s2vs.md)
        top_pairs=3,
        steps=steps,
        # the official 1e-5 is tuned for 300 epochs of DnS-100K; a small collection needs a larger step
        learning_rate=1e-4,
        # the official CG student (64 clusters, 1024-d) suits large collections; the demo's few dozen
        # videos train a smaller one
        model=ml_collections.ConfigDict(dict(
            netvlad_clusters=16 if demo else 64,
            netvlad_outdims=256 if demo else 1024,
            transformer_feedforward_dims=1024 if demo else 2048)),
        spread_floor=3.0,               # teacher scores within this many robust stds of the background -> 0
        # how the student starts (dns_jax/app/coarse_recipe.py): 'mean_pooling' (NetVLAD starts as mean
        # pooling of the frame vectors, for videos seen or not) or 'vlad_pca' (the reduction fitted on
        # the collection's VLAD vectors: it spans only those videos, so videos added later rank badly)
        init="mean_pooling",
        init_max_videos=4096))          # 'vlad_pca': videos whose VLAD vectors fit the reduction
    c.selector = ml_collections.ConfigDict(dict(
        steps=steps,
        learning_rate=1e-4,
        # which training pairs are worth re-ranking (dns_jax/training/pairs.py selector_labels):
        # 'relevance' (either student scores it above `threshold`: the pairs that may reach the top of
        # the ranking), 'gap' (official, |fine - coarse| above `threshold`) or 'inversion' (coarse
        # orders it against a pair of its query whose fine score differs by more than `threshold`)
        target="relevance",
        # how DnS puts a re-ranked video's fine score on the CG scale: 'quantiles' (the CG cosine at
        # the fine score's quantile over the training pairs) or 'spread' (the fine scores spread like
        # the teacher's for the CG targets; re-ranked copies fell under distractors the CG overrates)
        fine_scale="quantiles",
        # a re-ranked video's DnS score: this share of its CG score plus the rest of its fine score on
        # the CG scale (0: the fine score alone, as the official DnS). The two students err on
        # different copies: on the harder held-out copies DnS at 10 % went 0.955 -> 0.967 with 0.5, on the
        # whole collection 0.826 -> 0.849, on the milder hard copies 0.968 -> 0.966 (uAP 0.959 -> 0.969)
        # (benchmarks/bench_s2vs_teachers.py, docs/s2vs.md)
        coarse_weight=0.5,
        threshold=0.2,
        # fewer pairs than this on either side of the threshold (a small collection): the threshold
        # becomes the median difference (dns_jax/app/build.py selector_threshold)
        min_pairs_per_class=8,
        pairs_per_class=5000))

    # -- bookkeeping: a checkpoint every third of a stage's steps (at least every 50), a log line
    # every fifth (at least every 10) ------------------------------------------------------------
    c.checkpoint_fraction = 3
    c.min_checkpoint_every = 50
    c.log_fraction = 5
    c.min_log_every = 10
    return c
