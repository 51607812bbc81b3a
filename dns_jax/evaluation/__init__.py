"""Benchmark evaluation with the protocol of the official DnS code.

    from dns_jax.evaluation import FIVR, CC_WEB_VIDEO, EVVE, SVD
    dataset = FIVR(version='5k')
    results = dataset.evaluate({query_id: {video_id: score, ...}, ...}, all_db=available_ids)
    results['DSVR'], results['CSVR'], results['ISVR']
    dataset.last_report          # what was missing / ignored / NaN, per-query APs
    dataset.evaluate_s2vs(...)   # S2VS's protocol: + micro-AP DSVD/CSVD/ISVD, '_h' without easy duplicates
    VCDB(annotation='vcdb.json.gz', distractors=False).evaluate_s2vs(...)   # {'mAP', 'uAP'}

The annotations ship with the package (`dns_jax/evaluation/data/`, converted from the official
files; see the README there).
"""
from .benchmarks import CC_WEB_VIDEO, EVVE, FIVR, SVD, VCDB
from .metrics import average_precision, descending_order, ranked_list_average_precision, trapezoid_average_precision
from .micro_ap import micro_ap, micro_average_precision, pool_pairs, s2vs_order
from .report import EvaluationReport, EvaluationWarning

__all__ = [
    "FIVR", "CC_WEB_VIDEO", "EVVE", "SVD", "VCDB",
    "EvaluationReport", "EvaluationWarning",
    "average_precision", "descending_order", "ranked_list_average_precision",
    "trapezoid_average_precision", "micro_ap", "micro_average_precision", "pool_pairs", "s2vs_order",
]
