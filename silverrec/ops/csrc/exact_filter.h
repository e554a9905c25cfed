// CPU kernel of torch.ops.silverrec.exact_filter (spec: silverrec/ops/reference/filter.py,
// exact_filter_reference): B postfix filter programs run exactly on M candidates each, from the
// candidates' term ids. Included by bloom_search.cpp (one translation unit for the filter ops).
//
// Each candidate's stack of booleans is the bits of one uint64 (push: shift left and set bit 0;
// AND / OR: combine bits 0 and 1 and shift right), so a program of L instructions costs L
// register operations per candidate plus, for each term instruction, a scan of the candidate's W
// term ids (W is a few tens). A program is checked once per query: it must never pop an empty
// stack nor hold more than 63 values (compile_plans makes such programs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>

namespace silverrec {
namespace exact_filter_impl {

// Opcodes: keep in sync with BLOOM_* in silverrec/ops/reference/filter.py.
constexpr int64_t kNop = 0, kTerm = 1, kNotTerm = 2, kAnd = 3, kOr = 4, kFalse = 5, kTrue = 6, kNotRows = 7;

inline at::Tensor exact_filter_cpu(const at::Tensor& opcodes_in, const at::Tensor& terms_in, const at::Tensor& held_in) {
  TORCH_CHECK(opcodes_in.scalar_type() == at::kLong && opcodes_in.dim() == 2,
              "exact_filter: opcodes must be int64 [B, L], got ", opcodes_in.scalar_type(), " ", opcodes_in.sizes());
  const int64_t B = opcodes_in.size(0), L = opcodes_in.size(1);
  TORCH_CHECK(terms_in.scalar_type() == at::kLong && terms_in.sizes() == opcodes_in.sizes(),
              "exact_filter: terms must be int64 [B, L]=", opcodes_in.sizes(), ", got ", terms_in.scalar_type(), " ",
              terms_in.sizes());
  TORCH_CHECK(held_in.scalar_type() == at::kLong && held_in.dim() == 3 && held_in.size(0) == B,
              "exact_filter: held must be int64 [B=", B, ", M, W], got ", held_in.scalar_type(), " ", held_in.sizes());
  const at::Tensor opcodes = opcodes_in.contiguous(), terms = terms_in.contiguous(), held = held_in.contiguous();
  const int64_t M = held.size(1), W = held.size(2);
  const int64_t* op = opcodes.data_ptr<int64_t>();
  const int64_t* tm = terms.data_ptr<int64_t>();
  const int64_t* hd = held.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {  // well-formed programs only (one pass over B x L opcodes)
    int64_t depth = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t o = op[b * L + l];
      TORCH_CHECK(o >= kNop && o <= kNotRows, "exact_filter: unknown opcode ", o, " at [", b, ", ", l, "]");
      if (o == kAnd || o == kOr) {
        TORCH_CHECK(depth >= 2, "exact_filter: program ", b, " pops an empty stack at instruction ", l);
        --depth;
      } else if (o != kNop) {
        TORCH_CHECK(++depth <= 63, "exact_filter: program ", b, " holds more than 63 values");
      }
    }
  }
  at::Tensor out = at::empty({B, M}, held.options().dtype(at::kBool));
  bool* po = out.data_ptr<bool>();
  // about L * W comparisons per candidate: parallel over candidates only when there are many
  at::parallel_for(0, B * M, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, L * W)),
                   [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / M;
      const int64_t* row = hd + i * W;
      const int64_t* ob = op + b * L;
      const int64_t* tb = tm + b * L;
      uint64_t stack = 0;
      int64_t depth = 0;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t o = ob[l];
        if (o == kNop) continue;
        if (o == kAnd || o == kOr) {
          const uint64_t x = (stack >> 1) & 1, y = stack & 1;
          stack = ((stack >> 2) << 1) | (o == kAnd ? (x & y) : (x | y));
          --depth;
          continue;
        }
        uint64_t bit;
        if (o == kTrue || o == kFalse) {
          bit = o == kTrue;
        } else {
          const int64_t t = tb[l];
          bool has = false;
          for (int64_t w = 0; w < W; ++w) has |= row[w] == t;
          bit = (has && t >= 0) != (o != kTerm);  // NOT_TERM, NOT_ROWS: the negation
        }
        stack = (stack << 1) | bit;
        ++depth;
      }
      po[i] = depth > 0 && ((stack >> (depth - 1)) & 1);  // the bottom of the stack
    }
  });
  return out;
}

}  // namespace exact_filter_impl
}  // namespace silverrec
