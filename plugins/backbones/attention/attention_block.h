// One Transformer layer as an mhd::Backbone: causal multi-head softmax self-attention with rotary
// position embeddings (RoPE) followed by a position-wise GELU MLP. The baseline against which the
// unified model and the Mamba-only model are compared at matched parameter counts.
//
// The host wraps every layer as x <- x + layer(LayerNorm(x)), so the layer returns an *update* to the
// residual stream. With h = the layer's (already normalised) input:
//
//   a = o_proj(MHA_causal(RoPE(q_proj h), RoPE(k_proj h), v_proj h))        [B, L, D]
//   y = a + mlp_out(GELU(mlp_in(mlp_norm(h + a))))                         [B, L, D]
//
// i.e. the attention sub-block's output, plus an MLP sub-block with its own pre-norm acting on the
// layer-internal residual h + a. The stream then receives x + y = x + a + MLP(LN(h + a)), the usual
// pre-norm block except that the MLP's residual input is the normalised h rather than the raw x
// (which the layer never sees). mlp_ratio = 0 drops the MLP sub-block (y = a, attention only).
//
// Attention: H heads of width dh = D / H, scores q k^T / sqrt(dh) with a causal -inf mask, softmax
// over keys. RoPE (GPT-NeoX "rotate half" layout) rotates the first 2 * floor(dh / 2) dimensions of
// every q and k head by angle  pos * rope_base^(-2i / r), r = 2 * floor(dh / 2), i < r / 2; an odd
// head width leaves its last dimension unrotated. Positions start at 0 and have no maximum.
//
// Recurrent form: the state is the KV cache {k [B, H, T, dh] (keys after RoPE), v [B, H, T, dh],
// pos [B] int64 (the position of the next token)}. step() attends from the new token to the cache
// plus itself and returns the cache with the new key/value appended; it never modifies its input
// state. Its cost is O(T) in the length seen so far (inherent to softmax attention: every past key
// is read once), not O(1) like Mamba's; the cache grows by one position per step.
#pragma once

#include <cstdint>
#include <utility>

#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "mhd/backbone.h"
#include "mhd/plugin.h"

namespace mhd::attention {

struct AttentionConfig {
  std::int64_t d_model = 64;
  std::int64_t n_heads = 4;
  std::int64_t mlp_ratio = 2;  // MLP hidden width = mlp_ratio * d_model; 0 = no MLP
  double rope_base = 10000.0;

  std::int64_t head_dim() const { return d_model / n_heads; }
  // Throws mhd::Error("attention: ...") naming the first inconsistent value.
  void validate() const;
};

// Registered parameters: q_proj.weight, k_proj.weight, v_proj.weight, o_proj.weight [D, D] (no bias);
// with mlp_ratio > 0 also mlp_norm.weight, mlp_norm.bias [D], mlp_in.weight [M, D], mlp_in.bias [M],
// mlp_out.weight [D, M], mlp_out.bias [D] (M = mlp_ratio * D).
class AttentionBlock : public Backbone {
 public:
  explicit AttentionBlock(const AttentionConfig& config);

  // x: [B, L, D] -> [B, L, D]
  torch::Tensor forward(const torch::Tensor& x) override;
  // Also returns the KV cache after the last position: {k [B, H, L, dh], v [B, H, L, dh], pos [B] = L}.
  std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) override;
  // The empty cache: {k [B, H, 0, dh], v [B, H, 0, dh], pos zeros [B] int64}.
  RecurrentState initial_state(std::int64_t batch) override;
  // x_t: [B, D] -> (y_t [B, D], cache + this position); differentiable, `state` untouched. O(T).
  std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t, const RecurrentState& state) override;

  const AttentionConfig& config() const { return config_; }

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};  // D -> D
  torch::nn::LayerNorm mlp_norm{nullptr};  // null when mlp_ratio = 0
  torch::nn::Linear mlp_in{nullptr};       // D -> M, bias
  torch::nn::Linear mlp_out{nullptr};      // M -> D, bias

 private:
  std::pair<torch::Tensor, RecurrentState> run_sequence(const torch::Tensor& x, bool keep_state);
  // [..., H * dh] -> [..., H, dh] rotated at `positions` (broadcast against the leading dims).
  torch::Tensor rope(const torch::Tensor& heads, const torch::Tensor& positions) const;
  // h + a -> a + MLP(LN(h + a)), or a when there is no MLP.
  torch::Tensor finish(const torch::Tensor& h, const torch::Tensor& a);
  void check_sequence_input(const torch::Tensor& x) const;
  void check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const;

  AttentionConfig config_;
};

// The plugin's manifest: name "attention", its parameter schema and factory (used by MHD_PLUGIN).
Manifest make_manifest();
AttentionConfig config_from_params(const Params& params, const ModelDims& dims);

}  // namespace mhd::attention
