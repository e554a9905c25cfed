// The int8 scan of ivf_int8_topk and ivf_search (held here, shared by both).
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
#pragma once

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ivf_common.h"
#include "ivf_dot_i8.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// Average queries per probed cluster from which the cluster-major scan pays.
constexpr double kShareRatio = 4.0;

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

}  // namespace
}  // namespace silverrec
