// A memory whose patterns sit in one bank X: [M, D] filled by queue replacement (oldest slot first):
// the part that bank-based memories (dense_am; the same scheme as hopfield) share. The bank is the
// buffer or parameter "patterns"; the count of patterns ever written is the int64 buffer
// "write_count", so a checkpoint restores the queue position too.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <boost/config.hpp>

#include "mhd/memory.h"

namespace mhd {

class BOOST_SYMBOL_VISIBLE PatternBankMemory : public Memory {
 public:
  // Stores the newest min(N, M) rows of patterns ([N, D]) at slots k mod M (k = patterns written
  // before). Outside autograd.
  std::int64_t write(const torch::Tensor& patterns) override;
  // Largest cosine similarity of each query to a slot (an all-zero slot counts 0): [B, D] -> [B].
  torch::Tensor max_similarity(const torch::Tensor& query) override;
  std::int64_t size() const override { return patterns_.size(0); }

  // Module::to(dtype) casts every buffer, integer ones included (a float16 write counter is exact
  // only up to 2048; a bucket index is not a float): cast, then restore every int64 buffer exactly
  // on the bank's device.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;

 protected:
  // name: the plugin's name for error messages; bank: [M, D] initial patterns.
  PatternBankMemory(std::string name, const at::Tensor& bank, bool learnable);

  // Throws mhd::Error "NAME: OP expects queries of shape [B, D], got ..." unless query is [..., D].
  void check_query(const at::Tensor& query, const char* op) const;
  const at::Tensor& bank() const { return patterns_; }  // X: [M, D]
  std::int64_t written() const;                          // patterns written so far (not capped)
  std::int64_t stored() const;                           // min(written, M)

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> integer_buffers() const;  // (buffer, its value)
  void restore_integer_buffers(const std::vector<std::pair<at::Tensor, at::Tensor>>& kept);

  std::string name_;
  std::int64_t dim_;
  at::Tensor patterns_;     // X: [M, D]
  at::Tensor write_count_;  // scalar int64
};

// The starting bank of `slots` patterns of width `dim` for the memory plugin `who`: "random" draws
// N(0, 1/D) entries, so ||x_i|| ~ 1 whatever D; "zeros" is an empty memory (uniform attention).
// Throws mhd::Error naming `who` for dim < 1 or another init.
at::Tensor initial_pattern_bank(const std::string& who, const std::string& init, std::int64_t slots, std::int64_t dim);

}  // namespace mhd
