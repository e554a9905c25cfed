// Run-time choice of the CPU code path of the kernels (the way FAISS and torch dispatch).
//
// The extension is compiled for AVX2 + FMA (the baseline every supported x86 CPU has). Kernels
// that have a faster AVX-512 path (int8 dot products with VNNI's vpdpbusd, 512-bit Bloom words)
// compile it with __attribute__((target(...))) and call it when active_isa() says so: when the
// CPU has AVX-512 F, BW, VL and VNNI. The environment variable SILVERREC_CPU_ISA forces a path:
// "avx2" (so the tests run both paths on one machine, bit for bit against the reference) or
// "avx512_vnni"; any other value, or "avx512_vnni" on a CPU without it, makes importing
// silverrec._C fail with a message (module.cpp). The choice is read once per process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace silverrec {

enum class Isa { kAvx2 = 0, kAvx512Vnni = 1 };

inline bool cpu_has_avx512_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// AVX-512 BF16 (vdpbf16ps), which ivf_probe_scores uses on the AVX-512 path where the CPU has it
// (Zen 4 and Sapphire Rapids do; Ice Lake has AVX-512 VNNI without it).
inline bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

// The name of a path, as SILVERREC_CPU_ISA spells it.
inline const char* isa_name(Isa isa) { return isa == Isa::kAvx512Vnni ? "avx512_vnni" : "avx2"; }

// The path SILVERREC_CPU_ISA asks for (module.cpp has already refused bad values), else the
// best one this CPU has.
inline Isa detect_isa() {
  const char* forced = std::getenv("SILVERREC_CPU_ISA");
  if (forced != nullptr && forced[0] != '\0') {
    return std::strcmp(forced, "avx2") == 0 ? Isa::kAvx2 : Isa::kAvx512Vnni;
  }
  return cpu_has_avx512_vnni() ? Isa::kAvx512Vnni : Isa::kAvx2;
}

// The path every kernel of this process takes (decided once).
inline Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace silverrec
