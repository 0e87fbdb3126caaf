// The `hopfield` memory plugin loaded through the registry: retrieval, energy (lse, CCCP descent),
// queue writes, stats, shape errors and the buffer/parameter choice.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

using Overrides = std::map<std::string, mhd::ParamValue>;

const mhd::Manifest& manifest() {
  auto& reg = mhd::PluginRegistry::global();
  reg.load_file(MHD_PLUGIN_HOPFIELD, mhd::PluginKind::Memory);
  return *reg.require(mhd::PluginKind::Memory, "hopfield").manifest;
}

std::shared_ptr<mhd::Memory> make_memory(std::int64_t dim, const Overrides& overrides) {
  mhd::Params params = mhd::Params::defaults(manifest().params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  mhd::ModelDims dims;
  dims.d_model = dim;
  return mhd::PluginRegistry::global().make<mhd::Memory>("hopfield", params, dims);
}

at::Tensor bank_of(mhd::Memory& memory) {
  for (const auto& item : memory.named_buffers())
    if (item.key() == "patterns") return item.value();
  for (const auto& item : memory.named_parameters())
    if (item.key() == "patterns") return item.value();
  return at::Tensor();
}

// Random patterns with ||x|| ~ 2: N(0, 4/D) entries.   [n, D]
at::Tensor random_patterns(std::int64_t n, std::int64_t dim) {
  return at::randn({n, dim}) * (2.0 / std::sqrt(static_cast<double>(dim)));
}

// Each row with exactly `share` of its components (a random subset per row) replaced by fresh values
// of the same scale.
at::Tensor corrupt(const at::Tensor& patterns, double share) {
  const auto count = static_cast<std::int64_t>(share * static_cast<double>(patterns.size(1)));
  const std::int64_t row_dim = 1;
  const at::Tensor rank = at::rand(patterns.sizes()).argsort(row_dim).argsort(row_dim);  // a random permutation per row
  const at::Tensor replace = rank.lt(count);
  const at::Tensor fresh = at::randn(patterns.sizes()) * (2.0 / std::sqrt(static_cast<double>(patterns.size(1))));
  return at::where(replace, fresh, patterns);
}

// cos(a_i, b_j) for every pair: [n, m]
at::Tensor cosine_matrix(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor an = a / a.norm(2, {1}, true), bn = b / b.norm(2, {1}, true);
  return an.matmul(bn.t());
}

class Hopfield : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

TEST_F(Hopfield, DefaultsValidateAgainstTheSchema) {
  const mhd::Manifest& m = manifest();
  EXPECT_EQ(m.kind, mhd::PluginKind::Memory);
  EXPECT_EQ(m.name, "hopfield");
  ASSERT_TRUE(m.make_memory);
  for (const auto& spec : m.params) {
    EXPECT_FALSE(mhd::check_param_value(spec, spec.default_value).has_value()) << spec.name;
    EXPECT_FALSE(spec.doc.empty()) << spec.name;
  }
  EXPECT_EQ(make_memory(16, {})->size(), 1024);
}

TEST_F(Hopfield, RetrievesStoredPatternsFromNoisyQueries) {
  const std::int64_t slots = 64, dim = 64;
  auto memory = make_memory(dim, {{"size", slots}, {"beta", 8.0}, {"init", std::string("zeros")}});
  const at::Tensor stored = random_patterns(slots, dim);
  ASSERT_EQ(memory->write(stored), slots);

  at::NoGradGuard no_grad;
  const at::Tensor queries = corrupt(stored, 0.2);  // [64, 64], 20% of the components replaced
  const at::Tensor retrieved = memory->retrieve(queries);
  const at::Tensor cos = cosine_matrix(retrieved, stored);                      // [64, 64]
  const at::Tensor to_own = cos.diagonal();
  const at::Tensor query_cos = cosine_matrix(queries, stored).diagonal();
  EXPECT_GT(to_own.min().item<double>(), 0.99) << "worst query started at cos " << query_cos.min().item<double>();
  EXPECT_TRUE(cos.argmax(1).equal(at::arange(slots)));
}

TEST_F(Hopfield, EnergyIsLowerAtStoredPatternsThanAtRandomPoints) {
  const std::int64_t slots = 64, dim = 64;
  auto memory = make_memory(dim, {{"size", slots}, {"beta", 8.0}, {"init", std::string("zeros")}});
  const at::Tensor stored = random_patterns(slots, dim);
  memory->write(stored);

  at::NoGradGuard no_grad;
  const at::Tensor at_patterns = memory->energy(stored);  // [64]
  EXPECT_GE(at_patterns.min().item<double>(), 0.0);       // the constants make E >= 0
  // Against random points of the same norm as each pattern (the ||q||^2 term then cancels out).
  for (int trial = 0; trial < 4; ++trial) {
    const at::Tensor direction = at::randn({slots, dim});
    const at::Tensor random_points = direction * (stored.norm(2, {1}, true) / direction.norm(2, {1}, true));
    const at::Tensor at_random = memory->energy(random_points);  // [64]
    EXPECT_TRUE(at_patterns.lt(at_random).all().item<bool>())
        << "largest gap " << (at_patterns - at_random).max().item<double>();
  }
}

// retrieve() is one CCCP step on the energy: E(retrieve(q)) <= E(q) for any query, measured here on
// random, noisy and far-away queries.
TEST_F(Hopfield, RetrievalStepDoesNotIncreaseEnergy) {
  const std::int64_t dim = 32;
  for (const double beta : {0.5, 2.0, 8.0}) {
    auto memory = make_memory(dim, {{"size", std::int64_t{100}}, {"beta", beta}});
    const at::Tensor stored = random_patterns(100, dim);
    memory->write(stored);
    at::NoGradGuard no_grad;
    const at::Tensor queries = at::cat({at::randn({64, dim}), corrupt(stored.narrow(0, 0, 32), 0.5),
                                        10 * at::randn({16, dim})});
    const at::Tensor before = memory->energy(queries);
    const at::Tensor after = memory->energy(memory->retrieve(queries));
    const at::Tensor rise = (after - before).max();
    EXPECT_LE(rise.item<double>(), 1e-5) << "beta " << beta;
    EXPECT_LT((after - before).mean().item<double>(), 0.0) << "beta " << beta;
  }
}

TEST_F(Hopfield, EnergyOfAnEmptyMemoryIsHalfTheSquaredNorm) {
  // X = 0: lse(beta X q) = log M, so E(q) = -log M / beta + ||q||^2 / 2 + log M / beta + 0.
  auto memory = make_memory(8, {{"size", std::int64_t{16}}, {"init", std::string("zeros")}});
  const at::Tensor q = at::randn({5, 8});
  EXPECT_TRUE(at::allclose(memory->energy(q), 0.5 * q.pow(2).sum(1), 1e-5, 1e-6));
}

TEST_F(Hopfield, WritesReplaceTheOldestSlotsFirst) {
  auto memory = make_memory(2, {{"size", std::int64_t{4}}, {"init", std::string("zeros")}});
  auto rows = [](double first, std::int64_t n) {  // patterns (k, -k) for k = first, first + 1, ...
    const at::Tensor k = at::arange(first, first + static_cast<double>(n)).unsqueeze(1);
    return at::cat({k, -k}, 1);
  };
  auto first_column = [&] { return bank_of(*memory).select(1, 0).clone(); };

  EXPECT_EQ(memory->write(rows(1, 3)), 3);  // slots 0..2
  EXPECT_TRUE(first_column().equal(at::tensor({1.f, 2.f, 3.f, 0.f})));
  EXPECT_EQ(memory->stats(at::zeros({1, 2})).at("stored"), 3.0);

  EXPECT_EQ(memory->write(rows(4, 3)), 3);  // slot 3, then the oldest: 0 (held 1), 1 (held 2)
  EXPECT_TRUE(first_column().equal(at::tensor({5.f, 6.f, 3.f, 4.f})));

  EXPECT_EQ(memory->write(rows(7, 6)), 4);  // 6 > 4 slots: only the newest 4 (9..12) are kept
  EXPECT_TRUE(first_column().equal(at::tensor({11.f, 12.f, 9.f, 10.f})));
  EXPECT_EQ(memory->stats(at::zeros({1, 2})).at("stored"), 4.0);
  EXPECT_EQ(memory->size(), 4);
}

TEST_F(Hopfield, MaxSimilarityIsTheLargestCosineToAStoredPattern) {
  auto memory = make_memory(3, {{"size", std::int64_t{4}}, {"init", std::string("zeros")}});
  EXPECT_TRUE(memory->max_similarity(at::randn({2, 3})).eq(0).all().item<bool>()) << "an empty bank is novel";
  memory->write(at::tensor({1.f, 0.f, 0.f, 0.f, 2.f, 0.f}).view({2, 3}));
  const at::Tensor queries = at::tensor({5.f, 0.f, 0.f,     // along pattern 0: cosine 1
                                         0.f, 0.f, 1.f,     // orthogonal to both: 0
                                         1.f, 1.f, 0.f,     // 45 degrees to both: 1/sqrt(2)
                                         -1.f, 0.f, 0.f})   // opposite pattern 0, orthogonal to 1: 0
                                 .view({4, 3});
  const at::Tensor expected = at::tensor({1.f, 0.f, static_cast<float>(1 / std::sqrt(2.0)), 0.f});
  EXPECT_TRUE(at::allclose(memory->max_similarity(queries), expected, 1e-6, 1e-6)) << memory->max_similarity(queries);
}

// A dtype cast of the module (Module::to casts every buffer) keeps the queue position exact.
TEST_F(Hopfield, DtypeCastKeepsTheQueuePosition) {
  auto memory = make_memory(2, {{"size", std::int64_t{4}}, {"init", std::string("zeros")}});
  memory->write(at::ones({3, 2}));
  memory->to(at::kDouble);
  EXPECT_EQ(bank_of(*memory).scalar_type(), at::kDouble);
  for (const auto& item : memory->named_buffers()) {
    if (item.key() == "write_count") {
      EXPECT_EQ(item.value().scalar_type(), at::kLong);
    }
  }
  EXPECT_EQ(memory->write(2 * at::ones({2, 2})), 2);  // slot 3, then the oldest, slot 0
  EXPECT_TRUE(bank_of(*memory).select(1, 0).equal(at::tensor({2.0, 1.0, 1.0, 2.0}, at::kDouble)));
  EXPECT_EQ(memory->stats(at::zeros({1, 2}, at::kDouble)).at("stored"), 4.0);
}

TEST_F(Hopfield, StatsAreInRange) {
  const std::int64_t slots = 64, dim = 16;
  auto memory = make_memory(dim, {{"size", slots}, {"beta", 4.0}});
  const auto s = memory->stats(at::randn({8, dim}));
  EXPECT_GE(s.at("attention_entropy"), 0.0);
  EXPECT_LE(s.at("attention_entropy"), std::log(static_cast<double>(slots)) + 1e-6);
  EXPECT_GT(s.at("top10_mass"), 0.0);
  EXPECT_LE(s.at("top10_mass"), 1.0 + 1e-6);
  EXPECT_EQ(s.at("stored"), 0.0);

  // Extremes: an empty memory attends uniformly; a sharp one puts all mass on one stored pattern.
  auto empty = make_memory(dim, {{"size", slots}, {"init", std::string("zeros")}});
  const auto u = empty->stats(at::randn({4, dim}));
  EXPECT_NEAR(u.at("attention_entropy"), std::log(static_cast<double>(slots)), 1e-5);
  EXPECT_NEAR(u.at("top10_mass"), 10.0 / static_cast<double>(slots), 1e-6);

  auto sharp = make_memory(dim, {{"size", slots}, {"beta", 1000.0}, {"init", std::string("zeros")}});
  const at::Tensor stored = random_patterns(slots, dim);
  sharp->write(stored);
  const auto p = sharp->stats(stored.narrow(0, 0, 4));
  EXPECT_LT(p.at("attention_entropy"), 1e-3);
  EXPECT_NEAR(p.at("top10_mass"), 1.0, 1e-6);
}

TEST_F(Hopfield, RejectsQueriesOfTheWrongWidth) {
  auto memory = make_memory(8, {{"size", std::int64_t{16}}});
  const at::Tensor wrong = at::zeros({2, 9});
  EXPECT_THROW(memory->retrieve(wrong), mhd::Error);
  EXPECT_THROW(memory->energy(wrong), mhd::Error);
  EXPECT_THROW(memory->stats(wrong), mhd::Error);
  EXPECT_THROW(memory->write(wrong), mhd::Error);
  try {
    memory->retrieve(wrong);
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[B, 8]"), std::string::npos) << e.what();
  }
}

TEST_F(Hopfield, BankIsABufferOrALearnableParameter) {
  const std::int64_t dim = 8;
  auto fixed = make_memory(dim, {{"size", std::int64_t{16}}});
  EXPECT_TRUE(fixed->parameters().empty());
  EXPECT_TRUE(bank_of(*fixed).defined());
  const at::Tensor q = at::randn({3, dim}).requires_grad_(true);
  fixed->retrieve(q).sum().backward();
  EXPECT_TRUE(q.grad().defined());  // differentiable in the query

  auto learned = make_memory(dim, {{"size", std::int64_t{16}}, {"learnable", true}});
  ASSERT_EQ(learned->parameters().size(), 1u);
  learned->retrieve(at::randn({3, dim})).pow(2).sum().backward();
  EXPECT_TRUE(learned->parameters()[0].grad().defined());
  EXPECT_GT(learned->parameters()[0].grad().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(learned->write(random_patterns(2, dim)), 2);  // writes still work on the parameter
}

}  // namespace
