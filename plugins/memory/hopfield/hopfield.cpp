// Memory plugin `hopfield`: the modern (continuous) Hopfield memory of Ramsauer et al.
//
//   X: [M, D] stored patterns (M slots), beta > 0 the inverse temperature.
//   retrieve(q) = softmax(beta q X^T) X                                  q: [B, D] -> [B, D]
//   energy(q)   = -1/beta lse(beta X q) + 1/2 ||q||^2 + 1/beta log M + 1/2 max_i ||x_i||^2   -> [B]
//
// retrieve() is one step of the CCCP iteration on that energy, so E(retrieve(q)) <= E(q) for every q
// (tested). The constant terms make E >= 0 and comparable across memory sizes.
//
// The bank is a registered buffer "patterns" filled by write() (queue replacement, oldest slot first),
// or a registered parameter when `learnable` is set; the count of patterns ever written is the buffer
// "write_count", so a checkpoint restores the queue position too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/plugin.h"

namespace {

struct HopfieldOptions {
  std::int64_t slots = 1024;
  double beta = 2.0;
  std::string init = "random";
  bool learnable = false;
};

std::string shape_of(const at::Tensor& t) {
  std::string s = "[";
  for (std::int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// "random": N(0, 1/D) entries, so ||x_i|| ~ 1 whatever D; "zeros": an empty memory (uniform attention).
at::Tensor initial_bank(const HopfieldOptions& o, std::int64_t dim) {
  if (o.init == "zeros") return at::zeros({o.slots, dim});
  if (o.init == "random") return at::randn({o.slots, dim}) / std::sqrt(static_cast<double>(dim));
  throw mhd::Error("hopfield: init must be \"random\" or \"zeros\", got \"" + o.init + "\"");
}

class HopfieldMemory final : public mhd::Memory {
 public:
  HopfieldMemory(const HopfieldOptions& o, std::int64_t dim) : opt_(o), dim_(dim) {
    if (dim < 1) throw mhd::Error("hopfield: d_model must be >= 1, got " + std::to_string(dim));
    const at::Tensor bank = initial_bank(o, dim);
    patterns_ = o.learnable ? register_parameter("patterns", bank) : register_buffer("patterns", bank);
    write_count_ = register_buffer("write_count", at::zeros({}, at::kLong));
  }

  torch::Tensor retrieve(const torch::Tensor& query) override {
    check_query(query, "retrieve");
    return attention(query).matmul(patterns_);  // [B, M] x [M, D] -> [B, D]
  }

  torch::Tensor energy(const torch::Tensor& query) override {
    check_query(query, "energy");
    const double m = static_cast<double>(patterns_.size(0));
    const at::Tensor lse = at::logsumexp(opt_.beta * query.matmul(patterns_.t()), -1);  // [B]
    const at::Tensor max_norm_sq = patterns_.pow(2).sum(-1).max();                     // scalar
    return -lse / opt_.beta + 0.5 * query.pow(2).sum(-1) + std::log(m) / opt_.beta + 0.5 * max_norm_sq;
  }

  std::int64_t write(const torch::Tensor& patterns) override {
    at::NoGradGuard no_grad;
    if (patterns.dim() != 2 || patterns.size(1) != dim_) {
      throw mhd::Error("hopfield: write expects patterns of shape [N, " + std::to_string(dim_) + "], got " +
                       shape_of(patterns));
    }
    const std::int64_t slots = patterns_.size(0);
    // Of more patterns than slots only the newest `slots` would survive the queue; skip the rest.
    const std::int64_t n = std::min(patterns.size(0), slots);
    if (n == 0) return 0;
    const at::Tensor kept = patterns.narrow(0, patterns.size(0) - n, n).to(patterns_.options());  // [n, D]
    const std::int64_t total = written();
    // Slot of the k-th pattern ever written is k mod M: the oldest slot is always the next one.
    const auto index_options = at::TensorOptions().dtype(at::kLong).device(patterns_.device());
    const at::Tensor slot = at::remainder(at::arange(total, total + n, index_options), slots);  // [n]
    patterns_.index_copy_(0, slot, kept);
    write_count_.fill_(total + n);
    return n;
  }

  at::Tensor max_similarity(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "max_similarity");
    // cos(q, x_i) = q . x_i / (||q|| ||x_i||); an all-zero slot has similarity 0.
    const at::Tensor q = query / query.norm(2, -1, true).clamp_min(1e-12);          // [B, D]
    const at::Tensor x = patterns_ / patterns_.norm(2, -1, true).clamp_min(1e-12);  // [M, D]
    return std::get<0>(q.matmul(x.t()).max(-1));                                     // [B]
  }

  std::int64_t size() const override { return patterns_.size(0); }

  // Module::to(dtype) casts every buffer, the write counter included (a float16 count is exact only up
  // to 2048): cast, then restore the counter as an exact int64 on the bank's device.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    const std::int64_t count = written();
    torch::nn::Module::to(dtype, non_blocking);
    restore_count(count);
  }
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    const std::int64_t count = written();
    torch::nn::Module::to(device, dtype, non_blocking);
    restore_count(count);
  }

  std::map<std::string, double> stats(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "stats");
    const at::Tensor log_p = at::log_softmax(opt_.beta * query.matmul(patterns_.t()), -1);  // [B, M]
    const at::Tensor p = log_p.exp();
    const at::Tensor entropy = -(p * log_p).sum(-1);                                       // [B], nats
    const std::int64_t k = std::min<std::int64_t>(10, p.size(-1));
    const at::Tensor top_mass = std::get<0>(p.topk(k, -1)).sum(-1);                        // [B]
    const std::int64_t stored = std::min(written(), patterns_.size(0));
    return {{"attention_entropy", entropy.mean().item<double>()},
            {"top10_mass", top_mass.mean().item<double>()},
            {"stored", static_cast<double>(stored)}};
  }

 private:
  void check_query(const at::Tensor& query, const char* op) const {
    if (query.dim() < 1 || query.size(-1) != dim_) {
      throw mhd::Error(std::string("hopfield: ") + op + " expects queries of shape [B, " + std::to_string(dim_) +
                       "], got " + shape_of(query));
    }
  }

  std::int64_t written() const { return write_count_.item<std::int64_t>(); }

  void restore_count(std::int64_t count) {
    write_count_.set_data(at::full({}, count, at::TensorOptions().dtype(at::kLong).device(patterns_.device())));
  }

  // softmax(beta q X^T): [B, M]
  at::Tensor attention(const at::Tensor& query) const {
    return at::softmax(opt_.beta * query.matmul(patterns_.t()), -1);
  }

  HopfieldOptions opt_;
  std::int64_t dim_;
  at::Tensor patterns_;     // X: [M, D]
  at::Tensor write_count_;  // scalar int64: patterns written so far (not capped)
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "hopfield";
  m.version = "1.0.0";
  m.description = "Modern Hopfield memory: softmax(beta q X^T) X retrieval, lse energy, queue replacement";
  m.params = {
      mhd::int_param("size", 1024, "number of pattern slots M", 1),
      mhd::float_param("beta", 2.0, "inverse temperature (> 0): larger values retrieve a single pattern", 1e-6),
      mhd::choice_param("init", "random", {"random", "zeros"},
                        "initial bank: \"random\" N(0, 1/D) entries or \"zeros\""),
      mhd::bool_param("learnable", false,
                      "the bank is a trained parameter (true) or a buffer filled only by write() (false)"),
  };
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims& dims) -> std::shared_ptr<mhd::Memory> {
    HopfieldOptions o;
    o.slots = p.integer("size");
    o.beta = p.real("beta");
    o.init = p.text("init");
    o.learnable = p.flag("learnable");
    return std::make_shared<HopfieldMemory>(o, dims.d_model);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
