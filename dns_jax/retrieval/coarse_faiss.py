"""Compressed coarse stage: a faiss IVF-PQ index over CG vectors (``pip install faiss-cpu``).

The exact coarse stage (:class:`dns_jax.retrieval.coarse.CoarseDatabase`)
keeps every CG vector, 4 KB per video for the official 1024-d student.
:class:`CompressedCoarseIndex` keeps a product-quantised code instead: the
vectors are rotated and reduced by OPQ (optional), assigned to one of
``nlist`` inverted lists by a k-means coarse quantiser, and their residuals
encoded in ``m`` sub-vectors of ``nbits`` bits each.  A query scans the
``nprobe`` nearest lists with asymmetric distances.  It is trained on the
collection (a sample of it), then vectors are added in any number of
chunks.

Bytes per video (:attr:`CompressedCoarseIndex.bytes_per_video`) count all
that is stored per video: the ``m * nbits / 8``-byte code plus the 8-byte
id faiss keeps beside it in the inverted list; :attr:`fixed_bytes` is what
does not grow with the collection (centroids, codebooks, OPQ matrix).  The
defaults (OPQ to 896 dims, PQ56 x 8 bits) store 56 + 8 = 64 bytes a video.

:meth:`topk` has the contract of ``CoarseDatabase.topk``: (scores (Q, k)
float32, indices (Q, k) int64), best first, ties by lower index, ``k``
clipped to the collection size, every index valid.  The scores are the
index's approximate cosines (PQ reconstructions), not exact ones.
:meth:`candidates` takes the budget of videos per query as a fraction of
the collection or as an absolute number.

An index remembers what it was trained for: the vector dimension, the
name of the network whose vectors it holds, a fingerprint of the training
sample and the faiss version (``header.json`` beside ``index.faiss`` in the
directory :meth:`save` writes atomically).  :meth:`load` refuses another
dimension or network, and :meth:`add` / :meth:`topk` refuse vectors that are
not L2-normalised or that sit much farther from the coarse centroids than
held-out training vectors do (vectors of another network or model version).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Optional, Tuple, Union

import numpy as np

from dns_jax.retrieval.coarse import _check_vectors
from dns_jax.validation import FeatureError

FORMAT = "dns-jax/coarse-faiss"
VERSION = 1
HEADER, INDEX_FILE = "header.json", "index.faiss"
ID_BYTES = 8  # faiss keeps an int64 id beside each code in its inverted lists
NORM_TOLERANCE = 1e-3  # CG vectors are L2-normalised
MISMATCH_RATIO = 2.0  # mean squared distance to the nearest centroid, vs held-out training vectors
CHECK_ROWS = 4096  # rows of a batch the distribution check looks at


class CoarseIndexMismatch(FeatureError):
    """An index was built for other vectors (dimension, network or distribution)."""


def _faiss():
    """Import faiss lazily, with an install hint if it is missing."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("the compressed coarse stage needs faiss: pip install 'dns-jax[faiss]' "
                          "(or pip install faiss-cpu)") from exc
    return faiss


TRANSFORMS = ("opq", "none")  # no PCA: its centring would change inner-product rankings


@dataclasses.dataclass(frozen=True)
class IVFPQParams:
    """Index parameters.

    ``transform``: ``'opq'`` (a learned rotation and reduction balancing the
    sub-vectors, faiss ``OPQ``; uncentred, so inner products stay comparable)
    or ``'none'``; ``transform_dims`` the OPQ output dimension (None: ``16 * m``
    capped at the input dimension), which ``m`` must divide.
    ``nlist`` None: about 4 sqrt(N), a power of two in 64..65536, for the
    ``expected_n`` given to :meth:`CompressedCoarseIndex.train`.
    ``opq_iterations``: OPQ training rounds (faiss's default is 50).
    """

    m: int = 56
    nbits: int = 8
    nlist: Optional[int] = None
    nprobe: int = 64
    transform: str = "opq"
    transform_dims: Optional[int] = None
    opq_iterations: int = 20

    def resolved(self, dims: int, expected_n: int) -> "IVFPQParams":
        """Fill in ``nlist`` and ``transform_dims``; ValueError for impossible values."""
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        nlist = self.nlist
        if nlist is None:
            nlist = int(2 ** np.clip(np.round(np.log2(4 * np.sqrt(max(expected_n, 1)))), 6, 16))
        out = dims if self.transform == "none" else self.transform_dims or min(16 * self.m, dims)
        for name, value in (("m", self.m), ("nbits", self.nbits), ("nlist", nlist),
                            ("nprobe", self.nprobe), ("transform_dims", out),
                            ("opq_iterations", self.opq_iterations)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if out % self.m or out > dims:
            raise ValueError(f"the quantised dimension {out} must be a multiple of m = "
                             f"{self.m} and at most the vector dimension {dims}")
        if self.nbits > 16:
            raise ValueError(f"nbits must be at most 16, got {self.nbits}")
        return dataclasses.replace(self, nlist=int(nlist), transform_dims=int(out))

    def factory(self) -> str:
        """The faiss ``index_factory`` string of these (resolved) parameters."""
        pre = f"OPQ{self.m}_{self.transform_dims}," if self.transform == "opq" else ""
        return f"{pre}IVF{self.nlist},PQ{self.m}x{self.nbits}"


def budget_count(budget: Union[int, float], n: int) -> int:
    """Videos per query for ``budget``: a fraction in (0, 1] of ``n`` or a count >= 1."""
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.number)):
        raise TypeError(f"budget must be a fraction or a number of videos, got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise ValueError(f"a budget in videos must be >= 1, got {budget}")
        return int(min(budget, n))
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
    count = int(budget * n)
    if count < 1:
        raise ValueError(f"budget {budget} of {n} videos selects none")
    return count


def fingerprint(vectors: np.ndarray) -> str:
    """Short hex digest of a float32 C-order array (shape included)."""
    a = np.ascontiguousarray(vectors, np.float32)
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.data)
    return h.hexdigest()[:16]


def _sorted_by_score(scores: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rows ordered best first, ties by lower id (faiss leaves tie order open)."""
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class CompressedCoarseIndex:
    """IVF-PQ index of N L2-normalised CG vectors [N, dims] (``train``, ``add``, ``topk``)."""

    def __init__(self, index: Any, header: dict):
        """Wrap a trained faiss index; use :meth:`train`, :meth:`build` or :meth:`load`."""
        self._faiss = _faiss()
        self.index = index
        self.header = header
        self.params = IVFPQParams(**header["params"])
        self._ivf = self._faiss.extract_index_ivf(index)
        self._centroid_norms: Optional[np.ndarray] = None
        self.nprobe = self.params.nprobe

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def train(cls, sample, *, network: str, params: IVFPQParams = IVFPQParams(),
              expected_n: Optional[int] = None, seed: int = 0) -> "CompressedCoarseIndex":
        """Train an empty index on ``sample`` [S, dims] (CG vectors of the collection).

        ``network`` names the CG network (and weights) the vectors come from;
        ``expected_n`` (default S) sizes ``nlist``.  A tenth of the sample is held
        out to measure the distance to the centroids that :meth:`add` expects.
        """
        faiss = _faiss()
        x = _unit_vectors(sample, "training sample")
        if not isinstance(network, str) or not network:
            raise ValueError("network must name the CG network the vectors come from")
        p = params.resolved(x.shape[1], expected_n or x.shape[0])
        rng = np.random.default_rng(seed)
        order = rng.permutation(x.shape[0])
        held = max(1, x.shape[0] // 10)
        fit, held_out = x[order[held:]], x[order[:held]]
        if fit.shape[0] < max(p.nlist, 2 ** p.nbits):
            raise ValueError(f"{fit.shape[0]} training vectors are too few for nlist = {p.nlist} "
                             f"and 2^{p.nbits} PQ centroids; give a larger sample")
        if p.transform == "opq" and fit.shape[0] < x.shape[1]:      # faiss 1.15 crashes (SIGSEGV) below this
            raise ValueError(f"{fit.shape[0]} training vectors are too few for OPQ on {x.shape[1]}-d vectors "
                             f"(it needs at least {x.shape[1]}); give a larger sample or transform='none'")
        index = faiss.index_factory(x.shape[1], p.factory(), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = seed
        ivf.do_polysemous_training = False  # slow, and only for polysemous (Hamming) filtering
        for transform in _transforms(index):
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = p.opq_iterations
        index.train(fit)
        header = {"format": FORMAT, "version": VERSION, "dims": int(x.shape[1]),
                  "network": network, "training_fingerprint": fingerprint(x),
                  "training_size": int(x.shape[0]), "faiss_version": faiss.__version__,
                  "factory": p.factory(), "params": dataclasses.asdict(p),
                  "centroid_distance": 0.0}
        self = cls(index, header)
        header["centroid_distance"] = self._centroid_distance(held_out)
        return self

    @classmethod
    def build(cls, vectors, *, network: str, params: IVFPQParams = IVFPQParams(),
              train_size: int = 65536, seed: int = 0) -> "CompressedCoarseIndex":
        """Train on a random sample of ``vectors`` [N, dims] (``train_size`` rows) and add all."""
        v = _check_vectors(vectors, "coarse database")
        rows = np.sort(np.random.default_rng(seed).permutation(v.shape[0])[:train_size])
        self = cls.train(v[rows], network=network, params=params, expected_n=v.shape[0], seed=seed)
        self.add(v)
        return self

    def add(self, vectors, ids=None) -> None:
        """Append vectors [B, dims]; their indices continue from :attr:`n`, unless ``ids`` [B]
        (int64 >= 0, distinct) are given: :meth:`topk` then returns those (an index built with
        ids must always be given ids)."""
        x = _unit_vectors(vectors, "coarse vectors", self.dims)
        self._check_distribution(x, "coarse vectors")
        if ids is None:
            self.index.add(x)
            return
        ids = np.ascontiguousarray(ids, np.int64).reshape(-1)
        if ids.shape[0] != x.shape[0] or (ids.size and ids.min() < 0):
            raise ValueError(f"ids must be {x.shape[0]} int64 values >= 0, got shape {ids.shape}")
        self.index.add_with_ids(x, ids)

    # -- properties ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Vectors in the index."""
        return int(self.index.ntotal)

    @property
    def dims(self) -> int:
        return int(self.header["dims"])

    @property
    def network(self) -> str:
        return str(self.header["network"])

    @property
    def nprobe(self) -> int:
        return int(self._ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"nprobe must be a positive int, got {value!r}")
        self._ivf.nprobe = int(min(value, self._ivf.nlist))

    @property
    def bytes_per_video(self) -> int:
        """Bytes stored per video: the PQ code plus faiss's 8-byte id."""
        return int(self._ivf.code_size) + ID_BYTES

    @property
    def fixed_bytes(self) -> int:
        """Bytes that do not grow with N: coarse centroids, PQ codebooks, OPQ matrix."""
        p = self.params
        total = p.nlist * p.transform_dims * 4 + (2 ** p.nbits) * p.transform_dims * 4
        return total + (0 if p.transform == "none" else self.dims * p.transform_dims * 4)

    # -- search -------------------------------------------------------------------------------
    def topk(self, queries, k: int, batch: int = 256, check: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """(Q, dims) -> (scores (Q, k) float32, indices (Q, k) int64), best first; ties by index.

        ``k`` is clipped to :attr:`n`.  Queries whose ``nprobe`` lists hold fewer
        than ``k`` vectors are searched again with more lists until ``k`` are found.
        ``check=False`` skips the distribution check (for callers that know the
        queries' network: one odd query may sit far from every centroid).
        """
        q = _unit_vectors(queries, "coarse queries", self.dims)
        if self.n == 0:
            raise FeatureError("the compressed coarse index is empty: add vectors first")
        k = int(min(k, self.n))
        if k <= 0:
            raise ValueError("k must be positive")
        if check:
            self._check_distribution(q, "coarse queries")
        scores = np.empty((q.shape[0], k), np.float32)
        ids = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], batch):
            scores[s:s + batch], ids[s:s + batch] = self._search(q[s:s + batch], k)
        return scores, ids

    def candidates(self, queries, budget: Union[int, float],
                   batch: int = 256) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`topk` for a budget: a fraction of :attr:`n` or a number of videos per query."""
        return self.topk(queries, budget_count(budget, self.n), batch)

    def _search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """One batch; rows with missing results are retried with nprobe doubled."""
        nprobe = self.nprobe
        scores, ids = self.index.search(q, k)
        short = np.flatnonzero((ids < 0).any(axis=1))
        try:
            while short.size and self._ivf.nprobe < self._ivf.nlist:
                self._ivf.nprobe = min(2 * self._ivf.nprobe, self._ivf.nlist)
                scores[short], ids[short] = self.index.search(q[short], k)
                short = short[(ids[short] < 0).any(axis=1)]
        finally:
            self._ivf.nprobe = nprobe
        return _sorted_by_score(scores.astype(np.float32), ids.astype(np.int64))

    # -- checks -------------------------------------------------------------------------------
    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Apply the index's pre-transform (OPQ) to [B, dims] vectors."""
        for transform in _transforms(self.index):
            x = transform.apply(np.ascontiguousarray(x, np.float32))
        return np.ascontiguousarray(x, np.float32)

    def _centroid_distance(self, x: np.ndarray) -> float:
        """Mean squared distance of (up to CHECK_ROWS) rows of ``x`` to their assigned centroid."""
        x = self._transform(x[:CHECK_ROWS])
        quantizer = self._ivf.quantizer
        if self._centroid_norms is None:
            c = quantizer.reconstruct_n(0, self._ivf.nlist)
            self._centroid_norms = np.sum(c * c, axis=1)
        ip, nearest = quantizer.search(x, 1)  # inner-product quantiser: <x, c>
        sq = np.sum(x * x, axis=1) + self._centroid_norms[nearest[:, 0]] - 2 * ip[:, 0]
        return float(np.mean(np.maximum(sq, 0.0)))

    def _check_distribution(self, x: np.ndarray, name: str) -> None:
        """Refuse a batch that sits far from the centroids (vectors of another network)."""
        expected = float(self.header["centroid_distance"])
        if expected <= 0:
            return
        got = self._centroid_distance(x)
        if got > MISMATCH_RATIO * expected:
            raise CoarseIndexMismatch(
                f"{name} do not match the vectors this index was trained on (network "
                f"{self.network!r}): their mean squared distance to the nearest centroid is "
                f"{got:.3f}, {got / expected:.1f}x that of held-out training vectors "
                f"({expected:.3f}); are they from another network or model version?")

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike], overwrite: bool = False) -> None:
        """Write ``header.json`` and ``index.faiss`` to directory ``path`` atomically."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path!r} already exists (pass overwrite=True to replace it)")
        parent = os.path.dirname(os.path.abspath(path))
        tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=parent)
        try:
            self._faiss.write_index(self.index, os.path.join(tmp, INDEX_FILE))
            header = dict(self.header, ntotal=self.n, nprobe=self.nprobe,
                          bytes_per_video=self.bytes_per_video, fixed_bytes=self.fixed_bytes)
            with open(os.path.join(tmp, HEADER), "w") as f:
                json.dump(header, f, indent=1, sort_keys=True)
            for name in (INDEX_FILE, HEADER):
                with open(os.path.join(tmp, name), "rb") as f:
                    os.fsync(f.fileno())
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=os.path.basename(path) + ".old-", dir=parent)
                os.rename(path, os.path.join(old, "index"))
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, dims: Optional[int] = None,
             network: Optional[str] = None,
             training_fingerprint: Optional[str] = None) -> "CompressedCoarseIndex":
        """Read a directory written by :meth:`save`, checking what it was built for."""
        faiss = _faiss()
        path = os.fspath(path)
        try:
            with open(os.path.join(path, HEADER)) as f:
                header = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path!r} is not a compressed coarse index: no {HEADER}") from None
        except (OSError, ValueError) as exc:
            raise CoarseIndexMismatch(f"{path!r}: unreadable {HEADER}: {exc}") from exc
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise CoarseIndexMismatch(f"{path!r} holds {header.get('format')!r} version "
                                      f"{header.get('version')!r}; expected {FORMAT!r} {VERSION}")
        where = f"the compressed coarse index {path!r}"
        if dims is not None and header["dims"] != dims:
            raise CoarseIndexMismatch(f"{where} holds {header['dims']}-d vectors; this network's "
                                      f"CG vectors are {dims}-d")
        if network is not None and header["network"] != network:
            raise CoarseIndexMismatch(f"{where} was trained on vectors of network "
                                      f"{header['network']!r}, not {network!r}")
        if training_fingerprint is not None and header["training_fingerprint"] != training_fingerprint:
            raise CoarseIndexMismatch(f"{where} was trained on other vectors (fingerprint "
                                      f"{header['training_fingerprint']}, expected "
                                      f"{training_fingerprint})")
        try:
            index = faiss.read_index(os.path.join(path, INDEX_FILE))
        except RuntimeError as exc:
            raise CoarseIndexMismatch(f"{where}: faiss {faiss.__version__} cannot read its "
                                      f"{INDEX_FILE} (written by faiss {header['faiss_version']}): "
                                      f"{str(exc).splitlines()[0]}") from exc
        if index.d != header["dims"] or index.ntotal != header.get("ntotal", index.ntotal):
            raise CoarseIndexMismatch(f"{where}: {INDEX_FILE} ({index.d}-d, {index.ntotal} vectors) "
                                      f"does not match its {HEADER}")
        self = cls(index, header)
        self.nprobe = int(header.get("nprobe", self.params.nprobe))
        return self


def _transforms(index: Any) -> list:
    """The vector transforms an ``index_factory`` index applies first, in order."""
    faiss = _faiss()
    chain = getattr(faiss.downcast_index(index), "chain", None)
    if chain is None:
        return []
    return [faiss.downcast_VectorTransform(chain.at(i)) for i in range(chain.size())]


def _unit_vectors(x, name: str, dims: Optional[int] = None) -> np.ndarray:
    """[B, dims] C-contiguous float32 L2-normalised vectors, else FeatureError."""
    a = np.ascontiguousarray(_check_vectors(x, name, dims), np.float32)
    if not np.all(np.isfinite(a)):
        raise FeatureError(f"{name}: non-finite values")
    norms = np.linalg.norm(a, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
    if bad.size:
        raise FeatureError(f"{name}: expected L2-normalised CG vectors; row {bad[0]} has norm "
                           f"{norms[bad[0]]:.4f} ({bad.size} of {a.shape[0]} rows are off)")
    return a
