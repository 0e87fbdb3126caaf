// The channel-per-task builds of the fused scan (portable and AVX2+FMA, selective_scan.h's
// ScanIsa::Generic / Avx2; also float64 under Avx512): one (b, d) channel per task, vectorised over
// the N states, after copying u and delta to channel-major [B, D, L]. Runs at::parallel_for, so it
// is compiled with -fopenmp (CMakeLists.txt).
#include <algorithm>
#include <atomic>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "fast_exp.h"
#include "scan_builds.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MHD_MAMBA_X86_DISPATCH 1
#else
#define MHD_MAMBA_X86_DISPATCH 0
#endif

namespace mhd::mamba::detail {

namespace {

// [B, L, D] -> contiguous [B, D, L], so that each channel's sequence is one contiguous run.
// A no-op when the tensor is already a transposed view of such a buffer (the block's conv output).
at::Tensor channel_major(const at::Tensor& t) { return t.transpose(1, 2).contiguous(); }

// The same step for the kernels (which run without autograd), written straight into a channel-major
// [B, D, L] buffer: one pass and one allocation, since every large temporary costs page faults.
at::Tensor channel_major_effective_delta(const ScanArgs& a) {
  if (!a.delta_bias.defined() && !a.delta_softplus) return channel_major(a.delta);
  at::Tensor out = at::empty({a.delta.size(0), a.delta.size(2), a.delta.size(1)}, a.delta.options());
  at::Tensor view = out.transpose(1, 2);  // [B, L, D] view of the [B, D, L] buffer
  if (a.delta_bias.defined()) {
    at::add_out(view, a.delta, a.delta_bias);
    if (a.delta_softplus) at::softplus_out(view, view);
  } else {
    at::softplus_out(view, a.delta);
  }
  return out;
}

at::Tensor contiguous_or_undefined(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Per-channel kernels. Everything below is inlined into the ISA-specific entry points, so the
// vectoriser sees the n-loops with the target's vector width.
// ---------------------------------------------------------------------------------------------

// One (b, d) channel of the inputs.
template <typename T>
struct Channel {
  const T* u;      // [L]
  const T* delta;  // [L]     effective step
  const T* A;      // [N]
  const T* B;      // [L, N]  (the batch's B, shared by its channels)
  const T* C;      // [L, N]
  T d_skip;
  const T* h0;     // [N] or nullptr (zeros)
};

// One time step of one channel: h <- exp(delta A) h + delta u B_t, returning <h, C_t>.
// h, A, Bt, Ct: [N].
template <typename T>
MHD_MAMBA_ALWAYS_INLINE T scan_step(T* __restrict h, const T* __restrict A, const T* __restrict Bt,
                                    const T* __restrict Ct, T dt, T dtu, std::int64_t nstate) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t n = 0; n < nstate; ++n) {
    const T hn = fast_exp(dt * A[n]) * h[n] + dtu * Bt[n];
    h[n] = hn;
    acc += hn * Ct[n];
  }
  return acc;
}

// h: [N], holds h0 on entry and h_{L-1} on exit; y: [L].
template <typename T>
MHD_MAMBA_ALWAYS_INLINE void scan_channel_forward(const Channel<T>& c, std::int64_t len, std::int64_t nstate, T* h,
                                                  T* __restrict y) {
  for (std::int64_t t = 0; t < len; ++t) {
    const T dt = c.delta[t];
    y[t] = scan_step(h, c.A, c.B + t * nstate, c.C + t * nstate, dt, dt * c.u[t], nstate) + c.d_skip * c.u[t];
  }
}

// The gradients one channel produces. du, ddelta, dA, dD and dh0 belong to this channel alone;
// dB and dC are the chunk's partial sums over its channels.
template <typename T>
struct ChannelGrads {
  const T* gy;   // [L]     dLoss/dy
  const T* ghL;  // [N]     dLoss/dh_{L-1}, or nullptr
  T* du;         // [L]
  T* ddelta;     // [L]     w.r.t. the effective step
  T* dA;         // [N]     summed over t (the caller sums over b)
  T* dD;         // scalar, summed over t
  T* dB;         // [L, N]  accumulated
  T* dC;         // [L, N]  accumulated
  T* dh0;        // [N]
};

// Scratch: hs [(L + 1) * N] gets h_{t-1} in row t (row 0 = h0), as [L * N] gets exp(delta_t A),
// g [N] carries the adjoint dLoss/dh_t backwards in time.
template <typename T>
MHD_MAMBA_ALWAYS_INLINE void scan_channel_backward(const Channel<T>& c, const ChannelGrads<T>& g_out,
                                                   std::int64_t len, std::int64_t nstate, T* __restrict hs,
                                                   T* __restrict as, T* __restrict g) {
  const T* __restrict A = c.A;
  // Pass 1, forward in time: recompute and keep every state; dC_t += gy_t h_t needs only h_t.
  for (std::int64_t n = 0; n < nstate; ++n) hs[n] = c.h0 ? c.h0[n] : T(0);
  for (std::int64_t t = 0; t < len; ++t) {
    const T dt = c.delta[t];
    const T dtu = dt * c.u[t];
    const T gyt = g_out.gy[t];
    const T* __restrict Bt = c.B + t * nstate;
    const T* __restrict hprev = hs + t * nstate;
    T* __restrict hcur = hs + (t + 1) * nstate;
    T* __restrict at_ = as + t * nstate;
    T* __restrict dCt = g_out.dC + t * nstate;
#pragma omp simd
    for (std::int64_t n = 0; n < nstate; ++n) {
      const T a = fast_exp(dt * A[n]);
      const T hn = a * hprev[n] + dtu * Bt[n];
      at_[n] = a;
      hcur[n] = hn;
      dCt[n] += gyt * hn;
    }
  }
  // Pass 2, backward in time. With g = dLoss/dh_t (including y_t's term gy_t C_t):
  //   dB_t += g delta_t u_t        dA += g delta_t a_t h_{t-1}        dLoss/dh_{t-1} = a_t g
  //   du_t = delta_t <g, B_t> + D gy_t        d delta_t = <g, A a_t h_{t-1}> + u_t <g, B_t>
  for (std::int64_t n = 0; n < nstate; ++n) g[n] = g_out.ghL ? g_out.ghL[n] : T(0);
  T dD = 0;
  for (std::int64_t t = len - 1; t >= 0; --t) {
    const T dt = c.delta[t];
    const T ut = c.u[t];
    const T dtu = dt * ut;
    const T gyt = g_out.gy[t];
    const T* __restrict Bt = c.B + t * nstate;
    const T* __restrict Ct = c.C + t * nstate;
    const T* __restrict hprev = hs + t * nstate;
    const T* __restrict at_ = as + t * nstate;
    T* __restrict dBt = g_out.dB + t * nstate;
    T* __restrict dA = g_out.dA;
    T g_dot_b = 0;
    T g_dot_aah = 0;
#pragma omp simd reduction(+ : g_dot_b, g_dot_aah)
    for (std::int64_t n = 0; n < nstate; ++n) {
      const T gn = g[n] + gyt * Ct[n];
      const T gah = gn * at_[n] * hprev[n];
      g_dot_b += gn * Bt[n];
      g_dot_aah += A[n] * gah;
      dA[n] += dt * gah;
      dBt[n] += gn * dtu;
      g[n] = at_[n] * gn;
    }
    g_out.du[t] = dt * g_dot_b + c.d_skip * gyt;
    g_out.ddelta[t] = g_dot_aah + ut * g_dot_b;
    dD += gyt * ut;
  }
  *g_out.dD += dD;
  for (std::int64_t n = 0; n < nstate; ++n) g_out.dh0[n] = g[n];
}

// ---------------------------------------------------------------------------------------------
// Whole-tensor jobs: raw pointers into contiguous buffers.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct ScanJob {
  const T* u;      // [B, D, L]
  const T* delta;  // [B, D, L]
  const T* A;      // [D, N]
  const T* B;      // [B, L, N]
  const T* C;      // [B, L, N]
  const T* D;      // [D] or nullptr
  const T* h0;     // [B, D, N] or nullptr
  std::int64_t batch, dim, len, nstate;

  Channel<T> channel(std::int64_t b, std::int64_t d) const {
    const std::int64_t bd = b * dim + d;
    return {u + bd * len,           delta + bd * len,         A + d * nstate, B + b * len * nstate,
            C + b * len * nstate, D ? D[d] : T(0), h0 ? h0 + bd * nstate : nullptr};
  }
};

template <typename T>
struct ForwardOut {
  T* y;   // [B, D, L]
  T* hL;  // [B, D, N]
};

template <typename T>
struct BackwardOut {
  const T* gy;   // [B, D, L]
  const T* ghL;  // [B, D, N] or nullptr
  T* du;         // [B, D, L]
  T* ddelta;     // [B, D, L]
  T* dA_by_batch;  // [B, D, N]  summed over b afterwards
  T* dD_by_batch;  // [B, D]
  T* dB_parts;     // [B, P, L, N]  P = chunks per batch, summed over P afterwards
  T* dC_parts;     // [B, P, L, N]
  T* dh0;          // [B, D, N]
  std::int64_t chunks_per_batch;
};

// Channels [begin, end) of the flattened b x d range.
template <typename T>
MHD_MAMBA_ALWAYS_INLINE void forward_channels(const ScanJob<T>& job, const ForwardOut<T>& out, std::int64_t begin,
                                              std::int64_t end) {
  for (std::int64_t bd = begin; bd < end; ++bd) {
    const std::int64_t b = bd / job.dim, d = bd % job.dim;
    const Channel<T> c = job.channel(b, d);
    T* h = out.hL + bd * job.nstate;  // the scan runs in place in the output state
    for (std::int64_t n = 0; n < job.nstate; ++n) h[n] = c.h0 ? c.h0[n] : T(0);
    scan_channel_forward(c, job.len, job.nstate, h, out.y + bd * job.len);
  }
}

// Chunks [begin, end): chunk k covers batch k / P and its (k % P)-th slice of the channels, and owns
// the k-th [L, N] slabs of dB_parts / dC_parts, so no two tasks write the same memory.
template <typename T>
MHD_MAMBA_ALWAYS_INLINE void backward_chunks(const ScanJob<T>& job, const BackwardOut<T>& out, std::int64_t begin,
                                             std::int64_t end) {
  const std::int64_t L = job.len, N = job.nstate, P = out.chunks_per_batch;
  std::vector<T> hs(static_cast<std::size_t>((L + 1) * N)), as(static_cast<std::size_t>(L * N)),
      g(static_cast<std::size_t>(N));
  for (std::int64_t k = begin; k < end; ++k) {
    const std::int64_t b = k / P, part = k % P;
    const std::int64_t d_begin = job.dim * part / P, d_end = job.dim * (part + 1) / P;
    for (std::int64_t d = d_begin; d < d_end; ++d) {
      const std::int64_t bd = b * job.dim + d;
      const ChannelGrads<T> grads{out.gy + bd * L,
                                  out.ghL ? out.ghL + bd * N : nullptr,
                                  out.du + bd * L,
                                  out.ddelta + bd * L,
                                  out.dA_by_batch + bd * N,
                                  out.dD_by_batch + bd,
                                  out.dB_parts + k * L * N,
                                  out.dC_parts + k * L * N,
                                  out.dh0 + bd * N};
      scan_channel_backward(job.channel(b, d), grads, L, N, hs.data(), as.data(), g.data());
    }
  }
}

// The ISA entry points: identical source, compiled for the baseline and for AVX2+FMA.
template <typename T>
void forward_channels_generic(const ScanJob<T>& job, const ForwardOut<T>& out, std::int64_t b, std::int64_t e) {
  forward_channels(job, out, b, e);
}
template <typename T>
void backward_chunks_generic(const ScanJob<T>& job, const BackwardOut<T>& out, std::int64_t b, std::int64_t e) {
  backward_chunks(job, out, b, e);
}
#if MHD_MAMBA_X86_DISPATCH
template <typename T>
__attribute__((target("avx2,fma"))) void forward_channels_avx2(const ScanJob<T>& job, const ForwardOut<T>& out,
                                                               std::int64_t b, std::int64_t e) {
  forward_channels(job, out, b, e);
}
template <typename T>
__attribute__((target("avx2,fma"))) void backward_chunks_avx2(const ScanJob<T>& job, const BackwardOut<T>& out,
                                                              std::int64_t b, std::int64_t e) {
  backward_chunks(job, out, b, e);
}
#endif

template <typename T>
void run_forward(const ScanJob<T>& job, const ForwardOut<T>& out) {
  const std::int64_t channels = job.batch * job.dim;
  const std::int64_t grain = std::max<std::int64_t>(1, kMinUpdatesPerTask / std::max<std::int64_t>(1, job.len * job.nstate));
  const bool avx2 = use_avx2();
  std::atomic<std::int64_t> tasks{0};
  at::parallel_for(0, channels, grain, [&](std::int64_t begin, std::int64_t end) {
    tasks.fetch_add(1, std::memory_order_relaxed);
#if MHD_MAMBA_X86_DISPATCH
    if (avx2) return forward_channels_avx2(job, out, begin, end);
#endif
    forward_channels_generic(job, out, begin, end);
  });
  record_forward_tasks(tasks.load());
  (void)avx2;
}

template <typename T>
void run_backward(const ScanJob<T>& job, const BackwardOut<T>& out) {
  const std::int64_t chunks = job.batch * out.chunks_per_batch;
  const std::int64_t per_chunk = std::max<std::int64_t>(1, job.dim / out.chunks_per_batch * job.len * job.nstate);
  const std::int64_t grain = std::max<std::int64_t>(1, kMinUpdatesPerTask / per_chunk);
  const bool avx2 = use_avx2();
  at::parallel_for(0, chunks, grain, [&](std::int64_t begin, std::int64_t end) {
#if MHD_MAMBA_X86_DISPATCH
    if (avx2) return backward_chunks_avx2(job, out, begin, end);
#endif
    backward_chunks_generic(job, out, begin, end);
  });
  (void)avx2;
}

// The inputs in the kernels' layout: u and delta channel-major [B, D, L] (unit-stride time loops),
// the rest contiguous as in ScanArgs.
struct KernelInputs {
  at::Tensor u, delta, A, B, C, D, h0;  // u, delta: [B, D, L]; the rest as in ScanArgs
  std::int64_t batch, dim, len, nstate;

  explicit KernelInputs(const ScanArgs& a)
      : u(channel_major(a.u)),
        delta(channel_major_effective_delta(a)),
        A(a.A.contiguous()),
        B(a.B.contiguous()),
        C(a.C.contiguous()),
        D(contiguous_or_undefined(a.D)),
        h0(contiguous_or_undefined(a.h0)),
        batch(a.u.size(0)),
        dim(a.u.size(2)),
        len(a.u.size(1)),
        nstate(a.A.size(1)) {}

  template <typename T>
  ScanJob<T> job() const {
    return {u.data_ptr<T>(), delta.data_ptr<T>(), A.data_ptr<T>(), B.data_ptr<T>(), C.data_ptr<T>(),
            ptr_or_null<T>(D), ptr_or_null<T>(h0), batch,   dim,   len,    nstate};
  }
};

}  // namespace

// y: [B, L, D] (a transposed view of the kernel's [B, D, L] buffer), h_L: [B, D, N].
ScanResult fused_forward(const ScanArgs& a) {
  const KernelInputs in(a);
  const at::Tensor y = at::empty({in.batch, in.dim, in.len}, in.u.options());
  const at::Tensor hL = at::empty({in.batch, in.dim, in.nstate}, in.u.options());
  AT_DISPATCH_FLOATING_TYPES(in.u.scalar_type(), "selective_scan_forward", [&] {
    run_forward<scalar_t>(in.job<scalar_t>(), {y.data_ptr<scalar_t>(), hL.data_ptr<scalar_t>()});
  });
  return {y.transpose(1, 2), hL};
}

FusedGrads fused_backward(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL) {
  const KernelInputs in(a);
  const at::Tensor gy_cm = channel_major(gy);  // [B, D, L]
  const at::Tensor ghL_c = contiguous_or_undefined(ghL);
  const std::int64_t P = chunks_per_batch(in.batch, in.dim);
  const auto opts = in.u.options();
  at::Tensor du = at::empty({in.batch, in.dim, in.len}, opts);
  at::Tensor ddelta_eff = at::empty({in.batch, in.dim, in.len}, opts);
  at::Tensor dA_by_batch = at::zeros({in.batch, in.dim, in.nstate}, opts);
  at::Tensor dD_by_batch = at::zeros({in.batch, in.dim}, opts);
  at::Tensor dB_parts = at::zeros({in.batch, P, in.len, in.nstate}, opts);
  at::Tensor dC_parts = at::zeros({in.batch, P, in.len, in.nstate}, opts);
  at::Tensor dh0 = at::empty({in.batch, in.dim, in.nstate}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.u.scalar_type(), "selective_scan_backward", [&] {
    const BackwardOut<scalar_t> out{gy_cm.data_ptr<scalar_t>(),      ptr_or_null<scalar_t>(ghL_c),
                                    du.data_ptr<scalar_t>(),         ddelta_eff.data_ptr<scalar_t>(),
                                    dA_by_batch.data_ptr<scalar_t>(), dD_by_batch.data_ptr<scalar_t>(),
                                    dB_parts.data_ptr<scalar_t>(),   dC_parts.data_ptr<scalar_t>(),
                                    dh0.data_ptr<scalar_t>(),        P};
    run_backward<scalar_t>(in.job<scalar_t>(), out);
  });

  FusedGrads grads;
  grads.u = du.transpose(1, 2);  // [B, L, D]
  grads.A = dA_by_batch.sum(0);
  grads.B = dB_parts.sum(1);
  grads.C = dC_parts.sum(1);
  if (a.D.defined()) grads.D = dD_by_batch.sum(0);
  if (a.h0.defined()) grads.h0 = dh0;
  // Chain rule through delta' = softplus(delta + delta_bias); PyTorch's own softplus_backward so the
  // threshold matches the forward's exactly.
  at::Tensor ddelta = ddelta_eff.transpose(1, 2);  // [B, L, D]
  if (a.delta_softplus) {
    const at::Tensor pre = a.delta_bias.defined() ? a.delta + a.delta_bias : a.delta;
    ddelta = at::softplus_backward(ddelta, pre, 1, 20);
  }
  grads.delta = ddelta;
  if (a.delta_bias.defined()) grads.delta_bias = ddelta.sum(at::IntArrayRef{0, 1});
  return grads;
}

}  // namespace mhd::mamba::detail
