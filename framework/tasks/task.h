// Tasks: where training and evaluation batches come from. Tasks are part of the framework (not
// plugins); each kind is one file in tasks/ that declares a parameter schema like a plugin does (so
// [task] is validated the same way as every other table) and registers itself with
// MHD_REGISTER_TASK. A test or tool can register its own kind the same way.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "mhd/catalog.h"
#include "mhd/error.h"
#include "mhd/params.h"

namespace mhd {

// Labels equal to kIgnoreIndex carry no loss and no accuracy (e.g. every non-query position).
constexpr std::int64_t kIgnoreIndex = -100;

struct Batch {
  at::Tensor inputs;   // [B, L] int64 token ids
  at::Tensor targets;  // [B, L] int64 labels, kIgnoreIndex where there is nothing to predict
};

class Task {
 public:
  virtual ~Task() = default;
  // A fresh training batch; the stream is determined by the seed the task was made with.
  virtual Batch train_batch(std::int64_t batch_size) = 0;
  // Makes the next train_batch the one of training step `step` (1, 2, ...), a function of the
  // seed and the step alone, so a trial resumed from a checkpoint sees exactly the batches an
  // uninterrupted one would. The trainer calls it before every step.
  virtual void seek(std::int64_t step) = 0;
  // Continual learning ([train] continual_tasks): restricts every later batch (training and
  // held-out) to part `index` of `count` disjoint parts of the task, so parts trained in sequence
  // are different tasks; select_part(0, 1) is the whole task. Throws mhd::Error when the task
  // cannot be split that way (the default: it has no parts).
  virtual void select_part(std::int64_t index, std::int64_t count) {
    if (index == 0 && count == 1) return;
    throw Error("train.continual_tasks = " + std::to_string(count) + ": this task kind cannot be split into parts");
  }
  // Held-out batch number `index` (0, 1, ...): the same for every call and every trial with the
  // same task parameters, drawn from a stream the training batches never use.
  virtual Batch eval_batch(std::int64_t batch_size, std::int64_t index) = 0;
  virtual std::int64_t vocab_size() const = 0;
  // Accuracy of guessing uniformly among the labels the task can ask for (in the selected part).
  virtual double chance_accuracy() const = 0;
};

struct TaskDefinition {
  std::string name;         // the [task] kind
  std::string description;  // one line
  ParamSchema schema;       // the kind's [task] keys
  // params: validated against `schema`; seed: the trial's (training batches are a function of it).
  std::function<std::unique_ptr<Task>(const Params& params, std::uint64_t seed)> make;
  // Optional: throws mhd::Error when keys that are each valid cannot go together (e.g. a sequence
  // too short for its pairs). The study parser runs it on every resolved trial, so a study that
  // would fail at a trial's start fails validation instead (docs/studies.md); the message starts
  // with the offending "task.KEY", which the parser points at. `make` must throw the same errors.
  std::function<void(const Params& params)> check;
  // Optional: true when these parameters put every target at the last position, the only tasks the
  // pooled equilibrium (one state per sequence) may train on without seeing the future. Absent:
  // targets may sit anywhere.
  std::function<bool(const Params& params)> last_position_only;
};

// Every registered task kind.
Catalog<TaskDefinition>& task_catalog();

std::vector<std::string> task_kinds();  // sorted
// Throws mhd::Error naming the known kinds (with a "did you mean").
const ParamSchema& task_schema(const std::string& kind);
std::unique_ptr<Task> make_task(const std::string& kind, const Params& params, std::uint64_t seed);
// Runs the kind's `check` (nothing when it has none); throws mhd::Error as `make_task` would.
void check_task(const std::string& kind, const Params& params);
// The kind's last_position_only (false when it has none).
bool scores_last_position_only(const std::string& kind, const Params& params);

}  // namespace mhd

// In a task's source file: MHD_REGISTER_TASK(copy, [] { return TaskDefinition{...}; })
// (variadic: the lambda's commas are not macro argument separators).
#define MHD_REGISTER_TASK(NAME, ...) \
  static const bool mhd_task_registered_##NAME = ::mhd::task_catalog().add((__VA_ARGS__)())
