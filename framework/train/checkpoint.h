// Checkpoints: a trial's model (parameters and buffers, the memory bank
// included), optimizer state and step, with the trial's resolved configuration, in one file.
// The trainer writes them every [train] checkpoint_every steps; a resumed trial continues from
// the last one; `mhd generate CHECKPOINT` rebuilds the model from it alone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace torch::optim {
class Optimizer;
}

namespace mhd {

class PluginRegistry;
class UnifiedModel;
struct TrialConfig;

struct CheckpointInfo {
  std::int64_t step = 0;        // optimizer steps completed when it was written
  std::string config_json;      // TrialConfig::to_json() of the trial that wrote it
};

// Writes atomically (a temporary file renamed over `path`), so a kill while writing leaves the
// previous checkpoint intact. `optimizer` may be null (no optimizer state stored).
void save_checkpoint(const std::string& path, const TrialConfig& config, std::int64_t step, UnifiedModel& model,
                     torch::optim::Optimizer* optimizer);

// Reads the step and configuration without touching the model. Throws mhd::Error naming the file
// when it is missing or not a checkpoint.
CheckpointInfo read_checkpoint_info(const std::string& path);

// Restores parameters, buffers (memory bank) and, when `optimizer` is given, its state into
// objects built from the same configuration. Throws mhd::Error naming the file on a mismatch
// (missing or extra tensor, other shape, optimizer state that does not fit; and, when `expected`
// is given, a configuration whose hash differs from the stored one). Returns the stored step.
// The warm-start equilibria of the previous batch are not stored: a resumed solve starts cold once.
std::int64_t load_checkpoint(const std::string& path, UnifiedModel& model, torch::optim::Optimizer* optimizer,
                             const TrialConfig* expected = nullptr);

// A model rebuilt from the checkpoint's own configuration (for `mhd generate`), in eval mode.
// The plugins the configuration names must be loaded in `registry`. vocab_size < 0: the stored
// embedding's row count (so the task's data is not needed).
struct LoadedModel {
  std::shared_ptr<UnifiedModel> model;
  std::unique_ptr<TrialConfig> config;
  std::int64_t step = 0;
};
LoadedModel load_model_from_checkpoint(const std::string& path, PluginRegistry& registry, std::int64_t vocab_size = -1);

}  // namespace mhd
