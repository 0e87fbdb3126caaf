// The tiny unified model (as in tests/data/studies/tiny_model.toml, DESIGN's residual form) trained
// for 2 steps, as a whole study text for tests that run probes or pipelines; `extra` appends tables.
#pragma once

#include <string>

inline std::string tiny_study(const std::string& name, const std::string& output, const std::string& extra) {
  return R"([study]
name = ")" + name + R"("
output = ")" + output + R"("
threads = 1
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
[backbone]
plugin = "mamba"
d_state = 4
[memory]
plugin = "hopfield"
size = 8
[solver]
plugin = "anderson"
max_iter = 5
[train]
steps = 2
batch = 4
eval_every = 0
eval_batches = 1
log_every = 0
)" + extra;
}
