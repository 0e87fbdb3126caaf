// A branch-free exp() that GCC and Clang vectorise.
//
// Why not std::exp: without -ffast-math the compiler must call the scalar libm routine once per
// element, and exp(delta_t * A[d, n]) is evaluated B * L * d_inner * d_state times by the scan, so
// it dominates the scan's cost. These versions are straight-line arithmetic on bit patterns, which
// the vectoriser turns into SIMD code (8 floats or 4 doubles per AVX2 instruction).
//
// Accuracy: Cephes' expf / exp (Cody-Waite range reduction, then a minimax polynomial / Pade
// approximant on [-ln2/2, ln2/2]): about 1 ulp, relative error < 3e-7 (float) and < 3e-16 (double).
// Range: inputs are clamped to [-86, 88] (float) and [-700, 709] (double), so results never become
// subnormal or infinite: exp(x) for x below the range returns exp(lower bound) (< 5e-38 and
// < 1e-304), above it exp(upper bound). NaN is propagated.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define MHD_MAMBA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MHD_MAMBA_ALWAYS_INLINE inline
#endif

namespace mhd::mamba {

namespace fast_exp_detail {

MHD_MAMBA_ALWAYS_INLINE std::uint32_t bits(float x) {
  std::uint32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
MHD_MAMBA_ALWAYS_INLINE float from_bits(std::uint32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}
MHD_MAMBA_ALWAYS_INLINE std::uint64_t bits(double x) {
  std::uint64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
MHD_MAMBA_ALWAYS_INLINE double from_bits(std::uint64_t i) {
  double x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

}  // namespace fast_exp_detail

MHD_MAMBA_ALWAYS_INLINE float fast_exp(float x) {
  using namespace fast_exp_detail;
  const float xc = x < -86.0f ? -86.0f : (x > 88.0f ? 88.0f : x);
  // k = round(x / ln2): adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits,
  // so both k (as an integer) and k (as a float) come out without a float->int conversion.
  constexpr float kShift = 12582912.0f;
  const float shifted = xc * 1.44269504088896341f + kShift;
  const std::uint32_t k = bits(shifted) - bits(kShift);  // two's complement k
  const float kf = shifted - kShift;
  // r = x - k ln2, with ln2 split in two so k * ln2_hi is exact.
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;  // exp(r), in [0.7, 1.5]
  // exp(x) = exp(r) * 2^k: add k to the exponent field.
  const float result = from_bits(bits(er) + (k << 23));
  return x != x ? x : result;
}

MHD_MAMBA_ALWAYS_INLINE double fast_exp(double x) {
  using namespace fast_exp_detail;
  const double xc = x < -700.0 ? -700.0 : (x > 709.0 ? 709.0 : x);
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52, see the float version
  const double shifted = xc * 1.4426950408889634073599 + kShift;
  const std::uint64_t k = bits(shifted) - bits(kShift);
  const double kf = shifted - kShift;
  double r = xc - kf * 6.93145751953125e-1;
  r = r - kf * 1.42860682030941723212e-6;
  // Cephes' Pade form: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
  const double rr = r * r;
  const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double er = 1.0 + 2.0 * (p / (q - p));
  const double result = from_bits(bits(er) + (k << 52));
  return x != x ? x : result;
}

}  // namespace mhd::mamba
