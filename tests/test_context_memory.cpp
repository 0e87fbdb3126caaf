// The context source of every memory (Memory::retrieve_context, context_energy; docs/design.md §4):
// causal to the bit for every plugin this build makes, and for hopfield and dense_am the retrieval
// their formulas define.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/kits/context_memory.h"
#include "mhd/kits/dense_am.h"
#include "mhd/memory.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "study/study.h"

namespace {

constexpr std::int64_t kD = 8;

// Every plugin of this build (tests/context_memory.cmake makes this test depend on each plugin target).
mhd::PluginRegistry& registry() {
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins");
  return registry;
}

std::shared_ptr<mhd::Memory> make(const std::string& name) {
  const auto* plugin = registry().find(mhd::PluginKind::Memory, name);
  return registry().make<mhd::Memory>(name, mhd::Params::defaults(plugin->manifest->params), mhd::ModelDims{kD, 16});
}

TEST(ContextMemory, VisibleKeysAreTheShiftedLowerTriangle) {
  const auto v = mhd::visible_keys(2, 4, at::kCPU);  // queries at positions 2 and 3
  const auto expected = at::tensor({1, 1, 1, 0, 1, 1, 1, 1}).to(at::kBool).view({2, 4});
  EXPECT_TRUE(at::equal(v, expected)) << v;
  EXPECT_TRUE(at::equal(mhd::visible_counts(2, 4, at::TensorOptions().dtype(at::kLong)), at::tensor({3, 4})));
  EXPECT_THROW(mhd::visible_keys(5, 4, at::kCPU), mhd::Error);
}

// Redrawing the keys and values after position t leaves every query at <= t unchanged, bit for bit,
// for every memory plugin; and wrong shapes are one-line errors naming the plugin.
TEST(ContextMemory, EveryMemoryIsCausalToTheBit) {
  std::size_t checked = 0;
  for (const auto* plugin : registry().plugins(mhd::PluginKind::Memory)) {
    const std::string name = plugin->manifest->name;
    SCOPED_TRACE(name);
    auto memory = make(name);
    at::NoGradGuard no_grad;
    at::manual_seed(3);
    const std::int64_t L = 10, t = 4;
    const auto Q = at::randn({2, L, kD}), K = at::randn({2, L, kD}), V = at::randn({2, L, kD});
    auto K2 = K.clone(), V2 = V.clone();
    K2.narrow(1, t + 1, L - t - 1).normal_();
    V2.narrow(1, t + 1, L - t - 1).normal_();
    const auto a = memory->retrieve_context(Q, K, V), b = memory->retrieve_context(Q, K2, V2);
    ASSERT_EQ(a.sizes(), Q.sizes());
    EXPECT_TRUE(at::equal(a.narrow(1, 0, t + 1), b.narrow(1, 0, t + 1)));
    EXPECT_FALSE(at::equal(a.narrow(1, t + 1, L - t - 1), b.narrow(1, t + 1, L - t - 1))) << "later queries read them";
    const auto ea = memory->context_energy(Q, K), eb = memory->context_energy(Q, K2);
    ASSERT_EQ(ea.sizes(), (std::vector<std::int64_t>{2, L}));
    EXPECT_TRUE(at::equal(ea.narrow(1, 0, t + 1), eb.narrow(1, 0, t + 1)));
    // A decoder's single query at the end sees every key: the last row of the full call.
    const auto last = memory->retrieve_context(Q.narrow(1, L - 1, 1), K, V);
    EXPECT_TRUE(at::allclose(last.squeeze(1), a.select(1, L - 1), 1e-5, 1e-6));
    try {
      memory->retrieve_context(Q, K.narrow(1, 0, 3), V.narrow(1, 0, 3));
      ADD_FAILURE() << "more queries than keys must be refused";
    } catch (const mhd::Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      EXPECT_NE(message.find("[B, Lq, D]"), std::string::npos) << message;
    }
    ++checked;
  }
  EXPECT_GE(checked, 2u) << "hopfield and dense_am at least";
}

// hopfield: softmax over the visible keys of beta q.k, times the values, and an energy whose
// gradient in the query is q - softmax(...) K (the CCCP form), checked by finite differences.
TEST(ContextMemory, HopfieldIsCausalSoftmaxAttention) {
  auto memory = make("hopfield");  // beta = 2 by default
  memory->to(at::kDouble);
  at::manual_seed(5);
  const std::int64_t L = 6;
  const auto Q = at::randn({1, L, kD}, at::kDouble), K = at::randn({1, L, kD}, at::kDouble),
             V = at::randn({1, L, kD}, at::kDouble);
  auto scores = 2.0 * Q.matmul(K.transpose(1, 2));  // [1, L, L]
  scores = scores.masked_fill(at::ones({L, L}, at::kBool).triu(1), -INFINITY);
  const auto expected = at::softmax(scores, -1).matmul(V);
  EXPECT_TRUE(at::allclose(memory->retrieve_context(Q, K, V), expected, 1e-10, 1e-12));

  auto q = Q.clone().requires_grad_(true);
  const auto grad = torch::autograd::grad({memory->context_energy(q, K).sum()}, {q})[0];
  const double eps = 1e-6;
  for (std::int64_t i = 0; i < kD; i += 3) {
    auto up = Q.clone(), down = Q.clone();
    up[0][3][i] += eps;
    down[0][3][i] -= eps;
    const double numeric =
        (memory->context_energy(up, K).sum() - memory->context_energy(down, K).sum()).item<double>() / (2 * eps);
    EXPECT_NEAR(grad[0][3][i].item<double>(), numeric, 1e-6);
  }
  // E(retrieve(q)) <= E(q) when the values are the keys (one CCCP step on the context's energy).
  const auto r = memory->retrieve_context(Q, K, K);
  EXPECT_TRUE((memory->context_energy(r, K) <= memory->context_energy(Q, K) + 1e-12).all().item<bool>());
}

// dense_am: a query that sees every key retrieves what the same memory would from a bank of those
// keys (the kit's bank formula), for a polynomial separation.
TEST(ContextMemory, DenseAmLastQueryEqualsBankRetrievalOverTheKeys) {
  mhd::dam::Spec spec;  // dot, poly degree 3, linear shaping (the plugin's defaults)
  auto memory = make("dense_am");
  at::NoGradGuard no_grad;
  at::manual_seed(9);
  const auto Q = at::randn({2, 5, kD}), K = at::randn({2, 5, kD});
  const auto from_context = memory->retrieve_context(Q, K, K).select(1, 4);  // [2, D]
  for (std::int64_t b = 0; b < 2; ++b) {
    const auto q = Q[b].narrow(0, 4, 1);  // [1, D]
    const auto bank = mhd::dam::retrieval_weights(spec, q, K[b]).matmul(K[b]);
    EXPECT_TRUE(at::allclose(from_context[b], bank[0], 1e-5, 1e-6)) << "row " << b;
    const auto e = memory->context_energy(Q, K)[b][4];
    EXPECT_NEAR(e.item<double>(), mhd::dam::energy(spec, q, K[b])[0].item<double>(), 1e-4);
  }
}

}  // namespace
