// The probe scores of ivf_probe_scores (spec: ivf_probe_scores_reference): the queries [B, D],
// each with one more value appended, w * |q| (w = spread_weight; |q| summed in float64, rounded to
// float32), times a bfloat16 matrix [D + 1, C] packed in tiles of 16 columns, float32 out: the
// centroid scores q . c + w |q| spread_c that rank a query's clusters (IVFInt8Index.centroid_scores
// with probe_precision="bfloat16"), without the float32 matmul and the torch ops that would make
// the [B, D + 1] augmented queries.
//
// Layout of the packed matrix (pack_probe_matrix in Python): [Ct = ceil(C / 16), K2 = ceil((D + 1) / 2),
// 16, 2] bfloat16; element [t, k2, j, h] is row 2 * k2 + h, column 16 * t + j, zero-padded. One
// uint32 holds a column's pair of rows (2 * k2 in the low half, 2 * k2 + 1 in the high half), the
// operand layout of AVX-512 BF16's vdpbf16ps, so one 64-byte load is 16 columns' next pair.
//
// Arithmetic, identical on both paths and in the reference: the augmented query is rounded to bfloat16
// (nearest even); per (query, column) one float32 accumulator, starting at +0, takes for k2 = 0,
// 1, ... first the product of the odd rows, then of the even rows, each added with one rounding
// (vdpbf16ps's order). A product of two bfloat16 values is exact in float32, so the AVX2 path's
// FMAs round exactly as vdpbf16ps does. (vdpbf16ps also treats subnormal inputs as zero and
// flushes subnormal results; centroid scores never come near 1e-38.)
//
// Paths: AVX-512 BF16 (Zen 4, Sapphire Rapids, Cooper Lake) where active_isa() is the AVX-512
// path and the CPU has BF16; else AVX2 + FMA (SILVERREC_CPU_ISA=avx2 forces it, so the tests
// compare both bit for bit on one machine).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_isa.h"

#define SILVERREC_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// Whether this process's probe scores take the vdpbf16ps path (decided once).
inline bool probe_scores_use_bf16() {
  static const bool use = active_isa() == Isa::kAvx512Vnni && cpu_has_avx512_bf16();
  return use;
}

constexpr int64_t kProbeTile = 16;  // columns per tile

// Query b's augmented row [q, w |q|, 0 ...] (2 K2 values) as bfloat16 pairs (nearest even),
// uint32 [K2]: row 2 k2 low, 2 k2 + 1 high.
inline void query_pairs(const float* q, int64_t D, float spread_weight, int64_t K2, uint32_t* out) {
  double sq = 0.0;
  for (int64_t d = 0; d < D; ++d) sq += static_cast<double>(q[d]) * q[d];
  const float reach = spread_weight * static_cast<float>(std::sqrt(sq));
  auto value = [&](int64_t r) -> uint32_t {
    return r < D ? c10::BFloat16(q[r]).x : (r == D ? c10::BFloat16(reach).x : 0u);
  };
  for (int64_t k2 = 0; k2 < K2; ++k2) out[k2] = value(2 * k2) | (value(2 * k2 + 1) << 16);
}

// NQ queries (pairs at qp, row stride K2) against one tile (K2 x 16 uint32): out[i, 0 .. cols)
// with row stride ldo.
template <int NQ>
SILVERREC_AVX512_BF16 void probe_tile_avx512_bf16(const uint32_t* qp, int64_t K2, const uint32_t* tile, float* out,
                                                   int64_t ldo, int64_t cols) {
  __m512 acc[NQ];
  for (int i = 0; i < NQ; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    const __m512bh c = (__m512bh)_mm512_loadu_si512(tile + k2 * kProbeTile);
    for (int i = 0; i < NQ; ++i) {
      acc[i] = _mm512_dpbf16_ps(acc[i], c, (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[i * K2 + k2])));
    }
  }
  const __mmask16 m = static_cast<__mmask16>((1u << cols) - 1);
  for (int i = 0; i < NQ; ++i) _mm512_mask_storeu_ps(out + i * ldo, m, acc[i]);
}

// The same on AVX2: a tile is two halves of 8 columns; a pair's two bfloat16 become float32 by
// shifting (low, even row) or masking (high, odd row).
template <int NQ>
__attribute__((target("avx2,fma"))) void probe_tile_avx2(const uint32_t* qp, int64_t K2, const uint32_t* tile,
                                                         float* out, int64_t ldo, int64_t cols) {
  __m256 acc[NQ][2];
  for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + k2 * kProbeTile));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + k2 * kProbeTile + 8));
    const __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), odd0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
    const __m256 even1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), odd1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
    for (int i = 0; i < NQ; ++i) {
      const uint32_t u = qp[i * K2 + k2];
      const uint32_t ue = u << 16, uo = u & 0xFFFF0000u;
      float fe, fo;
      std::memcpy(&fe, &ue, 4);
      std::memcpy(&fo, &uo, 4);
      const __m256 qe = _mm256_set1_ps(fe), qo = _mm256_set1_ps(fo);
      acc[i][0] = _mm256_fmadd_ps(odd0, qo, acc[i][0]);
      acc[i][0] = _mm256_fmadd_ps(even0, qe, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(odd1, qo, acc[i][1]);
      acc[i][1] = _mm256_fmadd_ps(even1, qe, acc[i][1]);
    }
  }
  for (int i = 0; i < NQ; ++i) {
    if (cols == kProbeTile) {
      _mm256_storeu_ps(out + i * ldo, acc[i][0]);
      _mm256_storeu_ps(out + i * ldo + 8, acc[i][1]);
    } else {
      alignas(32) float tmp[kProbeTile];
      _mm256_store_ps(tmp, acc[i][0]);
      _mm256_store_ps(tmp + 8, acc[i][1]);
      std::memcpy(out + i * ldo, tmp, cols * sizeof(float));
    }
  }
}

// Queries [B, K2] pairs against tiles [t0, t1) into out [B, C]: per tile, every query (blocks of
// 16 / 8 / 4 / 2 / 1 on AVX-512, 4 / 2 / 1 on AVX2), so a tile (K2 x 64 bytes) is read from
// memory once per call.
inline void probe_tiles(const uint32_t* qp, int64_t B, int64_t K2, const uint32_t* packed, int64_t C, int64_t t0,
                        int64_t t1, float* out, bool bf16) {
  for (int64_t t = t0; t < t1; ++t) {
    const uint32_t* tile = packed + t * K2 * kProbeTile;
    const int64_t cols = std::min<int64_t>(kProbeTile, C - t * kProbeTile);
    float* o = out + t * kProbeTile;
    int64_t b = 0;
    if (bf16) {
      for (; b + 16 <= B; b += 16) probe_tile_avx512_bf16<16>(qp + b * K2, K2, tile, o + b * C, C, cols);
      if (b + 8 <= B) { probe_tile_avx512_bf16<8>(qp + b * K2, K2, tile, o + b * C, C, cols); b += 8; }
      if (b + 4 <= B) { probe_tile_avx512_bf16<4>(qp + b * K2, K2, tile, o + b * C, C, cols); b += 4; }
      if (b + 2 <= B) { probe_tile_avx512_bf16<2>(qp + b * K2, K2, tile, o + b * C, C, cols); b += 2; }
      if (b < B) probe_tile_avx512_bf16<1>(qp + b * K2, K2, tile, o + b * C, C, cols);
    } else {
      for (; b + 4 <= B; b += 4) probe_tile_avx2<4>(qp + b * K2, K2, tile, o + b * C, C, cols);
      if (b + 2 <= B) { probe_tile_avx2<2>(qp + b * K2, K2, tile, o + b * C, C, cols); b += 2; }
      if (b < B) probe_tile_avx2<1>(qp + b * K2, K2, tile, o + b * C, C, cols);
    }
  }
}

// The whole op body: q float32 [B, D] contiguous, packed uint32 [Ct, K2, 16], out float32 [B, C].
inline void probe_scores(const float* q, int64_t B, int64_t D, float spread_weight, const uint32_t* packed, int64_t Ct,
                         int64_t K2, int64_t C, float* out) {
  std::vector<uint32_t> qp(B * K2);
  for (int64_t b = 0; b < B; ++b) query_pairs(q + b * D, D, spread_weight, K2, qp.data() + b * K2);
  const bool bf16 = probe_scores_use_bf16();
  // a grain of tiles worth ~64k multiply-adds: C = 4,000 at D' = 129, B = 16 gives 250 tiles
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, B * K2 * 2 * kProbeTile));
  at::parallel_for(0, Ct, grain, [&](int64_t t0, int64_t t1) { probe_tiles(qp.data(), B, K2, packed, C, t0, t1, out, bf16); });
}

}  // namespace
}  // namespace silverrec
