// CPU kernel of torch.ops.silverrec.bloom_search (spec: silverrec/ops/reference/filter.py,
// bloom_search_reference): evaluates B postfix filter plans over the bit-sliced Bloom index,
// restricted to the rows of each query's probed clusters, and returns packed masks [B, W].
//
// Work is split into (query, chunk of kChunkWords mask words) tasks run with at::parallel_for;
// a task owns its output words, so no two tasks write the same word. Inside a task the plan runs
// as a stack machine over blocks of kBlockWords words (the stack stays in L1), touching only the
// signature rows named by the plan's TERM hash positions and the posting lists of its NOT_TERMs.
// Blocks with no row in a probed cluster are skipped. AND/OR/row combination use 512-bit words
// (AVX-512, masked tails) where active_isa() says so, else AVX2 (cpu_isa.h).
// NOT_ROWS (the complement of a TERM) serves exact NOTs of frequent terms from one exact row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bloom_program.h"
#include "cpu_isa.h"
#include "exact_filter.h"
#include "held_terms.h"
#include "pack_id_mask.h"

namespace silverrec {
namespace {

constexpr int64_t kChunkWords = 256;  // mask words per parallel task (16384 rows)
// Parallelise only when each thread gets about this many word reads (~5 ms): waking a thread
// team for a small batch costs more than it saves, badly so on a busy machine.
constexpr int64_t kMinReadsPerThread = int64_t{1} << 23;

at::Tensor bloom_search_cpu(const at::Tensor& bits, const at::Tensor& opcodes, const at::Tensor& terms,
                            const at::Tensor& hashes, const at::Tensor& posting_offsets, const at::Tensor& posting_rows,
                            const at::Tensor& probe, const at::Tensor& cluster_offsets) {
  const std::pair<const char*, const at::Tensor*> args[] = {
      {"bits", &bits},   {"opcodes", &opcodes},           {"terms", &terms},
      {"hashes", &hashes}, {"posting_offsets", &posting_offsets}, {"posting_rows", &posting_rows},
      {"probe", &probe}, {"cluster_offsets", &cluster_offsets}};
  for (const auto& a : args) {
    // posting rows are int32 (4 bytes per listed holder; rows < 2^31), everything else int64
    const at::ScalarType want = a.second == &posting_rows ? at::kInt : at::kLong;
    TORCH_CHECK_VALUE(a.second->scalar_type() == want, "bloom_search: ", a.first, " must be ",
                      want == at::kInt ? "int32" : "int64", ", got ", a.second->scalar_type());
    TORCH_CHECK_VALUE(a.second->device().is_cpu(), "bloom_search: ", a.first, " must be on the CPU");
  }
  TORCH_CHECK_VALUE(bits.dim() == 2, "bloom_search: bits must be [M, W], got ", bits.sizes());
  TORCH_CHECK_VALUE(opcodes.dim() == 2, "bloom_search: opcodes must be [B, L], got ", opcodes.sizes());
  TORCH_CHECK_VALUE(terms.sizes() == opcodes.sizes(), "bloom_search: terms ", terms.sizes(), " must match opcodes ",
                    opcodes.sizes());
  TORCH_CHECK_VALUE(hashes.dim() == 3 && hashes.size(0) == opcodes.size(0) && hashes.size(1) == opcodes.size(1),
                    "bloom_search: hashes must be [B, L, H] with [B, L] = ", opcodes.sizes(), ", got ", hashes.sizes());
  TORCH_CHECK_VALUE(posting_offsets.dim() == 1 && posting_offsets.size(0) >= 1,
                    "bloom_search: posting_offsets must be [T+1], got ", posting_offsets.sizes());
  TORCH_CHECK_VALUE(posting_rows.dim() == 1, "bloom_search: posting_rows must be [nnz], got ", posting_rows.sizes());
  TORCH_CHECK_VALUE(probe.dim() == 2 && probe.size(0) == opcodes.size(0),
                    "bloom_search: probe must be [B, P] with B = ", opcodes.size(0), ", got ", probe.sizes());
  TORCH_CHECK_VALUE(cluster_offsets.dim() == 1 && cluster_offsets.size(0) >= 2,
                    "bloom_search: cluster_offsets must be [C+1] with C >= 1, got ", cluster_offsets.sizes());

  const at::Tensor bits_c = bits.contiguous(), ops_c = opcodes.contiguous(), terms_c = terms.contiguous();
  const at::Tensor hashes_c = hashes.contiguous(), off_c = posting_offsets.contiguous();
  const at::Tensor rows_c = posting_rows.contiguous(), probe_c = probe.contiguous();
  const at::Tensor co_c = cluster_offsets.contiguous();
  const int64_t M = bits.size(0), W = bits.size(1), B = opcodes.size(0), L = opcodes.size(1), H = hashes.size(2);
  const int64_t T = posting_offsets.size(0) - 1, nnz = posting_rows.size(0), P = probe.size(1);
  const int64_t C = cluster_offsets.size(0) - 1;
  // Every word is written below; at::zeros would spend a (multi-threaded) pass on it.
  at::Tensor out = at::empty({B, W}, bits.options());
  if (B == 0 || W == 0) return out;

  const auto* bits_p = reinterpret_cast<const uint64_t*>(bits_c.data_ptr<int64_t>());
  const int64_t* probe_p = probe_c.data_ptr<int64_t>();
  const int64_t* co_p = co_c.data_ptr<int64_t>();
  std::vector<Program> programs;
  programs.reserve(B);
  // Per query, the probed row ranges sorted and merged (disjoint, ascending), so that a task
  // finds the ranges meeting its chunk by binary search instead of scanning all P probes.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges(B);
  int64_t max_depth = 1;
  for (int64_t b = 0; b < B; ++b) {
    programs.push_back(decode(b, ops_c.data_ptr<int64_t>(), terms_c.data_ptr<int64_t>(), hashes_c.data_ptr<int64_t>(),
                              L, H, bits_p, M, W, off_c.data_ptr<int64_t>(), rows_c.data_ptr<int32_t>(), T, nnz));
    max_depth = std::max(max_depth, programs.back().max_depth);
    for (int64_t j = 0; j < P; ++j) {
      const int64_t c = probe_p[b * P + j];
      if (c == -1) continue;
      TORCH_CHECK_VALUE(c >= 0 && c < C, "bloom_search: probe[", b, "] has cluster ", c, " outside [-1, ", C, ")");
      TORCH_CHECK_VALUE(0 <= co_p[c] && co_p[c] <= co_p[c + 1] && co_p[c + 1] <= 64 * W, "bloom_search: cluster ", c,
                        " rows [", co_p[c], ", ", co_p[c + 1], ") outside [0, ", 64 * W, "]");
      if (co_p[c] < co_p[c + 1]) ranges[b].emplace_back(co_p[c], co_p[c + 1]);
    }
    auto& r = ranges[b];
    std::sort(r.begin(), r.end());
    size_t kept = 0;
    for (size_t i = 0; i < r.size(); ++i) {
      if (kept > 0 && r[i].first <= r[kept - 1].second) {
        r[kept - 1].second = std::max(r[kept - 1].second, r[i].second);
      } else {
        r[kept++] = r[i];
      }
    }
    r.resize(kept);
  }

  auto* out_p = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t chunks = (W + kChunkWords - 1) / kChunkWords;
  int64_t reads = 0;  // rows read per word, summed over the plans
  for (const Program& p : programs) reads += static_cast<int64_t>(p.rows.size() + p.code.size());
  const int64_t grain = std::max<int64_t>(1, kMinReadsPerThread / (kChunkWords * std::max<int64_t>(1, reads / B)));
  const bool avx512 = active_isa() == Isa::kAvx512Vnni;
  at::parallel_for(0, B * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> stack(max_depth * kBlockWords);
    std::vector<uint64_t> in_range(kChunkWords);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, cw0 = (task % chunks) * kChunkWords;
      const int64_t cw1 = std::min(W, cw0 + kChunkWords);
      std::fill(in_range.begin(), in_range.end(), 0);
      const auto& r = ranges[b];
      auto it = std::upper_bound(r.begin(), r.end(), 64 * cw0,
                                 [](int64_t row, const std::pair<int64_t, int64_t>& range) { return row < range.second; });
      for (; it != r.end() && it->first < 64 * cw1; ++it) {
        const int64_t start = std::max(it->first, 64 * cw0), stop = std::min(it->second, 64 * cw1);
        for (int64_t w = start >> 6; w <= (stop - 1) >> 6; ++w) in_range[w - cw0] |= range_bits(w, start, stop);
      }
      for (int64_t w0 = cw0; w0 < cw1; w0 += kBlockWords) {
        const int64_t n = std::min(kBlockWords, cw1 - w0);
        const uint64_t* rm = in_range.data() + (w0 - cw0);
        uint64_t* dst = out_p + b * W + w0;
        if (std::all_of(rm, rm + n, [](uint64_t x) { return x == 0; })) {
          fill(dst, n, 0);  // no probed row in this block
          continue;
        }
        run_block(programs[b], w0, n, stack.data(), avx512);
        for (int64_t i = 0; i < n; ++i) dst[i] = stack[i] & rm[i];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(silverrec, CPU, m) {
  m.impl("bloom_search", &bloom_search_cpu);
  m.impl("exact_filter", &exact_filter_impl::exact_filter_cpu);
  m.impl("held_terms", &held_terms_impl::held_terms_cpu);
  m.impl("pack_id_mask", &pack_id_mask_impl::pack_id_mask_cpu);
}

}  // namespace silverrec
