// The AVX-512 build of the fused selective scan: CPU check, forward, and the elementwise entry
// points the tests use (the backward is scan_avx512_backward.cpp, the shared vector code
// scan_avx512_common.h). Every function here carries the AVX-512 target attribute and this file
// includes no LibTorch header; selective_scan.cpp calls in only after cpu_has_avx512().
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#include "scan_avx512_common.h"
#include "scan_kernels.h"

namespace mhd::mamba::kernels {

#if MHD_SCAN_HAVE_AVX512

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return has;
}

namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

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

namespace {

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

// Chunks of kCheckpointEvery positions: every block of a thread's range advances this far before
// the next chunk, so each chunk reads and writes whole row segments of the [B, L, D] buffers while
// they are in cache and in the TLB (one block walking all L rows of a column strip touches L / 2
// pages of a 512-channel float32 tensor), and the blocks' states wait in a small buffer (N vectors
// each), from where they are copied as the checkpoints when those are kept.

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
  const std::int64_t blocks = channel_blocks(dim), chunks = checkpoint_count(len);
  for (std::int64_t t0 = 0; t0 < len; t0 += kCheckpointEvery) {
    const std::int64_t t1 = std::min(len, t0 + kCheckpointEvery);
    for (std::int64_t i = 0; i < nblk; ++i) {
      if (out.checkpoints) {
        float* ck = out.checkpoints + (((b * blocks + blk_begin + i) * chunks + t0 / kCheckpointEvery) * nstate) * kLanes;
        for (std::int64_t n = 0; n < nstate; ++n) _mm512_storeu_ps(ck + n * kLanes, hs[i * nstate + n]);
      }
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

}  // namespace

void avx512_forward(const Job& job, const ForwardOut& out, std::int64_t begin, std::int64_t end) {
  if (job.elem == Elem::F32) {
    forward_range<float>(job, out, begin, end);
  } else {
    forward_range<std::uint16_t>(job, out, begin, end);
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
void avx512_exp2(const float*, float*, std::int64_t) {}
void avx512_exp(const float*, float*, std::int64_t) {}
void avx512_softplus(const float*, float*, std::int64_t) {}

#endif

}  // namespace mhd::mamba::kernels
