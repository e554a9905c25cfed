// Exact re-score of the scan's candidates from the float16/bfloat16 cache and the final top-k
// by external id (ivf_rescore_topk / ivf_search; spec: ivf_rescore_topk_reference). Products
// of a 16-bit float and a float32 are exact in float64, and the float64 sum is rounded once to
// float32, so the summation order changes the result only when the exact sum lies within ~D
// ulp(float64) of a float32 rounding boundary.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu_isa.h"
#include "ivf_common.h"
#include "ivf_dot_i8_avx512.h"  // SILVERREC_AVX512_VNNI

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

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

// The AVX-512 path of dot_f64 (run when active_isa() is Isa::kAvx512Vnni): 16 cache values per
// load, 8 float64 lanes per FMA, 4 chains; the last D % 16 values by a masked load (zeros
// elsewhere, matched by masked loads of q), not a scalar loop.
template <typename T>
SILVERREC_AVX512_VNNI inline __m512 load16(const T* p, __mmask16 m);
template <>
SILVERREC_AVX512_VNNI inline __m512 load16<at::Half>(const at::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
template <>
SILVERREC_AVX512_VNNI inline __m512 load16<at::BFloat16>(const at::BFloat16* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
// The float64 values of the low / high 8 lanes of x.
SILVERREC_AVX512_VNNI inline __m512d low8_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
SILVERREC_AVX512_VNNI inline __m512d high8_pd(__m512 x) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

template <typename T>
SILVERREC_AVX512_VNNI double dot_f64_avx512(const T* row, const double* q, int64_t D) {
  __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  const __mmask16 all = 0xFFFF;
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    const __m512 x = load16<T>(row + d, all), y = load16<T>(row + d + 16, all);
    acc0 = _mm512_fmadd_pd(low8_pd(x), _mm512_loadu_pd(q + d), acc0);
    acc1 = _mm512_fmadd_pd(high8_pd(x), _mm512_loadu_pd(q + d + 8), acc1);
    acc2 = _mm512_fmadd_pd(low8_pd(y), _mm512_loadu_pd(q + d + 16), acc2);
    acc3 = _mm512_fmadd_pd(high8_pd(y), _mm512_loadu_pd(q + d + 24), acc3);
  }
  for (; d < D; d += 16) {  // at most two steps of 16, the last one masked
    const int64_t n = std::min<int64_t>(16, D - d);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    const __m512 x = load16<T>(row + d, m);
    acc0 = _mm512_fmadd_pd(low8_pd(x), _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), q + d), acc0);
    acc1 = _mm512_fmadd_pd(high8_pd(x), _mm512_maskz_loadu_pd(static_cast<__mmask8>(m >> 8), q + d + 8), acc1);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc0, acc2), _mm512_add_pd(acc1, acc3)));
}

// dot_f64 of a CPU path.
template <Isa kIsa, typename T>
inline double dot_f64_for(const T* row, const double* q, int64_t D) {
  if constexpr (kIsa == Isa::kAvx512Vnni) {
    return dot_f64_avx512<T>(row, q, D);
  } else {
    return dot_f64<T>(row, q, D);
  }
}

// The exact re-score and final top-k of one query (ivf_rescore_topk_reference; a thread's
// scratch, reused across its queries): candidate rows rows[0 .. K0) (-1 = none), query qf [D],
// results into os / oi [k] and, unless nullptr, their rows into orow [k] (already padded by the
// caller). kIsa: the CPU path of the dot products.
template <typename T, Isa kIsa>
struct Rescore {
  void run(const float* qf, const T* cache, const int64_t* rows, int64_t K0, const int64_t* row_to_id, int64_t D,
           int64_t k, float* os, int64_t* oi, int64_t* orow = nullptr) {
    qd.resize(D);
    for (int64_t d = 0; d < D; ++d) qd[d] = qf[d];
    cand.clear();
    cand.reserve(K0);
    ids.resize(K0);
    from.resize(K0);
    // The K0 rows are random DRAM reads: copy them to a local buffer first (independent loads,
    // so many misses are in flight at once), then score them from cache.
    // raw 16-bit storage: resizing a std::vector<c10::Half> value-initialises it one element at
    // a time (~18% of this function's time when the rows are in cache); uint16_t is a memset
    local.resize(K0 * D);
    T* const rows_copy = reinterpret_cast<T*>(local.data());
    int64_t n = 0;
    for (int64_t j = 0; j < K0; ++j) {
      const int64_t r = rows[j];
      if (r < 0) continue;
      std::memcpy(rows_copy + n * D, cache + r * D, D * sizeof(T));
      from[n] = r;
      ids[n++] = row_to_id[r];
    }
    for (int64_t j = 0; j < n; ++j) {
      TORCH_CHECK(ids[j] >= 0 && ids[j] <= 0xFFFFFFFFLL, op, ": row_to_id entries must lie in [0, 2**32), got ", ids[j]);
      const float s = static_cast<float>(dot_f64_for<kIsa, T>(rows_copy + j * D, qd.data(), D));
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
  static_assert(sizeof(T) == sizeof(uint16_t), "the re-score cache is a 16-bit float");
  std::vector<uint16_t> local;  // K0 x D cache rows
};

template <typename T, Isa kIsa>
void rescore_rows(const float* qf, const T* cache, const int64_t* rows, const int64_t* row_to_id, float* os,
                  int64_t* oi, int64_t B, int64_t K0, int64_t D, int64_t k) {
  // Each query's K0 rows are random DRAM reads (latency-bound, not compute-bound): one query's
  // worth of rows already pays for waking a second thread.
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, query_threads(B, K0 * D, int64_t(1) << 14), 1, [&](int64_t, int64_t) {
    Rescore<T, kIsa> rescore;
    for (int64_t b = next_query(counter); b < B; b = next_query(counter)) {
      rescore.run(qf + b * D, cache, rows + b * K0, K0, row_to_id, D, k, os + b * k, oi + b * k);
    }
  });
}

}  // namespace
}  // namespace silverrec
