// Training one trial: AdamW on the study's objective, metrics and solver traces per step,
// held-out evaluation (docs/design.md §4).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "train/records.h"

namespace mhd {

class PluginRegistry;
class Task;
class UnifiedModel;
struct TrialConfig;

// The trained model as TrainOptions::after_training sees it.
struct TrainedModel {
  UnifiedModel& model;
  Task& task;
  c10::Device device;
  const MetricSink& sink;  // metrics recorded at `step` also become the TrainResult's final metrics
  std::int64_t step;       // the last training step
};

struct TrainProgress {
  std::int64_t step = 0, steps = 0;
  double loss = 0, accuracy = -1;  // accuracy < 0: no evaluation yet
  std::int64_t accuracy_step = 0;  // the evaluation step `accuracy` comes from (<= step)
  double solver_iters = 0, rel_residual = 0, seconds_per_step = 0;
};

struct TrainResult {
  TrialStatus status = TrialStatus::Done;
  std::string error;
  std::int64_t diverged_step = -1;
  std::int64_t parameter_count = 0;
  double chance_accuracy = 0;
  std::int64_t resumed_from_step = -1;  // the checkpoint's step when the trial resumed from one
  std::map<std::string, double> first_metrics;  // first value of each metric
  std::map<std::string, double> final_metrics;  // last value of each metric
};

// Checkpoints and resume.
struct TrainOptions {
  // Where the trial's checkpoint lives ("" = none). With [train] checkpoint_every = N > 0 the
  // trainer writes it every N steps (checkpoint.h; atomic), and beside it PATH.trainer, the
  // trainer's own counters and the continual accuracy matrix (two records, so a kill between the
  // two writes still leaves the record of the checkpoint's step).
  std::string checkpoint_path;
  // Continue from checkpoint_path when that file exists (otherwise start from step 1): model,
  // optimizer and memory bank restored, metrics from the checkpoint's step + 1 on, `resumed_from_step`
  // logged at the checkpoint's step. Every random draw of step s is a function of (seed, s) (the
  // task's batch via Task::seek, torch's generator re-seeded per step), so the resumed metrics equal
  // an uninterrupted run's. Not restored: warm-start equilibria (solver.warm_start: the first resumed
  // solve starts cold) and optimizations' internal state.
  bool resume = false;
  // Runs on the trained model after the last step (the runner passes the study's probes,
  // probes/probe.h), in eval mode under a NoGradGuard; an exception fails the trial with its message.
  std::function<void(const TrainedModel&)> after_training;
};

// Trains the trial's model on its task. Never throws for numerical trouble: a non-finite loss or
// equilibrium ends the trial as Diverged with the step. Configuration errors throw mhd::Error.
TrainResult train_trial(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink,
                        const std::function<void(const TrainProgress&)>& on_progress = nullptr,
                        const TrainOptions& options = {});

// Checks the [train] keys that depend on each other or on other tables (memory_enable_step needs
// the memory, continual_tasks needs steps >= K, ...). Throws mhd::Error with a one-line message
// naming the key. train_trial calls it; the study loader too, so a study fails before it runs.
void check_training_config(const TrialConfig& config);

// --- curriculum: the values in force at training step s (1, 2, ...) ---
struct CurriculumValues {
  double lr = 0;               // lr * min(1, s / warmup_steps)
  std::int64_t max_iter = 0;   // max_iter_start -> solver.max_iter linearly over schedule_steps
  double tol = 0;              // tol_start -> solver.tol geometrically over schedule_steps
  bool memory_enabled = true;  // s >= memory_enable_step
};
CurriculumValues curriculum_at(const TrialConfig& config, std::int64_t step);

// --- validation: iterations of the forward solves (one per held-out batch) ---
struct IterationStats {
  double mean = 0, median = 0, max = 0;
};
IterationStats iteration_stats(std::vector<double> iterations);  // empty: all 0

// --- continual learning ---
// A[i][j]: accuracy on task j after training task i (K x K).
// Average forgetting: mean over j < K-1 of (max over i < K-1 of A[i][j]) - A[K-1][j]; 0 for K < 2.
double average_forgetting(const std::vector<std::vector<double>>& A);
// Mean of the last row: accuracy on every task after training them all.
double average_final_accuracy(const std::vector<std::vector<double>>& A);

}  // namespace mhd
