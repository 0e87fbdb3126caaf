// The mathematics of the energy-landscape probe, as plain functions of
// maps and energies so that each piece is tested on problems with known answers
// (tests/test_landscape.cpp); framework/src/probe_landscape.cpp applies them to a trained model.
//
// Conventions: a state batch is z: [N, D], one independent state per row; a map f: [N, D] -> [N, D]
// (the solver map), an energy E: [N, D] -> [N] (docs/design.md §4's total energy), its gradient
// dE/dz: [N, D] -> [N, D].
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd::landscape {

// ---- directions ---------------------------------------------------------------------------------

// The top-k principal directions of the rows of `points` ([N, D], N >= 2), by the SVD of the centred
// rows: directions [k, D] with orthonormal rows, variance [k] the variance along each (descending),
// total_variance the sum over all D directions (so variance / total_variance is the explained share).
struct Pca {
  at::Tensor mean;        // [D]
  at::Tensor directions;  // [k, D]
  at::Tensor variance;    // [k]
  double total_variance = 0.0;
};
Pca principal_components(const at::Tensor& points, std::int64_t k);

// Rows of `directions` ([k, D]) made orthonormal (Gram-Schmidt order: row 0 keeps its direction).
// Throws mhd::Error naming `what` when the rows are (numerically) linearly dependent.
at::Tensor orthonormal_rows(const at::Tensor& directions, const std::string& what);

// k random orthonormal directions in R^D ([k, D]), reproducible from `seed`.
at::Tensor random_orthonormal(std::int64_t k, std::int64_t dim, std::uint64_t seed,
                              const at::TensorOptions& options);

// ---- the plane and its grid ---------------------------------------------------------------------

// The affine plane center + a u + b v with u, v orthonormal.
struct Plane {
  at::Tensor center;  // [D]
  at::Tensor u, v;    // [D] each
};

// size points evenly spaced on [-extent, extent] ([size], double). An odd size puts 0 on the grid.
at::Tensor grid_coordinates(std::int64_t size, double extent);

// The grid's states: row i * size + j is center + coords[i] u + coords[j] v. -> [size * size, D]
at::Tensor plane_points(const Plane& plane, const at::Tensor& coords);

// Coordinates of `points` ([N, D]) in the plane: (<p - center, u>, <p - center, v>). -> [N, 2]
at::Tensor project(const Plane& plane, const at::Tensor& points);

// E and the fixed-point residual ||f(z) - z|| on the grid of the plane. energy, residual: [size, size]
// indexed [i, j] like plane_points.
struct Slice {
  at::Tensor coords;    // [size]
  at::Tensor energy;    // [size, size]
  at::Tensor residual;  // [size, size]
};
Slice energy_slice(const TensorMap& f, const TensorMap& energy, const Plane& plane, std::int64_t size,
                   double extent);

// ---- iterating the map --------------------------------------------------------------------------

// Plain fixed-point iteration z <- f(z) from each row of z0 ([N, D]) until its relative residual
// ||f(z) - z|| / (||f(z)|| + 1e-8) is <= tol (solver.h's `residuals`, the solvers' stopping rule) or
// max_iter maps were applied. A converged row stops moving (so `path` repeats its end point).
struct Iterates {
  at::Tensor path;       // [T + 1, N, D]: path[0] = z0, path[t] after t maps (T <= max_iter)
  at::Tensor steps;      // [N] int64: maps applied until the row converged (or T when it did not)
  at::Tensor converged;  // [N] bool
  at::Tensor end;        // [N, D]: the last iterate of each row
};
Iterates iterate_map(const TensorMap& f, const at::Tensor& z0, std::int64_t max_iter, double tol);

// Groups end points into attractors: a converged end point within distance `tol` of a known attractor
// (the nearest one) gets its label; otherwise it founds a new attractor. Not converged rows get -1.
// `known` ([K0, D], K0 may be 0) are the attractors known beforehand, labels 0..K0-1 in order.
struct Basins {
  at::Tensor labels;      // [N] int64
  at::Tensor attractors;  // [K, D], K >= K0
  at::Tensor counts;      // [K] int64: end points in each basin
  std::int64_t reached() const;  // attractors with at least one end point
};
Basins cluster_attractors(const at::Tensor& end, const at::Tensor& converged, const at::Tensor& known, double tol);

// ---- energy minimisation ------------------------------------------------------------------------

// Gradient descent on E from each row of z0, with Barzilai-Borwein step sizes safeguarded by an
// Armijo backtracking test (every accepted step lowers E). Stops a row once ||dE/dz|| <= grad_tol.
struct Descent {
  at::Tensor z;          // [N, D]
  at::Tensor energy;     // [N]
  at::Tensor grad_norm;  // [N]
  std::int64_t steps = 0;
};
Descent minimize_energy(const TensorMap& energy, const TensorMap& grad_energy, const at::Tensor& z0,
                        std::int64_t max_steps, double grad_tol);

// ---- curvature ----------------------------------------------------------------------------------

// v: [N, D] -> H(z) v: [N, D], the Hessian of E at the rows of a fixed z applied row by row.
using LinearMap = std::function<at::Tensor(const at::Tensor&)>;

// Exact Hessian-vector products by double backward: g = dE/dz is built once with a graph; each
// product is d<g, v>/dz. E must be twice differentiable (every op of the unified energy is).
LinearMap autograd_hvp(const TensorMap& energy, const at::Tensor& z);

// Central differences of the gradient: H v ~ (g(z + h v) - g(z - h v)) / 2h with
// h = eps (1 + ||z||) / ||v|| per row; error O(h^2) plus the gradient's rounding over 2h.
LinearMap finite_difference_hvp(const TensorMap& grad_energy, const at::Tensor& z, double eps = 1e-3);

// The extreme eigenvalues of each row's Hessian by `iterations` Lanczos steps on the products (with
// full reorthogonalisation; capped at D, where the tridiagonal matrix has H's whole spectrum). The
// extreme Ritz values are the extreme Rayleigh quotients over the Krylov space: inner bounds of
// lambda_min and lambda_max that converge fastest of all eigenvalues.
struct Curvature {
  at::Tensor min;  // [N] (double)
  at::Tensor max;  // [N] (double)
};
Curvature extreme_curvatures(const LinearMap& hvp, std::int64_t n, std::int64_t dim, std::int64_t iterations,
                             std::uint64_t seed, const at::TensorOptions& options);

enum class CriticalKind { Minimum, Saddle, Maximum, Degenerate };
// Minimum if min > z0, maximum if max < -z0, saddle if min < -z0 and max > z0, otherwise degenerate
// (a flat direction decides), with z0 = zero_tol * max(|min|, |max|) the level counted as 0.
CriticalKind classify_curvature(double min, double max, double zero_tol = 1e-3);
const char* to_string(CriticalKind kind);

}  // namespace mhd::landscape
