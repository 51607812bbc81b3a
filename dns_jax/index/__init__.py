"""On-disk DnS index (one directory per collection), its builder, and the one query path
(`search_index`). See store.py for the format."""
from dns_jax.index.build import BuildReport, build_index, iter_videos, list_video_ids, open_for_writing, read_video
from dns_jax.index.search import STAGES, search_index
from dns_jax.index.store import (
    FORMAT_VERSION,
    Index,
    IndexFormatError,
    NetworkMismatchError,
    clean_staging,
    describe_network,
    network_fingerprint,
    read_manifest,
    read_part,
    stage_shard,
    staged_parts,
)

__all__ = ["Index", "IndexFormatError", "NetworkMismatchError", "FORMAT_VERSION", "build_index",
           "BuildReport", "iter_videos", "list_video_ids", "read_video", "network_fingerprint",
           "search_index", "STAGES", "open_for_writing", "describe_network", "stage_shard", "staged_parts",
           "read_part", "read_manifest", "clean_staging"]
