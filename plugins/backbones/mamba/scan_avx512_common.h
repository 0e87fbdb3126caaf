// Internal to the AVX-512 build of the fused scan (scan_avx512.cpp: forward, scan_avx512_backward.cpp:
// backward; the layout and the math are described in scan_kernels.h and selective_scan.h): its
// vector math, in-register transposes and reductions, and loads and stores of float32 or bfloat16.
// Every function carries the AVX-512 target attribute and no LibTorch header is included, so no
// AVX-512 instruction leaks into code shared with the other builds; the kernels run only after
// cpu_has_avx512().
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "scan_kernels.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define MHD_SCAN_HAVE_AVX512 1
#include <immintrin.h>
#else
#define MHD_SCAN_HAVE_AVX512 0
#endif

namespace mhd::mamba::kernels {

#if MHD_SCAN_HAVE_AVX512

#define MHD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define MHD_AVX512_INLINE MHD_AVX512 inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------
// Vector math
// ---------------------------------------------------------------------------------------------

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// 2^t for t in [-126, inf): f = t - floor(t) in [0, 1) (one vreduceps), 2^f by a degree-5 minimax
// polynomial (relative error 7.5e-8 on [0, 1], Remez), then vscalefps multiplies by 2^floor(t).
// Below -126 the result is 2^-126 (the smallest normal float, 1.2e-38), so the scan never produces
// subnormals; NaN propagates (vmaxps returns its second operand when either is NaN).
MHD_AVX512_INLINE __m512 v_exp2(__m512 t) {
  t = _mm512_max_ps(_mm512_set1_ps(-126.0f), t);
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(1.8775766734e-03f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.9893400947e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5826318050e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015361705e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9315307320e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9999992506e-01f));
  return _mm512_scalef_ps(p, t);
}

// e^x, accurate to about 1 ulp (Cephes' expf: Cody-Waite reduction by k ln2 with k = round(x log2 e),
// then a polynomial on |r| <= ln2 / 2); clamped below at -87 (a normal result). Used per (b, t, d),
// not per state, for softplus.
MHD_AVX512_INLINE __m512 v_exp_accurate(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 er = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(er, k);
}

// log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: no cancellation for tiny e
// (s ~ e / 2), and the series 2 s sum_k s^2k / (2k + 1) to k = 6 truncates below 2e-8 relative.
MHD_AVX512_INLINE __m512 v_log1p_unit(__m512 e) {
  const __m512 s = _mm512_div_ps(e, _mm512_add_ps(e, _mm512_set1_ps(2.0f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 q = _mm512_set1_ps(2.0f / 13.0f);
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f / 11.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f / 9.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f / 7.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f / 5.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f / 3.0f));
  q = _mm512_fmadd_ps(q, s2, _mm512_set1_ps(2.0f));
  return _mm512_mul_ps(q, s);
}

// softplus(x) = max(x, 0) + log1p(e^-|x|), and x itself above PyTorch's threshold 20.
MHD_AVX512_INLINE __m512 v_softplus(__m512 x) {
  const __m512 abs_x = _mm512_abs_ps(x);
  const __m512 e = v_exp_accurate(_mm512_sub_ps(_mm512_setzero_ps(), abs_x));
  const __m512 sp = _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), v_log1p_unit(e));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ), sp, x);
}

// d softplus / dx = sigmoid(x) (1 above the threshold, like PyTorch's softplus_backward).
MHD_AVX512_INLINE __m512 v_softplus_grad(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = v_exp_accurate(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  const __m512 sig = _mm512_mask_blend_ps(pos, _mm512_mul_ps(e, inv), inv);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ), sig, one);
}

// Sums of 16 vectors' lanes: out[n] = sum_j v[n][j], by a butterfly of 256-bit, 128-bit and in-lane
// shuffles (45 instructions instead of 16 horizontal sums). The butterfly leaves the sum of input k
// at position 4 (k % 4) + k / 4, so the inputs are fed in that order.
MHD_AVX512_INLINE __m512 v_reduce16(const __m512* v) {
  __m512 s1[8], s2[4], s3[2];
  for (int i = 0; i < 8; ++i) {
    const int m = 2 * i;  // inputs m and m + 1, in the butterfly's order
    const __m512 a = v[(m % 4) * 4 + m / 4], b = v[((m + 1) % 4) * 4 + (m + 1) / 4];
    s1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512 a = s1[2 * i], b = s1[2 * i + 1];
    s2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  for (int i = 0; i < 2; ++i) {
    const __m512 a = s2[2 * i], b = s2[2 * i + 1];
    s3[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
}

// In-register transpose of 16 rows of 16 floats: r[i][j] <- r[j][i].
MHD_AVX512_INLINE void v_transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xDD);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
  }
}

// ---------------------------------------------------------------------------------------------
// Loads and stores of float32 or bfloat16 (as its 16 bits)
// ---------------------------------------------------------------------------------------------

template <typename TIn>
struct Io;

template <>
struct Io<float> {
  static MHD_AVX512_INLINE __m512 load(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
  static MHD_AVX512_INLINE float scalar(const float* p) { return *p; }
  static MHD_AVX512_INLINE void store(float* p, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(p, k, v); }
};

template <>
struct Io<std::uint16_t> {
  static MHD_AVX512_INLINE __m512 load(const std::uint16_t* p, __mmask16 k) {
    const __m256i raw = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  static MHD_AVX512_INLINE float scalar(const std::uint16_t* p) {
    const std::uint32_t bits = static_cast<std::uint32_t>(*p) << 16;
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  }
  // Round to nearest even, NaN kept quiet (as c10::BFloat16 does).
  static MHD_AVX512_INLINE void store(std::uint16_t* p, __m512 v, __mmask16 k) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                              _mm512_or_si512(x, _mm512_set1_epi32(0x00400000)));
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
};

MHD_AVX512_INLINE __mmask16 lane_mask(std::int64_t width) {
  return width >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << width) - 1u);
}

// out[i] = x[b, t0 + i, d0 .. d0 + 15] for i < tl, lanes past `width` zero. The three layouts:
// channel-contiguous (one masked load per position), time-contiguous (16 rows of 16 positions,
// transposed in registers), anything else (a scalar gather).
template <typename TIn>
MHD_AVX512_INLINE void load_tile(const Strided& s, std::int64_t b, std::int64_t t0, std::int64_t tl, std::int64_t d0,
                                 std::int64_t width, __m512* out) {
  const TIn* base = static_cast<const TIn*>(s.data) + b * s.sb + t0 * s.st + d0 * s.sd;
  if (s.sd == 1) {
    const __mmask16 k = lane_mask(width);
    for (std::int64_t i = 0; i < tl; ++i) out[i] = Io<TIn>::load(base + i * s.st, k);
  } else if (s.st == 1) {
    const __mmask16 kt = lane_mask(tl);
    __m512 r[16];
    for (std::int64_t j = 0; j < 16; ++j)
      r[j] = j < width ? Io<TIn>::load(base + j * s.sd, kt) : _mm512_setzero_ps();
    v_transpose16(r);
    for (std::int64_t i = 0; i < tl; ++i) out[i] = r[i];
  } else {
    alignas(64) float tmp[16];
    for (std::int64_t i = 0; i < tl; ++i) {
      for (std::int64_t j = 0; j < 16; ++j) tmp[j] = j < width ? Io<TIn>::scalar(base + i * s.st + j * s.sd) : 0.0f;
      out[i] = _mm512_load_ps(tmp);
    }
  }
}

// v[n][j] = src[(d0 + j) * N + n] (lanes past width zero), optionally scaled: the block's [16, N]
// rows, 16 states at a time, transposed in registers (a per-element gather would cost more than a
// short scan itself: the recurrent step is a scan of length 1).
MHD_AVX512_INLINE void gather_block(const float* src, std::int64_t d0, std::int64_t width, std::int64_t nstate,
                                    float scale, __m512* v) {
  const __m512 s = _mm512_set1_ps(scale);
  for (std::int64_t n0 = 0; n0 < nstate; n0 += 16) {
    const std::int64_t count = std::min<std::int64_t>(16, nstate - n0);
    const __mmask16 kn = lane_mask(count);
    __m512 r[16];
#pragma GCC unroll 16
    for (std::int64_t j = 0; j < 16; ++j)
      r[j] = j < width ? _mm512_maskz_loadu_ps(kn, src + (d0 + j) * nstate + n0) : _mm512_setzero_ps();
    v_transpose16(r);
#pragma GCC unroll 16
    for (std::int64_t i = 0; i < 16; ++i)
      if (i < count) v[n0 + i] = _mm512_mul_ps(r[i], s);
  }
}

// dst[(d0 + j) * N + n] = v[n][j] for j < width.
MHD_AVX512_INLINE void scatter_block(const __m512* v, std::int64_t d0, std::int64_t width, std::int64_t nstate,
                                     float* dst) {
  for (std::int64_t n0 = 0; n0 < nstate; n0 += 16) {
    const std::int64_t count = std::min<std::int64_t>(16, nstate - n0);
    const __mmask16 kn = lane_mask(count);
    __m512 r[16];
#pragma GCC unroll 16
    for (std::int64_t i = 0; i < 16; ++i) r[i] = i < count ? v[n0 + i] : _mm512_setzero_ps();
    v_transpose16(r);
#pragma GCC unroll 16
    for (std::int64_t j = 0; j < 16; ++j)
      if (j < width) _mm512_mask_storeu_ps(dst + (d0 + j) * nstate + n0, kn, r[j]);
  }
}

// Per-thread scratch of at least `floats` floats, 64-byte aligned, kept between calls (a scan runs
// once per layer per DEQ iteration; allocating and faulting in megabytes each time would cost more
// than small scans take). Shared by the forward and the backward (scan_avx512.cpp).
float* scratch(std::size_t floats);

// B or C of batch row b as float32 rows of N: the tensor itself when it is float32, otherwise
// widened into `space` ([L, N]).
template <typename TIn>
const float* rows_as_float(const void* data, std::int64_t sb, std::int64_t st, std::int64_t b, std::int64_t len,
                           std::int64_t nstate, float* space, std::int64_t* row_stride);

template <>
MHD_AVX512_INLINE const float* rows_as_float<float>(const void* data, std::int64_t sb, std::int64_t st, std::int64_t b,
                                             std::int64_t, std::int64_t, float*, std::int64_t* row_stride) {
  *row_stride = st;
  return static_cast<const float*>(data) + b * sb;
}

template <>
MHD_AVX512_INLINE const float* rows_as_float<std::uint16_t>(const void* data, std::int64_t sb, std::int64_t st,
                                                     std::int64_t b, std::int64_t len, std::int64_t nstate,
                                                     float* space, std::int64_t* row_stride) {
  const auto* src = static_cast<const std::uint16_t*>(data) + b * sb;
  for (std::int64_t t = 0; t < len; ++t) {
    for (std::int64_t n = 0; n < nstate; n += 16) {
      const __mmask16 k = lane_mask(nstate - n);
      _mm512_mask_storeu_ps(space + t * nstate + n, k, Io<std::uint16_t>::load(src + t * st + n, k));
    }
  }
  *row_stride = nstate;
  return space;
}
#endif  // MHD_SCAN_HAVE_AVX512

}  // namespace mhd::mamba::kernels
