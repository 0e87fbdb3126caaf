// Queue-replacement pattern bank shared by bank-based memories (pattern_bank.h).
#include "mhd/kits/pattern_bank.h"

#include <cmath>

#include <algorithm>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd {

PatternBankMemory::PatternBankMemory(std::string name, const at::Tensor& bank, bool learnable)
    : name_(std::move(name)), dim_(bank.size(1)) {
  patterns_ = learnable ? register_parameter("patterns", bank) : register_buffer("patterns", bank);
  write_count_ = register_buffer("write_count", at::zeros({}, at::kLong));
}

std::int64_t PatternBankMemory::write(const torch::Tensor& patterns) {
  at::NoGradGuard no_grad;
  if (patterns.dim() != 2 || patterns.size(1) != dim_) {
    throw Error(name_ + ": write expects patterns of shape [N, " + std::to_string(dim_) + "], got " +
                shape_string(patterns.sizes()));
  }
  const std::int64_t slots = patterns_.size(0);
  // Of more patterns than slots only the newest `slots` would survive the queue; skip the rest.
  const std::int64_t n = std::min(patterns.size(0), slots);
  if (n == 0) return 0;
  const at::Tensor kept = patterns.narrow(0, patterns.size(0) - n, n).to(patterns_.options());  // [n, D]
  const std::int64_t total = written();
  // Slot of the k-th pattern ever written is k mod M: the oldest slot is always the next one.
  const auto index_options = at::TensorOptions().dtype(at::kLong).device(patterns_.device());
  const at::Tensor slot = at::remainder(at::arange(total, total + n, index_options), slots);  // [n]
  patterns_.index_copy_(0, slot, kept);
  write_count_.fill_(total + n);
  return n;
}

torch::Tensor PatternBankMemory::max_similarity(const torch::Tensor& query) {
  at::NoGradGuard no_grad;
  check_query(query, "max_similarity");
  const at::Tensor q = query / query.norm(2, -1, true).clamp_min(1e-12);          // [B, D]
  const at::Tensor x = patterns_ / patterns_.norm(2, -1, true).clamp_min(1e-12);  // [M, D]
  return std::get<0>(q.matmul(x.t()).max(-1));                                     // [B]
}

void PatternBankMemory::to(torch::Dtype dtype, bool non_blocking) {
  const auto kept = integer_buffers();
  torch::nn::Module::to(dtype, non_blocking);
  restore_integer_buffers(kept);
}

void PatternBankMemory::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  const auto kept = integer_buffers();
  torch::nn::Module::to(device, dtype, non_blocking);
  restore_integer_buffers(kept);
}

void PatternBankMemory::check_query(const at::Tensor& query, const char* op) const {
  if (query.dim() < 1 || query.size(-1) != dim_) {
    throw Error(name_ + ": " + op + " expects queries of shape [B, " + std::to_string(dim_) + "], got " +
                shape_string(query.sizes()));
  }
}

std::int64_t PatternBankMemory::written() const { return write_count_.item<std::int64_t>(); }

std::int64_t PatternBankMemory::stored() const { return std::min(written(), patterns_.size(0)); }

std::vector<std::pair<at::Tensor, at::Tensor>> PatternBankMemory::integer_buffers() const {
  std::vector<std::pair<at::Tensor, at::Tensor>> kept;
  for (const auto& buffer : buffers(/*recurse=*/true))
    if (buffer.scalar_type() == at::kLong) kept.emplace_back(buffer, buffer.clone());
  return kept;
}

void PatternBankMemory::restore_integer_buffers(const std::vector<std::pair<at::Tensor, at::Tensor>>& kept) {
  for (const auto& [buffer, value] : kept) {
    at::Tensor handle = buffer;  // the module's own tensor: set_data keeps its identity
    handle.set_data(value.to(patterns_.device()));
  }
}

at::Tensor initial_pattern_bank(const std::string& who, const std::string& init, std::int64_t slots, std::int64_t dim) {
  if (dim < 1) throw Error(who + ": d_model must be >= 1, got " + std::to_string(dim));
  if (init == "zeros") return at::zeros({slots, dim});
  if (init == "random") return at::randn({slots, dim}) / std::sqrt(static_cast<double>(dim));
  throw Error(who + ": init must be \"random\" or \"zeros\", got \"" + init + "\"");
}

}  // namespace mhd
