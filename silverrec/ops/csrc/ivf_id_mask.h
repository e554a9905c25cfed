// An id-order filter mask read by ivf_search in row order, packed on demand cluster by cluster.
//
// ivf_search takes the filter as packed row-order words (what bloom_search makes), or in the
// caller's id order: bool [B, N] or a uint8 bitmap [B, ceil(N/8)] with FAISS IDSelectorBitmap's
// layout, where row r of the index passes iff id row_to_id[r] passes. Packing a whole id-order
// row first (pack_id_mask) reads every one of the N ids for each distinct mask row, while a query
// reads only the rows of the clusters its probe choice walks: at 1M items, n_probe 1 and a 10%
// filter, ~2,500 rows. So the words of a cluster are made when the probe choice first reaches it
// (ensure), and everything after (the popcount of the probe choice, both scans, the fallback)
// reads the same row-order words it would read from a packed mask: same results, bit for bit.
//
// Words are kept per distinct mask row (one row expanded over the batch with stride 0 is one
// row; the T grouped queries of a user share theirs), so a cluster is packed at most once per
// mask row: never more gathers than pack_id_mask's, and far fewer when the probes are few. The
// flag of a cluster is set (release) after its words are stored; a thread that finds it unset
// packs the words itself. Two threads may pack the same words at once: they store the same
// values, with relaxed atomic stores, and a word shared by two adjacent clusters is only ever
// rewritten with the value it already holds, so a concurrent reader of the other cluster reads
// the right bits either way.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "ivf_common.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// Whether ivf_search should pack a whole id-order mask (pack_id_mask: one pass over the N ids
// serves up to 8 mask rows, streaming) instead of packing clusters as probes reach them (one
// random read of the mask per row walked, per distinct mask row). A cluster is packed once per
// distinct row, so a row shared by many queries (stride 0) is never worse packed lazily; for
// distinct rows a per-row random read costs about 16x a row of the whole-mask pass (measured:
// 16 x 120k ids, a filter per query, 1 thread: pack_id_mask 0.33 ms, lazy packing of 20% of
// the rows per query 0.78 ms). The rows a query walks are estimated from its probe plan and
// the mask's pass fraction (256 ids sampled from each of the first 4 rows): the walk covers
// n_probe * N / C rows, or the passing rows `cover` asks for, whichever takes more.
// Rows the probe walks of `queries` queries sharing one mask row are expected to read, at most
// N: each walk covers n_probe average clusters (n_probe * N / C rows), or enough clusters to hold
// cover's passing rows at pass fraction `fraction`, whichever is more. Used to choose between
// making a mask row's words cluster by cluster and making all of them at once.
inline double expected_walk_rows(double fraction, int64_t n_probe, const Coverage& cover, int64_t N, int64_t C,
                                 double queries) {
  const double walk = std::max(static_cast<double>(n_probe) * N / C, cover.expected(fraction) / fraction);
  return std::min<double>(N, walk * queries);
}

inline bool pack_whole_mask(const at::Tensor& mask, int64_t queries, int64_t N, int64_t C, int64_t n_probe,
                            const Coverage& cover) {
  const int64_t rows = mask.size(0);
  if (rows < 2 || mask.stride(0) == 0 || N == 0) return false;  // one distinct row: lazy is never worse
  const bool is_bool = mask.scalar_type() == at::kBool;
  const auto* base = reinterpret_cast<const uint8_t*>(mask.data_ptr());
  int64_t passing = 0, sampled = 0;
  for (int64_t s = 0; s < std::min<int64_t>(rows, 4); ++s) {
    const uint8_t* src = base + s * mask.stride(0);
    for (int64_t j = 0; j < 256; ++j, ++sampled) {
      const int64_t id = (j * N) / 256;
      passing += is_bool ? (src[id] != 0) : ((src[id >> 3] >> (id & 7)) & 1);
    }
  }
  const double fraction = std::max<double>(passing, 0.5) / static_cast<double>(sampled);
  const double per_row = expected_walk_rows(fraction, n_probe, cover, N, C, static_cast<double>(queries) / rows);
  return 16.0 * per_row > static_cast<double>(N);
}

// Row-order mask words made cluster by cluster, as ivf_search's probe choice reaches them: the
// words of each distinct mask row ("source"; query q reads source q / per_row, or source 0 when
// one row is shared by all), a ready flag per (source, cluster), and pack() in the subclass, which
// makes the words covering a row range. IdOrderMask packs an id-order mask; BloomMask
// (ivf_bloom_mask.h) runs a filter program over the Bloom index.
class LazyRowMask {
 public:
  LazyRowMask(const int64_t* off, int64_t N, int64_t C, int64_t queries, int64_t per_row, int64_t sources, bool shared)
      : off_(off), N_(N), C_(C), W_((N + 63) / 64), per_row_(per_row), S_(shared ? 1 : sources), shared_(shared) {
    words_.reset(new uint64_t[S_ * W_]);  // not zeroed: only words of ensured clusters are read
    ready_.reset(new std::atomic<uint8_t>[S_ * C_]());
    rows_.resize(queries);
    for (int64_t q = 0; q < queries; ++q) rows_[q] = words_.get() + source(q) * W_;
  }
  virtual ~LazyRowMask() = default;

  // The row-order words of each query (valid over the clusters ensured for it).
  const uint64_t* const* rows() const { return rows_.data(); }

  // Makes the words covering cluster c's rows valid for query q.
  void ensure(int64_t q, int64_t c) {
    const int64_t s = source(q);
    std::atomic<uint8_t>& flag = ready_[s * C_ + c];
    if (flag.load(std::memory_order_acquire)) return;
    pack(s, off_[c], off_[c + 1]);
    flag.store(1, std::memory_order_release);
  }

  // Starts loading what ensure(q, c) will read, unless cluster c is ready for query q: the probe
  // walk calls it one cluster ahead, so the next cluster's cache misses overlap this one's work.
  void prefetch(int64_t q, int64_t c) {
    const int64_t s = source(q);
    if (ready_[s * C_ + c].load(std::memory_order_relaxed)) return;
    prefetch_inputs(s, off_[c], off_[c + 1]);
  }

  // Makes every word valid for query q (the fallback scan over all rows).
  void ensure_all(int64_t q) {
    for (int64_t c = 0; c < C_; ++c) ensure(q, c);
  }

 protected:
  int64_t source(int64_t q) const { return shared_ ? 0 : q / per_row_; }
  uint64_t* words(int64_t s) { return words_.get() + s * W_; }
  // Marks every cluster of source s ready (its words were all made before the walk).
  void mark_ready(int64_t s) {
    for (int64_t c = 0; c < C_; ++c) ready_[s * C_ + c].store(1, std::memory_order_release);
  }
  // Makes the words covering rows [lo, hi) of source s (whole words: rows of a neighbouring
  // cluster in a shared word get their own, same, bits), stored with relaxed atomic stores.
  virtual void pack(int64_t s, int64_t lo, int64_t hi) = 0;
  // Prefetches what pack(s, lo, hi) reads (default: nothing).
  virtual void prefetch_inputs(int64_t /*s*/, int64_t /*lo*/, int64_t /*hi*/) {}

  const int64_t* off_;
  int64_t N_, C_, W_, per_row_, S_;
  bool shared_;

 private:
  std::unique_ptr<uint64_t[]> words_;
  std::unique_ptr<std::atomic<uint8_t>[]> ready_;
  std::vector<const uint64_t*> rows_;
};

class IdOrderMask : public LazyRowMask {
 public:
  // mask: bool [S, cols] (nonzero passes) or uint8 [S, cols] bitmap (id i: bit i & 7 of byte
  // i >> 3), rows contiguous, S distinct rows (row stride 0: S = 1); query q reads row
  // q / per_row (or row 0 when shared). row_to_id [N], off [C + 1] as in ivf_search.
  IdOrderMask(const at::Tensor& mask, const int64_t* row_to_id, const int64_t* off, int64_t N, int64_t C,
              int64_t queries, int64_t per_row)
      : LazyRowMask(off, N, C, queries, per_row, mask.size(0), mask.size(0) > 1 && mask.stride(0) == 0),
        row_to_id_(row_to_id) {
    is_bool_ = mask.scalar_type() == at::kBool;
    const int64_t cols = mask.size(1);
    bound_ = is_bool_ ? cols : 8 * cols;
    base_ = reinterpret_cast<const uint8_t*>(mask.data_ptr());
    stride_ = mask.stride(0);
  }

  // Whether a row read so far held an id outside the mask's [0, bound) (its bit read as 0).
  bool bad_id() const { return bad_.load(std::memory_order_relaxed); }
  int64_t bound() const { return bound_; }

 protected:
  void pack(int64_t s, int64_t lo, int64_t hi) override {
    if (lo >= hi) return;
    const uint8_t* src = base_ + s * stride_;
    uint64_t* out = words(s);
    const auto limit = static_cast<uint64_t>(bound_);
    bool bad = false;
    for (int64_t w = lo >> 6; w <= (hi - 1) >> 6; ++w) {
      const int64_t r0 = w << 6, n = std::min<int64_t>(64, N_ - r0);
      const auto* id = reinterpret_cast<const uint64_t*>(row_to_id_ + r0);
      uint64_t bits = 0;
      if (is_bool_) {
        for (int64_t j = 0; j < n; ++j) {
          const bool ok = id[j] < limit;
          bad |= !ok;
          bits |= static_cast<uint64_t>(ok && src[ok ? id[j] : 0] != 0) << j;
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const bool ok = id[j] < limit;
          const uint64_t i = ok ? id[j] : 0;
          bad |= !ok;
          bits |= static_cast<uint64_t>(ok & ((src[i >> 3] >> (i & 7)) & 1)) << j;
        }
      }
      __atomic_store_n(out + w, bits, __ATOMIC_RELAXED);
    }
    if (bad) bad_.store(true, std::memory_order_relaxed);
  }

 private:
  const int64_t* row_to_id_;
  int64_t bound_ = 0, stride_ = 0;
  bool is_bool_ = true;
  const uint8_t* base_ = nullptr;
  std::atomic<bool> bad_{false};
};

}  // namespace
}  // namespace silverrec
