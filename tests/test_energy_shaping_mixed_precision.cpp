// The `energy_shaping` and `mixed_precision` optimizations (docs/design.md §3): the curvature
// estimates against the exact Hessian statistics of quadratic energies, the saddle penalty's sign,
// the objective term's gradient, training with it; mixed precision's reduced evaluations, its
// float32 converged check, and its fixed point against a float32 solve; both with every solver.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/optimization.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "train/trainer.h"
#include "model_study.h"
#include "test_plugins_loaded.h"

namespace {

using Overrides = std::map<std::string, mhd::ParamValue>;

mhd::PluginRegistry& registry() {
  auto& reg = registry_with_all_plugins();
  for (const char* path : {MHD_PLUGIN_ENERGY_SHAPING, MHD_PLUGIN_MIXED_PRECISION, MHD_PLUGIN_CACHING,
                           MHD_PLUGIN_BROYDEN, MHD_PLUGIN_HYBRID, MHD_PLUGIN_LBFGS, MHD_PLUGIN_EARLY_EXIT,
                           MHD_PLUGIN_NEURAL_ODE})
    reg.load_file(path);
  return reg;
}

std::shared_ptr<mhd::Optimization> make(const std::string& name, const Overrides& overrides) {
  auto& reg = registry();
  mhd::Params params = mhd::Params::defaults(reg.require(mhd::PluginKind::Optimization, name).manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return reg.make<mhd::Optimization>(name, params);
}

// A = U diag(lambda) U^T with a random orthogonal U: [S, S], float64.
at::Tensor symmetric_with(const at::Tensor& lambda) {
  at::manual_seed(3);
  const auto n = lambda.size(0);
  const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({n, n}, at::kDouble)));
  return u.matmul(at::diag(lambda)).matmul(u.t());
}

// E_b(z) = 1/2 z_b^T A z_b: Hessian A for every row.
mhd::TensorMap quadratic(const at::Tensor& A) {
  return [A](const at::Tensor& z) { return 0.5 * (z.matmul(A) * z).sum(1); };
}

std::map<std::string, double> shaping_on(const at::Tensor& A, const Overrides& overrides, std::int64_t rows = 64) {
  auto shaping = make("energy_shaping", overrides);
  at::manual_seed(5);
  const at::Tensor z = at::randn({rows, A.size(0)}, at::kDouble);
  const at::Tensor term = shaping->objective_term(quadratic(A), z);
  EXPECT_TRUE(term.defined());
  auto m = shaping->metrics();
  m["term"] = term.item<double>();
  return m;
}

// Hutchinson on a known spectrum: the mean eigenvalue, their spread and the mean squared distance
// from the target (the curvature penalty) match the exact values of A's eigenvalues.
TEST(EnergyShaping, CurvatureEstimatesMatchTheExactHessianStatistics) {
  const at::Tensor lambda = at::linspace(0.2, 3.0, 12, at::kDouble);
  const double c = 1.0;
  const auto m = shaping_on(symmetric_with(lambda), {{"probes", std::int64_t{64}}, {"curvature_weight", 1.0},
                                                     {"saddle_weight", 0.0}, {"target_curvature", c}});
  const double mean = lambda.mean().item<double>(), spread = lambda.std(/*unbiased=*/false).item<double>();
  const double deviation = (lambda - c).pow(2).mean().item<double>();
  RecordProperty("estimates", std::to_string(m.at("shaping_curvature_mean")) + " " +
                                  std::to_string(m.at("shaping_curvature_spread")) + " " +
                                  std::to_string(m.at("shaping_curvature_penalty")));
  EXPECT_NEAR(m.at("shaping_curvature_mean"), mean, 0.03 * mean);
  EXPECT_NEAR(m.at("shaping_curvature_spread"), spread, 0.05 * spread);
  EXPECT_NEAR(m.at("shaping_curvature_penalty"), deviation, 0.05 * deviation);
  EXPECT_NEAR(m.at("term"), deviation, 0.05 * deviation) << "the term is curvature_weight x the penalty";
  EXPECT_EQ(m.at("shaping_saddle_penalty"), 0.0) << "A is positive definite";
}

// Negative control: H = c I has no spread, so the penalty and the spread are zero for every probe.
TEST(EnergyShaping, NoPenaltyWhenEveryEigenvalueIsTheTarget) {
  const auto m = shaping_on(2.5 * at::eye(12, at::kDouble), {{"curvature_weight", 1.0}, {"target_curvature", 2.5}});
  EXPECT_NEAR(m.at("shaping_curvature_penalty"), 0.0, 1e-20);
  EXPECT_NEAR(m.at("shaping_curvature_spread"), 0.0, 1e-6);
  EXPECT_NEAR(m.at("shaping_curvature_mean"), 2.5, 1e-12);
}

// every = 3 shapes the first objective of each three and adds no term to the others; the metrics
// average the shaped calls only.
TEST(EnergyShaping, EveryNthObjectiveIsShaped) {
  auto shaping = make("energy_shaping", {{"curvature_weight", 1.0}, {"every", std::int64_t{3}}});
  const at::Tensor A = 2.0 * at::eye(6, at::kDouble);
  const at::Tensor z = at::randn({8, 6}, at::kDouble);
  std::vector<bool> shaped;
  for (int call = 0; call < 7; ++call) shaped.push_back(shaping->objective_term(quadratic(A), z).defined());
  EXPECT_EQ(shaped, (std::vector<bool>{true, false, false, true, false, false, true}));
  const auto m = shaping->metrics();
  EXPECT_NEAR(m.at("shaping_curvature_mean"), 2.0, 1e-12);
  EXPECT_NEAR(m.at("shaping_curvature_penalty"), 1.0, 1e-12);  // (2 - 1)^2 for every eigenvalue
}

// The saddle penalty is positive exactly when the Hessian has a negative eigenvalue: the Krylov
// space of dimension S is the whole space, so the smallest Ritz value is lambda_min.
TEST(EnergyShaping, SaddlePenaltyIsPositiveExactlyWithNegativeCurvature) {
  const Overrides keys{{"curvature_weight", 0.0}, {"saddle_weight", 1.0}, {"lanczos_steps", std::int64_t{6}}};
  const auto convex = shaping_on(symmetric_with(at::tensor({0.1, 0.5, 1.0, 2.0, 3.0, 4.0}, at::kDouble)), keys, 8);
  EXPECT_EQ(convex.at("shaping_saddle_penalty"), 0.0);
  EXPECT_EQ(convex.at("shaping_negative_share"), 0.0);
  EXPECT_NEAR(convex.at("shaping_ritz_min"), 0.1, 1e-8);
  const auto saddle = shaping_on(symmetric_with(at::tensor({-0.5, 0.5, 1.0, 2.0, 3.0, 4.0}, at::kDouble)), keys, 8);
  EXPECT_NEAR(saddle.at("shaping_saddle_penalty"), 0.5, 1e-8);
  EXPECT_EQ(saddle.at("shaping_negative_share"), 1.0);
  EXPECT_NEAR(saddle.at("term"), 0.5, 1e-8);
}

// The term's gradient reaches the energy's parameters and equals a central difference.
TEST(EnergyShaping, ObjectiveTermGradientReachesTheParameters) {
  at::manual_seed(9);
  const std::int64_t S = 6;
  at::Tensor W = (at::randn({S, S}, at::kDouble) / std::sqrt(6.0)).requires_grad_(true);
  auto energy_of = [](const at::Tensor& w) -> mhd::TensorMap {
    // E = 1/2 ||W z||^2 - 0.3 ||z||^2: Hessian W^T W - 0.6 I, indefinite, so both terms act.
    return [w](const at::Tensor& z) { return 0.5 * z.matmul(w.t()).pow(2).sum(1) - 0.3 * z.pow(2).sum(1); };
  };
  auto shaping = make("energy_shaping", {{"curvature_weight", 1.0}, {"saddle_weight", 1.0}, {"probes", std::int64_t{3}}});
  const at::Tensor z = at::randn({4, S}, at::kDouble);
  auto term_at = [&](const at::Tensor& w) {
    at::manual_seed(21);  // the same probes every time
    return shaping->objective_term(energy_of(w), z);
  };
  const at::Tensor term = term_at(W);
  ASSERT_TRUE(term.requires_grad());
  term.backward();
  ASSERT_TRUE(W.grad().defined());
  EXPECT_GT(W.grad().abs().max().item<double>(), 1e-3);
  const double h = 1e-6;
  at::NoGradGuard no_grad;
  for (const auto& [i, j] : std::vector<std::pair<int, int>>{{0, 0}, {2, 3}, {5, 1}}) {
    at::Tensor plus = W.detach().clone(), minus = W.detach().clone();
    plus[i][j] += h;
    minus[i][j] -= h;
    const double fd = (term_at(plus).item<double>() - term_at(minus).item<double>()) / (2 * h);
    EXPECT_NEAR(W.grad()[i][j].item<double>(), fd, 1e-5 * std::max(1.0, std::abs(fd)));
  }
}

// The term holds no graph of the energy: its Hessian-vector products are differentiated inside
// objective_term, one at a time, so what the trainer keeps until loss.backward() is one multiply per
// parameter — not probes x lanczos_steps double-backward graphs through the whole dynamics (7.8 GB
// on the ablation's small model when they were kept). Checked by a tensor every one of E's graphs
// saves (t = tanh(W z + b), which tanh's and the square's backwards keep): freed once the term is returned, whatever the
// number of probes and Krylov steps; and the term's graph stays a few nodes per parameter.
TEST(EnergyShaping, TheTermKeepsNoGraphOfTheEnergy) {
  at::manual_seed(9);
  const std::int64_t S = 8;
  const at::Tensor W = (at::randn({S, S}, at::kDouble) / std::sqrt(8.0)).requires_grad_(true);
  const at::Tensor b = (0.1 * at::randn({S}, at::kDouble)).requires_grad_(true);
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> saved;
  const mhd::TensorMap energy = [&](const at::Tensor& z) {
    const at::Tensor t = at::tanh(z.matmul(W.t()) + b);  // [B, S]
    saved.push_back(t.storage().getWeakStorageImpl());
    return t.pow(2).sum(1) + 0.5 * z.pow(2).sum(1);  // curvature varies with z: H depends on W, b
  };
  const at::Tensor z = at::randn({4, S}, at::kDouble);
  std::vector<std::int64_t> nodes;
  for (const auto& [probes, steps] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 1}, {4, 6}}) {
    auto shaping = make("energy_shaping", {{"probes", probes}, {"lanczos_steps", steps}, {"saddle_weight", 1.0}});
    saved.clear();
    const at::Tensor term = shaping->objective_term(energy, z);
    ASSERT_TRUE(term.defined() && term.requires_grad());
    ASSERT_FALSE(saved.empty());
    for (const auto& w : saved) EXPECT_TRUE(w.expired()) << "the energy's graph outlived objective_term";
    std::int64_t count = 0;  // nodes of the term's graph
    std::vector<torch::autograd::Node*> stack{term.grad_fn().get()};
    std::set<torch::autograd::Node*> seen;
    while (!stack.empty()) {
      auto* node = stack.back();
      stack.pop_back();
      if (!node || !seen.insert(node).second) continue;
      ++count;
      for (const auto& e : node->next_edges()) stack.push_back(e.function.get());
    }
    nodes.push_back(count);
    EXPECT_LE(count, 16) << "a few nodes per parameter (W, b)";
    term.backward();
    EXPECT_GT(W.grad().abs().max().item<double>(), 0.0);
    EXPECT_GT(b.grad().abs().max().item<double>(), 0.0);
    W.mutable_grad().reset();
    b.mutable_grad().reset();
  }
  EXPECT_EQ(nodes[0], nodes[1]) << "independent of probes x lanczos_steps";
}

// The quickstart's model (d_model 64, mamba + hopfield, anderson, contractive) at a smaller batch.
std::string quickstart_study(const std::string& extra) {
  return R"([study]
name = "shaping_quickstart"
[task]
kind = "associative_recall"
vocab_size = 32
num_pairs = 4
seq_len = 24
num_queries = 4
[model]
d_model = 64
n_layers = 2
[backbone]
plugin = "mamba"
d_state = 16
[memory]
plugin = "hopfield"
size = 256
beta = 2.0
[solver]
plugin = "anderson"
max_iter = 15
tol = 1e-3
[backward]
mode = "implicit"
solver = "anderson"
max_iter = 15
tol = 1e-4
[optimizations.contractive]
factor = 0.9
damping = 0.5
)" + extra;
}

TEST(EnergyShaping, TrainingTheQuickstartModelIsFiniteAndLogsTheMetrics) {
  const std::string text = quickstart_study(
      "[optimizations.energy_shaping]\ncurvature_weight = 1e-3\nsaddle_weight = 1e-2\n"
      "[train]\nsteps = 2\nbatch = 4\neval_every = 2\neval_batches = 1\n");
  const auto study = mhd::parse_study(text, "shaping.toml", registry());
  std::map<std::string, double> seen;
  mhd::MetricSink sink;
  sink.metric = [&](std::int64_t, const std::string& name, double value) { seen[name] = value; };
  const auto result = mhd::train_trial(study.trials.at(0), registry(), sink);
  ASSERT_EQ(result.status, mhd::TrialStatus::Done) << result.error;
  for (const char* name : {"objective_optimizations", "shaping_curvature_mean", "shaping_curvature_spread",
                           "shaping_negative_share", "shaping_curvature_penalty", "shaping_saddle_penalty", "loss"}) {
    ASSERT_TRUE(seen.count(name)) << name;
    EXPECT_TRUE(std::isfinite(seen[name])) << name;
  }
  EXPECT_GT(seen["shaping_curvature_penalty"], 0.0);
}

// --- mixed_precision ---

// A linear map that records the dtype its matrix product ran in.
struct DtypeProbe {
  std::vector<at::ScalarType> seen;
  mhd::TensorMap map(const at::Tensor& W) {
    return [this, W](const at::Tensor& z) {
      const at::Tensor y = at::linear(z, W);
      seen.push_back(y.scalar_type());
      return 0.5 * y + 1.0;
    };
  }
};

TEST(MixedPrecision, TheReducedShareOfTheSolveRunsInBfloat16) {
  at::manual_seed(1);
  const at::Tensor W = at::randn({32, 32}) / 8.0, z = at::randn({4, 32}) * 10.0;  // far from the fixed point
  for (const double share : {0.7, 0.0}) {  // 0: the negative control, never reduced
    auto mixed = make("mixed_precision", {{"reduced_share", share}});
    DtypeProbe probe;
    const mhd::TensorMap f = mixed->wrap_solve(probe.map(W), {10, 1e-3});
    at::NoGradGuard no_grad;
    for (int i = 0; i < 10; ++i) EXPECT_EQ(f(z).scalar_type(), at::kFloat) << "the solver always sees float32";
    const std::int64_t reduced = share > 0 ? 7 : 0;
    ASSERT_EQ(probe.seen.size(), 10u);
    for (std::int64_t i = 0; i < 10; ++i)
      EXPECT_EQ(probe.seen[i], i < reduced ? at::kBFloat16 : at::kFloat) << "evaluation " << i << " share " << share;
    EXPECT_EQ(mixed->metrics()["mixed_reduced_evals"], static_cast<double>(reduced));
  }
}

// Near the fixed point a reduced value is redone in float32 and the solve stays float32: a value the
// stopping rule could accept never comes from bfloat16. With gradients on, f runs in float32.
TEST(MixedPrecision, NearTolAndWithGradientsTheMapIsFloat32) {
  at::manual_seed(2);
  const at::Tensor W = at::randn({32, 32}) / 8.0;
  auto mixed = make("mixed_precision", {});
  DtypeProbe probe;
  const mhd::TensorMap inner = probe.map(W);
  const mhd::TensorMap f = mixed->wrap_solve(inner, {10, 1e-2});
  at::Tensor z = at::zeros({2, 32});
  {
    at::NoGradGuard no_grad;
    for (int i = 0; i < 200; ++i) z = inner(z);  // the float32 fixed point
    probe.seen.clear();
    const at::Tensor fz = f(z);  // bfloat16, then again in float32
    EXPECT_TRUE(at::allclose(fz, inner(z)));
    EXPECT_EQ(f(z * 3.0).scalar_type(), at::kFloat);
  }
  EXPECT_EQ(probe.seen, (std::vector<at::ScalarType>{at::kBFloat16, at::kFloat, at::kFloat, at::kFloat}));
  EXPECT_EQ(mixed->metrics()["mixed_guard_switches"], 1.0);
  const mhd::TensorMap g = mixed->wrap_solve(inner, {10, 1e-3});
  probe.seen.clear();
  g(z * 3.0);  // gradients enabled, z not the solver's leaf (unrolled training): float32
  EXPECT_EQ(probe.seen, std::vector<at::ScalarType>{at::kFloat});
  // A solver differentiating f at its own iterate (L-BFGS's J^T r: a fresh leaf that requires grad)
  // gets the reduced evaluation, and its gradient with respect to that leaf.
  probe.seen.clear();
  const at::Tensor leaf = (z * 3.0).detach().requires_grad_(true);
  const at::Tensor fz = g(leaf);
  EXPECT_EQ(probe.seen, std::vector<at::ScalarType>{at::kBFloat16});
  EXPECT_EQ(fz.scalar_type(), at::kFloat);
  ASSERT_TRUE(fz.requires_grad());
  const at::Tensor vjp = torch::autograd::grad({fz.sum()}, {leaf})[0];
  EXPECT_TRUE(at::allclose(vjp, at::ones_like(z).matmul(0.5 * W), 1e-2, 1e-2)) << "d/dz sum(0.5 W z + 1)";
}

// Every solver plugin of this build (the scan finds any the build made; tests/
// energy_shaping_mixed_precision.cmake makes the test depend on the in-tree ones), one test body:
// on a contractive map the first reduced_share of the solve's evaluations runs in bfloat16 — some
// do, whether the solver evaluates f without a graph or differentiates it (L-BFGS, hybrid) — and the
// solve still reaches tol, judged on a float32 evaluation: the returned state's residual recomputed
// in float32 is below tol and the last evaluation the solver saw was float32.
TEST(MixedPrecision, EverySolverRunsReducedEvaluationsAndReachesTol) {
  auto& reg = registry();
  reg.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins/solver");
  std::vector<std::string> solvers;
  for (const auto* p : reg.plugins(mhd::PluginKind::Solver)) solvers.push_back(p->manifest->name);
  for (const char* name : {"fixed_point", "anderson", "broyden", "hybrid", "lbfgs", "early_exit", "neural_ode", "learned"})
    EXPECT_NE(std::find(solvers.begin(), solvers.end(), name), solvers.end()) << name << " not found";
  const mhd::SolveLimits limits{40, 1e-4};
  for (const auto& name : solvers) {
    SCOPED_TRACE(name);
    at::manual_seed(6);
    // f(z) = tanh(W z + b), ||W|| = 0.6: a contraction; its product runs in bfloat16 under autocast.
    at::Tensor W = at::randn({32, 32});
    W = W * (0.6 / at::linalg_svdvals(W).max().item<double>());
    const at::Tensor b = at::randn({4, 32});
    std::vector<at::ScalarType> seen;
    const mhd::TensorMap f = [&](const at::Tensor& z) {
      const at::Tensor y = at::addmm(b, z, W.t());
      seen.push_back(y.scalar_type());
      return at::tanh(y);
    };
    auto mixed = make("mixed_precision", {});
    auto solver = reg.make<mhd::Solver>(
        name, mhd::Params::defaults(reg.require(mhd::PluginKind::Solver, name).manifest->params));
    mhd::FixedPointProblem problem;
    problem.f = mixed->wrap_solve(f, limits);
    mhd::SolveResult out;
    {
      at::NoGradGuard no_grad;  // as the model runs the forward solve
      out = solver->solve(problem, at::zeros({4, 32}), limits);
    }
    auto m = mixed->metrics();
    RecordProperty(name, std::to_string(m["mixed_reduced_evals"]) + " reduced, " +
                             std::to_string(m["mixed_float32_evals"]) + " float32, " +
                             std::to_string(out.info.iterations) + " iterations");
    EXPECT_GT(m["mixed_reduced_evals"], 0.0);
    EXPECT_LE(m["mixed_reduced_evals"], 28.0) << "round(0.7 * max_iter)";
    EXPECT_GT(m["mixed_float32_evals"], 0.0);
    EXPECT_TRUE(out.info.converged);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back(), at::kFloat) << "the converged check reads a float32 evaluation";
    at::NoGradGuard no_grad;
    const double rel = mhd::residuals(out.z, f(out.z)).rel.max().item<double>();
    EXPECT_LE(rel, limits.tol);
    EXPECT_LE(out.info.final_rel.max().item<double>(), limits.tol);
  }
}

// The quickstart's model: the mixed solve reaches tol, converged refers to the float32 residual, and
// its fixed point matches the float32 solve's.
TEST(MixedPrecision, TheQuickstartModelReachesTolAndTheFloat32FixedPoint) {
  const std::string common = "[solver]\nplugin = \"anderson\"\nmax_iter = 40\ntol = 1e-5\n[train]\nsteps = 1\n";
  std::vector<at::Tensor> z;
  for (const bool mixed : {false, true}) {
    std::string text = quickstart_study(mixed ? "[optimizations.mixed_precision]\nreduced_share = 0.7\n" : "");
    text.replace(text.find("[solver]"), text.find("[backward]") - text.find("[solver]"), "");
    const auto trial = mhd::parse_study(text + common, "mixed.toml", registry()).trials.at(0);
    torch::manual_seed(0);
    mhd::UnifiedModel model(mhd::model_options(trial, 32), registry());
    model.eval();
    at::manual_seed(4);
    const at::Tensor tokens = at::randint(32, {4, 24}, at::kLong);
    at::NoGradGuard no_grad;
    const auto out = model.forward(tokens);
    ASSERT_TRUE(out.forward_info.converged) << (mixed ? "mixed" : "float32");
    // The returned state's residual recomputed in float32 with the model's own map.
    const mhd::TensorMap f = model.dynamics().solver_map(out.context);
    EXPECT_LE(out.forward_info.final_rel.max().item<double>(), 1e-5);
    EXPECT_LE(mhd::residuals(out.z_star, f(out.z_star)).rel.max().item<double>(), 1e-5);
    if (mixed) {
      auto m = model.optimizations().back()->metrics();
      RecordProperty("evals", std::to_string(m["mixed_reduced_evals"]) + " reduced, " +
                                  std::to_string(m["mixed_float32_evals"]) + " float32");
      EXPECT_GT(m["mixed_reduced_evals"], 0.0);
      EXPECT_GT(m["mixed_float32_evals"], 0.0);
    }
    z.push_back(out.z_star);
  }
  const double difference = (z[1] - z[0]).norm().item<double>() / z[0].norm().item<double>();
  RecordProperty("relative_difference", std::to_string(difference));
  EXPECT_LT(difference, 1e-3);
}

// Every solver trains a step with both plugins and the other optimizations at once.
TEST(EnergyShapingMixedPrecision, WorkWithEverySolverAndOptimization) {
  for (const char* solver : {"anderson", "fixed_point", "broyden", "hybrid", "lbfgs", "early_exit", "neural_ode"}) {
    const std::string text =
        model_study("every_solver", std::string("plugin = \"") + solver + "\"\nmax_iter = 20\ntol = 1e-3",
                    "solver = \"anderson\"\nmax_iter = 20\ntol = 1e-4") +
        "batch = 4\neval_batches = 1\n[optimizations.contractive]\n[optimizations.caching]\n"
        "[optimizations.energy_shaping]\n[optimizations.mixed_precision]\n";
    const auto study = mhd::parse_study(text, "every.toml", registry());
    std::map<std::string, double> seen;
    mhd::MetricSink sink;
    sink.metric = [&](std::int64_t, const std::string& name, double value) { seen[name] = value; };
    const auto result = mhd::train_trial(study.trials.at(0), registry(), sink);
    EXPECT_EQ(result.status, mhd::TrialStatus::Done) << solver << ": " << result.error;
    EXPECT_TRUE(std::isfinite(seen["loss"])) << solver;
    // lbfgs and hybrid differentiate f inside the solve (J^T r by autograd): reduced all the same.
    EXPECT_GT(seen["mixed_reduced_evals"], 0.0) << solver;
    EXPECT_TRUE(seen.count("shaping_curvature_mean")) << solver;
  }
}

// Parameters are validated by their schema: the error names the key.
TEST(EnergyShapingMixedPrecision, BadParametersNameTheKey) {
  const std::string base = model_study("bad", "plugin = \"anderson\"", "");
  for (const auto& [table, key] : std::vector<std::pair<std::string, std::string>>{
           {"[optimizations.mixed_precision]\nreduced_share = 1.5\n", "reduced_share"},
           {"[optimizations.mixed_precision]\ndtype = \"int8\"\n", "dtype"},
           {"[optimizations.energy_shaping]\nprobes = 0\n", "probes"},
           {"[optimizations.energy_shaping]\ncurvature_weight = -1.0\n", "curvature_weight"}}) {
    try {
      mhd::parse_study(base + table, "bad.toml", registry());
      ADD_FAILURE() << "accepted " << table;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
}

}  // namespace
