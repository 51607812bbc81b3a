"""Convert a feature file into a tfds array_record dataset readable without TensorFlow.

    python -m dns_jax.datasets.convert FEATURES.hdf5 OUT_DIR [--name NAME]

FEATURES: an official HDF5 feature file (one dataset per video id, [T, 9, 512] float32; nested ids
such as CC_WEB_VIDEO's 'set/name' work), an .npz or a folder of <id>.npy files. The dataset is
written to OUT_DIR/NAME/1.0.0 (array_record files, dataset_info.json and the id index
dns_jax_index.json). Videos that cannot be stored (unreadable, NaN/inf, empty, another shape) are
reported and skipped; the rest are converted. Pass OUT_DIR (or the dataset folder) wherever a
feature file is accepted: train.py, index.py, evaluate.py.
"""
import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dns_jax.datasets.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", help="HDF5 / .npz file or folder of .npy files with region features")
    p.add_argument("out_dir", help="tfds data_dir; the dataset goes to OUT_DIR/NAME/1.0.0")
    p.add_argument("--name", default="dns_features",
                   help="dataset name (lower case, digits, '_'), e.g. fivr5k_features (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from dns_jax.datasets.builder import convert_features
    from dns_jax.validation import FeatureError
    try:
        report = convert_features(args.features, args.out_dir, name=args.name, progress=not args.quiet,
                                  log=lambda m: print(m, file=sys.stderr))
    except (FeatureError, FileExistsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
