// A filter plan as a program over the bit-sliced Bloom index, run on a range of mask words:
// decoding and validation (decode) and the stack machine (run_block), shared by bloom_search
// (bloom_search.cpp: all rows, or the rows of given probes) and ivf_search_bloom (ivf_ops.cpp:
// the words of each cluster its probe choice walks, ivf_bloom_mask.h). Spec:
// silverrec/ops/reference/filter.py, bloom_search_reference.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace silverrec {
namespace {  // included by bloom_search.cpp and ivf_ops.cpp: one copy per translation unit

// Opcodes: keep in sync with BLOOM_* in silverrec/ops/reference/filter.py.
constexpr int64_t kNop = 0, kTerm = 1, kNotTerm = 2, kAnd = 3, kOr = 4, kFalse = 5, kTrue = 6, kNotRows = 7;
constexpr int64_t kBlockWords = 64;   // mask words per stack slot

struct Instr {
  int64_t op;
  int64_t first_row;  // TERM: index of its first row pointer in Program::rows
  int64_t num_rows;   // TERM: number of hash rows
  const int32_t* post_begin;  // NOT_TERM: the term's ascending posting list (int32 rows)
  const int32_t* post_end;
};

struct Program {
  std::vector<Instr> code;
  std::vector<const uint64_t*> rows;  // bit rows (each W words) of TERM / NOT_ROWS instructions
  int64_t max_depth = 0;
};

// Whether p passes every row whatever the index holds: the blank filter (one TRUE). ivf_search_bloom
// gives such a query no mask at all (the unfiltered scan).
inline bool passes_all(const Program& p) { return p.code.size() == 1 && p.code[0].op == kTrue; }

inline void fill(uint64_t* dst, int64_t n, uint64_t value) { std::fill(dst, dst + n, value); }

// dst[i] = AND over k of rows[k][w0 + i], i < n (all ones when there are no rows), inverted
// when `invert` (NOT_ROWS).
inline void and_rows(uint64_t* dst, const uint64_t* const* rows, int64_t num_rows, int64_t w0, int64_t n, bool invert) {
  const uint64_t flip = invert ? ~uint64_t{0} : 0;
  if (num_rows == 0) {
    fill(dst, n, ~flip);
    return;
  }
  const __m256i flip_v = _mm256_set1_epi64x(static_cast<long long>(flip));
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[0] + w0 + i));
    for (int64_t k = 1; k < num_rows; ++k) {
      acc = _mm256_and_si256(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[k] + w0 + i)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_xor_si256(acc, flip_v));
  }
  for (; i < n; ++i) {
    uint64_t acc = rows[0][w0 + i];
    for (int64_t k = 1; k < num_rows; ++k) acc &= rows[k][w0 + i];
    dst[i] = acc ^ flip;
  }
}

// a[i] = a[i] & b[i] (is_and) or a[i] | b[i], i < n.
inline void combine(uint64_t* a, const uint64_t* b, int64_t n, bool is_and) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + i), is_and ? _mm256_and_si256(x, y) : _mm256_or_si256(x, y));
  }
  for (; i < n; ++i) a[i] = is_and ? (a[i] & b[i]) : (a[i] | b[i]);
}

// The AVX-512 twins of and_rows and combine: 8 words per register, the tail (n % 8 words) by
// masked loads and stores (a masked-off lane is neither read nor written).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __mmask8 tail_mask(int64_t left) {
  return left >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << left) - 1);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void and_rows_avx512(uint64_t* dst, const uint64_t* const* rows,
                                                                           int64_t num_rows, int64_t w0, int64_t n,
                                                                           bool invert) {
  const uint64_t flip = invert ? ~uint64_t{0} : 0;
  if (num_rows == 0) {
    fill(dst, n, ~flip);
    return;
  }
  const __m512i flip_v = _mm512_set1_epi64(static_cast<long long>(flip));
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 m = tail_mask(n - i);
    __m512i acc = _mm512_maskz_loadu_epi64(m, rows[0] + w0 + i);
    int64_t k = 1;
    for (; k + 2 <= num_rows; k += 2) {  // acc & x & y in one ternary-logic instruction
      acc = _mm512_ternarylogic_epi64(acc, _mm512_maskz_loadu_epi64(m, rows[k] + w0 + i),
                                      _mm512_maskz_loadu_epi64(m, rows[k + 1] + w0 + i), 0x80);
    }
    if (k < num_rows) acc = _mm512_and_si512(acc, _mm512_maskz_loadu_epi64(m, rows[k] + w0 + i));
    _mm512_mask_storeu_epi64(dst + i, m, _mm512_xor_si512(acc, flip_v));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void combine_avx512(uint64_t* a, const uint64_t* b, int64_t n,
                                                                          bool is_and) {
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 m = tail_mask(n - i);
    const __m512i x = _mm512_maskz_loadu_epi64(m, a + i), y = _mm512_maskz_loadu_epi64(m, b + i);
    _mm512_mask_storeu_epi64(a + i, m, is_and ? _mm512_and_si512(x, y) : _mm512_or_si512(x, y));
  }
}

// Bits of word w that fall in rows [start, end).
inline uint64_t range_bits(int64_t w, int64_t start, int64_t end) {
  const int64_t lo = std::max<int64_t>(start - 64 * w, 0);
  const int64_t hi = std::min<int64_t>(end - 64 * w, 64);
  if (hi <= lo) return 0;
  const uint64_t upto_hi = hi == 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1;
  return upto_hi & ~((uint64_t{1} << lo) - 1);
}

// Decodes and validates plan b (serially, before the parallel region).
Program decode(int64_t b, const int64_t* ops, const int64_t* terms, const int64_t* hashes, int64_t L, int64_t H,
               const uint64_t* bits, int64_t M, int64_t W, const int64_t* post_off, const int32_t* post_rows,
               int64_t T, int64_t nnz) {
  Program p;
  int64_t depth = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t op = ops[b * L + l];
    TORCH_CHECK_VALUE(op >= kNop && op <= kNotRows, "bloom_search: plan ", b, " instruction ", l, ": unknown opcode ",
                      op);
    if (op == kNop) continue;
    Instr ins{op, 0, 0, nullptr, nullptr};
    if (op == kTerm || op == kNotRows) {
      ins.first_row = static_cast<int64_t>(p.rows.size());
      ins.num_rows = H;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t pos = hashes[(b * L + l) * H + h];
        TORCH_CHECK_VALUE(pos >= 0 && pos < M, "bloom_search: plan ", b, " instruction ", l, ": hash position ", pos,
                          " outside [0, ", M, ")");
        p.rows.push_back(bits + pos * W);
      }
    } else if (op == kNotTerm) {
      const int64_t t = terms[b * L + l];
      TORCH_CHECK_VALUE(t >= 0 && t < T, "bloom_search: plan ", b, " instruction ", l, ": term ", t, " outside [0, ", T,
                        ")");
      const int64_t s = post_off[t], e = post_off[t + 1];
      TORCH_CHECK_VALUE(0 <= s && s <= e && e <= nnz, "bloom_search: posting_offsets of term ", t, " = [", s, ", ", e,
                        ") outside [0, ", nnz, "]");
      ins.post_begin = post_rows + s;
      ins.post_end = post_rows + e;
    } else if (op == kAnd || op == kOr) {
      TORCH_CHECK_VALUE(depth >= 2, "bloom_search: plan ", b, " instruction ", l, ": AND/OR needs two operands");
      depth -= 2;
    }
    depth += 1;
    p.max_depth = std::max(p.max_depth, depth);
    p.code.push_back(ins);
  }
  TORCH_CHECK_VALUE(depth == 1, "bloom_search: plan ", b, " leaves ", depth, " values on the stack, expected 1");
  return p;
}

// Runs program p over words [w0, w0 + n) (n <= kBlockWords); the result is left in stack[0:n].
// `avx512`: the AVX-512 word loops, else AVX2.
void run_block(const Program& p, int64_t w0, int64_t n, uint64_t* stack, bool avx512) {
  int64_t sp = 0;
  for (const Instr& ins : p.code) {
    uint64_t* top = stack + sp * kBlockWords;
    switch (ins.op) {
      case kTerm:
      case kNotRows:
        if (avx512) {
          and_rows_avx512(top, p.rows.data() + ins.first_row, ins.num_rows, w0, n, ins.op == kNotRows);
        } else {
          and_rows(top, p.rows.data() + ins.first_row, ins.num_rows, w0, n, ins.op == kNotRows);
        }
        ++sp;
        break;
      case kNotTerm: {
        fill(top, n, ~uint64_t{0});
        const int64_t row0 = 64 * w0, row1 = 64 * (w0 + n);
        for (const int32_t* it = std::lower_bound(ins.post_begin, ins.post_end, row0); it != ins.post_end && *it < row1;
             ++it) {
          const int64_t r = *it - row0;
          top[r >> 6] &= ~(uint64_t{1} << (r & 63));
        }
        ++sp;
        break;
      }
      case kAnd:
      case kOr:
        if (avx512) {
          combine_avx512(top - 2 * kBlockWords, top - kBlockWords, n, ins.op == kAnd);
        } else {
          combine(top - 2 * kBlockWords, top - kBlockWords, n, ins.op == kAnd);
        }
        --sp;
        break;
      default:  // kFalse, kTrue
        fill(top, n, ins.op == kTrue ? ~uint64_t{0} : uint64_t{0});
        ++sp;
    }
  }
}

}  // namespace
}  // namespace silverrec
