// The hybrid backbone (Mamba layers interleaved with attention, as in Jamba) as one mhd::Backbone.
// The host builds n_layers identical backbone layers and does not tell a layer its index, so the
// interleaving lives inside one layer: a group of `attention_every` sublayers, the first
// attention_every - 1 Mamba blocks (mamba's MambaBlock) and the last attention (window_attention.h),
// each a pre-norm residual. With h_0 = the layer's (already normalised) input:
//
//   h_{i+1} = h_i + sub_i(LN_i(h_i)),  i = 0 .. attention_every - 1           [B, L, D]
//   y = h_n - h_0        (the update the host adds to its residual stream)
//
// attention_every = 4 is 3 Mamba : 1 attention; Jamba's 1 : 7 is attention_every = 8; 1 is attention
// only. attention_type = local attends over a sliding window of window_size keys (O(L W), a decode
// cache bounded by W - 1 positions), global over every earlier position.
//
// Recurrent state: the sublayers' states in order, flattened: per Mamba sublayer {conv_state,
// ssm_state}, for the attention sublayer {k, v, pos}. step() is O(1) per token for the Mamba
// sublayers and O(W) for local attention.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <torch/nn/modules/normalization.h>

#include "mamba_block.h"
#include "mhd/backbone.h"
#include "mhd/plugin.h"
#include "window_attention.h"

namespace mhd::hybrid {

struct HybridConfig {
  std::int64_t d_model = 64;
  std::int64_t attention_every = 4;
  bool local = true;
  std::int64_t window_size = 256;
  std::int64_t n_heads = 4;
  std::int64_t d_state = 16;
  std::int64_t d_conv = 4;
  std::int64_t expand = 2;

  void validate() const;  // throws mhd::Error("hybrid: ...") naming the key
};

class HybridBlock : public Backbone {
 public:
  explicit HybridBlock(const HybridConfig& config);

  torch::Tensor forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) override;
  RecurrentState initial_state(std::int64_t batch) override;
  std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t, const RecurrentState& state) override;

  const HybridConfig& config() const { return config_; }

  std::vector<std::shared_ptr<mamba::MambaBlock>> mambas;  // attention_every - 1 of them
  std::shared_ptr<WindowAttention> attention;
  std::vector<torch::nn::LayerNorm> norms;                 // one per sublayer

 private:
  std::pair<torch::Tensor, RecurrentState> run_sequence(const torch::Tensor& x, bool keep_state);
  void check_sequence_input(const torch::Tensor& x) const;
  std::size_t state_size() const { return 2 * mambas.size() + 3; }

  HybridConfig config_;
};

Manifest make_manifest();
HybridConfig config_from_params(const Params& params, const ModelDims& dims);

}  // namespace mhd::hybrid
