"""The summary `dns-jax build` prints at the end: a table a person reads (stage, videos, time, what
the stage did: what was trained and how well), then the videos that could not be read.

    format_build_summary(Workdir(w).read_state()["done"])

It reads the stage records of WORK/state.json as `dns_jax.app.build` writes them; a field it does
not know is left out rather than printed raw, and a stage it does not know gets a plain line.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence

BUILD_STAGES = ("features", "pca", "whiten", "teacher", "fine", "coarse", "selector", "index")
MAX_FAILED_LISTED = 10


def format_seconds(seconds: float) -> str:
    """41.2s, 4m 05s, 1h 02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _training(info: Dict[str, Any]) -> str:
    """How well a trained network did, from what the stage recorded (steps, final loss, validation)."""
    parts = []
    if isinstance(info.get("steps"), int):
        parts.append(f"{info['steps']} steps")
    if isinstance(info.get("loss"), (int, float)) and math.isfinite(info["loss"]):
        first = info.get("first_loss")
        start = f"{first:.4f} -> " if isinstance(first, (int, float)) and math.isfinite(first) else "final "
        parts.append(f"loss {start}{info['loss']:.4f}")
    best = info.get("best")
    if isinstance(best, dict) and {"metric", "value"} <= set(best):
        at = f" at step {best['step']}" if "step" in best else ""
        parts.append(f"best {best['metric']} {_number(best['value'])}{at}")
    elif isinstance(info.get("validation"), dict) and info["validation"]:
        parts.append("validation " + ", ".join(f"{k} {_number(v)}" for k, v in sorted(info["validation"].items())
                                               if isinstance(v, (int, float))))
    return f" ({'; '.join(parts)})" if parts else ""


def _network(info: Dict[str, Any], stage: str) -> str:
    name = info.get("network", stage)
    if not info.get("trained", True):
        return f"{name} given ({os.path.basename(str(info.get('path', ''))) or 'no file'}), not trained"
    what = f"{name} trained{_training(info)}"
    if stage == "coarse" and info.get("targets"):
        what += ", on the teacher's scores spread above their background"
    if stage == "selector" and info.get("target"):
        what += f" ({info['target']} labels)"
    if stage == "selector" and info.get("fine_quantiles"):
        what += "; fine scores put on the coarse scale by quantiles"
    elif stage == "selector" and info.get("fine_spread"):
        what += "; fine scores put on the coarse scale"
    if stage == "selector" and info.get("coarse_weight"):
        what += f", mixed with {info['coarse_weight']:g} of the coarse score"
    return what


def _row(stage: str, info: Any) -> List[str]:
    """[stage, videos, time, what it did] of one stage record."""
    if info is None:
        return [stage, "", "", "not done"]
    if not isinstance(info, dict):
        return [stage, "", "", "done"]
    videos, seconds = "", info.get("seconds")
    time = format_seconds(seconds) if isinstance(seconds, (int, float)) else ""
    if "skipped" in info:
        what = f"skipped: {info['skipped']}"
    elif stage == "features":
        total, failed = info.get("videos"), len(info.get("failed") or [])
        done = info.get("extracted", total)
        videos = f"{done}/{total}" if total is not None else ""
        what = f"{done} extracted" + (f", {failed} unreadable (listed below)" if failed else "")
    elif stage == "pca":
        what = ("whitening fitted on the collection" if info.get("fitted")
                else f"whitening given ({os.path.basename(str(info.get('pca', '')))})")
    elif stage == "whiten":
        videos = _number(info.get("videos", ""))
        what = f"{info['dims']}-d whitened features" if "dims" in info else "whitened features"
    elif stage == "teacher":
        what = f"{info.get('pairs', '?')} training pairs scored by {info.get('teacher', 'the teacher')}"
    elif stage in ("fine", "coarse", "selector") or "network" in info:
        what = _network(info, stage)
    elif stage == "index":
        videos = _number(info.get("videos", ""))
        what = str(info.get("report") or f"{videos} videos indexed")
    else:
        what = ", ".join(f"{k} {_number(v)}" for k, v in info.items()
                         if k != "seconds" and isinstance(v, (int, float, str)) and not isinstance(v, bool)) or "done"
    return [stage, videos, time, what]


def format_build_summary(state_done: Dict[str, Any], stages: Optional[Sequence[str]] = None) -> str:
    """The summary table of a build from its stage records (`state.json`'s "done"); `stages` in
    order (default: the build's stages; any other recorded stage follows)."""
    order = list(stages or BUILD_STAGES)
    order += [s for s in state_done if s not in order]
    rows = [["stage", "videos", "time", "result"]] + [_row(s, state_done.get(s)) for s in order]
    records = [i for i in state_done.values() if isinstance(i, dict)]
    total = sum(i["seconds"] for i in records if isinstance(i.get("seconds"), (int, float)))
    if total:
        rows.append(["total", "", format_seconds(total), ""])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["build summary"]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
    features = state_done.get("features")
    failed = features.get("failed") if isinstance(features, dict) else None
    if failed:
        lines.append(f"unreadable videos ({len(failed)}, not indexed):")
        for vid, path, message in failed[:MAX_FAILED_LISTED]:
            lines.append(f"  {vid}: {' '.join(str(message).split())}")
        if len(failed) > MAX_FAILED_LISTED:
            lines.append(f"  ... and {len(failed) - MAX_FAILED_LISTED} more")
    return "\n".join(lines)
