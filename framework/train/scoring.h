// The task loss of a batch: cross-entropy and accuracy over the labelled positions, with the
// model's head run only there (docs/benchmarks.md, "Platform": at a large vocabulary the
// [B, L, V] head is most of a step while a task may score a few positions).
#pragma once

#include <ATen/core/Tensor.h>

#include "core/model.h"

namespace mhd {

struct TaskScore {
  at::Tensor loss;  // scalar, with graph
  double accuracy = 0;
};

// logits: [N, V] at the labelled positions only, labels: [N]. N = 0 gives a zero loss with graph.
TaskScore score(const at::Tensor& logits, const at::Tensor& labels);

struct ScoredForward {
  ModelOutput out;
  TaskScore task;
};

// The model on inputs [B, L] with its head at the positions whose target is not kIgnoreIndex; the
// loss and accuracy are those of the full [B, L, V] logits with the others ignored.
ScoredForward forward_scored(UnifiedModel& model, const at::Tensor& inputs, const at::Tensor& targets,
                             bool observe = false);

}  // namespace mhd
