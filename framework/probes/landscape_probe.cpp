// Probe `landscape`: the energy landscape of a trained model around the
// equilibrium z* of one held-out sample, with that sample's context fixed.
//
//   1. slice: E(z) and ||f(z) - z|| on a grid z* + a u + b v, |a|, |b| <= extent ||z*||, where (u, v) is
//      the plane picked by `directions`:
//        memory_pca      the memory bank's top-2 principal directions p_1, p_2 live in query space
//                        (the memory is read with q = W_q z). They are brought to state space as
//                        W_q^T p_k (computed as vector-Jacobian products of the query map, so any
//                        reparametrisation of W_q is included), then orthonormalised. W_q^T p is the
//                        state direction along which <p, W_q z> grows fastest, i.e. the direction that
//                        moves the query most along p; unlike a pseudo-inverse it needs no
//                        invertibility and does not amplify W_q's small singular directions.
//        random          two random orthonormal directions (seeded)
//        trajectory_pca  the top-2 principal directions of the convergence trajectories (2.)
//   2. trajectories: plain iteration of the solver map f (the map the solvers see, damping included)
//      from the model's z0 and from `trajectories - 1` starts z0 + extent ||z*|| w (w random unit
//      vectors), projected on the PCA plane of all their iterates (SVD of the centred iterates).
//   3. basins: the same iteration from every grid point of the slice; end points are clustered into
//      attractors (cluster_tol ||z*||), attractor 0 being z* itself (refined by the same iteration).
//   4. critical points: z*, the other attractors found, and the end points of gradient descent on E
//      from the trajectories' starts, each with E, ||dE/dz||, and the extreme Hessian eigenvalues by
//      Lanczos on Hessian-vector products (exact double backward, or central differences of dE/dz).
//      A point counts as critical when ||dE/dz|| <= grad_tol; z* is a fixed point of f, which is a
//      stationary point of E only when the memory and l2 terms' gradients happen to cancel there.
//
// ProbePoints (probe "landscape"):
//   energy_slice, residual_slice  i, j grid indices; x, y the plane coordinates; value
//   basins                        i, j, x, y as above; value = attractor id (0 = z*), -1 not converged
//   trajectories                  i trajectory (0 starts at z0), j iteration, x, y on their PCA plane,
//                                 value = E
//   critical_points               i point, j source (0 z*, 1 attractor, 2 energy descent),
//                                 x min curvature, y max curvature, value ||dE/dz||
//   critical_energy               i point, j kind (0 minimum, 1 saddle, 2 maximum, 3 degenerate), value E
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "probes/landscape.h"
#include "mhd/memory.h"
#include "core/model.h"
#include "probes/probe.h"
#include "train/records.h"
#include "tasks/task.h"

namespace mhd {

namespace {

namespace ls = landscape;

struct LandscapeOptions {
  std::int64_t grid = 15;
  double extent = 1.0;
  std::string directions = "memory_pca";
  std::int64_t trajectories = 6;
  std::int64_t max_iter = 100;
  double tol = 1e-4;
  double cluster_tol = 0.05;
  std::int64_t hvp_iterations = 20;
  std::string hvp = "autograd";
  std::int64_t descent_steps = 200;
  double grad_tol = 1e-2;
  std::int64_t sample = 0;
  std::int64_t seed = 0;
};

ParamSchema landscape_schema() {
  return {
      int_param("grid", 15, "grid points per side of the slice and basin map (odd: the centre is z*)", 3, 101),
      float_param("extent", 1.0, "half-width of the grid, in units of ||z*||", 1e-6, 100.0),
      choice_param("directions", "memory_pca", {"memory_pca", "random", "trajectory_pca"},
                   "the slice's plane: memory bank PCA (mapped by W_q^T), random, or trajectory PCA"),
      int_param("trajectories", 6, "convergence trajectories: z0 and trajectories - 1 perturbed starts", 1, 64),
      int_param("max_iter", 100, "maps of the plain iteration for trajectories and basins", 1, 10000),
      float_param("tol", 1e-4, "relative residual at which an iteration has converged", 1e-12, 0.5),
      float_param("cluster_tol", 0.05, "end points closer than cluster_tol ||z*|| share an attractor", 1e-8, 10.0),
      int_param("hvp_iterations", 20, "Lanczos steps on Hessian-vector products (capped at d_model)", 1, 1024),
      choice_param("hvp", "autograd", {"autograd", "finite_difference"},
                   "Hessian-vector products: double backward, or central differences of dE/dz"),
      int_param("descent_steps", 200, "gradient-descent steps on E looking for minima (0: none)", 0, 100000),
      float_param("grad_tol", 1e-2, "a point is critical when ||dE/dz|| <= grad_tol", 0.0, 1e6),
      int_param("sample", 0, "which sample of the first held-out batch is probed", 0, 1023),
      int_param("seed", 0, "seed of the random directions and perturbed starts", 0, 2147483647),
  };
}

LandscapeOptions read_options(const Params& p) {
  LandscapeOptions o;
  o.grid = p.integer("grid");
  o.extent = p.real("extent");
  o.directions = p.text("directions");
  o.trajectories = p.integer("trajectories");
  o.max_iter = p.integer("max_iter");
  o.tol = p.real("tol");
  o.cluster_tol = p.real("cluster_tol");
  o.hvp_iterations = p.integer("hvp_iterations");
  o.hvp = p.text("hvp");
  o.descent_steps = p.integer("descent_steps");
  o.grad_tol = p.real("grad_tol");
  o.sample = p.integer("sample");
  o.seed = p.integer("seed");
  if (o.grid % 2 == 0)
    throw Error("probes.landscape.grid must be odd so that the centre grid point is z*, got " + std::to_string(o.grid));
  return o;
}

// The unified dynamics of one sample: its context row repeated for however many states are asked
// about at once (the dynamics act on rows independently).
class SampleDynamics {
 public:
  SampleDynamics(UnifiedDynamics& dynamics, const DynamicsContext& context, std::int64_t sample)
      : dynamics_(dynamics), context_(context), sample_(sample) {}

  TensorMap map() {
    return [this](const at::Tensor& z) { return dynamics_.solver_map(context(z.size(0)))(z); };
  }
  TensorMap energy() {
    return [this](const at::Tensor& z) { return dynamics_.energy(z, context(z.size(0))).total; };
  }
  TensorMap grad_energy() {
    return [this](const at::Tensor& z) { return dynamics_.grad_energy(z, context(z.size(0))); };
  }

 private:
  const DynamicsContext& context(std::int64_t n) {
    auto it = cache_.find(n);
    if (it != cache_.end()) return it->second;
    return cache_.emplace(n, context_.repeated_row(sample_, n)).first->second;
  }

  UnifiedDynamics& dynamics_;
  DynamicsContext context_;
  std::int64_t sample_;
  std::map<std::int64_t, DynamicsContext> cache_;
};

// The memory's stored patterns ([M, D]): the bank registered as "patterns" (buffer or parameter).
at::Tensor memory_bank(UnifiedDynamics& dynamics) {
  Memory* memory = dynamics.memory();
  if (!memory || !dynamics.options().use_memory)
    throw Error("probes.landscape.directions = \"memory_pca\" needs the memory (model.use_memory = true); "
                "use \"random\" or \"trajectory_pca\"");
  for (const auto& item : memory->named_buffers(/*recurse=*/false))
    if (item.key() == "patterns") return item.value().detach();
  for (const auto& item : memory->named_parameters(/*recurse=*/false))
    if (item.key() == "patterns") return item.value().detach();
  throw Error("probes.landscape.directions = \"memory_pca\": this memory has no pattern bank named "
              "\"patterns\"; use \"random\" or \"trajectory_pca\"");
}

// The last D entries of each row: the last position's state of [B, L * D] (all of [B, D]).
at::Tensor last_d(const at::Tensor& z, std::int64_t D) { return z.narrow(1, z.size(1) - D, D); }

class LandscapeProbe final : public Probe {
 public:
  explicit LandscapeProbe(const Params& params) : o_(read_options(params)) {}

  void run(ProbeContext& ctx) override {
    UnifiedModel& model = ctx.model;
    if (!model.deq_enabled())
      throw Error("the landscape is that of the DEQ dynamics' energy; this model has model.deq = false");
    const Batch batch = ctx.task.eval_batch(o_.sample + 1, 0);
    const ModelOutput out = model.forward(batch.inputs.to(ctx.device));
    // In the sequence form the landscape is the last position's: z_{L-1}: [D] with the earlier
    // positions held at their equilibrium (a fixed point of its own; docs/design.md §4).
    DynamicsContext position;
    {
      at::NoGradGuard no_grad;
      position = model.dynamics().last_position(out.context, out.z_star.detach());
    }
    const std::int64_t D = model.dynamics().options().d_model;
    const at::Tensor z_star = last_d(out.z_star.detach(), D).narrow(0, o_.sample, 1);  // [1, D]
    const at::Tensor z0 = last_d(out.z0.detach(), D).narrow(0, o_.sample, 1);          // [1, D]
    const double norm = z_star.norm().item<double>();
    scale_ = norm > 1e-6 ? norm : 1.0;  // lengths in units of ||z*||
    SampleDynamics sd(model.dynamics(), position, o_.sample);
    f_ = sd.map();
    energy_ = sd.energy();
    grad_ = sd.grad_energy();
    ctx_ = &ctx;

    const Trajectories traj = trajectories(z0, z_star);
    const ls::Plane plane = slice_plane(model.dynamics(), z_star, traj);
    const at::Tensor coords = slice(plane);
    const at::Tensor attractors = basins(plane, coords, z_star);
    critical_points(z_star, attractors, traj.starts, D);
  }

 private:
  struct Trajectories {
    at::Tensor starts;  // [T, D]
    ls::Pca pca;        // of all iterates
  };

  void metric(const std::string& name, double value) const {
    if (ctx_->sink.metric) ctx_->sink.metric(ctx_->step, "landscape_" + name, value);
  }
  void point(const std::string& name, std::int64_t i, std::int64_t j, double x, double y, double value) const {
    if (ctx_->sink.point) ctx_->sink.point(ProbePoint{"landscape", name, i, j, x, y, value});
  }

  Trajectories trajectories(const at::Tensor& z0, const at::Tensor& z_star) {
    const std::int64_t D = z0.size(1);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(o_.seed) + 1);
    at::Tensor w = at::randn({o_.trajectories - 1, D}, gen, at::TensorOptions().dtype(at::kDouble));  // [T-1, D]
    w = (w / w.norm(2, {1}, true).clamp_min(1e-12) * (o_.extent * scale_)).to(z0.options());
    Trajectories t;
    t.starts = at::cat({z0, z0 + w});  // [T, D]
    const ls::Iterates it = ls::iterate_map(f_, t.starts, o_.max_iter, o_.tol);
    // Each trajectory's iterates up to where it stopped (path repeats a converged row's end).
    std::vector<at::Tensor> points;
    std::vector<std::int64_t> length;
    for (std::int64_t n = 0; n < o_.trajectories; ++n) {
      length.push_back(it.steps[n].item<std::int64_t>() + 1);
      points.push_back(it.path.select(1, n).narrow(0, 0, length.back()));  // [len, D]
    }
    const at::Tensor all = at::cat(points);  // [sum len, D]
    t.pca = ls::principal_components(all, std::min<std::int64_t>({2, all.size(0), D}));
    at::Tensor energies;
    {
      at::NoGradGuard no_grad;
      energies = energy_(all).to(at::kCPU, at::kDouble);  // [sum len]
    }
    const ls::Plane pca_plane{t.pca.mean.to(all.options()), t.pca.directions[0],
                              t.pca.directions.size(0) > 1 ? t.pca.directions[1] : at::zeros_like(t.pca.directions[0])};
    const at::Tensor xy = ls::project(pca_plane, all).to(at::kCPU, at::kDouble);  // [sum len, 2]
    std::int64_t row = 0;
    for (std::int64_t n = 0; n < o_.trajectories; ++n)
      for (std::int64_t j = 0; j < length[n]; ++j, ++row)
        point("trajectories", n, j, xy[row][0].item<double>(), xy[row][1].item<double>(), energies[row].item<double>());
    metric("trajectories_converged", it.converged.to(at::kDouble).mean().item<double>());
    metric("trajectory_iterations", it.steps.to(at::kDouble).mean().item<double>());
    const double top2 = t.pca.variance.sum().item<double>();
    metric("trajectory_pca_share", t.pca.total_variance > 0 ? top2 / t.pca.total_variance : 1.0);
    // Where the trajectory from z0 ended, relative to the model's z*: a check that plain iteration of
    // the same map finds the same equilibrium as the model's solver.
    metric("trajectory_end_distance", (it.end[0] - z_star[0]).norm().item<double>() / scale_);
    return t;
  }

  ls::Plane slice_plane(UnifiedDynamics& dynamics, const at::Tensor& z_star, const Trajectories& traj) {
    const std::int64_t D = z_star.size(1);
    at::Tensor directions;  // [2, D]
    if (o_.directions == "memory_pca") {
      const at::Tensor bank = memory_bank(dynamics);  // [M, D] in query space
      const ls::Pca pca = ls::principal_components(bank, 2);
      const at::Tensor p = pca.directions.to(z_star.options());  // [2, D]
      const TensorMap query = [&dynamics](const at::Tensor& z) { return dynamics.query(z); };
      // W_q^T p_k, one row each: the VJP of the affine query map at any point.
      const at::Tensor mapped = vector_jacobian_product(query, z_star.expand({2, D}), p);
      directions = ls::orthonormal_rows(mapped, "probes.landscape.directions = \"memory_pca\"");
      metric("memory_pca_share", pca.variance.sum().item<double>() / pca.total_variance);
    } else if (o_.directions == "random") {
      directions = ls::random_orthonormal(2, D, static_cast<std::uint64_t>(o_.seed), z_star.options());
    } else {  // trajectory_pca
      if (traj.pca.directions.size(0) < 2)
        throw Error("probes.landscape.directions = \"trajectory_pca\" needs trajectories with at least 3 "
                    "iterates in all; raise trajectories or max_iter");
      directions = ls::orthonormal_rows(traj.pca.directions.to(z_star.options()),
                                        "probes.landscape.directions = \"trajectory_pca\"");
    }
    return ls::Plane{z_star[0], directions[0], directions[1]};
  }

  at::Tensor slice(const ls::Plane& plane) {
    const ls::Slice s = ls::energy_slice(f_, energy_, plane, o_.grid, o_.extent * scale_);
    const auto c = s.coords.accessor<double, 1>();
    const auto e = s.energy.accessor<double, 2>();
    const auto r = s.residual.accessor<double, 2>();
    for (std::int64_t i = 0; i < o_.grid; ++i)
      for (std::int64_t j = 0; j < o_.grid; ++j) {
        point("energy_slice", i, j, c[i], c[j], e[i][j]);
        point("residual_slice", i, j, c[i], c[j], r[i][j]);
      }
    const std::int64_t mid = o_.grid / 2;
    metric("energy_center", e[mid][mid]);
    metric("energy_min", s.energy.min().item<double>());
    metric("energy_max", s.energy.max().item<double>());
    metric("residual_center", r[mid][mid]);
    metric("residual_max", s.residual.max().item<double>());
    // Is z* the lowest point of the slice? Its rank among the grid's energies (0: lowest).
    metric("energy_center_rank", s.energy.lt(e[mid][mid]).sum().item<double>() / static_cast<double>(o_.grid * o_.grid));
    return s.coords;
  }

  // The basin map; returns the attractors found ([K, D], row 0 = z* refined).
  at::Tensor basins(const ls::Plane& plane, const at::Tensor& coords, const at::Tensor& z_star) {
    const ls::Iterates refined = ls::iterate_map(f_, z_star, o_.max_iter, o_.tol);
    const at::Tensor known = refined.converged[0].item<bool>() ? refined.end : z_star;
    const ls::Iterates it = ls::iterate_map(f_, ls::plane_points(plane, coords), o_.max_iter, o_.tol);
    const ls::Basins b = ls::cluster_attractors(it.end, it.converged, known, o_.cluster_tol * scale_);
    const auto c = coords.accessor<double, 1>();
    const auto label = b.labels.accessor<std::int64_t, 1>();
    for (std::int64_t i = 0; i < o_.grid; ++i)
      for (std::int64_t j = 0; j < o_.grid; ++j)
        point("basins", i, j, c[i], c[j], static_cast<double>(label[i * o_.grid + j]));
    const double cells = static_cast<double>(o_.grid * o_.grid);
    metric("basins", static_cast<double>(b.reached()));
    metric("basin_share", static_cast<double>(b.counts[0].item<std::int64_t>()) / cells);
    metric("grid_converged_share", it.converged.to(at::kDouble).mean().item<double>());
    metric("basin_iterations", it.steps.to(at::kDouble).mean().item<double>());
    metric("zstar_refine_distance", (known[0] - z_star[0]).norm().item<double>() / scale_);
    return b.attractors.to(z_star.options());
  }

  void critical_points(const at::Tensor& z_star, const at::Tensor& attractors, const at::Tensor& starts,
                       std::int64_t D) {
    constexpr std::int64_t kMaxAttractors = 8;  // the basin map can find many; curvature of a few says enough
    std::vector<at::Tensor> candidates{z_star};
    std::vector<std::int64_t> source{0};
    for (std::int64_t k = 1; k < std::min<std::int64_t>(attractors.size(0), kMaxAttractors + 1); ++k) {
      candidates.push_back(attractors.narrow(0, k, 1));
      source.push_back(1);
    }
    if (o_.descent_steps > 0) {
      const ls::Descent d = ls::minimize_energy(energy_, grad_, starts, o_.descent_steps, o_.grad_tol);
      for (std::int64_t k = 0; k < d.z.size(0); ++k) {
        candidates.push_back(d.z.narrow(0, k, 1));
        source.push_back(2);
      }
      metric("descent_steps", static_cast<double>(d.steps));
      metric("descent_energy_min", d.energy.min().item<double>());
      metric("descent_grad_norm_max", d.grad_norm.max().item<double>());
      metric("descent_distance_min", (d.z - z_star).norm(2, {1}).min().item<double>() / scale_);
    }
    const at::Tensor points = at::cat(candidates);  // [C, D]
    const std::int64_t n = points.size(0);
    at::Tensor energies, grad_norms;
    {
      at::NoGradGuard no_grad;
      energies = energy_(points).to(at::kCPU, at::kDouble);
      grad_norms = grad_(points).norm(2, {1}).to(at::kCPU, at::kDouble);
    }
    const ls::LinearMap hvp =
        o_.hvp == "autograd" ? ls::autograd_hvp(energy_, points) : ls::finite_difference_hvp(grad_, points);
    const ls::Curvature curv =
        ls::extreme_curvatures(hvp, n, D, o_.hvp_iterations, static_cast<std::uint64_t>(o_.seed) + 2, points.options());
    std::map<ls::CriticalKind, int> count;
    int noncritical = 0;
    for (std::int64_t k = 0; k < n; ++k) {
      const double lo = curv.min[k].item<double>(), hi = curv.max[k].item<double>();
      const double g = grad_norms[k].item<double>();
      const ls::CriticalKind kind = ls::classify_curvature(lo, hi);
      point("critical_points", k, source[static_cast<std::size_t>(k)], lo, hi, g);
      point("critical_energy", k, static_cast<std::int64_t>(kind), lo, hi, energies[k].item<double>());
      if (g <= o_.grad_tol)
        ++count[kind];
      else
        ++noncritical;
    }
    metric("minima", count[ls::CriticalKind::Minimum]);
    metric("saddles", count[ls::CriticalKind::Saddle]);
    metric("maxima", count[ls::CriticalKind::Maximum]);
    metric("degenerate", count[ls::CriticalKind::Degenerate]);
    metric("noncritical", noncritical);
    metric("zstar_energy", energies[0].item<double>());
    metric("zstar_grad_norm", grad_norms[0].item<double>());
    metric("zstar_min_curvature", curv.min[0].item<double>());
    metric("zstar_max_curvature", curv.max[0].item<double>());
  }

  LandscapeOptions o_;
  double scale_ = 1.0;
  TensorMap f_, energy_, grad_;
  const ProbeContext* ctx_ = nullptr;
};

ProbeDefinition landscape_definition() {
  return ProbeDefinition{
      "landscape",
      "energy landscape around an equilibrium: slice, trajectories, basins, critical points",
      landscape_schema(),
      [](const Params& params) -> std::unique_ptr<Probe> { return std::make_unique<LandscapeProbe>(params); }};
}

}  // namespace

MHD_REGISTER_PROBE(landscape, landscape_definition);

}  // namespace mhd
