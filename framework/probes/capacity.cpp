// Discrete dense associative memory: sign dynamics, retrieval trials and the capacity estimate
// (capacity.h).
#include "probes/capacity.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"

namespace mhd {

namespace {

// Trials are run in chunks of at most this many pattern entries (T K N doubles: 32 MiB), which
// also bounds the synchronous step's [T, K, N] intermediates.
constexpr std::int64_t kChunkEntries = std::int64_t{1} << 22;

// +1 where field > 0, -1 where field < 0, the current state where the field is 0.
at::Tensor sign_or_keep(const at::Tensor& field, const at::Tensor& current) {
  return at::where(field.gt(0), at::ones_like(current), at::where(field.lt(0), -at::ones_like(current), current));
}

}  // namespace

SignRule parse_sign_rule(const std::string& name) {
  if (name == "seed") return SignRule::Seed;
  if (name == "energy") return SignRule::Energy;
  throw Error("capacity: rule must be \"seed\" or \"energy\", got \"" + name + "\"");
}

SignSchedule parse_sign_schedule(const std::string& name) {
  if (name == "async") return SignSchedule::Async;
  if (name == "sync") return SignSchedule::Sync;
  throw Error("capacity: schedule must be \"async\" or \"sync\", got \"" + name + "\"");
}

at::Tensor random_sign_patterns(std::int64_t trials, std::int64_t count, std::int64_t dim, at::Generator& gen) {
  const at::Tensor bits = at::randint(0, 2, {trials, count, dim}, gen, at::TensorOptions().dtype(at::kDouble));
  return bits * 2 - 1;  // [T, K, N]
}

at::Tensor flip_bits(const at::Tensor& states, double share, at::Generator& gen) {
  const std::int64_t dim = states.size(1);
  const auto count = std::min<std::int64_t>(dim, std::llround(share * static_cast<double>(dim)));
  if (count == 0) return states.clone();
  // The first `count` entries of a random permutation per row.   [T, count]
  const at::Tensor chosen = at::rand(states.sizes(), gen, states.options()).argsort(/*dim=*/std::int64_t{1}).narrow(1, 0, count);
  return states.scatter(1, chosen, -states.gather(1, chosen));
}

SignDynamics::SignDynamics(const dam::Spec& spec, SignRule rule, at::Tensor patterns, at::Tensor states)
    : spec_(spec), rule_(rule), patterns_(std::move(patterns)), states_(std::move(states)) {
  if (patterns_.dim() != 3 || states_.dim() != 2 || states_.size(0) != patterns_.size(0) ||
      states_.size(1) != patterns_.size(2)) {
    throw Error("SignDynamics: expects patterns [T, K, N] and states [T, N]");
  }
  spec_.similarity = dam::Similarity::Dot;
  states_ = states_.clone();
  overlaps_ = patterns_.bmm(states_.unsqueeze(2)).squeeze(2);  // [T, K]
}

at::Tensor SignDynamics::field(const at::Tensor& h, const at::Tensor& xi) const {
  // exp(beta S): dividing every term of a trial by exp(beta max h) keeps the sign and avoids overflow.
  const at::Tensor shifted =
      spec_.separation == dam::Separation::Exp ? h - h.amax({1, 2}, true) : h;  // [T, K, U]
  if (rule_ == SignRule::Seed) return (xi * dam::separation_derivative(spec_, shifted)).sum(1);
  return (dam::separation(spec_, shifted + xi) - dam::separation(spec_, shifted - xi)).sum(1);  // [T, U]
}

at::Tensor SignDynamics::update_unit(std::int64_t i) {
  const at::Tensor xi = patterns_.select(2, i);   // xi^mu_i: [T, K]
  const at::Tensor s = states_.select(1, i);      // sigma_i: [T]
  const at::Tensor h = overlaps_ - xi * s.unsqueeze(1);  // overlaps without unit i: [T, K]
  const at::Tensor next = sign_or_keep(field(h.unsqueeze(2), xi.unsqueeze(2)).squeeze(1), s);  // [T]
  const at::Tensor changed = next.ne(s);
  overlaps_ += xi * (next - s).unsqueeze(1);
  states_.select(1, i).copy_(next);
  return changed;
}

at::Tensor SignDynamics::sweep(SignSchedule schedule, at::Generator& gen) {
  const std::int64_t trials = states_.size(0), dim = states_.size(1);
  if (schedule == SignSchedule::Sync) {
    const at::Tensor h = overlaps_.unsqueeze(2) - patterns_ * states_.unsqueeze(1);  // [T, K, N]
    const at::Tensor next = sign_or_keep(field(h, patterns_), states_);             // [T, N]
    const at::Tensor changed = next.ne(states_).any(1);
    states_ = next;
    overlaps_ = patterns_.bmm(states_.unsqueeze(2)).squeeze(2);
    return changed;
  }
  at::Tensor changed = at::zeros({trials}, at::TensorOptions().dtype(at::kBool));
  const at::Tensor order = at::randperm(dim, gen, at::TensorOptions().dtype(at::kLong));
  const auto* units = order.data_ptr<std::int64_t>();
  for (std::int64_t k = 0; k < dim; ++k) changed.logical_or_(update_unit(units[k]));
  return changed;
}

at::Tensor SignDynamics::energy() const { return -dam::separation(spec_, overlaps_).sum(1); }

RetrievalResult measure_retrieval(const RetrievalSetup& setup) {
  if (setup.dim < 1 || setup.patterns < 1 || setup.trials < 1 || setup.max_sweeps < 1) {
    throw Error("capacity: dim, patterns, trials and max_sweeps must be >= 1");
  }
  dam::validate(setup.spec);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(setup.seed);
  const std::int64_t chunk = std::clamp<std::int64_t>(kChunkEntries / (setup.patterns * setup.dim), 1, setup.trials);

  RetrievalResult result;
  double overlap_sum = 0, sweeps_sum = 0, converged = 0;
  for (std::int64_t start = 0; start < setup.trials; start += chunk) {
    const std::int64_t t = std::min(chunk, setup.trials - start);
    const at::Tensor patterns = random_sign_patterns(t, setup.patterns, setup.dim, gen);  // [t, K, N]
    const at::Tensor target = patterns.select(1, 0);                                    // xi^1: [t, N]
    SignDynamics dynamics(setup.spec, setup.rule, patterns, flip_bits(target, setup.corruption, gen));
    at::Tensor last_change = at::zeros({t}, at::TensorOptions().dtype(at::kDouble));  // [t]
    at::Tensor changed;
    for (std::int64_t sweep = 1; sweep <= setup.max_sweeps; ++sweep) {
      changed = dynamics.sweep(setup.schedule, gen);
      if (!changed.any().item<bool>()) break;
      last_change.masked_fill_(changed, static_cast<double>(sweep));
    }
    const at::Tensor final_state = dynamics.states();
    result.retrieved += final_state.eq(target).all(1).sum().item<std::int64_t>();
    overlap_sum += (final_state * target).mean(1).sum().item<double>();
    sweeps_sum += last_change.sum().item<double>();
    converged += static_cast<double>(t - changed.sum().item<std::int64_t>());
  }
  const auto trials = static_cast<double>(setup.trials);
  result.trials = setup.trials;
  result.probability = static_cast<double>(result.retrieved) / trials;
  result.mean_overlap = overlap_sum / trials;
  result.mean_sweeps = sweeps_sum / trials;
  result.converged = converged / trials;
  return result;
}

double normal_quantile(double p) {
  if (!(p > 0 && p < 1)) throw Error("normal_quantile: p must be in (0, 1), got " + std::to_string(p));
  // Phi(x) = erfc(-x / sqrt 2) / 2 is increasing: bisect on [-40, 40].
  double lo = -40, hi = 40;
  for (int k = 0; k < 200 && hi - lo > 1e-13; ++k) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

CapacityTheory capacity_theory(std::int64_t dim, std::int64_t degree, double threshold, double corruption) {
  if (dim < 1 || degree < 2) throw Error("capacity_theory: needs dim >= 1 and degree >= 2");
  if (!(threshold > 0 && threshold < 1)) throw Error("capacity_theory: threshold must be in (0, 1)");
  CapacityTheory t;
  // 1 - threshold^(1/N), computed without cancellation.
  t.unit_error = -std::expm1(std::log(threshold) / static_cast<double>(dim));
  t.alpha = normal_quantile(1 - t.unit_error);
  t.double_factorial = 1;
  for (std::int64_t m = 2 * degree - 3; m > 1; m -= 2) t.double_factorial *= static_cast<double>(m);
  const double n1 = static_cast<double>(degree - 1);
  t.k_max = std::pow(static_cast<double>(dim), n1) / (t.alpha * t.alpha * t.double_factorial);
  t.k_max_corrupted = t.k_max * std::pow(1 - 2 * corruption, 2 * n1);
  return t;
}

std::int64_t measured_capacity(const std::vector<std::pair<std::int64_t, double>>& curve, double threshold) {
  std::int64_t capacity = 0;
  for (const auto& [k, probability] : curve) {
    if (probability < threshold) break;
    capacity = k;
  }
  return capacity;
}

}  // namespace mhd
