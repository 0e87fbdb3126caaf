// The storage capacity of a discrete dense associative memory: K random +-1 patterns xi^mu in N dimensions, energy E(sigma) = -sum_mu F(xi^mu . sigma),
// a pattern corrupted in a share rho of its bits, the sign update run to a fixed point, and the share
// of trials that end exactly on the pattern. The `capacity` probe (probe_capacity.cpp) draws the
// retrieval-probability curve with these pieces; tests check them directly.
//
// Update of unit i, with h_mu = xi^mu . sigma - xi^mu_i sigma_i the overlap without unit i:
//   rule "seed"    sigma_i <- Sign[ sum_mu xi^mu_i F'(h_mu) ]                       (seed eq. 3)
//   rule "energy"  sigma_i <- Sign[ sum_mu F(h_mu + xi^mu_i) - F(h_mu - xi^mu_i) ]   (Krotov-Hopfield 2016)
// "energy" picks the sign of lower energy, so each asynchronous step never raises E (for every F);
// "seed" linearises that difference and coincides with it for F = S^2 only. A zero field keeps
// sigma_i. Schedules: "async" updates the units one at a time in a fresh random order every sweep
// (the original design's "discrete asynchronous updates"); "sync" applies eq. 2 to all units at once (it can
// end in a 2-cycle, which then counts as not retrieved).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "mhd/kits/dense_am.h"

namespace mhd {

enum class SignRule { Seed, Energy };
enum class SignSchedule { Async, Sync };

// "seed" | "energy";  "async" | "sync". Throws mhd::Error otherwise.
SignRule parse_sign_rule(const std::string& name);
SignSchedule parse_sign_schedule(const std::string& name);

// K random +-1 patterns per trial, entries +1 / -1 with probability 1/2 (seed eq. 4): [T, K, N], float64.
at::Tensor random_sign_patterns(std::int64_t trials, std::int64_t count, std::int64_t dim, at::Generator& gen);

// Each row of `states` ([T, N], +-1) with exactly round(share * N) of its bits (a random subset per
// row) flipped.
at::Tensor flip_bits(const at::Tensor& states, double share, at::Generator& gen);

// Sign dynamics of T independent memories at once. The similarity is the dot product (the patterns
// and states are +-1 vectors); only spec's separation (F) and its parameters are used.
class SignDynamics {
 public:
  // patterns: [T, K, N], states: [T, N]; both +-1, float64.
  SignDynamics(const dam::Spec& spec, SignRule rule, at::Tensor patterns, at::Tensor states);

  // Updates unit i of every trial. Returns which trials' unit changed: [T] bool.
  at::Tensor update_unit(std::int64_t i);
  // One sweep: all N units asynchronously in a random order, or one synchronous step. -> [T] bool,
  // the trials whose state changed.
  at::Tensor sweep(SignSchedule schedule, at::Generator& gen);

  at::Tensor energy() const;  // E = -sum_mu F(xi^mu . sigma): [T]
  const at::Tensor& states() const { return states_; }  // [T, N]

 private:
  // The field whose sign is the new state, for each trial and each unit in `units` (h, xi: [T, K, U]).
  at::Tensor field(const at::Tensor& h, const at::Tensor& xi) const;

  dam::Spec spec_;
  SignRule rule_;
  at::Tensor patterns_;  // Xi: [T, K, N]
  at::Tensor states_;    // sigma: [T, N]
  at::Tensor overlaps_;  // Xi sigma: [T, K]
};

struct RetrievalSetup {
  std::int64_t dim = 64;       // N
  std::int64_t patterns = 8;   // K
  dam::Spec spec;              // separation F: poly of degree n by default
  double corruption = 0.1;     // rho: share of the stored pattern's bits flipped at the start
  std::int64_t trials = 100;   // independent pattern sets
  std::int64_t max_sweeps = 30;
  SignRule rule = SignRule::Seed;
  SignSchedule schedule = SignSchedule::Async;
  std::uint64_t seed = 0;
};

struct RetrievalResult {
  std::int64_t trials = 0;
  std::int64_t retrieved = 0;  // trials ending exactly on the stored pattern
  double probability = 0;      // retrieved / trials
  double mean_overlap = 0;     // final sigma . xi / N, averaged
  double converged = 0;        // share of trials that reached a fixed point within max_sweeps
  double mean_sweeps = 0;      // sweeps until the last change, averaged over trials
};

// Runs setup.trials independent trials (in chunks that bound memory) and counts exact retrievals.
RetrievalResult measure_retrieval(const RetrievalSetup& setup);

// The original design's capacity estimate. The noise on a unit's field is a sum of K - 1 terms of variance
// (2n-3)!! N^(n-1), the signal N^(n-1); a unit is wrong when the noise exceeds the signal, which for
// a Gaussian noise happens with probability Phi(-sqrt(N^(n-1) / ((2n-3)!! K))). Asking that signal be
// at least alpha standard deviations gives  K_max = N^(n-1) / (alpha^2 (2n-3)!!).  Here alpha is set
// by the retrieval criterion: all N units right with probability >= threshold, units independent,
// i.e. per-unit error p = 1 - threshold^(1/N) and alpha = Phi^{-1}(1 - p).
struct CapacityTheory {
  double alpha = 0;            // signal / noise standard deviation required
  double unit_error = 0;       // p
  double double_factorial = 0; // (2n-3)!!
  double k_max = 0;            // N^(n-1) / (alpha^2 (2n-3)!!): stability of the stored pattern
  // With a start at overlap (1 - 2 rho) N the signal is ((1 - 2 rho) N)^(n-1): K_max (1 - 2 rho)^(2(n-1)).
  double k_max_corrupted = 0;
};
CapacityTheory capacity_theory(std::int64_t dim, std::int64_t degree, double threshold, double corruption);

// Phi^{-1}(p) for 0 < p < 1 (bisection on erfc; |error| < 1e-12).
double normal_quantile(double p);

// The measured capacity of a curve of (K, probability) sorted by K: the largest K whose probability,
// and that of every smaller K, is >= threshold; 0 when the first K already falls below.
std::int64_t measured_capacity(const std::vector<std::pair<std::int64_t, double>>& curve, double threshold);

}  // namespace mhd
