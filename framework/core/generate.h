// Generation: autoregressive decoding with each backbone layer's recurrent
// step (UnifiedModel::step), so a token costs O(1) in the length generated so far, and the
// equilibrium re-solved per token from the previous z* (docs/design.md §4, last bullet).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace mhd {

class UnifiedModel;

struct SamplingOptions {
  double temperature = 1.0;  // logits / T; T <= 0 is greedy (argmax)
  std::int64_t top_k = 0;    // keep the k most likely tokens (0: all)
  double top_p = 1.0;        // nucleus: the smallest most-likely set whose mass >= p (1: all)
};

// The distribution sampled from: softmax(logits / T), restricted to the top-k tokens, then to the
// nucleus of mass top_p, renormalised. T <= 0 gives the one-hot distribution of the argmax.
// logits: [B, V] -> probabilities [B, V]. Throws mhd::Error on top_p outside (0, 1] or top_k < 0.
at::Tensor sampling_distribution(const at::Tensor& logits, const SamplingOptions& options);

// One token per row drawn from sampling_distribution. logits: [B, V] -> [B] int64.
at::Tensor sample_next(const at::Tensor& logits, const SamplingOptions& options, at::Generator& generator);

struct GenerationOptions {
  std::int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::uint64_t seed = 0;
  bool warm_start = true;  // each position's solve starts from the previous z*
};

struct GenerationResult {
  std::vector<std::int64_t> tokens;        // the generated tokens (the prompt not included)
  std::vector<std::int64_t> iterations;    // solver iterations of every position, prompt included
  std::int64_t unconverged = 0;            // positions whose solve stopped at max_iter
  double seconds = 0.0;                    // wall time of the whole decode, prompt included
  double tokens_per_second() const;        // positions (prompt + generated) per second
  double mean_iterations() const;          // per position
};

// Feeds the prompt (>= 1 token) one token at a time, then samples max_new_tokens more.
GenerationResult generate(UnifiedModel& model, const std::vector<std::int64_t>& prompt,
                          const GenerationOptions& options);

}  // namespace mhd
