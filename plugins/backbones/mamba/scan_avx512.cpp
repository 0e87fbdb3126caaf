// The AVX-512 build of the fused selective scan; the layout and the math are described in
// scan_kernels.h and selective_scan.h. Every function here carries the AVX-512 target attribute and
// this file includes no LibTorch header, so no AVX-512 instruction leaks into code shared with the
// other builds; selective_scan.cpp calls in only after cpu_has_avx512().
#include "scan_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#define MHD_SCAN_HAVE_AVX512 1
#include <immintrin.h>
#else
#define MHD_SCAN_HAVE_AVX512 0
#endif

namespace mhd::mamba::kernels {

#if MHD_SCAN_HAVE_AVX512

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return has;
}

#define MHD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define MHD_AVX512_INLINE MHD_AVX512 inline __attribute__((always_inline))

namespace {

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

// ---------------------------------------------------------------------------------------------
// Per-thread scratch, kept between calls (a scan runs once per layer per DEQ iteration; allocating
// and faulting in megabytes each time would cost more than small scans take).
// ---------------------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

float* scratch(std::size_t floats) {
  thread_local std::unique_ptr<float, FreeDeleter> buffer;
  thread_local std::size_t capacity = 0;
  if (floats > capacity) {
    const std::size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    buffer.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!buffer) throw std::bad_alloc();
    capacity = bytes / sizeof(float);
  }
  return buffer.get();
}

// B or C of batch row b as float32 rows of N: the tensor itself when it is float32, otherwise
// widened into `space` ([L, N]).
template <typename TIn>
const float* rows_as_float(const void* data, std::int64_t sb, std::int64_t st, std::int64_t b, std::int64_t len,
                           std::int64_t nstate, float* space, std::int64_t* row_stride);

template <>
MHD_AVX512 const float* rows_as_float<float>(const void* data, std::int64_t sb, std::int64_t st, std::int64_t b,
                                             std::int64_t, std::int64_t, float*, std::int64_t* row_stride) {
  *row_stride = st;
  return static_cast<const float*>(data) + b * sb;
}

template <>
MHD_AVX512 const float* rows_as_float<std::uint16_t>(const void* data, std::int64_t sb, std::int64_t st,
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

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Positions [t_begin, t_end) of one channel block: the recurrence with the states h [N] (in and
// out, in memory between chunks) and A2 [N] = A[:, n] log2 e (exp(dt A) = 2^(dt A2)). NS = N when
// known at compile time (the states then live in registers for the chunk), 0 for any N.
template <int NS, typename TIn>
MHD_AVX512 void forward_block_chunk(const Job& j, const ForwardOut& out, std::int64_t b, std::int64_t d0,
                                    std::int64_t t_begin, std::int64_t t_end, __m512* h_mem, const __m512* A2,
                                    const float* Bb, std::int64_t B_st, const float* Cb, std::int64_t C_st) {
  const std::int64_t nstate = NS > 0 ? NS : j.nstate, len = j.len, dim = j.dim;
  const std::int64_t width = std::min<std::int64_t>(kLanes, dim - d0);
  const __mmask16 k = lane_mask(width);
  __m512 h_fixed[NS > 0 ? NS : 1];
  __m512* h = NS > 0 ? h_fixed : h_mem;
  if (NS > 0) {
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) h[n] = h_mem[n];
  }
  const __m512 Dv = j.D ? _mm512_maskz_loadu_ps(k, j.D + d0) : _mm512_setzero_ps();
  const __m512 bias = j.delta_bias ? _mm512_maskz_loadu_ps(k, j.delta_bias + d0) : _mm512_setzero_ps();
  TIn* y = static_cast<TIn*>(out.y) + b * len * dim + d0;

  __m512 dts[16], us[16];
  for (std::int64_t t0 = t_begin; t0 < t_end; t0 += 16) {
    const std::int64_t tl = std::min<std::int64_t>(16, t_end - t0);
    load_tile<TIn>(j.delta, b, t0, tl, d0, width, dts);
    load_tile<TIn>(j.u, b, t0, tl, d0, width, us);
    for (std::int64_t i = 0; i < tl; ++i) {
      __m512 x = _mm512_add_ps(dts[i], bias);
      if (j.softplus) x = v_softplus(x);
      dts[i] = _mm512_maskz_mov_ps(k, x);  // padding lanes: dt = 0, so they stay 0
    }
    for (std::int64_t i = 0; i < tl; ++i) {
      const std::int64_t t = t0 + i;
      const __m512 dt = dts[i], u = us[i], dtu = _mm512_mul_ps(dt, u);
      const float* Bt = Bb + t * B_st;
      const float* Ct = Cb + t * C_st;
      // Four partial sums of y, so the n-loop is not one chain of dependent FMAs.
      __m512 y0 = _mm512_setzero_ps(), y1 = y0, y2 = y0, y3 = y0;
      std::int64_t n = 0;
#pragma GCC unroll 4
      for (; n + 4 <= nstate; n += 4) {
        __m512 hn;
        hn = _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, A2[n])), h[n], _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n])));
        h[n] = hn;
        y0 = _mm512_fmadd_ps(hn, _mm512_set1_ps(Ct[n]), y0);
        hn = _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, A2[n + 1])), h[n + 1],
                             _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n + 1])));
        h[n + 1] = hn;
        y1 = _mm512_fmadd_ps(hn, _mm512_set1_ps(Ct[n + 1]), y1);
        hn = _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, A2[n + 2])), h[n + 2],
                             _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n + 2])));
        h[n + 2] = hn;
        y2 = _mm512_fmadd_ps(hn, _mm512_set1_ps(Ct[n + 2]), y2);
        hn = _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, A2[n + 3])), h[n + 3],
                             _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n + 3])));
        h[n + 3] = hn;
        y3 = _mm512_fmadd_ps(hn, _mm512_set1_ps(Ct[n + 3]), y3);
      }
      for (; n < nstate; ++n) {
        const __m512 hn =
            _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, A2[n])), h[n], _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n])));
        h[n] = hn;
        y0 = _mm512_fmadd_ps(hn, _mm512_set1_ps(Ct[n]), y0);
      }
      const __m512 yt = _mm512_fmadd_ps(Dv, u, _mm512_add_ps(_mm512_add_ps(y0, y1), _mm512_add_ps(y2, y3)));
      Io<TIn>::store(y + t * dim, yt, k);
    }
  }
  if (NS > 0) {
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) h_mem[n] = h[n];
  }
}

// Positions per chunk: every block of a thread's range advances this far before the next chunk,
// so each chunk reads and writes whole row segments of the [B, L, D] buffers while they are in
// cache and in the TLB (one block walking all L rows of a column strip touches L / 2 pages of a
// 512-channel float32 tensor), and the blocks' states wait in a small buffer (N vectors each).
constexpr std::int64_t kChunk = 64;

template <int NS, typename TIn>
MHD_AVX512 void forward_batch_row(const Job& j, const ForwardOut& out, std::int64_t b, std::int64_t blk_begin,
                                  std::int64_t blk_end, float* space) {
  const std::int64_t nstate = j.nstate, len = j.len, dim = j.dim, nblk = blk_end - blk_begin;
  // space: states [nblk, N] and A2 [nblk, N] vectors, then B and C widened to float32 (bf16 inputs).
  __m512* hs = reinterpret_cast<__m512*>(space);
  __m512* A2s = hs + nblk * nstate;
  float* rows_space = reinterpret_cast<float*>(A2s + nblk * nstate);
  for (std::int64_t i = 0; i < nblk; ++i) {
    const std::int64_t d0 = (blk_begin + i) * kLanes, width = std::min<std::int64_t>(kLanes, dim - d0);
    gather_block(j.A, d0, width, nstate, kLog2e, A2s + i * nstate);
    if (j.h0) {
      gather_block(j.h0 + b * dim * nstate, d0, width, nstate, 1.0f, hs + i * nstate);
    } else {
      for (std::int64_t n = 0; n < nstate; ++n) hs[i * nstate + n] = _mm512_setzero_ps();
    }
  }
  std::int64_t B_st, C_st;
  const float* Bb = rows_as_float<TIn>(j.B, j.B_sb, j.B_st, b, len, nstate, rows_space, &B_st);
  const float* Cb = rows_as_float<TIn>(j.C, j.C_sb, j.C_st, b, len, nstate, rows_space + len * nstate, &C_st);
  for (std::int64_t t0 = 0; t0 < len; t0 += kChunk) {
    const std::int64_t t1 = std::min(len, t0 + kChunk);
    for (std::int64_t i = 0; i < nblk; ++i) {
      forward_block_chunk<NS, TIn>(j, out, b, (blk_begin + i) * kLanes, t0, t1, hs + i * nstate, A2s + i * nstate,
                                   Bb, B_st, Cb, C_st);
    }
  }
  for (std::int64_t i = 0; i < nblk; ++i) {
    const std::int64_t d0 = (blk_begin + i) * kLanes, width = std::min<std::int64_t>(kLanes, dim - d0);
    scatter_block(hs + i * nstate, d0, width, nstate, out.hL + b * dim * nstate);
  }
}

// Items [begin, end) of the B x blocks range, cut at batch rows.
template <typename TIn>
MHD_AVX512 void forward_range(const Job& j, const ForwardOut& out, std::int64_t begin, std::int64_t end) {
  const std::int64_t blocks = channel_blocks(j.dim);
  const std::int64_t most = std::min(end - begin, blocks);
  const std::size_t rows = std::is_same<TIn, float>::value ? 0 : static_cast<std::size_t>(2 * j.len * j.nstate);
  float* space = scratch(static_cast<std::size_t>(2 * most * j.nstate * kLanes) + rows + 16);
  for (std::int64_t item = begin; item < end;) {
    const std::int64_t b = item / blocks, blk_begin = item % blocks;
    const std::int64_t blk_end = std::min(blocks, blk_begin + (end - item));
    if (j.nstate == 16) {
      forward_batch_row<16, TIn>(j, out, b, blk_begin, blk_end, space);
    } else {
      forward_batch_row<0, TIn>(j, out, b, blk_begin, blk_end, space);
    }
    item += blk_end - blk_begin;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

// sums[n] += sum over lanes of v[n], n < N: 16 at a time through the butterfly, the rest one by one.
MHD_AVX512_INLINE void add_lane_sums(const __m512* v, std::int64_t nstate, float* sums) {
  std::int64_t n = 0;
  for (; n + 16 <= nstate; n += 16) {
    _mm512_storeu_ps(sums + n, _mm512_add_ps(_mm512_loadu_ps(sums + n), v_reduce16(v + n)));
  }
  for (; n < nstate; ++n) sums[n] += _mm512_reduce_add_ps(v[n]);
}

// The backward, like the forward, advances all channel blocks of a task together chunk by chunk, so
// the [B, L, D] tensors it reads (u, delta, dLoss/dy) and writes (du, d delta) are touched in whole
// rows while they are in cache and TLB; walking one block's column strip over all L positions at a
// time made it about twice as slow at d_inner = 512 as at 64 (per update). Pass 1 (forward in time)
// keeps each block's state at every chunk start and sums dC; pass 2 (backward in time) recomputes a
// chunk's states and decays into a small buffer, then runs the adjoint over it (see selective_scan.cpp's
// scan_channel_backward for the recurrence, here on 16 channels at once):
//   g = dLoss/dh_t (y_t's term gy_t C_t included)
//   dB_t += g delta_t u_t     dA += g delta_t a_t h_{t-1}     dLoss/dh_{t-1} = a_t g
//   du_t = delta_t <g, B_t> + D gy_t      d delta_t = <g, A a_t h_{t-1}> + u_t <g, B_t>
// (<., .> over n, per lane), then d delta_raw = d delta_t softplus'(x_t).
constexpr std::int64_t kBackwardChunk = 64;

// Per block, parked between chunks: A2, h, g, dA [N] vectors each, the checkpoints [chunks, N] (h
// before each chunk), and dD, d delta_bias, D, delta_bias.
struct BlockPark {
  __m512 *A2, *h, *g, *dA, *checkpoints, *misc;  // misc: dD, dbias, D, delta_bias
};

inline std::int64_t park_vectors(std::int64_t nstate, std::int64_t chunks) { return (4 + chunks) * nstate + 4; }

inline BlockPark park_of(__m512* base, std::int64_t nstate, std::int64_t chunks) {
  return {base, base + nstate, base + 2 * nstate, base + 3 * nstate, base + 4 * nstate,
          base + (4 + chunks) * nstate};
}

// Chunk buffers shared by a task's blocks in turn: hc, ac [64, N] (h_t, a_t), v [N] and h [N] (any N),
// and dts, us, sig, gys [64].
struct ChunkBuffers {
  __m512 *hc, *ac, *v, *h, *dts, *us, *sig, *gys;
};

inline std::int64_t chunk_vectors(std::int64_t nstate) { return (2 * kBackwardChunk + 2) * nstate + 4 * kBackwardChunk; }

inline ChunkBuffers chunk_buffers_of(__m512* base, std::int64_t nstate) {
  ChunkBuffers c;
  c.hc = base;
  c.ac = c.hc + kBackwardChunk * nstate;
  c.v = c.ac + kBackwardChunk * nstate;
  c.h = c.v + nstate;
  c.dts = c.h + nstate;
  c.us = c.dts + kBackwardChunk;
  c.sig = c.us + kBackwardChunk;
  c.gys = c.sig + kBackwardChunk;
  return c;
}

// delta_t (softplus applied), softplus'(x_t), u_t and dLoss/dy_t for positions [tb, te) of a block,
// into cb.dts / cb.sig / cb.us / cb.gys [t - tb].
template <typename TIn>
MHD_AVX512_INLINE void load_chunk_inputs(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t d0,
                                         std::int64_t width, std::int64_t tb, std::int64_t te, const BlockPark& p,
                                         bool want_grad, const ChunkBuffers& cb) {
  const __mmask16 k = lane_mask(width);
  const __m512 bias = p.misc[3];
  for (std::int64_t t0 = tb; t0 < te; t0 += 16) {
    const std::int64_t tl = std::min<std::int64_t>(16, te - t0), i0 = t0 - tb;
    load_tile<TIn>(j.delta, b, t0, tl, d0, width, cb.dts + i0);
    load_tile<TIn>(j.u, b, t0, tl, d0, width, cb.us + i0);
    load_tile<TIn>(o.gy, b, t0, tl, d0, width, cb.gys + i0);
    for (std::int64_t i = i0; i < i0 + tl; ++i) {
      const __m512 x = _mm512_add_ps(cb.dts[i], bias);
      if (j.softplus) {
        cb.dts[i] = _mm512_maskz_mov_ps(k, v_softplus(x));
        if (want_grad) cb.sig[i] = _mm512_maskz_mov_ps(k, v_softplus_grad(x));
      } else {
        cb.dts[i] = _mm512_maskz_mov_ps(k, x);
        if (want_grad) cb.sig[i] = _mm512_maskz_mov_ps(k, _mm512_set1_ps(1.0f));
      }
    }
  }
}

// Pass 1 over [tb, te) for one block: checkpoint, states, dC_t[n] += sum_d dLoss/dy_t[d] h_t[d, n].
template <int NS, typename TIn>
MHD_AVX512 void backward_pass1_chunk(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t d0,
                                     std::int64_t tb, std::int64_t te, const BlockPark& p, const float* Bb,
                                     std::int64_t B_st, float* dCp, const ChunkBuffers& cb) {
  const std::int64_t nstate = NS > 0 ? NS : j.nstate;
  const std::int64_t width = std::min<std::int64_t>(kLanes, j.dim - d0);
  load_chunk_inputs<TIn>(j, o, b, d0, width, tb, te, p, false, cb);
  __m512 h_fixed[NS > 0 ? NS : 1], v_fixed[NS > 0 ? NS : 1];
  __m512* h = NS > 0 ? h_fixed : p.h;
  __m512* v = NS > 0 ? v_fixed : cb.v;
  __m512* ck = p.checkpoints + (tb / kBackwardChunk) * nstate;
#pragma GCC unroll 16
  for (std::int64_t n = 0; n < nstate; ++n) {
    if (NS > 0) h[n] = p.h[n];
    ck[n] = h[n];
  }
  for (std::int64_t t = tb; t < te; ++t) {
    const __m512 dt = cb.dts[t - tb], dtu = _mm512_mul_ps(dt, cb.us[t - tb]), gy = cb.gys[t - tb];
    const float* Bt = Bb + t * B_st;
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) {
      const __m512 hn =
          _mm512_fmadd_ps(v_exp2(_mm512_mul_ps(dt, p.A2[n])), h[n], _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n])));
      h[n] = hn;
      v[n] = _mm512_mul_ps(gy, hn);
    }
    add_lane_sums(v, nstate, dCp + t * nstate);
  }
  if (NS > 0) {
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) p.h[n] = h[n];
  }
}

// Pass 2 over [tb, te) for one block, backwards in time.
template <int NS, typename TIn>
MHD_AVX512 void backward_pass2_chunk(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t d0,
                                     std::int64_t tb, std::int64_t te, const BlockPark& p, const float* Bb,
                                     std::int64_t B_st, const float* Cb, std::int64_t C_st, float* dBp,
                                     const ChunkBuffers& cb) {
  const std::int64_t nstate = NS > 0 ? NS : j.nstate, len = j.len, dim = j.dim;
  const std::int64_t width = std::min<std::int64_t>(kLanes, dim - d0);
  const __mmask16 k = lane_mask(width);
  load_chunk_inputs<TIn>(j, o, b, d0, width, tb, te, p, true, cb);
  const __m512* ck = p.checkpoints + (tb / kBackwardChunk) * nstate;
  // The chunk's states and decays again, from its checkpoint.
  {
    __m512 h_fixed[NS > 0 ? NS : 1];
    __m512* h = NS > 0 ? h_fixed : cb.h;
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) h[n] = ck[n];
    for (std::int64_t t = tb; t < te; ++t) {
      const __m512 dt = cb.dts[t - tb], dtu = _mm512_mul_ps(dt, cb.us[t - tb]);
      const float* Bt = Bb + t * B_st;
      __m512* ht = cb.hc + (t - tb) * nstate;
      __m512* at = cb.ac + (t - tb) * nstate;
#pragma GCC unroll 16
      for (std::int64_t n = 0; n < nstate; ++n) {
        const __m512 a = v_exp2(_mm512_mul_ps(dt, p.A2[n]));
        h[n] = _mm512_fmadd_ps(a, h[n], _mm512_mul_ps(dtu, _mm512_set1_ps(Bt[n])));
        ht[n] = h[n];
        at[n] = a;
      }
    }
  }
  __m512 g_fixed[NS > 0 ? NS : 1], dA_fixed[NS > 0 ? NS : 1], v_fixed[NS > 0 ? NS : 1];
  __m512* g = NS > 0 ? g_fixed : p.g;
  __m512* dA = NS > 0 ? dA_fixed : p.dA;
  __m512* v = NS > 0 ? v_fixed : cb.v;
  if (NS > 0) {
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) {
      g[n] = p.g[n];
      dA[n] = p.dA[n];
    }
  }
  __m512 dD = p.misc[0], dbias = p.misc[1];
  const __m512 Dv = p.misc[2];
  float* du = o.du + b * len * dim + d0;
  float* ddelta = o.ddelta + b * len * dim + d0;
  for (std::int64_t t = te - 1; t >= tb; --t) {
    const std::int64_t i = t - tb;
    const __m512 dt = cb.dts[i], u = cb.us[i], gy = cb.gys[i], dtu = _mm512_mul_ps(dt, u);
    const float* Bt = Bb + t * B_st;
    const float* Ct = Cb + t * C_st;
    const __m512* hprev = t > tb ? cb.hc + (i - 1) * nstate : ck;
    const __m512* at = cb.ac + i * nstate;
    __m512 gb0 = _mm512_setzero_ps(), gb1 = gb0, gah0 = gb0, gah1 = gb0;
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) {
      const __m512 a = at[n];
      const __m512 gn = _mm512_fmadd_ps(gy, _mm512_set1_ps(Ct[n]), g[n]);
      const __m512 gah = _mm512_mul_ps(_mm512_mul_ps(gn, a), hprev[n]);
      if (n % 2 == 0) {
        gb0 = _mm512_fmadd_ps(gn, _mm512_set1_ps(Bt[n]), gb0);
        gah0 = _mm512_fmadd_ps(p.A2[n], gah, gah0);
      } else {
        gb1 = _mm512_fmadd_ps(gn, _mm512_set1_ps(Bt[n]), gb1);
        gah1 = _mm512_fmadd_ps(p.A2[n], gah, gah1);
      }
      dA[n] = _mm512_fmadd_ps(dt, gah, dA[n]);
      v[n] = _mm512_mul_ps(gn, dtu);
      g[n] = _mm512_mul_ps(a, gn);
    }
    add_lane_sums(v, nstate, dBp + t * nstate);
    const __m512 gb = _mm512_add_ps(gb0, gb1);
    // A2 = A log2 e, so <g, A a h> = ln 2 <g, A2 a h>.
    const __m512 g_aah = _mm512_mul_ps(_mm512_add_ps(gah0, gah1), _mm512_set1_ps(kLn2));
    _mm512_mask_storeu_ps(du + t * dim, k, _mm512_fmadd_ps(dt, gb, _mm512_mul_ps(Dv, gy)));
    const __m512 dd = _mm512_mul_ps(_mm512_fmadd_ps(u, gb, g_aah), cb.sig[i]);
    _mm512_mask_storeu_ps(ddelta + t * dim, k, dd);
    dbias = _mm512_add_ps(dbias, dd);
    dD = _mm512_fmadd_ps(gy, u, dD);
  }
  if (NS > 0) {
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) {
      p.g[n] = g[n];
      p.dA[n] = dA[n];
    }
  }
  p.misc[0] = dD;
  p.misc[1] = dbias;
}

template <int NS, typename TIn>
MHD_AVX512 void backward_task(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t blk_begin,
                              std::int64_t blk_end, const float* Bb, std::int64_t B_st, const float* Cb,
                              std::int64_t C_st, float* dBp, float* dCp, __m512* work) {
  const std::int64_t nstate = j.nstate, len = j.len, dim = j.dim, nblk = blk_end - blk_begin;
  const std::int64_t chunks = (len + kBackwardChunk - 1) / kBackwardChunk;
  const std::int64_t per_block = park_vectors(nstate, chunks);
  const ChunkBuffers cb = chunk_buffers_of(work + nblk * per_block, nstate);
  for (std::int64_t i = 0; i < nblk; ++i) {
    const BlockPark p = park_of(work + i * per_block, nstate, chunks);
    const std::int64_t d0 = (blk_begin + i) * kLanes, width = std::min<std::int64_t>(kLanes, dim - d0);
    const __mmask16 k = lane_mask(width);
    gather_block(j.A, d0, width, nstate, kLog2e, p.A2);
    if (j.h0) {
      gather_block(j.h0 + b * dim * nstate, d0, width, nstate, 1.0f, p.h);
    } else {
      for (std::int64_t n = 0; n < nstate; ++n) p.h[n] = _mm512_setzero_ps();
    }
    if (o.ghL) {
      gather_block(o.ghL + b * dim * nstate, d0, width, nstate, 1.0f, p.g);
    } else {
      for (std::int64_t n = 0; n < nstate; ++n) p.g[n] = _mm512_setzero_ps();
    }
    for (std::int64_t n = 0; n < nstate; ++n) p.dA[n] = _mm512_setzero_ps();
    p.misc[0] = _mm512_setzero_ps();
    p.misc[1] = _mm512_setzero_ps();
    p.misc[2] = j.D ? _mm512_maskz_loadu_ps(k, j.D + d0) : _mm512_setzero_ps();
    p.misc[3] = j.delta_bias ? _mm512_maskz_loadu_ps(k, j.delta_bias + d0) : _mm512_setzero_ps();
  }
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t tb = c * kBackwardChunk, te = std::min(len, tb + kBackwardChunk);
    for (std::int64_t i = 0; i < nblk; ++i) {
      backward_pass1_chunk<NS, TIn>(j, o, b, (blk_begin + i) * kLanes, tb, te,
                                    park_of(work + i * per_block, nstate, chunks), Bb, B_st, dCp, cb);
    }
  }
  for (std::int64_t c = chunks - 1; c >= 0; --c) {
    const std::int64_t tb = c * kBackwardChunk, te = std::min(len, tb + kBackwardChunk);
    for (std::int64_t i = 0; i < nblk; ++i) {
      backward_pass2_chunk<NS, TIn>(j, o, b, (blk_begin + i) * kLanes, tb, te,
                                    park_of(work + i * per_block, nstate, chunks), Bb, B_st, Cb, C_st, dBp, cb);
    }
  }
  for (std::int64_t i = 0; i < nblk; ++i) {
    const BlockPark p = park_of(work + i * per_block, nstate, chunks);
    const std::int64_t d0 = (blk_begin + i) * kLanes, width = std::min<std::int64_t>(kLanes, dim - d0);
    const __mmask16 k = lane_mask(width);
    scatter_block(p.dA, d0, width, nstate, o.dA_by_batch + b * dim * nstate);
    scatter_block(p.g, d0, width, nstate, o.dh0 + b * dim * nstate);
    _mm512_mask_storeu_ps(o.dD_by_batch + b * dim + d0, k, p.misc[0]);
    _mm512_mask_storeu_ps(o.dbias_by_batch + b * dim + d0, k, p.misc[1]);
  }
}

template <typename TIn>
MHD_AVX512 void backward_range(const Job& j, const BackwardOut& o, std::int64_t begin, std::int64_t end) {
  const std::int64_t len = j.len, nstate = j.nstate, blocks = channel_blocks(j.dim), P = o.parts;
  const std::int64_t chunks = (len + kBackwardChunk - 1) / kBackwardChunk;
  const std::int64_t most = (blocks + P - 1) / P;  // blocks in the largest task
  const std::size_t vec_floats =
      static_cast<std::size_t>((most * park_vectors(nstate, chunks) + chunk_vectors(nstate)) * kLanes);
  const std::size_t rows = std::is_same<TIn, float>::value ? 0 : static_cast<std::size_t>(2 * len * nstate);
  float* space = scratch(vec_floats + rows + 16);
  __m512* work = reinterpret_cast<__m512*>(space);
  float* rows_space = space + vec_floats;
  for (std::int64_t task = begin; task < end; ++task) {
    const std::int64_t b = task / P, part = task % P;
    const std::int64_t blk_begin = blocks * part / P, blk_end = blocks * (part + 1) / P;
    if (blk_begin == blk_end) continue;
    std::int64_t B_st, C_st;
    const float* Bb = rows_as_float<TIn>(j.B, j.B_sb, j.B_st, b, len, nstate, rows_space, &B_st);
    const float* Cb = rows_as_float<TIn>(j.C, j.C_sb, j.C_st, b, len, nstate, rows_space + len * nstate, &C_st);
    float* dBp = o.dB_parts + task * len * nstate;
    float* dCp = o.dC_parts + task * len * nstate;
    if (nstate == 16) {
      backward_task<16, TIn>(j, o, b, blk_begin, blk_end, Bb, B_st, Cb, C_st, dBp, dCp, work);
    } else {
      backward_task<0, TIn>(j, o, b, blk_begin, blk_end, Bb, B_st, Cb, C_st, dBp, dCp, work);
    }
  }
}

}  // namespace

void avx512_forward(const Job& job, const ForwardOut& out, std::int64_t begin, std::int64_t end) {
  if (job.elem == Elem::F32) {
    forward_range<float>(job, out, begin, end);
  } else {
    forward_range<std::uint16_t>(job, out, begin, end);
  }
}

void avx512_backward(const Job& job, const BackwardOut& out, std::int64_t begin, std::int64_t end) {
  if (job.elem == Elem::F32) {
    backward_range<float>(job, out, begin, end);
  } else {
    backward_range<std::uint16_t>(job, out, begin, end);
  }
}

// The elementwise entry points for the tests: masked loads and stores, 16 at a time.
#define MHD_SCAN_ELEMENTWISE(EXPR)                                      \
  for (std::int64_t i = 0; i < n; i += 16) {                            \
    const __mmask16 k = lane_mask(n - i);                               \
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);                   \
    _mm512_mask_storeu_ps(out + i, k, EXPR);                            \
  }

MHD_AVX512 void avx512_exp2(const float* x, float* out, std::int64_t n) { MHD_SCAN_ELEMENTWISE(v_exp2(v)) }

// As the scan evaluates exp(delta A): A2 = A log2 e rounded to float (A = 1 here), then 2^(delta A2).
MHD_AVX512 void avx512_exp(const float* x, float* out, std::int64_t n) {
  MHD_SCAN_ELEMENTWISE(v_exp2(_mm512_mul_ps(v, _mm512_set1_ps(kLog2e))))
}

MHD_AVX512 void avx512_softplus(const float* x, float* out, std::int64_t n) { MHD_SCAN_ELEMENTWISE(v_softplus(v)) }

#else  // no x86-64 GCC/Clang: the AVX-512 build does not exist

bool cpu_has_avx512() { return false; }
void avx512_forward(const Job&, const ForwardOut&, std::int64_t, std::int64_t) {}
void avx512_backward(const Job&, const BackwardOut&, std::int64_t, std::int64_t) {}
void avx512_exp2(const float*, float*, std::int64_t) {}
void avx512_exp(const float*, float*, std::int64_t) {}
void avx512_softplus(const float*, float*, std::int64_t) {}

#endif

}  // namespace mhd::mamba::kernels
