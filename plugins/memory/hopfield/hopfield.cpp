// Memory plugin `hopfield`: the modern (continuous) Hopfield memory of Ramsauer et al.
//
//   X: [M, D] stored patterns (M slots), beta > 0 the inverse temperature.
//   retrieve(q) = softmax(beta q X^T) X                                  q: [B, D] -> [B, D]
//   energy(q)   = -1/beta lse(beta X q) + 1/2 ||q||^2 + 1/beta log M + 1/2 max_i ||x_i||^2   -> [B]
//
// The context source (a sequence's own keys K and values V, causal) is the same retrieval with K in
// the energy and V read out, i.e. causal softmax attention:
//   retrieve_context(Q, K, V) = softmax_causal(beta Q K^T) V                     -> [B, Lq, D]
//   context_energy(Q, K)      = the energy above with the visible keys as the bank -> [B, Lq]
//
// retrieve() is one step of the CCCP iteration on that energy, so E(retrieve(q)) <= E(q) for every q
// (tested). The constant terms make E >= 0 and comparable across memory sizes.
//
// The bank and its queue replacement are PatternBankMemory's (pattern_bank.h): a buffer "patterns"
// filled by write() (oldest slot first), or a parameter when `learnable` is set, and the buffer
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
#include "mhd/kits/context_memory.h"
#include "mhd/kits/pattern_bank.h"
#include "mhd/plugin.h"

namespace {

struct HopfieldOptions {
  std::int64_t slots = 1024;
  double beta = 2.0;
  std::string init = "random";
  bool learnable = false;
};

class HopfieldMemory final : public mhd::PatternBankMemory {
 public:
  HopfieldMemory(const HopfieldOptions& o, std::int64_t dim)
      : PatternBankMemory("hopfield", mhd::initial_pattern_bank("hopfield", o.init, o.slots, dim), o.learnable), opt_(o) {}

  torch::Tensor retrieve(const torch::Tensor& query) override {
    check_query(query, "retrieve");
    return attention(query).matmul(bank());  // [B, M] x [M, D] -> [B, D]
  }

  torch::Tensor energy(const torch::Tensor& query) override {
    check_query(query, "energy");
    const double m = static_cast<double>(bank().size(0));
    const at::Tensor lse = at::logsumexp(opt_.beta * query.matmul(bank().t()), -1);  // [B]
    const at::Tensor max_norm_sq = bank().pow(2).sum(-1).max();                      // scalar
    return -lse / opt_.beta + 0.5 * query.pow(2).sum(-1) + std::log(m) / opt_.beta + 0.5 * max_norm_sq;
  }

  torch::Tensor retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                 const torch::Tensor& values) override {
    mhd::check_context("hopfield", "retrieve_context", queries, keys, values);
    return mhd::causal_softmax(opt_.beta * queries.matmul(keys.transpose(1, 2))).matmul(values);  // [B, Lq, D]
  }

  torch::Tensor context_energy(const torch::Tensor& queries, const torch::Tensor& keys) override {
    mhd::check_context("hopfield", "context_energy", queries, keys, {});
    const std::int64_t Lq = queries.size(1), Lk = keys.size(1);
    const at::Tensor lse = mhd::causal_logsumexp(opt_.beta * queries.matmul(keys.transpose(1, 2)));  // [B, Lq]
    // max ||k_j||^2 over the keys each query sees: a running maximum along the sequence.
    const at::Tensor max_norm_sq = std::get<0>(at::cummax(keys.pow(2).sum(-1), 1)).narrow(1, Lk - Lq, Lq);
    const at::Tensor log_count = mhd::visible_counts(Lq, Lk, queries.options()).log();  // [Lq]
    return -lse / opt_.beta + 0.5 * queries.pow(2).sum(-1) + log_count / opt_.beta + 0.5 * max_norm_sq;
  }

  std::map<std::string, double> stats(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "stats");
    const at::Tensor log_p = at::log_softmax(opt_.beta * query.matmul(bank().t()), -1);  // [B, M]
    const at::Tensor p = log_p.exp();
    const at::Tensor entropy = -(p * log_p).sum(-1);                                       // [B], nats
    const std::int64_t k = std::min<std::int64_t>(10, p.size(-1));
    const at::Tensor top_mass = std::get<0>(p.topk(k, -1)).sum(-1);                        // [B]
    return {{"attention_entropy", entropy.mean().item<double>()},
            {"top10_mass", top_mass.mean().item<double>()},
            {"stored", static_cast<double>(stored())}};
  }

 private:
  // softmax(beta q X^T): [B, M]
  at::Tensor attention(const at::Tensor& query) const {
    return at::softmax(opt_.beta * query.matmul(bank().t()), -1);
  }

  HopfieldOptions opt_;
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
