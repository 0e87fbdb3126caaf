// The early-exit solver's convergence predictor (docs/design.md §3, "Early exit"): a small MLP on a
// row's state and residual history that says whether one plain step f(z) from here lands below tol,
// trained on solver trajectories the framework records (`mhd meta-train --exit-predictor`).
//
// Features of a row at one evaluation of f (z, f(z), rel = ||f(z) - z|| / ||f(z)||), missing history 0:
//   x1 = log10(rel_k / tol)                  how far the row is from tol
//   x2 = log10(rel_k / rel_{k-1})            its contraction over the last evaluation
//   x3 = log10(rel_{k-1} / rel_{k-2})        the one before
//   x4 = log10(||z_k - z_{k-1}|| / ||z_k||)  how far the solver moved it
//   x5 = log10(||z_k|| / sqrt(D))            the state's scale
// In the kits because the `early_exit` plugin runs the predictor and meta-training fits it from the
// same features.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "mhd/solver.h"

namespace mhd {
namespace exit_predictor {

constexpr std::int64_t kFeatures = 5;

// Each row's last two residuals and last state, updated once per evaluation of f.
class RowHistory {
 public:
  // z, fz: [B, D], rel: [B] of this evaluation -> features [B, kFeatures] float32 (detached), then
  // remembers this evaluation as the previous one.
  at::Tensor observe(const at::Tensor& z, const at::Tensor& rel, double tol);
  std::int64_t evaluations() const { return evaluations_; }

 private:
  at::Tensor rel_prev_, rel_prev2_, z_prev_;
  std::int64_t evaluations_ = 0;
};

class Predictor : public torch::nn::Module {
 public:
  explicit Predictor(std::int64_t hidden = 16);
  std::int64_t hidden() const { return hidden_; }
  // features: [N, kFeatures] -> logits [N]; the features are standardised with the training set's
  // mean and scale (buffers saved with the parameters).
  at::Tensor logits(const at::Tensor& features);
  void set_standardisation(const at::Tensor& mean, const at::Tensor& scale);  // [kFeatures] each

 private:
  std::int64_t hidden_;
  torch::nn::Linear in_{nullptr}, out_{nullptr};
  at::Tensor mean_, scale_;
};

// The file: a torch archive with "mhd_exit_predictor_format" (1), "hidden" and the parameters,
// written atomically. load throws mhd::Error with one line naming the file.
void save_predictor(const std::string& path, Predictor& predictor);
std::shared_ptr<Predictor> load_predictor(const std::string& path);

// Rows x evaluations of solves: the features of every row still above tol at an evaluation, and
// whether one plain step from there, f(z), was below tol (1) or not (0).
struct Trajectories {
  at::Tensor features;  // [N, kFeatures] float32
  at::Tensor labels;    // [N] float32
  std::int64_t rows() const { return features.defined() ? features.size(0) : 0; }
  void append(const Trajectories& more);
};

// Runs `solver` on the problem with a recording map: at each evaluation, the rows above tol get
// their features and, from one extra evaluation f(f(z)), their label.
Trajectories record_trajectories(Solver& solver, const FixedPointProblem& problem, const at::Tensor& z0,
                                 const SolveLimits& limits);

struct FitOptions {
  std::int64_t steps = 500;   // full-batch Adam steps on the weighted cross-entropy
  double lr = 1e-2;
  double threshold = 0.95;    // the confidence at which precision and recall are measured
};

struct FitReport {
  double first_loss = 0.0, last_loss = 0.0;
  double positive_share = 0.0;          // of the training rows
  double precision = 0.0, recall = 0.0; // on the held-out rows at `threshold` (NaN when undefined)
};

// Fits the predictor (standardisation from `train`, then the MLP); measures it on `held_out`.
FitReport fit(Predictor& predictor, const Trajectories& train, const Trajectories& held_out, const FitOptions& options);

}  // namespace exit_predictor
}  // namespace mhd
