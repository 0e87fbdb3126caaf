// Meta-training of the `learned` solver's accelerator (docs/design.md §3, "Learned solver"), after
// Bai, Koltun and Kolter (2022): the model is frozen, each training batch's fixed point z* is solved
// once to a tight tol, and the accelerator is trained without labels to bring the unrolled K-step
// solve close to z*:
//   loss = ||z_0 - z*|| / ||z*||  +  (1 / K) sum_{k=1..K} ||z_k - z*|| / ||z*||     (per row, batch mean)
// where z_0 is the initialiser's prediction and z_k the accelerated iterates (gradients flow through
// f into z, never into the model's parameters). `mhd meta-train` runs it on a checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "mhd/kits/exit_predictor.h"
#include "mhd/kits/learned_accelerator.h"
#include "mhd/solver.h"

namespace mhd {

class UnifiedModel;

struct MetaTrainOptions {
  std::int64_t steps = 200;   // optimizer steps, cycling over the training batches
  std::int64_t unroll = 6;    // K
  double lr = 1e-3;           // Adam
  double lam = 1e-4;          // Anderson's relative regularisation in the unrolled and measured solves
  SolveLimits reference{300, 1e-5};  // the high-accuracy solve of z* (plain Anderson)
  SolveLimits measure{30, 1e-3};     // iterations-to-tol on held-out batches (the model's forward limits)
};

// One solver's iterations to tol over the held-out batches.
struct SolveStats {
  double mean_iterations = 0.0;  // per batch solve (a batch stops when its last row is at tol)
  double converged_share = 0.0;  // of the batch solves
  double mean_wall_ms = 0.0;     // per batch solve
};

struct MetaTrainReport {
  SolveStats baseline;   // the given baseline solver (anderson), when one was given
  SolveStats before;     // the accelerator as given (untrained: plain Anderson)
  SolveStats after;      // the trained accelerator
  double first_loss = 0.0, last_loss = 0.0;  // the unrolled loss of the first and last step
  double reference_converged_share = 0.0;    // of the training and held-out reference solves
  double max_distance_to_reference = 0.0;    // trained solves' largest ||z - z*|| / ||z*|| (held-out)
};

// train_tokens / eval_tokens: [B, L] token batches. The model is put in eval mode and its
// parameters are frozen for the duration (restored after). `baseline` (nullable) is measured on the
// held-out batches beside the accelerator; `on_step(step, loss)` is called after every step.
MetaTrainReport meta_train(UnifiedModel& model, learned::Accelerator& accelerator,
                           const std::vector<at::Tensor>& train_tokens, const std::vector<at::Tensor>& eval_tokens,
                           const MetaTrainOptions& options, Solver* baseline = nullptr,
                           const std::function<void(std::int64_t, double)>& on_step = {});

// Fitting the early_exit solver's convergence predictor (mhd/kits/exit_predictor.h) on the frozen
// model's solves: `inner` solves each batch from the model's z0 at `limits` while every evaluation of
// f records each row's features and whether one plain step from there lands below tol; the MLP is
// fitted to the training batches' rows and scored on the held-out batches' rows.
struct ExitPredictorOptions {
  exit_predictor::FitOptions fit;
  SolveLimits limits{30, 1e-3};  // the recorded solves (the model's forward limits)
};

struct ExitPredictorReport {
  exit_predictor::FitReport fit;
  std::int64_t train_rows = 0, held_out_rows = 0;
};

ExitPredictorReport fit_exit_predictor(UnifiedModel& model, exit_predictor::Predictor& predictor,
                                       const std::vector<at::Tensor>& train_tokens,
                                       const std::vector<at::Tensor>& eval_tokens, Solver& inner,
                                       const ExitPredictorOptions& options);

// An early_exit solver's cost and outcome on the model's forward solves of `tokens`, per batch solve.
struct EarlyExitStats {
  double sample_evals = 0.0;     // rows x evaluations actually needed (early_exit_sample_evals)
  double f_evals = 0.0;          // evaluations of the batch's map
  double converged_share = 0.0;  // of the batch solves
  double worst_rel = 0.0;        // the largest final relative residual of any row
  double mean_wall_ms = 0.0;
};
EarlyExitStats measure_early_exit(UnifiedModel& model, const std::vector<at::Tensor>& tokens, Solver& solver,
                                  const SolveLimits& limits);

}  // namespace mhd
