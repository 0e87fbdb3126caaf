// A meta-trained accelerator for fixed-point solves (docs/design.md §3, "Learned solver"), after
// Bai, Koltun and Kolter (2022), "Neural Deep Equilibrium Solvers":
//
//   initialiser  z0_t = z0_t + W2 tanh(W1 x_t + b1) + b2       per position t; x_t: [D] the position's
//                                                              input (FixedPointProblem::context)
//   mixer        (alpha, beta) = Anderson's weights alpha_LS + a learned correction (sum 0), and a
//                learned damping beta = 2 sigmoid(.), from each sample's normalised history Gram
//                matrix G G^T / (tr(G G^T) / n) and alpha_LS
//   step         z_{k+1} = beta sum_i alpha_i f_i + (1 - beta) sum_i alpha_i x_i
//
// Both output layers start at zero, so an untrained accelerator is exactly Anderson (beta = 1) from
// the caller's z0. In the kits because the `learned` solver plugin runs it and `mhd meta-train`
// (train/meta_train.h) trains it through the same unrolled solve.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "mhd/solver.h"

namespace mhd {
namespace learned {

// What a saved accelerator fits: the model's d_model (the width of one position's state) and its
// own sizes. Written in the file's header and checked against a solve's context.
struct AcceleratorDims {
  std::int64_t d_model = 0;  // D
  std::int64_t hidden = 64;  // width of the initialiser's and the mixer's hidden layer
  std::int64_t m = 5;        // Anderson history size (the mixer's input is sized for it)
};

struct MixWeights {
  at::Tensor alpha;  // [B, n], sum 1 per sample, the state's dtype
  at::Tensor beta;   // [B, 1]
};

class Accelerator : public torch::nn::Module {
 public:
  explicit Accelerator(const AcceleratorDims& dims);
  const AcceleratorDims& dims() const { return dims_; }

  // z0: [B, P * D], context: [B, P, D] -> [B, P * D]. Throws mhd::Error when the context's D is
  // not the accelerator's (`source` names the file in the message).
  at::Tensor initial(const at::Tensor& z0, const at::Tensor& context, const std::string& source);
  // gram: [B, n, n] float64 (detached), alpha_ls: [B, n] float64, n <= m. The returned weights
  // carry gradients to the mixer's parameters only.
  MixWeights mix(const at::Tensor& gram, const at::Tensor& alpha_ls, at::ScalarType dtype);

 private:
  AcceleratorDims dims_;
  torch::nn::Linear init_in_{nullptr}, init_out_{nullptr};
  torch::nn::Linear mix_in_{nullptr}, mix_out_{nullptr};
};

// The file: a torch archive with the header "mhd_learned_format" (1), "d_model", "hidden", "m"
// and the parameters. save writes atomically (temporary file renamed over `path`).
void save_accelerator(const std::string& path, Accelerator& accelerator);
// Throws mhd::Error with one line naming the file when it is missing or not an accelerator file.
std::shared_ptr<Accelerator> load_accelerator(const std::string& path);

// Anderson's weights per sample: argmin ||sum_i a_i g_i||^2 + reg ||a||^2 s.t. sum_i a_i = 1, with
// reg = lam tr(G G^T) / n (the anderson plugin's relative regularisation). gram: [B, n, n] float64
// -> [B, n] float64; a sample whose bordered system is singular or non-finite gets the newest
// pair alone (a plain damped step).
at::Tensor anderson_weights(const at::Tensor& gram, double lam);

// The last m (x_i, f_i) pairs of each sample, oldest first, so the mixer sees the newest pair in the
// same slot every step. Kept as a list of tensors so the unrolled solve stays differentiable.
class History {
 public:
  explicit History(std::int64_t m) : m_(m) {}
  void push(const at::Tensor& x, const at::Tensor& fx);  // [B, D] each
  std::int64_t size() const { return static_cast<std::int64_t>(xs_.size()); }
  const at::Tensor& newest_f() const { return fs_.back(); }  // [B, D]
  at::Tensor gram() const;  // [B, n, n] float64, detached
  // sum_i alpha_i v_i for v = x or f: alpha [B, n] -> [B, D]
  at::Tensor combine_x(const at::Tensor& alpha) const { return combine(alpha, xs_); }
  at::Tensor combine_f(const at::Tensor& alpha) const { return combine(alpha, fs_); }

 private:
  static at::Tensor combine(const at::Tensor& alpha, const std::vector<at::Tensor>& v);
  std::int64_t m_;
  std::vector<at::Tensor> xs_, fs_;
};

// The next iterate from a history that holds the current (x, f(x)): Anderson's mix, corrected by
// the accelerator when one is given (nullptr: plain Anderson with beta = 1). [B, D]
at::Tensor accelerated_step(const History& history, Accelerator* accelerator, double lam);

struct SolveOptions {
  double lam = 1e-4;  // Anderson's relative regularisation
  std::int64_t m = 5; // history size without an accelerator (with one: its dims().m)
  std::string source; // the accelerator's file, for messages
};

// The solve the `learned` plugin runs (no autograd): starts from accelerator->initial(z0, context)
// when the problem has a context and an accelerator is given, else from z0; then accelerated steps.
// Stopping rule, traces, best iterate and the non-finite stop as every solver (mhd/solver.h); a
// sample at tol stays where it is. `name` names the solver in messages.
SolveResult accelerated_solve(const char* name, Accelerator* accelerator, const SolveOptions& options,
                              const FixedPointProblem& problem, const at::Tensor& z0, const SolveLimits& limits);

}  // namespace learned
}  // namespace mhd
