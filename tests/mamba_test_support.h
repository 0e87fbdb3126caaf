// What the mamba tests share: largest absolute entries and the one-line error check.
#pragma once

#include <functional>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "mhd/error.h"

namespace mamba_test {

inline double max_abs(const at::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0.0; }
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return max_abs(a - b); }

// Expects `fn` to throw mhd::Error whose message contains `needle`, on one line.
inline void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected mhd::Error containing \"" << needle << "\"";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what();
  }
}

}  // namespace mamba_test
