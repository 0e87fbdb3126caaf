// One RWKV-4 layer (Peng et al. 2023) as an mhd::Backbone: time-mix (token shift, the WKV
// recurrence of wkv.h, receptance gate) then channel-mix (token shift, squared-ReLU key, receptance
// gate). The host wraps each layer as x <- x + layer(LayerNorm(x)), so with h = the normalised input:
//
//   a = TimeMix(h)                                       [B, L, D]
//   y = a + ChannelMix(ln2(h + a))                       [B, L, D]
//
// Token shift: s_t = x_{t-1} (the state's last input at t = 0); mix(x, s, m) = m x + (1 - m) s.
//   TimeMix:  k = W_k mix(h, s, mix_k),  v = W_v mix(h, s, mix_v),  r = sigmoid(W_r mix(h, s, mix_r))
//             w = exp(time_decay) (RWKV-4), or with decay = "data" (in the spirit of RWKV-6)
//             w_t = exp(time_decay + tanh(mix(h, s, mix_w) A) B), A: [D, R], B: [R, D] (B = 0 at init)
//             a = W_o (r * WKV(k, v, w, u = time_first))
//   ChannelMix (on n = ln2(h + a) and its own shift): out = sigmoid(W_r' mix(n, s', mix_r'))
//             * W_v'(relu(W_k' mix(n, s', mix_k'))^2), hidden width ffn_ratio * D.
//
// Initialisation of decay and mixing as in the paper's code, for a layer at relative depth
// r0 = init_depth in [0, 1] (r1 = 1 - r0; the host builds every layer from one table, so the depth is
// a parameter): time_decay[i] = -5 + 8 (i / (D - 1))^(0.7 + 1.3 r0), time_first[i] = log 0.3 +
// 0.5 ((i + 1) mod 3 - 1), mix_k = (i / D)^r1, mix_v = mix_k + 0.3 r0, mix_r = (i / D)^(r1 / 2),
// channel-mix mix_k' = mix_r' = (i / D)^r1. Projections keep LibTorch's defaults.
//
// Recurrent state (step): {att_shift [B, D], aa, bb, pp [B, D] (the WKV state, float32 unless the
// parameters are float64), ffn_shift [B, D]}: O(1) per token.
#pragma once

#include <cstdint>
#include <utility>

#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "mhd/backbone.h"
#include "mhd/plugin.h"

namespace mhd::rwkv {

enum class Decay { Static, Data };

struct RwkvConfig {
  std::int64_t d_model = 64;
  std::int64_t ffn_ratio = 4;       // channel-mix hidden width = ffn_ratio * d_model
  Decay decay = Decay::Static;
  std::int64_t decay_rank = 16;     // R of the data-dependent decay
  double init_depth = 0.5;          // r0 of the initialisation

  // Throws mhd::Error("rwkv: ...") naming the first inconsistent value.
  void validate() const;
};

class RwkvBlock : public Backbone {
 public:
  explicit RwkvBlock(const RwkvConfig& config);

  torch::Tensor forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) override;
  RecurrentState initial_state(std::int64_t batch) override;
  std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t, const RecurrentState& state) override;

  const RwkvConfig& config() const { return config_; }

  // Time-mix. [D] vectors unless noted.
  torch::Tensor mix_k, mix_v, mix_r, mix_w, time_decay, time_first;
  torch::Tensor decay_a, decay_b;  // [D, R], [R, D]; only with decay = data
  torch::nn::Linear key{nullptr}, value{nullptr}, receptance{nullptr}, output{nullptr};  // D -> D
  // Channel-mix.
  torch::nn::LayerNorm ln2{nullptr};
  torch::Tensor ffn_mix_k, ffn_mix_r;
  torch::nn::Linear ffn_key{nullptr};         // D -> F
  torch::nn::Linear ffn_value{nullptr};       // F -> D
  torch::nn::Linear ffn_receptance{nullptr};  // D -> D

 private:
  std::pair<torch::Tensor, RecurrentState> run_sequence(const torch::Tensor& x, bool keep_state);
  // The per-position decay rate w: [..., D] from the time-mix input and its shift.
  torch::Tensor decay_rate(const torch::Tensor& h, const torch::Tensor& shifted) const;
  torch::Tensor channel_mix(const torch::Tensor& n, const torch::Tensor& shifted);
  void init_parameters();
  void check_sequence_input(const torch::Tensor& x) const;
  void check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const;
  at::ScalarType state_dtype() const;

  RwkvConfig config_;
};

Manifest make_manifest();
RwkvConfig config_from_params(const Params& params, const ModelDims& dims);

}  // namespace mhd::rwkv
