// The sparse memories' bucket index (docs/design.md §3, "Memory at scale"): writes are filed as they
// arrive, a change of the router refiles (all at once, or a rolling 1/k per change with
// refile_every = k), consolidate() refiles everything, the filing travels with the memory's state and
// survives dtype casts, and sparse_hash's router gradient is that of the buckets' log-probability.
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "memory_test_support.h"

namespace {

class MemoryIndex : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

// A sparse_hash memory of 512 unit patterns, top_k 1 and a sharp beta: a stored pattern used as
// its own query is found exactly when it is filed under the bucket the current hash gives it.
struct FiledPatterns {
  static constexpr std::int64_t dim = 32, slots = 512;
  std::shared_ptr<mhd::Memory> memory;
  at::Tensor stored;  // [slots, dim]

  explicit FiledPatterns(std::int64_t refile_every) {
    memory = make_memory("sparse_hash", dim, {{"size", slots}, {"buckets", std::int64_t{32}}, {"top_k", std::int64_t{1}},
                                              {"beta", 1000.0}, {"init", std::string("zeros")},
                                              {"refile_every", refile_every}});
    stored = random_patterns(slots, dim);
    stored = stored / stored.norm(2, 1, true);
  }
  double found() const {
    at::NoGradGuard no_grad;
    const at::Tensor out = memory->retrieve(stored);
    return (out - stored).norm(2, 1).lt(1e-3).to(at::kDouble).mean().item<double>();
  }
  at::Tensor hash() const { return named_tensor(*memory, "hash"); }
};

// Writes file patterns as they arrive; a change of the router refiles them (all at once with
// refile_every = 1); consolidate() refiles them whatever changed.
TEST_F(MemoryIndex, WritesAreFiledAndRouterChangesRefile) {
  FiledPatterns f(1);
  f.memory->write(f.stored.narrow(0, 0, 300));
  EXPECT_EQ(f.memory->stats(f.stored.narrow(0, 0, 4)).at("stored"), 300.0);
  f.memory->write(f.stored.narrow(0, 300, 212));
  EXPECT_EQ(f.found(), 1.0);
  at::NoGradGuard no_grad;
  f.hash().copy_(at::randn({1, FiledPatterns::dim, 32}));  // the router moved (as after an optimizer step)
  EXPECT_EQ(f.found(), 1.0);
  EXPECT_EQ(f.memory->stats(f.stored.narrow(0, 0, 4)).at("filing_stale_share"), 0.0);

  // consolidate() refiles everything whatever refile_every says: with one slot refiled per change,
  // a router change leaves most patterns in their old buckets until it runs.
  FiledPatterns slow(1000);
  slow.memory->write(slow.stored);
  slow.hash().copy_(at::randn({1, FiledPatterns::dim, 32}));
  EXPECT_LT(slow.found(), 0.5) << "negative control: one slot of 512 refiled";
  slow.memory->consolidate();
  EXPECT_EQ(slow.found(), 1.0);
}

// refile_every = k refiles a rolling ceil(M / k) slots per change of the bank or router, so every
// pattern is filed under the current router after k changes; a version bump that leaves every value
// as it was refiles nothing.
TEST_F(MemoryIndex, RollingRefileCatchesUpAfterRefileEveryChanges) {
  FiledPatterns f(4);
  f.memory->write(f.stored);
  const at::Tensor probe = f.stored.narrow(0, 0, 4);
  f.memory->stats(probe);  // resets the refiled count
  EXPECT_EQ(f.found(), 1.0);
  at::NoGradGuard no_grad;
  f.hash().copy_(at::randn({1, FiledPatterns::dim, 32}));
  std::vector<double> found = {f.found()};
  auto s = f.memory->stats(probe);
  EXPECT_EQ(s.at("refiled_slots"), 128.0);
  EXPECT_GT(s.at("filing_stale_share"), 0.5);
  EXPECT_LT(found.back(), 0.5);
  f.hash().add_(0.0);  // the counter moves, the values do not
  f.found();
  EXPECT_EQ(f.memory->stats(probe).at("refiled_slots"), 0.0);
  // Doubling W leaves its unit columns (what the hash reads) bit for bit: each doubling is a change
  // that refiles the next quarter under the same router.
  for (int change = 0; change < 3; ++change) {
    f.hash().mul_(2.0);
    found.push_back(f.found());
    EXPECT_EQ(f.memory->stats(probe).at("refiled_slots"), 128.0) << "change " << change;
    EXPECT_GT(found.back(), found[found.size() - 2]) << "change " << change;
  }
  EXPECT_EQ(found.back(), 1.0);
  EXPECT_EQ(f.memory->stats(probe).at("filing_stale_share"), 0.0);
}

// The filing is part of the memory's state: a copy of every tensor into a memory built with another
// seed (a checkpoint load) retrieves as the original does, including a refile still pending at the
// copy, and a dtype cast keeps the index exact.
TEST_F(MemoryIndex, FilingTravelsWithTheStateAndSurvivesCasts) {
  FiledPatterns a(4);
  a.memory->write(a.stored);
  at::NoGradGuard no_grad;
  a.hash().copy_(at::randn({1, FiledPatterns::dim, 32}));
  a.found();
  a.hash().mul_(2.0);  // pending: the next retrieval refiles the second quarter
  at::manual_seed(7);
  FiledPatterns b(4);
  auto copy_state = [](mhd::Memory& from, mhd::Memory& to) {
    for (const auto& item : to.named_parameters()) item.value().copy_(named_tensor(from, item.key()));
    for (const auto& item : to.named_buffers()) item.value().copy_(named_tensor(from, item.key()));
  };
  copy_state(*a.memory, *b.memory);
  const at::Tensor q = a.stored;
  EXPECT_TRUE(a.memory->retrieve(q).equal(b.memory->retrieve(q)));
  EXPECT_EQ(a.memory->stats(q.narrow(0, 0, 4)).at("filing_stale_share"),
            b.memory->stats(q.narrow(0, 0, 4)).at("filing_stale_share"));

  const at::Tensor filing = named_tensor(*a.memory, "filing").clone();
  a.memory->to(at::kDouble);
  EXPECT_EQ(named_tensor(*a.memory, "filing").scalar_type(), at::kLong);
  EXPECT_TRUE(named_tensor(*a.memory, "filing").equal(filing));
  EXPECT_EQ(a.memory->stats(q.narrow(0, 0, 4).to(at::kDouble)).at("stored"), 512.0);
}

// sparse_hash's router gradient (a custom autograd node that scores the buckets only in its backward)
// is the gradient of g - sg(g), g = mean_r log softmax(q W_r)[bucket_r(x)], written out with plain
// autograd here: every bucket searched, float64, to 1e-10.
TEST_F(MemoryIndex, HashGradientIsTheBucketLogProbabilitysGradient) {
  const std::int64_t dim = 8, slots = 64, buckets = 8, rounds = 2;
  const double beta = 3.0;
  auto memory = make_memory("sparse_hash", dim, {{"size", slots}, {"buckets", buckets}, {"top_k", buckets},
                                                 {"rounds", rounds}, {"beta", beta}, {"init", std::string("zeros")}});
  memory->to(at::kDouble);
  const at::Tensor stored = random_patterns(slots, dim).to(at::kDouble);
  memory->write(stored);
  const at::Tensor q = at::randn({5, dim}, at::kDouble);
  const at::Tensor hash = named_tensor(*memory, "hash");
  memory->retrieve(q).pow(2).sum().backward();
  ASSERT_TRUE(hash.grad().defined());

  const at::Tensor w = hash.detach().clone().requires_grad_(true);
  const at::Tensor unit = w / w.norm(2, 1, true);                                   // [R, D, NB]
  const at::Tensor bucket = at::matmul(stored.unsqueeze(0), unit).argmax(-1);        // [R, M]
  const at::Tensor log_p = at::log_softmax(at::matmul(q.unsqueeze(0), unit), -1);    // [R, N, NB]
  const at::Tensor g = log_p.gather(2, bucket.unsqueeze(1).expand({rounds, 5, slots})).mean(0);  // [N, M]
  const at::Tensor s = beta * q.matmul(stored.t()) + (g - g.detach());
  at::softmax(s, -1).matmul(stored).pow(2).sum().backward();
  EXPECT_LT(max_abs_diff(hash.grad(), w.grad()), 1e-10);
  EXPECT_GT(w.grad().abs().max().item<double>(), 1e-3) << "the reference gradient must not be 0";
}

}  // namespace
