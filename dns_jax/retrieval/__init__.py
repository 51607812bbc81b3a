"""DnS retrieval: exact batched similarity kernels, packed binary codes, coarse search, re-ranking.

    from dns_jax import pretrained, retrieval
    fg = pretrained.load('fg_att_student', 'dns_fg_att_student.pth')
    sims = retrieval.score(fg, query_features, [target_features, ...])      # float32 (N,)
    mixed = retrieval.rerank(coarse, fine, selector_scores, budget=0.1)     # (Q, N)

`score` takes raw region features [T, R, D] by default (indexing inside; `indexed=True` for
already indexed representations) and equals the official one-pair-at-a-time evaluation path.
To score many queries against one database, lay it out once on the device:
`db = retrieval.scorer_for(fg).prepare(indexed_videos)`, then `scorer.similarities(queries, db)`.
`FineScorer.resident(db)` keeps a database on the device and scores any subset of it
(`resident.subset(idx)`) without copying its frames from the host: what `DnS.search` re-ranks.
A budget is a fraction (float in [0, 1]) or a number of videos per query (int >= 1).
`rerank` takes raw fine similarities in [-1, 1] and applies the official s/2 + 0.5 mapping
(`fine_mapped=True` if they are already mapped). See dns.py for the conventions, fine.py and
layout.py for how the kernel stays exact and memory-bounded, binary.py for the packed codes.
"""
from dns_jax.retrieval.binary import count_zero_codes, pack_codes, unpack_codes
from dns_jax.retrieval.coarse import (
    CoarseDatabase,
    FaissCoarseIndex,
    ShortlistCoarseDatabase,
    coarse_scores,
    faiss_available,
    region_means,
    top_pairs,
    vector_blocks,
    vector_segments,
)
from dns_jax.retrieval.dns import (
    SEGMENT_OPTIONS,
    DnS,
    FusedMapping,
    Representations,
    SearchResults,
    budget_count,
    check_budget,
    coarse_index,
    localize_results,
    mixed_scores,
    rerank,
    score,
    selection,
    stored_frames,
)
from dns_jax.retrieval.fine import (
    FineScorer,
    FrameMatrices,
    PreparedDatabase,
    ResidentDatabase,
    ScorerOptions,
    scorer_for,
)
from dns_jax.retrieval.selector import selector_scores, self_similarities

__all__ = [
    "score", "rerank", "selection", "budget_count", "check_budget", "DnS", "Representations", "SearchResults",
    "FineScorer", "PreparedDatabase", "ResidentDatabase", "ScorerOptions", "scorer_for", "CoarseDatabase",
    "FaissCoarseIndex", "faiss_available", "coarse_scores", "vector_blocks", "top_pairs", "coarse_index",
    "ShortlistCoarseDatabase", "region_means", "vector_segments", "FusedMapping", "mixed_scores",
    "self_similarities", "selector_scores",
    "pack_codes", "unpack_codes", "count_zero_codes", "FrameMatrices", "localize_results", "stored_frames",
    "SEGMENT_OPTIONS",
]
