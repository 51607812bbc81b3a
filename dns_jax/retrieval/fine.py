"""Query-versus-database similarity of the fine-grained students and the ViSiL teacher.

`FineScorer(model)` scores indexed videos with the canvas kernel (layout.py, kernels.py): queries
along the rows, database videos (or their 2048-frame chunks) along the columns of a few fixed-size
canvases, so the kernel compiles once per canvas size (a handful of sizes), never per video.

Speed: the matrix products run on the frames stored densely (no gaps, no padded frames: database
canvases are filled first-fit decreasing to `max_cols` canvas columns (frames, plus each segment's gap
and alignment), a query gets exactly its frames up
to a small rounding) and the frame-to-frame matrix is then placed on the canvas with gaps for the
comparator. `FineScorer.prepare(database)` lays the database out once and keeps it on the device;
`similarities(queries, prepared)` then only lays out the queries and dispatches every canvas
call before reading any result back (no host round trip between calls).

Official evaluation rules kept (dns_spec sections 5 and 10):
- a video shorter than 4 frames is concatenated with itself until it has 4 (the official loader
  does it on the features; indexing is per region, so doing it on the indexed video is the same);
- a target longer than 2048 frames is scored by chunks of 2048 frames (chunks shorter than 4
  frames are skipped) and the chunk similarities are averaged; queries are never chunked;
- ViSiL-f (no comparator) does neither, as `dns_jax.pretrained` does.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax import native
from dns_jax.models import FineGrainedStudent, ViSiLHead
from dns_jax.retrieval import binary as codes
from dns_jax.retrieval import winograd
from dns_jax.retrieval.kernels import KernelSpec, canvas_similarity, frame_to_frame_dense
from dns_jax.retrieval.layout import (
    HALO,
    Axis,
    ladder_size,
    pack_dense,
    pack_segments,
    place,
    round_up,
    segment_gap,
)
from dns_jax.validation import FeatureError, check_video

MIN_FRAMES = 4
TARGET_CHUNK = 2048
INDEX_CHUNK = 4096          # frames indexed per call when indexing many videos


def repeat_min_frames(x: np.ndarray, min_frames: int = MIN_FRAMES) -> np.ndarray:
    while x.shape[0] < min_frames:
        x = np.concatenate([x, x], axis=0)
    return x


def repeated_length(t: int, min_frames: int = MIN_FRAMES) -> int:
    """Frames of a t-frame video after repeat_min_frames (doubled until it has min_frames)."""
    t = int(t)
    while 0 < t < min_frames:
        t *= 2
    return t


def _tile_divisor(n: int, limit: int) -> int:
    """Largest multiple of 16 that divides n and is <= limit (0 if none)."""
    for d in range(min(limit, n) // 16 * 16, 15, -16):
        if n % d == 0:
            return d
    return 0


def _tile_near(n: int, target: float, limit: int) -> int:
    """The multiple of 16 that divides n, is <= limit and is nearest `target` by ratio (the larger
    one on a tie; 0 if none)."""
    ds = [d for d in range(16, min(limit, n) + 1, 16) if n % d == 0]
    return min(ds, key=lambda d: (abs(math.log(d / target)), -d)) if ds else 0


def tile_plan(rows: int, cols: int, o: "ScorerOptions") -> Tuple[int, int]:
    """CNN tile sizes (full-resolution frames, 0 = untiled) for a rows x cols canvas: tiles of
    about `o.tile_cells` cells where set (their activations stay in the CPU's cache), else the
    widest tile up to `o.tile_cols`."""
    tr = tc = 0
    if rows > o.untiled_rows:
        tr = _tile_divisor(rows, o.tile_rows)
    if rows * cols > o.untiled_cells:
        tc = _tile_near(cols, o.tile_cells / (tr or rows), o.tile_cols) if o.tile_cells else \
            _tile_divisor(cols, o.tile_cols)
    return tr, tc


@dataclasses.dataclass
class ScorerOptions:
    """Tuning knobs. The CPU defaults come from the measurements in docs/retrieval.md: cache-sized
    f2f blocks run the matrix product near the machine's matmul rate, the CNN runs fastest on
    cache-sized tiles of ~40k cells (docs/scaling.md), FG-Bin's elementwise Hamming loop prefers
    64-frame blocks. Working memory stays
    ~ rows x cols x 4 B plus a block and a tile (about 128 B per canvas cell at the CNN's widest
    layer; ~400 B with the Winograd convolutions' transformed tiles)."""

    max_cols: int = 4096              # columns per database canvas (FineScorer.prepare)
    max_rows: int = 512               # query frames per canvas (a longer query gets its own)
    block_bytes: int = 8 << 20        # f2f block intermediate
    untiled_rows: int = 256           # canvases with more rows are tiled for the CNN
    untiled_cells: int = 1 << 16      # canvases with more cells are tiled along the columns
    tile_rows: int = 256
    tile_cols: int = 2560             # widest CNN tile
    tile_cells: int = 40_000          # CNN tile area aimed at (rows x cols; 0: the widest tile): a
                                      # 60 x 512 tile ran the CNN 1.4-1.7x faster than 60 x 4096 or 2048
    tile_batch: int = 1
    popcount: str = "auto"            # FG-Bin Hamming: 'ffi' (native AVX2 kernel), 'csa' (carry-save
                                      # adders in XLA), 'swar', 'lax' (lax.population_count) or
                                      # 'auto' ('ffi' where dns_jax.native builds, else 'csa')
    packed_block: int = 64            # FG-Bin target frames per elementwise block (0 = all at once)
    dispatch_threads: int = 0         # canvases run at once from host threads (0 = min(4, CPUs))
    kernel_threads: int = 0           # popcount='ffi': threads per native kernel call (0 = XLA's pool)
    pack_gaps: bool = True            # fill database canvases by canvas width (frames + gap + 4-frame
                                      # alignment), so a full one is max_cols wide for the CNN; False:
                                      # by dense frames (full canvases were 4352 wide; docs/scaling.md)
    conv_algorithm: str = "auto"      # comparator conv2/conv3: 'direct' (XLA's convolution), 'winograd'
                                      # (Winograd F(m x m, 3 x 3) with the tiles of winograd_tiles: fewer
                                      # multiply-adds, same results to float32 rounding; 1.5x faster CNN on
                                      # CPU, docs/scaling.md) or 'auto' (winograd on CPU canvases of at
                                      # least winograd_min_cells, direct elsewhere)
    winograd_tiles: Tuple[int, int] = (2, 4)   # output tile m of conv2 (ReLU + pool fused) and conv3
    winograd_min_cells: int = 1 << 15  # 'auto': canvases of fewer cells keep the direct convolution
                                      # (their CNN takes milliseconds; Winograd's larger graph takes
                                      # ~1-2 s more to compile each new canvas size)
    width_step: int = 1024            # a subset laid out on several canvases: its partly filled canvas is
                                      # widened to a multiple of this (at most max_cols; its dense frames
                                      # too), so a few sizes serve every query instead of one compile per
                                      # query (~1 s); 0: the fine widths of canvas_width (docs/scaling.md)

    @classmethod
    def for_platform(cls, platform: str) -> "ScorerOptions":
        """Defaults for a JAX platform ('cpu', 'gpu'/'cuda'/'rocm', 'tpu'). CPU: the measured
        cache-sized blocks and tiles above. Accelerators: whole canvases per kernel (large
        blocks, untiled CNN: thousands of small loop steps would leave the chip idle), the
        native popcount instruction, and the same bounded-memory layout (a 512 x 4096-frame
        canvas needs < 1 GiB). FG-Bin on CPU ('auto'): the native kernel of dns_jax.native where it
        builds (AVX2 and a C++ compiler; faster than the 'csa' XLA loop), else 'csa'; decided when the
        first FG-Bin kernel is laid out, so FG-Att scorers never build it. The comparator's conv2 and
        conv3: Winograd on CPU (fewer multiply-adds), the direct convolution on accelerators (their
        untiled canvases would hold Winograd's ~6x larger intermediates)."""
        if platform == "cpu":
            return cls()
        return cls(block_bytes=256 << 20, untiled_rows=1 << 12, untiled_cells=1 << 23, tile_cells=0,
                   popcount="lax", packed_block=0, dispatch_threads=1, conv_algorithm="direct")

    def threads(self) -> int:
        """Host threads that run canvas calls concurrently. On CPU one canvas leaves cores idle
        between its steps (small sequential ops, loop steps, the read-back), although XLA spreads
        its products, convolutions and the Hamming loop over the cores; independent canvases from
        several threads fill those gaps (FG-Bin 1.2-1.33x with 2 threads on 2 cores).
        Accelerators: 1 (dispatch is asynchronous anyway)."""
        return self.dispatch_threads or min(4, os.cpu_count() or 1)


POPCOUNTS = ("auto", "ffi", "csa", "swar", "lax")
CONV_ALGORITHMS = ("auto", "direct", "winograd")


def resolve_conv(o: ScorerOptions, platform: str = "cpu", cells: Optional[int] = None) -> Tuple[int, int]:
    """KernelSpec.winograd for the options and a canvas of `cells` cells (None: a large one): the
    Winograd tiles of conv2 and conv3, or (0, 0) for the direct convolution ('auto': Winograd on
    CPU for canvases of at least `winograd_min_cells`; accelerators keep their convolution units)."""
    if o.conv_algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"conv_algorithm must be one of {', '.join(CONV_ALGORITHMS)}, got {o.conv_algorithm!r}")
    small = cells is not None and cells < o.winograd_min_cells
    if o.conv_algorithm == "direct" or (o.conv_algorithm == "auto" and (platform != "cpu" or small)):
        return (0, 0)
    tiles = tuple(int(m) for m in o.winograd_tiles)
    if len(tiles) != 2 or any(m not in winograd.TILES + (0,) for m in tiles):
        raise ValueError(f"winograd_tiles must be two of {winograd.TILES} (or 0: direct), got {o.winograd_tiles!r}")
    return tiles


def resolve_popcount(popcount: str, platform: str = "cpu") -> str:
    """'auto' -> on CPU 'ffi' where the native kernel is available (built on first call), else
    'csa'; on accelerators 'lax' (the popcount instruction)."""
    if popcount == "native":
        raise ValueError("popcount='native' was renamed: 'lax' is lax.population_count, 'ffi' the native "
                         "AVX2 kernel of dns_jax.native")
    if popcount not in POPCOUNTS:
        raise ValueError(f"popcount must be one of {', '.join(POPCOUNTS)}, got {popcount!r}")
    if popcount != "auto":
        return popcount
    if platform != "cpu":
        return "lax"
    return "ffi" if native.available() else "csa"


class FineScorer:
    """Batched, exact fine-grained similarity for a loaded FG student or ViSiL head.

    `binary`: for FG-Bin, 'packed' (XOR + popcount on 64-byte codes, default) or 'float' (the
    official +-1 float codes through a matrix product); both give identical results.
    `devices`: where `prepare` places the database canvases, round robin (default: every local
    device, so a database is sharded over all local GPUs/TPUs, or fake CPU devices); each canvas
    is scored on its own device against a copy of the query canvas.
    """

    def __init__(self, model, binary: str = "packed", options: Optional[ScorerOptions] = None,
                 devices: Optional[Sequence] = None):
        module = model.module
        self.model = model
        self.devices = list(devices) if devices is not None else jax.local_devices()
        if not self.devices:
            raise ValueError("FineScorer needs at least one device")
        self.options = options or ScorerOptions.for_platform(jax.default_backend())
        # a weightless network (`pretrained.load_teacher('visil_f')`: no attention, no comparator)
        # has no 'params' collection at all
        params = model.variables.get("params", {})
        if isinstance(module, FineGrainedStudent):
            if module.batch_norm:
                raise ValueError(f"FineScorer has no kernel for the batch-norm comparator of {model.name!r}; "
                                 "score it with its calculate_video_similarity")
            self.padding, self.symmetric, self.comparator = "zero", module.symmetric, True
            self.conv_params = params["visil_head"]
            self.bits = (module.bits or module.dims) if module.indexing == "bin" else 0
        elif isinstance(module, ViSiLHead):
            self.padding, self.symmetric = "replicate", module.symmetric
            self.comparator = module.video_comparator
            self.conv_params = params.get("video_comperator", {})
            self.bits = 0
        else:
            raise TypeError(f"FineScorer needs a fine-grained student or a ViSiL head, got {model.name!r} "
                            "(use dns_jax.retrieval.coarse for the coarse-grained student)")
        if binary not in ("packed", "float"):
            raise ValueError(f"binary must be 'packed' or 'float', got {binary!r}")
        self.packed = bool(self.bits) and binary == "packed"
        if self.packed and self.symmetric:
            raise ValueError("packed codes have no symmetric frame-to-frame kernel; pass binary='float'")
        if self.packed:
            codes.check_bits(self.bits)
        self.precision = module.precision
        self.dims = module.dims
        self.zero_codes_seen = 0     # exactly-0 FG-Bin codes met by index() (packed as -1)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._winograd_params: Dict[Tuple[int, int], Dict[str, Any]] = {}

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The host threads that run canvases concurrently, started once per scorer (starting them
        per call was a noticeable part of a DnS query's fine stage) and shut down when the scorer
        is garbage-collected."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.threads(), thread_name_prefix="dns_fine")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    # -- representations --------------------------------------------------------------------
    @property
    def is_binary(self) -> bool:
        return bool(self.bits)

    def index(self, videos: Sequence) -> List[np.ndarray]:
        """Raw region features [T, R, D] -> stored representations: float32 [T, R, D] (FG-Att,
        FG, ViSiL prepared tensors) or packed uint8 codes [T, R, bits/8] (FG-Bin).

        Short videos are repeated to 4 frames first (comparator networks). Videos are indexed
        together in chunks of frames (indexing works per region, so this is exact)."""
        arrs = [check_video(v, self.dims, f"video {i}") for i, v in enumerate(videos)]
        if self.comparator:
            arrs = [repeat_min_frames(a) for a in arrs]
        out: List[Optional[np.ndarray]] = [None] * len(arrs)
        by_r: Dict[int, List[int]] = {}
        for i, a in enumerate(arrs):
            by_r.setdefault(a.shape[1], []).append(i)
        method = "prepare_tensor" if isinstance(self.model.module, ViSiLHead) else "index_video"
        for r, idx in by_r.items():
            groups, cur, n = [], [], 0
            for i in idx:
                if cur and n + arrs[i].shape[0] > INDEX_CHUNK:
                    groups.append(cur)
                    cur, n = [], 0
                cur.append(i)
                n += arrs[i].shape[0]
            groups.append(cur)
            for g in groups:
                frames = np.concatenate([arrs[i] for i in g], 0)
                size = ladder_size(frames.shape[0])
                x = np.zeros((size,) + frames.shape[1:], np.float32)
                x[:frames.shape[0]] = frames
                y = np.asarray(self.model.apply(method, jnp.asarray(x)))
                pos = 0
                for i in g:
                    t = arrs[i].shape[0]
                    rep = y[pos:pos + t]
                    pos += t
                    if self.packed:
                        self.zero_codes_seen += codes.count_zero_codes(rep)
                        rep = codes.pack_codes(rep)
                    out[i] = rep
        return out

    def _kernel_input(self, rep, name: str) -> np.ndarray:
        """A stored representation -> the kernel's array (float32 or uint32 words)."""
        a = np.asarray(rep)
        if a.ndim != 3:
            raise FeatureError(f"{name}: expected an indexed video [T, R, C], got shape {a.shape}")
        if a.shape[0] == 0:
            raise FeatureError(f"{name}: empty video")
        if a.dtype in (np.uint8, np.uint32):
            if not self.bits:
                raise FeatureError(f"{name}: packed binary codes given to a non-binary network ({self.model.name})")
            words = codes.as_words(a) if a.dtype == np.uint8 else a
            if words.shape[-1] * 32 != self.bits:
                raise FeatureError(f"{name}: packed codes of {words.shape[-1] * 32} bits, the network has {self.bits}")
            if not self.packed:
                a = codes.unpack_codes(words)
            else:
                a = words
        else:
            expect = self.bits or self.dims
            if a.shape[-1] != expect:
                raise FeatureError(f"{name}: expected indexed features with {expect} dims, got shape {a.shape}")
            a = a.astype(np.float32, copy=False)
            if self.packed:
                a = codes.as_words(codes.pack_codes(a))
        if self.comparator:
            a = repeat_min_frames(a)
        return a

    # -- scoring ----------------------------------------------------------------------------
    def _segments(self, lengths: Sequence[int]) -> List[Tuple[int, int, int]]:
        """(target index, start, length) of every scored piece of targets of these frame counts."""
        segs = []
        for n, length in enumerate(np.asarray(lengths, np.int64).tolist()):
            if not self.comparator or MIN_FRAMES <= length <= TARGET_CHUNK:     # one piece: the whole video
                segs.append((n, 0, length))
                continue
            pieces = [(s, min(TARGET_CHUNK, length - s)) for s in range(0, length, TARGET_CHUNK)]
            pieces = [(s, l) for s, l in pieces if l >= MIN_FRAMES]
            segs.extend((n, s, l) for s, l in pieces)
        return segs

    def spec_for(self, rows: int, cols: int, regions: Tuple[int, int],
                 dense: Optional[Tuple[int, int]] = None) -> KernelSpec:
        """Kernel configuration for a rows x cols canvas whose frame-to-frame products are computed
        on `dense` = (query frames, target frames) (default: the canvas itself)."""
        o = self.options
        rq, rt = regions
        hd, wd = dense or (rows, cols)
        # bytes of block intermediate per (query frame, target frame)
        per_cell = rq * rt * 4
        cb_max = o.block_bytes // (hd * per_cell)
        if cb_max >= 16:
            rb, cb = hd, _pow2_floor(cb_max)
        else:
            cb = 16
            rb = _pow2_floor(max(o.block_bytes // (cb * per_cell), 1))
        tr, tc = tile_plan(rows, cols, o) if self.comparator else (0, 0)
        return KernelSpec(sim="packed" if self.packed else "float", bits=self.bits,
                          symmetric=self.symmetric, comparator=self.comparator, padding=self.padding,
                          reduce="chamfer", clip=True, precision=self.precision,
                          row_block=rb if rb < hd and not self.packed else 0,      # float products only
                          col_block=cb if cb < wd and not self.packed else 0,
                          tile_rows=tr, tile_cols=tc, tile_batch=o.tile_batch,
                          popcount=resolve_popcount(o.popcount, self.devices[0].platform) if self.packed else "lax",
                          packed_block=o.packed_block,
                          kernel_threads=o.kernel_threads,
                          winograd=resolve_conv(o, self.devices[0].platform, rows * cols) if self.comparator
                          else (0, 0))

    def kernel_params(self, spec: KernelSpec) -> Dict[str, Any]:
        """The comparator params for a kernel of `spec`: with the Winograd-transformed kernels of
        spec.winograd (computed once per scorer and tile choice, in float64; two threads meeting a
        new choice at once may both compute it, with the same result)."""
        if not any(spec.winograd):
            return self.conv_params
        key = tuple(spec.winograd)
        if key not in self._winograd_params:
            self._winograd_params[key] = winograd.with_transformed(self.conv_params, dict(zip(("conv2", "conv3"), key)))
        return self._winograd_params[key]

    def _axis(self, lengths: Sequence[int], size: int, tiled: bool) -> Tuple[Axis, np.ndarray]:
        starts, _ = place(lengths, self.padding)
        ax = Axis(size=size, starts=starts, lengths=np.asarray(lengths, np.int64),
                  capacity=max(size // 4, 1), pad=HALO if tiled else 0)
        return ax, starts

    def _canvas(self, pieces: List[Tuple[np.ndarray, int, int]], owners: List[int], dense_size: int,
                size: int, device=None) -> "Canvas":
        """Pieces (array, start, length) -> a Canvas resident on `device` (default: the first of
        the scorer's devices): the frames stored densely [dense_size, R, C] (zeros after the last
        piece) and the canvas position of each frame."""
        first = pieces[0][0]
        dense = np.zeros((dense_size,) + first.shape[1:], first.dtype)
        lengths = [n for _, _, n in pieces]
        index = self._canvas_index(lengths, size)
        pos = 0
        for arr, a, n in pieces:
            dense[pos:pos + n] = arr[a:a + n]
            pos += n
        device = device if device is not None else self.devices[0]
        return Canvas(dense=jax.device_put(dense, device), index=jax.device_put(index, device), lengths=lengths,
                      owners=list(owners), size=size, dense_size=dense_size, regions=first.shape[1],
                      device=device, starts=[a for _, a, _ in pieces])

    def _canvas_index(self, lengths: Sequence[int], size: int) -> np.ndarray:
        """Canvas position -> dense frame for segments of these lengths stored back to back."""
        starts, _ = place(lengths, self.padding)
        lens = np.asarray(lengths, np.int64)
        dense = np.arange(int(lens.sum()))
        index = np.zeros(size, np.int32)
        index[dense + np.repeat(starts - (np.cumsum(lens) - lens), lens)] = dense   # segment k's frames from starts[k]
        return index

    def prepare(self, targets: Sequence) -> "PreparedDatabase":
        """Indexed database videos -> a PreparedDatabase: their frames laid out once on canvases and
        kept on the device, so that any number of queries can be scored against it without
        copying or re-laying out the database (`similarities(queries, prepared)`).

        Canvases are `options.max_cols` columns wide: segments take their frames plus their gap and
        4-frame alignment (`pack_gaps`), filled first-fit decreasing, so almost every canvas is full
        and few padded frames enter the matrix products or the CNN; a target over 2048 frames
        contributes its 2048-frame chunks as separate pieces. The prepared copy takes as much
        memory as the representations themselves (device memory on an accelerator), spread
        round robin over the scorer's devices."""
        if isinstance(targets, PreparedDatabase):
            return targets
        if isinstance(targets, ResidentSubset):
            return self._prepare_subset(targets)
        if len(targets) == 0:
            raise FeatureError("empty database: no target videos to score")
        ts = [self._kernel_input(t, f"target {i}") for i, t in enumerate(targets)]
        segs = self._segments([t.shape[0] for t in ts])
        counts = np.zeros(len(ts), np.int64)
        canvases = []
        for _, ids, dense_size, size in self._canvas_groups(segs, [t.shape[1] for t in ts], counts):
            canvases.append(self._canvas([(ts[segs[k][0]], segs[k][1], segs[k][2]) for k in ids],
                                         [segs[k][0] for k in ids], dense_size, size,
                                         self.devices[len(canvases) % len(self.devices)]))
        return PreparedDatabase(n=len(ts), counts=counts, canvases=canvases)

    def _canvas_groups(self, segs: List[Tuple[int, int, int]], keys: Sequence, counts: np.ndarray):
        """The database canvases of these target pieces: (key, piece ids, dense frames, canvas size)
        per canvas, pieces grouped by their target's key (regions, or the resident part) and packed
        first-fit decreasing; counts[n] gets the pieces of target n."""
        by_key: Dict[Any, List[int]] = {}
        for k, (n, _, _) in enumerate(segs):
            counts[n] += 1
            by_key.setdefault(keys[n], []).append(k)
        gap = segment_gap(self.padding)
        for key, seg_ids in sorted(by_key.items()):
            lens = [segs[k][2] for k in seg_ids]
            # pack_gaps: a segment takes its gap and 4-frame alignment too (its canvas width, layout.place)
            sizes = ((np.asarray(lens, np.int64) + gap + 3) // 4 * 4).tolist() if self.options.pack_gaps else lens
            cap = max(self.options.max_cols, max(sizes))
            groups = pack_dense(sizes, cap)
            step = self.options.width_step if len(groups) > 1 else 0
            for group in groups:
                ids = [seg_ids[g] for g in group]
                pl = [segs[k][2] for k in ids]
                _, placed = place(pl, self.padding)
                if step and placed < cap:   # a partly filled canvas of a large subset: a bucket width
                    size = canvas_width(min(round_up(placed, step), cap))
                    yield key, ids, size, size
                else:
                    yield key, ids, dense_width(sum(pl), cap), canvas_width(placed)

    def resident(self, targets, devices: Optional[Sequence] = None) -> "ResidentDatabase":
        """Every target's kernel input stored once on the device(s) (`devices`, default the
        scorer's: contiguous ranges of videos, balanced by frames, one per device), so that any
        subset can later be scored without its frames crossing the host: `similarities(queries,
        resident.subset(idx))` lays the subset out on canvases by gathering its frames on the device
        (only the small index arrays of the layout are sent; the kernel gathers the frames block
        by block while multiplying), at about the cost of a prepared database.

        `targets`: a list of indexed videos, or a database with `fine_rep(i)` and `len()` (an Index,
        Representations), read one device range at a time. Takes as much device memory as the
        representations (FG-Bin codes: 576 bytes per frame; FG-Att: 18 KiB)."""
        if isinstance(targets, ResidentDatabase):
            return targets
        n = len(targets)
        if n == 0:
            raise FeatureError("empty database: no target videos to store")
        get = targets.fine_rep if hasattr(targets, "fine_rep") else targets.__getitem__
        devices = list(devices) if devices is not None else self.devices
        lengths = np.zeros(n, np.int64)
        regions = np.zeros(n, np.int64)
        for i in range(n):
            shape = np.shape(get(i))
            if len(shape) != 3 or shape[0] == 0:
                raise FeatureError(f"target {i}: expected an indexed video [T, R, C], got shape {shape}")
            lengths[i] = repeated_length(shape[0]) if self.comparator else shape[0]
            regions[i] = shape[1]
        # contiguous ranges of about equal frames, one per device
        bounds = np.searchsorted(np.cumsum(lengths), np.arange(1, len(devices)) * lengths.sum() / len(devices))
        ranges = np.split(np.arange(n), np.minimum(bounds + 1, n))
        part = np.zeros(n, np.int32)
        start = np.zeros(n, np.int64)
        parts: List[ResidentPart] = []
        for device, rng in zip(devices, ranges):
            for r in sorted(set(regions[rng].tolist())):
                vids = rng[regions[rng] == r]
                first = self._kernel_input(get(int(vids[0])), f"target {int(vids[0])}")
                frames = np.zeros((int(lengths[vids].sum()) + 1, r) + first.shape[2:], first.dtype)
                pos = 0
                for i in vids.tolist():
                    a = first if i == vids[0] else self._kernel_input(get(i), f"target {i}")
                    if a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
                        raise FeatureError(f"target {i}: shape {a.shape} / {a.dtype} differs from the other "
                                           f"targets ({first.shape[1:]} / {first.dtype})")
                    frames[pos:pos + a.shape[0]] = a
                    part[i], start[i] = len(parts), pos
                    pos += a.shape[0]
                parts.append(ResidentPart(frames=jax.device_put(frames, device), device=device, regions=int(r),
                                          zero=pos))
                del frames
        return ResidentDatabase(n=n, lengths=lengths, part=part, start=start, parts=parts)

    def warm_up(self, queries: Sequence, targets: "ResidentDatabase") -> None:
        """Compile the canvas kernels that scoring these queries against large subsets of `targets`
        meets: full canvases and every bucket width of a partly filled one (multiples of
        `options.width_step` up to `max_cols`, see _canvas_groups), on every resident part. Each
        runs once on a canvas of 64-frame segments; the scores are discarded. A subset small
        enough for one canvas keeps its fine width and may still compile."""
        o = self.options
        if not o.width_step:
            return
        gap = segment_gap(self.padding)
        widths = sorted({canvas_width(min(w, o.max_cols))
                         for w in range(o.width_step, o.max_cols + o.width_step, o.width_step)})
        for part in targets.parts:
            canvases = []
            for w in widths:
                lens = [64] * max(w // round_up(64 + gap, 4), 1)
                while place(lens, self.padding)[1] > w and len(lens) > 1:
                    lens.pop()
                if place(lens, self.padding)[1] > w:
                    lens = [w - gap]
                canvases.append(Canvas(dense=part.frames, index=jax.device_put(self._canvas_index(lens, w), part.device),
                                       lengths=lens, owners=[0] * len(lens), size=w, dense_size=w,
                                       regions=part.regions, device=part.device, starts=[0] * len(lens),
                                       take=jax.device_put(np.full(w, part.zero, np.int32), part.device)))
            self.similarities(queries, PreparedDatabase(n=1, counts=np.array([sum(len(c.lengths) for c in canvases)]),
                                                        canvases=canvases))

    def _prepare_subset(self, sub: "ResidentSubset") -> "PreparedDatabase":
        """Canvases of a subset of a resident database, gathered on its devices: the layout (which
        frame goes where) is computed here from the lengths alone, exactly as `prepare` lays out
        the same videos given as arrays (same canvases, the same zero padding frames); a canvas
        holds only the index of each of its dense frames in the resident array (`Canvas.take`),
        and the kernel gathers them block by block as it multiplies (kernels.frame_to_frame_canvas)."""
        db, idx = sub.db, np.asarray(sub.idx, np.int64).reshape(-1)
        if idx.size == 0:
            raise FeatureError("empty database: no target videos to score")
        if idx.min() < 0 or idx.max() >= db.n:
            raise IndexError(f"subset indices out of range for a database of {db.n} videos")
        segs = self._segments(db.lengths[idx])
        counts = np.zeros(len(idx), np.int64)
        canvases = []
        for p, ids, dense_size, size in self._canvas_groups(segs, db.part[idx].tolist(), counts):
            part = db.parts[p]
            pl = [segs[k][2] for k in ids]
            lens = np.asarray(pl, np.int64)
            first = db.start[idx[[segs[k][0] for k in ids]]] + np.asarray([segs[k][1] for k in ids], np.int64)
            take = np.full(dense_size, part.zero, np.int32)
            n = int(lens.sum())          # piece k's frames are first[k], first[k] + 1, ... back to back
            take[:n] = np.arange(n) + np.repeat(first - (np.cumsum(lens) - lens), lens)
            canvases.append(Canvas(dense=part.frames, index=jax.device_put(self._canvas_index(pl, size), part.device),
                                   lengths=pl, owners=[segs[k][0] for k in ids], size=size,
                                   dense_size=dense_size, regions=part.regions, device=part.device,
                                   take=jax.device_put(take, part.device), starts=[segs[k][1] for k in ids]))
        return PreparedDatabase(n=len(idx), counts=counts, canvases=canvases)

    def similarities(self, queries: Sequence, targets, progress=None, frame_matrices: bool = False):
        """Indexed queries x indexed targets (a list, a PreparedDatabase from `prepare`, or a
        `ResidentDatabase.subset(idx)`) -> (Q, N) float32 similarities, official path.

        `frame_matrices=True`: -> (similarities, FrameMatrices), the frame-to-frame matrices these
        scores were computed from, kept (on the device until read) for localization; they take
        4 bytes per (query frame, target frame) of the call."""
        if not isinstance(targets, PreparedDatabase) and len(targets) == 0:
            raise FeatureError("empty database: no target videos to score")
        if len(queries) == 0:
            raise FeatureError("no query videos")
        qs = [self._kernel_input(q, f"query {i}") for i, q in enumerate(queries)]
        db = self.prepare(targets)
        sums = np.zeros((len(qs), db.n), np.float64)
        o = self.options
        q_groups: Dict[int, List[int]] = {}
        for i, q in enumerate(qs):
            q_groups.setdefault(q.shape[1], []).append(i)
        row_groups = []
        for rq, q_ids in sorted(q_groups.items()):
            qlens = [qs[i].shape[0] for i in q_ids]
            cap_rows = max(o.max_rows, ladder_size(max(qlens) + 16))
            for rgroup in pack_segments(qlens, cap_rows, cap_rows // 4, self.padding):
                row_groups.append([q_ids[g] for g in rgroup])
        row_canvases: Dict[Any, List[Canvas]] = {}      # per device: the query canvases placed there

        def rows_on(device) -> List[Canvas]:
            if device not in row_canvases:
                out = []
                for rids in row_groups:
                    rl = [qs[i].shape[0] for i in rids]
                    _, placed = place(rl, self.padding)
                    out.append(self._canvas([(qs[i], 0, qs[i].shape[0]) for i in rids], rids,
                                            query_rows(sum(rl)), canvas_rows(placed, o), device))
                row_canvases[device] = out
            return row_canvases[device]

        work = []       # (query canvas, database canvas, kernel spec); maps made here, before any thread
        for cc in db.canvases:
            for rc in rows_on(cc.device):
                spec = self.spec_for(rc.size, cc.size, (rc.regions, cc.regions), (rc.dense_size, cc.dense_size))
                rc.maps(self, bool(spec.tile_rows))
                cc.maps(self, bool(spec.tile_cols))
                work.append((rc, cc, spec))

        def run(rc: Canvas, cc: Canvas, spec: KernelSpec):
            return canvas_similarity(self.kernel_params(spec), rc.dense, cc.dense, rc.maps(self, bool(spec.tile_rows)),
                                     cc.maps(self, bool(spec.tile_cols)), spec, rows_index=rc.index,
                                     cols_index=cc.index, cols_take=cc.take, with_f2f=frame_matrices)

        kept = FrameMatrices([q.shape[0] for q in qs], db) if frame_matrices else None

        def scores(out, rc: Canvas, cc: Canvas):
            if kept is None:
                return out
            kept.add(out[1], rc, cc)
            return out[0]

        per_db_canvas = len(work) // max(len(db.canvases), 1)
        threads = min(o.threads(), len(work))
        if threads > 1:    # CPU: canvases run concurrently, each read back in its own thread
            results = self._thread_pool().map(lambda w: np.asarray(scores(run(*w), w[0], w[1])), work)
            for k, ((rc, cc, _), res) in enumerate(zip(work, results)):
                self._collect((res, rc.owners, cc.owners), sums)
                if progress is not None and (k + 1) % per_db_canvas == 0:
                    progress(len(cc.owners))
        else:              # accelerators: every call dispatched before any read-back
            pending = []
            for k, (rc, cc, spec) in enumerate(work):
                pending.append((scores(run(rc, cc, spec), rc, cc), rc.owners, cc.owners))
                if progress is not None and (k + 1) % per_db_canvas == 0:
                    progress(len(cc.owners))
            for item in pending:
                self._collect(item, sums)
        sims = (sums / db.counts[None, :]).astype(np.float32)
        return (sims, kept) if frame_matrices else sims

    def frame_matrices(self, query, targets: Sequence) -> List[np.ndarray]:
        """Frame-to-frame matrices [Tq, Tt_i] float32 of one indexed query and indexed targets (of
        one region count), without the comparator: the matrices `similarities(...,
        frame_matrices=True)` keeps, for pairs it did not score. One kernel call: a frame pair's
        similarity does not depend on the other frames, so the targets are concatenated (padded to
        a ladder size, the query to `query_rows`: few compiled shapes)."""
        q = self._kernel_input(query, "query")
        ts = [self._kernel_input(t, f"target {i}") for i, t in enumerate(targets)]
        if not ts:
            return []
        if len({t.shape[1:] for t in ts}) > 1:
            raise FeatureError("frame_matrices: targets with different region counts; call once per count")
        starts = np.concatenate([[0], np.cumsum([t.shape[0] for t in ts])]).astype(int)
        cat = np.zeros((ladder_size(int(starts[-1])),) + ts[0].shape[1:], ts[0].dtype)
        cat[:starts[-1]] = np.concatenate(ts)
        qp = np.zeros((query_rows(q.shape[0]),) + q.shape[1:], q.dtype)
        qp[:q.shape[0]] = q
        spec = self.spec_for(qp.shape[0], cat.shape[0], (q.shape[1], cat.shape[1]))
        f2f = np.asarray(frame_to_frame_dense(jax.device_put(qp, self.devices[0]),
                                              jax.device_put(cat, self.devices[0]), spec))[:q.shape[0]]
        return [f2f[:, a:b] for a, b in zip(starts[:-1], starts[1:])]

    @staticmethod
    def _collect(item, sums):
        out, rids, tids = item
        res = np.asarray(out)
        sub = res[:len(rids), :len(tids)]
        for j, n in enumerate(tids):
            sums[rids, n] += sub[:, j]


@dataclasses.dataclass
class Canvas:
    """One axis of the canvas, device-resident: `dense` [dense_size, R, C] frames of the segments
    back to back (or, with `take` [dense_size], a resident array whose frames `take` are those);
    `index` [size] the dense frame shown at each canvas position (segment i starts at
    layout.place(lengths)[0][i]); `owners` the video of each segment."""

    dense: Any
    index: Any
    lengths: List[int]
    owners: List[int]
    size: int
    dense_size: int
    regions: int
    device: Any = None
    take: Any = None          # a resident subset's canvas: dense is the resident frames, these its dense frames
    starts: Optional[List[int]] = None    # first frame of each segment in its video (2048-frame chunks)
    _maps: Dict[bool, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    def maps(self, scorer: "FineScorer", tiled: bool) -> Dict[str, Any]:
        if tiled not in self._maps:
            ax, _ = scorer._axis(self.lengths, self.size, tiled)
            self._maps[tiled] = jax.device_put(ax.maps(scorer.padding, scorer.comparator), self.device)
        return self._maps[tiled]


class FrameMatrices:
    """The frame-to-frame matrices of a `FineScorer.similarities(..., frame_matrices=True)` call.

    `matrix(q, n)` -> [Tq, Tt] float32 of query q and target n, the very matrix their score was
    computed from (before the comparator): frames as the kernel saw them, so a video shorter than
    4 frames appears repeated to 4 (or 6) frames; a target over 2048 frames is assembled from its
    chunks and loses the last frames of a tail chunk too short to score (< 4 frames)."""

    def __init__(self, query_lengths: Sequence[int], db: "PreparedDatabase"):
        self.query_lengths = [int(n) for n in query_lengths]
        self.n = db.n
        self._blocks: List[Any] = []                      # [Hd, Wd] per canvas pair (device, then host)
        self._rows: List[Dict[int, int]] = []             # per block: query -> first dense row
        self._cols: Dict[int, List[Tuple[int, int, int, int]]] = {}   # target -> (block, column, start, frames)
        self._lock = threading.Lock()

    def add(self, f2f, rc: "Canvas", cc: "Canvas") -> None:
        """Keep the dense matrix of one (query canvas, database canvas) call."""
        rows, pos = {}, 0
        for q, n in zip(rc.owners, rc.lengths):
            rows[int(q)] = pos
            pos += n
        with self._lock:
            k = len(self._blocks)
            self._blocks.append(f2f)
            self._rows.append(rows)
            col = 0
            starts = cc.starts if cc.starts is not None else [0] * len(cc.owners)
            for n, a, length in zip(cc.owners, starts, cc.lengths):
                self._cols.setdefault(int(n), []).append((k, col, int(a), int(length)))
                col += length

    def __contains__(self, pair) -> bool:
        q, n = pair
        return any(q in self._rows[k] for k, *_ in self._cols.get(int(n), ()))

    def matrix(self, q: int, n: int) -> np.ndarray:
        """[Tq, Tt] float32 frame similarities of query q and target n (KeyError: not computed)."""
        q, n = int(q), int(n)
        pieces = [p for p in self._cols.get(n, ()) if q in self._rows[p[0]]]
        if not pieces:
            raise KeyError(f"no frame-to-frame matrix of query {q} and target {n} in this call")
        tq = self.query_lengths[q]
        out = np.full((tq, max(a + length for _, _, a, length in pieces)), np.nan, np.float32)
        for k, col, a, length in pieces:
            with self._lock:
                if not isinstance(self._blocks[k], np.ndarray):
                    self._blocks[k] = np.asarray(self._blocks[k])
            r0 = self._rows[k][q]
            out[:, a:a + length] = self._blocks[k][r0:r0 + tq, col:col + length]
        return out


@dataclasses.dataclass
class PreparedDatabase:
    """A database laid out on device-resident canvases by FineScorer.prepare (reusable by every
    query; tied to the scorer's network type). `counts[n]`: the pieces (2048-frame chunks) of
    target n whose similarities are averaged."""

    n: int
    counts: np.ndarray
    canvases: List[Canvas]

    def __len__(self):
        return self.n


@dataclasses.dataclass
class ResidentPart:
    """Frames of some resident videos back to back on one device, [F + 1, R, C] kernel inputs (float32
    or uint32 code words); frame `zero` (the last) is all zeros, the padding of gathered canvases."""

    frames: Any
    device: Any
    regions: int
    zero: int


@dataclasses.dataclass
class ResidentDatabase:
    """A database's kernel inputs kept on the device(s) (FineScorer.resident): video i is frames
    start[i] : start[i] + lengths[i] of parts[part[i]]. `subset(idx)` is what `similarities` takes to
    score some of its videos (in idx's order) with an on-device layout."""

    n: int
    lengths: np.ndarray
    part: np.ndarray
    start: np.ndarray
    parts: List[ResidentPart]

    def __len__(self):
        return self.n

    @property
    def nbytes(self) -> int:
        return int(sum(p.frames.nbytes for p in self.parts))

    def subset(self, idx) -> "ResidentSubset":
        return ResidentSubset(self, np.asarray(idx, np.int64).reshape(-1))


@dataclasses.dataclass
class ResidentSubset:
    """Videos `idx` of a ResidentDatabase, in that order (FineScorer.similarities' targets)."""

    db: ResidentDatabase
    idx: np.ndarray

    def __len__(self):
        return int(self.idx.shape[0])


def _pow2_floor(n: int) -> int:
    b = 1
    while b * 2 <= n:
        b *= 2
    return b


def query_rows(n: int) -> int:
    """Dense query frames for n query frames: n rounded up to a multiple of max(4, 2^k / 16) for the
    power of two 2^k <= n (at most ~6% padded rows, ~16 compiled sizes per octave of query length)."""
    return round_up(n, max(4, _pow2_floor(max(n, 1)) // 16))


def dense_width(n: int, cap: int) -> int:
    """Dense target frames of a canvas holding n frames (capacity cap): a ladder size, at most cap
    (full canvases all get cap: one compiled shape)."""
    return min(ladder_size(n), cap)


def canvas_rows(placed: int, o: ScorerOptions) -> int:
    """Canvas rows for query segments placed over `placed` rows: up to `o.untiled_rows` (untiled),
    the fine steps of query_rows (a 60-frame query gets 60 rows, not a ladder's 64: the CNN's
    cost is proportional); beyond, a ladder size (tiles of many rows divide it)."""
    return query_rows(placed) if placed <= o.untiled_rows else ladder_size(placed)


def canvas_width(placed: int) -> int:
    """Canvas columns for segments placed over `placed` positions: a ladder size up to 512, then a
    multiple of 256 (CNN tiles are divisors of it; a finer step would mean more compiled sizes)."""
    return ladder_size(placed) if placed <= 512 else round_up(placed, 256)


def scorer_for(model, binary: str = "packed") -> FineScorer:
    """A FineScorer cached on the model object (kernels compile once per canvas size)."""
    cache = model.__dict__.setdefault("_dns_retrieval_scorers", {})
    if binary not in cache:
        cache[binary] = FineScorer(model, binary=binary)
    return cache[binary]
