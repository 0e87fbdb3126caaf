// The small unified model the model-level tests build from a study text (mamba d_state 4 + hopfield 8
// slots, d_model 16, recall of 2 pairs in 8 tokens, one training step); each test gives its own
// [solver] and [backward] keys, the tolerances its comparisons need.
#pragma once

#include <string>

inline std::string model_study(const std::string& name, const std::string& solver_keys,
                               const std::string& backward_keys) {
  return R"([study]
name = ")" + name + R"("
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
residual = false
[backbone]
plugin = "mamba"
d_state = 4
expand = 2
[memory]
plugin = "hopfield"
size = 8
beta = 1.0
[solver]
)" + solver_keys + R"(
[backward]
mode = "implicit"
)" + backward_keys + R"(
[train]
steps = 1
)";
}
