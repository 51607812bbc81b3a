"""Build or extend an index from feature files: HDF5 (one dataset per video id, [T, 9, 512] or
[T, 512]), as published for FIVR-200K, CC_WEB_VIDEO, EVVE, SVD and DnS-100K, or written by
dns_jax.features; also .npz files, folders of .npy files and the tfds array_record datasets of
dns_jax.datasets (anything dns_jax.datasets.stores.open_features reads). HDF5 ids are dataset paths, so CC_WEB_VIDEO ids with '/' (nested groups) and SVD ids
ending in '.mp4' work as they are.

Videos are committed in shards (atomic, see store.py); a killed run leaves a usable index and the
next run resumes by skipping committed ids. A bad video (unreadable, wrong shape, empty, NaN/inf)
is reported, recorded in the manifest's `skipped` with the reason, and the rest are indexed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dns_jax.datasets.stores import FeatureStore, open_features, read_checked
from dns_jax.index import compressed
from dns_jax.index.store import Index
from dns_jax.retrieval import coarse_index, scorer_for, self_similarities, vector_blocks
from dns_jax.validation import FeatureError


def list_video_ids(path: str) -> List[str]:
    """Every video id of a feature file or folder (HDF5: every dataset by its path, so nested groups
    give ids with '/')."""
    return list(open_features(path).ids())


def read_video(store: FeatureStore, video_id: str, dims: int) -> np.ndarray:
    """Features of one video `(T, R, dims)`, checked (FeatureError with the id and the reason if unusable)."""
    return read_checked(store, video_id, dims)


@dataclasses.dataclass
class BuildReport:
    added: int = 0
    already: int = 0
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self):
        return f"{self.added} videos added, {self.already} already indexed, {len(self.skipped)} skipped"


def iter_videos(stores: Sequence[FeatureStore], ids: Optional[Sequence[str]] = None
                ) -> Iterator[Tuple[Optional[FeatureStore], str, Optional[str]]]:
    """(store, id, None) for every video to read, or (None, id, reason) for a requested id found in
    no store. With `ids`, only those (in that order); otherwise every video of every store."""
    per_file = [(p, list(p.ids())) for p in stores]
    if ids is None:
        seen = set()
        for p, vids in per_file:
            for v in vids:
                if v not in seen:
                    seen.add(v)
                    yield p, v, None
        return
    where = {}
    for p, vids in per_file:
        for v in vids:
            where.setdefault(v, p)
    for v in ids:
        v = str(v)
        yield (where[v], v, None) if v in where else (None, v, "not found in the feature files")


def open_for_writing(directory: str, fine_model, coarse_model, selector_model, binary: str = "packed"):
    """(Index opened for writing, FineScorer): the index in `directory`, created for these networks
    if missing; NetworkMismatchError / ValueError if it was built with others or another fine kind."""
    scorer = scorer_for(fine_model, binary)
    kind = "packed" if scorer.packed else "float32"
    if Index.exists(directory):
        index = Index.open(directory, writable=True)
        try:
            index.check_networks(fine_model, coarse_model, selector_model)
            if index.fine_kind != kind:
                raise ValueError(f"the index at {directory!r} stores {index.fine_kind!r} fine representations, "
                                 f"not {kind!r}")
        except ValueError:
            index.close()
            raise
    else:
        index = Index.create(directory, fine_model, coarse_model, selector_model, kind,
                             scorer.bits // 8 if scorer.packed else (scorer.bits or scorer.dims))
    return index, scorer


def build_index(directory: str, feature_files: Sequence[str], fine_model, coarse_model, selector_model, *,
                ids: Optional[Sequence[str]] = None, shard_size: int = 512, binary: str = "packed",
                progress: bool = True, log: Callable[[str], None] = print,
                coarse_search: Optional[str] = None) -> BuildReport:
    """Create or extend the index in `directory` with the videos of `feature_files`.
    `coarse_search`: 'exact', 'shortlist' (region-vector CG students) or 'faiss-ivfpq' (recorded in
    the index; None: keep the index's, exact for a new one); a faiss-ivfpq index's faiss file is
    brought up to date at the end (index/compressed.py)."""
    compressed.check_kind(coarse_search)
    if coarse_search == compressed.FAISS_IVFPQ:
        compressed.require_faiss()          # before any work: a missing extra is one line
    if coarse_search == compressed.SHORTLIST and vector_blocks(coarse_model) == 1:
        raise compressed.CompressedCoarseError(
            f"--coarse shortlist needs a region-vector CG student; {coarse_model.name!r} has one vector per video")
    index, scorer = open_for_writing(directory, fine_model, coarse_model, selector_model, binary)
    if coarse_search is not None:
        index.set_coarse_search(coarse_search)
    dims = fine_model.module.dims
    report = BuildReport()
    stores = [open_features(p) for p in feature_files]
    todo = list(iter_videos(stores, ids))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="indexing", unit="video")
    batch_ids: List[str] = []
    batch: List[np.ndarray] = []
    pending_skips: Dict[str, str] = {}

    def commit():
        nonlocal batch_ids, batch, pending_skips
        if not batch_ids and not pending_skips:
            return
        if batch_ids:
            before = scorer.zero_codes_seen
            fine = scorer.index(batch)
            coarse = coarse_index(coarse_model, batch)
            selfsim = self_similarities(selector_model, batch)
            index.add(batch_ids, fine, coarse, selfsim, skipped=pending_skips,
                      zero_codes=scorer.zero_codes_seen - before)
        else:
            index.add([], [], np.zeros((0, 1), np.float32), np.zeros(0, np.float32), skipped=pending_skips)
        report.added += len(batch_ids)
        batch_ids, batch, pending_skips = [], [], {}

    try:
        for store, vid, reason in todo:
            if bar is not None:
                bar.update(1)
            if vid in index or vid in batch_ids:
                report.already += 1
                continue
            if reason is None:
                try:
                    batch.append(read_video(store, vid, dims))
                    batch_ids.append(vid)
                except FeatureError as e:
                    reason = str(e)
            if reason is not None:
                report.skipped[vid] = reason
                pending_skips[vid] = reason
                log(f"skipped {vid}: {reason}")
            if len(batch_ids) >= shard_size:
                commit()
        commit()
        compressed.sync(index, log=log)
    finally:
        index.close()
        if bar is not None:
            bar.close()
    if index.manifest.get("zero_codes"):
        log(f"note: {index.manifest['zero_codes']} binary code values were exactly 0 and are stored as -1")
    return report


def update_coarse_search(directory: str, coarse_search: Optional[str] = None,
                         log: Callable[[str], None] = print) -> None:
    """After a commit made elsewhere (`dns_jax.distributed.index_ray`): record `coarse_search`
    (None: keep the index's) and bring its compressed coarse stage up to date (index/compressed.py)."""
    compressed.check_kind(coarse_search)
    index = Index.open(directory, writable=True)
    try:
        if coarse_search is not None:
            index.set_coarse_search(coarse_search)
        compressed.sync(index, log=log)
    finally:
        index.close()
