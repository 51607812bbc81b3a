// Frame-to-frame similarity of bit-packed binary codes (FG-Bin) on x86-64 CPUs with AVX2, as an
// XLA FFI custom call. Built on first use by dns_jax/native/build.py; see dns_jax/native/__init__.py.
//
//   q   uint32 [H, Rq, W]  query frames: Rq regions of W 32-bit words (bits = 32 W at most)
//   t   uint32 [N, Rt, W]  target frames
//   out float32 [H, N]     out[i, j] = mean over query regions a of (bits - 2 min_b popcount(q[i,a] ^ t[j,b])) / bits
//
// which equals the official float path on the +-1 codes (dot = bits - 2 * Hamming distance).
//
// Layout: eight target frames share one AVX2 vector (one 32-bit lane each), so the minimum over
// target regions and the sum over query regions need no horizontal operations. The 16 XORed words
// of a region pair are added with carry-save adders down to one word per weight 1..16, those five
// words are counted with a nibble lookup (vpshufb) and combined in byte lanes (<= 248), then
// widened to 32-bit lanes: about 16 vector operations per region pair. Work is split into chunks of
// query rows x 64 target frames, spread over XLA's intra-op thread pool (the calling thread takes
// chunks too, so it never waits for a pool thread that has not started).
//
// On CPUs with AVX-512 VPOPCNTDQ (Zen 4, Ice Lake and later) a second loop is used instead: sixteen
// target frames per 512-bit vector, and each XORed word counted by one vpopcntd and added: 3
// instructions per word for 16 region pairs instead of ~100 per 16 words for 8. The distances are
// the same integers, so the output is identical. dns_jax_native_set_isa() forces either loop
// (benchmarks; DNS_JAX_NATIVE=avx2 does it at load).

#include <algorithm>
#include <climits>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DNS_JAX_X86 1
#else
#define DNS_JAX_X86 0
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 8;          // target frames per vector
constexpr int kGroup = 16;         // words per carry-save group
constexpr int kChunkCols = 64;     // target frames per work chunk
constexpr int kChunkRows = 128;    // query frames per work chunk
constexpr int kLanes512 = 16;      // target frames per 512-bit vector

// 0: the best loop this CPU supports, 1: AVX2, 2: AVX-512 VPOPCNTDQ (if supported; else AVX2)
std::atomic<int> g_isa{0};

#if DNS_JAX_X86

#define DNS_JAX_AVX2 __attribute__((target("avx2")))

DNS_JAX_AVX2 inline void Csa(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

DNS_JAX_AVX2 inline __m256i ByteCounts(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

// Hamming distances of one query region (16 broadcast words qb) to eight target regions (16
// word vectors tb, lane = target frame) -> eight 32-bit counts.
DNS_JAX_AVX2 inline __m256i Hamming16(const __m256i* qb, const __m256i* tb) {
  __m256i x[kGroup];
  for (int k = 0; k < kGroup; ++k) x[k] = _mm256_xor_si256(qb[k], _mm256_load_si256(tb + k));
  __m256i ones, twos, fours, eights, sixteens, ta, tb2, fa, fb, ea, eb;
  ta = _mm256_and_si256(x[0], x[1]);
  ones = _mm256_xor_si256(x[0], x[1]);
  Csa(tb2, ones, ones, x[2], x[3]);
  fa = _mm256_and_si256(ta, tb2);
  twos = _mm256_xor_si256(ta, tb2);
  Csa(ta, ones, ones, x[4], x[5]);
  Csa(tb2, ones, ones, x[6], x[7]);
  Csa(fb, twos, twos, ta, tb2);
  ea = _mm256_and_si256(fa, fb);
  fours = _mm256_xor_si256(fa, fb);
  Csa(ta, ones, ones, x[8], x[9]);
  Csa(tb2, ones, ones, x[10], x[11]);
  Csa(fa, twos, twos, ta, tb2);
  Csa(ta, ones, ones, x[12], x[13]);
  Csa(tb2, ones, ones, x[14], x[15]);
  Csa(fb, twos, twos, ta, tb2);
  Csa(eb, fours, fours, fa, fb);
  sixteens = _mm256_and_si256(ea, eb);
  eights = _mm256_xor_si256(ea, eb);
  // 16 c16 + 8 c8 + 4 c4 + 2 c2 + c1 per byte (<= 248), by doubling
  __m256i v = ByteCounts(sixteens);
  v = _mm256_add_epi8(_mm256_add_epi8(v, v), ByteCounts(eights));
  v = _mm256_add_epi8(_mm256_add_epi8(v, v), ByteCounts(fours));
  v = _mm256_add_epi8(_mm256_add_epi8(v, v), ByteCounts(twos));
  v = _mm256_add_epi8(_mm256_add_epi8(v, v), ByteCounts(ones));
  v = _mm256_maddubs_epi16(v, _mm256_set1_epi8(1));
  return _mm256_madd_epi16(v, _mm256_set1_epi16(1));
}

struct Problem {
  const uint32_t* q;
  const uint32_t* t;
  float* out;
  int64_t h, n, rq, rt, w, bits;
};

// Target words of frames [j0, j1) lane-major, [block][region][word][lane], `lanes` frames a block
// and `words` words a region; td must be zeroed (the words past p.w and the lanes past j1 stay zero,
// and zeros XOR zeros count 0).
inline void LayoutTargets(const Problem& p, uint32_t* td, int64_t j0, int64_t j1, int64_t lanes, int64_t words) {
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t blk = (j - j0) / lanes, lane = (j - j0) % lanes;
    for (int64_t b = 0; b < p.rt; ++b) {
      const uint32_t* src = p.t + (j * p.rt + b) * p.w;
      uint32_t* dst = td + ((blk * p.rt + b) * words) * lanes + lane;
      for (int64_t k = 0; k < p.w; ++k) dst[k * lanes] = src[k];
    }
  }
}

// Scores of query row i and the m target frames from j, from their summed minimum distances; as
// XLA computes the float path: sum over regions of (bits - 2 d) (exact), times 1/R (its mean:
// division by a constant becomes a product), / bits.
inline void StoreScores(const Problem& p, const int32_t* sums, int64_t i, int64_t j, int64_t m) {
  const float inv_r = 1.0f / static_cast<float>(p.rq), fbits = static_cast<float>(p.bits);
  float* dst = p.out + i * p.n + j;
  for (int64_t l = 0; l < m; ++l) {
    const float s = static_cast<float>(p.rq * p.bits - 2 * static_cast<int64_t>(sums[l]));
    dst[l] = (s * inv_r) / fbits;
  }
}

// One chunk: query rows [i0, i1) x target frames [j0, j1).
DNS_JAX_AVX2 bool RunChunk(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t groups = (p.w + kGroup - 1) / kGroup;
  const int64_t words = groups * kGroup;
  const int64_t blocks = (j1 - j0 + kLanes - 1) / kLanes;
  // target words, lane-major: [block][region][word][lane], zero padded (zeros XOR zeros count 0)
  const int64_t nt = blocks * p.rt * words, nq = p.rq * words;
  std::unique_ptr<void, decltype(&std::free)> mem(
      std::aligned_alloc(sizeof(__m256i), (nt + nq) * sizeof(__m256i)), &std::free);
  if (!mem) return false;
  __m256i* tt = static_cast<__m256i*>(mem.get());
  __m256i* qb = tt + nt;
  uint32_t* td = reinterpret_cast<uint32_t*>(tt);
  std::memset(td, 0, nt * sizeof(__m256i));
  LayoutTargets(p, td, j0, j1, kLanes, words);
  alignas(32) int32_t sums[kLanes];
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t a = 0; a < p.rq; ++a) {
      const uint32_t* src = p.q + (i * p.rq + a) * p.w;
      for (int64_t k = 0; k < words; ++k)
        qb[a * words + k] = _mm256_set1_epi32(static_cast<int>(k < p.w ? src[k] : 0u));
    }
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const __m256i* tb = tt + blk * p.rt * words;
      __m256i sum = _mm256_setzero_si256();
      for (int64_t a = 0; a < p.rq; ++a) {
        __m256i best = _mm256_set1_epi32(INT32_MAX);
        for (int64_t b = 0; b < p.rt; ++b) {
          __m256i d = _mm256_setzero_si256();
          for (int64_t g = 0; g < groups; ++g)
            d = _mm256_add_epi32(d, Hamming16(qb + a * words + g * kGroup,
                                              tb + b * words + g * kGroup));
          best = _mm256_min_epi32(best, d);
        }
        sum = _mm256_add_epi32(sum, best);
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums), sum);
      const int64_t j = j0 + blk * kLanes;
      StoreScores(p, sums, i, j, std::min<int64_t>(kLanes, j1 - j));
    }
  }
  return true;
}

#define DNS_JAX_AVX512 __attribute__((target("avx2,avx512f,avx512vpopcntdq")))

bool HasAvx512Popcount() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
}

// Sum over query regions of the min over target regions of the Hamming distances, for 16 target
// frames (lanes) of one block: words of kW > 0 at compile time (the loop unrolled), else p.w.
template <int kW>
DNS_JAX_AVX512 inline void Block512(const Problem& p, const __m512i* qv, const __m512i* tb, __m512i& sum) {
  const int64_t w = kW > 0 ? kW : p.w;
  __m512i best = _mm512_set1_epi32(INT32_MAX);
  for (int64_t b = 0; b < p.rt; ++b) {
    const __m512i* tw = tb + b * w;
    __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 1 < w; k += 2) {
      d0 = _mm512_add_epi32(d0, _mm512_popcnt_epi32(_mm512_xor_si512(qv[k], _mm512_load_si512(tw + k))));
      d1 = _mm512_add_epi32(d1, _mm512_popcnt_epi32(_mm512_xor_si512(qv[k + 1], _mm512_load_si512(tw + k + 1))));
    }
    if (k < w) d0 = _mm512_add_epi32(d0, _mm512_popcnt_epi32(_mm512_xor_si512(qv[k], _mm512_load_si512(tw + k))));
    best = _mm512_min_epi32(best, _mm512_add_epi32(d0, d1));
  }
  sum = _mm512_add_epi32(sum, best);
}

// RunChunk with 16 target frames per vector and vpopcntd (same distances, same float operations).
template <int kW>
DNS_JAX_AVX512 bool RunChunk512(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t w = kW > 0 ? kW : p.w;
  const int64_t blocks = (j1 - j0 + kLanes512 - 1) / kLanes512;
  // target words, lane-major: [block][region][word][lane]; lanes past j1 are zero (never stored);
  // then the query's broadcast words [region][word] and the per-block sums
  const int64_t nt = blocks * p.rt * w, nq = p.rq * w;
  std::unique_ptr<void, decltype(&std::free)> mem(
      std::aligned_alloc(sizeof(__m512i), (nt + nq + blocks) * sizeof(__m512i)), &std::free);
  if (!mem) return false;
  __m512i* tt = static_cast<__m512i*>(mem.get());
  __m512i* qv = tt + nt;
  __m512i* sums = qv + nq;
  uint32_t* td = reinterpret_cast<uint32_t*>(tt);
  std::memset(td, 0, nt * sizeof(__m512i));
  LayoutTargets(p, td, j0, j1, kLanes512, w);
  alignas(64) int32_t lanes[kLanes512];
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k = 0; k < nq; ++k) qv[k] = _mm512_set1_epi32(static_cast<int>(p.q[i * nq + k]));
    for (int64_t blk = 0; blk < blocks; ++blk) {
      __m512i sum = _mm512_setzero_si512();
      for (int64_t a = 0; a < p.rq; ++a) Block512<kW>(p, qv + a * w, tt + blk * p.rt * w, sum);
      sums[blk] = sum;
    }
    for (int64_t blk = 0; blk < blocks; ++blk) {
      _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), sums[blk]);
      const int64_t j = j0 + blk * kLanes512;
      StoreScores(p, lanes, i, j, std::min<int64_t>(kLanes512, j1 - j));
    }
  }
  return true;
}

using ChunkFn = bool (*)(const Problem&, int64_t, int64_t, int64_t, int64_t);

// The loop for this problem and the ISA setting (see g_isa).
ChunkFn PickChunk(const Problem& p) {
  const int isa = g_isa.load();
  if (isa != 1 && HasAvx512Popcount()) return p.w == 16 ? &RunChunk512<16> : &RunChunk512<0>;
  return &RunChunk;
}

// Shared by the caller and the pool tasks; the tasks hold it alive past the call.
struct Job {
  Problem p;
  ChunkFn chunk = nullptr;
  int64_t row_chunks = 0, col_chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::condition_variable cv;

  int64_t Count() const { return row_chunks * col_chunks; }
  void Work() {
    const int64_t total = Count();
    for (int64_t c; (c = next.fetch_add(1)) < total;) {
      const int64_t ri = c / col_chunks, ci = c % col_chunks;
      if (!chunk(p, ri * kChunkRows, std::min(p.h, (ri + 1) * kChunkRows), ci * kChunkCols,
               std::min(p.n, (ci + 1) * kChunkCols)))
        failed = true;
      if (done.fetch_add(1) + 1 == total) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

#endif  // DNS_JAX_X86

ffi::Error MinHammingImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> t,
                          ffi::ResultBuffer<ffi::F32> out, int64_t bits, int64_t threads) {
#if DNS_JAX_X86
  if (!__builtin_cpu_supports("avx2"))
    return ffi::Error::InvalidArgument("dns_jax min_hamming: this CPU has no AVX2");
  auto qd = q.dimensions(), td = t.dimensions(), od = out->dimensions();
  if (qd.size() != 3 || td.size() != 3 || od.size() != 2)
    return ffi::Error::InvalidArgument("dns_jax min_hamming: expected q [H,R,W], t [N,R,W], out [H,N]");
  if (qd[2] != td[2] || od[0] != qd[0] || od[1] != td[0])
    return ffi::Error::InvalidArgument("dns_jax min_hamming: mismatched shapes");
  if (qd[1] < 1 || td[1] < 1 || qd[2] < 1 || bits < 1 || bits > 32 * qd[2])
    return ffi::Error::InvalidArgument("dns_jax min_hamming: need R >= 1, W >= 1, 1 <= bits <= 32 W");
  std::shared_ptr<Job> job;
  try {
    job = std::make_shared<Job>();
  } catch (const std::bad_alloc&) {   // nothing may cross the C boundary into XLA
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "dns_jax min_hamming: out of memory");
  }
  job->p = Problem{q.typed_data(), t.typed_data(), out->typed_data(), qd[0], td[0], qd[1], td[1], qd[2], bits};
  if (job->p.h == 0 || job->p.n == 0) return ffi::Error::Success();
  job->chunk = PickChunk(job->p);
  job->row_chunks = (job->p.h + kChunkRows - 1) / kChunkRows;
  job->col_chunks = (job->p.n + kChunkCols - 1) / kChunkCols;
  const int64_t total = job->Count();
  const int64_t helpers = std::min<int64_t>(threads > 0 ? threads - 1 : pool.num_threads(), total - 1);
  for (int64_t k = 0; k < helpers; ++k) {
    try {
      pool.Schedule([job] { job->Work(); });
    } catch (const std::exception&) {   // fewer helpers: the caller takes their chunks
      break;
    }
  }
  job->Work();
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == total; });
  if (job->failed) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "dns_jax min_hamming: out of memory");
  return ffi::Error::Success();
#else
  return ffi::Error::InvalidArgument("dns_jax min_hamming: needs an x86-64 CPU with AVX2");
#endif
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnsJaxMinHamming, MinHammingImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("bits")
                                  .Attr<int64_t>("threads"));

// Which Hamming loop the kernel uses: 0 the best supported (default), 1 AVX2, 2 AVX-512 VPOPCNTDQ
// where supported. Returns the loop now in use for 16-word codes (1 or 2), or 0 without AVX2.
extern "C" int dns_jax_native_set_isa(int isa) {
#if DNS_JAX_X86
  if (isa >= 0 && isa <= 2) g_isa = isa;
  if (!__builtin_cpu_supports("avx2")) return 0;
  return (g_isa.load() != 1 && HasAvx512Popcount()) ? 2 : 1;
#else
  return 0;
#endif
}

extern "C" int dns_jax_native_supported() {
#if DNS_JAX_X86
  return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
  return 0;
#endif
}
