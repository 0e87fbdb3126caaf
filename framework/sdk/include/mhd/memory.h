// Memory: an associative memory queried inside the DEQ dynamics (docs/design.md §3, §4). It serves
// two sources: its own persistent bank (retrieve, energy, write) and a sequence's own keys and
// values read causally (retrieve_context, context_energy): the Hopfield view of causal attention.
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

  // Retrieval from a sequence's own keys and values instead of the bank. Query i of Lq sits at
  // position Lk - Lq + i and reads only keys and values at positions <= its own (causal; a decoder
  // passes one query and the prefix). queries: [B, Lq, D], keys, values: [B, Lk, D] -> [B, Lq, D].
  // Keys after a query's position must not change its result at all, not even by rounding.
  virtual torch::Tensor retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                         const torch::Tensor& values) = 0;

  // The energy of that retrieval, per query, with the same visibility: [B, Lq].
  virtual torch::Tensor context_energy(const torch::Tensor& queries, const torch::Tensor& keys) = 0;

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

  // One forward solve begins: `queries` ([N, D], detached) are its first iterate's, one row per
  // query that retrieve (and retrieve_context, as [B * Lq, D]) will see during the solve, in that
  // order; an undefined tensor ends the solve. A memory whose read set depends on the query (sparse
  // search) may fix each row's set here, so that f is smooth within a solve (docs/design.md §3,
  // "Memory at scale"). Default: nothing (dense memories read every pattern anyway).
  virtual void begin_solve(const torch::Tensor& queries) { (void)queries; }
};

}  // namespace mhd
