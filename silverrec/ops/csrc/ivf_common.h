// Helpers shared by the steps of an IVF search: software prefetch, the per-query threading
// (query_threads / next_query), rank keys (the tie rule as one int64 comparison) and the
// running top-k over them (TopK), and with_isa, the once-per-op-call choice of CPU path.
#pragma once

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// Calls f(std::integral_constant<Isa, path>{}) for the process's CPU path (active_isa()): the
// only branch on the path is this one, per op call; f's body is compiled once per path, so the
// loops inside it dispatch at compile time (f uses `decltype(isa)::value` as a template argument).
template <typename F>
decltype(auto) with_isa(F&& f) {
  if (active_isa() == Isa::kAvx512Vnni) return f(std::integral_constant<Isa, Isa::kAvx512Vnni>{});
  return f(std::integral_constant<Isa, Isa::kAvx2>{});
}

// Software prefetch of [p, p + bytes), one hint per 64-byte line (a prefetch never faults, so
// reading past a cluster or the codes is harmless).
inline void prefetch_bytes(const int8_t* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}
// The packed words (a mask row, a Bloom bit row) covering rows [lo, hi).
inline void prefetch_words(const uint64_t* words, int64_t lo, int64_t hi) {
  if (hi <= lo) return;
  prefetch_bytes(reinterpret_cast<const int8_t*>(words + (lo >> 6)), 8 * (((hi - 1) >> 6) - (lo >> 6) + 1));
}
// A row's INT8 code (D bytes) and its scale: a strict filter's rows are one random line in each array.
inline void prefetch_row(const int8_t* codes, const float* scales, int64_t row, int64_t D) {
  prefetch_bytes(codes + row * D, D);
  _mm_prefetch(reinterpret_cast<const char*>(scales + row), _MM_HINT_T0);
}
constexpr int64_t kPrefetchRows = 16;      // rows ahead within a cluster
constexpr int64_t kPrefetchBytes = 2048;   // bytes of the next probed cluster
// Passing rows ahead (filtered scans). 16 rather than 8: ~0.92x / ~0.95x the time of a batch under a
// ~10% filter at 10M / 1M items, the ~1% class within noise (benchmarks/RESULTS.md, 2026-12-07).
constexpr int64_t kPrefetchPassing = 16;
// Passing rows of a mask word's 64 from which the scan scores all of them, 4 per step, instead of
// listing the passing ones and visiting them one by one with prefetches. Measured (1M x 64, n_probe
// 240, batch 16, random masks): at 24 the whole-word scan made 30-60% masks 10-37% slower than
// the list and 85-95% masks 20-30% faster; at 48 the low densities take the list again and the
// high ones keep most of the gain (benchmarks/RESULTS.md, 2026-12-06).
constexpr int kDenseWordRows = 48;

// The passing rows a probe walk covers (spec: ivf_select_probes_reference): min_rows; with
// exponent > 0, max(floor, min_rows * s^exponent), s = the pass fraction of the rows of the
// query's first n_probe clusters (a filter strict near the query walks less than min_rows / s).
struct Coverage {
  int64_t min_rows = 0;
  double exponent = 0.0;
  int64_t floor = 0;
  // The count at pass fraction `fraction` (also the lazy masks' walk-length estimates), computed
  // as the reference does: std::pow of the fraction, then the product, then the floor.
  double expected(double fraction) const {
    return exponent == 0.0 ? static_cast<double>(min_rows)
                           : std::max(static_cast<double>(floor), min_rows * std::pow(fraction, exponent));
  }
  // The count for a query whose first n_probe clusters hold `rows` rows, `passing` of them
  // passing (the exact quotient; 1 when they hold none).
  double target(int64_t passing, int64_t rows) const {
    return expected(rows > 0 ? static_cast<double>(passing) / static_cast<double>(rows) : 1.0);
  }
};

// Bits of mask word w (rows [64 w, 64 w + 64)) that lie within rows [lo, hi); w must overlap it.
inline uint64_t word_bits_within(int64_t w, int64_t lo, int64_t hi) {
  uint64_t bits = ~uint64_t(0);
  if (w == lo >> 6) bits &= ~uint64_t(0) << (lo & 63);
  if (w == (hi - 1) >> 6 && (hi & 63) != 0) bits &= ~uint64_t(0) >> (64 - (hi & 63));
  return bits;
}

// Threads for a per-query loop: 1 (inline, no thread wake-up) when the whole batch is less work
// than `min_work` units, else up to one per query.
inline int64_t query_threads(int64_t B, int64_t work_per_query, int64_t min_work) {
  return B * work_per_query < min_work ? 1 : std::min<int64_t>(at::get_num_threads(), B);
}

// The next query for a thread of a per-query loop. Threads take queries one at a time from a
// shared counter instead of fixed halves of the batch: per-query costs vary with the probe lists
// and filters, and a thread the OS deschedules for a while does not hold back the others.
inline int64_t next_query(std::atomic<int64_t>& counter) { return counter.fetch_add(1, std::memory_order_relaxed); }

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

}  // namespace
}  // namespace silverrec
