// Memory: an associative memory queried inside the DEQ dynamics (docs/design.md §3, §4).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <boost/config.hpp>
#include <torch/nn/module.h>

namespace mhd {

class BOOST_SYMBOL_VISIBLE Memory : public torch::nn::Module {
 public:
  ~Memory() override = default;

  // The retrieval update (for Hopfield: softmax(beta * query X^T) X). query: [B, D] -> [B, D].
  // Differentiable with respect to the query (and learnable parameters, if any).
  virtual torch::Tensor retrieve(const torch::Tensor& query) = 0;

  // The memory's energy of a state, lower at stored patterns. query: [B, D] -> [B].
  virtual torch::Tensor energy(const torch::Tensor& query) = 0;

  // Stores patterns: [N, D]. Runs outside autograd; the policy for what gets replaced is the
  // memory's own (Hopfield: queue, oldest first). Returns how many were written.
  virtual std::int64_t write(const torch::Tensor& patterns) = 0;

  // For each query, the largest cosine similarity to a stored pattern (0 against an empty bank):
  // what novelty-gated writes compare with their threshold. query: [B, D] -> [B]. No autograd.
  virtual torch::Tensor max_similarity(const torch::Tensor& query) = 0;

  // Number of stored patterns.
  virtual std::int64_t size() const = 0;

  // Diagnostics of retrieving `query` ([B, D]): e.g. attention entropy, top-10 mass. Scalars only.
  virtual std::map<std::string, double> stats(const torch::Tensor& query) = 0;

  // Optional maintenance between steps (hierarchical memories merge levels here).
  virtual void consolidate() {}
};

}  // namespace mhd
