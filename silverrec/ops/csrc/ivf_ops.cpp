// CPU kernels (entry points) of the IVF-INT8 ops of torch.ops.silverrec: quantize_int8_rowwise,
// ivf_int8_topk, ivf_select_probes, ivf_rescore_topk, ivf_search and ivf_search_bloom. This file validates the
// inputs (TORCH_CHECK) and registers the kernels; each step's per-query code is in a header:
//   ivf_common.h        prefetch, per-query threading, rank keys (the tie rule), running top-k
//   ivf_dot_i8.h        exact int8 dot products, AVX2 path
//   ivf_dot_i8_avx512.h the same, AVX-512 VNNI path
//   ivf_scan.h          the scan: QueryScan (query-major) and scan_cluster_major, whose loops
//                       (ivf_scan_loops.inc) it compiles once per CPU path
//   ivf_probe_select.h  probe choice
//   ivf_probe_scores.h  bfloat16 probe scores (ivf_probe_scores: the centroid matmul, AVX-512 BF16)
//   ivf_id_mask.h       mask words made cluster by cluster (LazyRowMask); an id-order mask (bool /
//                       bitmap) packed to row order that way
//   ivf_bloom_mask.h    a Bloom filter plan run that way (probe, then filter: ivf_search_bloom)
//   bloom_program.h     the filter plan's stack machine (shared with bloom_search.cpp)
//   ivf_rescore.h       exact re-score + final top-k
//   ivf_quantize.h      symmetric int8 codes of a row
//   ivf_search.h        ivf_search's per-query composition of the steps
// The headers are included here only, so the six ops are one translation unit (compiling one
// against the torch headers takes about a minute on 2 cores; see setup.py).
//
// CPU path: each op picks the AVX2 or the AVX-512 VNNI code once per call (with_isa,
// ivf_common.h; active_isa(), cpu_isa.h), so its loops hold no branch on the path.
//
// Steps: quantize_int8_rowwise (the query codes), ivf_select_probes (probe choice by centroid
// order and passing-row coverage), ivf_int8_topk (the scan), ivf_rescore_topk (exact re-score +
// final top-k), and ivf_search, which runs all four steps for each query on one thread (each
// step's per-query body is one struct or function in its header, shared by the single-step op
// and ivf_search).
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() (a self-initialised variable) as the
// unused merge source of unmasked operations, which -W(maybe-)uninitialized reports wherever
// they are inlined (https://gcc.gnu.org/bugzilla/show_bug.cgi?id=105593, fixed in GCC 13). Set
// before any include, since the warnings point into <immintrin.h>.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bloom_program.h"
#include "ivf_bloom_mask.h"
#include "ivf_common.h"
#include "ivf_probe_scores.h"
#include "ivf_probe_select.h"
#include "ivf_quantize.h"
#include "ivf_rescore.h"
#include "ivf_scan.h"
#include "ivf_search.h"
#include "pack_id_mask.h"

namespace silverrec {
namespace {

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

  with_isa([&](auto isa) {
    constexpr Isa kIsa = decltype(isa)::value;
    // Queries sharing clusters: read each probed cluster once for all its queries.
    if (clusters_shared(prb, plen.data(), B, C, P)) {
      std::vector<const uint64_t*> mrows;
      for (int64_t b = 0; mk != nullptr && b < B; ++b) mrows.push_back(mk + b * mask_row_stride);
      scan_cluster_major_for<kIsa>(q, qs, cd, sc, off, prb, plen.data(), mk == nullptr ? nullptr : mrows.data(), B, C,
                                   P, D, k, os, orw, ov);
      return;
    }
    std::atomic<int64_t> counter{0};
    at::parallel_for(0, query_threads(B, 1, 1), 1, [&](int64_t, int64_t) {
      QueryScanFor<kIsa> scan(C, k);
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
  });
  return {out_scores, out_rows, out_valid};
}

// ---------------------------------------------------------------------------------------------
// ivf_select_probes: centroid order + passing-row coverage (spec: ivf_select_probes_reference).

at::Tensor ivf_select_probes_cpu(const at::Tensor& scores_in, const at::Tensor& cluster_offsets_in,
                                 const std::optional<at::Tensor>& mask_in, int64_t n_probe, int64_t min_rows,
                                 int64_t max_probe, double coverage_exponent, int64_t min_rows_floor) {
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
  TORCH_CHECK(coverage_exponent >= 0.0 && coverage_exponent <= 1.0 && min_rows_floor >= 0,
              "ivf_select_probes: need 0 <= coverage_exponent <= 1 and min_rows_floor >= 0, got ", coverage_exponent,
              ", ", min_rows_floor);
  const Coverage cover{min_rows, coverage_exponent, min_rows_floor};
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
                                   n_probe, cover, limit, po + b * max_probe);
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
  with_isa([&](auto isa) {
    constexpr Isa kIsa = decltype(isa)::value;
    if (cache.scalar_type() == at::kHalf) {
      rescore_rows<at::Half, kIsa>(queries.data_ptr<float>(), cache.data_ptr<at::Half>(), rw, ids,
                                   out_scores.data_ptr<float>(), out_ids.data_ptr<int64_t>(), B, K0, D, k);
    } else {
      rescore_rows<at::BFloat16, kIsa>(queries.data_ptr<float>(), cache.data_ptr<at::BFloat16>(), rw, ids,
                                       out_scores.data_ptr<float>(), out_ids.data_ptr<int64_t>(), B, K0, D, k);
    }
  });
  return {out_scores, out_ids};
}

// ---------------------------------------------------------------------------------------------
// quantize_int8_rowwise: symmetric INT8 codes of each row (spec: quantize_int8_rowwise_reference).
// The same float32 operations as the reference (max |x|, / 127, x / s, round half to even,
// clamp), so codes and scales are bit-identical.

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
// rows, their intermediate tensors and three of their four fork/joins.


// The validated, contiguous IVF arguments of ivf_search and ivf_search_bloom (their errors name
// the op). Queries are [B, D], or [B, T, D] when T queries (e.g. the task heads of one user)
// share the mask row b (Q = B * T queries).
struct IvfArgs {
  at::Tensor queries, centroid_scores, codes, scales, offsets, cache, row_to_id;
  int64_t B = 0, T = 1, D = 0, Q = 0, N = 0, C = 0, W = 0;
  bool grouped = false;
  const int64_t* off = nullptr;
  Coverage cover;  // min_rows, the coverage exponent, K as its floor (K results need K passing rows)
};

IvfArgs check_ivf_args(const char* op, const at::Tensor& queries_in, const at::Tensor& centroid_scores_in,
                       const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& cluster_offsets_in,
                       const at::Tensor& cache_in, const at::Tensor& row_to_id_in, int64_t n_probe, int64_t min_rows,
                       int64_t max_probe, int64_t k0, int64_t k, double coverage_exponent) {
  IvfArgs a;
  TORCH_CHECK((queries_in.dim() == 2 || queries_in.dim() == 3) && queries_in.scalar_type() == at::kFloat,
              op, ": queries must be float32 [B, D] or [B, T, D], got ", queries_in.scalar_type(), " ",
              queries_in.sizes());
  a.grouped = queries_in.dim() == 3;
  a.B = queries_in.size(0), a.T = a.grouped ? queries_in.size(1) : 1, a.D = queries_in.size(-1), a.Q = a.B * a.T;
  const int64_t B = a.B, T = a.T, D = a.D;
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.scalar_type() == at::kChar && codes_in.size(1) == D,
              op, ": codes must be int8 [N, D=", D, "], got ", codes_in.scalar_type(), " ", codes_in.sizes());
  const int64_t N = a.N = codes_in.size(0);
  TORCH_CHECK(N <= 0xFFFFFFFFLL, op, ": need N < 2**32 rows (rows rank in 32 bits), got N=", N);
  TORCH_CHECK(scales_in.scalar_type() == at::kFloat && scales_in.dim() == 1 && scales_in.size(0) == N,
              op, ": scales must be float32 [N=", N, "], got ", scales_in.scalar_type(), " ", scales_in.sizes());
  TORCH_CHECK(cluster_offsets_in.scalar_type() == at::kLong && cluster_offsets_in.dim() == 1 &&
                  cluster_offsets_in.size(0) >= 2,
              op, ": cluster_offsets must be int64 [C+1] with C >= 1, got ", cluster_offsets_in.scalar_type(),
              " ", cluster_offsets_in.sizes());
  const int64_t C = a.C = cluster_offsets_in.size(0) - 1;
  TORCH_CHECK(C <= 0xFFFFFFFFLL, op, ": need C < 2**32 clusters, got C=", C);
  const bool scores_ok = centroid_scores_in.scalar_type() == at::kFloat && centroid_scores_in.dim() == queries_in.dim() &&
                         centroid_scores_in.size(0) == B && (!a.grouped || centroid_scores_in.size(1) == T) &&
                         centroid_scores_in.size(-1) == C;
  TORCH_CHECK(scores_ok, op, ": centroid_scores must be float32 ", a.grouped ? "[B, T, C]" : "[B, C]", " with B=", B,
              a.grouped ? ", T=" + std::to_string(T) : std::string(), ", C=", C, ", got ",
              centroid_scores_in.scalar_type(), " ", centroid_scores_in.sizes());
  TORCH_CHECK(cache_in.dim() == 2 && cache_in.size(0) == N && cache_in.size(1) == D &&
                  (cache_in.scalar_type() == at::kHalf || cache_in.scalar_type() == at::kBFloat16),
              op, ": cache must be float16 or bfloat16 [N=", N, ", D=", D, "], got ", cache_in.scalar_type(),
              " ", cache_in.sizes());
  TORCH_CHECK(row_to_id_in.dim() == 1 && row_to_id_in.size(0) == N && row_to_id_in.scalar_type() == at::kLong,
              op, ": row_to_id must be int64 [N=", N, "], got ", row_to_id_in.scalar_type(), " ",
              row_to_id_in.sizes());
  a.W = (N + 63) / 64;
  TORCH_CHECK(n_probe >= 1 && min_rows >= 0 && max_probe >= 1,
              op, ": need n_probe >= 1, min_rows >= 0, max_probe >= 1, got ", n_probe, ", ", min_rows, ", ",
              max_probe);
  TORCH_CHECK(k >= 1 && k0 >= k, op, ": need 1 <= k <= k0, got k=", k, ", k0=", k0);
  TORCH_CHECK(coverage_exponent >= 0.0 && coverage_exponent <= 1.0, op, ": need 0 <= coverage_exponent <= 1, got ",
              coverage_exponent);
  a.cover = Coverage{min_rows, coverage_exponent, k};
  a.queries = queries_in.contiguous(), a.centroid_scores = centroid_scores_in.contiguous();
  a.codes = codes_in.contiguous(), a.scales = scales_in.contiguous();
  a.offsets = cluster_offsets_in.contiguous(), a.cache = cache_in.contiguous();
  a.row_to_id = row_to_id_in.contiguous();
  const int64_t* off = a.off = a.offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[C] == N, op, ": cluster_offsets must start at 0 and end at N=", N, ", got ",
              off[0], " .. ", off[C]);
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(off[c] <= off[c + 1], op, ": cluster_offsets must be non-decreasing, got ", off[c], " > ",
                off[c + 1], " at cluster ", c);
  }
  return a;
}

// Runs the search of validated arguments: mrows[q] is query q's packed mask row (nullptr: no
// filter), made cluster by cluster by `lazy` when given. Returns scores, ids, rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_ivf_search(const IvfArgs& a, const uint64_t* const* mr,
                                                              LazyRowMask* lazy, int64_t n_probe, int64_t max_probe,
                                                              int64_t k0, int64_t k) {
  std::vector<int64_t> out_shape = a.grouped ? std::vector<int64_t>{a.B, a.T, k} : std::vector<int64_t>{a.B, k};
  at::Tensor out_scores = at::full(out_shape, -std::numeric_limits<float>::infinity(), a.queries.options());
  at::Tensor out_ids = at::full(out_shape, -1, a.offsets.options());
  at::Tensor out_rows = at::full(out_shape, -1, a.offsets.options());
  if (a.Q == 0) return {out_scores, out_ids, out_rows};
  with_isa([&](auto isa) {
    constexpr Isa kIsa = decltype(isa)::value;
    if (a.cache.scalar_type() == at::kHalf) {
      search_rows<at::Half, kIsa>(a.queries.data_ptr<float>(), a.centroid_scores.data_ptr<float>(),
                                  a.codes.data_ptr<int8_t>(), a.scales.data_ptr<float>(), a.off,
                                  a.cache.data_ptr<at::Half>(), a.row_to_id.data_ptr<int64_t>(), mr, a.Q, a.C, a.N,
                                  a.D, n_probe, a.cover, max_probe, k0, k, out_scores.data_ptr<float>(),
                                  out_ids.data_ptr<int64_t>(), out_rows.data_ptr<int64_t>(), lazy);
    } else {
      search_rows<at::BFloat16, kIsa>(a.queries.data_ptr<float>(), a.centroid_scores.data_ptr<float>(),
                                      a.codes.data_ptr<int8_t>(), a.scales.data_ptr<float>(), a.off,
                                      a.cache.data_ptr<at::BFloat16>(), a.row_to_id.data_ptr<int64_t>(), mr, a.Q, a.C,
                                      a.N, a.D, n_probe, a.cover, max_probe, k0, k, out_scores.data_ptr<float>(),
                                      out_ids.data_ptr<int64_t>(), out_rows.data_ptr<int64_t>(), lazy);
    }
  });
  return {out_scores, out_ids, out_rows};
}

// The mask is packed row-order words (int64 [B, W]), or in the caller's id order (bool [B, N]
// or a uint8 bitmap [B, ceil(N/8)], ids in [0, N)), whose words are made only for the clusters
// the probe choice walks (ivf_id_mask.h) instead of a pack_id_mask pass over all N ids.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ivf_search_cpu(
    const at::Tensor& queries_in, const at::Tensor& centroid_scores_in, const at::Tensor& codes_in,
    const at::Tensor& scales_in, const at::Tensor& cluster_offsets_in, const at::Tensor& cache_in,
    const at::Tensor& row_to_id_in, const std::optional<at::Tensor>& mask_in, int64_t n_probe, int64_t min_rows,
    int64_t max_probe, int64_t k0, int64_t k, double coverage_exponent) {
  const IvfArgs a = check_ivf_args("ivf_search", queries_in, centroid_scores_in, codes_in, scales_in,
                                   cluster_offsets_in, cache_in, row_to_id_in, n_probe, min_rows, max_probe, k0, k,
                                   coverage_exponent);
  const int64_t B = a.B, N = a.N, W = a.W, C = a.C, Q = a.Q, T = a.T;
  // the mask's layout, by dtype: packed row-order words, or id order (bool ids / bitmap bytes)
  bool id_order = mask_in.has_value() && mask_in->scalar_type() != at::kLong;
  if (mask_in.has_value()) {
    const auto dtype = mask_in->scalar_type();
    const int64_t width = dtype == at::kLong ? W : (dtype == at::kBool ? N : (N + 7) / 8);
    TORCH_CHECK((dtype == at::kLong || dtype == at::kBool || dtype == at::kByte) && mask_in->dim() == 2 &&
                    mask_in->size(0) == B && mask_in->size(1) == width,
                "ivf_search: mask must be int64 [B, ceil(N/64)]=[", B, ", ", W, "] (packed, row order), bool [B, N]=[",
                B, ", ", N, "] or uint8 [B, ceil(N/8)]=[", B, ", ", (N + 7) / 8, "] (id order), got ",
                mask_in->scalar_type(), " ", mask_in->sizes());
  }
  at::Tensor mask_t;  // rows may be strided (one filter expanded over the batch): only words must be dense
  if (mask_in.has_value()) mask_t = mask_in->stride(1) == 1 ? *mask_in : mask_in->contiguous();
  if (id_order && pack_whole_mask(mask_t, Q, N, C, n_probe, a.cover)) {  // distinct rows, long walks
    mask_t = pack_id_mask_impl::pack_id_mask_cpu(mask_t, a.row_to_id);
    id_order = false;
  }
  std::vector<const uint64_t*> mrows;  // query q reads mask row q / T
  std::unique_ptr<IdOrderMask> lazy;   // id order: words packed per cluster as probes reach it
  if (id_order) {
    lazy = std::make_unique<IdOrderMask>(mask_t, a.row_to_id.data_ptr<int64_t>(), a.off, N, C, Q, T);
    mrows.assign(lazy->rows(), lazy->rows() + Q);
  } else if (mask_in.has_value()) {
    const uint64_t* mk = reinterpret_cast<const uint64_t*>(mask_t.data_ptr<int64_t>());
    mrows.resize(Q);
    for (int64_t q = 0; q < Q; ++q) mrows[q] = mk + (q / T) * mask_t.stride(0);
  }
  auto out = run_ivf_search(a, mask_in.has_value() ? mrows.data() : nullptr, lazy.get(), n_probe, max_probe, k0, k);
  if (lazy != nullptr && lazy->bad_id()) {  // named after the loops: the first row outside the mask
    const int64_t* ids = a.row_to_id.data_ptr<int64_t>();
    for (int64_t r = 0; r < N; ++r) {
      TORCH_CHECK_VALUE(ids[r] >= 0 && ids[r] < lazy->bound(), "ivf_search: row_to_id[", r, "] = ", ids[r],
                        " is outside the id-order mask's ids [0, ", lazy->bound(), ")");
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// ivf_search_bloom: ivf_search whose mask is a Bloom filter plan per mask row (bloom_search's
// arguments), minus denied rows (deny [W] words, e.g. tombstones) and each row's excluded rows
// (exclude_rows [B, E], -1 padding), evaluated over the clusters the probe choice walks
// (ivf_bloom_mask.h; spec: ivf_search_bloom_reference). A row whose walk is expected to cover
// more than a quarter of the index gets one streaming pass over all its words first.

std::tuple<at::Tensor, at::Tensor, at::Tensor> ivf_search_bloom_cpu(
    const at::Tensor& queries_in, const at::Tensor& centroid_scores_in, const at::Tensor& codes_in,
    const at::Tensor& scales_in, const at::Tensor& cluster_offsets_in, const at::Tensor& cache_in,
    const at::Tensor& row_to_id_in, const at::Tensor& bits_in, const at::Tensor& opcodes_in,
    const at::Tensor& terms_in, const at::Tensor& hashes_in, const at::Tensor& posting_offsets_in,
    const at::Tensor& posting_rows_in, const std::optional<at::Tensor>& deny_in,
    const std::optional<at::Tensor>& exclude_in, int64_t n_probe, int64_t min_rows, int64_t max_probe, int64_t k0,
    int64_t k, double coverage_exponent) {
  constexpr const char* op = "ivf_search_bloom";
  const IvfArgs a = check_ivf_args(op, queries_in, centroid_scores_in, codes_in, scales_in, cluster_offsets_in,
                                   cache_in, row_to_id_in, n_probe, min_rows, max_probe, k0, k, coverage_exponent);
  const int64_t B = a.B, W = a.W, N = a.N;
  const std::pair<const char*, const at::Tensor*> plan_args[] = {
      {"bits", &bits_in}, {"opcodes", &opcodes_in}, {"terms", &terms_in}, {"hashes", &hashes_in},
      {"posting_offsets", &posting_offsets_in}, {"posting_rows", &posting_rows_in}};
  for (const auto& p : plan_args) {
    const at::ScalarType want = p.second == &posting_rows_in ? at::kInt : at::kLong;  // int32 posting rows
    TORCH_CHECK_VALUE(p.second->scalar_type() == want && p.second->device().is_cpu(), op, ": ", p.first, " must be an ",
                      want == at::kInt ? "int32" : "int64", " CPU tensor, got ", p.second->scalar_type(), " on ",
                      p.second->device());
  }
  TORCH_CHECK_VALUE(bits_in.dim() == 2 && bits_in.size(1) == W, op, ": bits must be [M, ceil(N/64)=", W, "], got ",
                    bits_in.sizes());
  TORCH_CHECK_VALUE(opcodes_in.dim() == 2 && opcodes_in.size(0) == B && terms_in.sizes() == opcodes_in.sizes(), op,
                    ": opcodes and terms must be [B=", B, ", L], got ", opcodes_in.sizes(), " and ", terms_in.sizes());
  TORCH_CHECK_VALUE(hashes_in.dim() == 3 && hashes_in.size(0) == B && hashes_in.size(1) == opcodes_in.size(1), op,
                    ": hashes must be [B, L, H] with [B, L] = ", opcodes_in.sizes(), ", got ", hashes_in.sizes());
  TORCH_CHECK_VALUE(posting_offsets_in.dim() == 1 && posting_offsets_in.size(0) >= 1 && posting_rows_in.dim() == 1,
                    op, ": posting_offsets must be [T+1] and posting_rows [nnz], got ", posting_offsets_in.sizes(),
                    " and ", posting_rows_in.sizes());
  at::Tensor deny;
  if (deny_in.has_value()) {
    TORCH_CHECK_VALUE(deny_in->scalar_type() == at::kLong && deny_in->dim() == 1 && deny_in->size(0) == W, op,
                      ": deny must be int64 [ceil(N/64)=", W, "], got ", deny_in->scalar_type(), " ", deny_in->sizes());
    deny = deny_in->contiguous();
  }
  at::Tensor exclude;
  if (exclude_in.has_value()) {
    TORCH_CHECK_VALUE(exclude_in->scalar_type() == at::kLong && exclude_in->dim() == 2 && exclude_in->size(0) == B, op,
                      ": exclude_rows must be int64 [B=", B, ", E], got ", exclude_in->scalar_type(), " ",
                      exclude_in->sizes());
    exclude = exclude_in->contiguous();
  }
  const at::Tensor bits = bits_in.contiguous(), ops = opcodes_in.contiguous(), terms = terms_in.contiguous();
  const at::Tensor hashes = hashes_in.contiguous(), post_off = posting_offsets_in.contiguous();
  const at::Tensor post_rows = posting_rows_in.contiguous();
  const auto* bits_p = reinterpret_cast<const uint64_t*>(bits.data_ptr<int64_t>());
  std::vector<Program> programs;
  std::vector<std::vector<int64_t>> excluded(B);
  programs.reserve(B);
  for (int64_t b = 0; b < B; ++b) {
    programs.push_back(decode(b, ops.data_ptr<int64_t>(), terms.data_ptr<int64_t>(), hashes.data_ptr<int64_t>(),
                              ops.size(1), hashes.size(2), bits_p, bits.size(0), W, post_off.data_ptr<int64_t>(),
                              post_rows.data_ptr<int32_t>(), post_off.size(0) - 1, post_rows.size(0)));
    if (!exclude.defined()) continue;
    const int64_t E = exclude.size(1);
    const int64_t* ex = exclude.data_ptr<int64_t>() + b * E;
    for (int64_t e = 0; e < E; ++e) {
      TORCH_CHECK_VALUE(ex[e] >= -1 && ex[e] < N, op, ": exclude_rows[", b, "] holds ", ex[e], ", outside [-1, N=",
                        N, ")");
      if (ex[e] >= 0) excluded[b].push_back(ex[e]);
    }
    std::sort(excluded[b].begin(), excluded[b].end());
  }
  const auto* deny_p = deny.defined() ? reinterpret_cast<const uint64_t*>(deny.data_ptr<int64_t>()) : nullptr;
  // Rows that pass everything (the blank filter, nothing excluded, no row denied) get no mask:
  // their queries take the unfiltered probe choice and scan (whole clusters, the next one's
  // first lines prefetched), and no words are made for them. Same results: every row passes.
  std::vector<uint8_t> open(B, 0);
  int64_t num_open = 0;
  for (int64_t b = 0; b < B; ++b) {
    open[b] = passes_all(programs[b]) && excluded[b].empty();
    num_open += open[b];
  }
  if (num_open > 0 && deny_p != nullptr && std::any_of(deny_p, deny_p + W, [](uint64_t w) { return w != 0; })) {
    std::fill(open.begin(), open.end(), 0);
    num_open = 0;
  }
  if (num_open == B) return run_ivf_search(a, nullptr, nullptr, n_probe, max_probe, k0, k);
  BloomMask mask(std::move(programs), deny_p, std::move(excluded), a.off, N, a.C, a.Q, a.T,
                 active_isa() == Isa::kAvx512Vnni);
  std::vector<int64_t> whole;  // rows whose walks cover much of the index: one pass over all words
  for (int64_t b = 0; b < B; ++b) {
    if (!open[b] && 4 * mask.expected_walk(b, n_probe, a.cover) > static_cast<double>(N)) whole.push_back(b);
  }
  mask.make_whole(whole);
  std::vector<const uint64_t*> rows(mask.rows(), mask.rows() + a.Q);
  for (int64_t q = 0; q < a.Q; ++q) {
    if (open[q / a.T]) rows[q] = nullptr;
  }
  return run_ivf_search(a, rows.data(), &mask, n_probe, max_probe, k0, k);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ivf_probe_scores: queries [B, D], each with w |q| appended, times a packed bfloat16 [D + 1, C]
// matrix, float32 [B, C] out (spec: ivf_probe_scores_reference; the arithmetic and the layout are
// in ivf_probe_scores.h).

at::Tensor ivf_probe_scores_cpu(const at::Tensor& queries_in, const at::Tensor& packed_in, int64_t num_clusters,
                                double spread_weight) {
  TORCH_CHECK(queries_in.dim() == 2 && queries_in.scalar_type() == at::kFloat,
              "ivf_probe_scores: queries must be float32 [B, D], got ", queries_in.scalar_type(), " ", queries_in.sizes());
  TORCH_CHECK(packed_in.dim() == 4 && packed_in.scalar_type() == at::kBFloat16 && packed_in.size(2) == kProbeTile &&
                  packed_in.size(3) == 2,
              "ivf_probe_scores: packed must be bfloat16 [ceil(C/16), ceil((D+1)/2), 16, 2], got ",
              packed_in.scalar_type(), " ", packed_in.sizes());
  const int64_t B = queries_in.size(0), D = queries_in.size(1), Ct = packed_in.size(0), K2 = packed_in.size(1);
  TORCH_CHECK(K2 == (D + 2) / 2, "ivf_probe_scores: packed holds ", K2, " row pairs, queries have D=", D,
              " (need ceil((D+1)/2) = ", (D + 2) / 2, ")");
  TORCH_CHECK(num_clusters >= 1 && (num_clusters + kProbeTile - 1) / kProbeTile == Ct,
              "ivf_probe_scores: num_clusters must be in [", kProbeTile * (Ct - 1) + 1, ", ", kProbeTile * Ct, "] for ", Ct,
              " tiles, got ", num_clusters);
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({B, num_clusters}, queries.options());
  if (B == 0) return out;
  probe_scores(queries.data_ptr<float>(), B, D, static_cast<float>(spread_weight),
               reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>()), Ct, K2, num_clusters,
               out.data_ptr<float>());
  return out;
}

}  // namespace silverrec

TORCH_LIBRARY_IMPL(silverrec, CPU, m) {
  m.impl("quantize_int8_rowwise", &silverrec::quantize_int8_rowwise_cpu);
  m.impl("ivf_int8_topk", &silverrec::ivf_int8_topk_cpu);
  m.impl("ivf_select_probes", &silverrec::ivf_select_probes_cpu);
  m.impl("ivf_rescore_topk", &silverrec::ivf_rescore_topk_cpu);
  m.impl("ivf_search", &silverrec::ivf_search_cpu);
  m.impl("ivf_search_bloom", &silverrec::ivf_search_bloom_cpu);
  m.impl("ivf_probe_scores", &silverrec::ivf_probe_scores_cpu);
}
