"""`dns-jax query`: video files (or ids of indexed videos) in, ranked indexed videos out.

Scores every indexed video with the coarse student, the fine student, or DnS (coarse for all, the
selector's top `budget` fraction re-scored by the fine student, its scores put on the CG scale as
recorded by the build, else the official s / 2 + 0.5), writes
`{query_id: {video_id: score}}` and prints the top results with their best-matching segments.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dns_jax.app.build import OFFLINE_BACKBONE, apply_whitening, load_networks, whitening
from dns_jax.app.segments import matching_segments
from dns_jax.app.workdir import Workdir, WorkdirError

STAGES = ("coarse", "fine", "dns")


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
        from dns_jax.index import Index
        from dns_jax.retrieval import DnS

        self.wd = Workdir(workdir)
        if not os.path.exists(self.wd.path("state.json")):
            raise WorkdirError(f"{workdir!r} is not a dns-jax work directory (no state.json); "
                               "run `dns-jax build --videos DIR --workdir WORK` first")
        self.wd.require("index")
        self.settings = self.wd.read_state()["settings"]
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
        from dns_jax.features import load_extractor
        if self._extractor is None:
            self._extractor = load_extractor(self.settings.get("backbone", OFFLINE_BACKBONE), None)
            pca = self.settings.get("pca") or self.wd.pca
            self._whiten = whitening(pca, self.settings.get("dims", 512))
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
    def search(self, query: str, stage: str = "dns", budget: float = 0.05, top: int = 10,
               segments: int = 5) -> QueryResult:
        if stage not in STAGES:
            raise QueryError(f"stage must be one of {STAGES}, got {stage!r}")
        qid, x = self.features(query)
        reps = self.dns.index([x], [qid])
        ids = self.index.ids
        if stage == "coarse":
            scores = (reps.coarse @ self.index.coarse.T)[0]
        elif stage == "fine":
            scores = self.dns.scorer.similarities([reps.fine_rep(0)], self.index.fine_reps(range(len(ids))))[0]
        else:
            scores = self.dns_scores(reps, budget)[0]
        order = np.argsort(-scores, kind="stable")[:top]
        best = []
        for rank, i in enumerate(order):
            segs = self._segments(x, ids[i]) if rank < segments else []
            best.append((ids[i], float(scores[i]), segs))
        return QueryResult(qid, {v: float(s) for v, s in zip(ids, scores)}, best)

    def dns_scores(self, reps, budget: float) -> np.ndarray:
        """DnS scores (Q, N) of indexed queries `reps` against every indexed video, in index order:
        CG cosine, or for the selector's top `budget` fraction the fine similarity (official
        s / 2 + 0.5, or spread onto the CG scale when the CG student was trained that way)."""
        from dns_jax.app.coarse_recipe import spread_scores
        res = self.dns.search(reps, self.index, budget=budget, topk=None)
        mixed = res.scores.astype(np.float64)
        if self.fine_spread:
            fine = 2.0 * mixed - 1.0                      # undo the official mapping of `rerank`
            mixed = np.where(res.reranked, spread_scores(fine, self.fine_spread), mixed)
        scores = np.empty(res.ranking.shape, np.float32)
        np.put_along_axis(scores, res.ranking, mixed, axis=1)
        return scores

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
        tmp = output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, output)
        log(f"\nwrote scores of {len(results)} queries to {output}")
    if failed:
        log(f"{len(failed)} queries failed: " + ", ".join(q for q, _ in failed))
    return results
