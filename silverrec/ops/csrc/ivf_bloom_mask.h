// Probe, then filter: the Bloom filter of ivf_search_bloom evaluated over the clusters its probe
// choice walks, not over all N rows.
//
// The probe choice counts each walked cluster's passing rows, exactly, so it only needs the mask
// words of the clusters it walks: at 1M items, n_probe 8 of 4,000 clusters and a 10% filter, a
// query walks ~80 clusters (2% of the rows), and a Bloom pass over all N rows per query costs
// more than its scan. BloomMask runs the filter program (bloom_program.h) over the words of a
// cluster when the walk first reaches it, minus the denied rows (tombstones) and the query's
// excluded rows, and everything after (the popcount, both scans) reads the same words a full
// bloom_search pass would give: same results, bit for bit, and the zero-miss guarantee holds.
//
// A strict filter walks most clusters; one streaming pass over all words costs less there than
// cluster-sized pieces (decided per mask row before the walk, from the program run over a sample
// of words spread over the index: the pass fraction and, from it, the rows the walk covers).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bloom_program.h"
#include "ivf_common.h"
#include "ivf_id_mask.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

class BloomMask : public LazyRowMask {
 public:
  // programs: one decoded plan per mask row (S = B rows; query q reads row q / per_row).
  // deny: W words of rows never passing (nullptr: none). exclude: S sorted lists of rows.
  BloomMask(std::vector<Program> programs, const uint64_t* deny, std::vector<std::vector<int64_t>> exclude,
            const int64_t* off, int64_t N, int64_t C, int64_t queries, int64_t per_row, bool avx512)
      : LazyRowMask(off, N, C, queries, per_row, static_cast<int64_t>(programs.size()), false),
        programs_(std::move(programs)), deny_(deny), exclude_(std::move(exclude)), avx512_(avx512) {
    for (const Program& p : programs_) max_depth_ = std::max(max_depth_, p.max_depth);
  }

  // Rows the walk of a query reading row s is expected to cover: n_probe average clusters, or
  // enough to hold cover's passing rows at the pass fraction of a sample of the row's words
  // (16 blocks of 4 words spread over the index), whichever is more; times its queries
  // (per_row, e.g. the T task queries of a user: they walk different clusters). At most N.
  double expected_walk(int64_t s, int64_t n_probe, const Coverage& cover) {
    constexpr int64_t kSamples = 16, kSampleWords = 4;
    std::vector<uint64_t> stack(max_depth_ * kBlockWords);
    int64_t passing = 0, sampled = 0;
    for (int64_t i = 0; i < kSamples; ++i) {
      const int64_t w0 = std::min(W_ - 1, (i * W_) / kSamples), n = std::min(kSampleWords, W_ - w0);
      run_block(programs_[s], w0, n, stack.data(), avx512_);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t valid = std::min<int64_t>(64, N_ - 64 * (w0 + j));
        const uint64_t in_n = valid >= 64 ? ~uint64_t{0} : (uint64_t{1} << valid) - 1;
        passing += __builtin_popcountll(stack[j] & in_n);
        sampled += valid;
      }
    }
    const double fraction = std::max<double>(passing, 0.5) / static_cast<double>(std::max<int64_t>(sampled, 1));
    return expected_walk_rows(fraction, n_probe, cover, N_, C_, static_cast<double>(per_row_));
  }

  // Makes every word of the rows listed in `whole` (one streaming pass per row, in parallel
  // over (row, chunk of words)) and marks their clusters ready, before any walk reads them.
  void make_whole(const std::vector<int64_t>& whole) {
    if (whole.empty()) return;
    constexpr int64_t kChunk = 1024;  // words per task
    const int64_t chunks = (W_ + kChunk - 1) / kChunk;
    at::parallel_for(0, static_cast<int64_t>(whole.size()) * chunks, 4, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t s = whole[t / chunks], w0 = (t % chunks) * kChunk;
        pack(s, 64 * w0, std::min(N_, 64 * std::min(W_, w0 + kChunk)));
      }
    });
    for (int64_t s : whole) mark_ready(s);
  }

 protected:
  void pack(int64_t s, int64_t lo, int64_t hi) override {
    if (lo >= hi) return;
    thread_local std::vector<uint64_t> stack;
    stack.resize(std::max<int64_t>(1, max_depth_) * kBlockWords);
    uint64_t* out = words(s);
    const std::vector<int64_t>& ex = exclude_[s];
    const int64_t w_end = ((hi - 1) >> 6) + 1;
    for (int64_t w0 = lo >> 6; w0 < w_end; w0 += kBlockWords) {
      const int64_t n = std::min(kBlockWords, w_end - w0);
      run_block(programs_[s], w0, n, stack.data(), avx512_);
      if (deny_ != nullptr) {
        for (int64_t i = 0; i < n; ++i) stack[i] &= ~deny_[w0 + i];
      }
      for (auto it = std::lower_bound(ex.begin(), ex.end(), 64 * w0); it != ex.end() && *it < 64 * (w0 + n); ++it) {
        const int64_t r = *it - 64 * w0;
        stack[r >> 6] &= ~(uint64_t{1} << (r & 63));
      }
      for (int64_t i = 0; i < n; ++i) __atomic_store_n(out + w0 + i, stack[i], __ATOMIC_RELAXED);
    }
  }

  // The words of rows [lo, hi) in every bit row the program reads, and the denied rows': a
  // cluster's slice of each bit row is a cache miss of its own (~0.9x the time of a batch under
  // a ~1% filter at 10M items, prefetched one cluster ahead of the walk).
  void prefetch_inputs(int64_t s, int64_t lo, int64_t hi) override {
    for (const uint64_t* row : programs_[s].rows) prefetch_words(row, lo, hi);
    if (deny_ != nullptr) prefetch_words(deny_, lo, hi);
  }

 private:
  std::vector<Program> programs_;
  const uint64_t* deny_;
  std::vector<std::vector<int64_t>> exclude_;
  bool avx512_;
  int64_t max_depth_ = 1;
};

}  // namespace
}  // namespace silverrec
