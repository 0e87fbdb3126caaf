// Decoding speed and honest held-out scores of an lm_bytes checkpoint (docs/benchmarks.md,
// "Recurrent decode"; docs/experiments.md, "Byte-level language modelling and generation").
//
//   bench_generate CHECKPOINT [STREAM_LENGTH=256] [WINDOWS=8]
//
// 1. Speed, one stream of STREAM_LENGTH held-out bytes, teacher-forced: the recurrent decode
//    (one step per byte, z* warm-started, then cold) against re-running the full forward over the
//    whole prefix for every byte (what decoding costs without recurrent states), in this process,
//    one after the other; positions per second and mean solver iterations per position.
// 2. Scores on WINDOWS held-out windows of the task's seq_len: bits per byte and accuracy of the
//    causal prediction (the recurrent decode: byte t+1 from bytes <= t only) against the
//    all-position forward the trainer evaluates, where z* (broadcast over L, docs/design.md §4) has seen
//    the whole window, the bytes to predict included.
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "train/checkpoint.h"
#include "core/model.h"
#include "plugin_host/registry.h"
#include "mhd/runtime.h"
#include "config/trial_config.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Score {
  double nats = 0, correct = 0, count = 0;
  void add(const at::Tensor& logits, const at::Tensor& targets) {  // [N, V], [N]
    nats += at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum).item<double>();
    correct += logits.argmax(1).eq(targets).sum().item<double>();
    count += static_cast<double>(targets.size(0));
  }
  double bits_per_byte() const { return nats / count / std::log(2.0); }
  double accuracy() const { return correct / count; }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_generate CHECKPOINT [STREAM_LENGTH=256] [WINDOWS=8]\n";
    return 2;
  }
  const std::int64_t stream_length = argc > 2 ? std::stoll(argv[2]) : 256;
  const std::int64_t windows = argc > 3 ? std::stoll(argv[3]) : 8;
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_default_paths();
  auto loaded = mhd::load_model_from_checkpoint(argv[1], registry);
  auto& model = *loaded.model;
  const auto& task = loaded.config->task;
  std::ifstream in(task.text("path"), std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto n = static_cast<std::int64_t>(text.size());
  const std::int64_t held_out = n - static_cast<std::int64_t>(static_cast<double>(n) * task.real("holdout"));
  auto bytes = at::empty({n}, at::kLong);
  for (std::int64_t i = 0; i < n; ++i) bytes[i] = static_cast<std::int64_t>(static_cast<unsigned char>(text[i]));
  torch::NoGradGuard no_grad;
  mhd::use_all_cores();  // every core, as mhd generate runs
  std::cout << "checkpoint " << argv[1] << " (step " << loaded.step << "), held-out bytes " << n - held_out
            << ", threads " << at::get_num_threads() << "\n";

  // 1. Speed on one stream (wrapping around the held-out part).
  auto stream = at::empty({1, stream_length}, at::kLong);
  for (std::int64_t t = 0; t < stream_length; ++t) stream[0][t] = bytes[held_out + t % (n - held_out - 1)];
  double iterations[2] = {0, 0}, rate[2] = {0, 0};
  at::Tensor recurrent_logits;  // [L, V] of the warm run
  for (int warm = 1; warm >= 0; --warm) {
    auto state = model.initial_decode_state(1);
    std::vector<at::Tensor> logits;
    const auto start = std::chrono::steady_clock::now();
    for (std::int64_t t = 0; t < stream_length; ++t) {
      auto step = model.step(stream.select(1, t), state, warm == 1);
      iterations[warm] += static_cast<double>(step.info.iterations);
      logits.push_back(step.logits);
    }
    rate[warm] = static_cast<double>(stream_length) / seconds_since(start);
    if (warm) recurrent_logits = at::cat(logits, 0);
  }
  double full_iterations = 0, max_diff = 0;
  model.reset_warm_start();
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t t = 0; t < stream_length; ++t) {
    auto out = model.forward(stream.slice(1, 0, t + 1));
    full_iterations += static_cast<double>(out.forward_info.iterations);
    max_diff = std::max(max_diff, (out.logits[0][t] - recurrent_logits[t]).abs().max().item<double>());
  }
  const double full_rate = static_cast<double>(stream_length) / seconds_since(start);
  std::cout << "stream of " << stream_length << " positions:\n"
            << "  recurrent decode, warm start: " << rate[1] << " positions/s, " << iterations[1] / stream_length
            << " solver iterations/position\n"
            << "  recurrent decode, cold start: " << rate[0] << " positions/s, " << iterations[0] / stream_length
            << " solver iterations/position\n"
            << "  full forward per position:    " << full_rate << " positions/s, " << full_iterations / stream_length
            << " solver iterations/position\n"
            << "  speed-up of the warm recurrent decode: " << rate[1] / full_rate << "x\n"
            << "  largest |logit difference| recurrent vs full forward: " << max_diff << "\n";

  // 2. Causal vs all-position scores on held-out windows.
  const std::int64_t L = task.integer("seq_len");
  Score causal, all_positions;
  for (std::int64_t w = 0; w < windows; ++w) {
    const std::int64_t offset = held_out + (w * L) % (n - held_out - L - 1);
    auto inputs = bytes.slice(0, offset, offset + L).unsqueeze(0);          // [1, L]
    auto targets = bytes.slice(0, offset + 1, offset + L + 1);              // [L]
    all_positions.add(model.forward(inputs).logits[0], targets);
    auto state = model.initial_decode_state(1);
    std::vector<at::Tensor> logits;
    for (std::int64_t t = 0; t < L; ++t) logits.push_back(model.step(inputs.select(1, t), state).logits);
    causal.add(at::cat(logits, 0), targets);
  }
  std::cout << windows << " held-out windows of " << L << " bytes:\n"
            << "  causal (recurrent decode):      " << causal.bits_per_byte() << " bits/byte, accuracy "
            << causal.accuracy() << "\n"
            << "  all-position forward (trainer): " << all_positions.bits_per_byte() << " bits/byte, accuracy "
            << all_positions.accuracy() << "\n";
  return 0;
}
