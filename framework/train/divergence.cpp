#include "train/divergence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "config/trial_config.h"
#include "mhd/error.h"

namespace mhd {
namespace {
std::string format_g(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}
}  // namespace

const char* to_string(DivergenceSignal signal) {
  switch (signal) {
    case DivergenceSignal::Loss: return "loss";
    case DivergenceSignal::ForwardResidual: return "forward abs_residual";
  }
  return "?";
}

DivergenceOptions DivergenceOptions::from(const TrialConfig& config) {
  const auto& t = config.train;
  DivergenceOptions o;
  o.loss_factor = t.real("diverge_loss_factor");
  o.residual_factor = t.real("diverge_residual_factor");
  o.window = t.integer("diverge_window");
  o.patience = t.integer("diverge_patience");
  return o;
}

void check_divergence_config(const TrialConfig& config) {
  const DivergenceOptions o = DivergenceOptions::from(config);
  // A factor in (0, 1] would call the running level itself a blow-up (docs/studies.md, "Divergence").
  auto check_factor = [](const char* key, double factor) {
    if (factor > 0 && factor <= 1)
      throw Error(std::string("train.") + key + " = " + format_g(factor) +
                  ": expected 0 (off) or a factor > 1 over the running median");
  };
  check_factor("diverge_loss_factor", o.loss_factor);
  check_factor("diverge_residual_factor", o.residual_factor);
  if (o.patience > o.window)
    throw Error("train.diverge_patience = " + std::to_string(o.patience) + " is longer than train.diverge_window = " +
                std::to_string(o.window) + ": expected patience <= window");
}

double RunningLevel::level() const {
  if (history_.empty()) return 0;
  std::vector<double> sorted(history_.begin(), history_.end());
  const std::size_t mid = sorted.size() / 2;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid), sorted.end());
  if (sorted.size() % 2 == 1) return sorted[mid];
  const double upper = sorted[mid];
  return 0.5 * (upper + *std::max_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid)));
}

bool RunningLevel::observe(double value) {
  if (factor_ <= 0 || !std::isfinite(value)) return false;  // non-finite values are the trainer's check
  if (judging() && value > factor_ * std::abs(level())) {
    if (above_ == 0) first_above_ = value;
    return ++above_ >= patience_;
  }
  above_ = 0;
  history_.push_back(value);
  if (static_cast<std::int64_t>(history_.size()) > window_) history_.pop_front();
  return false;
}

DivergenceMonitor::DivergenceMonitor(const DivergenceOptions& options)
    : options_(options),
      loss_(options.loss_factor, options.window, options.patience),
      residual_(options.residual_factor, options.window, options.patience) {}

std::optional<std::string> DivergenceMonitor::check(DivergenceSignal signal, RunningLevel& level, double factor,
                                                    double value, std::int64_t step) {
  const double before = level.level();
  const bool blew_up = level.observe(value);
  std::int64_t& start = run_start_[static_cast<int>(signal)];
  start = level.above_in_a_row() == 0 ? -1 : (level.above_in_a_row() == 1 ? step : start);
  if (!blew_up) return std::nullopt;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s %.3g above %g x its running median %.3g for %lld steps (from step %lld)",
                to_string(signal), value, factor, before, static_cast<long long>(level.above_in_a_row()),
                static_cast<long long>(start));
  return std::string(buf);
}

std::optional<std::string> DivergenceMonitor::observe(std::int64_t step, double loss,
                                                      std::optional<double> abs_residual) {
  if (!options_.enabled()) return std::nullopt;
  auto why = check(DivergenceSignal::Loss, loss_, options_.loss_factor, loss, step);
  if (abs_residual) {
    auto residual = check(DivergenceSignal::ForwardResidual, residual_, options_.residual_factor, *abs_residual, step);
    if (!why) why = residual;
  }
  return why;
}

}  // namespace mhd
