// Exact int8 dot products of the IVF scan, AVX2 path (the baseline; ivf_dot_i8_avx512.h has the
// AVX-512 VNNI path with the same functions): one query with one row (dot_i8), one query with 4
// consecutive rows (dot_i8_rows4, the query-major scan) and one row with 4 queries (dot_i8_x4,
// the cluster-major scan). All are exact int32 sums, so every path agrees bit for bit with the
// reference.
//
// Each takes the query's `qbias` = query_bias(q, D), the constant a path's products carry per
// query (computed once per query, not per row): 0 here; the VNNI path's products are offset.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit
namespace avx2 {

inline int32_t query_bias(const int8_t*, int64_t) { return 0; }

// Exact int8 dot product. AVX2 has no s8 x s8 multiply-add, only u8 x s8 (vpmaddubsw); we use
// |b| (u8, <= 128) times sign(a, b) (= a * sign(b), s8 within [-127, 127] because query codes
// are checked to exclude -128). Each int16 lane then sums two products of magnitude
// <= 128 * 127, so it stays <= 32512 and never saturates; vpmaddwd with ones widens to int32.
inline int32_t dot_i8(const int8_t* a, int32_t /*qbias*/, const int8_t* b, int64_t D) {
  int64_t d = 0;
  int32_t acc = 0;
#ifdef __AVX2__
  __m256i acc8 = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + d));
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + d));
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(vb), _mm256_sign_epi8(va, vb));
    acc8 = _mm256_add_epi32(acc8, _mm256_madd_epi16(p16, ones));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc8), _mm256_extracti128_si256(acc8, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  acc = _mm_cvtsi128_si32(s);
#endif
  for (; d < D; ++d) {
    acc += static_cast<int32_t>(a[d]) * static_cast<int32_t>(b[d]);
  }
  return acc;
}

#ifdef __AVX2__
// out[j] = the sum of the eight int32 lanes of a_j, for the four accumulators together (two hadd
// levels, then the two 128-bit halves), instead of one horizontal reduction per accumulator.
inline void store_sums4(__m256i a0, __m256i a1, __m256i a2, __m256i a3, int32_t* out) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
}
#endif

// Exact int8 dot products of one query with the 4 consecutive rows at `rows` (row stride D), the
// sign trick of dot_i8: the query is loaded once per 32 columns for the 4 rows, and the four
// int32 sums are reduced together (hadd), instead of one horizontal reduction per row.
inline void dot_i8_rows4(const int8_t* a, int32_t /*qbias*/, const int8_t* rows, int64_t D, int32_t* out) {
  int64_t d = 0;
  out[0] = out[1] = out[2] = out[3] = 0;
#ifdef __AVX2__
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + d));
#define SILVERREC_ROW_STEP(acc, j)                                                                    \
  {                                                                                                   \
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + (j) * D + d));      \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(vb),            \
                                                                       _mm256_sign_epi8(va, vb)),      \
                                                  ones));                                             \
  }
    SILVERREC_ROW_STEP(a0, 0);
    SILVERREC_ROW_STEP(a1, 1);
    SILVERREC_ROW_STEP(a2, 2);
    SILVERREC_ROW_STEP(a3, 3);
#undef SILVERREC_ROW_STEP
  }
  store_sums4(a0, a1, a2, a3, out);
#endif
  for (; d < D; ++d) {
    for (int j = 0; j < 4; ++j) out[j] += static_cast<int32_t>(a[d]) * static_cast<int32_t>(rows[j * D + d]);
  }
}

// Exact int8 dot products of one item row with 4 queries (the sign trick of dot_i8): the row is
// loaded and made absolute once per 32 columns and shared by the 4 queries.
inline void dot_i8_x4(const int8_t* row, const int8_t* const* q, const int32_t* /*qbias*/, int64_t D, int32_t* out) {
  int64_t d = 0;
  out[0] = out[1] = out[2] = out[3] = 0;
#ifdef __AVX2__
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const __m256i ones = _mm256_set1_epi16(1);
  for (; d + 32 <= D; d += 32) {
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + d));
    const __m256i ab = _mm256_abs_epi8(vb);
#define SILVERREC_DOT_STEP(acc, j)                                                                       \
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ab, _mm256_sign_epi8(              \
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[j] + d)), vb)), \
                               ones))
    SILVERREC_DOT_STEP(a0, 0);
    SILVERREC_DOT_STEP(a1, 1);
    SILVERREC_DOT_STEP(a2, 2);
    SILVERREC_DOT_STEP(a3, 3);
#undef SILVERREC_DOT_STEP
  }
  store_sums4(a0, a1, a2, a3, out);
#endif
  for (; d < D; ++d) {
    for (int j = 0; j < 4; ++j) out[j] += static_cast<int32_t>(q[j][d]) * static_cast<int32_t>(row[d]);
  }
}

}  // namespace avx2
}  // namespace
}  // namespace silverrec
