#include "mhd/kits/exit_predictor.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <system_error>

#include <ATen/ATen.h>
#include <torch/nn/functional/activation.h>
#include <torch/optim/adam.h>
#include <torch/serialize/archive.h>

#include "mhd/error.h"

namespace mhd {
namespace exit_predictor {
namespace {

constexpr std::int64_t kFormat = 1;

at::Tensor log10_ratio(const at::Tensor& num, const at::Tensor& den) {  // [B] each -> [B]
  return at::log10(num.clamp_min(1e-30) / den.clamp_min(1e-30));
}

}  // namespace

at::Tensor RowHistory::observe(const at::Tensor& z, const at::Tensor& rel, double tol) {
  at::NoGradGuard no_grad;
  const std::int64_t B = z.size(0);
  const at::Tensor zd = z.detach().to(at::kFloat);    // [B, D]
  const at::Tensor r = rel.detach().to(at::kFloat);   // [B]
  const at::Tensor z_norm = zd.norm(2, {1});          // [B]
  at::Tensor x = at::zeros({B, kFeatures}, zd.options());
  x.select(1, 0).copy_(log10_ratio(r, at::full_like(r, tol)));
  if (rel_prev_.defined()) {
    x.select(1, 1).copy_(log10_ratio(r, rel_prev_));
    x.select(1, 3).copy_(log10_ratio((zd - z_prev_).norm(2, {1}), z_norm));
  }
  if (rel_prev2_.defined()) x.select(1, 2).copy_(log10_ratio(rel_prev_, rel_prev2_));
  x.select(1, 4).copy_(at::log10(z_norm.clamp_min(1e-30) / std::sqrt(static_cast<double>(zd.size(1)))));
  // A non-finite residual gives no evidence: its row's features are 0 and it is never trusted.
  x = at::where(at::isfinite(x), x, at::zeros_like(x));
  rel_prev2_ = rel_prev_;
  rel_prev_ = r;
  z_prev_ = zd;
  ++evaluations_;
  return x;
}

Predictor::Predictor(std::int64_t hidden) : hidden_(hidden) {
  if (hidden < 1) throw Error("exit predictor: hidden width must be >= 1, got " + std::to_string(hidden));
  in_ = register_module("hidden_layer", torch::nn::Linear(kFeatures, hidden));
  out_ = register_module("output_layer", torch::nn::Linear(hidden, 1));
  mean_ = register_buffer("mean", at::zeros({kFeatures}));
  scale_ = register_buffer("scale", at::ones({kFeatures}));
}

void Predictor::set_standardisation(const at::Tensor& mean, const at::Tensor& scale) {
  at::NoGradGuard no_grad;
  mean_.copy_(mean);
  scale_.copy_(scale.clamp_min(1e-6));
}

at::Tensor Predictor::logits(const at::Tensor& features) {
  const at::Tensor x = (features.to(at::kFloat) - mean_) / scale_;  // [N, F]
  return out_->forward(at::tanh(in_->forward(x))).squeeze(1);     // [N]
}

void save_predictor(const std::string& path, Predictor& predictor) {
  torch::serialize::OutputArchive archive;
  archive.write("mhd_exit_predictor_format", at::tensor(kFormat));
  archive.write("hidden", at::tensor(predictor.hidden()));
  predictor.save(archive);
  const std::string temporary = path + ".tmp";
  try {
    archive.save_to(temporary);
  } catch (const c10::Error&) {
    throw Error("early_exit: cannot write predictor file '" + path + "' (is its folder writable?)");
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) throw Error("early_exit: cannot write predictor file '" + path + "': " + ec.message());
}

std::shared_ptr<Predictor> load_predictor(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error("early_exit: predictor file '" + path +
                "' does not exist (write one with mhd meta-train CHECKPOINT --exit-predictor --out " + path + ")");
  const std::string not_ours =
      "early_exit: '" + path + "' is not an exit-predictor file (write one with mhd meta-train --exit-predictor)";
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const std::exception&) {  // c10::Error, or TorchScript's parser on a foreign archive
    throw Error(not_ours);
  }
  auto read = [&](const char* key) {
    at::Tensor t;
    if (!archive.try_read(key, t) || t.numel() != 1) throw Error(not_ours + ": no '" + key + "' in its header");
    return t.item<std::int64_t>();
  };
  if (read("mhd_exit_predictor_format") != kFormat)
    throw Error("early_exit: '" + path + "' has predictor format " + std::to_string(read("mhd_exit_predictor_format")) +
                ", this build reads " + std::to_string(kFormat));
  auto predictor = std::make_shared<Predictor>(read("hidden"));
  try {
    predictor->load(archive);
  } catch (const std::exception&) {
    throw Error("early_exit: '" + path + "': its parameters do not fit its header (hidden " +
                std::to_string(predictor->hidden()) + ")");
  }
  predictor->eval();
  return predictor;
}

void Trajectories::append(const Trajectories& more) {
  if (more.rows() == 0) return;
  features = rows() == 0 ? more.features : at::cat({features, more.features});
  labels = labels.defined() && labels.numel() > 0 ? at::cat({labels, more.labels}) : more.labels;
}

Trajectories record_trajectories(Solver& solver, const FixedPointProblem& problem, const at::Tensor& z0,
                                 const SolveLimits& limits) {
  at::NoGradGuard no_grad;
  Trajectories out;
  RowHistory history;
  FixedPointProblem recorded = problem;
  recorded.f = [&](const at::Tensor& z) {
    const at::Tensor fz = problem.f(z);  // [B, D]
    const Residuals r = residuals(z.detach(), fz.detach());
    const at::Tensor x = history.observe(z, r.rel, limits.tol);  // [B, F]
    const at::Tensor above = r.rel.ge(limits.tol) & at::isfinite(r.rel);  // [B]
    if (above.any().item<bool>()) {
      const at::Tensor ffz = problem.f(fz.detach());
      const at::Tensor next_rel = residuals(fz.detach(), ffz.detach()).rel;  // [B]
      Trajectories step;
      step.features = x.index({above});
      step.labels = next_rel.lt(limits.tol).index({above}).to(at::kFloat);
      out.append(step);
    }
    return fz;
  };
  solver.solve(recorded, z0, limits);
  return out;
}

FitReport fit(Predictor& predictor, const Trajectories& train, const Trajectories& held_out,
              const FitOptions& options) {
  if (train.rows() < 2) throw Error("exit predictor: too few recorded rows to fit (" + std::to_string(train.rows()) + ")");
  FitReport report;
  predictor.set_standardisation(train.features.mean(0), train.features.std(0));
  report.positive_share = train.labels.mean().item<double>();
  predictor.train();
  torch::optim::Adam adam(predictor.parameters(), torch::optim::AdamOptions(options.lr));
  for (std::int64_t step = 0; step < options.steps; ++step) {
    adam.zero_grad();
    const at::Tensor loss = at::binary_cross_entropy_with_logits(predictor.logits(train.features), train.labels);
    loss.backward();
    adam.step();
    const double value = loss.item<double>();
    if (step == 0) report.first_loss = value;
    report.last_loss = value;
  }
  predictor.eval();
  at::NoGradGuard no_grad;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (held_out.rows() == 0) {
    report.precision = report.recall = nan;
    return report;
  }
  const at::Tensor said = at::sigmoid(predictor.logits(held_out.features)).ge(options.threshold);
  const at::Tensor truth = held_out.labels.gt(0.5);
  const double tp = (said & truth).sum().item<double>();
  const double n_said = said.sum().item<double>(), n_true = truth.sum().item<double>();
  report.precision = n_said > 0 ? tp / n_said : nan;
  report.recall = n_true > 0 ? tp / n_true : nan;
  return report;
}

}  // namespace exit_predictor
}  // namespace mhd
