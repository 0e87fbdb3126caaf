#include "train/meta_train.h"

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/optim/adam.h>

#include "core/model.h"
#include "mhd/error.h"

namespace mhd {
namespace {

// One batch's problem against the frozen model, with its reference fixed point.
struct PreparedBatch {
  DynamicsContext context;
  FixedPointProblem problem;  // f and the positions' inputs; no energy (the solves here do not read it)
  at::Tensor z0;              // [B, P * D] the model's default start
  at::Tensor z_star;          // [B, P * D] the tight solve's result
  bool converged = false;
};

// One batch's forward problem against the frozen model, from the model's default start.
PreparedBatch problem_of(UnifiedModel& model, const at::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  PreparedBatch b;
  UnifiedDynamics& dynamics = model.dynamics();
  const at::Tensor X = model.context(tokens);  // [B, L, D]
  b.context = dynamics.prepare(X);
  b.z0 = dynamics.initial_state(b.context, X).detach();
  b.problem.f = dynamics.solver_map(b.context);
  b.problem.context = dynamics.position_inputs(b.context, X);  // [B, P, D]
  return b;
}

PreparedBatch prepare(UnifiedModel& model, const at::Tensor& tokens, const MetaTrainOptions& options) {
  torch::NoGradGuard no_grad;
  PreparedBatch b = problem_of(model, tokens);
  learned::SolveOptions plain;
  plain.lam = options.lam;
  FixedPointProblem reference = b.problem;
  reference.context = at::Tensor();  // plain Anderson from the model's z0
  const SolveResult solved = learned::accelerated_solve("meta-train reference", nullptr, plain, reference, b.z0,
                                                        options.reference);
  b.z_star = solved.z.detach();
  b.converged = solved.info.converged;
  return b;
}

at::Tensor relative_distance(const at::Tensor& z, const at::Tensor& z_star) {  // [B, D] each -> [B]
  return (z - z_star).norm(2, {1}) / (z_star.norm(2, {1}) + 1e-8);
}

// The unrolled loss of one batch (docs: meta_train.h), with a graph into the accelerator.
at::Tensor unrolled_loss(learned::Accelerator& accelerator, const PreparedBatch& b, const MetaTrainOptions& options) {
  at::Tensor z = accelerator.initial(b.z0, b.problem.context, "meta-train");  // [B, P * D]
  const at::Tensor init_loss = relative_distance(z, b.z_star).mean();
  learned::History history(accelerator.dims().m);
  at::Tensor steps_loss = at::zeros({}, init_loss.options());
  for (std::int64_t k = 0; k < options.unroll; ++k) {
    const at::Tensor fz = b.problem.f(z);
    history.push(z, fz);
    z = learned::accelerated_step(history, &accelerator, options.lam);
    steps_loss = steps_loss + relative_distance(z, b.z_star).mean();
  }
  return init_loss + steps_loss / static_cast<double>(std::max<std::int64_t>(options.unroll, 1));
}

// Runs `solve` on every held-out batch and averages what SolveStats holds.
// `distance` (nullable): the largest ||z - z*|| / ||z*|| of the returned states.
template <typename Solve>
SolveStats measure(std::vector<PreparedBatch>& batches, Solve&& solve, double* distance = nullptr) {
  SolveStats s;
  for (auto& b : batches) {
    const SolveResult r = solve(b);
    if (distance != nullptr) *distance = std::max(*distance, relative_distance(r.z, b.z_star).max().item<double>());
    s.mean_iterations += static_cast<double>(r.info.iterations);
    s.converged_share += r.info.converged ? 1.0 : 0.0;
    s.mean_wall_ms += r.info.wall_ms;
  }
  const double n = static_cast<double>(std::max<std::size_t>(batches.size(), 1));
  s.mean_iterations /= n;
  s.converged_share /= n;
  s.mean_wall_ms /= n;
  return s;
}

// The model's parameters frozen (no gradient) while in scope, and eval mode; restored after.
class FrozenModel {
 public:
  explicit FrozenModel(UnifiedModel& model) : model_(model), was_training_(model.is_training()) {
    model_.eval();
    for (auto& p : model_.parameters()) {
      flags_.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
  }
  ~FrozenModel() {
    auto params = model_.parameters();
    for (std::size_t i = 0; i < params.size() && i < flags_.size(); ++i) params[i].requires_grad_(flags_[i]);
    model_.train(was_training_);
  }
  FrozenModel(const FrozenModel&) = delete;
  FrozenModel& operator=(const FrozenModel&) = delete;

 private:
  UnifiedModel& model_;
  bool was_training_;
  std::vector<bool> flags_;
};

}  // namespace

MetaTrainReport meta_train(UnifiedModel& model, learned::Accelerator& accelerator,
                           const std::vector<at::Tensor>& train_tokens, const std::vector<at::Tensor>& eval_tokens,
                           const MetaTrainOptions& options, Solver* baseline,
                           const std::function<void(std::int64_t, double)>& on_step) {
  if (!model.deq_enabled()) throw Error("meta-train: the model has no DEQ solve ([model] deq = false)");
  if (train_tokens.empty() || eval_tokens.empty())
    throw Error("meta-train: needs at least one training and one held-out batch");
  FrozenModel frozen(model);
  std::vector<PreparedBatch> train, held_out;
  for (const auto& t : train_tokens) train.push_back(prepare(model, t, options));
  for (const auto& t : eval_tokens) held_out.push_back(prepare(model, t, options));
  MetaTrainReport report;
  double converged = 0.0;
  for (const auto* set : {&train, &held_out})
    for (const auto& b : *set) converged += b.converged ? 1.0 : 0.0;
  report.reference_converged_share = converged / static_cast<double>(train.size() + held_out.size());

  learned::SolveOptions solve_options;
  solve_options.lam = options.lam;
  solve_options.source = "meta-train";
  auto with = [&](learned::Accelerator* a) {
    return [&, a](PreparedBatch& b) {
      return learned::accelerated_solve("learned", a, solve_options, b.problem, b.z0, options.measure);
    };
  };
  if (baseline != nullptr)
    report.baseline = measure(held_out, [&](PreparedBatch& b) { return baseline->solve(b.problem, b.z0, options.measure); });
  accelerator.eval();
  report.before = measure(held_out, with(&accelerator));

  accelerator.train();
  torch::optim::Adam adam(accelerator.parameters(), torch::optim::AdamOptions(options.lr));
  for (std::int64_t step = 0; step < options.steps; ++step) {
    const PreparedBatch& b = train[static_cast<std::size_t>(step) % train.size()];
    adam.zero_grad();
    const at::Tensor loss = unrolled_loss(accelerator, b, options);
    loss.backward();
    adam.step();
    const double value = loss.item<double>();
    if (step == 0) report.first_loss = value;
    report.last_loss = value;
    if (on_step) on_step(step + 1, value);
  }
  accelerator.eval();

  report.after = measure(held_out, with(&accelerator), &report.max_distance_to_reference);
  return report;
}

ExitPredictorReport fit_exit_predictor(UnifiedModel& model, exit_predictor::Predictor& predictor,
                                       const std::vector<at::Tensor>& train_tokens,
                                       const std::vector<at::Tensor>& eval_tokens, Solver& inner,
                                       const ExitPredictorOptions& options) {
  if (!model.deq_enabled()) throw Error("meta-train: the model has no DEQ solve ([model] deq = false)");
  if (train_tokens.empty() || eval_tokens.empty())
    throw Error("meta-train: needs at least one training and one held-out batch");
  FrozenModel frozen(model);
  auto record = [&](const std::vector<at::Tensor>& tokens) {
    exit_predictor::Trajectories all;
    for (const auto& t : tokens) {
      const PreparedBatch b = problem_of(model, t);
      all.append(exit_predictor::record_trajectories(inner, b.problem, b.z0, options.limits));
    }
    return all;
  };
  const exit_predictor::Trajectories train = record(train_tokens), held_out = record(eval_tokens);
  ExitPredictorReport report;
  report.train_rows = train.rows();
  report.held_out_rows = held_out.rows();
  report.fit = exit_predictor::fit(predictor, train, held_out, options.fit);
  return report;
}

EarlyExitStats measure_early_exit(UnifiedModel& model, const std::vector<at::Tensor>& tokens, Solver& solver,
                                  const SolveLimits& limits) {
  FrozenModel frozen(model);
  EarlyExitStats s;
  for (const auto& t : tokens) {
    const PreparedBatch b = problem_of(model, t);
    torch::NoGradGuard no_grad;
    const SolveResult r = solver.solve(b.problem, b.z0, limits);
    for (const auto& [key, value] : r.info.extra)
      if (key == "early_exit_sample_evals") s.sample_evals += value;
    s.f_evals += static_cast<double>(r.info.f_evals);
    s.converged_share += r.info.converged ? 1.0 : 0.0;
    s.worst_rel = std::max(s.worst_rel, r.info.final_rel.max().item<double>());
    s.mean_wall_ms += r.info.wall_ms;
  }
  const double n = static_cast<double>(std::max<std::size_t>(tokens.size(), 1));
  s.sample_evals /= n;
  s.f_evals /= n;
  s.converged_share /= n;
  s.mean_wall_ms /= n;
  return s;
}

}  // namespace mhd
