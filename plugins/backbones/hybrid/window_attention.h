// The attention sublayer of the hybrid backbone: causal multi-head softmax attention with rotate-half
// RoPE (base 10000), global or over a sliding window of W keys (position i sees j in (i - W, i]).
//
//   a = o_proj(MHA(RoPE(q_proj x), RoPE(k_proj x), v_proj x) with the mask above)      [B, L, D]
//
// A sequence is computed in query blocks of W positions, each against the 2W keys of its block and the
// one before (one batched product), so a local window costs O(L W) time and memory, not O(L^2);
// global attention is one L x L product.
// Recurrent form: the KV cache {k [B, H, T, dh] (after RoPE), v [B, H, T, dh], pos [B] int64}; with a
// window it keeps the last W - 1 positions only (T <= W - 1), so step() is O(W), bounded in the
// length seen so far; global attention's cache grows by one per step.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

namespace mhd::hybrid {

struct WindowAttentionConfig {
  std::int64_t d_model = 64;
  std::int64_t n_heads = 4;
  std::int64_t window = 0;  // W; 0 = global
};

class WindowAttention : public torch::nn::Module {
 public:
  explicit WindowAttention(const WindowAttentionConfig& config);

  // x: [B, L, D] -> (a [B, L, D], the cache after the last position if keep_state, else empty)
  std::pair<at::Tensor, std::vector<at::Tensor>> sequence(const at::Tensor& x, bool keep_state);
  // x_t: [B, D], cache {k, v, pos} -> (a_t [B, D], the next cache); pure.
  std::pair<at::Tensor, std::vector<at::Tensor>> step(const at::Tensor& x_t, const std::vector<at::Tensor>& cache);
  std::vector<at::Tensor> empty_cache(std::int64_t batch) const;
  // Throws mhd::Error("hybrid: step: ...") when the cache does not match this layer.
  void check_cache(const std::vector<at::Tensor>& cache, std::int64_t batch) const;

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};  // D -> D, no bias

 private:
  at::Tensor rope(const at::Tensor& heads, const at::Tensor& positions) const;
  // The attention context from q, k, v: [B, H, L, dh] (after RoPE).
  at::Tensor global_context(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) const;
  at::Tensor local_context(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) const;
  // Keep the positions a window-limited cache holds: the last W - 1 of a [B, H, T, dh] cache.
  at::Tensor trim(const at::Tensor& cache) const;

  WindowAttentionConfig config_;
};

}  // namespace mhd::hybrid
