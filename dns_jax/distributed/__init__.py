"""dns_jax.distributed: the same pipeline on a Ray cluster (optional: `pip install 'dns-jax[ray]'`).

    from dns_jax import distributed
    distributed.index_ray('indexes/fivr', ['fivr.hdf5'], fine, coarse, selector, address='auto')
    distributed.extract_features_ray(videos, 'features.hdf5', extractor, address=None)   # local cluster
    with distributed.ShardedSearch(dns, 'indexes/fivr', actors=4) as search:
        results = search.search(queries, budget=0.05, topk=100)

* `index_ray` (indexing.py): feature files -> index; Ray Data tasks read, actors run the networks,
  each batch is staged as an immutable shard, the driver commits them in one manifest write;
  resumable, failed videos listed, shards of other networks rejected with an error.
* `extract_features_ray` (extraction.py): video files -> an HDF5 feature file; CPU tasks decode,
  actors run the jitted extractor, parts are staged and committed by the driver; resumable.
* `ShardedSearch` (search.py): an index split over Ray actors, each holding some shards (coarse
  vectors, selector self-similarities, resident fine representations); a query fans out and the
  driver merges: the same ranked ids, scores and segments as `search_index` over the whole index
  (on its faiss candidates or its shortlist where the index records one).

Everything here imports Ray lazily; without it, `ClusterError` says what to install.
"""
from dns_jax.distributed.cluster import (
    ClusterError,
    PortableExtractor,
    PortableNetwork,
    check_address,
    cluster,
    probe,
    require_ray,
)
from dns_jax.distributed.extraction import extract_features_ray
from dns_jax.distributed.indexing import index_ray
from dns_jax.distributed.search import ShardActor, ShardedSearch

__all__ = ["ClusterError", "PortableExtractor", "PortableNetwork", "check_address", "cluster", "probe", "require_ray", "index_ray", "extract_features_ray",
           "ShardedSearch", "ShardActor"]
