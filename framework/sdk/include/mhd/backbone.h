// Backbone: the sequence mixer of the embedding stack and of the DEQ dynamics (docs/design.md §3, §4).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <boost/config.hpp>
#include <torch/nn/module.h>

namespace mhd {

// A backbone's recurrent state, opaque to the host (for Mamba: conv window and SSM state).
// Every tensor has the batch as its first dimension.
struct RecurrentState {
  std::vector<torch::Tensor> tensors;
};

// One backbone layer. The host builds n_layers of them for the context stack, wrapping each as
// x <- x + layer(LayerNorm(x)), and one more for the DEQ dynamics' state update.
class BOOST_SYMBOL_VISIBLE Backbone : public torch::nn::Module {
 public:
  ~Backbone() override = default;

  // x: [B, L, D] -> y: [B, L, D]
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;

  // The same as forward, also returning the recurrent state after the last position, so that
  // step() can continue the sequence. Differentiable through both outputs.
  virtual std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) = 0;

  // The state before any input, for a batch of B sequences.
  virtual RecurrentState initial_state(std::int64_t batch) = 0;

  // One position: x_t: [B, D] -> (y_t: [B, D], next state). Pure: `state` is not modified, so the
  // DEQ dynamics can evaluate many candidate inputs against the same context state. O(1) in the
  // length of the sequence seen so far.
  virtual std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t,
                                                        const RecurrentState& state) = 0;
};

}  // namespace mhd
