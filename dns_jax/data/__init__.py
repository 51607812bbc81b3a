"""Data the project makes itself: a generated near-duplicate video collection from real clips.

    from dns_jax.data import make_collection
    info = make_collection('collection/')      # or: python -m dns_jax.data.video_collection DIR
"""
import importlib

__all__ = ["DISTRACTOR_KINDS", "EDITS", "CollectionInfo", "find_real_clips", "load_collection",
           "make_collection", "render_pattern"]


# imported lazily, so that `python -m dns_jax.data.video_collection` runs without a warning
def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".video_collection", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
