"""Plots of a sweep (sweep.py results): mAP against time per query and against storage per video,
log x axes as in the DnS paper's figure; one panel per task, DnS curves per fine student (labelled
with their budgets), the teacher and the students as reference points. PNG, Agg backend."""
from __future__ import annotations

import os
from typing import Dict, List

from dns_jax.evaluation.sweep import tasks
from dns_jax.fileio import atomic_open

AXES = {"time": ("seconds_per_query", "time per query (s)"),
        "storage": ("bytes_per_video", "storage per video (KB)")}
MARKERS = {"teacher": "*", "fine": "s", "coarse": "^"}


def _x(row, axis):
    value = row[AXES[axis][0]]
    return value / 1024 if axis == "storage" else value


def plot_sweep(results: dict, output_dir: str) -> List[str]:
    """Write sweep_time.png and sweep_storage.png into output_dir; returns their paths."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = tasks(results)
    if not names:
        return []
    paths = []
    for axis in AXES:
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names) + 0.6, 4.4), squeeze=False)
        for ax, task in zip(axes[0], names):
            _panel(ax, results["rows"], task, axis)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
        fig.suptitle(f"{results['benchmark']}: mAP vs {AXES[axis][1]}")
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.27, top=0.84, wspace=0.28)  # tight_layout: seconds
        path = os.path.join(output_dir, f"sweep_{axis}.png")
        with atomic_open(path, "wb", suffix=".png") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _panel(ax, rows: List[Dict], task: str, axis: str):
    curves: Dict[str, List[Dict]] = {}
    for r in rows:
        if r["kind"] == "dns":
            curves.setdefault(r["representation"], []).append(r)
    for label, pts in curves.items():
        pts = sorted(pts, key=lambda r: r["budget"])
        line, = ax.plot([_x(r, axis) for r in pts], [r["mAP"][task] for r in pts], "o-", ms=3.5,
                        lw=1.2, label=f"DnS ({label})")
        for r in pts:
            if r["budget"] in (0.05, 0.1, 0.25, 0.5, 1.0):
                ax.annotate(f"{r['budget']:.0%}", (_x(r, axis), r["mAP"][task]), fontsize=6,
                            textcoords="offset points", xytext=(3, -8), color=line.get_color())
    for r in rows:
        if r["kind"] in MARKERS:
            ax.plot([_x(r, axis)], [r["mAP"][task]], MARKERS[r["kind"]], ms=10 if r["kind"] == "teacher" else 7,
                    mec="black", mew=0.6, label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel(AXES[axis][1])
    ax.set_ylabel(f"mAP ({task})")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
