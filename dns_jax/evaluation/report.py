"""What an evaluation did with imperfect input: `EvaluationReport` and `EvaluationWarning`."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, List


class EvaluationWarning(UserWarning):
    """Raised (as a warning) when an evaluation had to ignore or re-interpret part of its input."""


def _preview(items, limit=5):
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclasses.dataclass
class EvaluationReport:
    """Bookkeeping of one `evaluate` call, kept as `evaluator.last_report`.

    Attributes:
      benchmark: e.g. 'FIVR-5K'.
      n_queries: number of queries of the benchmark.
      evaluated: query ids that entered the mAP, in evaluation order.
      missing_queries: benchmark queries without results; ignored (left out of the mean), as
        the official code does.
      unknown_queries: keys of `similarities` that are not queries of the benchmark; ignored.
      unknown_ids: per query, how many result ids are not videos of the benchmark; ignored.
      nan_scores: per query, how many scores were NaN (or not numbers); ranked below every
        real score.
      missing_scores: (SVD) per query, how many labelled/distractor videos of `all_db` had no
        score; counted as never retrieved (a missing positive still counts in the denominator).
      no_positives: (query, task) pairs with no relevant video available; their AP is 0.
      per_query: per task (result key), the AP of every evaluated query.
      per_event: (EVVE) the per-event mAP (NaN for an event without queries in `all_db`).
      notes: other remarks (e.g. an array result of the wrong length).
    """

    benchmark: str
    n_queries: int = 0
    evaluated: List[str] = dataclasses.field(default_factory=list)
    missing_queries: List[str] = dataclasses.field(default_factory=list)
    unknown_queries: List[str] = dataclasses.field(default_factory=list)
    unknown_ids: Dict[str, int] = dataclasses.field(default_factory=dict)
    nan_scores: Dict[str, int] = dataclasses.field(default_factory=dict)
    missing_scores: Dict[str, int] = dataclasses.field(default_factory=dict)
    no_positives: List[tuple] = dataclasses.field(default_factory=list)
    per_query: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    per_event: Dict[str, float] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    def add_per_query(self, task, query, ap):
        self.per_query.setdefault(task, {})[query] = float(ap)

    @property
    def clean(self) -> bool:
        """True when nothing was missing, unknown, NaN or empty."""
        return not self.problems()

    def problems(self) -> List[str]:
        """One human-readable line per kind of problem found."""
        lines = []
        if self.missing_queries:
            lines.append(
                f"{len(self.missing_queries)} of {self.n_queries} queries have no results and were "
                f"left out of the mean (as the official code does): {_preview(self.missing_queries)}")
        if self.unknown_queries:
            lines.append(
                f"{len(self.unknown_queries)} result keys are not {self.benchmark} queries and were "
                f"ignored: {_preview(self.unknown_queries)}")
        if self.unknown_ids:
            total = sum(self.unknown_ids.values())
            lines.append(
                f"{total} scored ids are not {self.benchmark} database videos and were ignored "
                f"(in the results of {len(self.unknown_ids)} queries: {_preview(self.unknown_ids)})")
        if self.nan_scores:
            total = sum(self.nan_scores.values())
            lines.append(
                f"{total} scores are NaN or not numbers and were ranked below every real score; "
                f"queries: " + ", ".join(f"{q!r} ({n})" for q, n in list(self.nan_scores.items())[:5])
                + (" ..." if len(self.nan_scores) > 5 else ""))
        if self.missing_scores:
            total = sum(self.missing_scores.values())
            lines.append(
                f"{total} videos of the database have no score and were counted as never retrieved; "
                f"queries: " + ", ".join(f"{q!r} ({n})" for q, n in list(self.missing_scores.items())[:5])
                + (" ..." if len(self.missing_scores) > 5 else ""))
        if self.no_positives:
            lines.append(
                f"{len(self.no_positives)} (query, task) pairs have no relevant video in the "
                f"database; their AP was counted as 0: {_preview(self.no_positives)}")
        if self.n_queries and not self.evaluated:
            lines.append("no query could be evaluated; the mAP values are NaN")
        lines.extend(self.notes)
        return lines

    def summary(self) -> str:
        head = f"{self.benchmark}: {len(self.evaluated)}/{self.n_queries} queries evaluated"
        return "\n".join([head] + ["  - " + line for line in self.problems()])

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def emit(self, verbose=False, stacklevel=3):
        """Warn (EvaluationWarning) about every problem; with verbose also print them."""
        problems = self.problems()
        if not problems:
            return
        if verbose:
            for line in problems:
                print(f"[WARNING] {line}")
        warnings.warn(f"{self.benchmark} evaluation: " + "; ".join(problems),
                      EvaluationWarning, stacklevel=stacklevel)
