// Sampling (core/generate.h) beyond top_k = 1: top-k > 1 and top-p draw from the renormalised
// distribution in the right proportions, temperature reshapes it, and the generator's seed decides
// the draws. An argmax-only sampler, or one that ignores the truncation, fails here.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/generate.h"
#include "mhd/error.h"

namespace {

// Shares of each token among n draws from one row of logits. [V]
std::vector<double> draw_shares(const at::Tensor& logits_row, const mhd::SamplingOptions& o, int n,
                                std::uint64_t seed = 7) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto logits = logits_row.unsqueeze(0).expand({n, logits_row.size(0)}).contiguous();
  const auto tokens = mhd::sample_next(logits, o, gen);  // [n]
  std::vector<double> shares(static_cast<std::size_t>(logits_row.size(0)), 0.0);
  for (std::int64_t i = 0; i < n; ++i) shares[static_cast<std::size_t>(tokens[i].item<std::int64_t>())] += 1.0 / n;
  return shares;
}

// 4 sigma of a binomial share: a correct sampler fails this about once in 15,000 checks.
void expect_share(double got, double p, int n, const char* what, int token) {
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(got, p, 4 * sigma + 1e-12) << what << ": token " << token;
}

constexpr int kDraws = 20000;

TEST(Sampling, TopKThreeDrawsTheThreeMostLikelyInProportion) {
  // Probabilities 0.05, 0.3, 0.1, 0.25, 0.2, 0.1: top 3 are tokens 1, 3, 4 (0.75 of the mass).
  const auto probs = at::tensor({0.05, 0.3, 0.1, 0.25, 0.2, 0.1}, at::kDouble);
  mhd::SamplingOptions o;
  o.top_k = 3;
  const auto shares = draw_shares(at::log(probs), o, kDraws);
  const double expected[] = {0.0, 0.3 / 0.75, 0.0, 0.25 / 0.75, 0.2 / 0.75, 0.0};
  for (int t = 0; t < 6; ++t) {
    if (expected[t] == 0.0) EXPECT_EQ(shares[t], 0.0) << "token " << t << " is outside the top 3";
    else expect_share(shares[t], expected[t], kDraws, "top_k = 3", t);
  }
}

TEST(Sampling, TopPDrawsTheNucleusInProportion) {
  // 1/2, 1/4, 1/8, 1/8 at shuffled positions; p = 0.7 needs the two largest (0.75).
  const auto probs = at::tensor({0.125, 0.5, 0.125, 0.25}, at::kDouble);
  mhd::SamplingOptions o;
  o.top_p = 0.7;
  const auto shares = draw_shares(at::log(probs), o, kDraws);
  EXPECT_EQ(shares[0], 0.0);
  EXPECT_EQ(shares[2], 0.0);
  expect_share(shares[1], 2.0 / 3, kDraws, "top_p = 0.7", 1);
  expect_share(shares[3], 1.0 / 3, kDraws, "top_p = 0.7", 3);

  // p = 0.8 needs a third token: one of the two 1/8 ties, so the nucleus holds 0.875 of the mass.
  o.top_p = 0.8;
  const auto wider = mhd::sampling_distribution(at::log(probs).unsqueeze(0), o).squeeze(0);
  EXPECT_NEAR(wider[1].item<double>(), 0.5 / 0.875, 1e-9);
  EXPECT_NEAR(wider[3].item<double>(), 0.25 / 0.875, 1e-9);
  EXPECT_NEAR((wider[0] + wider[2]).item<double>(), 0.125 / 0.875, 1e-9);
  EXPECT_EQ(((wider > 0).sum()).item<std::int64_t>(), 3);
}

TEST(Sampling, TopKAndTopPTogetherTruncateTwice) {
  // top_k = 3 keeps 0.4, 0.3, 0.2 (renormalised 4/9, 3/9, 2/9); top_p = 0.7 then keeps 4/9 + 3/9.
  const auto probs = at::tensor({0.1, 0.4, 0.3, 0.2}, at::kDouble);
  mhd::SamplingOptions o;
  o.top_k = 3;
  o.top_p = 0.7;
  const auto p = mhd::sampling_distribution(at::log(probs).unsqueeze(0), o).squeeze(0);
  EXPECT_TRUE(p.allclose(at::tensor({0.0, 4.0 / 7, 3.0 / 7, 0.0}, at::kDouble), 1e-9, 1e-12)) << p;
}

TEST(Sampling, TemperatureReshapesTheDistribution) {
  const auto probs = at::tensor({0.64, 0.16, 0.16, 0.04}, at::kDouble);
  mhd::SamplingOptions o;
  o.temperature = 2.0;  // p^(1/2) renormalised: 0.8, 0.4, 0.4, 0.2 over 1.8
  const auto p = mhd::sampling_distribution(at::log(probs).unsqueeze(0), o).squeeze(0);
  EXPECT_TRUE(p.allclose(at::tensor({0.8, 0.4, 0.4, 0.2}, at::kDouble) / 1.8, 1e-9, 1e-12)) << p;
  const auto shares = draw_shares(at::log(probs), o, kDraws);
  expect_share(shares[3], 0.2 / 1.8, kDraws, "temperature 2", 3);
  o.temperature = 0.0;  // greedy
  EXPECT_NEAR(draw_shares(at::log(probs), o, 200)[0], 1.0, 1e-9);
}

TEST(Sampling, TheSeedDecidesTheDraws) {
  const auto logits = at::zeros({64}, at::kDouble);  // uniform over 64 tokens
  mhd::SamplingOptions o;
  o.top_k = 32;
  auto draws = [&](std::uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return mhd::sample_next(logits.unsqueeze(0).expand({50, 64}).contiguous(), o, gen);
  };
  EXPECT_TRUE(draws(3).equal(draws(3)));
  EXPECT_FALSE(draws(3).equal(draws(4))) << "another seed must draw otherwise";
  EXPECT_GT(std::get<0>(at::_unique(draws(3))).numel(), 10) << "50 draws among 32 tokens are not one token";
}

TEST(Sampling, BadOptionsThrow) {
  const auto logits = at::zeros({1, 4});
  mhd::SamplingOptions o;
  o.top_p = 0.0;
  EXPECT_THROW(mhd::sampling_distribution(logits, o), mhd::Error);
  o.top_p = 1.0;
  o.top_k = -1;
  EXPECT_THROW(mhd::sampling_distribution(logits, o), mhd::Error);
}

}  // namespace
