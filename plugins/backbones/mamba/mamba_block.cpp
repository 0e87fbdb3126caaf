#include "mamba_block.h"

#include <cmath>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"
#include "selective_scan.h"

namespace mhd::mamba {

namespace {


[[noreturn]] void fail(const std::string& message) { throw Error("mamba: " + message); }

std::string num(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

// The inverse of softplus: softplus(inverse_softplus(y)) = y for y > 0. log(expm1(y)) written as
// y + log(-expm1(-y)) so it neither overflows for large y nor loses digits for small y.
at::Tensor inverse_softplus(const at::Tensor& y) { return y + at::log(-at::expm1(-y)); }

// The causal depthwise convolution's input window after a sequence: the last K - 1 inputs,
// zero-padded on the left when the sequence is shorter. x_in: [B, L, E] -> [B, E, K - 1].
at::Tensor conv_window_after(const at::Tensor& x_in, std::int64_t width) {
  const std::int64_t len = x_in.size(1), keep = width - 1;
  const at::Tensor xs = x_in.transpose(1, 2);  // [B, E, L]
  if (len >= keep) return xs.narrow(2, len - keep, keep).contiguous();
  return at::constant_pad_nd(xs, {keep - len, 0}, 0);
}

}  // namespace

void MambaConfig::validate() const {
  if (d_model < 1) fail("d_model must be >= 1, got " + std::to_string(d_model));
  if (d_state < 1) fail("d_state must be >= 1, got " + std::to_string(d_state));
  if (d_conv < 1) fail("d_conv must be >= 1, got " + std::to_string(d_conv));
  if (expand < 1) fail("expand must be >= 1, got " + std::to_string(expand));
  if (dt_rank < 0) fail("dt_rank must be >= 0 (0 = auto), got " + std::to_string(dt_rank));
  if (!(dt_min > 0)) fail("dt_min must be > 0, got " + num(dt_min));
  if (dt_max < dt_min) fail("dt_min (" + num(dt_min) + ") must not exceed dt_max (" + num(dt_max) + ")");
  if (!(dt_init_floor > 0)) fail("dt_init_floor must be > 0, got " + num(dt_init_floor));
}

MambaBlock::MambaBlock(const MambaConfig& config) : config_(config) {
  config_.validate();
  const std::int64_t d = config_.d_model, e = config_.d_inner(), n = config_.d_state, k = config_.d_conv,
                     r = config_.resolved_dt_rank();
  namespace nn = torch::nn;
  in_proj = register_module("in_proj", nn::Linear(nn::LinearOptions(d, 2 * e).bias(false)));
  conv1d = register_module("conv1d", nn::Conv1d(nn::Conv1dOptions(e, e, k).groups(e).padding(k - 1).bias(true)));
  x_proj = register_module("x_proj", nn::Linear(nn::LinearOptions(e, r + 2 * n).bias(false)));
  dt_proj = register_module("dt_proj", nn::Linear(nn::LinearOptions(r, e).bias(true)));
  out_proj = register_module("out_proj", nn::Linear(nn::LinearOptions(e, d).bias(false)));
  A_log = register_parameter("A_log", at::empty({e, n}));
  D = register_parameter("D", at::empty({e}));
  init_parameters();
}

// mamba-ssm's initialisation: in/x/out projections and the conv keep PyTorch's defaults.
void MambaBlock::init_parameters() {
  torch::NoGradGuard no_grad;
  const std::int64_t e = config_.d_inner(), n = config_.d_state;
  const double r = static_cast<double>(config_.resolved_dt_rank());
  const double w = config_.dt_scale / std::sqrt(r);
  dt_proj->weight.uniform_(-w, w);
  // dt = exp(U(log dt_min, log dt_max)) >= floor, stored so that softplus(bias) = dt at t = 0.
  const double log_min = std::log(config_.dt_min), log_max = std::log(config_.dt_max);
  const at::Tensor dt = at::exp(at::rand({e}) * (log_max - log_min) + log_min).clamp_min(config_.dt_init_floor);
  dt_proj->bias.copy_(inverse_softplus(dt));
  // S4D-real: A[d, n] = -(n + 1), the same for every channel.
  A_log.copy_(at::log(at::arange(1, n + 1, at::kFloat)).unsqueeze(0).expand({e, n}));
  D.fill_(1.0);
}

at::Tensor MambaBlock::A() const { return -at::exp(A_log); }

namespace {

// Under autocast (the mixed_precision optimization, docs/design.md §3) the projections come out in
// reduced precision while A, D and delta_bias stay float32; autocast has no rule for the scan, so it
// runs, like the other long reductions autocast keeps in float32, in the parameters' dtype.
void scan_in_dtype(ScanArgs& args, at::ScalarType dtype) {
  for (at::Tensor* t : {&args.u, &args.delta, &args.B, &args.C, &args.h0})
    if (t->defined() && t->scalar_type() != dtype) *t = t->to(dtype);
}

}  // namespace

void MambaBlock::check_sequence_input(const torch::Tensor& x) const {
  if (!x.defined()) fail("x is undefined; expected [B, L, d_model=" + std::to_string(config_.d_model) + "]");
  if (x.dim() != 3 || x.size(2) != config_.d_model) {
    fail("x must be [B, L, d_model=" + std::to_string(config_.d_model) + "], got " + mhd::shape_string(x.sizes()));
  }
  if (x.scalar_type() != A_log.scalar_type()) {
    fail(std::string("x is ") + c10::toString(x.scalar_type()) + " but the block's parameters are " +
         c10::toString(A_log.scalar_type()) + "; convert one with .to()");
  }
}

void MambaBlock::check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const {
  const std::int64_t e = config_.d_inner();
  if (!x_t.defined() || x_t.dim() != 2 || x_t.size(1) != config_.d_model) {
    fail("step: x_t must be [B, d_model=" + std::to_string(config_.d_model) + "], got " +
         (x_t.defined() ? mhd::shape_string(x_t.sizes()) : std::string("undefined")));
  }
  if (x_t.scalar_type() != A_log.scalar_type()) {
    fail(std::string("step: x_t is ") + c10::toString(x_t.scalar_type()) + " but the block's parameters are " +
         c10::toString(A_log.scalar_type()));
  }
  if (state.tensors.size() != 2) {
    fail("step: state must hold {conv_state, ssm_state} (2 tensors), got " + std::to_string(state.tensors.size()));
  }
  const std::int64_t batch = x_t.size(0);
  const std::vector<std::int64_t> conv_shape = {batch, e, config_.d_conv - 1}, ssm_shape = {batch, e, config_.d_state};
  const at::Tensor& conv_state = state.tensors[0];
  const at::Tensor& ssm_state = state.tensors[1];
  if (!conv_state.defined() || conv_state.sizes() != at::IntArrayRef(conv_shape)) {
    fail("step: conv_state must be [B, d_inner, d_conv - 1] = " + mhd::shape_string(conv_shape) + ", got " +
         (conv_state.defined() ? mhd::shape_string(conv_state.sizes()) : std::string("undefined")));
  }
  if (!ssm_state.defined() || ssm_state.sizes() != at::IntArrayRef(ssm_shape)) {
    fail("step: ssm_state must be [B, d_inner, d_state] = " + mhd::shape_string(ssm_shape) + ", got " +
         (ssm_state.defined() ? mhd::shape_string(ssm_state.sizes()) : std::string("undefined")));
  }
}

bool MambaBlock::use_fused_scan(const torch::Tensor& x) const {
  const auto dtype = x.scalar_type();
  return config_.scan == ScanImpl::Fused && x.device().is_cpu() &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16);
}

torch::Tensor MambaBlock::forward(const torch::Tensor& x) { return run_sequence(x, false).first; }

std::pair<torch::Tensor, RecurrentState> MambaBlock::forward_with_state(const torch::Tensor& x) {
  return run_sequence(x, true);
}

std::pair<torch::Tensor, RecurrentState> MambaBlock::run_sequence(const torch::Tensor& x, bool keep_state) {
  check_sequence_input(x);
  const std::int64_t len = x.size(1), n = config_.d_state, r = config_.resolved_dt_rank();
  // An empty sequence (conv1d rejects zero-length input): no output, the state before any input.
  if (len == 0) return {at::zeros_like(x), keep_state ? initial_state(x.size(0)) : RecurrentState{}};
  const std::vector<at::Tensor> xz = in_proj(x).chunk(2, -1);
  const at::Tensor& x_in = xz[0];  // [B, L, E]
  const at::Tensor& z = xz[1];     // [B, L, E]
  // Causal: padding K - 1 on both sides, keep the first L outputs. [B, E, L]
  const at::Tensor u = at::silu(conv1d(x_in.transpose(1, 2)).narrow(2, 0, len));
  const at::Tensor u_seq = u.transpose(1, 2);  // [B, L, E], a view of the [B, E, L] buffer the scan wants
  const at::Tensor x_dbl = x_proj(u_seq);      // [B, L, R + 2N]
  const at::Tensor dt_low = x_dbl.narrow(-1, 0, r);
  const at::Tensor B = x_dbl.narrow(-1, r, n);
  const at::Tensor C = x_dbl.narrow(-1, r + n, n);

  ScanArgs args;
  args.u = u_seq;
  args.delta = at::linear(dt_low, dt_proj->weight);  // [B, L, E]; the bias goes in as delta_bias
  args.A = A();
  args.B = B;
  args.C = C;
  args.D = D;
  args.delta_bias = dt_proj->bias;
  args.delta_softplus = true;
  scan_in_dtype(args, A_log.scalar_type());
  const ScanResult scan = use_fused_scan(x) ? selective_scan(args) : selective_scan_reference(args);

  at::Tensor y = out_proj(scan.y * at::silu(z));  // [B, L, D]
  RecurrentState state;
  if (keep_state) state.tensors = {conv_window_after(x_in, config_.d_conv), scan.last_state};
  return {y, state};
}

RecurrentState MambaBlock::initial_state(std::int64_t batch) {
  if (batch < 0) fail("initial_state: batch must be >= 0, got " + std::to_string(batch));
  const auto opts = A_log.options().requires_grad(false);
  const std::int64_t e = config_.d_inner();
  return {{at::zeros({batch, e, config_.d_conv - 1}, opts), at::zeros({batch, e, config_.d_state}, opts)}};
}

std::pair<torch::Tensor, RecurrentState> MambaBlock::step(const torch::Tensor& x_t, const RecurrentState& state) {
  check_step_input(x_t, state);
  const std::int64_t n = config_.d_state, r = config_.resolved_dt_rank();
  const at::Tensor& conv_state = state.tensors[0];  // [B, E, K - 1]
  const at::Tensor& ssm_state = state.tensors[1];   // [B, E, N]
  const std::vector<at::Tensor> xz = in_proj(x_t).chunk(2, -1);
  const at::Tensor& x_in = xz[0];  // [B, E]
  const at::Tensor& z = xz[1];     // [B, E]

  // The conv over the window [x_{t-K+1}, ..., x_t]; PyTorch's conv is a correlation, so weight[k]
  // multiplies the window's k-th entry.
  const at::Tensor window = at::cat({conv_state, x_in.unsqueeze(-1)}, -1);                    // [B, E, K]
  const at::Tensor u = at::silu((window * conv1d->weight.squeeze(1)).sum(-1) + conv1d->bias);  // [B, E]

  const at::Tensor x_dbl = x_proj(u);  // [B, R + 2N]

  // h' = exp(delta A) h + delta B u ;  y = <h', C> + D u, with delta = softplus(dt_low W_dt^T + b_dt):
  // the selective scan over one position (its views of x_dbl and u cost no copy), so the step runs
  // the same fused kernel, with one output per call, as the sequence form instead of a dozen
  // [B, E, N] temporaries (docs/benchmarks.md, "Selective scan").
  ScanArgs args;
  args.u = u.unsqueeze(1);                                                        // [B, 1, E]
  args.delta = at::linear(x_dbl.narrow(-1, 0, r), dt_proj->weight).unsqueeze(1);  // [B, 1, E]
  args.A = A();
  args.B = x_dbl.narrow(-1, r, n).unsqueeze(1);      // [B, 1, N]
  args.C = x_dbl.narrow(-1, r + n, n).unsqueeze(1);  // [B, 1, N]
  args.D = D;
  args.delta_bias = dt_proj->bias;
  args.delta_softplus = true;
  args.h0 = ssm_state;
  scan_in_dtype(args, A_log.scalar_type());
  const ScanResult scan = use_fused_scan(x_t) ? selective_scan(args) : selective_scan_reference(args);
  const at::Tensor out = out_proj(scan.y.squeeze(1) * at::silu(z));  // [B, D]
  return {out, RecurrentState{{window.narrow(-1, 1, config_.d_conv - 1), scan.last_state}}};
}

// ---------------------------------------------------------------------------------------------
// Plugin manifest
// ---------------------------------------------------------------------------------------------

MambaConfig config_from_params(const Params& p, const ModelDims& dims) {
  MambaConfig c;
  c.d_model = dims.d_model;
  c.d_state = p.integer("d_state");
  c.d_conv = p.integer("d_conv");
  c.expand = p.integer("expand");
  c.dt_rank = p.integer("dt_rank");
  c.dt_min = p.real("dt_min");
  c.dt_max = p.real("dt_max");
  c.dt_init_floor = p.real("dt_init_floor");
  c.dt_scale = p.real("dt_scale");
  c.scan = p.text("scan") == "reference" ? ScanImpl::Reference : ScanImpl::Fused;
  c.validate();
  return c;
}

Manifest make_manifest() {
  Manifest m;
  m.kind = PluginKind::Backbone;
  m.name = "mamba";
  m.version = "1.0.0";
  m.description = "Mamba (S6) selective state-space block with a fused multithreaded CPU selective scan";
  m.params = {
      int_param("d_state", 16, "SSM state size N per channel", 1, 256),
      int_param("d_conv", 4, "width K of the causal depthwise convolution", 1, 16),
      int_param("expand", 2, "inner width d_inner = expand * d_model", 1, 8),
      int_param("dt_rank", 0, "rank R of the delta projection; 0 = ceil(d_model / 16)", 0, 4096),
      float_param("dt_min", 1e-3, "smallest initial step softplus(dt_proj.bias) (log-uniform in [dt_min, dt_max])",
                  1e-8, 10.0),
      float_param("dt_max", 1e-1, "largest initial step softplus(dt_proj.bias)", 1e-8, 10.0),
      float_param("dt_init_floor", 1e-4, "lower clamp of the initial step", 1e-12, 1.0),
      float_param("dt_scale", 1.0, "dt_proj.weight ~ U(-s/sqrt(dt_rank), s/sqrt(dt_rank)) with s = dt_scale", 0.0,
                  100.0),
      choice_param("scan", "fused", {"fused", "reference"},
                   "selective scan: fused CPU kernel, or the per-timestep LibTorch reference (for checking)"),
      choice_param("scan_build", "auto", {"auto", "avx512", "avx2", "generic"},
                   "build of the fused scan (process-wide): auto picks the widest the CPU has; the others "
                   "compare builds in a study (docs/benchmarks.md, \"Selective scan\")"),
  };
  m.make_backbone = [](const Params& params, const ModelDims& dims) -> std::shared_ptr<Backbone> {
    const std::string build = params.text("scan_build");
    set_scan_isa(build == "avx512" ? ScanIsa::Avx512
                 : build == "avx2" ? ScanIsa::Avx2
                 : build == "generic" ? ScanIsa::Generic
                                      : ScanIsa::Auto);
    return std::make_shared<MambaBlock>(config_from_params(params, dims));
  };
  return m;
}

}  // namespace mhd::mamba
