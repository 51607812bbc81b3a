"""`score`, `rerank` and the DnS retrieval pipeline (coarse for all, selector, fine for a budget).

Score conventions (official `evaluation_dns.py`, dns_spec section 10):
- coarse similarities are raw cosines of the CG vectors;
- fine similarities are computed in [-1, 1] and mapped to s/2 + 0.5 before mixing;
- per query, the database videos are ranked by selector score (descending, stable) and the first
  int(budget * N) take the mapped fine similarity, the others keep the coarse one.

A budget is a fraction of the database (a float in [0, 1], the official convention) or a number of
videos per query (an int >= 1, at most N); `budget_count` turns either into the count.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
import time
import warnings
import weakref
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax.localization import (
    COARSE_ONLY,
    LocalizationError,
    NotLocalized,
    check_matrix,
    frame_times,
    localize_batch,
)
from dns_jax.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLHead
from dns_jax.retrieval import selector as selector_lib
from dns_jax.retrieval.coarse import (
    CoarseDatabase,
    ShortlistCoarseDatabase,
    coarse_scores,
    top_pairs,
    vector_blocks,
    vector_segments,
)
from dns_jax.retrieval.fine import (
    MIN_FRAMES,
    FineScorer,
    ResidentDatabase,
    repeat_min_frames,
    repeated_length,
    scorer_for,
)
from dns_jax.retrieval.layout import ladder_size, pow2_size
from dns_jax.validation import FeatureError, check_video

COARSE_BATCH_FRAMES = 8192
RESIDENT_FRACTION = 0.25      # DnS keeps the fine representations on the device up to this share of its memory


def _as_video_list(database, name="database") -> List:
    if isinstance(database, np.ndarray) and database.ndim == 4:
        database = list(database)
    if database is None or isinstance(database, (str, bytes)) or not hasattr(database, "__len__"):
        raise FeatureError(f"{name} must be a list of [T, R, D] videos")
    if len(database) == 0:
        raise FeatureError(f"empty {name}: nothing to score")
    return list(database)


def coarse_index(model, videos: Sequence) -> np.ndarray:
    """Raw region features of N videos -> (N, E) CG vectors. Videos are padded into length
    buckets and indexed in masked batches (the CG student's masks make this equal to indexing each
    video alone, up to float rounding); videos under 4 frames are repeated first, as officially."""
    if not isinstance(model.module, CoarseGrainedStudent):
        raise TypeError(f"expected a coarse-grained student, got {model.name!r}")
    arrs = [repeat_min_frames(check_video(v, model.module.dims, f"video {i}"), MIN_FRAMES)
            for i, v in enumerate(videos)]
    out = None
    groups = {}
    for i, a in enumerate(arrs):
        groups.setdefault((ladder_size(a.shape[0]), a.shape[1]), []).append(i)
    for (size, r), idx in sorted(groups.items()):
        per_call = max(1, COARSE_BATCH_FRAMES // size)
        per_call = min(per_call, pow2_size(len(idx), 1))
        for s in range(0, len(idx), per_call):
            batch = idx[s:s + per_call]
            x = np.zeros((per_call, size, r, model.module.dims), np.float32)
            m = np.zeros((per_call, size), np.float32)
            m[:, :4] = 1  # dummy rows stay finite
            for k, i in enumerate(batch):
                t = arrs[i].shape[0]
                x[k, :t] = arrs[i]
                m[k] = 0
                m[k, :t] = 1
            v = np.asarray(model.apply("index_video", jnp.asarray(x), jnp.asarray(m)))
            if out is None:
                out = np.zeros((len(arrs), v.shape[1]), np.float32)
            out[batch] = v[:len(batch)]
    return out


def score(model, query, database, *, indexed: bool = False, binary: str = "packed") -> np.ndarray:
    """Similarity of one query video to every database video -> float32 (N,).

    `model`: a network from `dns_jax.pretrained.load` (FG-Att / FG-Bin / FG student, ViSiL teacher,
    or the CG student). `query`: one video, `database`: a list of N videos of any lengths.

    By default (`indexed=False`) videos are raw region features [T, R, D] (as stored in the
    official HDF5 files) and are indexed here; the result equals
    `[model.calculate_video_similarity(model.index_video(query), model.index_video(t)) for t in
    database]` on the official evaluation path (short videos repeated to 4 frames, targets over 2048
    frames scored by chunks and averaged), computed by the batched canvas kernel.
    With `indexed=True` they are already indexed representations (`model.index_video` outputs;
    for FG-Bin also packed uint8 codes from `dns_jax.retrieval.binary.pack_codes` or an index).
    For the CG student the result is the cosine of the CG vectors (indexed: [E] or [1, E] vectors).
    FG-Bin is scored on packed codes (XOR + popcount) unless `binary='float'`; both are identical.
    """
    database = _as_video_list(database)
    module = model.module
    if isinstance(module, SelectorNetwork):
        raise TypeError("the selector does not score video pairs; use dns_jax.retrieval.selector")
    if isinstance(module, CoarseGrainedStudent):
        if indexed:
            q = np.asarray(query, np.float32).reshape(1, -1)
            db = np.stack([np.asarray(t, np.float32).reshape(-1) for t in database])
        else:
            if np.ndim(query) == 4:
                raise FeatureError("query must be one video [T, R, D], got a batch")
            q = coarse_index(model, [query])
            db = coarse_index(model, database)
        return coarse_scores(q, db, vector_blocks(model), top=top_pairs(model))[0]
    if not isinstance(module, (FineGrainedStudent, ViSiLHead)):
        raise TypeError(f"cannot score with {model.name!r}")
    if np.ndim(query) != 3:
        raise FeatureError(f"query must be one video [T, R, D], got shape {np.shape(query)}")
    scorer = scorer_for(model, binary)
    if indexed:
        return scorer.similarities([query], database)[0]
    reps = scorer.index([query] + database)
    return scorer.similarities(reps[:1], reps[1:])[0]


def check_budget(budget) -> None:
    """ValueError unless `budget` is a fraction (a float in [0, 1]) or a number of videos (an int >= 0)."""
    budget_count(budget, 0)


def budget_count(budget, n: int) -> int:
    """Videos re-ranked per query out of `n`: a float in [0, 1] is a fraction (int(budget * n), the
    official rounding); an int is a number of videos (>= 1; at most n; 0 re-ranks none). Note that
    `1` is one video and `1.0` every video."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a fraction in [0, 1] or a number of videos >= 1, got {budget!r}")
    if isinstance(budget, numbers.Integral):
        if budget < 0:
            raise ValueError(f"budget must be a number of videos >= 1 (or a fraction in [0, 1]), got {budget!r}")
        return min(int(budget), int(n))
    if not 0.0 <= float(budget) <= 1.0:      # NaN fails too
        raise ValueError(f"budget must be a fraction in [0, 1] (or a whole number of videos >= 1), got {budget!r}")
    return int(budget * n)          # the official rounding, in the budget's own type


def rerank(coarse, fine, selector_scores, budget, *, fine_mapped: bool = False,
           mask=None) -> np.ndarray:
    """Mix coarse and fine similarities as the official DnS evaluation does -> (Q, N).

    coarse, fine, selector_scores: (Q, N) (or (N,) for one query). For each query, the available
    database videos (`mask`, default all) are ordered by descending selector score (stable sort) and
    the first int(budget * N_available) (a fraction; an int budget is a number of videos, see
    `budget_count`) take the fine similarity, the rest keep the coarse one.
    `fine` holds raw fine similarities in [-1, 1] (what `score` returns) and is mapped to s/2 + 0.5
    here, the official convention; pass `fine_mapped=True` if it is already mapped (as in the
    official script's `fine_similarities`). Entries of `fine` that are not selected are never read
    (they may be NaN). The dtype follows the inputs (float64 stays float64).
    """
    c = np.asarray(coarse)
    f = np.asarray(fine)
    s = np.asarray(selector_scores)
    one = c.ndim == 1
    c, f, s = np.atleast_2d(c), np.atleast_2d(f), np.atleast_2d(s)
    if not (c.shape == f.shape == s.shape) or c.ndim != 2:
        raise ValueError(f"coarse, fine and selector_scores must have one shape (Q, N); got {c.shape}, "
                         f"{f.shape}, {s.shape}")
    check_budget(budget)
    avail = np.ones(c.shape[1], bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if avail.shape[0] != c.shape[1]:
        raise ValueError(f"mask must have N = {c.shape[1]} entries, got {avail.shape[0]}")
    n_fine = budget_count(budget, int(np.sum(avail)))
    out = np.array(c, dtype=np.result_type(c.dtype, f.dtype), copy=True)
    if n_fine:
        cols = np.flatnonzero(avail)
        for q in range(c.shape[0]):
            order = np.argsort(-s[q, cols], kind="stable")[:n_fine]
            idx = cols[order]
            vals = f[q, idx]
            out[q, idx] = vals if fine_mapped else vals / 2.0 + 0.5
    return out[0] if one else out


@dataclasses.dataclass(frozen=True)
class FusedMapping:
    """A `fine_mapping` that also keeps part of the coarse score: a re-ranked pair scores
    coarse_weight x coarse + (1 - coarse_weight) x mapping(fine) (`mixed_scores`), so the CG
    student's evidence is not thrown away where the fine student ranks worse (the build's
    `selector.coarse_weight`). `mapping`: raw fine similarities -> the coarse scale (None: the
    official s / 2 + 0.5). Called alone it is `mapping`."""
    mapping: Optional[Callable[[np.ndarray], np.ndarray]]
    coarse_weight: float

    def __post_init__(self):
        if not 0.0 <= float(self.coarse_weight) < 1.0:
            raise ValueError(f"coarse_weight must be in [0, 1), got {self.coarse_weight!r}")

    def __call__(self, raw):
        raw = np.asarray(raw, np.float32)
        return raw / 2.0 + 0.5 if self.mapping is None else np.asarray(self.mapping(raw), np.float32)


def mixed_scores(fine, coarse, fine_mapping=None) -> np.ndarray:
    """DnS scores of re-ranked pairs: raw fine similarities (any shape, in [-1, 1]) on the coarse
    scale, the official s / 2 + 0.5 or `fine_mapping(fine)`; a FusedMapping also mixes in its
    share of the pairs' `coarse` scores (same shape). float32."""
    f = np.asarray(fine, np.float32)
    mapped = f / 2.0 + 0.5 if fine_mapping is None else np.asarray(fine_mapping(f), np.float32)
    w = float(getattr(fine_mapping, "coarse_weight", 0.0) or 0.0)
    if w:
        if coarse is None:
            raise ValueError("a FusedMapping mixes in the pairs' coarse scores: pass them")
        mapped = (w * np.asarray(coarse, np.float32) + (1.0 - w) * mapped).astype(np.float32)
    return mapped


def selection(selector_scores, budget) -> np.ndarray:
    """Indices (Q, budget_count(budget, N)) of the videos re-ranked by the fine student, per query:
    int(budget * N) for a fraction, min(budget, N) for a number of videos."""
    s = np.atleast_2d(np.asarray(selector_scores))
    n_fine = budget_count(budget, s.shape[1])
    return np.argsort(-s, axis=1, kind="stable")[:, :n_fine]


def rank_pool(cand, coarse, chosen, fine, k: int, fine_mapping=None):
    """One query's pool ranked by mixed score: cand (C,) positions, coarse (C,), chosen (n,) pool
    columns re-scored, fine (n,) their raw fine similarities (None when n = 0) -> (positions (k,),
    mixed scores (k,), re-ranked flags (k,)), ties to the lower pool column."""
    mixed = np.array(coarse, np.float32, copy=True)
    if fine is not None and len(chosen):
        mixed[chosen] = mixed_scores(fine, mixed[chosen], fine_mapping)
    top = np.argsort(-mixed, kind="stable")[:k]
    return cand[top], mixed[top], np.isin(top, chosen)


# ------------------------------------------------------------------------------------------------
# the pipeline

@dataclasses.dataclass
class Representations:
    """Indexed videos of one set: fine representations (list), CG vectors (N, E), selector
    self-similarities (N,), ids. `fine_rep(i)` gives the fine representation of video i."""

    ids: List[str]
    fine: List
    coarse: np.ndarray
    selfsim: np.ndarray

    def __len__(self):
        return len(self.ids)

    def fine_rep(self, i: int):
        return self.fine[i]

    def fine_reps(self, idx) -> List:
        return [self.fine_rep(int(i)) for i in idx]


@dataclasses.dataclass
class SearchResults:
    """Per query: the database order by mixed score (top-k), the mixed scores, which were re-ranked;
    with `segments=K` asked of the search, the copied segments of the first K results."""

    query_ids: List[str]
    ranking: np.ndarray          # (Q, k) database indices, best first
    scores: np.ndarray           # (Q, k) mixed scores
    reranked: np.ndarray         # (Q, k) bool: took the fine similarity
    timings: dict
    # segments[q][r]: the copied segments (dns_jax.localization.Segment, seconds) of ranking[q][r]
    # for r < K, or NotLocalized(reason) for a result without a frame-level matrix (coarse only)
    segments: Optional[List[List]] = None


# How search results are localized (`localize` options): the fine student's similarities have no
# fixed scale, so the matching threshold comes from each pair's own background; frame i covers
# [i, i + 1) s at DnS's 1 frame/s.
SEGMENT_OPTIONS = {"method": "tn", "threshold": "relative", "anchor": "start", "min_length": 2}


def stored_frames(rep, repeated: bool = True) -> int:
    """Frames of the video a stored fine representation [T, ...] was indexed from. A comparator
    network's index repeats a video shorter than 4 frames (doubled until it has 4: 1 -> 4, 2 -> 4,
    3 -> 6); with `repeated`, identical halves of such a length are taken for that repetition (a
    real 4-frame video made of one 2-frame shot twice is then reported 2 frames long, its content
    unchanged)."""
    a = np.asarray(rep)
    full = t = int(a.shape[0])
    while repeated and t % 2 == 0 and t > 1 and repeated_length(t // 2) == full \
            and np.array_equal(a[:t // 2], a[t // 2:t]):
        t //= 2
    return t


def localize_results(ranking: np.ndarray, count: int, matrices: Callable, query_frames: Sequence[int],
                     target_frames: Callable[[int], int], options: Optional[dict] = None) -> List[List]:
    """Copied segments of the first `count` results of each query: ranking (Q, k) database
    indices; matrices(q, j) -> the [Tq', Tt'] frame-to-frame matrix the fine stage computed for
    query q and database video j (the kernel's frames: short videos repeated), or None where the
    result was not scored by it; query_frames[q] / target_frames(j): real frame counts (1 frame/s).
    -> per query, per result: a list of Segments (seconds, inside both videos) or
    NotLocalized(COARSE_ONLY), or NotLocalized(why) for a matrix that cannot be localized (empty,
    all NaN). One batched `localize_batch` call for all the pairs (NaN cells: non-matching)."""
    opts = dict(SEGMENT_OPTIONS, **(options or {}))
    out = [[None] * min(int(count), ranking.shape[1]) for _ in range(ranking.shape[0])]
    todo = {}            # min_length -> [(q, r, matrix, query frames, target frames)]
    for q, row in enumerate(out):
        for r in range(len(row)):
            j = int(ranking[q, r])
            m = matrices(q, j)
            if m is None:
                row[r] = NotLocalized(COARSE_ONLY)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)     # localize_batch warns once
                    check_matrix(m)
            except LocalizationError as e:          # empty, all-NaN: the reason, not a crash
                row[r] = NotLocalized(str(e))
                continue
            # a target over 2048 frames loses a tail chunk too short to score: its frames end earlier
            tq, tt = min(int(query_frames[q]), m.shape[0]), min(int(target_frames(j)), m.shape[1])
            short = min(tq, tt) < opts["min_length"]
            todo.setdefault(1 if short else opts["min_length"], []).append((q, r, m, tq, tt))
    for min_length, pairs in todo.items():
        found = localize_batch([m for _, _, m, _, _ in pairs], **dict(opts, min_length=min_length),
                               query_times=[frame_times(tq) for _, _, _, tq, _ in pairs],
                               target_times=[frame_times(tt) for _, _, _, _, tt in pairs])
        for (q, r, *_), segs in zip(pairs, found):
            out[q][r] = segs
    return out


def device_memory_bytes(device=None) -> int:
    """Memory of a JAX device: an accelerator's allocator limit, or the host's RAM for a CPU device."""
    device = device or jax.local_devices()[0]
    if device.platform != "cpu":
        try:
            return int((device.memory_stats() or {}).get("bytes_limit", 0))
        except Exception:        # a backend without memory statistics
            return 0
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def fine_bytes(database) -> Optional[int]:
    """Bytes of a database's fine representations (an Index's shards, a Representations' list), or
    None when the database does not say."""
    if hasattr(database, "shards"):
        return int(sum(s.fine.nbytes for s in database.shards))
    if isinstance(getattr(database, "fine", None), list):
        return int(sum(np.asarray(f).nbytes for f in database.fine))
    return None


class DnS:
    """Distill-and-Select retrieval with three loaded networks (`dns_jax.pretrained.load`).

    `resident`: keep the database's fine representations on the device (FineScorer.resident) so
    that each query's selected videos are laid out there, at the cost of a prepared database,
    instead of being copied from the host per query. None (default): when they take at most
    RESIDENT_FRACTION of the device's memory (of the host's RAM on CPU); True / False: always / never.
    A database may also bring its own copy (a `resident_fine` attribute holding a ResidentDatabase).
    Either way the scores are the same, bit for bit."""

    def __init__(self, fine_model, coarse_model, selector_model, binary: str = "packed",
                 resident: Optional[bool] = None):
        if not isinstance(fine_model.module, (FineGrainedStudent, ViSiLHead)):
            raise TypeError(f"fine_model must be a fine-grained student, got {fine_model.name!r}")
        if not isinstance(coarse_model.module, CoarseGrainedStudent):
            raise TypeError(f"coarse_model must be the coarse-grained student, got {coarse_model.name!r}")
        if not isinstance(selector_model.module, SelectorNetwork):
            raise TypeError(f"selector_model must be the selector network, got {selector_model.name!r}")
        self.fine_model, self.coarse_model, self.selector_model = fine_model, coarse_model, selector_model
        self.scorer: FineScorer = scorer_for(fine_model, binary)
        self._coarse_db = None
        self._coarse_db_key = None
        self._shortlist: Optional[ShortlistCoarseDatabase] = None
        self.resident = resident
        self._fine_db: Optional[ResidentDatabase] = None
        self._fine_db_key = None

    def index(self, videos: Sequence, ids: Optional[Sequence[str]] = None) -> Representations:
        """Raw region features -> Representations (what an on-disk index stores)."""
        videos = _as_video_list(videos, "videos")
        ids = [str(i) for i in range(len(videos))] if ids is None else [str(i) for i in ids]
        return Representations(ids=ids, fine=self.scorer.index(videos),
                               coarse=coarse_index(self.coarse_model, videos),
                               selfsim=selector_lib.self_similarities(self.selector_model, videos))

    def coarse_database(self, database, dtype="float32") -> CoarseDatabase:
        key = (id(database), len(database), str(dtype))
        if self._coarse_db_key != key:
            self._coarse_db = CoarseDatabase(database.coarse, dtype=dtype, blocks=vector_blocks(self.coarse_model),
                                             top=top_pairs(self.coarse_model))
            self._coarse_db_key = key
        return self._coarse_db

    def check_shortlist(self) -> None:
        """FeatureError unless the CG student has region vectors (the shortlist's first stage needs them)."""
        if vector_blocks(self.coarse_model) == 1:
            raise FeatureError(f"the shortlist coarse search needs a region-vector CG student (coarse.kind "
                               f"'region_max'); {self.coarse_model.name!r} has one vector per video: search it "
                               f"exactly or with faiss-ivfpq")

    def shortlist_database(self, database, dtype="float32") -> ShortlistCoarseDatabase:
        """The two-stage coarse search of `database` (`ShortlistCoarseDatabase`), sharing the exact
        database of `coarse_database`; only for a region-vector CG student (FeatureError otherwise)."""
        self.check_shortlist()
        exact = self.coarse_database(database, dtype)
        if self._shortlist is None or self._shortlist.exact is not exact:
            self._shortlist = None
            self._shortlist = ShortlistCoarseDatabase(exact, vector_segments(self.coarse_model),
                                                      vectors=np.asarray(database.coarse, np.float32))
        return self._shortlist

    def fine_database(self, database) -> Optional[ResidentDatabase]:
        """The resident copy of `database`'s fine representations that `search` gathers from (built
        on first use, rebuilt when the database changes), or None where it is not kept resident."""
        if self.resident is False:
            return None
        own = getattr(database, "resident_fine", None)       # a database that brings its own resident copy
        if isinstance(own, ResidentDatabase):
            return own
        # an Index replaces its manifest object on every change: compared by identity (held here)
        version = getattr(database, "manifest", None)
        if (self._fine_db is not None and self._fine_db_key[0]() is database
                and self._fine_db_key[1] == len(database) and self._fine_db_key[2] is version):
            return self._fine_db
        if self.resident is None:
            size = fine_bytes(database)
            limit = RESIDENT_FRACTION * device_memory_bytes(self.scorer.devices[0])
            if size is None or size > limit:
                return None
        self._fine_db = None                       # free the previous copy first
        self._fine_db = self.scorer.resident(database)
        self._fine_db_key = (weakref.ref(database), len(database), version)
        return self._fine_db

    def pool_selection(self, queries: Representations, database, candidates, coarse, budget):
        """The selection of `search_candidates`: -> (candidates (Q, C) sorted by database position,
        their coarse (Q, C), per query the pool columns (n_fine,) the selector picks, best first (ties
        to the lower position; n_fine = budget_count(budget, N), at most C), selector seconds)."""
        n = len(database)
        cand = np.asarray(candidates, np.int64)
        c = np.asarray(coarse, np.float32)
        if cand.ndim != 2 or c.shape != cand.shape or cand.shape[0] != len(queries):
            raise ValueError(f"candidates and coarse must be (Q, C) with Q = {len(queries)}; got "
                             f"{cand.shape} and {c.shape}")
        if cand.size and (cand.min() < 0 or cand.max() >= n):
            raise ValueError(f"candidate positions must be in [0, {n})")
        order = np.argsort(cand, axis=1, kind="stable")
        cand, c = np.take_along_axis(cand, order, 1), np.take_along_axis(c, order, 1)
        n_fine = min(budget_count(budget, n), cand.shape[1])
        t0 = time.perf_counter()
        selfsim = np.asarray(database.selfsim)
        chosen = []
        for qi in range(len(queries)):
            sel = selector_lib.selector_scores(self.selector_model, queries.selfsim[qi:qi + 1],
                                               selfsim[cand[qi]], c[qi:qi + 1])[0]
            chosen.append(np.argsort(-sel, kind="stable")[:n_fine])
        return cand, c, chosen, time.perf_counter() - t0

    def search_candidates(self, queries: Representations, database, candidates, coarse, budget=0.1,
                          topk: Optional[int] = 100, progress: Optional[Callable] = None,
                          fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                          segments: int = 0, localize_options: Optional[dict] = None) -> SearchResults:
        """DnS over a pool of candidates per query (an approximate coarse stage's): `candidates`
        (Q, C) distinct database positions per row, `coarse` (Q, C) their CG cosines. The selector
        scores the candidates only; the first budget_count(budget, N) of them by selector score (N
        the whole database; at most C) are re-scored by the fine student; the candidates are ranked
        by mixed score (top-k of C). A video outside a query's pool is not ranked. With every video
        in the pool this is `search` (candidates are taken in database order, ties as there).
        `segments` / `localize_options`: as in `search`."""
        n = len(database)
        cand, c, chosen, t_sel = self.pool_selection(queries, database, candidates, coarse, budget)
        n_fine = min(budget_count(budget, n), cand.shape[1])
        k = cand.shape[1] if topk is None else int(min(topk, cand.shape[1]))
        ranking = np.zeros((len(queries), k), np.int64)
        scores = np.zeros((len(queries), k), np.float32)
        reranked = np.zeros((len(queries), k), bool)
        resident = self.fine_database(database) if n_fine else None
        t_fine = 0.0
        kept: List[Optional[tuple]] = [None] * len(queries)     # per query: (FrameMatrices, {video: column})
        for qi in range(len(queries)):
            t1 = time.perf_counter()
            f = None
            if n_fine:
                idx = cand[qi, chosen[qi]]
                targets = resident.subset(idx) if resident is not None else database.fine_reps(idx)
                out = self.scorer.similarities([queries.fine_rep(qi)], targets, frame_matrices=segments > 0)
                if segments > 0:
                    out, matrices = out
                    kept[qi] = (matrices, {int(j): col for col, j in enumerate(idx)})
                f = out[0]
            ranking[qi], scores[qi], reranked[qi] = rank_pool(cand[qi], c[qi], chosen[qi], f, k, fine_mapping)
            t_fine += time.perf_counter() - t1
            if progress is not None:
                progress(1)
        nq = max(len(queries), 1)
        timings = {"selector_s_per_query": t_sel / nq, "fine_s_per_query": t_fine / nq,
                   "fine_pairs_per_query": n_fine, "candidates_per_query": cand.shape[1]}
        found = None
        if segments > 0:
            t0 = time.perf_counter()
            found = self.localize_results(ranking, segments, kept, queries, database, localize_options)
            timings["localize_s_per_query"] = (time.perf_counter() - t0) / nq
        return SearchResults(query_ids=list(queries.ids), ranking=ranking, scores=scores, reranked=reranked,
                             timings=timings, segments=found)

    def search(self, queries: Representations, database, budget: float = 0.1, topk: Optional[int] = 100,
               coarse_dtype="float32", progress: Optional[Callable] = None,
               fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               segments: int = 0, localize_options: Optional[dict] = None) -> SearchResults:
        """Coarse similarities to every database video, selector scores, the top `budget` (a fraction
        of the database, or an int: a number of videos; per query, by selector score) re-scored by
        the fine student; ranked by the mixed score. The selected videos are gathered from the
        resident copy of the database where one is kept (see `resident`).
        `fine_mapping`: raw fine similarities [-1, 1] -> the coarse scale (default: the official
        s / 2 + 0.5).
        `segments`: localize the first `segments` results of each query on the frame-to-frame
        matrices the fine stage computed (kept for the call, not computed again): results.segments,
        see `localize_results` (`localize_options` override SEGMENT_OPTIONS); a result the budget
        left to the coarse stage is NotLocalized(COARSE_ONLY)."""
        n = len(database)
        if n == 0:
            raise FeatureError("empty database")
        t0 = time.perf_counter()
        coarse = self.coarse_database(database, coarse_dtype).similarities(queries.coarse)
        t1 = time.perf_counter()
        sel = selector_lib.selector_scores(self.selector_model, queries.selfsim, database.selfsim, coarse)
        t2 = time.perf_counter()
        chosen = selection(sel, budget)
        fine = np.full(coarse.shape, np.nan, np.float32)
        resident = self.fine_database(database) if chosen.shape[1] else None
        kept: List[Optional[tuple]] = [None] * len(queries)     # per query: (FrameMatrices, {video: column})
        for qi in range(len(queries)):
            idx = chosen[qi]
            if len(idx):
                targets = resident.subset(idx) if resident is not None else database.fine_reps(idx)
                out = self.scorer.similarities([queries.fine_rep(qi)], targets, frame_matrices=segments > 0)
                if segments > 0:
                    out, matrices = out
                    kept[qi] = (matrices, {int(j): c for c, j in enumerate(idx)})
                fine[qi, idx] = out[0]
            if progress is not None:
                progress(1)
        t3 = time.perf_counter()
        if fine_mapping is None:
            mixed = rerank(coarse, fine, sel, budget)
        else:
            mapped = mixed_scores(np.nan_to_num(fine), coarse, fine_mapping)
            mixed = rerank(coarse, np.where(np.isnan(fine), np.nan, mapped).astype(np.float32), sel, budget,
                           fine_mapped=True)
        k = n if topk is None else int(min(topk, n))
        ranking = np.argsort(-mixed, axis=1, kind="stable")[:, :k]
        reranked = np.zeros(coarse.shape, bool)
        np.put_along_axis(reranked, chosen, True, axis=1)
        nq = max(len(queries), 1)
        timings = {"coarse_s_per_query": (t1 - t0) / nq, "selector_s_per_query": (t2 - t1) / nq,
                   "fine_s_per_query": (t3 - t2) / nq, "fine_pairs_per_query": chosen.shape[1]}
        found = None
        if segments > 0:
            found = self.localize_results(ranking, segments, kept, queries, database, localize_options)
            timings["localize_s_per_query"] = (time.perf_counter() - t3) / nq
        return SearchResults(
            query_ids=list(queries.ids), ranking=ranking,
            scores=np.take_along_axis(mixed, ranking, 1),
            reranked=np.take_along_axis(reranked, ranking, 1),
            timings=timings, segments=found)

    def localize_results(self, ranking: np.ndarray, count: int, kept: Sequence[Optional[tuple]],
                         queries: Representations, database, options: Optional[dict] = None) -> List[List]:
        """`localize_results` for a search whose fine stage kept, per query, (FrameMatrices,
        {database index: its column in that call}) (None: nothing re-ranked)."""
        repeated = self.scorer.comparator

        def matrices(q: int, j: int):
            if kept[q] is None or j not in kept[q][1]:
                return None
            return kept[q][0].matrix(0, kept[q][1][j])

        return localize_results(ranking, count, matrices,
                                [stored_frames(queries.fine_rep(q), repeated) for q in range(len(queries))],
                                lambda j: stored_frames(database.fine_rep(j), repeated), options)
