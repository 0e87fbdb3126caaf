// The `caching` optimization and the `early_exit` solver loaded through the registry
// (docs/design.md §3): the cache hits on repeated contexts and saves the unified model's solver
// iterations; early exit reaches fixed_point's fixed point with fewer sample evaluations.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/optimization.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "plugin_host/registry.h"
#include "solver_test_maps.h"
#include "study/study.h"
#include "model_study.h"
#include "test_plugins_loaded.h"

namespace {

using solver_test::Overrides;
using solver_test::extra;
using solver_test::max_row_error;
using solver_test::mixed_speed_map;

mhd::PluginRegistry& registry() {
  auto& reg = registry_with_all_plugins();
  reg.load_file(MHD_PLUGIN_EARLY_EXIT);
  reg.load_file(MHD_PLUGIN_CACHING);
  return reg;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides = {}) {
  return solver_test::make_solver_from(registry(), name, overrides);
}

std::shared_ptr<mhd::Optimization> make_cache(const Overrides& overrides = {}) {
  auto& reg = registry();
  mhd::Params params = mhd::Params::defaults(reg.require(mhd::PluginKind::Optimization, "caching").manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return reg.make<mhd::Optimization>("caching", params);
}



// ---------------------------------------------------------------- registry

TEST(CachingEarlyExit, BothAreListedByTheRegistry) {
  // As `mhd plugins` finds them: by scanning the build's plugin directory.
  auto& reg = mhd::PluginRegistry::global();
  reg.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins");
  const auto* solver = reg.find(mhd::PluginKind::Solver, "early_exit");
  const auto* cache = reg.find(mhd::PluginKind::Optimization, "caching");
  ASSERT_NE(solver, nullptr);
  ASSERT_NE(cache, nullptr);
  for (const auto* plugin : {solver, cache}) {
    EXPECT_FALSE(plugin->manifest->description.empty());
    for (const auto& spec : plugin->manifest->params) {
      EXPECT_FALSE(mhd::check_param_value(spec, spec.default_value).has_value()) << spec.name;
      EXPECT_FALSE(spec.doc.empty()) << spec.name;
    }
  }
}

// ---------------------------------------------------------------- early_exit

TEST(EarlyExit, ReachesFixedPointsFixedPointWithFewerSampleEvaluations) {
  const auto [f, exact] = mixed_speed_map(24);
  const at::Tensor z0 = at::zeros({4, 24}, at::kDouble);
  const mhd::SolveLimits limits{1000, 1e-10};
  const auto reference = make_solver("fixed_point")->solve({f, {}, {}}, z0, limits);
  const auto early = make_solver("early_exit")->solve({f, {}, {}}, z0, limits);

  ASSERT_TRUE(reference.info.converged);
  ASSERT_TRUE(early.info.converged);
  EXPECT_LT(early.info.final_rel.max().item<double>(), limits.tol);
  EXPECT_LT(max_row_error(early.z, exact), 1e-8);
  EXPECT_LT(max_row_error(early.z, reference.z), 1e-8);
  // The batch waits for its slowest row either way; the fast rows stop being evaluated early.
  EXPECT_EQ(early.info.f_evals, reference.info.f_evals);
  const double sample_evals = extra(early.info, "early_exit_sample_evals");
  EXPECT_LT(sample_evals, 4.0 * static_cast<double>(reference.info.f_evals) * 0.75);
  EXPECT_EQ(extra(early.info, "early_exit_f_evals_saved"), 4.0 * static_cast<double>(early.info.f_evals) - sample_evals);
  EXPECT_EQ(extra(early.info, "early_exit_tol_exits"), 4.0);
  // Exits at different iterations: the per-iteration counts sum to the batch.
  double exits = 0;
  int iterations_with_exits = 0;
  for (const auto& [key, value] : early.info.extra)
    if (key.rfind("early_exit_exits_at_", 0) == 0) exits += value, ++iterations_with_exits;
  EXPECT_EQ(exits, 4.0);
  EXPECT_GE(iterations_with_exits, 3);
  RecordProperty("sample_evals", std::to_string(sample_evals) + " of " + std::to_string(4 * early.info.f_evals));
}

TEST(EarlyExit, PredictorExitsRowsEarlierAndAuditMeasuresIt) {
  const auto [f, exact] = mixed_speed_map(24);
  const at::Tensor z0 = at::zeros({4, 24}, at::kDouble);
  const mhd::SolveLimits limits{1000, 1e-8};
  const auto plain = make_solver("early_exit")->solve({f, {}, {}}, z0, limits);
  // Threshold 0.5: a row is predicted when its residual extrapolated one step ahead is below tol.
  const auto exit = make_solver("early_exit", {{"predictor", std::string("exit")}, {"confidence_threshold", 0.5}})
                        ->solve({f, {}, {}}, z0, limits);
  const auto audit = make_solver("early_exit", {{"predictor", std::string("audit")}, {"confidence_threshold", 0.5}})
                         ->solve({f, {}, {}}, z0, limits);

  // Predicted rows freeze a step or so before tol: fewer evaluations, still close to z*.
  EXPECT_GT(extra(exit.info, "early_exit_predicted_exits"), 0.0);
  EXPECT_LT(extra(exit.info, "early_exit_sample_evals"), extra(plain.info, "early_exit_sample_evals"));
  EXPECT_LT(max_row_error(exit.z, exact), 1e-6);
  // Audit does not act: the same iterates as without a predictor, and measured predictions.
  EXPECT_TRUE(at::equal(audit.z, plain.z));
  EXPECT_EQ(audit.info.f_evals, plain.info.f_evals);
  const double precision = extra(audit.info, "early_exit_predictor_precision");
  const double recall = extra(audit.info, "early_exit_predictor_recall");
  EXPECT_GE(precision, 0.0);
  EXPECT_LE(precision, 1.0);
  EXPECT_GT(recall, 0.0);
  EXPECT_LE(recall, 1.0);
  EXPECT_GE(extra(audit.info, "early_exit_predicted_iters_ahead"), 1.0);
  EXPECT_TRUE(std::isnan(extra(plain.info, "early_exit_predictor_precision")));
  RecordProperty("predictor", "exit: " + std::to_string(extra(exit.info, "early_exit_sample_evals")) + " sample evals vs " +
                                  std::to_string(extra(plain.info, "early_exit_sample_evals")) + ", precision " +
                                  std::to_string(precision) + ", recall " + std::to_string(recall));
}

// Usable as the backward solver of implicit differentiation: the same gradients as fixed_point's.
TEST(EarlyExit, BackwardSolverGivesFixedPointsGradients) {
  solver_test::ToyLayer layer;
  auto forward = make_solver("anderson");
  auto reference = make_solver("fixed_point");
  auto early = make_solver("early_exit");
  auto info = std::make_shared<mhd::SolverInfo>();
  const auto [gw_ref, gx_ref] = layer.gradients(*forward, *reference, std::make_shared<mhd::SolverInfo>());
  const auto [gw, gx] = layer.gradients(*forward, *early, info);
  EXPECT_TRUE(info->converged);
  EXPECT_TRUE(at::allclose(gw, gw_ref, 1e-9, 1e-10));
  EXPECT_TRUE(at::allclose(gx, gx_ref, 1e-9, 1e-10));
}

// ---------------------------------------------------------------- caching

TEST(Caching, HitsOnARepeatedBatchAndMissesOnANewOne) {
  auto cache = make_cache();
  at::manual_seed(2);
  const at::Tensor key = at::randn({4, 8}), z = at::randn({4, 40});
  EXPECT_FALSE(cache->warm_start(key).has_value()) << "empty cache";
  cache->on_equilibrium({}, z, key);
  const auto warm = cache->warm_start(key);
  ASSERT_TRUE(warm.has_value());
  EXPECT_TRUE(at::allclose(*warm, z));
  EXPECT_FALSE(cache->warm_start(at::randn({4, 8})).has_value()) << "unrelated keys miss";
  auto m = cache->metrics();
  EXPECT_DOUBLE_EQ(m["cache_hit_rate"], 0.5);
  EXPECT_EQ(m["cache_entries"], 4.0);
  EXPECT_EQ(m["cache_bytes"], 4.0 * (8 + 40) * 4);
  EXPECT_EQ(m["cache_warm_starts"], 1.0);
  EXPECT_EQ(cache->metrics()["cache_lookups"], 0.0) << "counters restart at each call";
}

TEST(Caching, PartialHitsNeedMinHitShareAndMissedRowsGetTheMeanEquilibrium) {
  auto cache = make_cache({{"min_hit_share", 0.5}});
  at::manual_seed(3);
  const at::Tensor key = at::randn({2, 8}), z = at::randn({2, 16});
  cache->on_equilibrium({}, z, key);
  // Row 0 hits (a scaled copy: cosine 1), row 1 is new: share 1/2 is enough.
  const at::Tensor half = at::stack({3.0 * key[0], at::randn({8})});
  const auto warm = cache->warm_start(half);
  ASSERT_TRUE(warm.has_value());
  EXPECT_TRUE(at::allclose((*warm)[0], z[0]));
  EXPECT_TRUE(at::allclose((*warm)[1], z.mean(0)));
  // One hit in four rows is below the share: the default start is kept.
  const at::Tensor quarter = at::cat({key.narrow(0, 0, 1), at::randn({3, 8})});
  EXPECT_FALSE(cache->warm_start(quarter).has_value());
}

TEST(Caching, EvictsTheLeastRecentlyUsedRowAtCapacity) {
  auto cache = make_cache({{"capacity", std::int64_t{2}}, {"min_hit_share", 1.0}});
  const at::Tensor e = at::eye(3);  // three orthogonal keys
  const at::Tensor z = at::arange(9, at::kFloat).view({3, 3});
  cache->on_equilibrium({}, z.narrow(0, 0, 1), e.narrow(0, 0, 1));
  cache->on_equilibrium({}, z.narrow(0, 1, 1), e.narrow(0, 1, 1));
  ASSERT_TRUE(cache->warm_start(e.narrow(0, 0, 1)).has_value());  // key 0 used: key 1 is now the oldest
  cache->on_equilibrium({}, z.narrow(0, 2, 1), e.narrow(0, 2, 1));
  EXPECT_TRUE(cache->warm_start(e.narrow(0, 0, 1)).has_value());
  EXPECT_FALSE(cache->warm_start(e.narrow(0, 1, 1)).has_value());
  EXPECT_TRUE(cache->warm_start(e.narrow(0, 2, 1)).has_value());
  EXPECT_EQ(cache->metrics()["cache_entries"], 2.0);
}

const std::string kStudy = model_study("caching_test", "plugin = \"anderson\"\nmax_iter = 60\ntol = 1e-6", "solver = \"early_exit\"\nmax_iter = 200\ntol = 1e-8");

// The unified model with the cache: the second forward of the same batch starts from the cached
// equilibria and needs fewer solver iterations; without the cache it needs as many as the first.
TEST(Caching, SecondForwardOfTheUnifiedModelNeedsFewerIterations) {
  for (const bool with_cache : {true, false}) {
    const std::string extra_keys = with_cache ? "[optimizations.caching]\nthreshold = 0.999\n" : "";
    const auto trial = mhd::parse_study(std::string(kStudy) + extra_keys, "caching_test.toml", registry()).trials.front();
    torch::manual_seed(0);
    mhd::UnifiedModel model(mhd::model_options(trial, 16), registry());
    model.eval();  // no memory writes: both forwards solve the same map
    at::manual_seed(7);
    at::Tensor tokens = at::randint(16, {3, 8}, at::kLong);
    // Distinct last tokens: the key X[:, L-1] of this small, untrained model is dominated by the
    // last token's embedding (sequences ending in the same token have keys with cosine > 0.999).
    tokens.select(1, 7).copy_(at::tensor({1, 2, 3}, at::kLong));
    const auto first = model.forward(tokens, /*observe=*/true);
    first.logits.sum().backward();  // runs the implicit backward solve
    const auto second = model.forward(tokens, /*observe=*/true);
    ASSERT_TRUE(first.forward_info.converged);
    ASSERT_TRUE(second.forward_info.converged);
    EXPECT_GT(first.backward_info->iterations, 0) << "early_exit ran as the backward solver";
    RecordProperty(with_cache ? "cached_iterations" : "uncached_iterations",
                   std::to_string(first.forward_info.iterations) + " then " +
                       std::to_string(second.forward_info.iterations));
    if (with_cache) {
      EXPECT_LT(second.forward_info.iterations, first.forward_info.iterations);
      EXPECT_LE(second.forward_info.iterations, 2);
      EXPECT_TRUE(at::allclose(second.logits, first.logits, 1e-4, 1e-4));
      auto m = model.optimizations().front()->metrics();
      EXPECT_EQ(m["cache_hit_rate"], 1.0);
      EXPECT_EQ(m["cache_entries"], 3.0);
    } else {
      EXPECT_EQ(second.forward_info.iterations, first.forward_info.iterations);
    }
  }
}

}  // namespace
