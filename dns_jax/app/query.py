"""`dns-jax query`: video files (or ids of indexed videos) in, ranked indexed videos out.

Scores every indexed video with the coarse student, the fine student, or DnS (coarse for all, the
selector's top `budget` fraction re-scored by the fine student, its scores put on the CG scale as
recorded by the build, else the official s / 2 + 0.5), writes
`{query_id: {video_id: score}}` and prints the top results with their best-matching segments.

No query loses the others' results: the options are checked before anything is read or written;
a query that fails (an unreadable file, an unknown id) is reported and the others are answered and
written; `output` is written atomically and never replaced by an empty result; two queries with the
same name (`a/clip.mp4`, `b/clip.mp4`) get distinct ids (`clip`, `clip#2`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dns_jax.app.build import OFFLINE_BACKBONE, load_networks
from dns_jax.app.coarse_recipe import quantile_scores, spread_scores
from dns_jax.app.workdir import Workdir, WorkdirError
from dns_jax.evaluation.vsc import matches_from_segments, matches_to_csv
from dns_jax.features import load_extractor
from dns_jax.features.pca import apply_whitening, whitening_matrices
from dns_jax.features.video import VideoError
from dns_jax.fileio import atomic_write_json, atomic_write_text
from dns_jax.index import Index, compressed
from dns_jax.index.search import check_search_options, scores_in_index_order, search_index
from dns_jax.localization import NotLocalized
from dns_jax.retrieval import DnS, FusedMapping, localize_results, stored_frames, unpack_codes


class QueryError(ValueError):
    """A query that is neither a readable video file nor an indexed id."""


@dataclasses.dataclass
class QueryResult:
    query_id: str
    scores: Dict[str, float]             # every indexed video (a faiss-ivfpq index: the top results)
    top: List[Tuple[str, float, list]]   # (video id, score, segments) of the best results; segments is
                                         # NotLocalized (empty, with its reason) for a coarse-only result


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
        selector_info = self.wd.read_state()["done"].get("selector") or {}
        self.fine_spread = selector_info.get("fine_spread")
        self.fine_quantiles = selector_info.get("fine_quantiles")
        self.coarse_weight = float(selector_info.get("coarse_weight") or 0.0)   # builds before it: 0
        self._extractor = None

    # -- query features -----------------------------------------------------------------------
    def _extract(self, path: str) -> np.ndarray:
        if self._extractor is None:
            self._extractor = load_extractor(self.settings.get("backbone", OFFLINE_BACKBONE), None)
            pca = self.settings.get("pca") or self.wd.pca
            self._whiten = whitening_matrices(pca, self.settings.get("dims", 512))
        raw = self._extractor.extract_video(path)
        return apply_whitening(raw, *self._whiten)

    @staticmethod
    def query_id(query: str) -> str:
        """The id a query's results are written under: a file's name without its extension, or
        the indexed id itself."""
        if os.path.isfile(query):
            return os.path.splitext(os.path.basename(query))[0]
        return query

    def features(self, query: str) -> Tuple[str, np.ndarray]:
        """(query id, [T, R, D] features) of a video file path or an indexed video id."""
        if os.path.isfile(query):
            return self.query_id(query), self._extract(query)
        import h5py
        with h5py.File(self.wd.features, "r") as f:
            item = f.get(query) if query else None
            if isinstance(item, h5py.Dataset):
                return query, item[()]
            if isinstance(item, h5py.Group):
                inside = sorted(f"{query}/{k}" for k in item.keys())
                raise QueryError(f"{query!r} names a folder of indexed videos, not one video; give one of its "
                                 f"videos ({', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})")
        raise QueryError(f"{query!r} is neither a video file nor the id of an indexed video")

    # -- scoring ------------------------------------------------------------------------------
    def fine_mapping(self):
        """How DnS puts re-ranked fine scores on the coarse scale: a CG student distilled with
        spread targets scores on another scale than the official s / 2 + 0.5, so the fine scores
        are mapped with what was fitted when the selector was trained: the quantile map of the two
        students' training-pair scores (builds since `selector.fine_scale`), else the spread of the
        fine scores (None: official). With the build's `selector.coarse_weight` the mapping is a
        FusedMapping: a re-ranked video keeps that share of its CG score."""
        if self.fine_quantiles:
            quantiles = self.fine_quantiles
            mapping = lambda raw: quantile_scores(raw, quantiles)  # noqa: E731
        elif self.fine_spread:
            spread = self.fine_spread
            mapping = lambda raw: spread_scores(raw, spread)  # noqa: E731
        else:
            mapping = None
        return FusedMapping(mapping, self.coarse_weight) if self.coarse_weight else mapping

    def search(self, query: str, stage: str = "dns", budget: float = 0.05, top: int = 10,
               segments: int = 5, query_id: Optional[str] = None, pair_matrices: bool = True) -> QueryResult:
        """Scores of every indexed video for one query; `top` results (0: all) with the matching
        segments of the first `segments`, localized by the search itself on the frame-to-frame
        matrices of its fine stage (`search_index(segments=...)`). A result the budget left to the
        coarse stage has no such matrix: with `pair_matrices` (default) its pair's matrix is
        computed here (`_segments`), else it keeps the search's NotLocalized marker. `query_id`
        overrides the id the result is filed under."""
        try:
            check_search_options(stage, budget, top)
        except ValueError as e:
            raise QueryError(str(e)) from None
        qid, x = self.features(query)
        qid = query_id or qid
        reps = self.dns.index([x], [qid])
        ids = self.index.ids
        shown = top or len(ids)
        # a faiss-ivfpq index ranks a pool of candidates sized for the top results, not every video
        pool_only = compressed.ranks_candidates_only(self.index)
        res = search_index(self.dns, self.index, reps, stage, budget, topk=shown if pool_only else None,
                           fine_mapping=self.fine_mapping(), segments=min(segments, shown))
        scores = scores_in_index_order(res, 0, len(ids))
        found = list(res.segments[0]) if res.segments else []
        missing = [r for r, segs in enumerate(found) if isinstance(segs, NotLocalized)] if pair_matrices else []
        if missing:        # results the fine stage did not score: their pairs' matrices, in one call
            for r, segs in zip(missing, self._pair_segments(x, reps.fine_rep(0),
                                                            [int(res.ranking[0][r]) for r in missing])):
                found[r] = segs
        best = []
        for rank, (i, score) in enumerate(zip(res.ranking[0][:shown], res.scores[0][:shown])):
            best.append((ids[i], float(score), found[rank] if rank < len(found) else []))
        return QueryResult(qid, {v: float(s) for v, s in zip(ids, scores) if not np.isnan(s)}, best)

    def dns_scores(self, reps, budget: float) -> np.ndarray:
        """DnS scores (Q, N) of indexed queries `reps` against every indexed video, in index order."""
        res = search_index(self.dns, self.index, reps, "dns", budget, topk=None, fine_mapping=self.fine_mapping())
        return np.stack([scores_in_index_order(res, q, len(self.index)) for q in range(len(reps))])

    def frames(self, video_id: str) -> int:
        """Frames of an indexed video's features (its real length: stored representations of short
        videos are repeated to 4 frames)."""
        import h5py
        with h5py.File(self.wd.features, "r") as f:
            if video_id in f and hasattr(f[video_id], "shape"):
                return int(f[video_id].shape[0])
        return len(self.features(video_id)[1])

    def _pair_segments(self, query: np.ndarray, query_rep, positions: Sequence[int]) -> List[list]:
        """Segments of query features [T, R, D] (indexed: `query_rep`) and the indexed videos at
        `positions`, localized as search results are, on their frame-to-frame matrices computed
        here in one call (the frame-to-frame similarity of one query frame and one target frame
        does not depend on the other frames, so the targets are scored concatenated, padded to a
        ladder size: few compilations; `FineScorer.frame_matrices`)."""
        reps = {p: self.index.fine_rep(p) for p in positions}
        mats = dict(zip(positions, self.dns.scorer.frame_matrices(query_rep, list(reps.values()))))
        repeated = self.dns.scorer.comparator
        return localize_results(np.asarray([positions]), len(positions), lambda _, j: mats[j], [len(query)],
                                lambda j: stored_frames(reps[j], repeated))[0]

    def _segments(self, query: np.ndarray, video_id: str, query_rep=None, position: Optional[int] = None):
        """Copied segments of query features [T, R, D] and an indexed video, in seconds (1 frame/s;
        frame i covers [i, i + 1)), localized as search results are (`retrieval.localize_results`:
        the temporal network on the fine student's frame-to-frame similarities, the threshold from
        the pair's own background), on this pair's matrix computed here: for a result the fine
        stage did not score (a search localizes the others on the matrices of its fine stage).
        With `query_rep` and `position`, the stored representations (no indexing again; packed
        FG-Bin codes unpacked to +-1)."""
        if query_rep is not None and position is not None:
            q, t = query_rep, self.index.fine_rep(position)
            if np.asarray(t).dtype == np.uint8:
                q, t = unpack_codes(q), unpack_codes(t)
            target_frames = self.frames(video_id)
        else:
            _, target = self.features(video_id)
            q, t = self.fine.index_video(query), self.fine.index_video(target)
            target_frames = len(target)
        f2f = np.asarray(self.fine.frame_to_frame_similarity(q, t))
        return localize_results(np.zeros((1, 1), np.int64), 1, lambda *_: f2f, [len(query)],
                                lambda _: target_frames)[0][0]


def check_query_options(stage: str, budget: float, top: int, output: Optional[str] = None) -> None:
    """ValueError naming the first bad option (a budget outside [0, 1] or NaN, a negative `top`,
    an `output` that is a folder or lies in a missing one): checked before any work is done."""
    check_search_options(stage, budget, top)
    if output:
        path = os.path.abspath(output)
        if os.path.isdir(path):
            raise ValueError(f"--output {output!r} is a folder; give a file name (e.g. scores.json)")
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"--output {output!r}: the folder {os.path.dirname(path)!r} does not exist")


def unique_query_ids(names: Sequence[str]) -> List[str]:
    """Distinct ids for the queries, in order: a name met again becomes `name#2`, `name#3`, ..."""
    used, out = set(), []
    for name in names:
        qid, k = name, 1
        while qid in used:
            k += 1
            qid = f"{name}#{k}"
        used.add(qid)
        out.append(qid)
    return out


# A query that fails for these reasons is the query's fault (a bad file or id); anything else is
# reported with its type, so that a bug is not mistaken for bad input. Either way the other
# queries are answered.
_QUERY_ERRORS = (QueryError, VideoError, ValueError, KeyError, OSError)


def _reason(e: Exception) -> str:
    msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    return msg if isinstance(e, _QUERY_ERRORS) and msg else f"{type(e).__name__}: {msg}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclasses.dataclass
class QueryRun:
    results: Dict[str, Dict[str, float]]     # {query id: {video id: score}} of the answered queries
    failed: List[Tuple[str, str]]            # (query as given, why it failed)


OUTPUT_FORMATS = ("json", "vsc")


def segment_dict(s) -> Dict[str, float]:
    """The five fields of a matched segment as the API and the JSON output give them."""
    return {"query_start": float(s.query_start), "query_end": float(s.query_end),
            "target_start": float(s.target_start), "target_end": float(s.target_end), "score": float(s.score)}


def answer_queries(workdir: str, queries: Sequence[str], stage: str = "dns", budget: float = 0.05,
                   output: Optional[str] = None, top: int = 10, log: Callable[[str], None] = print,
                   warn: Callable[[str], None] = _stderr, segments: bool = False,
                   output_format: str = "json") -> QueryRun:
    """Answer every query (or report why it cannot be answered); write the answered ones to
    `output` atomically, leaving an existing file alone when no query was answered: as JSON
    `{query_id: {video_id: score}}` (with `segments`: `{query_id: {"scores": {...}, "segments":
    {video_id: [{query_start, query_end, target_start, target_end, score}, ...]}}}` for the `top`
    results), or as the VSC22 matching CSV (`output_format='vsc'`: one row per copied segment of
    the top results). `log` gets the ranked results, `warn` one line per failed query and a last
    line counting them. Bad options raise ValueError before anything is read or written."""
    check_query_options(stage, budget, top, output)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    localize_top = segments or output_format == "vsc"
    if not queries:
        raise ValueError("no query given: name video files or ids of indexed videos")
    searcher = Searcher(workdir)
    ids = unique_query_ids([searcher.query_id(q) for q in queries])
    results, failed, found = {}, [], {}
    for q, qid in zip(queries, ids):
        try:
            res = searcher.search(q, stage, budget, top, query_id=qid,
                                  segments=(top or len(searcher.index)) if localize_top else 5)
        except Exception as e:  # noqa: BLE001 -- every query is answered or reported, see _reason
            failed.append((q, _reason(e)))
            warn(f"query {q}: FAILED: {failed[-1][1]}")
            continue
        results[res.query_id] = res.scores
        found[res.query_id] = {vid: segs for vid, _, segs in res.top if segs}
        named = f" (query {q})" if res.query_id != searcher.query_id(q) else ""
        log(f"\nquery {res.query_id}{named} ({stage}{f', budget {budget}' if stage == 'dns' else ''}):")
        for rank, (vid, score, segs) in enumerate(res.top, 1):
            seg = ("  " + "; ".join(str(s) for s in segs)) if segs else ""
            log(f"  {rank:2d}. {vid:40s} {score:7.4f}{seg}")
    if output and results:
        if output_format == "vsc":
            matches = [m for qid in results for vid, segs in found[qid].items()
                       for m in matches_from_segments(qid, vid, segs)]
            atomic_write_text(output, matches_to_csv(matches))
            log(f"\nwrote {len(matches)} matched segments of {len(results)} queries to {output} (VSC22 CSV)")
        else:
            payload = results if not segments else {
                qid: {"scores": scores, "segments": {vid: [segment_dict(s) for s in segs]
                                                     for vid, segs in found[qid].items()}}
                for qid, scores in results.items()}
            atomic_write_json(output, payload, indent=1)
            log(f"\nwrote scores of {len(results)} queries to {output}")
    elif output:
        warn(f"no query was answered: {output} is left as it was")
    if failed:
        warn(f"{len(failed)} of {len(queries)} queries failed: " + ", ".join(q for q, _ in failed))
    return QueryRun(results, failed)


def run_query(workdir: str, queries: Sequence[str], stage: str = "dns", budget: float = 0.05,
              output: Optional[str] = None, top: int = 10, log: Callable[[str], None] = print,
              warn: Callable[[str], None] = _stderr) -> Dict[str, Dict[str, float]]:
    """`answer_queries`, returning the scores of the answered queries only."""
    return answer_queries(workdir, queries, stage, budget, output, top, log, warn).results
