#include "train/scoring.h"

#include <ATen/ATen.h>

#include "tasks/task.h"

namespace mhd {

TaskScore score(const at::Tensor& logits, const at::Tensor& labels) {
  // logits: [N, V] at the labelled positions only, labels: [N]
  TaskScore s;
  const auto n = labels.size(0);
  s.loss = n > 0 ? at::cross_entropy_loss(logits, labels) : logits.sum() * 0;
  s.accuracy = n > 0 ? (logits.argmax(1) == labels).sum().item<double>() / static_cast<double>(n) : 0.0;
  return s;
}

ScoredForward forward_scored(UnifiedModel& model, const at::Tensor& inputs, const at::Tensor& targets,
                             bool observe) {
  const auto labelled = targets != kIgnoreIndex;  // [B, L]
  ScoredForward r;
  r.out = model.forward(inputs, observe, labelled);
  r.task = score(r.out.logits, targets.masked_select(labelled));
  return r;
}

}  // namespace mhd
