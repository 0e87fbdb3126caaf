// The [train] keys that depend on each other, and the curriculum's values per step
// (train/trainer.h).
#include <algorithm>
#include <cmath>

#include "config/trial_config.h"
#include "distributed/data_parallel.h"
#include "mhd/error.h"
#include "tasks/task.h"
#include "train/divergence.h"
#include "train/trainer.h"

namespace mhd {

void check_training_config(const TrialConfig& config) {
  const auto& t = config.train;
  const bool memory = config.model.flag("deq") && config.model.flag("use_memory");
  if (t.integer("memory_enable_step") > 1 && !memory)
    throw Error("train.memory_enable_step = " + std::to_string(t.integer("memory_enable_step")) +
                " needs the memory branch (model.deq = true and model.use_memory = true)");
  if (t.integer("memory_enable_step") > t.integer("steps"))
    throw Error("train.memory_enable_step = " + std::to_string(t.integer("memory_enable_step")) +
                " is after the last step (train.steps = " + std::to_string(t.integer("steps")) + ")");
  const bool schedule_keys = t.integer("max_iter_start") > 0 || t.real("tol_start") > 0;
  if (schedule_keys && t.integer("schedule_steps") == 0)
    throw Error("train.max_iter_start / train.tol_start need train.schedule_steps > 0 (the steps over which they move "
                "to the [solver] values)");
  const std::int64_t K = t.integer("continual_tasks");
  if (K == 1) throw Error("train.continual_tasks = 1: use 0 (off) or at least 2 tasks in sequence");
  if (K >= 2 && t.integer("steps") < K)
    throw Error("train.continual_tasks = " + std::to_string(K) + " needs train.steps >= " + std::to_string(K) +
                " (got " + std::to_string(t.integer("steps")) + ")");
  if (K >= 2) make_task(config.task_kind, config.task, 0)->select_part(K - 1, K);  // the task can be split so
  check_data_parallel_config(config);  // batch divisible by world_size, ... (data_parallel.h)
  check_divergence_config(config);    // factors > 1, patience <= window (divergence.h)
}

CurriculumValues curriculum_at(const TrialConfig& config, std::int64_t step) {
  const auto& t = config.train;
  CurriculumValues c;
  const std::int64_t warmup = t.integer("warmup_steps");
  c.lr = t.real("lr") * (warmup > 0 ? std::min(1.0, static_cast<double>(step) / static_cast<double>(warmup)) : 1.0);
  const std::int64_t max_iter = config.solve.integer("max_iter");
  const double tol = config.solve.real("tol");
  const std::int64_t over = t.integer("schedule_steps");
  // Progress through the schedule: 0 at step 1, 1 at step schedule_steps and after.
  const double frac = over <= 1 ? 1.0 : std::clamp(static_cast<double>(step - 1) / static_cast<double>(over - 1), 0.0, 1.0);
  const double iter0 = t.integer("max_iter_start") > 0 ? static_cast<double>(t.integer("max_iter_start")) : max_iter;
  c.max_iter = static_cast<std::int64_t>(std::lround(iter0 + frac * (static_cast<double>(max_iter) - iter0)));
  const double tol0 = t.real("tol_start") > 0 ? t.real("tol_start") : tol;
  // Tolerances span decades: interpolate their logarithm (linearly when one of them is 0).
  c.tol = tol0 > 0 && tol > 0 ? std::exp(std::log(tol0) + frac * (std::log(tol) - std::log(tol0)))
                              : tol0 + frac * (tol - tol0);
  if (frac == 1.0) c.tol = tol;  // exactly the [solver] value, not exp(log(tol))
  c.memory_enabled = step >= t.integer("memory_enable_step");
  return c;
}

}  // namespace mhd
