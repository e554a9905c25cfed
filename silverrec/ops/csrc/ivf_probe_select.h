// Probe choice of one query (ivf_select_probes / ivf_search; spec:
// ivf_select_probes_reference): clusters in centroid-score order until n_probe are taken and
// min_rows passing rows are covered, at most `limit`. best_keys finds the best centroids
// without sorting all C; ProbeSelect walks them.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "ivf_common.h"
#include "ivf_id_mask.h"

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// Set bits of the packed mask row `mb` within rows [lo, hi).
inline int64_t count_bits(const uint64_t* mb, int64_t lo, int64_t hi) {
  if (lo >= hi) return 0;
  const int64_t w0 = lo >> 6, w1 = (hi - 1) >> 6;
  int64_t n = 0;
  for (int64_t w = w0; w <= w1; ++w) n += __builtin_popcountll(mb[w] & word_bits_within(w, lo, hi));
  return n;
}

// The rank keys of all C clusters, best first: a stable LSD radix sort (3 passes of 11 bits) of
// the ids, entered in ascending order, by the 32-bit score key inverted (so ties keep the lower
// id first). No comparisons, so no branch misses: ~C per pass. Small C uses std::sort.
void all_keys_sorted(const float* scores, int64_t C, std::vector<int64_t>& buf, std::vector<int64_t>& out) {
  out.resize(C);
  if (C < 256) {
    for (int64_t c = 0; c < C; ++c) out[c] = rank_key(scores[c], c);
    std::sort(out.begin(), out.end(), std::greater<int64_t>());
    return;
  }
  buf.resize(C);
  // rank_key's high word plus 2**31 is monotone in the score; ~ makes smaller = better
  auto digit_key = [&](int64_t key) { return ~(static_cast<uint32_t>(key >> 32) ^ 0x80000000u); };
  for (int64_t c = 0; c < C; ++c) buf[c] = rank_key(scores[c], c);
  int64_t* src = buf.data();
  int64_t* dst = out.data();
  for (int shift = 0; shift < 32; shift += 11) {
    int64_t hist[2049] = {0};
    for (int64_t i = 0; i < C; ++i) ++hist[((digit_key(src[i]) >> shift) & 2047) + 1];
    for (int d = 0; d < 2048; ++d) hist[d + 1] += hist[d];
    for (int64_t i = 0; i < C; ++i) dst[hist[(digit_key(src[i]) >> shift) & 2047]++] = src[i];
    std::swap(src, dst);
  }
  if (src != out.data()) std::copy(src, src + C, out.data());  // 3 passes: the result is in buf
}

// The rank keys of the best m of the C scores, sorted best first, into out. With C >= 64 m, a
// lower bound t of the m-th best score comes first: the m-th largest of the maxima of blocks of
// 32 scores (m blocks reach t, so m scores do). Only scores >= t (a small multiple of m) become
// keys. About C/4 vector operations plus a selection over C/32 block maxima. With C >= 8 m the
// same runs on blocks of 8 scores; with C >= 4 m all C keys are made and the best m selected
// (nth_element). Otherwise all C keys are sorted (all_keys_sorted) and out holds all of them.
// (The radix sort's three 2048-bucket passes cost ~7 us per query at C = 894.)
void best_keys(const float* scores, int64_t C, int64_t m, std::vector<float>& block_max, std::vector<int64_t>& buf,
               std::vector<int64_t>& out) {
#ifdef __AVX2__
  // blocks of 32 scores for large C; blocks of 8 for mid-sized C (e.g. 894 clusters, m = 32)
  const int64_t w = C >= 64 * m ? 32 : (C >= 8 * m ? 8 : 0);
  if (w > 0) {
    buf.clear();
    const int64_t nb = C / w;
    block_max.resize(nb);
    for (int64_t i = 0; i < nb; ++i) {
      const float* p = scores + w * i;
      const __m256 x = w == 8 ? _mm256_loadu_ps(p)
                              : _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                                              _mm256_max_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24)));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
      block_max[i] = _mm_cvtss_f32(h);
    }
    std::nth_element(block_max.begin(), block_max.begin() + (m - 1), block_max.end(), std::greater<float>());
    const __m256 t = _mm256_set1_ps(block_max[m - 1]);
    int64_t c = 0;
    for (; c < w * nb; c += 8) {
      int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scores + c), t, _CMP_GE_OQ));
      while (bits) {
        const int64_t j = c + __builtin_ctz(bits);
        buf.push_back(rank_key(scores[j], j));
        bits &= bits - 1;
      }
    }
    for (; c < C; ++c) buf.push_back(rank_key(scores[c], c));
    const int64_t kept = std::min<int64_t>(m, buf.size());
    if (kept < static_cast<int64_t>(buf.size())) {
      std::nth_element(buf.begin(), buf.begin() + (kept - 1), buf.end(), std::greater<int64_t>());
    }
    std::sort(buf.begin(), buf.begin() + kept, std::greater<int64_t>());
    out.assign(buf.begin(), buf.begin() + kept);
    return;
  }
#endif
  if (C >= 4 * m) {  // mid-sized C (e.g. 894 clusters, m = 32): select the best m keys, sort only them
    buf.resize(C);
    for (int64_t c = 0; c < C; ++c) buf[c] = rank_key(scores[c], c);
    std::nth_element(buf.begin(), buf.begin() + (m - 1), buf.end(), std::greater<int64_t>());
    std::sort(buf.begin(), buf.begin() + m, std::greater<int64_t>());
    out.assign(buf.begin(), buf.begin() + m);
    return;
  }
  all_keys_sorted(scores, C, buf, out);
}

// The probe choice of one query (ivf_select_probes_reference; a thread's scratch, reused across
// its queries): clusters in centroid order while j < n_probe or fewer than min_rows passing rows
// are covered (cover.target: min_rows, or a count from the pass fraction of the first n_probe
// clusters), j < limit. Writes the cluster ids to out and returns how many. With an id-order
// mask (`lazy`, query q), each cluster's words are packed as the walk reaches it.
struct ProbeSelect {
  int64_t run(const float* sb, int64_t C, const int64_t* off, const uint64_t* mb, int64_t n_probe,
              const Coverage& cover, int64_t limit, int64_t* out, LazyRowMask* lazy = nullptr, int64_t q = 0,
              int64_t* covered_out = nullptr) {
    best_keys(sb, C, std::min(limit, std::max<int64_t>(n_probe, 32)), block_max, buf, order);
    int64_t covered = 0, walked = 0, j = 0;
    double target = static_cast<double>(cover.min_rows);
    while (j < limit) {
      if (j == n_probe) target = cover.target(covered, walked);
      if (j >= n_probe && static_cast<double>(covered) >= target) break;  // before the fallback: m == n_probe is common
      if (j == static_cast<int64_t>(order.size())) {
        // the candidates ran out (a filter, or small clusters among the best n_probe): as many
        // as the walk so far says it needs, with a quarter to spare (at least twice as many; all
        // of them, sorted, when nothing has passed yet or that is near C). Same total order, so
        // the new list's prefix is what was taken.
        const double need = 1.25 * static_cast<double>(j) * target / std::max<int64_t>(covered, 1);
        best_keys(sb, C, std::min<int64_t>(C, std::max<int64_t>(2 * j, static_cast<int64_t>(std::min<double>(need, C)))),
                  block_max, buf, order);
      }
      const int64_t c = key_id(order[j]);
      out[j] = c;
      if (lazy != nullptr) {
        if (j + 1 < std::min<int64_t>(limit, order.size())) lazy->prefetch(q, key_id(order[j + 1]));
        lazy->ensure(q, c);
      }
      covered += mb == nullptr ? off[c + 1] - off[c] : count_bits(mb, off[c], off[c + 1]);
      walked += off[c + 1] - off[c];
      ++j;
    }
    if (covered_out != nullptr) *covered_out = covered;
    return j;
  }
  std::vector<int64_t> buf, order;
  std::vector<float> block_max;
};

}  // namespace
}  // namespace silverrec
