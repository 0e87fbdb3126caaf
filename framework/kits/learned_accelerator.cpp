#include "mhd/kits/learned_accelerator.h"

#include <cstdio>
#include <filesystem>
#include <tuple>

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include "mhd/error.h"
#include "mhd/stopwatch.h"

namespace mhd {
namespace learned {
namespace {

constexpr std::int64_t kFormat = 1;

// The mixer's input per sample: the normalised Gram matrix [m, m] and alpha_LS [m], both
// right-aligned (the newest pair in the last slot), and the history's fill n / m.
std::int64_t mixer_inputs(std::int64_t m) { return m * m + m + 1; }

std::string dims_text(const AcceleratorDims& d) {
  return "d_model " + std::to_string(d.d_model) + ", hidden " + std::to_string(d.hidden) + ", m " + std::to_string(d.m);
}

}  // namespace

Accelerator::Accelerator(const AcceleratorDims& dims) : dims_(dims) {
  if (dims.d_model < 1 || dims.hidden < 1 || dims.m < 1)
    throw Error("learned: accelerator dims must be positive, got " + dims_text(dims));
  init_in_ = register_module("init_in", torch::nn::Linear(dims.d_model, dims.hidden));
  init_out_ = register_module("init_out", torch::nn::Linear(dims.hidden, dims.d_model));
  mix_in_ = register_module("mix_in", torch::nn::Linear(mixer_inputs(dims.m), dims.hidden));
  mix_out_ = register_module("mix_out", torch::nn::Linear(dims.hidden, dims.m + 1));
  // Zero outputs: the untrained accelerator starts from z0 and takes Anderson's steps with beta = 1.
  torch::NoGradGuard no_grad;
  for (auto* layer : {&init_out_, &mix_out_}) {
    (*layer)->weight.zero_();
    (*layer)->bias.zero_();
  }
}

at::Tensor Accelerator::initial(const at::Tensor& z0, const at::Tensor& context, const std::string& source) {
  const std::int64_t D = dims_.d_model;
  if (context.dim() != 3 || context.size(2) != D)
    throw Error("learned: '" + source + "' fits d_model " + std::to_string(D) + ", but the solve's context is " +
                (context.dim() == 3 ? "d_model " + std::to_string(context.size(2)) : std::to_string(context.dim()) + "-D") +
                " (run mhd meta-train on this model's checkpoint)");
  const std::int64_t B = context.size(0), P = context.size(1);
  if (z0.size(0) != B || z0.size(1) != P * D)
    throw Error("learned: the solve's context [" + std::to_string(B) + ", " + std::to_string(P) + ", " +
                std::to_string(D) + "] does not match its states [" + std::to_string(z0.size(0)) + ", " +
                std::to_string(z0.size(1)) + "]");
  const at::Tensor x = context.to(init_in_->weight.scalar_type());                  // [B, P, D]
  const at::Tensor delta = init_out_->forward(at::tanh(init_in_->forward(x)));      // [B, P, D]
  return z0 + delta.reshape({B, P * D}).to(z0.scalar_type());                       // [B, P * D]
}

MixWeights Accelerator::mix(const at::Tensor& gram, const at::Tensor& alpha_ls, at::ScalarType dtype) {
  const std::int64_t B = gram.size(0), n = gram.size(1), m = dims_.m;
  if (n > m) throw Error("learned: history of " + std::to_string(n) + " pairs exceeds the mixer's m " + std::to_string(m));
  at::Tensor features;
  {
    torch::NoGradGuard no_grad;
    const at::Tensor scale = gram.diagonal(0, 1, 2).mean(1).view({B, 1, 1}) + 1e-300;  // [B, 1, 1]
    at::Tensor g = at::zeros({B, m, m}, gram.options());
    g.narrow(1, m - n, n).narrow(2, m - n, n).copy_(gram / scale);
    at::Tensor a = at::zeros({B, m}, gram.options());
    // Anderson's weights can be large on a nearly singular history; the clamp keeps the input bounded.
    a.narrow(1, m - n, n).copy_(alpha_ls.clamp(-10.0, 10.0));
    const at::Tensor fill = at::full({B, 1}, static_cast<double>(n) / static_cast<double>(m), gram.options());
    features = at::cat({g.reshape({B, m * m}), a, fill}, 1).to(mix_in_->weight.scalar_type());  // [B, m*m+m+1]
    features = at::nan_to_num(features, 0.0, 0.0, 0.0);
  }
  const at::Tensor out = mix_out_->forward(at::tanh(mix_in_->forward(features)));  // [B, m + 1]
  at::Tensor delta = out.narrow(1, m - n, n);
  delta = delta - delta.mean(1, /*keepdim=*/true);  // sum 0: alpha still sums to 1
  return {alpha_ls.to(dtype) + delta.to(dtype), (2.0 * at::sigmoid(out.select(1, m))).unsqueeze(1).to(dtype)};
}

void save_accelerator(const std::string& path, Accelerator& accelerator) {
  torch::serialize::OutputArchive archive;
  const AcceleratorDims& d = accelerator.dims();
  archive.write("mhd_learned_format", at::tensor(kFormat));
  archive.write("d_model", at::tensor(d.d_model));
  archive.write("hidden", at::tensor(d.hidden));
  archive.write("m", at::tensor(d.m));
  accelerator.save(archive);
  const std::string temporary = path + ".tmp";
  try {
    archive.save_to(temporary);
  } catch (const c10::Error&) {
    throw Error("learned: cannot write accelerator file '" + path + "' (is its folder writable?)");
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) throw Error("learned: cannot write accelerator file '" + path + "': " + ec.message());
}

std::shared_ptr<Accelerator> load_accelerator(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error("learned: accelerator file '" + path + "' does not exist (write one with mhd meta-train CHECKPOINT --out " +
                path + ")");
  const std::string not_ours = "learned: '" + path + "' is not an accelerator file (write one with mhd meta-train)";
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error&) {
    throw Error(not_ours);
  }
  auto read = [&](const char* key) {
    at::Tensor t;
    if (!archive.try_read(key, t) || t.numel() != 1) throw Error(not_ours + ": no '" + key + "' in its header");
    return t.item<std::int64_t>();
  };
  if (read("mhd_learned_format") != kFormat)
    throw Error("learned: '" + path + "' has accelerator format " + std::to_string(read("mhd_learned_format")) +
                ", this build reads " + std::to_string(kFormat));
  AcceleratorDims d;
  d.d_model = read("d_model");
  d.hidden = read("hidden");
  d.m = read("m");
  auto accelerator = std::make_shared<Accelerator>(d);
  try {
    accelerator->load(archive);
  } catch (const c10::Error&) {
    throw Error("learned: '" + path + "': its parameters do not fit its header (" + dims_text(d) + ")");
  }
  accelerator->eval();
  return accelerator;
}

at::Tensor anderson_weights(const at::Tensor& gram, double lam) {
  const std::int64_t B = gram.size(0), n = gram.size(1);
  const at::Tensor scale = gram.diagonal(0, 1, 2).mean(1);  // tr(G G^T) / n: [B]
  const at::Tensor reg = lam * scale + 1e-300;               // [B]; the floor: a history exactly at z*
  at::Tensor kkt = at::zeros({B, n + 1, n + 1}, gram.options());  // [B, n+1, n+1]
  kkt.select(1, 0).narrow(1, 1, n).fill_(1.0);
  kkt.select(2, 0).narrow(1, 1, n).fill_(1.0);
  kkt.narrow(1, 1, n).narrow(2, 1, n).copy_(gram + reg.view({B, 1, 1}) * at::eye(n, gram.options()));
  at::Tensor rhs = at::zeros({B, n + 1, 1}, gram.options());
  rhs.select(1, 0).fill_(1.0);
  at::Tensor solution, info;
  std::tie(solution, info) = at::linalg_solve_ex(kkt, rhs);
  const at::Tensor alpha = solution.narrow(1, 1, n).squeeze(2);  // [B, n]
  at::Tensor newest = at::zeros_like(alpha);
  newest.select(1, n - 1).fill_(1.0);
  const at::Tensor ok = info.eq(0).logical_and(at::isfinite(alpha).all(1)).unsqueeze(1);  // [B, 1]
  return at::where(ok, alpha, newest);
}

void History::push(const at::Tensor& x, const at::Tensor& fx) {
  xs_.push_back(x);
  fs_.push_back(fx);
  if (size() > m_) {
    xs_.erase(xs_.begin());
    fs_.erase(fs_.begin());
  }
}

at::Tensor History::gram() const {
  torch::NoGradGuard no_grad;
  // float64: the Gram matrix squares G's condition number (as in the anderson plugin).
  const at::Tensor G = (at::stack(fs_, 1) - at::stack(xs_, 1)).to(at::kDouble);  // [B, n, D]
  return at::bmm(G, G.transpose(1, 2));                                           // [B, n, n]
}

at::Tensor History::combine(const at::Tensor& alpha, const std::vector<at::Tensor>& v) {
  return (alpha.unsqueeze(2) * at::stack(v, 1)).sum(1);  // [B, n, 1] * [B, n, D] -> [B, D]
}

at::Tensor accelerated_step(const History& history, Accelerator* accelerator, double lam) {
  const at::Tensor gram = history.gram();                   // [B, n, n] float64
  const at::Tensor alpha_ls = anderson_weights(gram, lam);  // [B, n] float64
  const at::ScalarType dtype = history.newest_f().scalar_type();
  at::Tensor next;
  if (accelerator == nullptr) {
    next = history.combine_f(alpha_ls.to(dtype));
  } else {
    const MixWeights w = accelerator->mix(gram, alpha_ls, dtype);
    next = w.beta * history.combine_f(w.alpha) + (1.0 - w.beta) * history.combine_x(w.alpha);
  }
  // A non-finite mix (an extrapolation off a degenerate history) falls back to the plain step f(x).
  return at::where(at::isfinite(next).all(1, /*keepdim=*/true), next, history.newest_f());
}

SolveResult accelerated_solve(const char* name, Accelerator* accelerator, const SolveOptions& options,
                              const FixedPointProblem& problem, const at::Tensor& z0, const SolveLimits& limits) {
  check_solve_inputs(name, problem, z0, limits);
  at::NoGradGuard no_grad;
  const Stopwatch watch;
  SolveResult out;
  SolverInfo& info = out.info;
  // Without a context (a backward solve, a plain map) there is nothing to predict z0 from.
  const bool initialise = accelerator != nullptr && problem.context.defined();
  at::Tensor z = initialise ? accelerator->initial(z0, problem.context, options.source) : z0;  // [B, D]
  History history(accelerator != nullptr ? accelerator->dims().m : options.m);
  BestIterate best;
  for (std::int64_t k = 0; k < limits.max_iter; ++k) {
    const at::Tensor fz = problem.f(z);  // [B, D]
    ++info.f_evals;
    check_map_shape(name, z, fz);
    const Residuals r = residuals(z, fz);
    const bool done = record_iteration(info, r, limits.tol, energy_of(problem, z));
    best.observe(z, r);
    if (stop_if_nonfinite(info, fz) || done) break;
    // Not yet converged: [B]; !(rel < tol) keeps a sample with a NaN residual moving.
    const at::Tensor active = at::logical_not(r.rel.lt(limits.tol));
    history.push(z, fz);
    z = at::where(active.unsqueeze(1), accelerated_step(history, accelerator, options.lam), z);
  }
  out.z = best.best();
  best.finish(info);
  info.extra.emplace_back("learned_initialised", initialise ? 1.0 : 0.0);
  info.wall_ms = watch.ms();
  return out;
}

}  // namespace learned
}  // namespace mhd
