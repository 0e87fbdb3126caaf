// The energy-landscape mathematics (mhd/landscape.h) on problems with known answers: quadratic
// energies of known spectrum, a map with two known attractors, trajectories along a line; then the
// `landscape` probe on a small unified model, checked against the model's own equilibrium.
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/dynamics.h"
#include "mhd/error.h"
#include "probes/landscape.h"
#include "config/model_options.h"
#include "core/model.h"
#include "probes/probe.h"
#include "results/results.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/trainer.h"
#include "test_plugins_loaded.h"

namespace {

namespace ls = mhd::landscape;
const auto kDouble = at::TensorOptions().dtype(at::kDouble);

// A [rows, cols] double tensor from its entries, row by row.
at::Tensor matrix(std::int64_t rows, std::int64_t cols, const std::vector<double>& entries) {
  return at::tensor(entries, kDouble).reshape({rows, cols});
}

// A symmetric matrix with the given eigenvalues and random eigenvectors: Q diag(lambda) Q^T. [D, D]
at::Tensor matrix_with_spectrum(const std::vector<double>& lambda, std::uint64_t seed) {
  const auto d = static_cast<std::int64_t>(lambda.size());
  const at::Tensor Q = ls::random_orthonormal(d, d, seed, kDouble);  // [D, D], orthogonal
  return Q.t().matmul(at::diag(at::tensor(lambda, kDouble))).matmul(Q);
}

// E(z)_b = 1/2 z_b^T A_b z_b with one matrix per row: A: [N, D, D]; z: [N, D] -> [N].
mhd::TensorMap quadratic_energy(const at::Tensor& A) {
  return [A](const at::Tensor& z) { return 0.5 * at::einsum("bi,bij,bj->b", {z, A, z}); };
}
mhd::TensorMap quadratic_gradient(const at::Tensor& A) {
  return [A](const at::Tensor& z) { return at::einsum("bij,bj->bi", {A, z}); };
}

TEST(Curvature, RayleighExtremesAreTheEigenvaluesAndClassifyTheQuadratic) {
  // Row 0 positive definite, row 1 indefinite, row 2 negative definite.
  const at::Tensor A = at::stack({matrix_with_spectrum({0.3, 0.7, 1.0, 2.0, 3.5, 5.0}, 1),
                                  matrix_with_spectrum({-2.0, -0.5, 0.25, 1.0, 2.5, 4.0}, 2),
                                  matrix_with_spectrum({-6.0, -3.0, -1.0, -0.5, -0.2, -0.1}, 3)});
  const at::Tensor z = at::randn({3, 6}, kDouble);  // the Hessian of a quadratic is A anywhere
  const std::vector<double> lo{0.3, -2.0, -6.0}, hi{5.0, 4.0, -0.1};
  const std::vector<ls::CriticalKind> kind{ls::CriticalKind::Minimum, ls::CriticalKind::Saddle,
                                           ls::CriticalKind::Maximum};
  const ls::LinearMap exact = ls::autograd_hvp(quadratic_energy(A), z);
  const ls::LinearMap differences = ls::finite_difference_hvp(quadratic_gradient(A), z);
  for (const auto* hvp : {&exact, &differences}) {
    // D Lanczos steps span the whole space: the Ritz values are the eigenvalues.
    const ls::Curvature c = ls::extreme_curvatures(*hvp, 3, 6, 6, 7, kDouble);
    for (int b = 0; b < 3; ++b) {
      EXPECT_NEAR(c.min[b].item<double>(), lo[b], 1e-8) << "row " << b;
      EXPECT_NEAR(c.max[b].item<double>(), hi[b], 1e-8) << "row " << b;
      EXPECT_EQ(ls::classify_curvature(c.min[b].item<double>(), c.max[b].item<double>()), kind[b]);
    }
  }
}

TEST(Curvature, FewLanczosStepsGiveInnerBoundsCloseToTheExtremes) {
  std::vector<double> lambda;
  for (int i = 0; i < 40; ++i) lambda.push_back(-1.0 + 0.1 * i);  // -1 .. 2.9, spaced 0.1
  lambda.push_back(8.0);                                           // one well separated top eigenvalue
  const at::Tensor A = matrix_with_spectrum(lambda, 4).unsqueeze(0);
  const ls::Curvature c =
      ls::extreme_curvatures(ls::autograd_hvp(quadratic_energy(A), at::zeros({1, 41}, kDouble)), 1, 41, 12, 3, kDouble);
  const double mn = c.min.item<double>(), mx = c.max.item<double>();
  EXPECT_GE(mn, -1.0 - 1e-9);  // Rayleigh quotients never leave [lambda_min, lambda_max]
  EXPECT_LE(mx, 8.0 + 1e-9);
  EXPECT_NEAR(mx, 8.0, 1e-6);  // a separated extreme converges within a few steps
  EXPECT_LT(mn, -0.7);         // the clustered end still comes within a few spacings
}

TEST(Curvature, InvariantKrylovSpaceRestartsAndKeepsTheSpectrum) {
  // H = 2 I: the first Lanczos step already spans an invariant space (breakdown).
  const at::Tensor A = (2.0 * at::eye(5, kDouble)).unsqueeze(0);
  const ls::Curvature c =
      ls::extreme_curvatures(ls::autograd_hvp(quadratic_energy(A), at::ones({1, 5}, kDouble)), 1, 5, 5, 0, kDouble);
  EXPECT_NEAR(c.min.item<double>(), 2.0, 1e-10);
  EXPECT_NEAR(c.max.item<double>(), 2.0, 1e-10);
  // diag(1, 1, 1, -1, -1) has two distinct eigenvalues: the Krylov space is 2-dimensional, so Lanczos
  // breaks down after two steps and the remaining steps run on restarts (no NaN from 0 / 0).
  const at::Tensor B = at::diag(at::tensor({1.0, 1.0, 1.0, -1.0, -1.0}, kDouble)).unsqueeze(0);
  const ls::Curvature d =
      ls::extreme_curvatures(ls::autograd_hvp(quadratic_energy(B), at::zeros({1, 5}, kDouble)), 1, 5, 5, 0, kDouble);
  EXPECT_NEAR(d.min.item<double>(), -1.0, 1e-10);
  EXPECT_NEAR(d.max.item<double>(), 1.0, 1e-10);
}

TEST(Curvature, ClassificationTreatsNearZeroAsFlat) {
  EXPECT_EQ(ls::classify_curvature(0.5, 2.0), ls::CriticalKind::Minimum);
  EXPECT_EQ(ls::classify_curvature(-0.5, 2.0), ls::CriticalKind::Saddle);
  EXPECT_EQ(ls::classify_curvature(-3.0, -1.0), ls::CriticalKind::Maximum);
  EXPECT_EQ(ls::classify_curvature(1e-6, 2.0), ls::CriticalKind::Degenerate);  // below 1e-3 of the scale
  EXPECT_EQ(ls::classify_curvature(0.0, 0.0), ls::CriticalKind::Degenerate);
  EXPECT_STREQ(ls::to_string(ls::CriticalKind::Saddle), "saddle");
}

TEST(Descent, ReachesTheMinimumOfAnIllConditionedQuadratic) {
  // E(z) = 1/2 (z - m)^T A (z - m), condition number 100: minimum at m, energy 0.
  const at::Tensor A = matrix_with_spectrum({0.05, 0.2, 1.0, 3.0, 5.0}, 5).unsqueeze(0).repeat({2, 1, 1});
  const at::Tensor m = at::tensor({1.0, -2.0, 0.5, 0.0, 3.0}, kDouble);
  auto energy = [&](const at::Tensor& z) { return quadratic_energy(A)(z - m); };
  auto grad = [&](const at::Tensor& z) { return quadratic_gradient(A)(z - m); };
  const at::Tensor z0 = at::randn({2, 5}, kDouble) * 3;
  const ls::Descent d = ls::minimize_energy(energy, grad, z0, 500, 1e-8);
  EXPECT_LT(d.steps, 500);
  for (int b = 0; b < 2; ++b) {
    EXPECT_LE(d.grad_norm[b].item<double>(), 1e-8);
    EXPECT_LT((d.z[b] - m).norm().item<double>(), 1e-6);
    EXPECT_NEAR(d.energy[b].item<double>(), 0.0, 1e-12);
  }
}

// f(z) = (tanh(3 z_0), z_1 / 2): attractors (+-x*, 0) with x* = tanh(3 x*) ~ 0.995, and an unstable
// equilibrium at the origin (slope 3) that only the line z_0 = 0 reaches.
at::Tensor two_attractor_map(const at::Tensor& z) {
  return at::stack({at::tanh(3 * z.select(1, 0)), 0.5 * z.select(1, 1)}, 1);
}

TEST(Basins, TwoAttractorsSplitTheGridAtTheirBoundary) {
  ls::Plane plane{at::zeros({2}, kDouble), at::tensor({1.0, 0.0}, kDouble), at::tensor({0.0, 1.0}, kDouble)};
  const at::Tensor coords = ls::grid_coordinates(10, 2.0);  // even: no grid point on z_0 = 0
  const at::Tensor starts = ls::plane_points(plane, coords);
  const ls::Iterates it = ls::iterate_map(two_attractor_map, starts, 200, 1e-8);
  ASSERT_TRUE(it.converged.all().item<bool>());
  // The known attractor (+x*, 0) first, as the probe puts z* first.
  const ls::Iterates located = ls::iterate_map(two_attractor_map, matrix(1, 2, {1.0, 0.0}), 200, 1e-12);
  const ls::Basins basins = ls::cluster_attractors(it.end, it.converged, located.end, 1e-3);
  EXPECT_EQ(basins.reached(), 2);
  ASSERT_EQ(basins.attractors.size(0), 2);
  EXPECT_NEAR(basins.attractors[1][0].item<double>(), -located.end[0][0].item<double>(), 1e-6);
  EXPECT_EQ(basins.counts[0].item<std::int64_t>(), 50);
  EXPECT_EQ(basins.counts[1].item<std::int64_t>(), 50);
  for (std::int64_t i = 0; i < 10; ++i)
    for (std::int64_t j = 0; j < 10; ++j)
      EXPECT_EQ(basins.labels[i * 10 + j].item<std::int64_t>(), coords[i].item<double>() > 0 ? 0 : 1)
          << "grid point " << i << ", " << j;
}

TEST(Basins, TheUnstableEquilibriumIsAThirdAttractorOnlyOnItsLine) {
  ls::Plane plane{at::zeros({2}, kDouble), at::tensor({1.0, 0.0}, kDouble), at::tensor({0.0, 1.0}, kDouble)};
  const at::Tensor starts = ls::plane_points(plane, ls::grid_coordinates(11, 1.0));  // i = 5: z_0 = 0
  const ls::Iterates it = ls::iterate_map(two_attractor_map, starts, 200, 1e-8);
  const ls::Basins basins = ls::cluster_attractors(it.end, it.converged, at::Tensor(), 1e-3);
  EXPECT_EQ(basins.reached(), 3);
  at::Tensor sorted = std::get<0>(basins.counts.sort());
  EXPECT_EQ(sorted[0].item<std::int64_t>(), 11);  // the line z_0 = 0
  EXPECT_EQ(sorted[1].item<std::int64_t>(), 55);
  EXPECT_EQ(sorted[2].item<std::int64_t>(), 55);
}

TEST(Basins, RowsThatDoNotConvergeAreLabelledMinusOne) {
  auto rotate = [](const at::Tensor& z) {  // a rotation by 90 degrees: no fixed point but 0, never converges
    return at::stack({-z.select(1, 1), z.select(1, 0)}, 1);
  };
  const at::Tensor starts = matrix(2, 2, {1.0, 0.0, 0.0, 0.0});
  const ls::Iterates it = ls::iterate_map(rotate, starts, 20, 1e-6);
  EXPECT_FALSE(it.converged[0].item<bool>());
  EXPECT_EQ(it.steps[0].item<std::int64_t>(), 20);
  EXPECT_TRUE(it.converged[1].item<bool>());  // the origin is fixed: converged after one map
  EXPECT_EQ(it.steps[1].item<std::int64_t>(), 1);
  EXPECT_EQ(it.path.size(0), 21);
  const ls::Basins basins = ls::cluster_attractors(it.end, it.converged, at::Tensor(), 1e-3);
  EXPECT_EQ(basins.labels[0].item<std::int64_t>(), -1);
  EXPECT_EQ(basins.labels[1].item<std::int64_t>(), 0);
}

TEST(Slice, CentreIsTheEquilibriumAndCornersAreWhereThePlaneSays) {
  const at::Tensor A = matrix_with_spectrum({1.0, 2.0, -0.5, 3.0}, 6).unsqueeze(0);
  auto energy = [&](const at::Tensor& z) { return quadratic_energy(A.expand({z.size(0), 4, 4}))(z); };
  auto f = [](const at::Tensor& z) { return 0.5 * z + 1.0; };
  const at::Tensor dirs = ls::random_orthonormal(2, 4, 11, kDouble);
  ls::Plane plane{at::tensor({0.3, -1.0, 2.0, 0.5}, kDouble), dirs[0], dirs[1]};
  const ls::Slice s = ls::energy_slice(f, energy, plane, 7, 1.5);
  ASSERT_EQ(s.energy.sizes(), (at::IntArrayRef{7, 7}));
  const at::Tensor centre = plane.center.unsqueeze(0);
  EXPECT_DOUBLE_EQ(s.energy[3][3].item<double>(), energy(centre)[0].item<double>());
  EXPECT_DOUBLE_EQ(s.residual[3][3].item<double>(), (f(centre) - centre).norm().item<double>());
  const at::Tensor corner = (plane.center - 1.5 * plane.u + 1.5 * plane.v).unsqueeze(0);  // i = 0, j = 6
  EXPECT_NEAR(s.energy[0][6].item<double>(), energy(corner)[0].item<double>(), 1e-12);
  // project() inverts plane_points: the grid's coordinates come back.
  const at::Tensor xy = ls::project(plane, ls::plane_points(plane, s.coords));
  EXPECT_NEAR(xy[0 * 7 + 6][0].item<double>(), -1.5, 1e-12);
  EXPECT_NEAR(xy[0 * 7 + 6][1].item<double>(), 1.5, 1e-12);
  // An odd grid has its centre at exactly 0 and is exactly symmetric.
  const at::Tensor c = ls::grid_coordinates(11, 0.7);
  EXPECT_EQ(c[5].item<double>(), 0.0);
  EXPECT_TRUE(at::equal(c, -c.flip({0})));
  EXPECT_EQ(c[0].item<double>(), -0.7);
}

TEST(Pca, ATrajectoryAlongALineHasOneDominantDirection) {
  // f(z) = p + 0.5 (z - p): every iterate lies on the segment from z0 to p.
  const at::Tensor p = at::tensor({1.0, 2.0, -1.0, 0.0, 0.5}, kDouble);
  const at::Tensor z0 = matrix(1, 5, {-3.0, 0.0, 2.0, 1.0, 0.5});
  auto f = [&](const at::Tensor& z) { return p + 0.5 * (z - p); };
  const ls::Iterates it = ls::iterate_map(f, z0, 60, 1e-9);
  ASSERT_TRUE(it.converged[0].item<bool>());
  const ls::Pca pca = ls::principal_components(it.path.select(1, 0), 2);
  EXPECT_GT(pca.variance[0].item<double>() / pca.total_variance, 1.0 - 1e-12);
  EXPECT_LT(pca.variance[1].item<double>(), 1e-20);
  const at::Tensor line = (z0[0] - p) / (z0[0] - p).norm();
  EXPECT_NEAR(std::abs(pca.directions[0].dot(line).item<double>()), 1.0, 1e-12);
}

TEST(Pca, DirectionsAreOrthonormalAndDeterministic) {
  const at::Tensor points = at::randn({50, 6}, kDouble) * at::tensor({5.0, 3.0, 1.0, 0.5, 0.2, 0.1}, kDouble);
  const ls::Pca a = ls::principal_components(points, 2), b = ls::principal_components(points.flip({0}), 2);
  EXPECT_TRUE(at::allclose(a.directions.matmul(a.directions.t()), at::eye(2, kDouble), 0, 1e-12));
  EXPECT_TRUE(at::allclose(a.directions, b.directions, 0, 1e-10));  // same plane, same signs
  EXPECT_GT(a.variance[0].item<double>(), a.variance[1].item<double>());
  const at::Tensor r = ls::random_orthonormal(2, 6, 3, kDouble);
  EXPECT_TRUE(at::allclose(r.matmul(r.t()), at::eye(2, kDouble), 0, 1e-12));
  EXPECT_TRUE(at::equal(r, ls::random_orthonormal(2, 6, 3, kDouble)));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Errors, BadInputsGiveOneLineErrors) {
  const std::vector<std::string> messages{
      error_of([] { ls::grid_coordinates(0, 1.0); }),
      error_of([] { ls::grid_coordinates(5, -1.0); }),
      error_of([] { ls::principal_components(at::zeros({1, 3}), 1); }),
      error_of([] { ls::principal_components(at::randn({4, 3}), 4); }),
      error_of([] { ls::orthonormal_rows(matrix(2, 2, {1.0, 2.0, 2.0, 4.0}), "memory_pca"); }),
      error_of([] { ls::iterate_map(two_attractor_map, at::zeros({2, 2}), 0, 1e-3); }),
      error_of([] { ls::iterate_map(two_attractor_map, at::zeros({2}), 5, 1e-3); }),
      error_of([] { ls::extreme_curvatures([](const at::Tensor& v) { return v; }, 1, 3, 0, 0, kDouble); }),
  };
  for (const auto& m : messages) {
    EXPECT_NE(m, "(no error)");
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  EXPECT_NE(messages[1].find("extent"), std::string::npos) << messages[1];
  EXPECT_NE(messages[4].find("memory_pca: direction 1 is linearly dependent"), std::string::npos) << messages[4];
  EXPECT_NE(messages[6].find("[2]"), std::string::npos) << messages[6];
}

}  // namespace

// ---- the probe on a small (untrained) unified model, through the registry ---------------------

namespace {

const char* kProbeStudy = R"(
[study]
name = "landscape_test"
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
residual = false
[backbone]
plugin = "mamba"
d_state = 4
expand = 2
[memory]
plugin = "hopfield"
size = 8
beta = 1.0
[solver]
plugin = "anderson"
max_iter = 60
tol = 1e-6
[train]
steps = 1
)";

const char* kProbeTable = R"(
[probes.landscape]
grid = 5
extent = 0.5
trajectories = 3
max_iter = 300
tol = 1e-6
hvp_iterations = 16
descent_steps = 100
sample = 1
)";

struct Recorded {
  std::map<std::string, double> metrics;
  std::map<std::string, std::vector<mhd::ProbePoint>> points;
};

mhd::TrialConfig probe_config(const std::string& table) {
  auto study = mhd::parse_study(std::string(kProbeStudy) + table, "landscape_test.toml", registry_with_all_plugins());
  return study.trials.front();
}

Recorded run_probe(const mhd::TrialConfig& config, mhd::UnifiedModel& model, mhd::Task& task) {
  Recorded r;
  mhd::MetricSink sink;
  sink.metric = [&r](std::int64_t, const std::string& name, double value) { r.metrics[name] = value; };
  sink.trace = [](const mhd::TracePoint&) {};
  sink.point = [&r](const mhd::ProbePoint& p) { r.points[p.name].push_back(p); };
  mhd::run_probes(config, registry_with_all_plugins(), model, task, at::kCPU, sink, 0);
  return r;
}

TEST(LandscapeProbe, SliceCentreBasinsAndCriticalPointsMatchTheModel) {
  torch::manual_seed(0);
  const mhd::TrialConfig config = probe_config(kProbeTable);
  auto task = mhd::make_task(config.task_kind, config.task, 0);
  mhd::UnifiedModel model(mhd::model_options(config, task->vocab_size()), registry_with_all_plugins());
  const Recorded r = run_probe(config, model, *task);

  // The model's own equilibrium of sample 1 of the first held-out batch at its last position (the
  // earlier positions held at theirs, docs/design.md §4), and its energy.
  at::NoGradGuard no_grad;
  const mhd::ModelOutput full = model.forward(task->eval_batch(2, 0).inputs);
  const std::int64_t D = model.dynamics().options().d_model;
  const mhd::DynamicsContext position = model.dynamics().last_position(full.context, full.z_star);
  struct { at::Tensor z_star; } out{full.z_star.narrow(1, full.z_star.size(1) - D, D)};  // [2, D]
  const at::Tensor energy = model.dynamics().energy(out.z_star, position).total;  // [2]
  const at::Tensor grad = model.dynamics().grad_energy(out.z_star, position);    // [2, D]

  ASSERT_EQ(r.points.at("energy_slice").size(), 25u);
  ASSERT_EQ(r.points.at("residual_slice").size(), 25u);
  ASSERT_EQ(r.points.at("basins").size(), 25u);
  const mhd::ProbePoint& centre = r.points.at("energy_slice")[2 * 5 + 2];
  EXPECT_EQ(centre.i, 2);
  EXPECT_EQ(centre.x, 0.0);
  EXPECT_NEAR(centre.value, energy[1].item<double>(), 1e-5 * (1 + std::abs(centre.value)));
  EXPECT_NEAR(r.metrics.at("landscape_energy_center"), centre.value, 1e-12);
  // The slice's corners are extent ||z*|| away along both axes.
  EXPECT_NEAR(r.points.at("energy_slice")[0].x, -0.5 * out.z_star[1].norm().item<double>(), 1e-5);
  // The residual at the centre is the solve's: below tol relative to ||f(z*)|| ~ ||z*||.
  EXPECT_LT(r.points.at("residual_slice")[12].value, 1e-4 * out.z_star[1].norm().item<double>());

  // z* lies in its own basin (attractor 0), and the shares are shares.
  EXPECT_EQ(r.points.at("basins")[12].value, 0.0);
  EXPECT_GE(r.metrics.at("landscape_basins"), 1.0);
  EXPECT_GT(r.metrics.at("landscape_basin_share"), 0.0);
  EXPECT_LE(r.metrics.at("landscape_basin_share"), r.metrics.at("landscape_grid_converged_share"));

  // Trajectories: 3 of them, each starting at iteration 0; the first ends at z*.
  std::set<std::int64_t> starts;
  for (const auto& p : r.points.at("trajectories"))
    if (p.j == 0) starts.insert(p.i);
  EXPECT_EQ(starts, (std::set<std::int64_t>{0, 1, 2}));
  EXPECT_LT(r.metrics.at("landscape_trajectory_end_distance"), 1e-3);

  // Critical point 0 is z*: its gradient norm is that of the model's energy there; its curvatures
  // bound the Rayleigh quotient of a random direction.
  const mhd::ProbePoint& zs = r.points.at("critical_points")[0];
  EXPECT_EQ(zs.j, 0);
  EXPECT_NEAR(zs.value, grad[1].norm().item<double>(), 1e-4 * (1 + zs.value));
  EXPECT_LE(zs.x, zs.y);
  const double counted = r.metrics.at("landscape_minima") + r.metrics.at("landscape_saddles") +
                         r.metrics.at("landscape_maxima") + r.metrics.at("landscape_degenerate") +
                         r.metrics.at("landscape_noncritical");
  EXPECT_EQ(counted, static_cast<double>(r.points.at("critical_points").size()));
  // Energy descent lowers the energy below z*'s (or leaves it where it is).
  EXPECT_LE(r.metrics.at("landscape_descent_energy_min"), r.metrics.at("landscape_zstar_energy") + 1e-6);
}

TEST(LandscapeProbe, BadParametersGiveOneLineErrors) {
  auto error_of_study = [](const std::string& table) -> std::string {
    try {
      const mhd::TrialConfig config = probe_config(table);
      const auto& definition = mhd::probe_definition("landscape");
      definition.make(config.probes.front().params);
    } catch (const mhd::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const std::string even = error_of_study("[probes.landscape]\ngrid = 10\n");
  EXPECT_NE(even.find("grid must be odd"), std::string::npos) << even;
  const std::string range = error_of_study("[probes.landscape]\ngrid = 1\n");
  EXPECT_NE(range.find("grid"), std::string::npos) << range;
  const std::string choice = error_of_study("[probes.landscape]\ndirections = \"pca\"\n");
  EXPECT_NE(choice.find("directions"), std::string::npos) << choice;
  for (const auto& m : {even, range, choice}) {
    EXPECT_NE(m, "(no error)");
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  // memory_pca without a memory, and a model without the DEQ: said when the probe runs, with the way out.
  for (const std::string& model_key : {"use_memory = false", "deq = false"}) {
    std::string study = kProbeStudy;
    study.replace(study.find("residual = false"), 16, "residual = false\n" + model_key);
    const mhd::TrialConfig config =
        mhd::parse_study(study + "[probes.landscape]\ngrid = 3\n", "landscape_test.toml", registry_with_all_plugins())
            .trials.front();
    auto task = mhd::make_task(config.task_kind, config.task, 0);
    torch::manual_seed(0);
    mhd::UnifiedModel model(mhd::model_options(config, task->vocab_size()), registry_with_all_plugins());
    std::string message = "(no error)";
    try {
      run_probe(config, model, *task);
    } catch (const mhd::Error& e) {
      message = e.what();
    }
    EXPECT_EQ(message.rfind("probe landscape: ", 0), 0u) << message;
    EXPECT_NE(message.find(model_key == "deq = false" ? "model.deq = false" : "\"random\""), std::string::npos)
        << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

}  // namespace
