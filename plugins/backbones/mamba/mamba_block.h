// The Mamba block (Gu & Dao, 2023; mamba-ssm's `Mamba` module) as an mhd::Backbone.
//
//   x: [B, L, D] --in_proj--> (x_in, z): [B, L, E] each, E = expand * D
//   u = SiLU(causal depthwise conv1d_K(x_in))                       u: [B, L, E]
//   (dt_low, B, C) = x_proj(u)                 dt_low: [B, L, R], B, C: [B, L, N]
//   delta = softplus(dt_low W_dt^T + b_dt)     [B, L, E]   (b_dt = dt_proj.bias, applied inside the
//                                                           scan as its delta_bias, like mamba-ssm)
//   y = selective_scan(u, delta, A = -exp(A_log), B, C, D)          [B, L, E]
//   out = out_proj(y * SiLU(z))                                      [B, L, D]
//
// Recurrent form (step): the conv keeps its last K - 1 inputs, the scan its state h [B, E, N], so one
// position costs O(1) in the length seen so far.
#pragma once

#include <cstdint>
#include <utility>

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "mhd/backbone.h"
#include "mhd/plugin.h"

namespace mhd::mamba {

enum class ScanImpl { Fused, Reference };

struct MambaConfig {
  std::int64_t d_model = 64;
  std::int64_t d_state = 16;  // N
  std::int64_t d_conv = 4;    // K
  std::int64_t expand = 2;    // E = expand * d_model
  std::int64_t dt_rank = 0;   // R; 0 = ceil(d_model / 16)
  double dt_min = 1e-3;       // softplus(dt_proj.bias) is drawn log-uniformly in [dt_min, dt_max] ...
  double dt_max = 1e-1;
  double dt_init_floor = 1e-4;  // ... and clamped to at least this
  double dt_scale = 1.0;        // dt_proj.weight ~ U(-s / sqrt(R), s / sqrt(R))
  ScanImpl scan = ScanImpl::Fused;

  std::int64_t d_inner() const { return expand * d_model; }
  std::int64_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  // Throws mhd::Error("mamba: ...") naming the first inconsistent value.
  void validate() const;
};

// The block's parameters are registered as: in_proj.weight [2E, D], conv1d.weight [E, 1, K],
// conv1d.bias [E], x_proj.weight [R + 2N, E], dt_proj.weight [E, R], dt_proj.bias [E],
// A_log [E, N], D [E], out_proj.weight [D, E]. A_log and D are usually excluded from weight decay.
class MambaBlock : public Backbone {
 public:
  explicit MambaBlock(const MambaConfig& config);

  // x: [B, L, D] -> [B, L, D]
  torch::Tensor forward(const torch::Tensor& x) override;
  // Also returns the state after the last position: {conv_state [B, E, K - 1], ssm_state [B, E, N]}.
  std::pair<torch::Tensor, RecurrentState> forward_with_state(const torch::Tensor& x) override;
  // {zeros [B, E, K - 1], zeros [B, E, N]} in the parameters' dtype and device.
  RecurrentState initial_state(std::int64_t batch) override;
  // x_t: [B, D] -> (y_t [B, D], next state); the SSM update is the selective scan over one position,
  // differentiable, `state` untouched.
  std::pair<torch::Tensor, RecurrentState> step(const torch::Tensor& x_t, const RecurrentState& state) override;

  const MambaConfig& config() const { return config_; }
  std::int64_t d_inner() const { return config_.d_inner(); }
  std::int64_t dt_rank() const { return config_.resolved_dt_rank(); }
  // A = -exp(A_log): [E, N]
  torch::Tensor A() const;

  torch::nn::Linear in_proj{nullptr};   // D -> 2E, no bias
  torch::nn::Conv1d conv1d{nullptr};    // depthwise, width K, bias, left padding K - 1
  torch::nn::Linear x_proj{nullptr};    // E -> R + 2N, no bias
  torch::nn::Linear dt_proj{nullptr};   // R -> E, bias (the scan's delta_bias)
  torch::nn::Linear out_proj{nullptr};  // E -> D, no bias
  torch::Tensor A_log;                  // [E, N]
  torch::Tensor D;                      // [E]

 private:
  std::pair<torch::Tensor, RecurrentState> run_sequence(const torch::Tensor& x, bool keep_state);
  void init_parameters();
  void check_sequence_input(const torch::Tensor& x) const;
  void check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const;
  // The fused scan for CPU float32 / float64 / bfloat16 unless the config asks for the reference.
  bool use_fused_scan(const torch::Tensor& x) const;

  MambaConfig config_;
};

// The plugin's manifest: name "mamba", its parameter schema and factory (used by MHD_PLUGIN).
Manifest make_manifest();
// Reads a validated Params (schema of make_manifest) and the model sizes into a config.
MambaConfig config_from_params(const Params& params, const ModelDims& dims);

}  // namespace mhd::mamba
