// The AVX-512 build of the fused selective scan: the backward (the forward is scan_avx512.cpp, the
// shared vector code scan_avx512_common.h). Every function here carries the AVX-512 target
// attribute and this file includes no LibTorch header; selective_scan.cpp calls in only after
// cpu_has_avx512().
#include <algorithm>
#include <type_traits>

#include "scan_avx512_common.h"
#include "scan_kernels.h"

namespace mhd::mamba::kernels {

#if MHD_SCAN_HAVE_AVX512

namespace {

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
// chunk's states and decays into a small buffer, then runs the adjoint over it (see scan_channels.cpp's
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

void avx512_backward(const Job& job, const BackwardOut& out, std::int64_t begin, std::int64_t end) {
  if (job.elem == Elem::F32) {
    backward_range<float>(job, out, begin, end);
  } else {
    backward_range<std::uint16_t>(job, out, begin, end);
  }
}

#else  // no x86-64 GCC/Clang: the AVX-512 build does not exist

void avx512_backward(const Job&, const BackwardOut&, std::int64_t, std::int64_t) {}

#endif

}  // namespace mhd::mamba::kernels
