// What the trainer keeps beside a checkpoint (train/trainer.h, TrainOptions): counters that
// metrics depend on and the continual accuracy matrix so far, in CHECKPOINT.trainer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mhd {

// One record per line, "step converged skipped rows K a00 a01 ...".
struct TrainerState {
  std::int64_t step = 0, converged_solves = 0, skipped_in_a_row = 0;
  std::vector<std::vector<double>> accuracy_matrix;  // rows so far, each K entries

  std::string record() const;
  static std::optional<TrainerState> parse(const std::string& line);
};

// The record of `step` from the file beside the checkpoint; mhd::Error when there is none.
TrainerState read_trainer_state(const std::string& checkpoint_path, std::int64_t step);
// Writes `previous` and `current` records (temporary file renamed over the old one), so a kill
// between the checkpoint's write and this one still leaves the record of the checkpoint's step.
void write_trainer_state(const std::string& checkpoint_path, const std::string& previous, const std::string& current);

}  // namespace mhd
