// The block choice of ivf_search's second level (spec: silverrec/ops/reference/ivf.py::
// ivf_select_blocks_reference). An index built with blocks (IVFInt8Index.build(block_rows=...))
// orders each cluster's rows by a k-means of the cluster into blocks of about block_rows rows,
// with an INT8 code, a scale and a spread per block. After the probe walk, a query scores the
// blocks of its probed clusters like rows (the int32 dot of the query code with the block code,
// times the two scales, plus reach * spread) and scans only the best ceil(fraction * blocks) of
// them, more while they hold fewer than max(K0, ceil(fraction * the walk's target)) eligible rows. On real-embedding-like data the best
// rows of a probed cluster sit in a few of its blocks, so the scan reads a fraction of the
// walked rows for the same recall (benchmarks/RESULTS.md, issue 18).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "ivf_common.h"
#include "ivf_probe_select.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// The second level's tensors (all nullptr: an index without blocks). Blocks of cluster c are
// [cluster_blocks[c], cluster_blocks[c + 1]); block j is rows [block_offsets[j], block_offsets[j + 1]).
struct Blocks {
  const int64_t* block_offsets = nullptr;   // [S + 1]
  const int64_t* cluster_blocks = nullptr;  // [C + 1]
  const int8_t* codes = nullptr;            // [S, D]
  const float* scales = nullptr;            // [S]
  const float* spread = nullptr;            // [S] (nullptr: no spread term)
  const float* reach = nullptr;             // [Q] the spread's weight per query (nullptr: none)
  int64_t S = 0;
  double fraction = 1.0;
  bool active() const { return block_offsets != nullptr && fraction < 1.0; }
};

// A block's score: float(acc) * q_scale * block_scale, plus reach * spread when given, rounded
// step by step as the reference computes it (no fused multiply-add: bit-identical floats).
__attribute__((optimize("fp-contract=off"))) inline float block_score(int32_t acc, float qscale, float scale,
                                                                        float reach, float spread) {
  const float dot = static_cast<float>(acc) * qscale * scale;
  const float extra = reach * spread;
  return dot + extra;
}

// The block choice of one query (a thread's scratch, reused across its queries).
struct BlockSelect {
  // Writes into `out` the blocks to scan of the probed clusters prb[0 .. P): the best
  // ceil(fraction * n) of their n blocks by score (equal scores: lower block first), then the
  // next best while the chosen ones hold fewer than `goal` eligible rows (mask row mb; nullptr:
  // all rows). Chosen blocks keep the candidates' order (clusters in walk order, blocks ascending).
  void run(const Blocks& bl, const int8_t* qb, float qscale, float reach, const int64_t* prb, int64_t P,
           const uint64_t* mb, int64_t D, double goal, std::vector<int64_t>& out) {
    cand.clear();
    for (int64_t p = 0; p < P; ++p) {
      const int64_t c = prb[p];
      if (c < 0) continue;
      for (int64_t j = bl.cluster_blocks[c]; j < bl.cluster_blocks[c + 1]; ++j) cand.push_back(j);
    }
    const int64_t n = static_cast<int64_t>(cand.size());
    const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(bl.fraction * static_cast<double>(n))));
    out.clear();
    if (m >= n) {
      out.assign(cand.begin(), cand.end());
      return;
    }
    keys.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = cand[i];
      const int8_t* bc = bl.codes + j * D;
      int32_t acc = 0;
      for (int64_t d = 0; d < D; ++d) acc += static_cast<int32_t>(qb[d]) * static_cast<int32_t>(bc[d]);
      const float s = bl.spread != nullptr && bl.reach != nullptr
                          ? block_score(acc, qscale, bl.scales[j], reach, bl.spread[j])
                          : static_cast<float>(acc) * qscale * bl.scales[j];
      keys[i] = rank_key(s, j);
    }
    sorted.assign(keys.begin(), keys.end());
    std::nth_element(sorted.begin(), sorted.begin() + (m - 1), sorted.end(), std::greater<int64_t>());
    const int64_t threshold = sorted[m - 1];
    int64_t eligible = 0;
    auto rows_of = [&](int64_t j) {
      const int64_t lo = bl.block_offsets[j], hi = bl.block_offsets[j + 1];
      return mb == nullptr ? hi - lo : count_bits(mb, lo, hi);
    };
    for (int64_t i = 0; i < n; ++i) {
      if (keys[i] < threshold) continue;
      out.push_back(cand[i]);
      eligible += rows_of(cand[i]);
    }
    if (static_cast<double>(eligible) >= goal) return;
    // too few eligible rows among the best m (a strict filter): the next best blocks, in order
    std::sort(sorted.begin() + m, sorted.end(), std::greater<int64_t>());
    for (int64_t i = m; i < n && static_cast<double>(eligible) < goal; ++i) {
      const int64_t j = key_id(sorted[i]);
      out.push_back(j);
      eligible += rows_of(j);
    }
  }
  std::vector<int64_t> cand, keys, sorted;
};

}  // namespace
}  // namespace silverrec
