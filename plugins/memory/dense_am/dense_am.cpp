// Memory plugin `dense_am`: the dense associative memory of Krotov and Hopfield's dense associative memory with continuous states.
//
//   X: [M, D] stored patterns xi_mu (M slots), S = similarity, F = separation, Q = shaping (dense_am.h).
//   energy(x)   = -Q( sum_mu F(S(xi_mu, x)) )                                      x: [B, D] -> [B]
//   retrieve(x) = w X,  w_mu = F'(S_mu) / sum_nu |F'(S_nu)|                        x: [B, D] -> [B, D]
//
// retrieve() is the original design's update T(x) = Sign[X^T f(X x)] (eq. 2, f = F') with the sign replaced by
// a normalisation, so that it is differentiable in x and bounded by the largest pattern. With
// separation = exp and similarity = dot it is the modern Hopfield update softmax(beta x X^T) X (the
// `hopfield` plugin without its energy's norm terms); with poly of degree n it is the continuous
// Krotov-Hopfield dense memory, weights ~ S^(n-1): larger n separates patterns more sharply.
//
// The context source uses the sequence's visible keys as the patterns and reads out its values:
//   retrieve_context(Q, K, V) = w V, w over the keys at positions <= each query's   -> [B, Lq, D]
//   context_energy(Q, K)      = -Q( sum_visible F(S(k_j, q)) )                      -> [B, Lq]
//
// The bank and its queue replacement are PatternBankMemory's (pattern_bank.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "mhd/kits/dense_am.h"
#include "mhd/error.h"
#include "mhd/kits/context_memory.h"
#include "mhd/kits/pattern_bank.h"
#include "mhd/plugin.h"

namespace {

struct DenseAmOptions {
  std::int64_t slots = 1024;
  mhd::dam::Spec spec;
  std::string init = "random";
  bool learnable = false;
};

class DenseAmMemory final : public mhd::PatternBankMemory {
 public:
  DenseAmMemory(const DenseAmOptions& o, std::int64_t dim)
      : PatternBankMemory("dense_am", mhd::initial_pattern_bank("dense_am", o.init, o.slots, dim), o.learnable), spec_(o.spec) {
    mhd::dam::validate(spec_);
  }

  torch::Tensor retrieve(const torch::Tensor& query) override {
    check_query(query, "retrieve");
    return mhd::dam::retrieval_weights(spec_, query, bank()).matmul(bank());  // [B, M] x [M, D] -> [B, D]
  }

  torch::Tensor energy(const torch::Tensor& query) override {
    check_query(query, "energy");
    return mhd::dam::energy(spec_, query, bank());  // [B]
  }

  torch::Tensor retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                 const torch::Tensor& values) override {
    mhd::check_context("dense_am", "retrieve_context", queries, keys, values);
    const at::Tensor visible = mhd::visible_keys(queries.size(1), keys.size(1), queries.device());  // [Lq, Lk]
    return mhd::dam::retrieval_weights(spec_, queries, keys, visible).matmul(values);            // [B, Lq, D]
  }

  torch::Tensor context_energy(const torch::Tensor& queries, const torch::Tensor& keys) override {
    mhd::check_context("dense_am", "context_energy", queries, keys, {});
    const at::Tensor visible = mhd::visible_keys(queries.size(1), keys.size(1), queries.device());
    return mhd::dam::energy(spec_, queries, keys, visible);  // [B, Lq]
  }

  std::map<std::string, double> stats(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "stats");
    // |w| as a distribution over the slots: how many patterns a retrieval mixes.
    const at::Tensor w = mhd::dam::retrieval_weights(spec_, query, bank()).abs();  // [B, M]
    const at::Tensor p = w / w.sum(-1, true).clamp_min(1e-30);
    const at::Tensor entropy = -(p * p.clamp_min(1e-30).log()).sum(-1);           // [B], nats
    const std::int64_t k = std::min<std::int64_t>(10, p.size(-1));
    const at::Tensor top_mass = std::get<0>(p.topk(k, -1)).sum(-1);               // [B]
    return {{"attention_entropy", entropy.mean().item<double>()},
            {"top10_mass", top_mass.mean().item<double>()},
            {"stored", static_cast<double>(stored())}};
  }

 private:
  mhd::dam::Spec spec_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "dense_am";
  m.version = "1.0.0";
  m.description =
      "Dense associative memory: E = -Q(sum F(S(xi, x))), retrieval w X with w ~ F'(S); queue replacement";
  m.params = {
      mhd::int_param("size", 1024, "number of pattern slots M", 1),
      mhd::choice_param("similarity", "dot", {"dot", "cosine", "neg_dist"},
                        "S(xi, x): dot product, cosine, or -||x - xi||^2 (neg_dist needs separation exp)"),
      mhd::choice_param("separation", "poly", {"poly", "rect_poly", "exp"},
                        "F(S): S^n, max(0, S)^n, or exp(beta S) (exp + dot = modern Hopfield)"),
      mhd::int_param("degree", 3, "n of poly / rect_poly: larger n separates patterns more sharply", 1, 30),
      mhd::float_param("beta", 1.0, "inverse temperature of separation exp (> 0)", 1e-6),
      mhd::choice_param("shaping", "linear", {"linear", "log", "power"},
                        "Q(z) of the evidence z = sum F: z, log z or z^power (log / power need z >= 0)"),
      mhd::float_param("power", 2.0, "p of shaping power (> 1)", 1.000001),
      mhd::choice_param("init", "random", {"random", "zeros"},
                        "initial bank: \"random\" N(0, 1/D) entries or \"zeros\""),
      mhd::bool_param("learnable", false,
                      "the bank is a trained parameter (true) or a buffer filled only by write() (false)"),
  };
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims& dims) -> std::shared_ptr<mhd::Memory> {
    DenseAmOptions o;
    o.slots = p.integer("size");
    o.spec.similarity = mhd::dam::parse_similarity(p.text("similarity"));
    o.spec.separation = mhd::dam::parse_separation(p.text("separation"));
    o.spec.degree = p.integer("degree");
    o.spec.beta = p.real("beta");
    o.spec.shaping = mhd::dam::parse_shaping(p.text("shaping"));
    o.spec.power = p.real("power");
    o.init = p.text("init");
    o.learnable = p.flag("learnable");
    return std::make_shared<DenseAmMemory>(o, dims.d_model);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
