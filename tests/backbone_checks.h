// Checks every backbone must pass (docs/design.md §4, "Backbones"), shared by the suites of the
// retnet, rwkv and hybrid plugins and by test_every_backbone: the recurrent form (step from
// initial_state, and from the state forward_with_state returns) equals the sequence form, step()
// leaves its input state untouched, outputs at t do not depend on inputs after t, and gradients reach
// every parameter.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/backbone.h"
#include "mhd/error.h"

namespace backbone_checks {

inline double max_abs(const at::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0.0; }
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return max_abs(a.to(at::kDouble) - b.to(at::kDouble)); }

inline void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected mhd::Error containing \"" << needle << "\"";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what();
  }
}

// Decoding position by position from initial_state equals forward to `tol`; so does continuing
// from forward_with_state's state after a prefix of `split` positions. x: [B, L, D].
inline void expect_decode_equals_forward(mhd::Backbone& block, const at::Tensor& x, std::int64_t split, double tol) {
  torch::NoGradGuard no_grad;
  const at::Tensor y = block.forward(x);
  const auto [y_ws, state_after] = block.forward_with_state(x);
  EXPECT_LT(max_abs_diff(y, y_ws), 1e-12) << "forward_with_state's output differs from forward";
  mhd::RecurrentState st = block.initial_state(x.size(0));
  for (std::int64_t t = 0; t < x.size(1); ++t) {
    auto [y_t, next] = block.step(x.select(1, t), st);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), tol) << "decode from initial_state, t=" << t;
    st = next;
  }
  // The state after stepping every position continues the sequence like the one forward_with_state gives.
  const at::Tensor x_next = at::randn({x.size(0), x.size(2)}, x.options());
  EXPECT_LT(max_abs_diff(block.step(x_next, st).first, block.step(x_next, state_after).first), tol)
      << "the state after stepping differs from forward_with_state's";
  auto [y_prefix, st_prefix] = block.forward_with_state(x.narrow(1, 0, split));
  EXPECT_LT(max_abs_diff(y_prefix, y.narrow(1, 0, split)), tol);
  st = st_prefix;
  for (std::int64_t t = split; t < x.size(1); ++t) {
    auto [y_t, next] = block.step(x.select(1, t), st);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), tol) << "decode after a prefix of " << split << ", t=" << t;
    st = next;
  }
}

// Changing inputs after t leaves outputs at positions <= t unchanged (exactly), and changing x_t
// changes y_t. x: [B, L, D].
inline void expect_causal(mhd::Backbone& block, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  const at::Tensor y = block.forward(x);
  const std::int64_t len = x.size(1);
  for (std::int64_t t : {std::int64_t{0}, len / 2, len - 1}) {
    at::Tensor x2 = x.clone();
    x2.narrow(1, t, len - t).add_(at::randn(x2.narrow(1, t, len - t).sizes(), x.options()) * 3.0);
    const at::Tensor y2 = block.forward(x2);
    if (t > 0) EXPECT_LT(max_abs_diff(y2.narrow(1, 0, t), y.narrow(1, 0, t)), 1e-13) << "changed from t=" << t;
    EXPECT_GT(max_abs_diff(y2.select(1, t), y.select(1, t)), 1e-6) << "t=" << t << " ignores its own input";
  }
}

// step() does not modify the state it is given.
inline void expect_step_pure(mhd::Backbone& block, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto [y, state] = block.forward_with_state(x);
  std::vector<at::Tensor> before;
  for (const auto& t : state.tensors) before.push_back(t.clone());
  const at::Tensor x_t = at::randn({x.size(0), x.size(2)}, x.options());
  const at::Tensor first = block.step(x_t, state).first;
  for (std::size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(before[i], state.tensors[i])) << "state tensor " << i;
  EXPECT_TRUE(at::equal(first, block.step(x_t, state).first));
}

// A loss on the sequence output and on a step from forward_with_state's state reaches every
// parameter and the input with finite, non-zero gradients.
inline void expect_gradients_reach_everything(mhd::Backbone& block, const at::Tensor& x_in) {
  const at::Tensor x = x_in.detach().clone().requires_grad_(true);
  block.zero_grad();
  auto [y, state] = block.forward_with_state(x);
  const at::Tensor y_next = block.step(at::randn({x.size(0), x.size(2)}, x.options()), state).first;
  (y.pow(2).sum() + y_next.pow(2).sum()).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(at::isfinite(x.grad()).all().item<bool>());
  for (const auto& p : block.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(at::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(max_abs(p.value().grad()), 0.0) << p.key();
  }
}

}  // namespace backbone_checks
