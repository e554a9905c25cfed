// Exact int8 dot products of the IVF scan, AVX-512 VNNI path: the functions of ivf_dot_i8.h
// (same names and arguments, namespace avx512_vnni) with 512-bit loads, 16 int32 lanes and
// vpdpbusd, compiled for AVX-512 by their target attribute while the extension is built for
// AVX2; called only when active_isa() is Isa::kAvx512Vnni (cpu_isa.h).
//
// vpdpbusd multiplies UNSIGNED bytes by SIGNED bytes (and sums groups of 4 into int32 lanes
// without saturation). The item codes are made unsigned by flipping their sign bit (c ^ 0x80 =
// c + 128, in [0, 255]) and the query codes stay signed, so the sums are sum_d q_d (c_d + 128) =
// q.c + 128 sum_d q_d: subtracting the query's bias 128 sum_d q_d (query_bias, once per query)
// leaves the exact int32 dot product. (int32 arithmetic wraps, so this holds even where an
// intermediate sum would overflow.) One XOR per 64 item bytes, shared by the 4 queries of
// dot_i8_x4; the alternative, |c| times q negated where c < 0 (AVX-512 has no vpsignb), costs
// an abs, a compare and a masked subtract per 64 bytes per query.
//
// A row length D that is not a multiple of 64 ends with a masked load of the last D % 64 bytes
// (zeros elsewhere: the flipped zero item byte 128 meets a zero query byte), not a scalar loop.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "ivf_dot_i8.h"  // avx2::store_sums4

#define SILVERREC_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit
namespace avx512_vnni {

// The bias the products below carry for query q: 128 * sum(q).
SILVERREC_AVX512_VNNI inline int32_t query_bias(const int8_t* q, int64_t D) {
  int32_t sum = 0;
  for (int64_t d = 0; d < D; ++d) sum += q[d];
  return 128 * sum;
}

// The first n < 64 bytes.
SILVERREC_AVX512_VNNI inline __mmask64 tail_mask(int64_t n) { return (uint64_t(1) << n) - 1; }

// 64 item codes as unsigned bytes c + 128.
SILVERREC_AVX512_VNNI inline __m512i load_items(const int8_t* p) {
  return _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8(-128));
}
SILVERREC_AVX512_VNNI inline __m512i load_items(const int8_t* p, __mmask64 m) {
  return _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, p), _mm512_set1_epi8(-128));
}

// The 16 int32 lanes of a, summed into 8 (the two 256-bit halves).
SILVERREC_AVX512_VNNI inline __m256i fold256(__m512i a) {
  return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}

// out[j] = the lane sum of a_j minus bias[j], the four reduced together.
SILVERREC_AVX512_VNNI inline void store_sums4(__m512i a0, __m512i a1, __m512i a2, __m512i a3, const int32_t* bias,
                                              int32_t* out) {
  avx2::store_sums4(fold256(a0), fold256(a1), fold256(a2), fold256(a3), out);
  for (int j = 0; j < 4; ++j) out[j] -= bias[j];
}

// Exact int8 dot product of query a (bias qbias) with item row b.
SILVERREC_AVX512_VNNI inline int32_t dot_i8(const int8_t* a, int32_t qbias, const int8_t* b, int64_t D) {
  __m512i acc = _mm512_setzero_si512();
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) acc = _mm512_dpbusd_epi32(acc, load_items(b + d), _mm512_loadu_si512(a + d));
  if (d < D) {
    const __mmask64 m = tail_mask(D - d);
    acc = _mm512_dpbusd_epi32(acc, load_items(b + d, m), _mm512_maskz_loadu_epi8(m, a + d));
  }
  return _mm512_reduce_add_epi32(acc) - qbias;
}

// Exact int8 dot products of query a with the 4 consecutive rows at `rows` (row stride D): the
// query is loaded once per 64 columns for the 4 rows, the four sums reduced together.
SILVERREC_AVX512_VNNI inline void dot_i8_rows4(const int8_t* a, int32_t qbias, const int8_t* rows, int64_t D,
                                               int32_t* out) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) {
    const __m512i va = _mm512_loadu_si512(a + d);
    a0 = _mm512_dpbusd_epi32(a0, load_items(rows + d), va);
    a1 = _mm512_dpbusd_epi32(a1, load_items(rows + D + d), va);
    a2 = _mm512_dpbusd_epi32(a2, load_items(rows + 2 * D + d), va);
    a3 = _mm512_dpbusd_epi32(a3, load_items(rows + 3 * D + d), va);
  }
  if (d < D) {
    const __mmask64 m = tail_mask(D - d);
    const __m512i va = _mm512_maskz_loadu_epi8(m, a + d);
    a0 = _mm512_dpbusd_epi32(a0, load_items(rows + d, m), va);
    a1 = _mm512_dpbusd_epi32(a1, load_items(rows + D + d, m), va);
    a2 = _mm512_dpbusd_epi32(a2, load_items(rows + 2 * D + d, m), va);
    a3 = _mm512_dpbusd_epi32(a3, load_items(rows + 3 * D + d, m), va);
  }
  const int32_t bias[4] = {qbias, qbias, qbias, qbias};
  store_sums4(a0, a1, a2, a3, bias, out);
}

// Exact int8 dot products of one item row with 4 queries q[j] (biases qbias[j]): the row is
// loaded and flipped once per 64 columns and shared by the 4 queries.
SILVERREC_AVX512_VNNI inline void dot_i8_x4(const int8_t* row, const int8_t* const* q, const int32_t* qbias,
                                            int64_t D, int32_t* out) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) {
    const __m512i vr = load_items(row + d);
    a0 = _mm512_dpbusd_epi32(a0, vr, _mm512_loadu_si512(q[0] + d));
    a1 = _mm512_dpbusd_epi32(a1, vr, _mm512_loadu_si512(q[1] + d));
    a2 = _mm512_dpbusd_epi32(a2, vr, _mm512_loadu_si512(q[2] + d));
    a3 = _mm512_dpbusd_epi32(a3, vr, _mm512_loadu_si512(q[3] + d));
  }
  if (d < D) {
    const __mmask64 m = tail_mask(D - d);
    const __m512i vr = load_items(row + d, m);
    a0 = _mm512_dpbusd_epi32(a0, vr, _mm512_maskz_loadu_epi8(m, q[0] + d));
    a1 = _mm512_dpbusd_epi32(a1, vr, _mm512_maskz_loadu_epi8(m, q[1] + d));
    a2 = _mm512_dpbusd_epi32(a2, vr, _mm512_maskz_loadu_epi8(m, q[2] + d));
    a3 = _mm512_dpbusd_epi32(a3, vr, _mm512_maskz_loadu_epi8(m, q[3] + d));
  }
  store_sums4(a0, a1, a2, a3, qbias, out);
}

}  // namespace avx512_vnni
}  // namespace
}  // namespace silverrec
