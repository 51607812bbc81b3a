"""`dns-jax query`: video files (or ids of indexed videos) in, ranked indexed videos out.

Scores every indexed video with the coarse student, the fine student, or DnS (coarse for all, the
selector's top `budget` fraction re-scored by the fine student, its scores put on the CG scale as
recorded by the build, else the official s / 2 + 0.5), writes
`{query_id: {video_id: score}}` and prints the top results with their best-matching segments.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dns_jax.app.build import OFFLINE_BACKBONE, load_networks
from dns_jax.app.coarse_recipe import spread_scores
from dns_jax.app.segments import matching_segments
from dns_jax.app.workdir import Workdir, WorkdirError
from dns_jax.features import load_extractor
from dns_jax.features.pca import apply_whitening, whitening_matrices
from dns_jax.fileio import atomic_write_json
from dns_jax.index import Index
from dns_jax.index.search import check_search_options, scores_in_index_order, search_index
from dns_jax.retrieval import DnS


class QueryError(ValueError):
    """A query that is neither a readable video file nor an indexed id."""


@dataclasses.dataclass
class QueryResult:
    query_id: str
    scores: Dict[str, float]             # every indexed video
    top: List[Tuple[str, float, list]]   # (video id, score, segments) of the best results


class Searcher:
    """Loads a built work directory once and answers queries."""

    def __init__(self, workdir: str):
        self.wd = Workdir(workdir)
        if not os.path.exists(self.wd.path("state.json")):
            raise WorkdirError(f"{workdir!r} is not a dns-jax work directory (no state.json); "
                               "run `dns-jax build --videos DIR --workdir WORK` first")
        self.wd.require("index")
        self.settings = self.wd.settings()
        self.fine, self.coarse, self.selector = load_networks(self.wd)
        self.index = Index.open(self.wd.index)
        self.dns = DnS(self.fine, self.coarse, self.selector)
        # a CG student distilled with spread targets scores on another scale than the official
        # s / 2 + 0.5 of the fine student: DnS puts the re-ranked fine scores on the CG scale
        # with the parameters fitted when the selector was trained
        self.fine_spread = (self.wd.read_state()["done"].get("selector") or {}).get("fine_spread")
        self._extractor = None

    # -- query features -----------------------------------------------------------------------
    def _extract(self, path: str) -> np.ndarray:
        if self._extractor is None:
            self._extractor = load_extractor(self.settings.get("backbone", OFFLINE_BACKBONE), None)
            pca = self.settings.get("pca") or self.wd.pca
            self._whiten = whitening_matrices(pca, self.settings.get("dims", 512))
        raw = self._extractor.extract_video(path)
        return apply_whitening(raw, *self._whiten)

    def features(self, query: str) -> Tuple[str, np.ndarray]:
        """(query id, [T, R, D] features) of a video file path or an indexed video id."""
        if os.path.isfile(query):
            qid = os.path.splitext(os.path.basename(query))[0]
            return qid, self._extract(query)
        import h5py
        with h5py.File(self.wd.features, "r") as f:
            if query in f:
                return query, f[query][:]
        raise QueryError(f"{query!r} is neither a video file nor the id of an indexed video")

    # -- scoring ------------------------------------------------------------------------------
    def fine_mapping(self):
        """How DnS puts re-ranked fine scores on the coarse scale: a CG student distilled with
        spread targets scores on another scale than the official s / 2 + 0.5, so the fine scores
        are spread with the parameters fitted when the selector was trained (None: official)."""
        if not self.fine_spread:
            return None
        return lambda raw: spread_scores(raw, self.fine_spread)

    def search(self, query: str, stage: str = "dns", budget: float = 0.05, top: int = 10,
               segments: int = 5) -> QueryResult:
        try:
            check_search_options(stage, budget, top)
        except ValueError as e:
            raise QueryError(str(e)) from None
        qid, x = self.features(query)
        reps = self.dns.index([x], [qid])
        ids = self.index.ids
        res = search_index(self.dns, self.index, reps, stage, budget, topk=None,
                           fine_mapping=self.fine_mapping())
        scores = scores_in_index_order(res, 0, len(ids))
        best = []
        for rank, (i, score) in enumerate(zip(res.ranking[0][:top], res.scores[0][:top])):
            segs = self._segments(x, ids[i]) if rank < segments else []
            best.append((ids[i], float(score), segs))
        return QueryResult(qid, {v: float(s) for v, s in zip(ids, scores)}, best)

    def dns_scores(self, reps, budget: float) -> np.ndarray:
        """DnS scores (Q, N) of indexed queries `reps` against every indexed video, in index order."""
        res = search_index(self.dns, self.index, reps, "dns", budget, topk=None, fine_mapping=self.fine_mapping())
        return np.stack([scores_in_index_order(res, q, len(self.index)) for q in range(len(reps))])

    def _segments(self, query: np.ndarray, video_id: str):
        _, target = self.features(video_id)
        q, t = self.fine.index_video(query), self.fine.index_video(target)
        f2f = np.asarray(self.fine.frame_to_frame_similarity(q, t))
        return matching_segments(f2f)


def run_query(workdir: str, queries: Sequence[str], stage: str = "dns", budget: float = 0.05,
              output: Optional[str] = None, top: int = 10, log=print) -> Dict[str, Dict[str, float]]:
    """Answer every query; write `{query_id: {video_id: score}}` to `output` (atomically)."""
    searcher = Searcher(workdir)
    results, failed = {}, []
    for q in queries:
        try:
            res = searcher.search(q, stage, budget, top)
        except (QueryError, ValueError, OSError) as e:
            failed.append((q, str(e)))
            log(f"query {q}: FAILED: {e}")
            continue
        results[res.query_id] = res.scores
        log(f"\nquery {res.query_id} ({stage}{f', budget {budget}' if stage == 'dns' else ''}):")
        for rank, (vid, score, segs) in enumerate(res.top, 1):
            seg = ("  " + "; ".join(str(s) for s in segs)) if segs else ""
            log(f"  {rank:2d}. {vid:40s} {score:7.4f}{seg}")
    if output:
        atomic_write_json(output, results, indent=1)
        log(f"\nwrote scores of {len(results)} queries to {output}")
    if failed:
        log(f"{len(failed)} queries failed: " + ", ".join(q for q, _ in failed))
    return results
