#include "selective_scan.h"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "fast_exp.h"
#include "mhd/error.h"
#include "mhd/shapes.h"
#include "scan_kernels.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MHD_MAMBA_X86_DISPATCH 1
#else
#define MHD_MAMBA_X86_DISPATCH 0
#endif

namespace mhd::mamba {

// ---------------------------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------------------------

namespace {


[[noreturn]] void fail(const char* who, const std::string& message) {
  throw Error(std::string(who) + ": " + message);
}

void expect_shape(const char* who, const char* name, const at::Tensor& t, at::IntArrayRef expected,
                  const char* meaning) {
  if (t.sizes() != expected) {
    fail(who, std::string(name) + " must be " + meaning + " = " + mhd::shape_string(expected) + ", got " +
                  mhd::shape_string(t.sizes()));
  }
}

}  // namespace

void check_scan_args(const ScanArgs& a, const char* who) {
  const std::pair<const char*, const at::Tensor*> required[] = {
      {"u", &a.u}, {"delta", &a.delta}, {"A", &a.A}, {"B", &a.B}, {"C", &a.C}};
  for (const auto& [name, t] : required) {
    if (!t->defined()) fail(who, std::string(name) + " is required but undefined");
  }
  if (a.u.dim() != 3) fail(who, "u must be [B, L, D], got " + mhd::shape_string(a.u.sizes()));
  if (a.A.dim() != 2) fail(who, "A must be [D, N], got " + mhd::shape_string(a.A.sizes()));
  const std::int64_t batch = a.u.size(0), len = a.u.size(1), dim = a.u.size(2), nstate = a.A.size(1);
  expect_shape(who, "delta", a.delta, a.u.sizes(), "[B, L, D] like u");
  expect_shape(who, "A", a.A, {dim, nstate}, "[D, N]");
  expect_shape(who, "B", a.B, {batch, len, nstate}, "[B, L, N]");
  expect_shape(who, "C", a.C, {batch, len, nstate}, "[B, L, N]");
  if (a.D.defined()) expect_shape(who, "D", a.D, {dim}, "[D]");
  if (a.delta_bias.defined()) expect_shape(who, "delta_bias", a.delta_bias, {dim}, "[D]");
  if (a.h0.defined()) expect_shape(who, "h0", a.h0, {batch, dim, nstate}, "[B, D, N]");

  const std::pair<const char*, const at::Tensor*> all[] = {
      {"delta", &a.delta}, {"A", &a.A}, {"B", &a.B}, {"C", &a.C}, {"D", &a.D}, {"delta_bias", &a.delta_bias},
      {"h0", &a.h0}};
  for (const auto& [name, t] : all) {
    if (!t->defined()) continue;
    if (t->scalar_type() != a.u.scalar_type()) {
      fail(who, std::string(name) + " has dtype " + c10::toString(t->scalar_type()) + " but u has " +
                    c10::toString(a.u.scalar_type()) + "; all scan tensors must share one dtype");
    }
    if (t->device() != a.u.device()) {
      fail(who, std::string(name) + " is on " + t->device().str() + " but u is on " + a.u.device().str());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Layout helpers shared by the fused scan and its backward
// ---------------------------------------------------------------------------------------------

namespace {

// The step the recurrence uses: delta' = softplus(delta + delta_bias) or delta + delta_bias.
// delta: [B, L, D], delta_bias: [D] (broadcast over B and L). Differentiable (the reference's).
at::Tensor effective_delta(const ScanArgs& a) {
  const at::Tensor x = a.delta_bias.defined() ? a.delta + a.delta_bias : a.delta;
  return a.delta_softplus ? at::softplus(x) : x;
}

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

// Below this many (t, n) updates per task, threads cost more than they save.
constexpr std::int64_t kMinUpdatesPerTask = 1 << 15;

// ---------------------------------------------------------------------------------------------
// ISA selection
// ---------------------------------------------------------------------------------------------

std::atomic<ScanIsa> g_requested_isa{ScanIsa::Auto};
// Tasks (at::parallel_for bodies) the last fused forward ran, for the tests' check that the
// parallel region is entered at all.
std::atomic<std::int64_t> g_last_forward_tasks{0};

bool cpu_has_avx2_fma() {
#if MHD_MAMBA_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool cpu_has(ScanIsa isa) {
  switch (isa) {
    case ScanIsa::Avx512: return kernels::cpu_has_avx512();
    case ScanIsa::Avx2: return cpu_has_avx2_fma();
    default: return true;
  }
}

// What Auto or a request resolves to: the widest build the CPU has.
ScanIsa resolved_isa() {
  const ScanIsa isa = g_requested_isa.load(std::memory_order_relaxed);
  if (isa != ScanIsa::Auto) return isa;
  if (kernels::cpu_has_avx512()) return ScanIsa::Avx512;
  if (cpu_has_avx2_fma()) return ScanIsa::Avx2;
  return ScanIsa::Generic;
}

// The channel-per-task kernels below (float32 and float64): their AVX2+FMA build runs under Avx2,
// and under Avx512 for float64 (the AVX-512 build is float32 / bfloat16 only).
bool use_avx2() {
  const ScanIsa isa = resolved_isa();
  return (isa == ScanIsa::Avx2 || isa == ScanIsa::Avx512) && cpu_has_avx2_fma();
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
  g_last_forward_tasks.store(tasks.load(), std::memory_order_relaxed);
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

// How many slices each batch's channels are cut into for the backward. batch * P tasks are spread
// over the threads; P = threads / gcd(batch, threads) makes that a multiple of the thread count
// (balanced), unless the partial dB/dC buffers ([B, P, L, N]) would grow past 4x the larger of
// batch and threads slabs, where the cheaper ceil(threads / batch) is used.
// `dim` is the number of units a batch row is cut along: channels here, channel blocks for the
// AVX-512 build.
std::int64_t chunks_per_batch(std::int64_t batch, std::int64_t dim) {
  const std::int64_t threads = std::max<std::int64_t>(1, at::get_num_threads());
  if (batch <= 0 || dim <= 0) return 1;
  std::int64_t parts = threads / std::gcd(batch, threads);
  if (batch * parts > 4 * std::max(batch, threads)) parts = (threads + batch - 1) / batch;
  return std::clamp<std::int64_t>(parts, 1, dim);
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

// Gradients in ScanArgs order.
struct FusedGrads {
  at::Tensor u, delta, A, B, C, D, delta_bias, h0;
};

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

// ---------------------------------------------------------------------------------------------
// The AVX-512 build (scan_kernels.h): float32 or bfloat16 inputs, float32 state and sums. u, delta
// and dLoss/dy are read through their strides (no layout copy), y and the [B, L, D] gradients are
// written channel-contiguous; delta_bias and softplus are applied inside the kernel.
// ---------------------------------------------------------------------------------------------

bool avx512_handles(const ScanArgs& a) {
  const auto dtype = a.u.scalar_type();
  return resolved_isa() == ScanIsa::Avx512 && (dtype == at::kFloat || dtype == at::kBFloat16);
}

kernels::Strided strided(const at::Tensor& t) {  // t: [B, L, D]
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// Small tensors as contiguous float32; B and C with unit stride over n.
at::Tensor float_contiguous(const at::Tensor& t) {
  return t.defined() ? t.to(at::kFloat).contiguous() : t;
}
at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

struct Avx512Inputs {
  at::Tensor u, delta, A, B, C, D, bias, h0;  // kept alive while the kernel reads them
  kernels::Job job;

  explicit Avx512Inputs(const ScanArgs& a)
      : u(a.u),
        delta(a.delta.stride(2) == 1 || a.delta.stride(1) == 1 ? a.delta : a.delta.contiguous()),
        A(float_contiguous(a.A)),
        B(unit_last_stride(a.B)),
        C(unit_last_stride(a.C)),
        D(float_contiguous(a.D)),
        bias(float_contiguous(a.delta_bias)),
        h0(float_contiguous(a.h0)) {
    job.elem = a.u.scalar_type() == at::kBFloat16 ? kernels::Elem::BF16 : kernels::Elem::F32;
    job.u = strided(u);
    job.delta = strided(delta);
    job.A = A.data_ptr<float>();
    job.B = B.data_ptr();
    job.B_sb = B.stride(0);
    job.B_st = B.stride(1);
    job.C = C.data_ptr();
    job.C_sb = C.stride(0);
    job.C_st = C.stride(1);
    job.D = D.defined() ? D.data_ptr<float>() : nullptr;
    job.delta_bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
    job.softplus = a.delta_softplus;
    job.h0 = h0.defined() ? h0.data_ptr<float>() : nullptr;
    job.batch = a.u.size(0);
    job.len = a.u.size(1);
    job.dim = a.u.size(2);
    job.nstate = a.A.size(1);
  }
};

// y: [B, L, D] contiguous in u's dtype; h_L: [B, D, N] float32.
ScanResult avx512_forward(const ScanArgs& a) {
  const Avx512Inputs in(a);
  const kernels::Job& job = in.job;
  const at::Tensor y = at::empty({job.batch, job.len, job.dim}, a.u.options());
  const at::Tensor hL = at::empty({job.batch, job.dim, job.nstate}, a.u.options().dtype(at::kFloat));
  const kernels::ForwardOut out{y.data_ptr(), hL.data_ptr<float>()};
  const std::int64_t items = job.batch * kernels::channel_blocks(job.dim);
  const std::int64_t per_item = std::max<std::int64_t>(1, job.len * job.nstate * kernels::kLanes);
  std::atomic<std::int64_t> tasks{0};
  at::parallel_for(0, items, std::max<std::int64_t>(1, kMinUpdatesPerTask / per_item),
                   [&](std::int64_t begin, std::int64_t end) {
                     tasks.fetch_add(1, std::memory_order_relaxed);
                     kernels::avx512_forward(job, out, begin, end);
                   });
  g_last_forward_tasks.store(tasks.load(), std::memory_order_relaxed);
  return {y, hL};
}

at::Tensor as_dtype_of(const at::Tensor& g, const at::Tensor& like) {
  return g.scalar_type() == like.scalar_type() ? g : g.to(like.scalar_type());
}

FusedGrads avx512_backward(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL) {
  const Avx512Inputs in(a);
  const kernels::Job& job = in.job;
  const at::Tensor gy_in = gy.scalar_type() == a.u.scalar_type() ? gy : gy.to(a.u.scalar_type());
  const at::Tensor ghL_f = float_contiguous(ghL);
  const std::int64_t blocks = kernels::channel_blocks(job.dim);
  const std::int64_t P = chunks_per_batch(job.batch, blocks);
  const auto opts = a.u.options().dtype(at::kFloat);
  const at::Tensor du = at::empty({job.batch, job.len, job.dim}, opts);
  const at::Tensor ddelta = at::empty({job.batch, job.len, job.dim}, opts);
  const at::Tensor dA_by_batch = at::empty({job.batch, job.dim, job.nstate}, opts);
  const at::Tensor dD_by_batch = at::empty({job.batch, job.dim}, opts);
  const at::Tensor dbias_by_batch = at::empty({job.batch, job.dim}, opts);
  const at::Tensor dB_parts = at::zeros({job.batch, P, job.len, job.nstate}, opts);
  const at::Tensor dC_parts = at::zeros({job.batch, P, job.len, job.nstate}, opts);
  const at::Tensor dh0 = at::empty({job.batch, job.dim, job.nstate}, opts);
  kernels::BackwardOut out;
  out.gy = strided(gy_in);
  out.ghL = ghL_f.defined() ? ghL_f.data_ptr<float>() : nullptr;
  out.du = du.data_ptr<float>();
  out.ddelta = ddelta.data_ptr<float>();
  out.dA_by_batch = dA_by_batch.data_ptr<float>();
  out.dD_by_batch = dD_by_batch.data_ptr<float>();
  out.dbias_by_batch = dbias_by_batch.data_ptr<float>();
  out.dB_parts = dB_parts.data_ptr<float>();
  out.dC_parts = dC_parts.data_ptr<float>();
  out.dh0 = dh0.data_ptr<float>();
  out.parts = P;
  const std::int64_t per_task = std::max<std::int64_t>(1, blocks / P * job.len * job.nstate * kernels::kLanes);
  at::parallel_for(0, job.batch * P, std::max<std::int64_t>(1, kMinUpdatesPerTask / per_task),
                   [&](std::int64_t begin, std::int64_t end) { kernels::avx512_backward(job, out, begin, end); });

  FusedGrads g;
  g.u = as_dtype_of(du, a.u);
  g.delta = as_dtype_of(ddelta, a.delta);
  g.A = as_dtype_of(dA_by_batch.sum(0), a.A);
  g.B = as_dtype_of(P == 1 ? dB_parts.squeeze(1) : dB_parts.sum(1), a.B);
  g.C = as_dtype_of(P == 1 ? dC_parts.squeeze(1) : dC_parts.sum(1), a.C);
  if (a.D.defined()) g.D = as_dtype_of(dD_by_batch.sum(0), a.D);
  if (a.delta_bias.defined()) g.delta_bias = as_dtype_of(dbias_by_batch.sum(0), a.delta_bias);
  if (a.h0.defined()) g.h0 = as_dtype_of(dh0, a.h0);
  return g;
}

// The channel-per-task builds take float32 and float64; bfloat16 runs them in float32.
ScanArgs widened(const ScanArgs& a) {
  ScanArgs w = a;
  for (at::Tensor* t : {&w.u, &w.delta, &w.A, &w.B, &w.C, &w.D, &w.delta_bias, &w.h0}) {
    if (t->defined() && t->scalar_type() == at::kBFloat16) *t = t->to(at::kFloat);
  }
  return w;
}

// The build that runs: AVX-512 for float32 / bfloat16 when selected, otherwise the channel-per-task
// kernels (bfloat16 widened to float32 for them). bfloat16 outputs are rounded from the float32
// results, so y and h_L keep the inputs' dtype.
ScanResult forward_any(const ScanArgs& a) {
  const bool bf16 = a.u.scalar_type() == at::kBFloat16;
  ScanResult r = avx512_handles(a) ? avx512_forward(a) : fused_forward(bf16 ? widened(a) : a);
  if (bf16) r = {as_dtype_of(r.y, a.u), as_dtype_of(r.last_state, a.u)};
  return r;
}

FusedGrads backward_any(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL) {
  if (avx512_handles(a)) return avx512_backward(a, gy, ghL);
  if (a.u.scalar_type() != at::kBFloat16) return fused_backward(a, gy, ghL);
  FusedGrads g = fused_backward(widened(a), gy.to(at::kFloat), ghL.defined() ? ghL.to(at::kFloat) : ghL);
  const ScanArgs* like = &a;
  g.u = as_dtype_of(g.u, like->u);
  g.delta = as_dtype_of(g.delta, like->delta);
  g.A = as_dtype_of(g.A, like->A);
  g.B = as_dtype_of(g.B, like->B);
  g.C = as_dtype_of(g.C, like->C);
  if (g.D.defined()) g.D = as_dtype_of(g.D, like->D);
  if (g.delta_bias.defined()) g.delta_bias = as_dtype_of(g.delta_bias, like->delta_bias);
  if (g.h0.defined()) g.h0 = as_dtype_of(g.h0, like->h0);
  return g;
}

// ---------------------------------------------------------------------------------------------
// The autograd Function
// ---------------------------------------------------------------------------------------------

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr std::size_t kNumTensorInputs = 8;  // u, delta, A, B, C, D, delta_bias, h0

// LibTorch 1.13's custom Functions reject undefined tensor inputs, so an absent optional input
// (D, delta_bias, h0) crosses apply() as an empty placeholder and a bit in `present`.
constexpr std::int64_t kHasD = 1, kHasDeltaBias = 2, kHasH0 = 4;

std::int64_t presence_mask(const ScanArgs& a) {
  return (a.D.defined() ? kHasD : 0) | (a.delta_bias.defined() ? kHasDeltaBias : 0) | (a.h0.defined() ? kHasH0 : 0);
}

at::Tensor placeholder_if_absent(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

at::Tensor if_present(const at::Tensor& t, std::int64_t present, std::int64_t bit) {
  return (present & bit) ? t : at::Tensor();
}

ScanArgs args_from(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const at::Tensor& D, const at::Tensor& delta_bias, const at::Tensor& h0,
                   std::int64_t present, bool delta_softplus) {
  return {u,
          delta,
          A,
          B,
          C,
          if_present(D, present, kHasD),
          if_present(delta_bias, present, kHasDeltaBias),
          if_present(h0, present, kHasH0),
          delta_softplus};
}

class SelectiveScanFunction : public torch::autograd::Function<SelectiveScanFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta,
                               const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                               const at::Tensor& delta_bias, const at::Tensor& h0, std::int64_t present,
                               bool delta_softplus) {
    const ScanArgs args = args_from(u, delta, A, B, C, D, delta_bias, h0, present, delta_softplus);
    const ScanResult out = forward_any(args);
    ctx->save_for_backward({u, delta, A, B, C, D, delta_bias, h0});
    ctx->saved_data["present"] = present;
    ctx->saved_data["delta_softplus"] = delta_softplus;
    return {out.y, out.last_state};
  }

  // grads: {dLoss/dy [B, L, D], dLoss/dh_L [B, D, N]} (zeros when an output was unused).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const ScanArgs args = args_from(saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6], saved[7],
                                    ctx->saved_data["present"].toInt(), ctx->saved_data["delta_softplus"].toBool());
    // create_graph=true: the kernel's gradients carry no graph, so differentiate the reference
    // instead; slower, but second derivatives (e.g. through an energy's gradient) stay exact.
    if (at::GradMode::is_enabled()) return backward_through_reference(ctx, args, grads[0], grads[1]);

    const FusedGrads g = backward_any(args, grads[0], grads[1]);
    // One entry per forward argument; the two trailing non-tensor arguments get none.
    variable_list result = {g.u, g.delta, g.A, g.B, g.C, g.D, g.delta_bias, g.h0, at::Tensor(), at::Tensor()};
    for (std::size_t i = 0; i < kNumTensorInputs; ++i) {
      if (!ctx->needs_input_grad(i)) result[i] = at::Tensor();
    }
    return result;
  }

 private:
  static variable_list backward_through_reference(AutogradContext* ctx, const ScanArgs& args, const at::Tensor& gy,
                                                  const at::Tensor& ghL) {
    const at::Tensor* fields[kNumTensorInputs] = {&args.u, &args.delta, &args.A,          &args.B,
                                                  &args.C, &args.D,     &args.delta_bias, &args.h0};
    std::vector<std::size_t> wanted;
    variable_list inputs;
    for (std::size_t i = 0; i < kNumTensorInputs; ++i) {
      if (ctx->needs_input_grad(i) && fields[i]->defined()) {
        wanted.push_back(i);
        inputs.push_back(*fields[i]);
      }
    }
    variable_list result(kNumTensorInputs + 2);
    if (inputs.empty()) return result;
    const ScanResult ref = selective_scan_reference(args);
    const variable_list g = torch::autograd::grad({ref.y, ref.last_state}, inputs, {gy, ghL},
                                                  /*retain_graph=*/true, /*create_graph=*/true,
                                                  /*allow_unused=*/true);
    for (std::size_t k = 0; k < wanted.size(); ++k) result[wanted[k]] = g[k];
    return result;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

ScanResult selective_scan(const ScanArgs& args) {
  check_scan_args(args, "selective_scan");
  if (!args.u.device().is_cpu()) {
    fail("selective_scan", "the fused scan runs on the CPU, got tensors on " + args.u.device().str() +
                               "; use selective_scan_reference (the block's scan = \"reference\")");
  }
  const auto dtype = args.u.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kBFloat16) {
    fail("selective_scan", std::string("the fused scan supports float32, float64 and bfloat16, got ") +
                               c10::toString(dtype) + "; use selective_scan_reference for other dtypes");
  }
  const variable_list out = SelectiveScanFunction::apply(
      args.u, args.delta, args.A, args.B, args.C, placeholder_if_absent(args.D, args.u),
      placeholder_if_absent(args.delta_bias, args.u), placeholder_if_absent(args.h0, args.u), presence_mask(args),
      args.delta_softplus);
  return {out[0], out[1]};
}

ScanResult selective_scan_reference(const ScanArgs& args) {
  check_scan_args(args, "selective_scan_reference");
  const std::int64_t batch = args.u.size(0), len = args.u.size(1), dim = args.u.size(2), nstate = args.A.size(1);
  if (len == 0) {
    const at::Tensor h = args.h0.defined() ? args.h0 : at::zeros({batch, dim, nstate}, args.u.options());
    return {at::empty({batch, 0, dim}, args.u.options()), h};
  }
  // unbind, not select(1, t) per step: select's backward writes a zero-filled copy of the whole
  // input per step (O(L^2)), unbind's is one stack.
  const std::vector<at::Tensor> deltas = effective_delta(args).unbind(1);  // L x [B, D]
  const std::vector<at::Tensor> us = args.u.unbind(1);                     // L x [B, D]
  const std::vector<at::Tensor> Bs = args.B.unbind(1);                     // L x [B, N]
  const std::vector<at::Tensor> Cs = args.C.unbind(1);                     // L x [B, N]
  at::Tensor h = args.h0.defined() ? args.h0 : at::zeros({batch, dim, nstate}, args.u.options());  // [B, D, N]
  std::vector<at::Tensor> ys;
  ys.reserve(static_cast<std::size_t>(len));
  for (std::int64_t t = 0; t < len; ++t) {
    const at::Tensor& dt = deltas[t];
    const at::Tensor& ut = us[t];
    const at::Tensor dA = at::exp(dt.unsqueeze(-1) * args.A);                     // [B, D, N]
    const at::Tensor dBu = (dt * ut).unsqueeze(-1) * Bs[t].unsqueeze(1);          // [B, D, N]
    h = dA * h + dBu;
    at::Tensor yt = at::matmul(h, Cs[t].unsqueeze(-1)).squeeze(-1);               // [B, D]
    if (args.D.defined()) yt = yt + args.D * ut;
    ys.push_back(yt);
  }
  return {at::stack(ys, 1), h};
}

void set_scan_isa(ScanIsa isa) {
  if (!cpu_has(isa)) {
    throw Error(std::string("set_scan_isa: this CPU lacks ") + (isa == ScanIsa::Avx512 ? "AVX-512 (F, BW, VL, DQ)" : "AVX2+FMA") +
                "; use ScanIsa::Auto or one of available_scan_isas()");
  }
  g_requested_isa.store(isa, std::memory_order_relaxed);
}

std::string scan_isa_name(ScanIsa isa) {
  switch (isa) {
    case ScanIsa::Avx512: return "avx512";
    case ScanIsa::Avx2: return "avx2+fma";
    case ScanIsa::Generic: return "generic";
    default: return "auto";
  }
}

std::string active_scan_isa() { return scan_isa_name(resolved_isa()); }

std::vector<ScanIsa> available_scan_isas() {
  std::vector<ScanIsa> out = {ScanIsa::Generic};
  if (cpu_has(ScanIsa::Avx2)) out.push_back(ScanIsa::Avx2);
  if (cpu_has(ScanIsa::Avx512)) out.push_back(ScanIsa::Avx512);
  return out;
}

std::int64_t last_scan_forward_tasks() { return g_last_forward_tasks.load(std::memory_order_relaxed); }

}  // namespace mhd::mamba
