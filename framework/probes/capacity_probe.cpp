// Probe `capacity`: storage capacity of a discrete dense associative memory with F(S) = S^n,
// measured against Krotov and Hopfield's estimate K_max = N^(n-1) / (alpha^2 (2n-3)!!).
//
// For each K of a list: `trials` independent sets of K random +-1 patterns in N dimensions, the
// first pattern with a share `corruption` of its bits flipped, the sign update (capacity.h) run to a
// fixed point; the retrieval probability is the share of trials that end exactly on the pattern.
// It needs no trained model (a study runs it with train.steps = 0): the memory is the probe's own.
//
// Metrics (at the trial's last step):
//   capacity_measured         the largest K of the list with probability >= threshold (and every
//                             smaller K too)
//   capacity_theory           N^(n-1) / (alpha^2 (2n-3)!!), alpha = Phi^{-1}(threshold^(1/N))
//   capacity_theory_corrupted the same for a start at overlap (1 - 2 rho) N: x (1 - 2 rho)^(2(n-1))
//   capacity_ratio            capacity_measured / capacity_theory
//   capacity_alpha            alpha
// Points: "retrieval_curve" (i = index, x = K, value = probability) and "overlap_curve" (value =
// mean final overlap sigma . xi / N).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "probes/capacity.h"
#include "mhd/error.h"
#include "mhd/params.h"
#include "probes/probe.h"
#include "train/records.h"
#include "config/trial_config.h"

namespace mhd {

namespace {

// "4, 8,16" -> {4, 8, 16}: positive, strictly increasing.
std::vector<std::int64_t> parse_k_values(const std::string& text) {
  std::vector<std::int64_t> ks;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    std::size_t used = 0;
    std::int64_t k = 0;
    try {
      k = std::stoll(item.substr(first), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || item.find_first_not_of(" \t", first + used) != std::string::npos || k < 1 ||
        (!ks.empty() && k <= ks.back())) {
      throw Error("probes.capacity: k_values must be increasing positive integers separated by commas, got \"" +
                  text + "\"");
    }
    ks.push_back(k);
  }
  return ks;
}

// `points` K values spaced geometrically over [K_theory / 16, 2 K_theory] (distinct integers >= 1).
std::vector<std::int64_t> automatic_k_values(double k_theory, std::int64_t points) {
  const double lo = std::max(1.0, k_theory / 16), hi = std::max(lo + 1, 2 * k_theory);
  std::vector<std::int64_t> ks;
  for (std::int64_t j = 0; j < points; ++j) {
    const double t = points == 1 ? 1.0 : static_cast<double>(j) / static_cast<double>(points - 1);
    const auto k = static_cast<std::int64_t>(std::llround(lo * std::pow(hi / lo, t)));
    if (ks.empty() || k > ks.back()) ks.push_back(k);
  }
  return ks;
}

class CapacityProbe final : public Probe {
 public:
  explicit CapacityProbe(const Params& p) : params_(p) {}

  void run(ProbeContext& context) override {
    const std::int64_t dim = params_.integer("dim"), degree = params_.integer("degree");
    const double threshold = params_.real("threshold"), corruption = params_.real("corruption");
    const CapacityTheory theory = capacity_theory(dim, degree, threshold, corruption);
    std::vector<std::int64_t> ks = parse_k_values(params_.text("k_values"));
    if (ks.empty()) ks = automatic_k_values(theory.k_max, params_.integer("k_points"));

    RetrievalSetup setup;
    setup.dim = dim;
    setup.spec.degree = degree;
    setup.corruption = corruption;
    setup.trials = params_.integer("trials");
    setup.max_sweeps = params_.integer("max_sweeps");
    setup.rule = parse_sign_rule(params_.text("rule"));
    setup.schedule = parse_sign_schedule(params_.text("schedule"));
    // Independent draws per K, per probe seed and per trial seed.
    const auto base = static_cast<std::uint64_t>(params_.integer("seed")) * 1000003u +
                      static_cast<std::uint64_t>(context.config.seed) * 7919u;

    std::vector<std::pair<std::int64_t, double>> curve;
    for (std::size_t j = 0; j < ks.size(); ++j) {
      setup.patterns = ks[j];
      setup.seed = base + 104729u * (j + 1);
      const RetrievalResult r = measure_retrieval(setup);
      curve.emplace_back(ks[j], r.probability);
      point(context, "retrieval_curve", j, ks[j], r.probability);
      point(context, "overlap_curve", j, ks[j], r.mean_overlap);
    }
    const auto measured = static_cast<double>(measured_capacity(curve, threshold));
    const auto metric = [&](const std::string& name, double value) { context.sink.metric(context.step, name, value); };
    metric("capacity_measured", measured);
    metric("capacity_theory", theory.k_max);
    metric("capacity_theory_corrupted", theory.k_max_corrupted);
    metric("capacity_ratio", measured / theory.k_max);
    metric("capacity_alpha", theory.alpha);
  }

 private:
  static void point(ProbeContext& context, const char* name, std::size_t index, std::int64_t k, double value) {
    if (!context.sink.point) return;
    ProbePoint p;
    p.probe = "capacity";
    p.name = name;
    p.i = static_cast<std::int64_t>(index);
    p.x = static_cast<double>(k);
    p.y = std::nan("");
    p.value = value;
    context.sink.point(p);
  }

  Params params_;
};

ProbeDefinition capacity_definition() {
  ProbeDefinition d;
  d.name = "capacity";
  d.description =
      "Dense associative memory capacity: retrieval probability vs K for F = S^n, measured vs "
      "N^(n-1) / (alpha^2 (2n-3)!!)";
  d.schema = {
      int_param("dim", 64, "N: dimension of the +-1 patterns", 2, 4096),
      int_param("degree", 3, "n of the separation F(S) = S^n (2 = classical Hopfield)", 2, 12),
      string_param("k_values", "",
                   "numbers of stored patterns K, increasing, comma-separated (\"4,8,16\"); empty: k_points "
                   "values from K_theory/16 to 2 K_theory"),
      int_param("k_points", 12, "how many K values the automatic list has (k_values empty)", 1, 200),
      float_param("corruption", 0.1, "rho: share of the stored pattern's bits flipped at the start", 0.0, 0.49),
      int_param("trials", 100, "independent pattern sets per K", 1, 100000),
      float_param("threshold", 0.9,
                  "retrieval probability that defines the capacity (measured and in the theory's alpha)", 0.01,
                  0.999),
      choice_param("rule", "seed", {"seed", "energy"},
                   "sign update: \"seed\" Sign[sum xi f(h)] (seed eq. 3) or \"energy\" the sign of lower energy "
                   "(Krotov-Hopfield)"),
      choice_param("schedule", "async", {"async", "sync"},
                   "units one at a time in random order (async, the seed's) or all at once (sync, eq. 2)"),
      int_param("max_sweeps", 30, "sweeps before a trial that still changes counts as not retrieved", 1, 10000),
      int_param("seed", 0, "seed of the pattern draws (combined with the trial's seed)", 0),
  };
  d.make = [](const Params& p) -> std::unique_ptr<Probe> {
    parse_k_values(p.text("k_values"));  // a bad list fails when the study is checked, not after training
    return std::make_unique<CapacityProbe>(p);
  };
  return d;
}

}  // namespace

}  // namespace mhd

MHD_REGISTER_PROBE(capacity, mhd::capacity_definition);
