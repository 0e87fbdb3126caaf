#include "core/implicit.h"

#include <chrono>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"

namespace mhd {
namespace {

// What the backward pass needs beyond tensors; carried through autograd's saved data as a capsule.
struct ImplicitState : torch::CustomClassHolder {
  Solver* solver = nullptr;
  SolveLimits limits;
  std::shared_ptr<SolverInfo> info;
};

// forward(fz, z): identity on fz = f(z*) (built with a graph from the leaf z = z*).
// backward(grad): g = J^T g + grad, with J^T v = d<fz, v>/dz from the saved graph; g goes on into
// f's graph (parameters, context) through fz.
class ImplicitFunction : public torch::autograd::Function<ImplicitFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& fz, const at::Tensor& z,
                            c10::intrusive_ptr<ImplicitState> state) {
    ctx->save_for_backward({fz, z});
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return fz.view_as(fz).clone();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& fz = saved[0];
    const at::Tensor& z = saved[1];
    auto state = c10::static_intrusive_pointer_cast<ImplicitState>(ctx->saved_data["state"].toCapsule());
    const at::Tensor v = grads[0].detach();  // dL/dz*: [B, D]

    FixedPointProblem linear;
    linear.f = [&](const at::Tensor& g) {
      torch::AutoGradMode enable(true);
      auto jt_g = torch::autograd::grad({fz}, {z}, {g}, /*retain_graph=*/true)[0];
      return (jt_g + v).detach();
    };
    SolveResult solved;
    {
      torch::NoGradGuard no_grad;
      solved = state->solver->solve(linear, v, state->limits);
    }
    // A non-finite g is passed on: the trainer sees a non-finite gradient norm and skips the step.
    if (state->info) *state->info = solved.info;
    return {solved.z, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor implicit_equilibrium(const TensorMap& f, const at::Tensor& z_star, Solver& backward_solver,
                                const SolveLimits& limits, std::shared_ptr<SolverInfo> backward_info) {
  if (!at::GradMode::is_enabled()) return f(z_star.detach());  // evaluation: no gradient wanted
  auto z = z_star.detach().requires_grad_(true);
  auto fz = f(z);  // one differentiable application of f at the equilibrium
  if (!fz.requires_grad()) return fz;  // nothing upstream needs gradients (e.g. evaluation)
  auto state = c10::make_intrusive<ImplicitState>();
  state->solver = &backward_solver;
  state->limits = limits;
  state->info = std::move(backward_info);
  return ImplicitFunction::apply(fz, z, state);
}

at::Tensor phantom_equilibrium(const TensorMap& f, const at::Tensor& z_star, std::int64_t steps, double damping) {
  at::Tensor z = z_star.detach();
  if (!at::GradMode::is_enabled()) return z;
  for (std::int64_t i = 0; i < steps; ++i) z = (1 - damping) * z + damping * f(z);
  return z;
}

SolveResult unrolled_fixed_point(const TensorMap& f, const at::Tensor& z0, const SolveLimits& limits) {
  const auto start = std::chrono::steady_clock::now();
  SolveResult out;
  at::Tensor z = z0;
  for (std::int64_t i = 0; i < limits.max_iter; ++i) {
    auto fz = f(z);
    out.info.f_evals += 1;
    const bool done = record_iteration(out.info, residuals(z.detach(), fz.detach()), limits.tol);
    z = fz;
    if (done) break;
  }
  out.z = z;
  out.info.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace mhd
