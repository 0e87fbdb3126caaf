// The `early_exit` solver as a wrapper around every other solver plugin, and its trained convergence
// predictor (docs/design.md §3, "Early exit"; mhd/kits/exit_predictor.h).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "mhd/error.h"
#include "mhd/kits/exit_predictor.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "plugin_host/registry.h"
#include "solver_test_maps.h"

namespace {

using solver_test::Overrides;
using solver_test::extra;
using solver_test::max_row_error;
using solver_test::mixed_speed_map;
namespace xp = mhd::exit_predictor;

mhd::PluginRegistry& registry() {
  auto& reg = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_EARLY_EXIT, MHD_PLUGIN_FIXED_POINT, MHD_PLUGIN_ANDERSON, MHD_PLUGIN_BROYDEN,
                           MHD_PLUGIN_NEURAL_ODE, MHD_PLUGIN_LBFGS, MHD_PLUGIN_HYBRID, MHD_PLUGIN_LEARNED})
    reg.load_file(path, mhd::PluginKind::Solver);
  return reg;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides = {}) {
  return solver_test::make_solver_from(registry(), name, overrides);
}



// The true relative residual of every returned row, [B].
at::Tensor true_residual(const mhd::TensorMap& f, const at::Tensor& z) { return mhd::residuals(z, f(z)).rel; }

// ---------------------------------------------------------------- wrapping every solver

class EveryInnerSolver : public ::testing::TestWithParam<const char*> {};

// One body for every solver plugin: wrapped, it reaches the same fixed point at tol, each row exits
// once, the returned residuals are the true ones, and rows that converged early stop being counted.
TEST_P(EveryInnerSolver, ReachesTheFixedPointAndRowsExitAtTol) {
  const auto [f, exact] = mixed_speed_map(16);
  const at::Tensor z0 = at::zeros({4, 16}, at::kDouble);
  const mhd::SolveLimits limits{400, 1e-9};
  const auto result = make_solver("early_exit", {{"inner", std::string(GetParam())}})->solve({f, {}, {}}, z0, limits);

  ASSERT_TRUE(result.info.converged) << GetParam();
  EXPECT_LT(max_row_error(result.z, exact), 1e-7);
  EXPECT_LT(true_residual(f, result.z).max().item<double>(), limits.tol);
  EXPECT_TRUE(at::allclose(result.info.final_rel, true_residual(f, result.z), 1e-6, 1e-12))
      << "reported residuals are those of the returned state";
  const double worst = true_residual(f, result.z).max().item<double>();
  EXPECT_NEAR(result.info.rel_trace.back(), worst, 1e-6 * worst) << "the trace ends at the returned state's residual";
  EXPECT_EQ(extra(result.info, "early_exit_tol_exits"), 4.0);
  const double sample_evals = extra(result.info, "early_exit_sample_evals");
  EXPECT_LE(sample_evals, 4.0 * static_cast<double>(result.info.f_evals));
  EXPECT_GE(extra(result.info, "early_exit_f_evals_saved"), 0.0);
  RecordProperty("sample_evals", std::to_string(sample_evals) + " of " + std::to_string(4 * result.info.f_evals));
}

// The inner solver's iterations stop moving a row once it has exited: the returned state of a row
// that converged early is exactly the state it had when it reached tol, whatever the solver did next.
TEST_P(EveryInnerSolver, AnExitedRowKeepsItsExitState) {
  const auto [f, exact] = mixed_speed_map(16);
  const at::Tensor z0 = at::zeros({4, 16}, at::kDouble);
  const mhd::SolveLimits limits{400, 1e-9};
  at::Tensor first_below;  // row 0 (the fastest) at the first evaluation where it was below tol
  const mhd::TensorMap watched = [&, f = f](const at::Tensor& z) {
    const at::Tensor fz = f(z);
    if (!first_below.defined() && mhd::residuals(z, fz).rel[0].item<double>() < limits.tol) first_below = z[0].clone();
    return fz;
  };
  const auto result = make_solver("early_exit", {{"inner", std::string(GetParam())}})->solve({watched, {}, {}}, z0, limits);
  ASSERT_TRUE(first_below.defined());
  EXPECT_TRUE(at::equal(result.z[0], first_below)) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Solvers, EveryInnerSolver,
                         ::testing::Values("fixed_point", "anderson", "broyden", "neural_ode", "lbfgs", "hybrid", "learned"),
                         [](const auto& p) { return std::string(p.param); });

TEST(EarlyExit, WrappingAndersonSavesSampleEvaluationsOverAndersonAlone) {
  const auto [f, exact] = mixed_speed_map(24);
  const at::Tensor z0 = at::zeros({4, 24}, at::kDouble);
  const mhd::SolveLimits limits{400, 1e-10};
  const auto alone = make_solver("anderson")->solve({f, {}, {}}, z0, limits);
  const auto wrapped = make_solver("early_exit", {{"inner", std::string("anderson")}})->solve({f, {}, {}}, z0, limits);
  ASSERT_TRUE(alone.info.converged);
  ASSERT_TRUE(wrapped.info.converged);
  EXPECT_LT(max_row_error(wrapped.z, exact), 1e-8);
  // Anderson evaluates every row at every iteration; wrapped, the fast rows stop counting.
  EXPECT_LT(extra(wrapped.info, "early_exit_sample_evals"), 4.0 * static_cast<double>(alone.info.f_evals));
  EXPECT_GT(extra(wrapped.info, "early_exit_f_evals_saved"), 0.0);
}

TEST(EarlyExit, UnknownOrSelfInnerIsAOneLineErrorNamingTheKey) {
  for (const char* bad : {"andersen", "early_exit"}) {
    try {
      make_solver("early_exit", {{"inner", std::string(bad)}});
      ADD_FAILURE() << bad << " was accepted";
    } catch (const mhd::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("inner"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
  const auto& manifest = *registry().require(mhd::PluginKind::Solver, "early_exit").manifest;
  ASSERT_TRUE(static_cast<bool>(manifest.check));
  mhd::Params params = mhd::Params::defaults(manifest.params);
  params.set("predictor_path", std::string("/nonexistent/predictor.pt"));
  try {
    manifest.check(params, mhd::ModelDims{});
    ADD_FAILURE() << "a missing predictor file was accepted";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("early_exit: predictor_path:"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- the trained predictor

// Trajectories of fixed-point iteration on contractive affine maps of several speeds.
xp::Trajectories recorded(std::uint64_t seed) {
  xp::Trajectories all;
  auto inner = make_solver("fixed_point");
  for (std::uint64_t k = 0; k < 4; ++k) {
    const auto [f, exact] = mixed_speed_map(16, seed + k);
    all.append(xp::record_trajectories(*inner, {f, {}, {}}, at::zeros({4, 16}, at::kDouble), {200, 1e-8}));
  }
  return all;
}

TEST(ExitPredictor, RecordsLabelsThatMatchOneMoreStep) {
  const auto [f, exact] = mixed_speed_map(16);
  auto inner = make_solver("fixed_point");
  const xp::Trajectories t = xp::record_trajectories(*inner, {f, {}, {}}, at::zeros({4, 16}, at::kDouble), {200, 1e-8});
  ASSERT_GT(t.rows(), 20);
  EXPECT_EQ(t.features.size(1), xp::kFeatures);
  // Every row ends below tol, so each row's last recorded evaluation is labelled 1, and the labels are
  // not all 1 (rows far from tol).
  EXPECT_GT(t.labels.sum().item<double>(), 3.5);
  EXPECT_LT(t.labels.mean().item<double>(), 0.5);
  EXPECT_TRUE(at::isfinite(t.features).all().item<bool>());
}

TEST(ExitPredictor, FitsHeldOutTrajectoriesAndDrivesEarlyExitToFewerEvaluations) {
  torch::manual_seed(0);
  const xp::Trajectories train = recorded(100), held_out = recorded(200);
  xp::Predictor predictor(16);
  xp::FitOptions options;
  options.steps = 300;
  options.threshold = 0.9;
  const xp::FitReport report = xp::fit(predictor, train, held_out, options);
  EXPECT_LT(report.last_loss, 0.5 * report.first_loss);
  EXPECT_GE(report.precision, 0.9) << "held-out precision at p >= 0.9";
  EXPECT_GT(report.recall, 0.3);
  std::printf("fit: loss %.4f -> %.4f, positives %.3f, precision %.3f, recall %.3f\n", report.first_loss,
              report.last_loss, report.positive_share, report.precision, report.recall);

  const std::string path = ::testing::TempDir() + "exit_predictor_test.pt";
  xp::save_predictor(path, predictor);
  const auto [f, exact] = mixed_speed_map(16, 300);
  const at::Tensor z0 = at::zeros({4, 16}, at::kDouble);
  const mhd::SolveLimits limits{200, 1e-8};
  const auto plain = make_solver("early_exit")->solve({f, {}, {}}, z0, limits);
  const auto predicted = make_solver("early_exit", {{"predictor", std::string("exit")},
                                                    {"predictor_path", path},
                                                    {"confidence_threshold", 0.9}})
                             ->solve({f, {}, {}}, z0, limits);
  EXPECT_GT(extra(predicted.info, "early_exit_predicted_exits"), 0.0);
  EXPECT_LT(extra(predicted.info, "early_exit_sample_evals"), extra(plain.info, "early_exit_sample_evals"));
  EXPECT_EQ(extra(predicted.info, "early_exit_check_evals"), 1.0);
  // Honest residuals: a predicted exit's residual is measured at the returned state.
  EXPECT_TRUE(at::allclose(predicted.info.final_rel, true_residual(f, predicted.z), 1e-6, 1e-14));
  EXPECT_EQ(predicted.info.converged, true_residual(f, predicted.z).lt(limits.tol).all().item<bool>());
  EXPECT_LT(max_row_error(predicted.z, exact), 1e-6);
  RecordProperty("fit", "precision " + std::to_string(report.precision) + ", recall " + std::to_string(report.recall) +
                            "; sample evals " + std::to_string(extra(predicted.info, "early_exit_sample_evals")) +
                            " vs " + std::to_string(extra(plain.info, "early_exit_sample_evals")));
  std::remove(path.c_str());
}

TEST(ExitPredictor, AFileThatIsNotAPredictorIsRefusedInOneLine) {
  const std::string path = ::testing::TempDir() + "not_a_predictor.pt";
  {
    FILE* out = std::fopen(path.c_str(), "w");
    ASSERT_NE(out, nullptr);
    std::fputs("hello", out);
    std::fclose(out);
  }
  try {
    xp::load_predictor(path);
    ADD_FAILURE() << "accepted";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not an exit-predictor file"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

}  // namespace
