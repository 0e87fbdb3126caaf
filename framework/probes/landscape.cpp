#include "probes/landscape.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd::landscape {

namespace {

void check_rows(const at::Tensor& t, const char* function, const char* name) {
  if (!t.defined() || t.dim() != 2)
    throw Error(std::string(function) + ": " + name + " must be [N, D], got " +
                (t.defined() ? shape_string(t.sizes()) : std::string("an undefined tensor")));
}

at::Tensor row_dot(const at::Tensor& a, const at::Tensor& b) { return (a * b).sum(1); }  // [N]

}  // namespace

// ---- directions ---------------------------------------------------------------------------------

Pca principal_components(const at::Tensor& points, std::int64_t k) {
  check_rows(points, "principal_components", "points");
  const std::int64_t n = points.size(0), d = points.size(1);
  if (n < 2) throw Error("principal_components: needs at least 2 points, got " + std::to_string(n));
  if (k < 1 || k > std::min(n, d))
    throw Error("principal_components: k must be in [1, " + std::to_string(std::min(n, d)) + "], got " +
                std::to_string(k));
  Pca pca;
  const at::Tensor x = points.detach().to(at::kDouble);
  pca.mean = x.mean(0);                       // [D]
  const at::Tensor centred = x - pca.mean;    // [N, D]
  auto [U, S, Vh] = at::linalg_svd(centred, /*full_matrices=*/false);  // S: [min(N, D)], Vh: [min(N, D), D]
  at::Tensor directions = Vh.narrow(0, 0, k).clone();                  // [k, D]
  // An SVD's singular vectors have arbitrary signs: make each direction's largest entry positive so
  // the same data give the same plane.
  const at::Tensor pivot = directions.gather(1, directions.abs().argmax(1, true));  // [k, 1]
  directions = directions * at::where(pivot < 0, -1.0, 1.0);
  const at::Tensor variance = S.pow(2) / static_cast<double>(n - 1);  // [min(N, D)]
  pca.directions = directions.to(points.scalar_type());
  pca.mean = pca.mean.to(points.scalar_type());
  pca.variance = variance.narrow(0, 0, k);
  pca.total_variance = variance.sum().item<double>();
  return pca;
}

at::Tensor orthonormal_rows(const at::Tensor& directions, const std::string& what) {
  check_rows(directions, "orthonormal_rows", "directions");
  const at::Tensor x = directions.detach().to(at::kDouble);
  std::vector<at::Tensor> basis;
  for (std::int64_t i = 0; i < x.size(0); ++i) {
    at::Tensor row = x[i];
    const double norm0 = row.norm().item<double>();
    // Two Gram-Schmidt passes: one leaves O(eps * cond) of the earlier rows behind.
    for (int pass = 0; pass < 2; ++pass)
      for (const auto& b : basis) row = row - row.dot(b) * b;
    const double norm = row.norm().item<double>();
    if (!(norm0 > 0) || !(norm > 1e-6 * norm0))
      throw Error(what + ": direction " + std::to_string(i) + " is " +
                  (norm0 > 0 ? "linearly dependent on the ones before it" : "zero") +
                  "; the plane needs 2 independent directions");
    basis.push_back(row / norm);
  }
  return at::stack(basis).to(directions.options());
}

at::Tensor random_orthonormal(std::int64_t k, std::int64_t dim, std::uint64_t seed, const at::TensorOptions& options) {
  if (k < 1 || k > dim)
    throw Error("random_orthonormal: k must be in [1, " + std::to_string(dim) + "], got " + std::to_string(k));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor gaussian = at::randn({k, dim}, gen, at::TensorOptions().dtype(at::kDouble));  // [k, D]
  return orthonormal_rows(gaussian, "random_orthonormal").to(options);
}

// ---- the plane and its grid ---------------------------------------------------------------------

at::Tensor grid_coordinates(std::int64_t size, double extent) {
  if (size < 1) throw Error("grid_coordinates: size must be >= 1, got " + std::to_string(size));
  if (!(extent > 0) || !std::isfinite(extent))
    throw Error("grid_coordinates: extent must be a positive finite number, got " + std::to_string(extent));
  if (size == 1) return at::zeros({1}, at::kDouble);
  // extent (i - h) / h with h = (size - 1) / 2, not linspace: exactly 0 at the centre of an odd grid
  // (so that grid point is the plane's centre, bit for bit) and exactly symmetric.
  const double h = 0.5 * static_cast<double>(size - 1);
  return (at::arange(size, at::TensorOptions().dtype(at::kDouble)) - h) / h * extent;
}

at::Tensor plane_points(const Plane& plane, const at::Tensor& coords) {
  const std::int64_t size = coords.size(0);
  const at::Tensor c = coords.to(plane.center.options());
  const at::Tensor a = c.repeat_interleave(size).unsqueeze(1);  // [size^2, 1]: coords[i] for row i * size + j
  const at::Tensor b = c.repeat({size}).unsqueeze(1);           // [size^2, 1]: coords[j]
  return plane.center.unsqueeze(0) + a * plane.u.unsqueeze(0) + b * plane.v.unsqueeze(0);  // [size^2, D]
}

at::Tensor project(const Plane& plane, const at::Tensor& points) {
  check_rows(points, "project", "points");
  const at::Tensor basis = at::stack({plane.u, plane.v}).to(points.options());  // [2, D]
  return (points - plane.center.to(points.options()).unsqueeze(0)).matmul(basis.t());  // [N, 2]
}

Slice energy_slice(const TensorMap& f, const TensorMap& energy, const Plane& plane, std::int64_t size, double extent) {
  at::NoGradGuard no_grad;
  Slice slice;
  slice.coords = grid_coordinates(size, extent);
  const at::Tensor points = plane_points(plane, slice.coords);  // [size^2, D]
  // Chunks bound the memory of one evaluation (the memory's attention is [rows, slots]).
  constexpr std::int64_t kChunk = 4096;
  std::vector<at::Tensor> energies, residuals;
  for (std::int64_t start = 0; start < points.size(0); start += kChunk) {
    const at::Tensor z = points.narrow(0, start, std::min(kChunk, points.size(0) - start));
    energies.push_back(energy(z).detach().to(at::kDouble));
    residuals.push_back((f(z) - z).norm(2, {1}).detach().to(at::kDouble));
  }
  slice.energy = at::cat(energies).reshape({size, size});
  slice.residual = at::cat(residuals).reshape({size, size});
  return slice;
}

// ---- iterating the map --------------------------------------------------------------------------

Iterates iterate_map(const TensorMap& f, const at::Tensor& z0, std::int64_t max_iter, double tol) {
  check_rows(z0, "iterate_map", "z0");
  if (max_iter < 1) throw Error("iterate_map: max_iter must be >= 1, got " + std::to_string(max_iter));
  at::NoGradGuard no_grad;
  const std::int64_t n = z0.size(0);
  const auto flags = at::TensorOptions().dtype(at::kBool).device(z0.device());
  at::Tensor z = z0.detach().clone();
  at::Tensor active = at::ones({n}, flags);      // still iterating
  at::Tensor converged = at::zeros({n}, flags);
  at::Tensor steps = at::zeros({n}, at::TensorOptions().dtype(at::kLong).device(z0.device()));
  std::vector<at::Tensor> path{z};
  for (std::int64_t t = 0; t < max_iter && active.any().item<bool>(); ++t) {
    const at::Tensor fz = f(z);  // [N, D]
    const Residuals r = residuals(z, fz);
    const at::Tensor finite = at::isfinite(fz).all(1);  // a row that blew up stops, not converged
    const at::Tensor moving = active & finite;
    z = at::where(moving.unsqueeze(1), fz, z);
    steps = steps + moving.to(at::kLong);
    // z was within tol before this map; the row ends at f(z), one map closer to the fixed point.
    const at::Tensor done = moving & (r.rel <= tol);
    converged = converged | done;
    active = moving & ~done;
    path.push_back(z);
  }
  Iterates out;
  out.path = at::stack(path);  // [T + 1, N, D]
  out.steps = steps;
  out.converged = converged;
  out.end = z;
  return out;
}

std::int64_t Basins::reached() const { return counts.gt(0).sum().item<std::int64_t>(); }

Basins cluster_attractors(const at::Tensor& end, const at::Tensor& converged, const at::Tensor& known, double tol) {
  check_rows(end, "cluster_attractors", "end");
  if (converged.dim() != 1 || converged.size(0) != end.size(0))
    throw Error("cluster_attractors: converged must be [" + std::to_string(end.size(0)) + "], got " +
                shape_string(converged.sizes()));
  if (known.defined() && known.numel() > 0 && (known.dim() != 2 || known.size(1) != end.size(1)))
    throw Error("cluster_attractors: known must be [K, " + std::to_string(end.size(1)) + "], got " +
                shape_string(known.sizes()));
  if (!(tol > 0)) throw Error("cluster_attractors: tol must be > 0, got " + std::to_string(tol));
  const at::Tensor points = end.detach().to(at::kCPU, at::kDouble);
  const at::Tensor ok = converged.to(at::kCPU, at::kBool);
  std::vector<at::Tensor> attractors;
  std::vector<std::int64_t> counts;
  if (known.defined() && known.numel() > 0) {
    const at::Tensor k = known.detach().to(at::kCPU, at::kDouble);
    for (std::int64_t i = 0; i < k.size(0); ++i) {
      attractors.push_back(k[i]);
      counts.push_back(0);
    }
  }
  at::Tensor labels = at::full({points.size(0)}, -1, at::kLong);
  auto label = labels.accessor<std::int64_t, 1>();
  auto ok_at = ok.accessor<bool, 1>();
  for (std::int64_t i = 0; i < points.size(0); ++i) {
    if (!ok_at[i]) continue;
    std::int64_t best = -1;
    if (!attractors.empty()) {
      const at::Tensor distance = (at::stack(attractors) - points[i]).norm(2, {1});  // [K]
      const std::int64_t nearest = distance.argmin().item<std::int64_t>();
      if (distance[nearest].item<double>() < tol) best = nearest;
    }
    if (best < 0) {
      best = static_cast<std::int64_t>(attractors.size());
      attractors.push_back(points[i]);
      counts.push_back(0);
    }
    label[i] = best;
    ++counts[static_cast<std::size_t>(best)];
  }
  Basins out;
  out.labels = labels;
  out.attractors = attractors.empty() ? at::zeros({0, end.size(1)}, at::kDouble) : at::stack(attractors);
  out.counts = at::tensor(counts, at::kLong);
  return out;
}

// ---- energy minimisation ------------------------------------------------------------------------

Descent minimize_energy(const TensorMap& energy, const TensorMap& grad_energy, const at::Tensor& z0,
                        std::int64_t max_steps, double grad_tol) {
  check_rows(z0, "minimize_energy", "z0");
  if (max_steps < 0) throw Error("minimize_energy: max_steps must be >= 0, got " + std::to_string(max_steps));
  constexpr double kArmijo = 1e-4;     // sufficient decrease: E(z - t g) <= E(z) - c t ||g||^2
  constexpr int kMaxHalvings = 40;
  at::Tensor z = z0.detach().clone();                 // [N, D]
  at::Tensor E = energy(z).detach();                  // [N]
  at::Tensor g = grad_energy(z).detach();             // [N, D]
  at::Tensor t = at::full({z.size(0)}, 1e-2, E.options());  // step size per row
  at::Tensor stuck = at::zeros({z.size(0)}, E.options().dtype(at::kBool));
  at::Tensor prev_z, prev_g;
  Descent out;
  for (; out.steps < max_steps; ++out.steps) {
    const at::Tensor gn2 = row_dot(g, g);  // [N]
    const at::Tensor active = (gn2.sqrt() > grad_tol) & ~stuck;
    if (!active.any().item<bool>()) break;
    if (prev_z.defined()) {
      // Barzilai-Borwein: t = <s, y> / <y, y> with s, y the last step's change of z and of the
      // gradient, the inverse of a curvature along s; kept when the curvature is not positive.
      const at::Tensor s = z - prev_z, y = g - prev_g;
      const at::Tensor sy = row_dot(s, y), yy = row_dot(y, y);
      t = at::where((sy > 0) & (yy > 0), (sy / yy.clamp_min(1e-300)).clamp(1e-10, 1e6), t);
    }
    at::Tensor pending = active.clone();
    at::Tensor next_z = z, next_E = E;
    for (int h = 0; h < kMaxHalvings && pending.any().item<bool>(); ++h) {
      const at::Tensor candidate = z - t.unsqueeze(1) * g;
      const at::Tensor Ec = energy(candidate).detach();
      const at::Tensor accept = pending & at::isfinite(Ec) & (Ec <= E - kArmijo * t * gn2);
      next_z = at::where(accept.unsqueeze(1), candidate, next_z);
      next_E = at::where(accept, Ec, next_E);
      pending = pending & ~accept;
      t = at::where(pending, t * 0.5, t);
    }
    stuck = stuck | pending;  // no decrease at any step size: E is flat to rounding here
    prev_z = z;
    prev_g = g;
    z = next_z;
    E = next_E;
    g = grad_energy(z).detach();
  }
  out.z = z;
  out.energy = E;
  out.grad_norm = g.norm(2, {1});
  return out;
}

// ---- curvature ----------------------------------------------------------------------------------

LinearMap autograd_hvp(const TensorMap& energy, const at::Tensor& z) {
  torch::AutoGradMode enable(true);
  at::Tensor zz = z.detach().requires_grad_(true);
  const at::Tensor total = energy(zz).sum();
  if (!total.requires_grad()) {  // E does not depend on z: H = 0
    return [](const at::Tensor& v) { return at::zeros_like(v); };
  }
  const at::Tensor g = torch::autograd::grad({total}, {zz}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  return [zz, g](const at::Tensor& v) {
    torch::AutoGradMode enable(true);
    if (!g.requires_grad()) return at::zeros_like(v);  // E linear in z
    // d<g, v>/dz = H v (v is constant); rows are independent, so this is H_b v_b per row b.
    auto hv = torch::autograd::grad({g}, {zz}, {v.to(g.options())}, /*retain_graph=*/true,
                                    /*create_graph=*/false, /*allow_unused=*/true)[0];
    return hv.defined() ? hv.detach() : at::zeros_like(v);
  };
}

LinearMap finite_difference_hvp(const TensorMap& grad_energy, const at::Tensor& z, double eps) {
  if (!(eps > 0)) throw Error("finite_difference_hvp: eps must be > 0, got " + std::to_string(eps));
  const at::Tensor zc = z.detach();
  const at::Tensor scale = 1.0 + zc.norm(2, {1});  // [N]
  return [grad_energy, zc, scale, eps](const at::Tensor& v) {
    const at::Tensor vv = v.to(zc.options());
    const at::Tensor h = (eps * scale / vv.norm(2, {1}).clamp_min(1e-30)).unsqueeze(1);  // [N, 1]
    const at::Tensor forward = grad_energy(zc + h * vv).detach();
    const at::Tensor backward = grad_energy(zc - h * vv).detach();
    return (forward - backward) / (2 * h);
  };
}

Curvature extreme_curvatures(const LinearMap& hvp, std::int64_t n, std::int64_t dim, std::int64_t iterations,
                             std::uint64_t seed, const at::TensorOptions& options) {
  if (n < 1 || dim < 1) throw Error("extreme_curvatures: needs n >= 1 and dim >= 1");
  if (iterations < 1) throw Error("extreme_curvatures: iterations must be >= 1, got " + std::to_string(iterations));
  const std::int64_t k = std::min(iterations, dim);
  const auto dbl = at::TensorOptions().dtype(at::kDouble);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto unit_rows = [](const at::Tensor& x) { return x / x.norm(2, {1}, true).clamp_min(1e-300); };
  // Makes x ([N, D]) orthogonal to every Lanczos vector so far (full reorthogonalisation, twice).
  auto orthogonalise = [](at::Tensor x, const std::vector<at::Tensor>& basis) {
    for (int pass = 0; pass < 2; ++pass)
      for (const auto& q : basis) x = x - row_dot(x, q).unsqueeze(1) * q;
    return x;
  };
  std::vector<at::Tensor> Q;  // Lanczos vectors, each [N, D] (double, CPU)
  at::Tensor q = unit_rows(at::randn({n, dim}, gen, dbl));
  at::Tensor alpha = at::zeros({n, k}, dbl), beta = at::zeros({n, k}, dbl);  // beta[:, j]: T[j, j + 1]
  at::Tensor scale = at::zeros({n}, dbl);  // the largest |entry| of T so far, for the breakdown test
  for (std::int64_t j = 0; j < k; ++j) {
    Q.push_back(q);
    const at::Tensor w0 = hvp(q.to(options)).to(at::kCPU, at::kDouble);  // H q: [N, D]
    const at::Tensor a = row_dot(w0, q);
    alpha.select(1, j).copy_(a);
    if (j == k - 1) break;
    at::Tensor w = orthogonalise(w0, Q);
    const at::Tensor b = w.norm(2, {1});  // [N]
    scale = at::maximum(scale, at::maximum(a.abs(), b));
    // Breakdown: the Krylov space is invariant under H (b ~ 0), so its Ritz values are exact
    // eigenvalues; continue with a fresh random vector orthogonal to it (T gets a 0 off-diagonal).
    const at::Tensor broken = b <= 1e-10 * scale.clamp_min(1e-300);
    at::Tensor fresh = unit_rows(orthogonalise(at::randn({n, dim}, gen, dbl), Q));
    beta.select(1, j).copy_(at::where(broken, at::zeros_like(b), b));
    q = at::where(broken.unsqueeze(1), fresh, unit_rows(w));
  }
  // T = tridiag(beta, alpha, beta): [N, k, k]; its eigenvalues are the Ritz values.
  at::Tensor T = at::diag_embed(alpha);
  if (k > 1) {
    const at::Tensor off = beta.narrow(1, 0, k - 1);
    T = T + at::diag_embed(off, 1) + at::diag_embed(off, -1);
  }
  const at::Tensor ritz = at::linalg_eigvalsh(T);  // [N, k], ascending
  Curvature out;
  out.min = ritz.select(1, 0).clone();
  out.max = ritz.select(1, k - 1).clone();
  return out;
}

CriticalKind classify_curvature(double min, double max, double zero_tol) {
  const double zero = zero_tol * std::max(std::abs(min), std::abs(max));
  if (min > zero) return CriticalKind::Minimum;
  if (max < -zero) return CriticalKind::Maximum;
  if (min < -zero && max > zero) return CriticalKind::Saddle;
  return CriticalKind::Degenerate;
}

const char* to_string(CriticalKind kind) {
  switch (kind) {
    case CriticalKind::Minimum: return "minimum";
    case CriticalKind::Saddle: return "saddle";
    case CriticalKind::Maximum: return "maximum";
    case CriticalKind::Degenerate: return "degenerate";
  }
  return "?";
}

}  // namespace mhd::landscape
