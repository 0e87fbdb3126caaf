// The "mamba" backbone's fused selective scan, every build of it, against its per-timestep
// reference and finite differences, and the AVX-512 build's vector math. The block and the plugin
// are tested in test_mamba_block.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "fast_exp.h"
#include "mhd/error.h"
#include "scan_kernels.h"
#include "backbone_checks.h"
#include "selective_scan.h"

namespace {

using mhd::mamba::ScanArgs;
using mhd::mamba::ScanResult;

using backbone_checks::expect_error;
using backbone_checks::max_abs;
using backbone_checks::max_abs_diff;

// ---------------------------------------------------------------------------------------------
// Scan fixtures
// ---------------------------------------------------------------------------------------------

struct ScanShape {
  std::int64_t batch = 2, len = 11, dim = 5, nstate = 7;  // N = 7 exercises the vector tail loop
};

struct ScanOptions {
  bool h0 = true, skip = true, bias = true, softplus = true;
};

ScanArgs random_args(const ScanShape& s, at::ScalarType dtype, const ScanOptions& o, std::uint64_t seed) {
  at::manual_seed(seed);
  const auto opts = at::TensorOptions().dtype(dtype);
  ScanArgs a;
  a.u = at::randn({s.batch, s.len, s.dim}, opts);
  // With softplus the raw step may be negative; without it the step itself must be positive.
  a.delta = o.softplus ? at::randn({s.batch, s.len, s.dim}, opts) - 1.0
                       : at::rand({s.batch, s.len, s.dim}, opts) * 0.5 + 0.05;
  a.A = -at::exp(at::randn({s.dim, s.nstate}, opts) * 0.5);
  a.B = at::randn({s.batch, s.len, s.nstate}, opts);
  a.C = at::randn({s.batch, s.len, s.nstate}, opts);
  if (o.skip) a.D = at::randn({s.dim}, opts);
  if (o.bias) a.delta_bias = at::randn({s.dim}, opts) * 0.5;
  if (o.h0) a.h0 = at::randn({s.batch, s.dim, s.nstate}, opts);
  a.delta_softplus = o.softplus;
  return a;
}

constexpr std::size_t kNumScanTensors = 8;
const char* const kScanTensorNames[kNumScanTensors] = {"u", "delta", "A", "B", "C", "D", "delta_bias", "h0"};

std::vector<at::Tensor*> scan_tensors(ScanArgs& a) {
  return {&a.u, &a.delta, &a.A, &a.B, &a.C, &a.D, &a.delta_bias, &a.h0};
}

// Fresh leaves requiring grad, so two scans never share a graph.
ScanArgs leaves_of(const ScanArgs& a) {
  ScanArgs out = a;
  for (at::Tensor* t : scan_tensors(out)) {
    if (t->defined()) *t = t->detach().clone().requires_grad_(true);
  }
  return out;
}

// A loss that weights every output entry differently: sum(y * wy) + sum(h_L * wh).
struct LossWeights {
  at::Tensor wy, wh;
};
LossWeights random_weights(const ScanArgs& a, std::uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn(a.u.sizes(), a.u.options()), at::randn({a.u.size(0), a.u.size(2), a.A.size(1)}, a.u.options())};
}
at::Tensor weighted_loss(const ScanResult& r, const LossWeights& w) {
  return (r.y * w.wy).sum() + (r.last_state * w.wh).sum();
}

using ScanFn = ScanResult (*)(const ScanArgs&);

// Gradients of weighted_loss w.r.t. every defined input (undefined entries for the absent ones).
std::vector<at::Tensor> scan_gradients(ScanFn scan, const ScanArgs& base, const LossWeights& w) {
  ScanArgs a = leaves_of(base);
  std::vector<at::Tensor> inputs;
  for (at::Tensor* t : scan_tensors(a))
    if (t->defined()) inputs.push_back(*t);
  const auto grads = torch::autograd::grad({weighted_loss(scan(a), w)}, inputs);
  std::vector<at::Tensor> out;
  std::size_t k = 0;
  for (at::Tensor* t : scan_tensors(a)) out.push_back(t->defined() ? grads[k++] : at::Tensor());
  return out;
}

// Restores the kernel ISA and thread count a test changed.
struct ScanSettingsGuard {
  int threads = at::get_num_threads();
  ~ScanSettingsGuard() {
    mhd::mamba::set_scan_isa(mhd::mamba::ScanIsa::Auto);
    at::set_num_threads(threads);
  }
};

using mhd::mamba::ScanIsa;

// One test body for every build of the fused kernel: each MambaScanBuilds runs once per build
// (generic, avx2+fma, avx512) and is skipped for a build this CPU lacks.
class MambaScanBuilds : public ::testing::TestWithParam<ScanIsa> {
 protected:
  void SetUp() override {
    const auto have = mhd::mamba::available_scan_isas();
    if (std::find(have.begin(), have.end(), GetParam()) == have.end()) {
      GTEST_SKIP() << "this CPU lacks the " << mhd::mamba::scan_isa_name(GetParam()) << " build";
    }
    mhd::mamba::set_scan_isa(GetParam());
  }
  ScanSettingsGuard guard_;
};

std::string isa_test_name(const ::testing::TestParamInfo<ScanIsa>& info) {
  switch (info.param) {
    case ScanIsa::Avx512: return "avx512";
    case ScanIsa::Avx2: return "avx2";
    default: return "generic";
  }
}

INSTANTIATE_TEST_SUITE_P(Builds, MambaScanBuilds, ::testing::Values(ScanIsa::Generic, ScanIsa::Avx2, ScanIsa::Avx512),
                         isa_test_name);

bool cpu_has_avx512() { return mhd::mamba::kernels::cpu_has_avx512(); }

// ---------------------------------------------------------------------------------------------
// fast_exp
// ---------------------------------------------------------------------------------------------

TEST(MambaFastExp, MatchesStdExpToAFewUlp) {
  double worst_f = 0, worst_d = 0;
  for (int i = 0; i <= 20000; ++i) {
    const double x = -85.0 + 172.0 * i / 20000.0;
    const float xf = static_cast<float>(x);
    worst_f = std::max(worst_f, std::abs(mhd::mamba::fast_exp(xf) / std::exp(xf) - 1.0f) * 1.0);
    const double xd = -699.0 + 1407.0 * i / 20000.0;
    worst_d = std::max(worst_d, std::abs(mhd::mamba::fast_exp(xd) / std::exp(xd) - 1.0));
  }
  EXPECT_LT(worst_f, 4e-7);
  EXPECT_LT(worst_d, 4e-16);
  EXPECT_TRUE(std::isnan(mhd::mamba::fast_exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(mhd::mamba::fast_exp(std::numeric_limits<double>::quiet_NaN())));
  // Clamped, never subnormal or infinite.
  EXPECT_GT(mhd::mamba::fast_exp(-1e4f), 0.0f);
  EXPECT_LT(mhd::mamba::fast_exp(-1e4f), 1e-37f);
  EXPECT_TRUE(std::isfinite(mhd::mamba::fast_exp(1e4)));
}

// ---------------------------------------------------------------------------------------------
// Selective scan: forward
// ---------------------------------------------------------------------------------------------

TEST_P(MambaScanBuilds, ForwardMatchesReferenceFloat64) {
  const std::vector<ScanOptions> variants = {
      {true, true, true, true}, {false, true, true, true}, {false, false, false, false}, {true, true, false, false}};
  for (const ScanShape& shape : {ScanShape{}, ScanShape{3, 20, 4, 16}}) {
    for (const ScanOptions& o : variants) {
      const ScanArgs a = random_args(shape, at::kDouble, o, 1);
      const ScanResult fused = mhd::mamba::selective_scan(a);
      const ScanResult ref = mhd::mamba::selective_scan_reference(a);
      ASSERT_EQ(fused.y.sizes(), ref.y.sizes());
      ASSERT_EQ(fused.last_state.sizes(), ref.last_state.sizes());
      EXPECT_LT(max_abs_diff(fused.y, ref.y), 1e-10) << "h0=" << o.h0 << " softplus=" << o.softplus;
      EXPECT_LT(max_abs_diff(fused.last_state, ref.last_state), 1e-10) << "h0=" << o.h0;
      EXPECT_GT(max_abs(ref.y), 0.1);  // not trivially zero
    }
  }
}

TEST_P(MambaScanBuilds, ForwardMatchesReferenceFloat32) {
  for (bool h0 : {false, true}) {
    const ScanArgs a = random_args({2, 40, 6, 16}, at::kFloat, {h0, true, true, true}, 2);
    const ScanResult fused = mhd::mamba::selective_scan(a);
    const ScanResult ref = mhd::mamba::selective_scan_reference(a);
    EXPECT_LT(max_abs_diff(fused.y, ref.y) / max_abs(ref.y), 1e-5);
    EXPECT_LT(max_abs_diff(fused.last_state, ref.last_state) / max_abs(ref.last_state), 1e-5);
  }
}

TEST_P(MambaScanBuilds, ReportsTheBuildThatRuns) {
  EXPECT_EQ(mhd::mamba::active_scan_isa(), mhd::mamba::scan_isa_name(GetParam()));
}

TEST(MambaScan, AutoPicksTheWidestBuild) {
  ScanSettingsGuard guard;
  mhd::mamba::set_scan_isa(ScanIsa::Auto);
  EXPECT_EQ(mhd::mamba::active_scan_isa(), mhd::mamba::scan_isa_name(mhd::mamba::available_scan_isas().back()));
  if (!cpu_has_avx512()) {
    expect_error([] { mhd::mamba::set_scan_isa(ScanIsa::Avx512); }, "this CPU lacks AVX-512");
  }
}

TEST_P(MambaScanBuilds, EmptySequenceReturnsInitialState) {
  const ScanArgs a = random_args({2, 0, 3, 4}, at::kDouble, {}, 5);
  const ScanResult r = mhd::mamba::selective_scan(a);
  EXPECT_EQ(r.y.sizes(), (std::vector<std::int64_t>{2, 0, 3}));
  EXPECT_EQ(max_abs_diff(r.last_state, a.h0), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Selective scan: gradients
// ---------------------------------------------------------------------------------------------

TEST_P(MambaScanBuilds, GradientsMatchReferenceFloat64) {
  const std::vector<ScanOptions> variants = {{true, true, true, true}, {false, false, false, false}};
  for (const ScanOptions& o : variants) {
    const ScanArgs a = random_args({2, 13, 5, 6}, at::kDouble, o, 6);
    const LossWeights w = random_weights(a, 7);
    const auto gf = scan_gradients(&mhd::mamba::selective_scan, a, w);
    const auto gr = scan_gradients(&mhd::mamba::selective_scan_reference, a, w);
    for (std::size_t i = 0; i < kNumScanTensors; ++i) {
      ASSERT_EQ(gf[i].defined(), gr[i].defined()) << kScanTensorNames[i];
      if (!gr[i].defined()) continue;
      EXPECT_LT(max_abs_diff(gf[i], gr[i]), 1e-9 * std::max(1.0, max_abs(gr[i]))) << kScanTensorNames[i];
      EXPECT_GT(max_abs(gr[i]), 1e-3) << kScanTensorNames[i] << " gradient is trivially zero";
    }
  }
}

TEST_P(MambaScanBuilds, GradientsMatchReferenceFloat32) {
  const ScanArgs a = random_args({2, 17, 4, 16}, at::kFloat, {}, 8);
  const LossWeights w = random_weights(a, 9);
  const auto gf = scan_gradients(&mhd::mamba::selective_scan, a, w);
  const auto gr = scan_gradients(&mhd::mamba::selective_scan_reference, a, w);
  for (std::size_t i = 0; i < kNumScanTensors; ++i)
    EXPECT_LT(max_abs_diff(gf[i], gr[i]), 1e-4 * std::max(1.0, max_abs(gr[i]))) << kScanTensorNames[i];
}

// Only one output used: autograd hands the backward zeros for the other.
TEST_P(MambaScanBuilds, GradientsWhenOnlyOneOutputIsUsed) {
  const ScanArgs base = random_args({1, 6, 3, 4}, at::kDouble, {}, 10);
  for (bool use_y : {true, false}) {
    std::vector<at::Tensor> grads[2];
    const ScanFn fns[2] = {&mhd::mamba::selective_scan, &mhd::mamba::selective_scan_reference};
    for (int k = 0; k < 2; ++k) {
      ScanArgs a = leaves_of(base);
      const ScanResult r = fns[k](a);
      const at::Tensor loss = use_y ? r.y.pow(2).sum() : r.last_state.pow(2).sum();
      // allow_unused: with only h_L in the loss the reference never touches C (the fused scan
      // returns zeros for it).
      const std::vector<at::Tensor> inputs = {a.u, a.A, a.B, a.C, a.h0};
      grads[k] = torch::autograd::grad({loss}, inputs, {}, false, false, true);
      for (std::size_t i = 0; i < grads[k].size(); ++i)
        if (!grads[k][i].defined()) grads[k][i] = at::zeros_like(inputs[i]);
    }
    for (std::size_t i = 0; i < grads[0].size(); ++i) EXPECT_LT(max_abs_diff(grads[0][i], grads[1][i]), 1e-10);
  }
}

// Central differences on a tiny case, every entry of every input.
TEST_P(MambaScanBuilds, GradientsMatchFiniteDifferences) {
  const ScanArgs base = random_args({1, 4, 2, 3}, at::kDouble, {}, 11);
  const LossWeights w = random_weights(base, 12);
  const auto analytic = scan_gradients(&mhd::mamba::selective_scan, base, w);
  ScanArgs probe = base;
  for (at::Tensor* t : scan_tensors(probe)) *t = t->defined() ? t->clone() : *t;
  const auto fields = scan_tensors(probe);
  const double eps = 1e-6;
  for (std::size_t i = 0; i < kNumScanTensors; ++i) {
    at::Tensor flat = fields[i]->view({-1});
    for (std::int64_t j = 0; j < flat.numel(); ++j) {
      const double x0 = flat[j].item<double>();
      flat[j] = x0 + eps;
      const double up = weighted_loss(mhd::mamba::selective_scan(probe), w).item<double>();
      flat[j] = x0 - eps;
      const double down = weighted_loss(mhd::mamba::selective_scan(probe), w).item<double>();
      flat[j] = x0;
      const double numeric = (up - down) / (2 * eps);
      const double exact = analytic[i].reshape({-1})[j].item<double>();
      EXPECT_NEAR(exact, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << kScanTensorNames[i] << "[" << j << "]";
    }
  }
}

// Under create_graph the backward is itself differentiable (recomputed through the reference).
TEST_P(MambaScanBuilds, SecondDerivativesMatchReference) {
  const ScanArgs base = random_args({1, 5, 3, 4}, at::kDouble, {}, 13);
  const LossWeights w = random_weights(base, 14);
  std::vector<at::Tensor> second[2];
  const ScanFn fns[2] = {&mhd::mamba::selective_scan, &mhd::mamba::selective_scan_reference};
  for (int k = 0; k < 2; ++k) {
    ScanArgs a = leaves_of(base);
    const auto first = torch::autograd::grad({weighted_loss(fns[k](a), w)}, {a.u, a.A}, {}, true, true);
    const at::Tensor scalar = first[0].pow(2).sum() + first[1].pow(2).sum();
    second[k] = torch::autograd::grad({scalar}, {a.u, a.delta, a.A, a.B, a.h0});
  }
  for (std::size_t i = 0; i < second[0].size(); ++i) {
    EXPECT_LT(max_abs_diff(second[0][i], second[1][i]), 1e-9 * std::max(1.0, max_abs(second[1][i])));
    EXPECT_GT(max_abs(second[1][i]), 0.0);
  }
}

// The backward's partial buffers (dB, dC per chunk; dA, dD per batch) give the same sums whatever
// the number of threads and chunks.
// In float32 too (the AVX-512 build's path; 37 channels = 3 blocks, cut into 3 parts for batch 1),
// up to the summation order of dB and dC.
TEST_P(MambaScanBuilds, GradientsIndependentOfThreadCount) {
  for (auto dtype : {at::kDouble, at::kFloat}) {
    for (std::int64_t batch : {1, 2, 3}) {
      const ScanArgs a = random_args({batch, 9, dtype == at::kDouble ? 7 : 37, 5}, dtype, {}, 15);
      const LossWeights w = random_weights(a, 16);
      at::set_num_threads(1);
      const auto one = scan_gradients(&mhd::mamba::selective_scan, a, w);
      at::set_num_threads(3);
      const auto three = scan_gradients(&mhd::mamba::selective_scan, a, w);
      for (std::size_t i = 0; i < kNumScanTensors; ++i) {
        const double tol = dtype == at::kDouble ? 1e-12 : 1e-5 * std::max(1.0, max_abs(one[i]));
        EXPECT_LT(max_abs_diff(one[i], three[i]), tol) << kScanTensorNames[i] << " batch=" << batch;
      }
    }
  }
}

// Inputs in float64 with the same values, for a float32 scan's reference.
ScanArgs to_double(const ScanArgs& a) {
  ScanArgs d = a;
  for (at::Tensor* t : scan_tensors(d))
    if (t->defined()) *t = t->to(at::kDouble);
  return d;
}

// The layouts the kernels read u, delta (and dLoss/dy) in: 0 = [B, L, D] contiguous, 1 = a [B, L, D]
// view of a channel-major [B, D, L] buffer (the block's conv output), 2 = every second channel of a
// wider buffer (neither channels nor positions contiguous). B and C as the block hands them over:
// slices of one [B, L, 2N] projection output.
void apply_layout(ScanArgs& a, int layout) {
  for (at::Tensor* t : {&a.u, &a.delta}) {
    if (layout == 1) *t = t->transpose(1, 2).contiguous().transpose(1, 2);
    if (layout == 2) {
      at::Tensor wide = at::zeros({t->size(0), t->size(1), 2 * t->size(2)}, t->options());
      wide.slice(2, 0, 2 * t->size(2), 2).copy_(*t);
      *t = wide.slice(2, 0, 2 * t->size(2), 2);
    }
  }
  const std::int64_t n = a.B.size(2);
  const at::Tensor bc = at::cat({a.B, a.C}, -1);
  a.B = bc.narrow(-1, 0, n);
  a.C = bc.narrow(-1, n, n);
}

// Float32 against the float64 reference on the same values, forward and every gradient, over the
// layouts above, channel counts that are not a multiple of 16 (37: two full vectors and a masked
// one), a length that is not a multiple of the 16-position tile and spans three of the AVX-512
// backward's 64-position chunks, the last one partial (150), and N = 16 (the states in
// registers), N = 20 (16 through the lane-sum butterfly, 4 one by one) and N = 7.
TEST_P(MambaScanBuilds, Float32LayoutsAndShapesMatchReference) {
  for (std::int64_t nstate : {16, 20, 7}) {
    for (int layout : {0, 1, 2}) {
      ScanArgs a = random_args({2, 150, 37, nstate}, at::kFloat, {}, 40 + nstate);
      apply_layout(a, layout);
      const ScanArgs ad = to_double(a);
      const ScanResult fused = mhd::mamba::selective_scan(a);
      const ScanResult ref = mhd::mamba::selective_scan_reference(ad);
      const std::string where = "N=" + std::to_string(nstate) + " layout=" + std::to_string(layout);
      EXPECT_LT(max_abs_diff(fused.y.to(at::kDouble), ref.y) / max_abs(ref.y), 1e-5) << where;
      EXPECT_LT(max_abs_diff(fused.last_state.to(at::kDouble), ref.last_state) / max_abs(ref.last_state), 1e-5)
          << where;
      LossWeights w = random_weights(a, 41);
      if (layout == 1) w.wy = w.wy.transpose(1, 2).contiguous().transpose(1, 2);  // dLoss/dy channel-major too
      const LossWeights wd{w.wy.to(at::kDouble), w.wh.to(at::kDouble)};
      const auto gf = scan_gradients(&mhd::mamba::selective_scan, a, w);
      const auto gr = scan_gradients(&mhd::mamba::selective_scan_reference, ad, wd);
      for (std::size_t i = 0; i < kNumScanTensors; ++i) {
        ASSERT_EQ(gf[i].defined(), gr[i].defined()) << kScanTensorNames[i];
        if (!gr[i].defined()) continue;
        EXPECT_EQ(gf[i].scalar_type(), at::kFloat) << kScanTensorNames[i];
        EXPECT_LT(max_abs_diff(gf[i].to(at::kDouble), gr[i]), 1e-4 * std::max(1.0, max_abs(gr[i])))
            << kScanTensorNames[i] << " " << where;
      }
    }
  }
}

TEST_P(MambaScanBuilds, Float32EmptySequenceAndSingleChannel) {
  const ScanArgs empty = random_args({2, 0, 3, 16}, at::kFloat, {}, 42);
  const ScanResult r = mhd::mamba::selective_scan(empty);
  EXPECT_EQ(r.y.sizes(), (std::vector<std::int64_t>{2, 0, 3}));
  EXPECT_EQ(max_abs_diff(r.last_state, empty.h0), 0.0);
  const ScanArgs one = random_args({1, 3, 1, 16}, at::kFloat, {}, 43);
  const ScanResult ref = mhd::mamba::selective_scan_reference(to_double(one));
  EXPECT_LT(max_abs_diff(mhd::mamba::selective_scan(one).y.to(at::kDouble), ref.y), 1e-5 * max_abs(ref.y));
}

// bfloat16 inputs, float32 state: the scan of bfloat16 values equals the float32 scan of the same
// (widened) values up to the final rounding of y and h_L to bfloat16 (relative 2^-9, tested at
// 2^-8), and the gradients likewise; against the float64 reference within 1%.
TEST_P(MambaScanBuilds, BFloat16InputsAccumulateInFloat32) {
  ScanArgs a16 = random_args({2, 45, 37, 16}, at::kFloat, {}, 44);
  apply_layout(a16, 1);
  for (at::Tensor* t : scan_tensors(a16))
    if (t->defined()) *t = t->to(at::kBFloat16);
  ScanArgs a32 = a16;
  for (at::Tensor* t : scan_tensors(a32))
    if (t->defined()) *t = t->to(at::kFloat);
  const ScanResult r16 = mhd::mamba::selective_scan(a16), r32 = mhd::mamba::selective_scan(a32);
  ASSERT_EQ(r16.y.scalar_type(), at::kBFloat16);
  ASSERT_EQ(r16.last_state.scalar_type(), at::kBFloat16);
  const double y_scale = max_abs(r32.y);
  EXPECT_TRUE(((r16.y.to(at::kFloat) - r32.y).abs() <= r32.y.abs() * (1.0 / 256) + 1e-6 * y_scale).all().item<bool>());
  EXPECT_TRUE(((r16.last_state.to(at::kFloat) - r32.last_state).abs() <= r32.last_state.abs() * (1.0 / 256) + 1e-6)
                  .all()
                  .item<bool>());
  const ScanResult ref = mhd::mamba::selective_scan_reference(to_double(a32));
  EXPECT_LT(max_abs_diff(r16.y.to(at::kDouble), ref.y) / max_abs(ref.y), 1e-2);

  // Loss weights already bfloat16-exact, so both scans get the same dLoss/dy.
  LossWeights w = random_weights(a32, 45);
  w.wy = w.wy.to(at::kBFloat16).to(at::kFloat);
  w.wh = w.wh.to(at::kBFloat16).to(at::kFloat);
  auto loss16 = [&](const ScanArgs& a) {
    const ScanResult r = mhd::mamba::selective_scan(a);
    return ScanResult{r.y.to(at::kFloat), r.last_state.to(at::kFloat)};
  };
  ScanArgs l16 = leaves_of(a16), l32 = leaves_of(a32);
  std::vector<at::Tensor> in16, in32;
  for (at::Tensor* t : scan_tensors(l16)) in16.push_back(*t);
  for (at::Tensor* t : scan_tensors(l32)) in32.push_back(*t);
  const auto g16 = torch::autograd::grad({weighted_loss(loss16(l16), w)}, in16);
  const auto g32 = torch::autograd::grad({weighted_loss(mhd::mamba::selective_scan(l32), w)}, in32);
  for (std::size_t i = 0; i < kNumScanTensors; ++i) {
    EXPECT_EQ(g16[i].scalar_type(), at::kBFloat16) << kScanTensorNames[i];
    EXPECT_LT(max_abs_diff(g16[i].to(at::kFloat), g32[i]), (1.0 / 128) * std::max(1.0, max_abs(g32[i])))
        << kScanTensorNames[i];
  }
}

// The parallel region is entered: on 2 threads the forward runs as 2 tasks. (ATen's parallel_for is
// an inline template that compiles to a serial call unless its caller is built with OpenMP.)
TEST_P(MambaScanBuilds, ForwardRunsOnEveryThread) {
  at::set_num_threads(2);
  const ScanArgs a = random_args({2, 256, 64, 16}, at::kFloat, {}, 46);
  mhd::mamba::selective_scan(a);
  EXPECT_EQ(mhd::mamba::last_scan_forward_tasks(), 2);
  at::set_num_threads(1);
  mhd::mamba::selective_scan(a);
  EXPECT_EQ(mhd::mamba::last_scan_forward_tasks(), 1);
}

// The AVX-512 backward starts from the states its forward kept every 64 positions (scan_kernels.h);
// after another build's forward (the build changed in between) it recomputes them, and the
// gradients are those of an AVX-512 forward and backward.
TEST(MambaScan, Avx512BackwardAfterAnotherBuildsForward) {
  if (!cpu_has_avx512()) GTEST_SKIP() << "this CPU lacks AVX-512";
  ScanSettingsGuard guard;
  const ScanArgs base = random_args({2, 150, 37, 16}, at::kFloat, {}, 47);  // 3 chunks, 3 blocks
  const LossWeights w = random_weights(base, 48);
  mhd::mamba::set_scan_isa(ScanIsa::Avx512);
  const std::vector<at::Tensor> expected = scan_gradients(&mhd::mamba::selective_scan, base, w);
  ScanArgs a = leaves_of(base);
  mhd::mamba::set_scan_isa(ScanIsa::Generic);
  const at::Tensor loss = weighted_loss(mhd::mamba::selective_scan(a), w);
  mhd::mamba::set_scan_isa(ScanIsa::Avx512);
  std::vector<at::Tensor> inputs;
  for (at::Tensor* t : scan_tensors(a))
    if (t->defined()) inputs.push_back(*t);
  const auto grads = torch::autograd::grad({loss}, inputs);
  std::size_t k = 0;
  for (std::size_t i = 0; i < kNumScanTensors; ++i) {
    if (!expected[i].defined()) continue;
    EXPECT_LT(max_abs_diff(grads[k++], expected[i]), 1e-6 * std::max(1.0, max_abs(expected[i]))) << kScanTensorNames[i];
  }
}

// ---------------------------------------------------------------------------------------------
// The AVX-512 build's vector exp and softplus, over dense sweeps of the ranges the scan uses
// ---------------------------------------------------------------------------------------------

std::vector<float> sweep(double lo, double hi, std::int64_t n) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(lo + (hi - lo) * i / (n - 1));
  return x;
}

TEST(MambaVectorMath, Exp2AndExpErrorBounds) {
  if (!cpu_has_avx512()) GTEST_SKIP() << "no AVX-512";
  const std::int64_t n = 2000001;
  // 2^t on [-126, 8]: delta A log2 e is <= 0 in the scan (delta > 0, A < 0); a little above 0 too.
  std::vector<float> t = sweep(-126.0, 8.0, n), out(t.size());
  mhd::mamba::kernels::avx512_exp2(t.data(), out.data(), n);
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(out[i] / std::exp2(double(t[i])) - 1.0));
  EXPECT_LT(worst, 2e-7) << "2^t";
  // exp(x) as the scan evaluates exp(delta A), x in [-87, 0]: t = x * float(log2 e) carries the
  // roundings of log2 e and of the product (up to 1.5 * 2^-24 |t| in t, i.e. 9e-8 |x| relative in
  // 2^t), so the bound is 2e-7 + 9e-8 |x|; a float32 exp of the float32 product delta A has a
  // comparable error from that product's own rounding.
  std::vector<float> x = sweep(-87.0, 0.0, n);
  mhd::mamba::kernels::avx512_exp(x.data(), out.data(), n);
  double worst_ratio = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double err = std::abs(out[i] / std::exp(double(x[i])) - 1.0);
    worst_ratio = std::max(worst_ratio, err / (2e-7 + 9e-8 * std::abs(double(x[i]))));
  }
  EXPECT_LT(worst_ratio, 1.0) << "exp";
  // Clamped below at 2^-126 (never subnormal), NaN propagated.
  const float special[4] = {-200.0f, -1e30f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
  float got[4];
  mhd::mamba::kernels::avx512_exp2(special, got, 4);
  EXPECT_EQ(got[0], std::ldexp(1.0f, -126));
  EXPECT_EQ(got[1], std::ldexp(1.0f, -126));
  EXPECT_TRUE(std::isnan(got[2]));
  EXPECT_NEAR(got[3], 1.0f, 2e-7);
}

TEST(MambaVectorMath, SoftplusMatchesLog1pOfExp) {
  if (!cpu_has_avx512()) GTEST_SKIP() << "no AVX-512";
  const std::int64_t n = 2000001;
  std::vector<float> x = sweep(-40.0, 40.0, n), out(x.size());
  mhd::mamba::kernels::avx512_softplus(x.data(), out.data(), n);
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double xd = x[i];
    const double ref = xd > 20 ? xd : std::log1p(std::exp(xd));  // PyTorch's threshold 20
    worst = std::max(worst, std::abs(out[i] / ref - 1.0));
  }
  EXPECT_LT(worst, 5e-7);
}

TEST(MambaScan, BadArgumentsGiveClearErrors) {
  const ScanArgs good = random_args({2, 5, 3, 4}, at::kDouble, {}, 17);
  auto with = [&](const std::function<void(ScanArgs&)>& change) {
    ScanArgs a = good;
    change(a);
    return a;
  };
  expect_error([&] { mhd::mamba::selective_scan(with([](ScanArgs& a) { a.B = a.B.narrow(2, 0, 3); })); },
               "selective_scan: B must be [B, L, N] = [2, 5, 4], got [2, 5, 3]");
  expect_error([&] { mhd::mamba::selective_scan(with([](ScanArgs& a) { a.u = a.u[0]; })); },
               "selective_scan: u must be [B, L, D], got [5, 3]");
  expect_error([&] { mhd::mamba::selective_scan(with([](ScanArgs& a) { a.h0 = a.h0.transpose(1, 2); })); },
               "h0 must be [B, D, N] = [2, 3, 4], got [2, 4, 3]");
  expect_error([&] { mhd::mamba::selective_scan(with([](ScanArgs& a) { a.C = a.C.to(at::kFloat); })); },
               "C has dtype Float but u has Double");
  expect_error([&] { mhd::mamba::selective_scan(with([](ScanArgs& a) { a.A = at::Tensor(); })); },
               "A is required");
  expect_error(
      [&] {
        mhd::mamba::selective_scan(with([](ScanArgs& a) {
          for (at::Tensor* t : scan_tensors(a)) *t = t->to(at::kHalf);
        }));
      },
      "supports float32, float64 and bfloat16, got Half");
  expect_error([&] { mhd::mamba::selective_scan_reference(with([](ScanArgs& a) { a.D = at::ones({4}, a.u.options()); })); },
               "selective_scan_reference: D must be [D] = [3], got [4]");
}

}  // namespace
