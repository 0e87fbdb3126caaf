// One RetNet layer (Sun et al. 2023) as an mhd::Backbone: multi-scale retention (MSR) then a GELU
// FFN. The host wraps each layer as x <- x + layer(LayerNorm(x)); with h = the normalised input:
//
//   q = rot(W_Q h), k = rot(W_K h) / sqrt(dk), v = W_V h        per head: [B, H, L, dk], [B, H, L, dv]
//   o = Retention_gamma_h(q, k, v)                              gamma_h = 1 - 2^(-5 - h)   (retention.h)
//   a = W_O( swish(W_G h) * GroupNorm_H(o) )                     [B, L, D]
//   y = a + ffn_out(GELU(ffn_in(ffn_norm(h + a))))               (ffn_ratio = 0: y = a)
//
// dk = D / H, dv = value_factor * D / H (the paper's 2). rot is the relative-position rotation of the
// paper's Theta (rotate-half RoPE, base 10000), so q_n k_m^T depends on n - m only. GroupNorm_H
// normalises each head's dv values per position (then an affine over H dv): it also makes the
// output invariant to a per-head, per-position scale, which is why the paper's numerical
// normalisations of D and of the scores (such scales) are left out here, so the three forms give one
// function to rounding.
//
// `form` picks how a sequence is computed: parallel (O(L^2)), chunkwise (chunks of chunk_size, O(L C),
// the default) or recurrent (per position). Recurrent state: {S [B, H, dk, dv], pos [B] int64}; step()
// is the recurrent form for one position, O(1) in the length seen so far.
#pragma once

#include <cstdint>
#include <utility>

#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "mhd/backbone.h"
#include "mhd/plugin.h"

namespace mhd::retnet {

enum class Form { Parallel, Chunkwise, Recurrent };

struct RetNetConfig {
  std::int64_t d_model = 64;
  std::int64_t n_heads = 4;
  std::int64_t value_factor = 2;
  std::int64_t ffn_ratio = 2;   // 0 = no FFN
  Form form = Form::Chunkwise;
  std::int64_t chunk_size = 64;

  std::int64_t key_dim() const { return d_model / n_heads; }
  std::int64_t value_dim() const { return value_factor * d_model / n_heads; }
  void validate() const;  // throws mhd::Error("retnet: ...") naming the key
};

class RetNetBlock : public Backbone {
 public:
  explicit RetNetBlock(const RetNetConfig& config);

  torch::Tensor forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) override;
  RecurrentState initial_state(std::int64_t batch) override;
  std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t, const RecurrentState& state) override;

  const RetNetConfig& config() const { return config_; }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr};  // D -> D
  torch::nn::Linear v_proj{nullptr}, g_proj{nullptr};  // D -> H dv
  torch::nn::Linear o_proj{nullptr};                   // H dv -> D
  torch::Tensor norm_weight, norm_bias;                // [H dv], GroupNorm's affine
  torch::nn::LayerNorm ffn_norm{nullptr};
  torch::nn::Linear ffn_in{nullptr}, ffn_out{nullptr};
  torch::Tensor log_gamma;                             // buffer [H]

 private:
  std::pair<torch::Tensor, RecurrentState> run_sequence(const torch::Tensor& x, bool keep_state);
  // h: [..., D] at `positions` -> q, k, v as [..., H, dk|dv] (rotated, k scaled).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project(const at::Tensor& h, const at::Tensor& positions);
  // o: [B, H, L, dv] (heads first), h: [B, L, D] -> the layer's output [B, L, D].
  at::Tensor finish(const at::Tensor& h, const at::Tensor& o);
  void check_sequence_input(const torch::Tensor& x) const;
  void check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const;

  RetNetConfig config_;
};

Manifest make_manifest();
RetNetConfig config_from_params(const Params& params, const ModelDims& dims);

}  // namespace mhd::retnet
