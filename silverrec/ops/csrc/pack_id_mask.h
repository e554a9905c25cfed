// CPU kernel of torch.ops.silverrec.pack_id_mask (spec: silverrec/ops/reference/filter.py,
// pack_id_mask_reference): a filter mask given in the caller's id order (bool [B, N], or a uint8
// bitmap [B, ceil(N/8)] with FAISS IDSelectorBitmap's layout) -> packed row-order int64 [B, W],
// W = ceil(R / 64), where bit r % 64 of word r // 64 is row r, which holds id row_to_id[r].
// Included by bloom_search.cpp (one translation unit for the filter ops).
//
// Two steps per pass over 1-4 groups of 8 queries (one "plane" each), each reading its input once:
//  1. Transpose: the B mask rows become G = ceil(B / 8) byte planes over the ids; byte i of
//     plane g holds, in bit q, whether id i passes query 8g + q. From bool rows: 32 ids at a
//     time, 8 rows shifted and OR-ed (AVX2); from a bitmap: 32 ids at a time, each byte spread
//     over its 8 ids and tested (AVX2). A plane is N bytes (120 KB for 120k ids,
//     1 MB for 1M), so the random reads of step 2 hit L2.
//  2. Permute + pack, in blocks of 64 rows (one output word per query): the 64 bytes plane[id]
//     are gathered (scalar loads; row_to_id is read once per pass) and each of the plane's 8
//     queries gets its word from one bit of each byte: AVX2 shifts the bit to the top and takes
//     _mm256_movemask_epi8 of 2 x 32 bytes; AVX-512 takes _mm512_test_epi8_mask of 64 bytes
//     (chosen at run time by active_isa()).
// Ids are checked in step 2 (a flag per task; the first bad row is named after the loop).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu_isa.h"

namespace silverrec {
namespace pack_id_mask_impl {

// Parallelise only when each thread gets at least this many bytes of work (~1 ms): waking a
// thread team costs more than small conversions take, badly so on a busy machine (16 x 120k bool
// took 0.26 ms on one thread and 12-22 ms on two threads of 2 cores with a load of 4).
constexpr int64_t kMinBytesPerThread = int64_t{1} << 23;
constexpr int64_t kIdsPerTask = int64_t{1} << 14;  // step 1 task: ids of one plane
constexpr int64_t kWordsPerTask = 64;               // step 2 task: 4096 rows
constexpr int64_t kPassBytes = int64_t{1} << 19;    // planes per pass: at most this many bytes (in L2)
constexpr int64_t kMaxPlanesPerPass = 4;

// Plane bytes [i0, i1) from the bool rows of queries q0..q0+nq-1 (nq <= 8); nonzero bytes pass.
inline void planes_from_bool(const uint8_t* const* rows, int nq, int64_t i0, int64_t i1, uint8_t* plane) {
  const __m256i one = _mm256_set1_epi8(1);
  int64_t i = i0;
  for (; i + 32 <= i1; i += 32) {
    __m256i acc = _mm256_setzero_si256();
    for (int q = 0; q < nq; ++q) {
      const __m256i x = _mm256_min_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[q] + i)), one);
      acc = _mm256_or_si256(acc, _mm256_sll_epi16(x, _mm_cvtsi32_si128(q)));  // 0/1 << q stays in its byte
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plane + i), acc);
  }
  for (; i < i1; ++i) {
    uint8_t acc = 0;
    for (int q = 0; q < nq; ++q) acc |= static_cast<uint8_t>((rows[q][i] != 0) << q);
    plane[i] = acc;
  }
}

// Transposes the 8x8 bit matrix x (byte a, bit b) -> (byte b, bit a): 2x2, 4x4, 8x8 block swaps.
inline uint64_t transpose8x8(uint64_t x) {
  uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x ^= t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x ^= t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  x ^= t ^ (t << 28);
  return x;
}

// Plane bytes [8 k0, 8 k1) from the bitmap rows of queries q0..q0+nq-1: bitmap byte k covers
// ids 8k..8k+7 (bit j = id 8k + j), so the 8 queries' bytes k form an 8x8 bit matrix to transpose.
// AVX2, 32 ids (4 bitmap bytes) at a time: each byte broadcast to its 8 ids, tested against the
// id's bit; the scalar transpose takes the tail.
inline void planes_from_bitmap(const uint8_t* const* rows, int nq, int64_t k0, int64_t k1, uint8_t* plane) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  // lane 0: bytes 0, 1
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);  // lane 1: bytes 2, 3
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));  // id i: bit i & 7
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    __m256i acc = _mm256_setzero_si256();
    for (int q = 0; q < nq; ++q) {
      int32_t four;
      std::memcpy(&four, rows[q] + k, 4);
      const __m256i x = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(four), spread), sel);
      acc = _mm256_or_si256(acc, _mm256_and_si256(_mm256_cmpeq_epi8(x, sel), _mm256_set1_epi8(static_cast<char>(1 << q))));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plane + 8 * k), acc);
  }
  for (; k < k1; ++k) {
    uint64_t x = 0;
    for (int q = 0; q < nq; ++q) x |= static_cast<uint64_t>(rows[q][k]) << (8 * q);
    const uint64_t y = transpose8x8(x);  // byte j: queries passing id 8k + j
    std::memcpy(plane + 8 * k, &y, 8);
  }
}

// The words of queries q0..q0+nq-1 (one plane) for a block of 64 gathered bytes.
inline void words_avx2(const void* bytes_v, int nq, uint64_t* const* out, int64_t w) {
  const auto* bytes = static_cast<const uint8_t*>(bytes_v);
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + 32));
  for (int q = 0; q < nq; ++q) {
    const __m128i s = _mm_cvtsi32_si128(7 - q);  // bit q to bit 7 of its byte (16-bit shifts: bit 7 is clean)
    const uint32_t a = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(lo, s)));
    const uint32_t b = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(hi, s)));
    out[q][w] = static_cast<uint64_t>(a) | (static_cast<uint64_t>(b) << 32);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void words_avx512(const void* bytes, int nq,
                                                                               uint64_t* const* out, int64_t w) {
  const __m512i v = _mm512_loadu_si512(bytes);
  for (int q = 0; q < nq; ++q) out[q][w] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(1 << q)));
}

// bytes[p][*] = the 64 bytes planes[p * bound + id[j]], j < n (0 beyond n), for P planes: the
// ids are read once for all P. Returns false if an id is outside [0, bound).
template <int P>
inline bool gather_block(const uint64_t* id, int64_t n, const uint8_t* planes, int64_t bound,
                         uint64_t (*bytes)[8]) {
  const auto limit = static_cast<uint64_t>(bound);
  bool bad = false;
  if (n == 64) {
    for (int j8 = 0; j8 < 8; ++j8) {
      uint64_t packed[P] = {};
      for (int j = 0; j < 8; ++j) {
        const uint64_t raw = id[8 * j8 + j];
        const bool ok = raw < limit;
        bad |= !ok;
        const uint64_t i = ok ? raw : 0;
        for (int p = 0; p < P; ++p) packed[p] |= static_cast<uint64_t>(planes[p * bound + i]) << (8 * j);
      }
      for (int p = 0; p < P; ++p) bytes[p][j8] = packed[p];  // 8 bytes per store
    }
    return !bad;
  }
  for (int p = 0; p < P; ++p) std::memset(bytes[p], 0, 64);
  for (int64_t j = 0; j < n; ++j) {
    const bool ok = id[j] < limit;
    bad |= !ok;
    const uint64_t i = ok ? id[j] : 0;
    for (int p = 0; p < P; ++p) reinterpret_cast<uint8_t*>(bytes[p])[j] = planes[p * bound + i];
  }
  return !bad;
}

inline at::Tensor pack_id_mask_cpu(const at::Tensor& mask_in, const at::Tensor& row_to_id_in) {
  const bool is_bool = mask_in.scalar_type() == at::kBool;
  TORCH_CHECK_VALUE(is_bool || mask_in.scalar_type() == at::kByte,
                    "pack_id_mask: mask must be bool [B, N] or a uint8 bitmap [B, ceil(N/8)], got ",
                    mask_in.scalar_type());
  TORCH_CHECK_VALUE(mask_in.dim() == 2, "pack_id_mask: mask must be 2-D [B, N] (bool) or [B, ceil(N/8)] (uint8), got ",
                    mask_in.sizes());
  TORCH_CHECK_VALUE(row_to_id_in.scalar_type() == at::kLong && row_to_id_in.dim() == 1,
                    "pack_id_mask: row_to_id must be int64 [R], got ", row_to_id_in.scalar_type(), " ",
                    row_to_id_in.sizes());
  TORCH_CHECK_VALUE(mask_in.device().is_cpu() && row_to_id_in.device().is_cpu(),
                    "pack_id_mask: mask and row_to_id must be on the CPU, got ", mask_in.device(), " and ",
                    row_to_id_in.device());
  // Rows may have any stride (one filter expanded over B has stride 0); ids must be contiguous.
  const at::Tensor mask = mask_in.stride(1) == 1 ? mask_in : mask_in.contiguous();
  const at::Tensor ids_t = row_to_id_in.contiguous();
  const int64_t B = mask.size(0), cols = mask.size(1), R = ids_t.size(0), W = (R + 63) / 64;
  const int64_t bound = is_bool ? cols : 8 * cols;  // ids the mask covers
  at::Tensor out = at::empty({B, W}, row_to_id_in.options());
  if (B == 0 || W == 0) return out;

  const auto* base = reinterpret_cast<const uint8_t*>(mask.data_ptr());
  const int64_t row_stride = mask.stride(0);
  const int64_t G = (B + 7) / 8;
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  auto* out_p = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const bool avx512 = active_isa() == Isa::kAvx512Vnni;
  std::atomic<bool> bad{false};
  // P planes per pass (steps 1 and 2 for queries 8g..8g+8P-1, then the next ones), P as many as
  // fit in kPassBytes (at most 4): the random reads of step 2 hit planes just written, and the
  // ids are read once per pass (16 x 1M, random row_to_id, one thread: ~3 ms with one 1 MB
  // plane per pass, 9.7 ms with both planes per block of rows; 16 x 120k: one pass).
  const int64_t P_max = std::max<int64_t>(1, std::min<int64_t>({kMaxPlanesPerPass, G, kPassBytes / std::max<int64_t>(1, bound)}));
  std::unique_ptr<uint8_t[]> plane_buf(new uint8_t[P_max * bound + 64]);
  uint8_t* planes = plane_buf.get();
  const int64_t chunk = is_bool ? kIdsPerTask : kIdsPerTask / 8;  // ids (bool) or bitmap bytes per task
  const int64_t chunks1 = (cols + chunk - 1) / chunk;
  const int64_t grain1 = std::max<int64_t>(1, kMinBytesPerThread / (8 * chunk));  // step 1 reads 8 bytes per column
  const int64_t chunks2 = (W + kWordsPerTask - 1) / kWordsPerTask;
  for (int64_t g0 = 0; g0 < G && !bad.load(); g0 += P_max) {
    const int P = static_cast<int>(std::min(P_max, G - g0));
    at::parallel_for(0, P * chunks1, grain1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = g0 + task / chunks1, c0 = (task % chunks1) * chunk, c1 = std::min(cols, c0 + chunk);
        const int nq = static_cast<int>(std::min<int64_t>(8, B - 8 * g));
        const uint8_t* rows[8];
        for (int q = 0; q < nq; ++q) rows[q] = base + (8 * g + q) * row_stride;
        uint8_t* plane = planes + (g - g0) * bound;
        if (is_bool) {
          planes_from_bool(rows, nq, c0, c1, plane);
        } else {
          planes_from_bitmap(rows, nq, c0, c1, plane);
        }
      }
    });
    const int64_t grain2 = std::max<int64_t>(1, kMinBytesPerThread / (64 * kWordsPerTask * (8 + P)));
    at::parallel_for(0, chunks2, grain2, [&](int64_t begin, int64_t end) {
      alignas(64) uint64_t bytes[kMaxPlanesPerPass][8];  // per plane, 64 gathered bytes
      bool ok = true;
      for (int64_t w = begin * kWordsPerTask; w < std::min(W, end * kWordsPerTask) && ok; ++w) {
        const int64_t r0 = 64 * w, n = std::min<int64_t>(64, R - r0);
        const auto* id = reinterpret_cast<const uint64_t*>(ids + r0);
        switch (P) {
          case 1: ok = gather_block<1>(id, n, planes, bound, bytes); break;
          case 2: ok = gather_block<2>(id, n, planes, bound, bytes); break;
          case 3: ok = gather_block<3>(id, n, planes, bound, bytes); break;
          default: ok = gather_block<4>(id, n, planes, bound, bytes); break;
        }
        for (int p = 0; p < P && ok; ++p) {
          const int64_t g = g0 + p;
          const int nq = static_cast<int>(std::min<int64_t>(8, B - 8 * g));
          uint64_t* outs[8];
          for (int q = 0; q < nq; ++q) outs[q] = out_p + (8 * g + q) * W;
          if (avx512) {
            words_avx512(bytes[p], nq, outs, w);
          } else {
            words_avx2(bytes[p], nq, outs, w);
          }
        }
      }
      if (!ok) bad.store(true);
    });
  }
  if (bad.load()) {
    for (int64_t r = 0; r < R; ++r) {
      TORCH_CHECK_VALUE(ids[r] >= 0 && ids[r] < bound, "pack_id_mask: row_to_id[", r, "] = ", ids[r],
                        " is outside the mask's ids [0, ", bound, ")");
    }
  }
  return out;
}

}  // namespace pack_id_mask_impl
}  // namespace silverrec
