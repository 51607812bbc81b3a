"""One-off conversion of the official benchmark annotations to gzipped JSON.

Reads the four annotation files published with mever-team/distill-and-select (folder
`datasets/`, commit f81a7eb) and writes plain JSON (gzip, deterministic: mtime 0, sorted
where the source is an unordered set) into `dns_jax/evaluation/data/`. The package never
unpickles anything at run time; this script is the only place a pickle is opened, and it
uses an unpickler that refuses every global except the built-in `set`/`frozenset`.

Usage:
    python tools/convert_eval_annotations.py SOURCE_DIR [OUT_DIR]

SOURCE_DIR holds fivr.pickle, cc_web_video.pickle, evve.pickle and test_groundtruth.
"""
import gzip
import hashlib
import io
import json
import pathlib
import pickle
import sys

ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"),
                   ("__builtin__", "set"), ("__builtin__", "frozenset")}


class _AnnotationUnpickler(pickle.Unpickler):
    """Unpickler for plain containers: only the set types may be looked up."""

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _load_pickle(path):
    with open(path, "rb") as f:
        return _AnnotationUnpickler(f, encoding="latin1").load()


def _write(path, obj):
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(text.encode("ascii"))
    path.write_bytes(buf.getvalue())
    print(f"wrote {path} ({len(buf.getvalue())} bytes)")


def _sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _str_list(xs):
    out = list(xs)
    assert all(isinstance(x, str) for x in out)
    return out


def convert_fivr(src):
    d = _load_pickle(src)
    out = {"format": "dns_jax.evaluation/fivr/1", "source_sha256": _sha256(src)}
    for version in ("5k", "200k"):
        part = d[version]
        q, db = part["queries"], part["database"]
        out[version] = {
            # The official code sorts both lists; list order is kept for queries, and the
            # database (a set in the source) is written sorted.
            "queries": _str_list(q),
            "database": sorted(_str_list(db)),
        }
    ann = {}
    for query, labels in d["annotation"].items():
        assert isinstance(query, str)
        ann[query] = {label: _str_list(ids) for label, ids in labels.items()}
    out["annotation"] = ann
    return out


def convert_cc_web(src):
    d = _load_pickle(src)
    index = d["index"]
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in index.items())
    gts = []
    for gt in d["ground_truth"]:
        assert all(isinstance(k, int) and isinstance(v, str) for k, v in gt.items())
        # [int id, label] pairs keep the integer ids (JSON object keys would be strings).
        gts.append([[k, v] for k, v in gt.items()])
    excluded = []
    for ex in d["excluded"]:
        assert isinstance(ex, (set, frozenset)) and all(isinstance(k, int) for k in ex)
        excluded.append(sorted(ex))
    return {
        "format": "dns_jax.evaluation/cc_web_video/1",
        "source_sha256": _sha256(src),
        "index": dict(index),
        "queries": _str_list(d["queries"]),
        "ground_truth": gts,
        "excluded": excluded,
    }


def convert_evve(src):
    d = _load_pickle(src)
    events = {}
    for name, triple in d["annotation"].items():
        assert isinstance(triple, tuple) and len(triple) == 3
        events[name] = [sorted(_str_list(s)) for s in triple]
    return {
        "format": "dns_jax.evaluation/evve/1",
        "source_sha256": _sha256(src),
        # each event: [its queries, its positives, its nulls] (sets in the source)
        "annotation": events,
        "queries": _str_list(d["queries"]),
        "database": _str_list(d["database"]),
    }


def convert_svd(src):
    pairs = []
    with open(src, "r") as f:
        for line in f:
            fields = line.strip().split(" ")
            pairs.append([fields[0], fields[1], int(fields[-1])])
    return {
        "format": "dns_jax.evaluation/svd/1",
        "source_sha256": _sha256(src),
        # lines of `test_groundtruth` in file order: [query, target, label]
        "pairs": pairs,
    }


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    src = pathlib.Path(argv[1])
    out = pathlib.Path(argv[2]) if len(argv) > 2 else (
        pathlib.Path(__file__).resolve().parents[1] / "dns_jax" / "evaluation" / "data")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "fivr.json.gz", convert_fivr(src / "fivr.pickle"))
    _write(out / "cc_web_video.json.gz", convert_cc_web(src / "cc_web_video.pickle"))
    _write(out / "evve.json.gz", convert_evve(src / "evve.pickle"))
    _write(out / "svd_test_groundtruth.json.gz", convert_svd(src / "test_groundtruth"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
