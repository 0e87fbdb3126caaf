// When a trial whose numbers stay finite has still blown up (docs/studies.md, "Divergence"): its
// loss stays far above its running level, or its forward residual explodes. Non-finite values are
// the trainer's own check; this rule catches the finite blow-ups (a loss of 1e4 after 1.4).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace mhd {

struct TrialConfig;

// What the rule watches, each against its own running level.
enum class DivergenceSignal { Loss, ForwardResidual };
const char* to_string(DivergenceSignal signal);

// [train] diverge_* keys (docs/studies.md, [train]).
struct DivergenceOptions {
  double loss_factor = 10.0;        // diverge_loss_factor: loss > factor x |median of the window|; 0 off
  double residual_factor = 1000.0;  // diverge_residual_factor: abs residual > factor x its median; 0 off
  std::int64_t window = 20;         // diverge_window: previous steps whose median is the running level
  std::int64_t patience = 5;        // diverge_patience: consecutive steps above it before the trial diverges

  bool enabled() const { return loss_factor > 0 || residual_factor > 0; }
  // From the trial's [train] table (the schema has checked the ranges).
  static DivergenceOptions from(const TrialConfig& config);
};

// Cross-key checks of the diverge_* keys: throws mhd::Error naming the key (check_training_config
// calls it, so `mhd validate` reports it).
void check_divergence_config(const TrialConfig& config);

// One signal's running level: the median of the last `window` values that were not above it.
// A value above factor x |level| counts one step in a row; `patience` in a row is a blow-up. Values
// above the level stay out of the window, so a blow-up cannot raise the level it is judged by.
class RunningLevel {
 public:
  RunningLevel(double factor, std::int64_t window, std::int64_t patience)
      : factor_(factor), window_(window), patience_(patience) {}
  // True when this value completes `patience` consecutive values above the level.
  bool observe(double value);
  bool judging() const { return factor_ > 0 && static_cast<std::int64_t>(history_.size()) >= window_; }
  double level() const;              // median of the window (0 while it is empty)
  std::int64_t above_in_a_row() const { return above_; }
  double first_above() const { return first_above_; }  // the first value of the current run above

 private:
  double factor_;
  std::int64_t window_, patience_;
  std::deque<double> history_;
  std::int64_t above_ = 0;
  double first_above_ = 0;
};

// The trainer's hook: one observe() per training step with that step's values.
class DivergenceMonitor {
 public:
  explicit DivergenceMonitor(const DivergenceOptions& options);
  // `abs_residual` absent when the step had no forward solve. Returns the reason when the trial has
  // diverged at `step`, e.g. "loss 3.2e+04 above 10 x its running median 1.41 for 5 steps (from step 37)".
  std::optional<std::string> observe(std::int64_t step, double loss, std::optional<double> abs_residual);

 private:
  std::optional<std::string> check(DivergenceSignal signal, RunningLevel& level, double factor, double value,
                                   std::int64_t step);
  DivergenceOptions options_;
  RunningLevel loss_, residual_;
  std::int64_t run_start_[2] = {-1, -1};  // step where each signal's current run above its level began
};

}  // namespace mhd
