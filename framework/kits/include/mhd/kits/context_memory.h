// What every memory shares when it reads a sequence's own keys and values (Memory::retrieve_context,
// docs/design.md §4): which keys each query may see, and the shape checks.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace mhd {

// Query i of Lq sits at position Lk - Lq + i and sees keys at positions <= its own.
// -> [Lq, Lk] bool, true where visible. Throws mhd::Error when Lq > Lk or Lq < 1.
at::Tensor visible_keys(std::int64_t Lq, std::int64_t Lk, const at::Device& device);

// Throws mhd::Error "WHO: OP expects queries [B, Lq, D] and keys (and values) [B, Lk, D] with
// Lq <= Lk, got ..." unless the shapes fit. values may be undefined (energies read keys only).
void check_context(const char* who, const char* op, const at::Tensor& queries, const at::Tensor& keys,
                   const at::Tensor& values);

// softmax over the visible keys of scores [B, Lq, Lk]; a hidden key gets exactly 0 weight, so its
// value cannot change the result even by rounding.
at::Tensor causal_softmax(const at::Tensor& scores);

// logsumexp over the visible keys of scores [B, Lq, Lk] -> [B, Lq].
at::Tensor causal_logsumexp(const at::Tensor& scores);

// The number of keys each query sees: [Lq] (as scores' dtype), Lk - Lq + 1 ... Lk.
at::Tensor visible_counts(std::int64_t Lq, std::int64_t Lk, const at::TensorOptions& options);

}  // namespace mhd
