"""CG student: coarse-grained, one 1024-d vector per video (Transformer + NetVLAD).

The published DnS recipe (Kordopatis-Zilos et al., IJCV 2022): distilled from ViSiL on DnS-100K, 300 epochs, Adam 1e-5,
validated on FIVR-5K.
Every value is written out here; the library only validates (dns_jax/training/config.py).

    python train.py --config configs/cg_student.py --workdir DIR             # the paper's recipe
    python train.py --config configs/cg_student.py:synthetic --workdir DIR   # a generated collection, no data needed
    python train.py --config configs/cg_student.py --workdir DIR --config.features=/data/dns100k.hdf5

Arguments (`:ARG` after the file name): none = DnS-100K with placeholder paths (override them on the
command line), 'synthetic' = the same optimisation on a generated feature collection (smoke runs).
"""
import ml_collections


def get_config(arg=None):
    if arg not in (None, "", "synthetic"):
        raise ValueError(f"configs/cg_student.py takes no argument or 'synthetic', got {arg!r}")
    synthetic = arg == "synthetic"
    c = ml_collections.ConfigDict()
    c.network = "cg_student"
    # constructor options of the network; `precision` of the matmuls: 'highest' (float32, as the
    # official code) or 'default' (faster TF32/bf16 passes on GPU/TPU)
    c.model = ml_collections.ConfigDict(dict(
        dims=512,
        attention=True,
        transformer=True,
        transformer_heads=8,
        transformer_feedforward_dims=2048,
        transformer_layers=1,
        netvlad=True,
        netvlad_clusters=64,
        netvlad_outdims=1024,
        region_max=False,               # one vector per region, best region pair (not official; docs/s2vs.md)
        num_regions=9,
        num_segments=1,                 # with region_max: region vectors of this many stretches of the video
        top_pairs=1,                    # with region_max: a pair scores the mean of its this many best vector pairs
        precision="highest"))

    # -- data ------------------------------------------------------------------------------------
    # 'features': region features (HDF5 as the official files, .npz, a folder of .npy or a tfds
    # dataset) with the pair file `pairs` (or, when empty, pairs computed by `teacher`);
    # 'synthetic': a generated collection scored by the teacher (no data needed).
    c.dataset = "synthetic" if synthetic else "features"
    c.features = "" if synthetic else "/path/to/dns100k/features.hdf5"
    c.pairs = "" if synthetic else "/path/to/dns100k/pairs_teacher.npz"
    # teacher of pair files computed here: 'visil_f' (no weights), 'visil:/path/visil.pth', or a
    # trained student's work directory (iterative distillation)
    c.teacher = "visil_f"
    c.trainset_percentage = 100.0
    c.max_missing_fraction = 0.5        # more missing videos than this fraction of a pair file: error
    c.augmentation = True
    c.max_augmented_frames = 300
    # videos are zero-padded to the smallest bucket that fits the longest one of the batch
    c.length_buckets = (16, 32, 64, 128, 192, 256, 320)
    c.num_threads = 2                   # grain reader threads (batches stay deterministic)
    c.prefetch = 2                      # batches prepared ahead of the train step

    c.synthetic = ml_collections.ConfigDict(dict(
        num_families=48, family_size=4, num_distractors=64, min_frames=8, max_frames=24,
        regions=9, dims=512, noise=0.35, seed=0, holdout_families=8))

    c.teacher_job = ml_collections.ConfigDict(dict(
        num_candidates=64,              # per query, pre-ranked by a global descriptor, scored by the teacher
        num_positives=8,                # highest-scored candidates kept as positives
        positive_threshold=-1.0,        # ... if their teacher similarity is at least this
        num_negatives=16,               # random non-candidates, also scored
        batch_size=64))                 # pairs per teacher call

    # -- selector data (official train_selector.py) ------------------------------------------------
    c.selector = ml_collections.ConfigDict(dict(
        fine_pairs="",      # pair file with fine-student similarities (raw, [-1, 1])
        coarse_pairs="",  # pair file with coarse-student similarities (cosine)
        threshold=0.2,
        pairs_per_class=5000,
        val_size=0.03))

    # -- optimisation ------------------------------------------------------------------------------
    c.batch_size = 32                 # triplets per step (64 pairs)
    c.num_epochs = 300
    c.num_train_steps = -1              # > 0: stop after this many steps instead
    c.learning_rate = 1e-5
    c.weight_decay = 0.0                # torch Adam semantics (L2 added to the gradient)
    c.r_parameter = 0.0
    c.seed = 0
    c.init_from = ""                    # start from trained weights (.pth or checkpoint) instead

    # -- bookkeeping -------------------------------------------------------------------------------
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.progress_bar = True

    # -- validation: '' (none), 'synthetic' (held-out generated families), 'fivr5k' (FIVR-5K
    # features in validation.features), 'selector' (the held-out split) --------------------------
    c.validation = ml_collections.ConfigDict(dict(
        dataset="" if synthetic else "fivr5k",
        features="" if synthetic else "/path/to/fivr5k/features.hdf5",
        metric="",                      # '' picks: DSVR (fivr5k), spearman (synthetic), accuracy (selector)
        every_steps=-1,                 # -1: once per epoch
        batch_size=32))                 # pairs per similarity call

    # -- multi-host: jax.distributed.initialize arguments (-1 / '': from the environment) ----------
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=-1, process_id=-1))
    return c
