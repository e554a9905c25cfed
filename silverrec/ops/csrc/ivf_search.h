// The per-query body of ivf_search: query codes, probe choice, scan (with the capped-list
// fallback) and re-score of each query on one thread (spec: ivf_search_reference). A query whose
// probed clusters hold at most K0 eligible rows skips the INT8 scores: its top K0 is all of them.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "ivf_common.h"
#include "ivf_id_mask.h"
#include "ivf_probe_select.h"
#include "ivf_quantize.h"
#include "ivf_rescore.h"
#include "ivf_scan.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// The rows of the probed clusters probe[0 .. P) that pass mask row mb (nullptr: all rows), in
// probe order, into rows[0 .. cap) (the rest set to -1); returns how many (at most cap: the
// caller knows the probed clusters hold at most cap eligible rows). The probe choice never
// repeats a cluster.
inline int64_t list_rows(const int64_t* off, const int64_t* probe, int64_t P, const uint64_t* mb, int64_t* rows,
                         int64_t cap) {
  int64_t n = 0;
  for (int64_t p = 0; p < P && n < cap; ++p) {
    const int64_t c = probe[p];
    const int64_t lo = off[c], hi = off[c + 1];
    if (mb == nullptr) {
      for (int64_t r = lo; r < hi && n < cap; ++r) rows[n++] = r;
      continue;
    }
    if (lo >= hi) continue;
    for (int64_t w = lo >> 6; w <= (hi - 1) >> 6; ++w) {
      uint64_t bits = mb[w] & word_bits_within(w, lo, hi);
      while (bits != 0 && n < cap) {
        rows[n++] = (w << 6) + __builtin_ctzll(bits);
        bits &= bits - 1;
      }
    }
  }
  std::fill(rows + n, rows + cap, int64_t(-1));
  return n;
}

// probe choice, the scan (with the unfiltered short-list fallback) and the exact re-score, each
// query on one thread. Same results as the four ops in sequence, without their [B, C] probe
// rows, their intermediate tensors and three of their four fork/joins.

// mrows[b] is query b's packed mask row (mrows == nullptr: no filter; mrows[b] == nullptr: none
// for query b); with an id-order or Bloom mask, `lazy` packs its words cluster by cluster as the
// probe choice reaches them (the non-null mrows[b] are lazy->rows()[b]). Results into os / oi /
// orw [B, k], already padded. kIsa: the CPU path of the scan and the re-score.
template <typename T, Isa kIsa>
void search_rows(const float* qf, const float* cs, const int8_t* cd, const float* sc, const int64_t* off,
                 const T* cache, const int64_t* row_to_id, const uint64_t* const* mrows, int64_t B, int64_t C,
                 int64_t N, int64_t D, int64_t n_probe, const Coverage& cover, int64_t max_probe, int64_t k0, int64_t k,
                 float* os, int64_t* oi, int64_t* orw, LazyRowMask* lazy) {
  const int64_t limit = std::min(C, max_probe);
  // The query codes start on a 64-byte boundary (like a torch tensor's data): with D = 128 every
  // 64-byte load of a query row is then aligned, where malloc's 16-byte alignment made every
  // AVX-512 query load split across two cache lines (~15% slower cluster-major scans).
  std::vector<int8_t> q_buf(B * D + 63);
  int8_t* const q = q_buf.data() + ((64 - reinterpret_cast<uintptr_t>(q_buf.data()) % 64) % 64);
  std::vector<float> qs(B);
  std::unique_ptr<int64_t[]> prb(new int64_t[B * limit]);  // only each row's used prefix is written
  std::vector<int64_t> plen(B), covered(B);  // covered: eligible rows of each query's probed clusters
  // 1. query codes and probe lists
  {
    std::atomic<int64_t> counter{0};
    at::parallel_for(0, query_threads(B, C, int64_t(1) << 14), 1, [&](int64_t, int64_t) {
      ProbeSelect select;
      for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
        qs[b] = quantize_row(qf + b * D, D, q + b * D, b, "ivf_search: queries");
        const uint64_t* mb = mrows == nullptr ? nullptr : mrows[b];
        plen[b] = select.run(cs + b * C, C, off, mb, n_probe, cover, limit, prb.get() + b * limit,
                             mb == nullptr ? nullptr : lazy, b, &covered[b]);
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
    scan_cluster_major_for<kIsa>(q, qs.data(), cd, sc, off, prb.get(), plen.data(), mrows, B, C, limit, D, k0,
                       shared_scores.data(), shared_rows.data(), shared_valid.data());
  }
  // 3. per query: the scan, the fallback, the re-score
  const bool shared = !shared_rows.empty();
  const int64_t all_off[2] = {0, N}, all_probe[1] = {0};
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, 1, 1), 1, [&](int64_t, int64_t) {
    QueryScanFor<kIsa> scan(C, k0);
    Rescore<T, kIsa> rescore;
    rescore.op = "ivf_search";
    std::vector<int64_t> rows(k0);
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      const int8_t* qb = q + b * D;
      const uint64_t* mb = mrows == nullptr ? nullptr : mrows[b];
      int64_t eligible;
      auto take_rows = [&] {  // the re-score orders them: no sort here
        const std::vector<int64_t>& best = scan.top.kept();
        std::fill(rows.begin(), rows.end(), int64_t(-1));
        for (size_t i = 0; i < best.size(); ++i) rows[i] = key_id(best[i]);
      };
      if (shared) {
        std::copy(shared_rows.begin() + b * k0, shared_rows.begin() + (b + 1) * k0, rows.begin());
        eligible = shared_valid[b];
      } else if (covered[b] <= k0) {
        // every eligible row is a candidate: list them, no INT8 scores needed (the re-score orders them)
        eligible = list_rows(off, prb.get() + b * limit, plen[b], mb, rows.data(), k0);
      } else {
        eligible = scan.run(qb, qs[b], cd, sc, off, prb.get() + b * limit, plen[b], mb, D);
        take_rows();
      }
      // a capped probe list that held fewer than k eligible rows: scan every row instead
      if (limit < C && eligible < k) {
        if (lazy != nullptr && mb != nullptr) lazy->ensure_all(b);
        scan.run(qb, qs[b], cd, sc, all_off, all_probe, 1, mb, D);
        take_rows();
      }
      rescore.run(qf + b * D, cache, rows.data(), k0, row_to_id, D, k, os + b * k, oi + b * k, orw + b * k);
    }
  });
}

}  // namespace
}  // namespace silverrec
