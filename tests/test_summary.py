"""The summary `dns-jax build` prints: a table a person reads, never a raw internal record."""
from dns_jax.app.summary import format_build_summary, format_seconds

# the stage records as dns_jax.app.build writes them into state.json
DONE = {
    "features": {"videos": 13, "extracted": 12, "seconds": 41.24,
                 "failed": [["broken", "/v/broken.mp4", "cannot open video /v/broken.mp4:\n Invalid data"]]},
    "pca": {"pca": "/w/features/pca.npz", "fitted": True, "seconds": 3.1},
    "whiten": {"videos": 12, "dims": 64, "seconds": 0.8},
    "teacher": {"pairs": 312, "teacher": "visil_f", "seconds": 10.0},
    "fine": {"network": "fg_att_student", "path": "/w/models/fg_att_student", "trained": True, "seconds": 125.0,
             "steps": 300, "best": {"metric": "mAP", "value": 0.9123, "step": 250}},
    "coarse": {"network": "cg_student", "path": "/w/models/cg_student", "trained": True, "seconds": 61.0,
               "targets": {"rule": "spread", "floor": 3.0, "median": 0.31, "scale": 0.05, "top": 9.2}},
    "selector": {"network": "selector", "path": "/tmp/my_selector.pth", "trained": False, "seconds": 0.2},
}


def test_summary_is_a_table_without_raw_records():
    text = format_build_summary(DONE)
    lines = text.splitlines()
    assert lines[0] == "build summary" and lines[1].split() == ["stage", "videos", "time", "result"]
    assert "{" not in text and "targets=" not in text and "/w/models" not in text
    row = {line.split()[0]: line for line in lines[2:] if line.startswith("  ") and not line.startswith("   ")}
    assert "12/13" in row["features"] and "41.2s" in row["features"] and "1 unreadable" in row["features"]
    assert "2m 05s" in row["fine"] and "fg_att_student trained (300 steps; best mAP 0.912 at step 250)" in row["fine"]
    assert "cg_student trained" in row["coarse"]
    assert "selector given (my_selector.pth), not trained" in row["selector"]
    assert "312 training pairs scored by visil_f" in row["teacher"] and "64-d" in row["whiten"]
    assert row["index"].split()[-2:] == ["not", "done"]
    assert row["total"].split()[-2:] == ["4m", "01s"]
    # the columns line up: the times end where the header's "time" ends
    end = lines[1].index("time") + len("time")
    assert all(row[s].index(t) + len(t) == end for s, t in (("features", "41.2s"), ("fine", "2m 05s"),
                                                          ("selector", "0.2s"), ("total", "4m 01s")))
    assert lines[-2:] == ["unreadable videos (1, not indexed):", "  broken: cannot open video /v/broken.mp4: Invalid data"]


def test_summary_of_an_unknown_or_skipped_stage_and_times():
    text = format_build_summary({"teacher": {"skipped": "all networks given"},
                                 "extra": {"count": 3, "detail": {"x": 1}, "seconds": 4000}}, stages=("teacher",))
    assert "skipped: all networks given" in text and "count 3" in text and "{" not in text
    assert "1h 06m" in text
    assert [format_seconds(s) for s in (0.04, 59.9, 60, 3599, 3600)] == ["0.0s", "59.9s", "1m 00s", "59m 59s", "1h 00m"]
