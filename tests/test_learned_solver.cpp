// The `learned` solver and `mhd meta-train`'s training (docs/design.md §3, "Learned solver"):
// meta-training on a tiny frozen model cuts the iterations to tol on held-out batches against the
// untrained accelerator (plain Anderson), the file round-trips, bad files fail in one line, and the
// trained solver reaches Anderson's fixed point.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/utils.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/error.h"
#include "mhd/kits/learned_accelerator.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "model_study.h"
#include "plugin_host/registry.h"
#include "solver_test_maps.h"
#include "study/study.h"
#include "test_plugins_loaded.h"
#include "train/meta_train.h"

namespace {

using solver_test::extra;

mhd::PluginRegistry& registry() {
  auto& reg = registry_with_all_plugins();
  reg.load_file(MHD_PLUGIN_LEARNED);
  return reg;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const std::string& path = "") {
  auto& reg = registry();
  mhd::Params params = mhd::Params::defaults(reg.require(mhd::PluginKind::Solver, name).manifest->params);
  if (!path.empty()) params.set("path", path);
  return reg.make_solver(name, params);
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("mhd_learned_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Damped (f <- 0.5 z + 0.5 f, as in studies/lm_bytes.toml): a solve of several iterations, where a
// start closer to z* has iterations to save (the undamped tiny model reaches tol in ~4).
const std::string kDamped = "[optimizations.contractive]\nfactor = 0.9\ndamping = 0.5\n";

// The tiny model of model_study.h (d_model 16, mamba + hopfield), untrained and frozen, with
// random token batches: 4 for training, 2 held out (other seeds).
struct TinySetup {
  std::unique_ptr<mhd::UnifiedModel> model;
  std::vector<at::Tensor> train, held_out;
};

TinySetup tiny_setup() {
  const auto study = model_study("learned_test", "plugin = \"anderson\"\nmax_iter = 60\ntol = 1e-4", "") + kDamped;
  const auto trial = mhd::parse_study(study, "learned_test.toml", registry()).trials.front();
  TinySetup s;
  torch::manual_seed(0);
  s.model = std::make_unique<mhd::UnifiedModel>(mhd::model_options(trial, 16), registry());
  s.model->eval();
  at::manual_seed(3);
  for (int i = 0; i < 4; ++i) s.train.push_back(at::randint(16, {8, 8}, at::kLong));
  for (int i = 0; i < 2; ++i) s.held_out.push_back(at::randint(16, {8, 8}, at::kLong));
  return s;
}

mhd::MetaTrainOptions tiny_options() {
  mhd::MetaTrainOptions o;
  o.steps = 150;
  o.unroll = 5;
  o.lr = 3e-3;
  o.measure = {60, 1e-4};
  o.reference = {300, 1e-6};
  return o;
}

mhd::learned::AcceleratorDims tiny_dims() {
  mhd::learned::AcceleratorDims d;
  d.d_model = 16;
  d.hidden = 32;
  d.m = 5;
  return d;
}

// ---------------------------------------------------------------- meta-training

TEST(LearnedSolver, MetaTrainingCutsIterationsOnHeldOutBatchesAndKeepsTheFixedPoint) {
  TinySetup s = tiny_setup();
  torch::manual_seed(1);
  mhd::learned::Accelerator accelerator(tiny_dims());
  auto anderson = make_solver("anderson");
  const auto report = mhd::meta_train(*s.model, accelerator, s.train, s.held_out, tiny_options(), anderson.get());
  RecordProperty("iterations", std::to_string(report.baseline.mean_iterations) + " anderson, " +
                                   std::to_string(report.before.mean_iterations) + " untrained, " +
                                   std::to_string(report.after.mean_iterations) + " trained");
  EXPECT_EQ(report.reference_converged_share, 1.0);
  EXPECT_LT(report.last_loss, report.first_loss);
  // The untrained accelerator is Anderson: same iterations as the anderson plugin (its own code).
  EXPECT_EQ(report.before.mean_iterations, report.baseline.mean_iterations);
  EXPECT_EQ(report.before.converged_share, 1.0);
  EXPECT_EQ(report.after.converged_share, 1.0);
  // The claim: fewer iterations to tol on batches it was not trained on.
  EXPECT_LT(report.after.mean_iterations, report.before.mean_iterations - 1.0);
  // Still Anderson's fixed point: the trained solve's result is within ~tol of the tight reference.
  EXPECT_LT(report.max_distance_to_reference, 1e-3);

  // End to end: the model built with [solver] plugin = "learned" and the saved file gives the solver
  // each position's input (FixedPointProblem::context) and needs fewer iterations than with anderson.
  const std::string path = temp_path("trained.pt");
  mhd::learned::save_accelerator(path, accelerator);
  std::int64_t iterations[2] = {0, 0};
  for (const bool learned : {false, true}) {
    const std::string solver_keys = learned ? "plugin = \"learned\"\npath = \"" + path + "\"\nmax_iter = 60\ntol = 1e-4"
                                            : "plugin = \"anderson\"\nmax_iter = 60\ntol = 1e-4";
    const auto trial = mhd::parse_study(model_study("learned_e2e", solver_keys, "") + kDamped, "e2e.toml", registry()).trials.front();
    torch::manual_seed(0);  // the weights of tiny_setup()'s model
    mhd::UnifiedModel model(mhd::model_options(trial, 16), registry());
    model.eval();
    torch::NoGradGuard no_grad;
    for (const auto& tokens : s.held_out) {
      const auto out = model.forward(tokens);
      EXPECT_TRUE(out.forward_info.converged);
      if (learned) EXPECT_EQ(extra(out.forward_info, "learned_initialised"), 1.0);
      iterations[learned ? 1 : 0] += out.forward_info.iterations;
    }
  }
  EXPECT_LT(iterations[1], iterations[0]);
  std::filesystem::remove(path);
}

// ---------------------------------------------------------------- the file

TEST(LearnedSolver, SavedFileRoundTripsAndSolvesAlike) {
  torch::manual_seed(5);
  mhd::learned::Accelerator original(tiny_dims());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : original.parameters()) p.copy_(at::randn_like(p) * 0.1);  // not the zero start
  }
  const std::string path = temp_path("roundtrip.pt");
  mhd::learned::save_accelerator(path, original);
  const auto loaded = mhd::learned::load_accelerator(path);
  EXPECT_EQ(loaded->dims().d_model, 16);
  EXPECT_EQ(loaded->dims().hidden, 32);
  EXPECT_EQ(loaded->dims().m, 5);
  const auto a = original.named_parameters(), b = loaded->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) EXPECT_TRUE(at::equal(item.value(), b[item.key()])) << item.key();

  // Through the plugin: the same iterates as the in-memory accelerator, bit for bit.
  TinySetup s = tiny_setup();
  auto& dynamics = s.model->dynamics();
  const at::Tensor X = s.model->context(s.held_out[0]).detach();
  const auto context = dynamics.prepare(X);
  mhd::FixedPointProblem problem;
  problem.f = dynamics.solver_map(context);
  problem.context = dynamics.position_inputs(context, X);
  const at::Tensor z0 = dynamics.initial_state(context, X);
  mhd::learned::SolveOptions options;
  original.eval();
  const auto direct = mhd::learned::accelerated_solve("learned", &original, options, problem, z0, {40, 1e-4});
  const auto via_plugin = make_solver("learned", path)->solve(problem, z0, {40, 1e-4});
  EXPECT_EQ(direct.info.iterations, via_plugin.info.iterations);
  EXPECT_TRUE(at::equal(direct.z, via_plugin.z));
  EXPECT_EQ(extra(via_plugin.info, "learned_initialised"), 1.0);
  std::filesystem::remove(path);
}

TEST(LearnedSolver, BadFilesAndMismatchedDimsFailInOneLineNamingTheFile) {
  auto expect_one_line = [](const std::function<void()>& call, const std::vector<std::string>& parts) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const mhd::Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << msg << " lacks " << part;
    }
  };
  const std::string missing = temp_path("missing.pt");
  expect_one_line([&] { make_solver("learned", missing); }, {missing, "does not exist", "meta-train"});

  const std::string garbage = temp_path("garbage.pt");
  std::ofstream(garbage) << "not a torch archive";
  expect_one_line([&] { make_solver("learned", garbage); }, {garbage, "not an accelerator file"});
  std::filesystem::remove(garbage);

  // A file for d_model 8 meets a model whose positions are d_model 16.
  mhd::learned::AcceleratorDims small = tiny_dims();
  small.d_model = 8;
  mhd::learned::Accelerator other(small);
  const std::string path = temp_path("d8.pt");
  mhd::learned::save_accelerator(path, other);
  auto solver = make_solver("learned", path);
  mhd::FixedPointProblem problem;
  problem.f = [](const at::Tensor& z) { return 0.5 * z + 1.0; };
  problem.context = at::zeros({2, 4, 16});
  expect_one_line([&] { solver->solve(problem, at::zeros({2, 64}), {10, 1e-6}); }, {path, "d_model 8", "d_model 16"});
  // Negative control: the same file on a d_model 8 context solves.
  problem.context = at::zeros({2, 4, 8});
  EXPECT_TRUE(solver->solve(problem, at::zeros({2, 32}), {100, 1e-6}).info.converged);
  std::filesystem::remove(path);
}

// Without a path the plugin is plain Anderson: the anderson plugin's iterations on the model.
TEST(LearnedSolver, WithoutAPathItIsPlainAnderson) {
  TinySetup s = tiny_setup();
  auto& dynamics = s.model->dynamics();
  const at::Tensor X = s.model->context(s.held_out[1]).detach();
  const auto context = dynamics.prepare(X);
  mhd::FixedPointProblem problem;
  problem.f = dynamics.solver_map(context);
  problem.context = dynamics.position_inputs(context, X);
  const at::Tensor z0 = dynamics.initial_state(context, X);
  const auto plain = make_solver("learned")->solve(problem, z0, {60, 1e-5});
  const auto anderson = make_solver("anderson")->solve(problem, z0, {60, 1e-5});
  EXPECT_TRUE(plain.info.converged);
  EXPECT_EQ(plain.info.iterations, anderson.info.iterations);
  EXPECT_EQ(extra(plain.info, "learned_initialised"), 0.0);
  EXPECT_LT(((plain.z - anderson.z).norm() / anderson.z.norm()).item<double>(), 1e-4);
}

}  // namespace
