// The int8 scan of ivf_int8_topk and ivf_search (held here, shared by both).
//
// Spec: silverrec/ops/reference/ivf.py::ivf_int8_topk_reference. For each query (threads take queries
// one at a time from a shared counter), the rows of its probed clusters (deduplicated) are
// scanned; rows whose packed mask bit is 0 are skipped word by word (64 rows per word, so a strict
// filter costs ~N/64 word reads plus the passing rows; a word with most of its rows passing is
// scanned whole, 4 rows per step, and the failing rows' scores dropped, which is cheaper than
// visiting its passing rows one by one); every passing row gets an exact int32 dot
// product (ivf_dot_i8.h) and the score float(acc) * q_scale * scale, applied in that order as
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
// The loops (ivf_scan_loops.inc) are compiled twice, for the AVX2 path and for the AVX-512 VNNI
// path, and a caller picks one per op call with QueryScanFor<isa> / scan_cluster_major_for<isa>
// (see with_isa in ivf_common.h). They are included under `#pragma GCC target` rather than
// marked function by function, because the target must cover every function of the loops,
// lambdas included, for the AVX-512 dot products to inline into them; and a template
// instantiation takes the target of the template's definition, so templating on the path alone
// would leave the AVX-512 instantiation calling its dot products out of line.
#pragma once

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "ivf_common.h"
#include "cpu_isa.h"
#include "ivf_dot_i8.h"
#include "ivf_dot_i8_avx512.h"

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

namespace avx2 {
#include "ivf_scan_loops.inc"
}  // namespace avx2

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
namespace avx512_vnni {
#include "ivf_scan_loops.inc"
}  // namespace avx512_vnni
#pragma GCC pop_options

// The query-major scan of a CPU path.
template <Isa kIsa>
using QueryScanFor = std::conditional_t<kIsa == Isa::kAvx512Vnni, avx512_vnni::QueryScan, avx2::QueryScan>;

// The cluster-major scan of a CPU path (arguments: see scan_cluster_major).
template <Isa kIsa, typename... Args>
void scan_cluster_major_for(Args&&... args) {
  if constexpr (kIsa == Isa::kAvx512Vnni) {
    avx512_vnni::scan_cluster_major(std::forward<Args>(args)...);
  } else {
    avx2::scan_cluster_major(std::forward<Args>(args)...);
  }
}

}  // namespace
}  // namespace silverrec
