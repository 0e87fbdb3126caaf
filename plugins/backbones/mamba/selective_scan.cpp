#include "selective_scan.h"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"
#include "scan_builds.h"
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
// The reference's step, and build selection
// ---------------------------------------------------------------------------------------------

namespace {

// The step the recurrence uses: delta' = softplus(delta + delta_bias) or delta + delta_bias.
// delta: [B, L, D], delta_bias: [D] (broadcast over B and L). Differentiable (the reference's).
at::Tensor effective_delta(const ScanArgs& a) {
  const at::Tensor x = a.delta_bias.defined() ? a.delta + a.delta_bias : a.delta;
  return a.delta_softplus ? at::softplus(x) : x;
}

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

}  // namespace

namespace detail {

ScanIsa resolved_isa() {
  const ScanIsa isa = g_requested_isa.load(std::memory_order_relaxed);
  if (isa != ScanIsa::Auto) return isa;
  if (kernels::cpu_has_avx512()) return ScanIsa::Avx512;
  if (cpu_has_avx2_fma()) return ScanIsa::Avx2;
  return ScanIsa::Generic;
}

bool use_avx2() {
  const ScanIsa isa = resolved_isa();
  return (isa == ScanIsa::Avx2 || isa == ScanIsa::Avx512) && cpu_has_avx2_fma();
}

void record_forward_tasks(std::int64_t tasks) { g_last_forward_tasks.store(tasks, std::memory_order_relaxed); }

// batch * P tasks are spread over the threads; P = threads / gcd(batch, threads) makes that a multiple
// of the thread count (balanced), unless the partial dB/dC buffers ([B, P, L, N]) would grow past 4x
// the larger of batch and threads slabs, where the cheaper ceil(threads / batch) is used.
// `dim` is the number of units a batch row is cut along: channels for the channel-per-task builds,
// channel blocks for the AVX-512 build.
std::int64_t chunks_per_batch(std::int64_t batch, std::int64_t dim) {
  const std::int64_t threads = std::max<std::int64_t>(1, at::get_num_threads());
  if (batch <= 0 || dim <= 0) return 1;
  std::int64_t parts = threads / std::gcd(batch, threads);
  if (batch * parts > 4 * std::max(batch, threads)) parts = (threads + batch - 1) / batch;
  return std::clamp<std::int64_t>(parts, 1, dim);
}

at::Tensor as_dtype_of(const at::Tensor& g, const at::Tensor& like) {
  return g.scalar_type() == like.scalar_type() ? g : g.to(like.scalar_type());
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Dispatch to the builds (scan_builds.h)
// ---------------------------------------------------------------------------------------------

namespace {

using detail::as_dtype_of;
using detail::FusedGrads;

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
// results, so y and h_L keep the inputs' dtype. *checkpoints (when given) gets the AVX-512 build's
// checkpoints for its backward, and stays undefined for the other builds.
ScanResult forward_any(const ScanArgs& a, at::Tensor* checkpoints) {
  const bool bf16 = a.u.scalar_type() == at::kBFloat16;
  ScanResult r = detail::avx512_handles(a) ? detail::avx512_forward(a, checkpoints)
                                           : detail::fused_forward(bf16 ? widened(a) : a);
  if (bf16) r = {as_dtype_of(r.y, a.u), as_dtype_of(r.last_state, a.u)};
  return r;
}

FusedGrads backward_any(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL, const at::Tensor& checkpoints) {
  if (detail::avx512_handles(a)) return detail::avx512_backward(a, gy, ghL, checkpoints);
  if (a.u.scalar_type() != at::kBFloat16) return detail::fused_backward(a, gy, ghL);
  FusedGrads g = detail::fused_backward(widened(a), gy.to(at::kFloat), ghL.defined() ? ghL.to(at::kFloat) : ghL);
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
                               bool delta_softplus, bool keep_checkpoints) {
    const ScanArgs args = args_from(u, delta, A, B, C, D, delta_bias, h0, present, delta_softplus);
    at::Tensor checkpoints;
    const ScanResult out = forward_any(args, keep_checkpoints ? &checkpoints : nullptr);
    ctx->save_for_backward({u, delta, A, B, C, D, delta_bias, h0});
    ctx->saved_data["present"] = present;
    ctx->saved_data["delta_softplus"] = delta_softplus;
    if (checkpoints.defined()) ctx->saved_data["checkpoints"] = checkpoints;
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

    const auto kept = ctx->saved_data.find("checkpoints");
    const FusedGrads g =
        backward_any(args, grads[0], grads[1], kept == ctx->saved_data.end() ? at::Tensor() : kept->second.toTensor());
    // One entry per forward argument; the three trailing non-tensor arguments get none.
    variable_list result = {g.u, g.delta, g.A, g.B, g.C, g.D, g.delta_bias, g.h0, at::Tensor(), at::Tensor(), at::Tensor()};
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
    variable_list result(kNumTensorInputs + 3);
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
  // The forward keeps what its backward needs (the AVX-512 build's checkpoints) only when a backward
  // can follow: grad mode on and some input requiring grad.
  bool keep_checkpoints = false;
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor* t : {&args.u, &args.delta, &args.A, &args.B, &args.C, &args.D, &args.delta_bias, &args.h0})
      keep_checkpoints = keep_checkpoints || (t->defined() && t->requires_grad());
  }
  const variable_list out = SelectiveScanFunction::apply(
      args.u, args.delta, args.A, args.B, args.C, placeholder_if_absent(args.D, args.u),
      placeholder_if_absent(args.delta_bias, args.u), placeholder_if_absent(args.h0, args.u), presence_mask(args),
      args.delta_softplus, keep_checkpoints);
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

std::string active_scan_isa() { return scan_isa_name(detail::resolved_isa()); }

std::vector<ScanIsa> available_scan_isas() {
  std::vector<ScanIsa> out = {ScanIsa::Generic};
  if (cpu_has(ScanIsa::Avx2)) out.push_back(ScanIsa::Avx2);
  if (cpu_has(ScanIsa::Avx512)) out.push_back(ScanIsa::Avx512);
  return out;
}

std::int64_t last_scan_forward_tasks() { return g_last_forward_tasks.load(std::memory_order_relaxed); }

}  // namespace mhd::mamba
