"""One-off conversion of the official benchmark annotations to gzipped JSON.

Reads the four annotation files published with mever-team/distill-and-select (folder
`datasets/`, commit f81a7eb) and writes plain JSON (gzip, deterministic: mtime 0, sorted
where the source is an unordered set) into `dns_jax/evaluation/data/`. The package never
unpickles anything at run time; this script is the only place a pickle is opened, and it
uses an unpickler that refuses every global except the built-in `set`/`frozenset` (and, for
S2VS's VCDB file only, `collections.defaultdict`).

Usage:
    python tools/convert_eval_annotations.py SOURCE_DIR [OUT_DIR]
    python tools/convert_eval_annotations.py --s2vs S2VS_DATA_DIR [OUT_DIR]
    python tools/convert_eval_annotations.py --vcdb VCDB_PICKLE OUT_JSON_GZ

SOURCE_DIR holds fivr.pickle, cc_web_video.pickle, evve.pickle and test_groundtruth.

--s2vs: S2VS_DATA_DIR is the `data/` folder of gkordo/s2vs (fivr_audio.pickle,
fivr_easy_duplicates.txt); writes fivr_s2vs.json.gz (the easy duplicates and the ND/DS/CS/IS
labels where S2VS's FIVR annotation differs from fivr.json.gz, which must exist in OUT_DIR).

--vcdb: S2VS's `data/vcdb.pickle` (not shipped: a user converts it once and passes the JSON to
`dns_jax.evaluation.VCDB(annotation=...)` or `dns-jax evaluate --vcdb-annotation`).
"""
import collections
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


class _DefaultdictUnpickler(_AnnotationUnpickler):
    """Also admits `collections.defaultdict` (a dict whose factory is itself looked up here)."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "defaultdict"):
            return collections.defaultdict
        return super().find_class(module, name)


def _load_pickle(path, unpickler=_AnnotationUnpickler):
    with open(path, "rb") as f:
        return unpickler(f, encoding="latin1").load()


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


FIVR_LABELS = ("ND", "DS", "CS", "IS")


def _read_id_lines(path):
    """One id per line (S2VS reads the file with numpy.loadtxt: blank lines skipped)."""
    ids = []
    with open(path, "r") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1 or fields[0].startswith("#"):
                raise ValueError(f"{path}:{n}: expected one id per line, got {line!r}")
            ids.append(fields[0])
    return ids


def convert_s2vs_fivr(s2vs_dir, base_json):
    """S2VS's FIVR annotation as differences from the DnS one (fivr.json.gz), plus the list of
    easy duplicates. The queries and databases must be identical; labels other than ND/DS/CS/IS
    (DA, audio) are not converted."""
    s2vs_dir = pathlib.Path(s2vs_dir)
    src, easy_src = s2vs_dir / "fivr_audio.pickle", s2vs_dir / "fivr_easy_duplicates.txt"
    d = _load_pickle(src)
    base = json.loads(gzip.decompress(pathlib.Path(base_json).read_bytes()).decode("ascii"))
    for version in ("5k", "200k"):
        for key in ("queries", "database"):
            if sorted(_str_list(d[version][key])) != sorted(base[version][key]):
                raise ValueError(f"S2VS's FIVR {version} {key} differ from {base_json}")
    if set(d["annotation"]) != set(base["annotation"]):
        raise ValueError(f"S2VS's FIVR annotation has other queries than {base_json}")
    remove, add = {}, {}
    for query in sorted(d["annotation"]):
        theirs, ours = d["annotation"][query], base["annotation"][query]
        for label in FIVR_LABELS:
            t, o = set(_str_list(theirs.get(label, []))), set(ours.get(label, []))
            if o - t:
                remove.setdefault(query, {})[label] = sorted(o - t)
            if t - o:
                add.setdefault(query, {})[label] = sorted(t - o)
    easy = _read_id_lines(easy_src)
    if len(set(easy)) != len(easy):
        raise ValueError(f"{easy_src}: repeated ids")
    database = set(base["200k"]["database"])
    outside = [v for v in easy if v not in database]
    if outside:
        raise ValueError(f"{easy_src}: {len(outside)} ids are not FIVR-200K videos, e.g. {outside[:3]}")
    return {
        "format": "dns_jax.evaluation/fivr_s2vs/1",
        "source_sha256": {"fivr_audio.pickle": _sha256(src),
                          "fivr_easy_duplicates.txt": _sha256(easy_src)},
        "base_source_sha256": base["source_sha256"],
        # S2VS labels = fivr.json.gz labels - remove + add (per query and label)
        "remove": remove,
        "add": add,
        "easy_duplicates": sorted(easy),
    }


def convert_s2vs_vcdb(src):
    """S2VS's vcdb.pickle: `queries` (the core videos, list order kept), `positives` ({video: set
    of videos}, written sorted) and `dataset` (the distractors, list order kept)."""
    d = _load_pickle(src, _DefaultdictUnpickler)
    missing = [k for k in ("queries", "positives", "dataset") if k not in d]
    if missing:
        raise ValueError(f"{src}: no {', '.join(missing)}; expected S2VS's data/vcdb.pickle")
    queries, distractors = _str_list(d["queries"]), _str_list(d["dataset"])
    positives = {}
    for video, pos in d["positives"].items():
        assert isinstance(video, str)
        positives[video] = sorted(_str_list(pos))
    self_positive = [v for v, pos in positives.items() if v in pos]
    if self_positive:
        print(f"note: {len(self_positive)} videos are listed among their own positives "
              "(kept: S2VS counts them as positives never retrieved)")
    return {
        "format": "dns_jax.evaluation/vcdb/1",
        "source_sha256": _sha256(src),
        "queries": queries,
        "positives": positives,
        "distractors": distractors,
    }


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    default_out = pathlib.Path(__file__).resolve().parents[1] / "dns_jax" / "evaluation" / "data"
    if argv[1] == "--s2vs" and len(argv) in (3, 4):
        out = pathlib.Path(argv[3]) if len(argv) > 3 else default_out
        _write(out / "fivr_s2vs.json.gz", convert_s2vs_fivr(argv[2], out / "fivr.json.gz"))
        return 0
    if argv[1] == "--vcdb" and len(argv) == 4:
        _write(pathlib.Path(argv[3]), convert_s2vs_vcdb(argv[2]))
        return 0
    if argv[1].startswith("--"):
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
