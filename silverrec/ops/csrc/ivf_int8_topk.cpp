// CPU kernel of torch.ops.silverrec.ivf_int8_topk: probe, filter, INT8 score and top-k in one pass.
//
// Spec: silverrec/ops/reference.py::ivf_int8_topk_reference. For each query (threads take queries
// one at a time from a shared counter), the rows of its probed clusters (deduplicated) are
// scanned; rows whose packed mask bit is 0 are skipped word by word (64 rows per word, so a strict
// filter costs ~N/64 word reads plus the passing rows); every passing row gets an exact int32 dot
// product (AVX2, see dot_i8) and the score float(acc) * q_scale * scale, applied in that order as
// in the reference so the floats are bit-identical; a threshold + partial-selection buffer keeps
// the running top-k under the tie rule (higher score first, equal scores: lower row first). No
// [B, N] buffer is ever allocated.
//
// When the queries of a batch share probed clusters (on average >= kShareRatio queries per probed
// cluster), the scan is cluster-major instead (scan_cluster_major): each probed cluster's codes
// are read once for all its queries, 4 queries per pass over a row (dot_i8_x4), like a small
// int8 GEMM per cluster, and per-thread top-ks are merged; same results, since the top-k of a
// strict total order does not depend on the push order.
//
// The same file holds the ops around the scan in a search: quantize_int8_rowwise (the query
// codes), ivf_select_probes (probe choice by centroid order and passing-row coverage),
// ivf_rescore_topk (exact re-score + final top-k), and ivf_search, which runs all four steps
// for each query on one thread (each step's per-query body is one struct or function here,
// shared by the single-step op and ivf_search).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace silverrec {
namespace {

// Exact int8 dot product. AVX2 has no s8 x s8 multiply-add, only u8 x s8 (vpmaddubsw); we use
// |b| (u8, <= 128) times sign(a, b) (= a * sign(b), s8 within [-127, 127] because query codes
// are checked to exclude -128). Each int16 lane then sums two products of magnitude
// <= 128 * 127, so it stays <= 32512 and never saturates; vpmaddwd with ones widens to int32.
inline int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t D) {
  int64_t d = 0;
  int32_t acc = 0;
#ifdef __AVX2__
  __m256i acc8 = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + d));
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + d));
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(vb), _mm256_sign_epi8(va, vb));
    acc8 = _mm256_add_epi32(acc8, _mm256_madd_epi16(p16, ones));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc8), _mm256_extracti128_si256(acc8, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  acc = _mm_cvtsi128_si32(s);
#endif
  for (; d < D; ++d) {
    acc += static_cast<int32_t>(a[d]) * static_cast<int32_t>(b[d]);
  }
  return acc;
}

#ifdef __AVX2__
// out[j] = the sum of the eight int32 lanes of a_j, for the four accumulators together (two hadd
// levels, then the two 128-bit halves), instead of one horizontal reduction per accumulator.
inline void store_sums4(__m256i a0, __m256i a1, __m256i a2, __m256i a3, int32_t* out) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
}
#endif

// Exact int8 dot products of one query with the 4 consecutive rows at `rows` (row stride D), the
// sign trick of dot_i8: the query is loaded once per 32 columns for the 4 rows, and the four
// int32 sums are reduced together (hadd), instead of one horizontal reduction per row.
inline void dot_i8_rows4(const int8_t* a, const int8_t* rows, int64_t D, int32_t* out) {
  int64_t d = 0;
  out[0] = out[1] = out[2] = out[3] = 0;
#ifdef __AVX2__
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + d));
#define SILVERREC_ROW_STEP(acc, j)                                                                    \
  {                                                                                                   \
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + (j) * D + d));      \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(vb),            \
                                                                       _mm256_sign_epi8(va, vb)),      \
                                                  ones));                                             \
  }
    SILVERREC_ROW_STEP(a0, 0);
    SILVERREC_ROW_STEP(a1, 1);
    SILVERREC_ROW_STEP(a2, 2);
    SILVERREC_ROW_STEP(a3, 3);
#undef SILVERREC_ROW_STEP
  }
  store_sums4(a0, a1, a2, a3, out);
#endif
  for (; d < D; ++d) {
    for (int j = 0; j < 4; ++j) out[j] += static_cast<int32_t>(a[d]) * static_cast<int32_t>(rows[j * D + d]);
  }
}

// Software prefetch of [p, p + bytes), one hint per 64-byte line (a prefetch never faults, so
// reading past a cluster or the codes is harmless).
inline void prefetch_bytes(const int8_t* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}
constexpr int64_t kPrefetchRows = 16;      // rows ahead within a cluster
constexpr int64_t kPrefetchBytes = 2048;   // bytes of the next probed cluster
constexpr int64_t kPrefetchPassing = 8;    // passing rows ahead (filtered scans)

// Threads for a per-query loop: 1 (inline, no thread wake-up) when the whole batch is less work
// than `min_work` units, else up to one per query.
inline int64_t query_threads(int64_t B, int64_t work_per_query, int64_t min_work) {
  return B * work_per_query < min_work ? 1 : std::min<int64_t>(at::get_num_threads(), B);
}

// The next query for a thread of a per-query loop. Threads take queries one at a time from a
// shared counter instead of fixed halves of the batch: per-query costs vary with the probe lists
// and filters, and a thread the OS deschedules for a while does not hold back the others.
inline int64_t next_query(std::atomic<int64_t>& counter) { return counter.fetch_add(1, std::memory_order_relaxed); }

// Average queries per probed cluster from which the cluster-major scan pays.
constexpr double kShareRatio = 4.0;

// An int64 key ordering like the tie rule: higher score first, equal scores (-0.0 == +0.0) by
// lower id. The float's bits map to a signed-monotone int32 in the high word, 2**32 - 1 - id in
// the low word (ids < 2**32). Scores must not be NaN.
inline int64_t rank_key(float score, int64_t id) {
  const float s = score + 0.0f;  // -0.0 -> +0.0 (not an identity, so never folded away)
  int32_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  const int32_t fkey = bits ^ ((bits >> 31) & 0x7FFFFFFF);
  return static_cast<int64_t>(static_cast<uint64_t>(static_cast<int64_t>(fkey)) << 32) |
         static_cast<int64_t>(0xFFFFFFFFLL - id);
}
inline int64_t key_id(int64_t key) { return 0xFFFFFFFFLL - (key & 0xFFFFFFFFLL); }
// The (normalised, so never -0.0) score a rank key was made from.
inline float key_score(int64_t key) {
  const int32_t fkey = static_cast<int32_t>(key >> 32);
  const int32_t bits = fkey ^ ((fkey >> 31) & 0x7FFFFFFF);
  float s;
  std::memcpy(&s, &bits, sizeof(s));
  return s;
}

// Running top-k over rank keys (rank_key(score, row): one int64 comparison is the tie rule).
// Candidates better than the current threshold (the k-th best seen so far) are appended to a
// buffer; once it has held k keys their worst is the threshold, and when it holds 2k,
// nth_element keeps the best k and raises the threshold to the k-th best. Amortised O(1) per
// candidate, unlike a heap's O(log k) sift per insertion.
struct TopK {
  explicit TopK(int64_t k) : k_(k) { buf_.reserve(2 * k); }
  // Returns whether the row entered the buffer (it may still be dropped by a later compact).
  inline bool push(float score, int64_t row) {
    if (full_ && score < thr_score_) return false;  // most rows of a long scan: no key to build
    return push_key(rank_key(score, row));
  }
  inline bool push_key(int64_t key) {
    if (full_ && key < thr_) return false;
    buf_.push_back(key);
    const int64_t n = static_cast<int64_t>(buf_.size());
    if (n >= 2 * k_) {
      compact();
    } else if (n == k_ && !full_) {  // first k seen: their worst is already a valid threshold
      set_threshold(*std::min_element(buf_.begin(), buf_.end()));
    }
    return true;
  }
  void compact() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), std::greater<int64_t>());
    buf_.resize(k_);
    set_threshold(buf_[k_ - 1]);  // nth_element leaves the k-th best at k-1, all better ones before it
  }
  void set_threshold(int64_t key) {
    thr_ = key;
    thr_score_ = key_score(key);
    full_ = true;
  }
  void reset() {
    buf_.clear();
    full_ = false;
  }
  // The kept keys, best first.
  const std::vector<int64_t>& finish() {
    std::vector<int64_t>& best = kept();
    std::sort(best.begin(), best.end(), std::greater<int64_t>());
    return best;
  }
  // The kept keys in no particular order (for a caller that re-orders them anyway).
  std::vector<int64_t>& kept() {
    if (static_cast<int64_t>(buf_.size()) > k_) compact();
    return buf_;
  }
  int64_t k_;
  bool full_ = false;
  int64_t thr_ = 0;
  float thr_score_ = 0.0f;  // the score of thr_: a lower score cannot enter
  std::vector<int64_t> buf_;
};

// Exact int8 dot products of one item row with 4 queries (the sign trick of dot_i8): the row is
// loaded and made absolute once per 32 columns and shared by the 4 queries.
inline void dot_i8_x4(const int8_t* row, const int8_t* const* q, int64_t D, int32_t* out) {
  int64_t d = 0;
  out[0] = out[1] = out[2] = out[3] = 0;
#ifdef __AVX2__
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + d));
    const __m256i ab = _mm256_abs_epi8(vb);
#define SILVERREC_DOT_STEP(acc, j)                                                                       \
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ab, _mm256_sign_epi8(              \
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[j] + d)), vb)), \
                               ones))
    SILVERREC_DOT_STEP(a0, 0);
    SILVERREC_DOT_STEP(a1, 1);
    SILVERREC_DOT_STEP(a2, 2);
    SILVERREC_DOT_STEP(a3, 3);
#undef SILVERREC_DOT_STEP
  }
  store_sums4(a0, a1, a2, a3, out);
#endif
  for (; d < D; ++d) {
    for (int j = 0; j < 4; ++j) out[j] += static_cast<int32_t>(q[j][d]) * static_cast<int32_t>(row[d]);
  }
}

// Whether the queries of a batch share their probed clusters enough for the cluster-major scan:
// (query, cluster) pairs per distinct probed cluster >= kShareRatio (1.0 means no sharing), with
// at least 4 queries. prb [B, P] holds each query's clusters in its first plen[b] entries (-1 skipped).
bool clusters_shared(const int64_t* prb, const int64_t* plen, int64_t B, int64_t C, int64_t P) {
  if (B < 4) return false;
  std::vector<uint8_t> probed(C, 0);
  int64_t pairs = 0, distinct = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < plen[b]; ++p) {
      const int64_t c = prb[b * P + p];
      if (c < 0) continue;
      ++pairs;
      if (!probed[c]) {
        probed[c] = 1;
        ++distinct;
      }
    }
  }
  return pairs >= kShareRatio * distinct;
}

// Cluster-major scan, used when the queries of a batch share probed clusters: each probed cluster
// is read once for all the queries probing it (rows x 4 queries per step, see dot_i8_x4), and
// each thread keeps its own running top-k per query; the per-thread top-ks are merged at the end.
// The top-k of a strict total order does not depend on the push order, so the result is the
// same as the query-major scan's.
// mrows[b] is query b's packed mask row (mrows == nullptr: no filter).
void scan_cluster_major(const int8_t* q, const float* qs, const int8_t* cd, const float* sc, const int64_t* off,
                        const int64_t* prb, const int64_t* plen, const uint64_t* const* mrows, int64_t B, int64_t C,
                        int64_t P, int64_t D, int64_t k, float* os, int64_t* orw, int64_t* ov) {
  // queries of each probed cluster (a query's repeated clusters count once), grouped by counting sort
  std::vector<int64_t> start(C + 1, 0), last(C, -1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < plen[b]; ++p) {
      const int64_t c = prb[b * P + p];
      if (c >= 0 && last[c] != b) {
        last[c] = b;
        ++start[c + 1];
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
  std::vector<int64_t> members(start[C]), fill(start.begin(), start.end() - 1);
  std::fill(last.begin(), last.end(), -1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < plen[b]; ++p) {
      const int64_t c = prb[b * P + p];
      if (c >= 0 && last[c] != b) {
        last[c] = b;
        members[fill[c]++] = b;
      }
    }
  }
  // work items: probed clusters, in order of their best probe position over their queries (so
  // each query meets its best clusters early and its top-k threshold rises early), dealt
  // round-robin to the threads
  std::vector<int64_t> rank(C, P);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < plen[b]; ++p) {
      const int64_t c = prb[b * P + p];
      if (c >= 0) rank[c] = std::min(rank[c], p);
    }
  }
  std::vector<int64_t> work;
  for (int64_t c = 0; c < C; ++c) {
    if (start[c + 1] > start[c] && off[c + 1] > off[c]) work.push_back(c);
  }
  std::stable_sort(work.begin(), work.end(), [&](int64_t a, int64_t b) { return rank[a] < rank[b]; });
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(work.size())));
  std::vector<std::vector<TopK>> tops(T);
  std::vector<std::vector<int64_t>> counts(T, std::vector<int64_t>(B, 0));
  for (auto& t : tops) t.assign(B, TopK(k));
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::vector<TopK>& top = tops[t];
      int64_t* cnt = counts[t].data();
      std::vector<int64_t> qb;  // the queries of the cluster, padded to a multiple of 4
      std::vector<uint64_t> any_word;
      for (size_t w = t; w < work.size(); w += T) {
        const int64_t c = work[w], lo = off[c], hi = off[c + 1];
        qb.assign(members.begin() + start[c], members.begin() + start[c + 1]);
        const int64_t nq = static_cast<int64_t>(qb.size());
        auto visit = [&](int64_t row, bool check) {
          const int8_t* item = cd + row * D;
          int64_t j = 0;
          for (; j + 4 <= nq; j += 4) {
            const int8_t* qp[4] = {q + qb[j] * D, q + qb[j + 1] * D, q + qb[j + 2] * D, q + qb[j + 3] * D};
            int32_t acc[4];
            dot_i8_x4(item, qp, D, acc);
            for (int64_t u = 0; u < 4; ++u) {
              const int64_t b = qb[j + u];
              if (check && !((mrows[b][row >> 6] >> (row & 63)) & 1)) continue;
              top[b].push(static_cast<float>(acc[u]) * qs[b] * sc[row], row);
              ++cnt[b];
            }
          }
          for (; j < nq; ++j) {  // the last 1-3 queries one by one
            const int64_t b = qb[j];
            if (check && !((mrows[b][row >> 6] >> (row & 63)) & 1)) continue;
            top[b].push(static_cast<float>(dot_i8(q + b * D, item, D)) * qs[b] * sc[row], row);
            ++cnt[b];
          }
        };
        if (mrows == nullptr) {
          for (int64_t row = lo; row < hi; ++row) visit(row, false);
          continue;
        }
        for (int64_t w0 = lo >> 6; w0 < ((hi + 63) >> 6); ++w0) {
          uint64_t bits = 0;  // rows passing for at least one of the cluster's queries
          for (int64_t j = 0; j < nq; ++j) bits |= mrows[qb[j]][w0];
          const int64_t base = w0 << 6;
          if (base < lo) bits &= ~uint64_t(0) << (lo - base);
          if (base + 64 > hi) bits &= ~uint64_t(0) >> (base + 64 - hi);
          while (bits) {
            visit(base + __builtin_ctzll(bits), true);
            bits &= bits - 1;
          }
        }
      }
    }
  });
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      TopK& merged = tops[0][b];
      int64_t eligible = counts[0][b];
      for (int64_t t = 1; t < T; ++t) {
        for (const int64_t key : tops[t][b].buf_) merged.push_key(key);
        eligible += counts[t][b];
      }
      const std::vector<int64_t>& best = merged.finish();
      for (size_t i = 0; i < best.size(); ++i) {
        os[b * k + i] = key_score(best[i]);
        orw[b * k + i] = key_id(best[i]);
      }
      ov[b] = std::min(eligible, k);
    }
  });
}

// The query-major scan of one query (a thread's scratch, reused across its queries): its probed
// clusters in probe order (best centroid first, so the top-k threshold rises early and later
// clusters insert little), repeats skipped; rows whose mask bit is 0 skipped word by word. Each
// row that enters the running top-k can have its re-score cache row prefetched (`cache` /
// `cache_row_bytes`): by the end of the scan the K0 survivors' rows are mostly in cache.
struct QueryScan {
  QueryScan(int64_t C, int64_t k) : seen(C, 0), top(k) {}

  // Scans clusters pb[0 .. P_b) for query codes qb (scale qscale); mb is the query's packed mask
  // row or nullptr. Leaves the top-k in `top`; returns the number of eligible rows.
  int64_t run(const int8_t* qb, float qscale, const int8_t* cd, const float* sc, const int64_t* off,
              const int64_t* pb, int64_t P_b, const uint64_t* mb, int64_t D, const char* cache = nullptr,
              int64_t cache_row_bytes = 0) {
    top.reset();
    int64_t eligible = 0;
    auto push = [&](float score, int64_t row) {
      if (top.push(score, row) && cache != nullptr) {
        const char* p = cache + row * cache_row_bytes;
        for (int64_t o = 0; o < cache_row_bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
      }
    };
    auto visit = [&](int64_t row) {
      push(static_cast<float>(dot_i8(qb, cd + row * D, D)) * qscale * sc[row], row);
      ++eligible;
    };
    for (int64_t p = 0; p < P_b; ++p) {
      const int64_t c = pb[p];
      if (c < 0 || seen[c]) continue;
      seen[c] = 1;
      const int64_t lo = off[c], hi = off[c + 1];
      if (mb == nullptr) {  // 4 rows per step (one query load, one reduction for the 4 sums)
        // the next probed cluster's first rows: its DRAM misses overlap this cluster's scan
        if (p + 1 < P_b && pb[p + 1] >= 0) prefetch_bytes(cd + off[pb[p + 1]] * D, kPrefetchBytes);
        int64_t row = lo;
        for (; row + 4 <= hi; row += 4) {
          // a few rows ahead within the cluster (the hardware prefetcher stops at 4 KiB pages)
          prefetch_bytes(cd + (row + kPrefetchRows) * D, 4 * D);
          int32_t acc[4];
          dot_i8_rows4(qb, cd + row * D, D, acc);
          for (int64_t u = 0; u < 4; ++u) push(static_cast<float>(acc[u]) * qscale * sc[row + u], row + u);
        }
        eligible += row - lo;
        for (; row < hi; ++row) visit(row);
        continue;
      }
      for (int64_t w = lo >> 6; w < ((hi + 63) >> 6); ++w) {
        uint64_t bits = mb[w];
        const int64_t base = w << 6;
        if (base < lo) bits &= ~uint64_t(0) << (lo - base);
        if (base + 64 > hi) bits &= ~uint64_t(0) >> (base + 64 - hi);
        while (bits) {
          passing.push_back(base + __builtin_ctzll(bits));
          bits &= bits - 1;
        }
      }
    }
    // the passing rows are scattered through their clusters: scored after all were listed, so
    // the rows a few places ahead can be prefetched (their DRAM misses overlap)
    const int64_t n_passing = static_cast<int64_t>(passing.size());
    for (int64_t i = 0; i < n_passing; ++i) {
      if (i + kPrefetchPassing < n_passing) prefetch_bytes(cd + passing[i + kPrefetchPassing] * D, D);
      visit(passing[i]);
    }
    passing.clear();
    for (int64_t p = 0; p < P_b; ++p) {
      if (pb[p] >= 0) seen[pb[p]] = 0;
    }
    return eligible;
  }

  std::vector<uint8_t> seen;     // clusters already scanned for the current query
  std::vector<int64_t> passing;  // filtered: the query's passing rows, in probe order
  TopK top;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> ivf_int8_topk_cpu(
    const at::Tensor& q_codes_in, const at::Tensor& q_scales_in, const at::Tensor& codes_in,
    const at::Tensor& scales_in, const at::Tensor& cluster_offsets_in, const at::Tensor& probe_in,
    const std::optional<at::Tensor>& mask_in, int64_t k) {
  TORCH_CHECK(q_codes_in.dim() == 2 && q_codes_in.scalar_type() == at::kChar,
              "ivf_int8_topk: q_codes must be int8 [B, D], got ", q_codes_in.scalar_type(), " ", q_codes_in.sizes());
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.scalar_type() == at::kChar,
              "ivf_int8_topk: codes must be int8 [N, D], got ", codes_in.scalar_type(), " ", codes_in.sizes());
  const int64_t B = q_codes_in.size(0), D = q_codes_in.size(1), N = codes_in.size(0);
  TORCH_CHECK(codes_in.size(1) == D, "ivf_int8_topk: codes ", codes_in.sizes(), " and q_codes ",
              q_codes_in.sizes(), " differ in D");
  TORCH_CHECK(q_scales_in.scalar_type() == at::kFloat && q_scales_in.dim() == 1 && q_scales_in.size(0) == B,
              "ivf_int8_topk: q_scales must be float32 [B=", B, "], got ", q_scales_in.scalar_type(), " ", q_scales_in.sizes());
  TORCH_CHECK(scales_in.scalar_type() == at::kFloat && scales_in.dim() == 1 && scales_in.size(0) == N,
              "ivf_int8_topk: scales must be float32 [N=", N, "], got ", scales_in.scalar_type(), " ", scales_in.sizes());
  TORCH_CHECK(cluster_offsets_in.scalar_type() == at::kLong && cluster_offsets_in.dim() == 1 &&
                  cluster_offsets_in.size(0) >= 2,
              "ivf_int8_topk: cluster_offsets must be int64 [C+1] with C >= 1, got ",
              cluster_offsets_in.scalar_type(), " ", cluster_offsets_in.sizes());
  TORCH_CHECK(probe_in.scalar_type() == at::kLong && probe_in.dim() == 2 && probe_in.size(0) == B,
              "ivf_int8_topk: probe must be int64 [B=", B, ", P], got ", probe_in.scalar_type(), " ", probe_in.sizes());
  TORCH_CHECK(k >= 1, "ivf_int8_topk: k must be >= 1, got ", k);
  TORCH_CHECK(N <= 0xFFFFFFFFLL, "ivf_int8_topk: need N < 2**32 rows (rows rank in 32 bits), got N=", N);
  const int64_t W = (N + 63) / 64;
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->scalar_type() == at::kLong && mask_in->dim() == 2 && mask_in->size(0) == B &&
                    mask_in->size(1) == W,
                "ivf_int8_topk: mask must be int64 [B, ceil(N/64)]=[", B, ", ", W, "], got ",
                mask_in->scalar_type(), " ", mask_in->sizes());
  }
  const at::Tensor q_codes = q_codes_in.contiguous();
  const at::Tensor q_scales = q_scales_in.contiguous();
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor scales = scales_in.contiguous();
  const at::Tensor offsets_t = cluster_offsets_in.contiguous();
  const at::Tensor probe_t = probe_in.contiguous();
  // rows of the mask may be strided (e.g. one filter expanded over the batch): only words must be dense
  at::Tensor mask_t;
  if (mask_in.has_value()) mask_t = mask_in->stride(1) == 1 ? *mask_in : mask_in->contiguous();
  const int64_t mask_row_stride = mask_in.has_value() ? mask_t.stride(0) : 0;

  const int64_t C = offsets_t.size(0) - 1, P = probe_t.size(1);
  const int64_t* off = offsets_t.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[C] == N, "ivf_int8_topk: cluster_offsets must start at 0 and end at N=", N,
              ", got ", off[0], " .. ", off[C]);
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(off[c] <= off[c + 1], "ivf_int8_topk: cluster_offsets must be non-decreasing, got ", off[c],
                " > ", off[c + 1], " at cluster ", c);
  }
  const int64_t* prb = probe_t.data_ptr<int64_t>();
  // Each probe row's used length: up to its first -1 when only -1s follow (ivf_select_probes
  // pads its [B, C] rows that way under a filter), else P. The loops below only see the used
  // part, so padding costs one vectorised pass instead of several scalar ones.
  std::vector<int64_t> plen(B, P);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* pb = prb + b * P;
    int64_t f = 0;
    while (f < P && pb[f] != -1) ++f;
    bool padding = true;
    for (int64_t i = f; i < P; ++i) padding &= pb[i] == -1;
    if (padding) plen[b] = f;
    for (int64_t p = 0; p < plen[b]; ++p) {
      TORCH_CHECK(pb[p] >= -1 && pb[p] < C, "ivf_int8_topk: probe entries must be -1 or in [0, C=", C, "), got ",
                  pb[p], " at [", b, ", ", p, "]");
    }
  }
  const int8_t* q = q_codes.data_ptr<int8_t>();
  for (int64_t i = 0; i < B * D; ++i) {
    TORCH_CHECK(q[i] != -128, "ivf_int8_topk: q_codes must lie in [-127, 127] (symmetric int8), got -128 at [",
                i / D, ", ", i % D, "]");
  }

  at::Tensor out_scores = at::full({B, k}, -std::numeric_limits<float>::infinity(), q_scales.options());
  at::Tensor out_rows = at::full({B, k}, -1, probe_t.options());
  at::Tensor out_valid = at::zeros({B}, probe_t.options());
  float* os = out_scores.data_ptr<float>();
  int64_t* orw = out_rows.data_ptr<int64_t>();
  int64_t* ov = out_valid.data_ptr<int64_t>();
  const float* qs = q_scales.data_ptr<float>();
  const int8_t* cd = codes.data_ptr<int8_t>();
  const float* sc = scales.data_ptr<float>();
  const uint64_t* mk = mask_in.has_value() ? reinterpret_cast<const uint64_t*>(mask_t.data_ptr<int64_t>()) : nullptr;

  // Queries sharing clusters: read each probed cluster once for all its queries.
  if (clusters_shared(prb, plen.data(), B, C, P)) {
    std::vector<const uint64_t*> mrows;
    for (int64_t b = 0; mk != nullptr && b < B; ++b) mrows.push_back(mk + b * mask_row_stride);
    scan_cluster_major(q, qs, cd, sc, off, prb, plen.data(), mk == nullptr ? nullptr : mrows.data(), B, C, P, D, k, os,
                       orw, ov);
    return {out_scores, out_rows, out_valid};
  }
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, 1, 1), 1, [&](int64_t, int64_t) {
    QueryScan scan(C, k);
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      const int64_t eligible = scan.run(q + b * D, qs[b], cd, sc, off, prb + b * P, plen[b],
                                        mk == nullptr ? nullptr : mk + b * mask_row_stride, D);
      const std::vector<int64_t>& best = scan.top.finish();
      for (size_t i = 0; i < best.size(); ++i) {
        os[b * k + i] = key_score(best[i]);
        orw[b * k + i] = key_id(best[i]);
      }
      ov[b] = std::min(eligible, k);
    }
  });
  return {out_scores, out_rows, out_valid};
}

// ---------------------------------------------------------------------------------------------
// ivf_select_probes: centroid order + passing-row coverage (spec: ivf_select_probes_reference).

// Set bits of the packed mask row `mb` within rows [lo, hi).
inline int64_t count_bits(const uint64_t* mb, int64_t lo, int64_t hi) {
  if (lo >= hi) return 0;
  const int64_t w0 = lo >> 6, w1 = (hi - 1) >> 6;
  int64_t n = 0;
  for (int64_t w = w0; w <= w1; ++w) {
    uint64_t bits = mb[w];
    if (w == w0) bits &= ~uint64_t(0) << (lo & 63);
    if (w == w1 && (hi & 63) != 0) bits &= ~uint64_t(0) >> (64 - (hi & 63));
    n += __builtin_popcountll(bits);
  }
  return n;
}

// The rank keys of all C clusters, best first: a stable LSD radix sort (3 passes of 11 bits) of
// the ids, entered in ascending order, by the 32-bit score key inverted (so ties keep the lower
// id first). No comparisons, so no branch misses: ~C per pass. Small C uses std::sort.
void all_keys_sorted(const float* scores, int64_t C, std::vector<int64_t>& buf, std::vector<int64_t>& out) {
  out.resize(C);
  if (C < 256) {
    for (int64_t c = 0; c < C; ++c) out[c] = rank_key(scores[c], c);
    std::sort(out.begin(), out.end(), std::greater<int64_t>());
    return;
  }
  buf.resize(C);
  // rank_key's high word plus 2**31 is monotone in the score; ~ makes smaller = better
  auto digit_key = [&](int64_t key) { return ~(static_cast<uint32_t>(key >> 32) ^ 0x80000000u); };
  for (int64_t c = 0; c < C; ++c) buf[c] = rank_key(scores[c], c);
  int64_t* src = buf.data();
  int64_t* dst = out.data();
  for (int shift = 0; shift < 32; shift += 11) {
    int64_t hist[2049] = {0};
    for (int64_t i = 0; i < C; ++i) ++hist[((digit_key(src[i]) >> shift) & 2047) + 1];
    for (int d = 0; d < 2048; ++d) hist[d + 1] += hist[d];
    for (int64_t i = 0; i < C; ++i) dst[hist[(digit_key(src[i]) >> shift) & 2047]++] = src[i];
    std::swap(src, dst);
  }
  if (src != out.data()) std::copy(src, src + C, out.data());  // 3 passes: the result is in buf
}

// The rank keys of the best m of the C scores, sorted best first, into out. With C >= 64 m, a
// lower bound t of the m-th best score comes first: the m-th largest of the maxima of blocks of
// 32 scores (m blocks reach t, so m scores do). Only scores >= t (a small multiple of m) become
// keys. About C/4 vector operations plus a selection over C/32 block maxima. With C >= 8 m the
// same runs on blocks of 8 scores; with C >= 4 m all C keys are made and the best m selected
// (nth_element). Otherwise all C keys are sorted (all_keys_sorted) and out holds all of them.
// (The radix sort's three 2048-bucket passes cost ~7 us per query at C = 894.)
void best_keys(const float* scores, int64_t C, int64_t m, std::vector<float>& block_max, std::vector<int64_t>& buf,
               std::vector<int64_t>& out) {
#ifdef __AVX2__
  // blocks of 32 scores for large C; blocks of 8 for mid-sized C (e.g. 894 clusters, m = 32)
  const int64_t w = C >= 64 * m ? 32 : (C >= 8 * m ? 8 : 0);
  if (w > 0) {
    buf.clear();
    const int64_t nb = C / w;
    block_max.resize(nb);
    for (int64_t i = 0; i < nb; ++i) {
      const float* p = scores + w * i;
      const __m256 x = w == 8 ? _mm256_loadu_ps(p)
                              : _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                                              _mm256_max_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24)));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
      block_max[i] = _mm_cvtss_f32(h);
    }
    std::nth_element(block_max.begin(), block_max.begin() + (m - 1), block_max.end(), std::greater<float>());
    const __m256 t = _mm256_set1_ps(block_max[m - 1]);
    int64_t c = 0;
    for (; c < w * nb; c += 8) {
      int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scores + c), t, _CMP_GE_OQ));
      while (bits) {
        const int64_t j = c + __builtin_ctz(bits);
        buf.push_back(rank_key(scores[j], j));
        bits &= bits - 1;
      }
    }
    for (; c < C; ++c) buf.push_back(rank_key(scores[c], c));
    const int64_t kept = std::min<int64_t>(m, buf.size());
    if (kept < static_cast<int64_t>(buf.size())) {
      std::nth_element(buf.begin(), buf.begin() + (kept - 1), buf.end(), std::greater<int64_t>());
    }
    std::sort(buf.begin(), buf.begin() + kept, std::greater<int64_t>());
    out.assign(buf.begin(), buf.begin() + kept);
    return;
  }
#endif
  if (C >= 4 * m) {  // mid-sized C (e.g. 894 clusters, m = 32): select the best m keys, sort only them
    buf.resize(C);
    for (int64_t c = 0; c < C; ++c) buf[c] = rank_key(scores[c], c);
    std::nth_element(buf.begin(), buf.begin() + (m - 1), buf.end(), std::greater<int64_t>());
    std::sort(buf.begin(), buf.begin() + m, std::greater<int64_t>());
    out.assign(buf.begin(), buf.begin() + m);
    return;
  }
  all_keys_sorted(scores, C, buf, out);
}

// The probe choice of one query (ivf_select_probes_reference; a thread's scratch, reused across
// its queries): clusters in centroid order while j < n_probe or fewer than min_rows passing rows
// are covered, j < limit. Writes the cluster ids to out and returns how many.
struct ProbeSelect {
  int64_t run(const float* sb, int64_t C, const int64_t* off, const uint64_t* mb, int64_t n_probe, int64_t min_rows,
              int64_t limit, int64_t* out) {
    best_keys(sb, C, std::min(limit, std::max<int64_t>(n_probe, 32)), block_max, buf, order);
    int64_t covered = 0, j = 0;
    while (j < limit) {
      if (j >= n_probe && covered >= min_rows) break;  // before the fallback: m == n_probe is common
      if (j == static_cast<int64_t>(order.size())) {  // the candidates ran out: sort them all
        all_keys_sorted(sb, C, buf, order);  // same total order, so its prefix is what was taken
      }
      const int64_t c = key_id(order[j]);
      out[j] = c;
      covered += mb == nullptr ? off[c + 1] - off[c] : count_bits(mb, off[c], off[c + 1]);
      ++j;
    }
    return j;
  }
  std::vector<int64_t> buf, order;
  std::vector<float> block_max;
};

at::Tensor ivf_select_probes_cpu(const at::Tensor& scores_in, const at::Tensor& cluster_offsets_in,
                                 const std::optional<at::Tensor>& mask_in, int64_t n_probe, int64_t min_rows,
                                 int64_t max_probe) {
  TORCH_CHECK(scores_in.dim() == 2 && scores_in.scalar_type() == at::kFloat,
              "ivf_select_probes: centroid_scores must be float32 [B, C], got ", scores_in.scalar_type(), " ",
              scores_in.sizes());
  const int64_t B = scores_in.size(0), C = scores_in.size(1);
  TORCH_CHECK(cluster_offsets_in.scalar_type() == at::kLong && cluster_offsets_in.dim() == 1 &&
                  cluster_offsets_in.size(0) == C + 1,
              "ivf_select_probes: cluster_offsets must be int64 [C+1]=[", C + 1, "], got ",
              cluster_offsets_in.scalar_type(), " ", cluster_offsets_in.sizes());
  TORCH_CHECK(C >= 1 && C <= 0xFFFFFFFFLL, "ivf_select_probes: need 1 <= C < 2**32 clusters, got C=", C);
  TORCH_CHECK(n_probe >= 1 && min_rows >= 0 && max_probe >= 1,
              "ivf_select_probes: need n_probe >= 1, min_rows >= 0, max_probe >= 1, got ", n_probe, ", ",
              min_rows, ", ", max_probe);
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor offsets_t = cluster_offsets_in.contiguous();
  const int64_t* off = offsets_t.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0, "ivf_select_probes: cluster_offsets must start at 0, got ", off[0]);
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(off[c] <= off[c + 1], "ivf_select_probes: cluster_offsets must be non-decreasing, got ", off[c],
                " > ", off[c + 1], " at cluster ", c);
  }
  const int64_t N = off[C];
  at::Tensor mask_t;
  int64_t mask_row_stride = 0;
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->scalar_type() == at::kLong && mask_in->dim() == 2 && mask_in->size(0) == B &&
                    mask_in->size(1) == (N + 63) / 64,
                "ivf_select_probes: mask must be int64 [B, ceil(N/64)]=[", B, ", ", (N + 63) / 64, "] with N=",
                N, " (cluster_offsets[-1]), got ", mask_in->scalar_type(), " ", mask_in->sizes());
    mask_t = mask_in->stride(1) == 1 ? *mask_in : mask_in->contiguous();
    mask_row_stride = mask_t.stride(0);
  }
  const uint64_t* mk = mask_in.has_value() ? reinterpret_cast<const uint64_t*>(mask_t.data_ptr<int64_t>()) : nullptr;
  const float* sc = scores.data_ptr<float>();
  at::Tensor out = at::empty({B, max_probe}, offsets_t.options());  // filled per query (at::full may go parallel)
  int64_t* po = out.data_ptr<int64_t>();
  const int64_t limit = std::min(C, max_probe);
  // ~C key computations (and a cold read of the C scores) per query: a few queries' worth pays
  // for waking a second thread; tiny C runs inline
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, C, int64_t(1) << 14), 1, [&](int64_t, int64_t) {
    ProbeSelect select;
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      const int64_t n = select.run(sc + b * C, C, off, mk == nullptr ? nullptr : mk + b * mask_row_stride,
                                   n_probe, min_rows, limit, po + b * max_probe);
      std::fill(po + b * max_probe + n, po + (b + 1) * max_probe, int64_t(-1));
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// ivf_rescore_topk: exact re-score from the float16/bfloat16 cache + final top-k by id
// (spec: ivf_rescore_topk_reference). Products of a 16-bit float and a float32 are exact in
// float64, and the float64 sum is rounded once to float32, so the summation order changes the
// result only when the exact sum lies within ~D ulp(float64) of a float32 rounding boundary.

// The 8 cache values at p as float32.
template <typename T>
inline __m256 load8(const T* p);
template <>
__attribute__((target("avx2,f16c"))) inline __m256 load8<at::Half>(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
__attribute__((target("avx2"))) inline __m256 load8<at::BFloat16>(const at::BFloat16* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

template <typename T>
__attribute__((target("avx2,fma,f16c"))) double dot_f64(const T* row, const double* q, int64_t D) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  __m256d acc2 = _mm256_setzero_pd(), acc3 = _mm256_setzero_pd();  // 4 chains hide the FMA latency
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    const __m256 x = load8<T>(row + d), y = load8<T>(row + d + 8);
    acc0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_loadu_pd(q + d), acc0);
    acc1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), _mm256_loadu_pd(q + d + 4), acc1);
    acc2 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(y)), _mm256_loadu_pd(q + d + 8), acc2);
    acc3 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)), _mm256_loadu_pd(q + d + 12), acc3);
  }
  acc0 = _mm256_add_pd(acc0, acc2);
  acc1 = _mm256_add_pd(acc1, acc3);
  for (; d + 8 <= D; d += 8) {
    const __m256 x = load8<T>(row + d);
    acc0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_loadu_pd(q + d), acc0);
    acc1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), _mm256_loadu_pd(q + d + 4), acc1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; d < D; ++d) acc += static_cast<double>(static_cast<float>(row[d])) * q[d];
  return acc;
}

// The exact re-score and final top-k of one query (ivf_rescore_topk_reference; a thread's
// scratch, reused across its queries): candidate rows rows[0 .. K0) (-1 = none), query qf [D],
// results into os / oi [k] and, unless nullptr, their rows into orow [k] (already padded by the
// caller).
template <typename T>
struct Rescore {
  void run(const float* qf, const T* cache, const int64_t* rows, int64_t K0, const int64_t* row_to_id, int64_t D,
           int64_t k, float* os, int64_t* oi, int64_t* orow = nullptr) {
    qd.resize(D);
    for (int64_t d = 0; d < D; ++d) qd[d] = qf[d];
    cand.clear();
    ids.resize(K0);
    from.resize(K0);
    // The K0 rows are random DRAM reads: copy them to a local buffer first (independent loads,
    // so many misses are in flight at once), then score them from cache.
    local.resize(K0 * D);
    int64_t n = 0;
    for (int64_t j = 0; j < K0; ++j) {
      const int64_t r = rows[j];
      if (r < 0) continue;
      std::memcpy(local.data() + n * D, cache + r * D, D * sizeof(T));
      from[n] = r;
      ids[n++] = row_to_id[r];
    }
    for (int64_t j = 0; j < n; ++j) {
      TORCH_CHECK(ids[j] >= 0 && ids[j] <= 0xFFFFFFFFLL, op, ": row_to_id entries must lie in [0, 2**32), got ", ids[j]);
      const float s = static_cast<float>(dot_f64<T>(local.data() + j * D, qd.data(), D));
      cand.emplace_back(rank_key(s, ids[j]), from[j]);  // the score is recovered from the key's high word
    }
    const int64_t kept = std::min<int64_t>(k, cand.size());
    auto better = [](const std::pair<int64_t, int64_t>& a, const std::pair<int64_t, int64_t>& b) {
      return a.first > b.first;  // keys are distinct: ids are
    };
    if (kept < static_cast<int64_t>(cand.size())) std::nth_element(cand.begin(), cand.begin() + (kept - 1), cand.end(), better);
    std::sort(cand.begin(), cand.begin() + kept, better);
    for (int64_t i = 0; i < kept; ++i) {
      os[i] = key_score(cand[i].first);
      oi[i] = key_id(cand[i].first);
      if (orow != nullptr) orow[i] = cand[i].second;
    }
  }
  const char* op = "ivf_rescore_topk";  // names the op in errors
  std::vector<double> qd;
  std::vector<std::pair<int64_t, int64_t>> cand;  // (rank key, row)
  std::vector<int64_t> ids, from;
  std::vector<T> local;
};

template <typename T>
void rescore_rows(const float* qf, const T* cache, const int64_t* rows, const int64_t* row_to_id, float* os,
                  int64_t* oi, int64_t B, int64_t K0, int64_t D, int64_t k) {
  // Each query's K0 rows are random DRAM reads (latency-bound, not compute-bound): one query's
  // worth of rows already pays for waking a second thread.
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, K0 * D, int64_t(1) << 14), 1, [&](int64_t, int64_t) {
    Rescore<T> rescore;
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      rescore.run(qf + b * D, cache, rows + b * K0, K0, row_to_id, D, k, os + b * k, oi + b * k);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> ivf_rescore_topk_cpu(const at::Tensor& queries_in, const at::Tensor& cache_in,
                                                        const at::Tensor& rows_in, const at::Tensor& row_to_id_in,
                                                        int64_t k) {
  TORCH_CHECK(queries_in.dim() == 2 && queries_in.scalar_type() == at::kFloat,
              "ivf_rescore_topk: queries must be float32 [B, D], got ", queries_in.scalar_type(), " ", queries_in.sizes());
  const int64_t B = queries_in.size(0), D = queries_in.size(1);
  TORCH_CHECK(cache_in.dim() == 2 && cache_in.size(1) == D &&
                  (cache_in.scalar_type() == at::kHalf || cache_in.scalar_type() == at::kBFloat16),
              "ivf_rescore_topk: cache must be float16 or bfloat16 [N, D=", D, "], got ", cache_in.scalar_type(), " ",
              cache_in.sizes());
  const int64_t N = cache_in.size(0);
  TORCH_CHECK(rows_in.dim() == 2 && rows_in.size(0) == B && rows_in.scalar_type() == at::kLong,
              "ivf_rescore_topk: rows must be int64 [B=", B, ", K0], got ", rows_in.scalar_type(), " ", rows_in.sizes());
  TORCH_CHECK(row_to_id_in.dim() == 1 && row_to_id_in.size(0) == N && row_to_id_in.scalar_type() == at::kLong,
              "ivf_rescore_topk: row_to_id must be int64 [N=", N, "], got ", row_to_id_in.scalar_type(), " ",
              row_to_id_in.sizes());
  TORCH_CHECK(k >= 1, "ivf_rescore_topk: k must be >= 1, got ", k);
  const at::Tensor queries = queries_in.contiguous(), cache = cache_in.contiguous();
  const at::Tensor rows = rows_in.contiguous(), row_to_id = row_to_id_in.contiguous();
  const int64_t K0 = rows.size(1);
  const int64_t* rw = rows.data_ptr<int64_t>();
  const int64_t* ids = row_to_id.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * K0; ++i) {
    TORCH_CHECK(rw[i] >= -1 && rw[i] < N, "ivf_rescore_topk: rows entries must be -1 or in [0, N=", N, "), got ",
                rw[i], " at [", i / K0, ", ", i % K0, "]");
  }
  at::Tensor out_scores = at::full({B, k}, -std::numeric_limits<float>::infinity(), queries.options());
  at::Tensor out_ids = at::full({B, k}, -1, rows.options());
  if (cache.scalar_type() == at::kHalf) {
    rescore_rows<at::Half>(queries.data_ptr<float>(), cache.data_ptr<at::Half>(), rw, ids,
                           out_scores.data_ptr<float>(), out_ids.data_ptr<int64_t>(), B, K0, D, k);
  } else {
    rescore_rows<at::BFloat16>(queries.data_ptr<float>(), cache.data_ptr<at::BFloat16>(), rw, ids,
                               out_scores.data_ptr<float>(), out_ids.data_ptr<int64_t>(), B, K0, D, k);
  }
  return {out_scores, out_ids};
}

// ---------------------------------------------------------------------------------------------
// quantize_int8_rowwise: symmetric INT8 codes of each row (spec: quantize_int8_rowwise_reference).
// The same float32 operations as the reference (max |x|, / 127, x / s, round half to even,
// clamp), so codes and scales are bit-identical.

// The codes of one row into out [D]; returns its scale. `what` and n name the row in the error.
float quantize_row(const float* row, int64_t D, int8_t* out, int64_t n, const char* what) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t d = 0; d < D; ++d) {
    finite &= std::isfinite(row[d]);
    amax = std::max(amax, std::fabs(row[d]));
  }
  if (!finite) {
    int64_t d = 0;
    while (std::isfinite(row[d])) ++d;
    TORCH_CHECK(false, what, " contains NaN/inf (first at row ", n, ", column ", d, ": ", row[d], ")");
  }
  const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float y = std::nearbyint(row[d] / s);
    out[d] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, y)));
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> quantize_int8_rowwise_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat,
              "quantize_int8_rowwise: x must be float32 [N, D], got ", x_in.scalar_type(), " ", x_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor codes = at::empty({N, D}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({N}, x.options());
  const float* px = x.data_ptr<float>();
  int8_t* pc = codes.data_ptr<int8_t>();
  float* ps = scales.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, D)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) ps[n] = quantize_row(px + n * D, D, pc + n * D, n, "quantize_int8_rowwise: x");
  });
  return {codes, scales};
}

// ---------------------------------------------------------------------------------------------
// ivf_search: a whole IVF-INT8 search in one op (spec: ivf_search_reference): query codes,
// probe choice, the scan (with the unfiltered short-list fallback) and the exact re-score, each
// query on one thread. Same results as the four ops in sequence, without their [B, C] probe
// rows, their intermediate tensors and three of their four fork/joins; and a candidate's cache
// row is prefetched when it enters the scan's running top-K0, so the re-score reads warm rows.

// mrows[b] is query b's packed mask row (mrows == nullptr: no filter); results into os / oi /
// orw [B, k], already padded.
template <typename T>
void search_rows(const float* qf, const float* cs, const int8_t* cd, const float* sc, const int64_t* off,
                 const T* cache, const int64_t* row_to_id, const uint64_t* const* mrows, int64_t B, int64_t C,
                 int64_t N, int64_t D, int64_t n_probe, int64_t min_rows, int64_t max_probe, int64_t k0, int64_t k,
                 float* os, int64_t* oi, int64_t* orw) {
  const int64_t limit = std::min(C, max_probe);
  std::vector<int8_t> q(B * D);
  std::vector<float> qs(B);
  std::unique_ptr<int64_t[]> prb(new int64_t[B * limit]);  // only each row's used prefix is written
  std::vector<int64_t> plen(B);
  // 1. query codes and probe lists
  {
    std::atomic<int64_t> counter{0};
    at::parallel_for(0, query_threads(B, C, int64_t(1) << 14), 1, [&](int64_t, int64_t) {
      ProbeSelect select;
      for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
        qs[b] = quantize_row(qf + b * D, D, q.data() + b * D, b, "ivf_search: queries");
        plen[b] = select.run(cs + b * C, C, off, mrows == nullptr ? nullptr : mrows[b], n_probe, min_rows, limit,
                             prb.get() + b * limit);
      }
    });
  }
  // 2. queries sharing clusters: the cluster-major scan for all of them (see ivf_int8_topk_cpu)
  std::vector<float> shared_scores;
  std::vector<int64_t> shared_rows, shared_valid;
  if (clusters_shared(prb.get(), plen.data(), B, C, limit)) {
    shared_scores.assign(B * k0, -std::numeric_limits<float>::infinity());
    shared_rows.assign(B * k0, -1);
    shared_valid.assign(B, 0);
    scan_cluster_major(q.data(), qs.data(), cd, sc, off, prb.get(), plen.data(), mrows, B, C, limit, D, k0,
                       shared_scores.data(), shared_rows.data(), shared_valid.data());
  }
  // 3. per query: the scan, the fallback, the re-score
  const bool shared = !shared_rows.empty();
  const int64_t all_off[2] = {0, N}, all_probe[1] = {0};
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, 1, 1), 1, [&](int64_t, int64_t) {
    QueryScan scan(C, k0);
    Rescore<T> rescore;
    rescore.op = "ivf_search";
    std::vector<int64_t> rows(k0);
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      const int8_t* qb = q.data() + b * D;
      const uint64_t* mb = mrows == nullptr ? nullptr : mrows[b];
      const char* pf = reinterpret_cast<const char*>(cache);
      int64_t eligible;
      auto take_rows = [&] {  // the re-score orders them: no sort here
        const std::vector<int64_t>& best = scan.top.kept();
        std::fill(rows.begin(), rows.end(), int64_t(-1));
        for (size_t i = 0; i < best.size(); ++i) rows[i] = key_id(best[i]);
      };
      if (shared) {
        std::copy(shared_rows.begin() + b * k0, shared_rows.begin() + (b + 1) * k0, rows.begin());
        eligible = shared_valid[b];
      } else {
        eligible = scan.run(qb, qs[b], cd, sc, off, prb.get() + b * limit, plen[b], mb, D, pf, D * sizeof(T));
        take_rows();
      }
      // a capped probe list that held fewer than k eligible rows: scan every row instead
      if (limit < C && eligible < k) {
        scan.run(qb, qs[b], cd, sc, all_off, all_probe, 1, mb, D, pf, D * sizeof(T));
        take_rows();
      }
      rescore.run(qf + b * D, cache, rows.data(), k0, row_to_id, D, k, os + b * k, oi + b * k, orw + b * k);
    }
  });
}

// Queries are [B, D], or [B, T, D] when T queries (e.g. the task heads of one user) share the
// mask row b: mask rows are then read in place for all T, with no [B * T, W] copy.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ivf_search_cpu(
    const at::Tensor& queries_in, const at::Tensor& centroid_scores_in, const at::Tensor& codes_in,
    const at::Tensor& scales_in, const at::Tensor& cluster_offsets_in, const at::Tensor& cache_in,
    const at::Tensor& row_to_id_in, const std::optional<at::Tensor>& mask_in, int64_t n_probe, int64_t min_rows,
    int64_t max_probe, int64_t k0, int64_t k) {
  TORCH_CHECK((queries_in.dim() == 2 || queries_in.dim() == 3) && queries_in.scalar_type() == at::kFloat,
              "ivf_search: queries must be float32 [B, D] or [B, T, D], got ", queries_in.scalar_type(), " ",
              queries_in.sizes());
  const bool grouped = queries_in.dim() == 3;
  const int64_t B = queries_in.size(0), T = grouped ? queries_in.size(1) : 1, D = queries_in.size(-1), Q = B * T;
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.scalar_type() == at::kChar && codes_in.size(1) == D,
              "ivf_search: codes must be int8 [N, D=", D, "], got ", codes_in.scalar_type(), " ", codes_in.sizes());
  const int64_t N = codes_in.size(0);
  TORCH_CHECK(N <= 0xFFFFFFFFLL, "ivf_search: need N < 2**32 rows (rows rank in 32 bits), got N=", N);
  TORCH_CHECK(scales_in.scalar_type() == at::kFloat && scales_in.dim() == 1 && scales_in.size(0) == N,
              "ivf_search: scales must be float32 [N=", N, "], got ", scales_in.scalar_type(), " ", scales_in.sizes());
  TORCH_CHECK(cluster_offsets_in.scalar_type() == at::kLong && cluster_offsets_in.dim() == 1 &&
                  cluster_offsets_in.size(0) >= 2,
              "ivf_search: cluster_offsets must be int64 [C+1] with C >= 1, got ", cluster_offsets_in.scalar_type(),
              " ", cluster_offsets_in.sizes());
  const int64_t C = cluster_offsets_in.size(0) - 1;
  TORCH_CHECK(C <= 0xFFFFFFFFLL, "ivf_search: need C < 2**32 clusters, got C=", C);
  const bool scores_ok = centroid_scores_in.scalar_type() == at::kFloat && centroid_scores_in.dim() == queries_in.dim() &&
                         centroid_scores_in.size(0) == B && (!grouped || centroid_scores_in.size(1) == T) &&
                         centroid_scores_in.size(-1) == C;
  TORCH_CHECK(scores_ok, "ivf_search: centroid_scores must be float32 ", grouped ? "[B, T, C]" : "[B, C]", " with B=", B,
              grouped ? ", T=" + std::to_string(T) : std::string(), ", C=", C, ", got ", centroid_scores_in.scalar_type(),
              " ", centroid_scores_in.sizes());
  TORCH_CHECK(cache_in.dim() == 2 && cache_in.size(0) == N && cache_in.size(1) == D &&
                  (cache_in.scalar_type() == at::kHalf || cache_in.scalar_type() == at::kBFloat16),
              "ivf_search: cache must be float16 or bfloat16 [N=", N, ", D=", D, "], got ", cache_in.scalar_type(),
              " ", cache_in.sizes());
  TORCH_CHECK(row_to_id_in.dim() == 1 && row_to_id_in.size(0) == N && row_to_id_in.scalar_type() == at::kLong,
              "ivf_search: row_to_id must be int64 [N=", N, "], got ", row_to_id_in.scalar_type(), " ",
              row_to_id_in.sizes());
  const int64_t W = (N + 63) / 64;
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->scalar_type() == at::kLong && mask_in->dim() == 2 && mask_in->size(0) == B &&
                    mask_in->size(1) == W,
                "ivf_search: mask must be int64 [B, ceil(N/64)]=[", B, ", ", W, "], got ", mask_in->scalar_type(), " ",
                mask_in->sizes());
  }
  TORCH_CHECK(n_probe >= 1 && min_rows >= 0 && max_probe >= 1,
              "ivf_search: need n_probe >= 1, min_rows >= 0, max_probe >= 1, got ", n_probe, ", ", min_rows, ", ",
              max_probe);
  TORCH_CHECK(k >= 1 && k0 >= k, "ivf_search: need 1 <= k <= k0, got k=", k, ", k0=", k0);
  const at::Tensor queries = queries_in.contiguous(), centroid_scores = centroid_scores_in.contiguous();
  const at::Tensor codes = codes_in.contiguous(), scales = scales_in.contiguous();
  const at::Tensor offsets_t = cluster_offsets_in.contiguous(), cache = cache_in.contiguous();
  const at::Tensor row_to_id = row_to_id_in.contiguous();
  const int64_t* off = offsets_t.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[C] == N, "ivf_search: cluster_offsets must start at 0 and end at N=", N, ", got ",
              off[0], " .. ", off[C]);
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(off[c] <= off[c + 1], "ivf_search: cluster_offsets must be non-decreasing, got ", off[c], " > ",
                off[c + 1], " at cluster ", c);
  }
  at::Tensor mask_t;  // rows may be strided (one filter expanded over the batch): only words must be dense
  if (mask_in.has_value()) mask_t = mask_in->stride(1) == 1 ? *mask_in : mask_in->contiguous();
  std::vector<const uint64_t*> mrows;  // query q reads mask row q / T
  if (mask_in.has_value()) {
    const uint64_t* mk = reinterpret_cast<const uint64_t*>(mask_t.data_ptr<int64_t>());
    mrows.resize(Q);
    for (int64_t q = 0; q < Q; ++q) mrows[q] = mk + (q / T) * mask_t.stride(0);
  }
  std::vector<int64_t> out_shape = grouped ? std::vector<int64_t>{B, T, k} : std::vector<int64_t>{B, k};
  at::Tensor out_scores = at::full(out_shape, -std::numeric_limits<float>::infinity(), queries.options());
  at::Tensor out_ids = at::full(out_shape, -1, offsets_t.options());
  at::Tensor out_rows = at::full(out_shape, -1, offsets_t.options());
  if (Q == 0) return {out_scores, out_ids, out_rows};
  const uint64_t* const* mr = mask_in.has_value() ? mrows.data() : nullptr;
  if (cache.scalar_type() == at::kHalf) {
    search_rows<at::Half>(queries.data_ptr<float>(), centroid_scores.data_ptr<float>(), codes.data_ptr<int8_t>(),
                          scales.data_ptr<float>(), off, cache.data_ptr<at::Half>(), row_to_id.data_ptr<int64_t>(), mr,
                          Q, C, N, D, n_probe, min_rows, max_probe, k0, k, out_scores.data_ptr<float>(),
                          out_ids.data_ptr<int64_t>(), out_rows.data_ptr<int64_t>());
  } else {
    search_rows<at::BFloat16>(queries.data_ptr<float>(), centroid_scores.data_ptr<float>(), codes.data_ptr<int8_t>(),
                              scales.data_ptr<float>(), off, cache.data_ptr<at::BFloat16>(),
                              row_to_id.data_ptr<int64_t>(), mr, Q, C, N, D, n_probe, min_rows, max_probe, k0, k,
                              out_scores.data_ptr<float>(), out_ids.data_ptr<int64_t>(), out_rows.data_ptr<int64_t>());
  }
  return {out_scores, out_ids, out_rows};
}

}  // namespace
}  // namespace silverrec

TORCH_LIBRARY_IMPL(silverrec, CPU, m) {
  m.impl("quantize_int8_rowwise", &silverrec::quantize_int8_rowwise_cpu);
  m.impl("ivf_int8_topk", &silverrec::ivf_int8_topk_cpu);
  m.impl("ivf_select_probes", &silverrec::ivf_select_probes_cpu);
  m.impl("ivf_rescore_topk", &silverrec::ivf_rescore_topk_cpu);
  m.impl("ivf_search", &silverrec::ivf_search_cpu);
}
