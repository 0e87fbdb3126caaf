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

// The backward, like the forward, advances all channel blocks of a task together chunk by chunk
// (kCheckpointEvery positions), backwards in time, so the [B, L, D] tensors it reads (u, delta,
// dLoss/dy) and writes (du, d delta) are touched in whole rows while they are in cache and TLB.
// Per chunk and block it recomputes the chunk's decays a_t and products a_t h_{t-1} from the forward's
// checkpoint (the state before the chunk, scan_kernels.h) into a small buffer, so no pass of its own
// runs forward over the whole sequence, then runs the adjoint over the buffer (see
// scan_channels.cpp's scan_channel_backward for the recurrence, here on 16 channels at once):
//   g = dLoss/dh_t (y_t's term gy_t C_t included)
//   dB_t += g delta_t u_t     dC_t += gy_t h_t     dA += g delta_t a_t h_{t-1}     dLoss/dh_{t-1} = a_t g
//   du_t = delta_t <g, B_t> + D gy_t      d delta_t = <g, A a_t h_{t-1}> + u_t <g, B_t>
// (<., .> over n, per lane), then d delta_raw = d delta_t softplus'(x_t).
// dB_t and dC_t are sums over channels, i.e. over the 16 lanes and over the task's blocks: each block
// adds its lanes' terms lane-wise into per-lane partial sums [chunk, N] (one FMA per update), and the
// 16-way lane reduction runs once per position and chunk after all of the task's blocks, instead of
// once per position and block (docs/benchmarks.md, "Selective scan").

// Per block, kept across the task's chunks: A2, g, dA [N] vectors each, and dD, d delta_bias, D,
// delta_bias.
struct BlockPark {
  __m512 *A2, *g, *dA, *misc;  // misc: dD, dbias, D, delta_bias
};

inline std::int64_t park_vectors(std::int64_t nstate) { return 3 * nstate + 4; }

inline BlockPark park_of(__m512* base, std::int64_t nstate) {
  return {base, base + nstate, base + 2 * nstate, base + 3 * nstate};
}

// Chunk buffers: ahc, ac [chunk, N] (a_t h_{t-1} and a_t of the block in hand), the lane partials of dB and dC
// [chunk, N] (summed over the task's blocks), h and h_start [N] (the state, and the checkpoint it
// starts from), and per position [chunk]: delta_t, u_t, softplus'(x_t), dLoss/dy_t, delta_t u_t and
// the adjoint's sums over n, <g, B_t> and <g, A2 a_t h_{t-1}>.
struct ChunkBuffers {
  __m512 *ahc, *ac, *pB, *pC, *h, *h_start, *dts, *us, *sig, *gys, *dtus, *gb, *gah;
};

inline std::int64_t chunk_vectors(std::int64_t nstate) {
  return (4 * kCheckpointEvery + 2) * nstate + 7 * kCheckpointEvery;
}

inline ChunkBuffers chunk_buffers_of(__m512* base, std::int64_t nstate) {
  ChunkBuffers c;
  c.ahc = base;
  c.ac = c.ahc + kCheckpointEvery * nstate;
  c.pB = c.ac + kCheckpointEvery * nstate;
  c.pC = c.pB + kCheckpointEvery * nstate;
  c.h = c.pC + kCheckpointEvery * nstate;
  c.h_start = c.h + nstate;
  c.dts = c.h_start + nstate;
  c.us = c.dts + kCheckpointEvery;
  c.sig = c.us + kCheckpointEvery;
  c.gys = c.sig + kCheckpointEvery;
  c.dtus = c.gys + kCheckpointEvery;
  c.gb = c.dtus + kCheckpointEvery;
  c.gah = c.gb + kCheckpointEvery;
  return c;
}

// softplus(x) and its derivative sigmoid(x) from one exp: the same operations as v_softplus and
// v_softplus_grad, so the step equals the forward's bit for bit.
MHD_AVX512_INLINE void v_softplus_and_grad(__m512 x, __m512* sp, __m512* grad) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __mmask16 above = _mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ);
  const __m512 e = v_exp_accurate(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  *sp = _mm512_mask_blend_ps(above, _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), v_log1p_unit(e)), x);
  const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  *grad = _mm512_mask_blend_ps(above, _mm512_mask_blend_ps(pos, _mm512_mul_ps(e, inv), inv), one);
}

// delta_t (softplus applied), softplus'(x_t), u_t and dLoss/dy_t for positions [tb, te) of a block,
// into cb.dts / cb.sig / cb.us / cb.gys [t - tb].
template <typename TIn>
MHD_AVX512_INLINE void load_chunk_inputs(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t d0,
                                         std::int64_t width, std::int64_t tb, std::int64_t te, const BlockPark& p,
                                         const ChunkBuffers& cb) {
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
        __m512 sp, grad;
        v_softplus_and_grad(x, &sp, &grad);
        cb.dts[i] = _mm512_maskz_mov_ps(k, sp);
        cb.sig[i] = _mm512_maskz_mov_ps(k, grad);
      } else {
        cb.dts[i] = _mm512_maskz_mov_ps(k, x);
        cb.sig[i] = _mm512_maskz_mov_ps(k, _mm512_set1_ps(1.0f));
      }
    }
  }
}

// The adjoint over [tb, te) for states n0 .. n0 + G - 1 of one block, backwards in time. The
// recurrence of g couples no two states, so the states are taken G at a time with their g and dA in
// registers (all N at once would not fit the 32 vector registers), and the sums over n that du_t and
// d delta_t need are accumulated per position in cb.gb / cb.gah (set by the first group).
template <int G>
MHD_AVX512_INLINE void adjoint_states(std::int64_t n0, bool first, std::int64_t nstate, std::int64_t tb,
                                      std::int64_t te, const BlockPark& p, const float* Bb, std::int64_t B_st,
                                      const float* Cb, std::int64_t C_st, const ChunkBuffers& cb) {
  __m512 g[G], dA[G], A2[G];
#pragma GCC unroll 16
  for (int k = 0; k < G; ++k) {
    g[k] = p.g[n0 + k];
    dA[k] = p.dA[n0 + k];
    A2[k] = p.A2[n0 + k];
  }
  for (std::int64_t t = te - 1; t >= tb; --t) {
    const std::int64_t i = t - tb;
    const __m512 dt = cb.dts[i], gy = cb.gys[i], dtu = cb.dtus[i];
    const float* Bt = Bb + t * B_st + n0;
    const float* Ct = Cb + t * C_st + n0;
    const __m512* ah = cb.ahc + i * nstate + n0;
    const __m512* at = cb.ac + i * nstate + n0;
    __m512* pB = cb.pB + i * nstate + n0;
    __m512 gb0 = _mm512_setzero_ps(), gb1 = gb0, gah0 = gb0, gah1 = gb0;
#pragma GCC unroll 16
    for (int k = 0; k < G; ++k) {
      const __m512 a = at[k];
      const __m512 gn = _mm512_fmadd_ps(gy, _mm512_set1_ps(Ct[k]), g[k]);
      const __m512 gah = _mm512_mul_ps(gn, ah[k]);
      if (k % 2 == 0) {
        gb0 = _mm512_fmadd_ps(gn, _mm512_set1_ps(Bt[k]), gb0);
        gah0 = _mm512_fmadd_ps(A2[k], gah, gah0);
      } else {
        gb1 = _mm512_fmadd_ps(gn, _mm512_set1_ps(Bt[k]), gb1);
        gah1 = _mm512_fmadd_ps(A2[k], gah, gah1);
      }
      dA[k] = _mm512_fmadd_ps(dt, gah, dA[k]);
      pB[k] = _mm512_fmadd_ps(gn, dtu, pB[k]);
      g[k] = _mm512_mul_ps(a, gn);
    }
    const __m512 gb = _mm512_add_ps(gb0, gb1), gah = _mm512_add_ps(gah0, gah1);
    cb.gb[i] = first ? gb : _mm512_add_ps(cb.gb[i], gb);
    cb.gah[i] = first ? gah : _mm512_add_ps(cb.gah[i], gah);
  }
#pragma GCC unroll 16
  for (int k = 0; k < G; ++k) {
    p.g[n0 + k] = g[k];
    p.dA[n0 + k] = dA[k];
  }
}

// One block over [tb, te), backwards in time: the chunk's states and decays again from its
// checkpoint `ck` (adding gy_t h_t to dC's lane partials on the way), then the adjoint.
template <int NS, typename TIn>
MHD_AVX512 void backward_block_chunk(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t d0,
                                     std::int64_t tb, std::int64_t te, const BlockPark& p, const float* ck,
                                     const float* Bb, std::int64_t B_st, const float* Cb, std::int64_t C_st,
                                     const ChunkBuffers& cb) {
  const std::int64_t nstate = NS > 0 ? NS : j.nstate, len = j.len, dim = j.dim;
  const std::int64_t width = std::min<std::int64_t>(kLanes, dim - d0);
  const __mmask16 k = lane_mask(width);
  load_chunk_inputs<TIn>(j, o, b, d0, width, tb, te, p, cb);
  for (std::int64_t n = 0; n < nstate; ++n) cb.h_start[n] = _mm512_loadu_ps(ck + n * kLanes);
  {
    __m512 h_fixed[NS > 0 ? NS : 1];
    __m512* h = NS > 0 ? h_fixed : cb.h;
#pragma GCC unroll 16
    for (std::int64_t n = 0; n < nstate; ++n) h[n] = cb.h_start[n];
    for (std::int64_t t = tb; t < te; ++t) {
      const std::int64_t i = t - tb;
      const __m512 dt = cb.dts[i], dtu = _mm512_mul_ps(dt, cb.us[i]), gy = cb.gys[i];
      cb.dtus[i] = dtu;
      const float* Bt = Bb + t * B_st;
      __m512* ah = cb.ahc + i * nstate;
      __m512* at = cb.ac + i * nstate;
      __m512* pC = cb.pC + i * nstate;
#pragma GCC unroll 16
      for (std::int64_t n = 0; n < nstate; ++n) {
        const __m512 a = v_exp2(_mm512_mul_ps(dt, p.A2[n]));
        ah[n] = _mm512_mul_ps(a, h[n]);
        h[n] = _mm512_fmadd_ps(dtu, _mm512_set1_ps(Bt[n]), ah[n]);
        at[n] = a;
        pC[n] = _mm512_fmadd_ps(gy, h[n], pC[n]);
      }
    }
  }
  std::int64_t n0 = 0;
  for (; n0 + 8 <= nstate; n0 += 8) adjoint_states<8>(n0, n0 == 0, nstate, tb, te, p, Bb, B_st, Cb, C_st, cb);
  if (NS == 0 || NS % 8 != 0) {  // the states past the last multiple of 8 (NS = 0: any N), one by one
    for (; n0 < nstate; ++n0) adjoint_states<1>(n0, n0 == 0, nstate, tb, te, p, Bb, B_st, Cb, C_st, cb);
  }
  // The per-position outputs from the sums over n: <g, B_t> and <g, A2 a_t h_{t-1}>.
  __m512 dD = p.misc[0], dbias = p.misc[1];
  const __m512 Dv = p.misc[2];
  float* du = o.du + b * len * dim + d0;
  float* ddelta = o.ddelta + b * len * dim + d0;
  for (std::int64_t t = tb; t < te; ++t) {
    const std::int64_t i = t - tb;
    const __m512 dt = cb.dts[i], u = cb.us[i], gy = cb.gys[i], gb = cb.gb[i];
    // A2 = A log2 e, so <g, A a h> = ln 2 <g, A2 a h>.
    const __m512 g_aah = _mm512_mul_ps(cb.gah[i], _mm512_set1_ps(kLn2));
    _mm512_mask_storeu_ps(du + t * dim, k, _mm512_fmadd_ps(dt, gb, _mm512_mul_ps(Dv, gy)));
    const __m512 dd = _mm512_mul_ps(_mm512_fmadd_ps(u, gb, g_aah), cb.sig[i]);
    _mm512_mask_storeu_ps(ddelta + t * dim, k, dd);
    dbias = _mm512_add_ps(dbias, dd);
    dD = _mm512_fmadd_ps(gy, u, dD);
  }
  p.misc[0] = dD;
  p.misc[1] = dbias;
}

// sums[n] += sum over lanes of v[n], n < N: 16 at a time through the butterfly, the rest one by one.
MHD_AVX512_INLINE void add_lane_sums(const __m512* v, std::int64_t nstate, float* sums) {
  std::int64_t n = 0;
  for (; n + 16 <= nstate; n += 16) {
    _mm512_storeu_ps(sums + n, _mm512_add_ps(_mm512_loadu_ps(sums + n), v_reduce16(v + n)));
  }
  for (; n < nstate; ++n) sums[n] += _mm512_reduce_add_ps(v[n]);
}

template <int NS, typename TIn>
MHD_AVX512 void backward_task(const Job& j, const BackwardOut& o, std::int64_t b, std::int64_t blk_begin,
                              std::int64_t blk_end, const float* Bb, std::int64_t B_st, const float* Cb,
                              std::int64_t C_st, float* dBp, float* dCp, __m512* work) {
  const std::int64_t nstate = j.nstate, len = j.len, dim = j.dim, nblk = blk_end - blk_begin;
  const std::int64_t chunks = checkpoint_count(len), blocks = channel_blocks(dim);
  const ChunkBuffers cb = chunk_buffers_of(work + nblk * park_vectors(nstate), nstate);
  for (std::int64_t i = 0; i < nblk; ++i) {
    const BlockPark p = park_of(work + i * park_vectors(nstate), nstate);
    const std::int64_t d0 = (blk_begin + i) * kLanes, width = std::min<std::int64_t>(kLanes, dim - d0);
    const __mmask16 k = lane_mask(width);
    gather_block(j.A, d0, width, nstate, kLog2e, p.A2);
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
  for (std::int64_t c = chunks - 1; c >= 0; --c) {
    const std::int64_t tb = c * kCheckpointEvery, te = std::min(len, tb + kCheckpointEvery);
    for (std::int64_t v = 0; v < (te - tb) * nstate; ++v) {
      cb.pB[v] = _mm512_setzero_ps();
      cb.pC[v] = _mm512_setzero_ps();
    }
    for (std::int64_t i = 0; i < nblk; ++i) {
      const float* ck = o.checkpoints + (((b * blocks + blk_begin + i) * chunks + c) * nstate) * kLanes;
      backward_block_chunk<NS, TIn>(j, o, b, (blk_begin + i) * kLanes, tb, te,
                                    park_of(work + i * park_vectors(nstate), nstate), ck, Bb, B_st, Cb, C_st, cb);
    }
    for (std::int64_t t = tb; t < te; ++t) {
      add_lane_sums(cb.pB + (t - tb) * nstate, nstate, dBp + t * nstate);
      add_lane_sums(cb.pC + (t - tb) * nstate, nstate, dCp + t * nstate);
    }
  }
  for (std::int64_t i = 0; i < nblk; ++i) {
    const BlockPark p = park_of(work + i * park_vectors(nstate), nstate);
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
  const std::int64_t most = (blocks + P - 1) / P;  // blocks in the largest task
  const std::size_t vec_floats =
      static_cast<std::size_t>((most * park_vectors(nstate) + chunk_vectors(nstate)) * kLanes);
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
