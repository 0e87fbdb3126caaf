// Memory plugin `sparse_hash`: Hopfield retrieval over the patterns of a few hash buckets only
// (docs/design.md §3, "Memory at scale").
//
//   W_r: [D, NB] learnable random projections, one per hash round r = 1..R (columns used at unit norm)
//   bucket_r(x) = argmax(x W_r)                     each stored pattern is filed under one bucket per round
//   search_r(q) = the top_k buckets of q W_r         (multi-probe)
//   retrieve(q) = softmax_{C(q)}(beta q X_C^T) X_C over the candidates C(q) filed in searched buckets
//   energy(q)   = hopfield's energy with the lse over C(q)
//
// With top_k = buckets every pattern is a candidate and retrieval is the `hopfield` plugin's
// (tested to 1e-5). Gradients reach W through the candidates' scores: each score carries
// g - sg(g), g = mean_r log softmax(sg(q) W_r)[bucket_r(x)] (zero in value; bucketed_bank.h), a
// custom autograd node (HashGateTerm) whose backward alone scores the buckets.
// The context source applies the same hashing to the sequence's keys: a query reads the visible keys
// filed under a bucket it searches (causal, exact 0 weight for the others).
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/kits/bucketed_bank.h"
#include "mhd/kits/pattern_bank.h"
#include "mhd/plugin.h"

namespace {

// g - sg(g) for g[n, c] = mean_r log softmax(q_n W_r)[b_r(n, c)] (W unit-column, q detached): exactly
// 0, so the forward computes nothing; its backward is g's gradient to W,
//   dS_r[n, :] = (1 / R) (sum_c G[n, c] e_{b_r(n, c)} - (sum_c G[n, c]) softmax(q_n W_r))
//   dW_r       = q^T dS_r
// over row chunks, so neither the forward nor the backward holds the scores [R, N, NB] of every query
// (50 MB at 768 queries x 4 rounds x 4096 buckets: fresh pages and a zeroed sgemm output per call).
struct HashGateTerm : public torch::autograd::Function<HashGateTerm> {
  // w: [R, D, NB], q: [N, D] (no grad), filed: [N, C, R] int64 -> [N, C] zeros.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& w,
                                                const at::Tensor& q, const at::Tensor& filed) {
    ctx->save_for_backward({w, q, filed});
    return {at::zeros({q.size(0), filed.size(1)}, q.options())};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &w = saved[0], &q = saved[1], &filed = saved[2];
    const at::Tensor G = grads[0];  // [N, C]
    const std::int64_t N = q.size(0), R = w.size(0), NB = w.size(2);
    at::Tensor dw = at::zeros_like(w);
    // Rows per chunk: the chunk's scores [R, n, NB] near 2^22 floats.
    const std::int64_t step = std::max<std::int64_t>(1, (std::int64_t{1} << 22) / std::max<std::int64_t>(1, R * NB));
    for (std::int64_t start = 0; start < N; start += step) {
      const std::int64_t n = std::min(step, N - start);
      const at::Tensor qc = q.narrow(0, start, n), Gc = G.narrow(0, start, n);              // [n, D], [n, C]
      const at::Tensor p = at::softmax(at::matmul(qc.unsqueeze(0), w), -1);                // [R, n, NB]
      at::Tensor dS = p * (-Gc.sum(1)).view({1, n, 1});                                     // [R, n, NB]
      dS = dS.scatter_add(2, filed.narrow(0, start, n).permute({2, 0, 1}), Gc.unsqueeze(0).expand({R, n, Gc.size(1)}));
      dw = dw + at::matmul(qc.t().unsqueeze(0), dS) / static_cast<double>(R);              // [R, D, NB]
    }
    return {dw, at::Tensor(), at::Tensor()};
  }
};

struct SparseHashOptions {
  std::int64_t slots = 4096;
  std::int64_t buckets = 256;
  std::int64_t top_k = 4;
  std::int64_t rounds = 1;
  double beta = 2.0;
  std::string init = "random";
  bool learnable = false;
  bool learn_hash = true;
  mhd::BucketIndexOptions index;  // search, refile_every
};

class SparseHashMemory final : public mhd::BucketedBankMemory {
 public:
  SparseHashMemory(const SparseHashOptions& o, std::int64_t dim)
      : BucketedBankMemory("sparse_hash", mhd::initial_pattern_bank("sparse_hash", o.init, o.slots, dim), o.learnable,
                           o.beta, o.rounds, o.buckets, o.init == "random", o.index),
        top_k_(o.top_k) {
    // N(0, 1/D) entries: random hyperplanes whose scores x W have unit scale for ||x|| ~ 1.
    const at::Tensor w = at::randn({o.rounds, dim, o.buckets}) / std::sqrt(static_cast<double>(dim));
    hash_ = o.learn_hash ? register_parameter("hash", w) : register_buffer("hash", w);
  }

  std::map<std::string, double> stats(const torch::Tensor& query) override { return bucket_stats(query); }

 protected:
  // x W_r for every round, W's columns scaled to unit norm: [N, D] -> [R, N, NB]. Without the
  // scaling a column of larger norm wins the argmax more often, and queries probe the fullest
  // buckets: loads and candidates per query grow (measured ~2x at 1M patterns).
  at::Tensor hash_scores(const at::Tensor& x) const { return at::matmul(x.unsqueeze(0), unit_hash()); }

  // W with unit columns. Off the graph it is cached until W changes (its version, storage or dtype):
  // recomputing it is R D NB operations, most of a single query's cost at 1M patterns.
  at::Tensor unit_hash() const {
    auto unit = [&] { return hash_ / hash_.norm(2, 1, true).clamp_min(1e-12); };
    if (at::GradMode::is_enabled() && hash_.requires_grad()) return unit();
    if (!unit_.defined() || unit_version_ != hash_._version() || unit_source_ != hash_.data_ptr() ||
        unit_.scalar_type() != hash_.scalar_type()) {
      at::NoGradGuard no_grad;
      unit_ = unit();
      unit_version_ = hash_._version();
      unit_source_ = hash_.data_ptr();
    }
    return unit_;
  }

  at::Tensor assign(const at::Tensor& x) const override {
    at::NoGradGuard no_grad;
    return hash_scores(x).argmax(-1).t().contiguous();  // [N, R]
  }

  at::Tensor search(const at::Tensor& q) const override {
    at::NoGradGuard no_grad;
    return std::get<1>(hash_scores(q).topk(top_k_, -1)).permute({1, 0, 2}).contiguous();  // [N, R, P]
  }

  at::Tensor gate_term(const at::Tensor& q, const at::Tensor& filed) const override {
    const at::Tensor w = unit_hash();
    if (!(at::GradMode::is_enabled() && w.requires_grad())) return at::zeros({q.size(0), filed.size(1)}, q.options());
    return HashGateTerm::apply(w, q, filed.clamp_min(0))[0];
  }

 private:
  std::int64_t top_k_;
  at::Tensor hash_;  // W: [R, D, NB]
  mutable at::Tensor unit_;  // W with unit columns, off the graph
  mutable std::int64_t unit_version_ = -1;
  mutable const void* unit_source_ = nullptr;
};

// The options of `p`, checked against each other and d_model (Manifest::check runs this too).
SparseHashOptions options_from(const mhd::Params& p, const mhd::ModelDims& dims) {
  SparseHashOptions o;
  o.slots = p.integer("size");
  o.buckets = p.integer("buckets");
  o.top_k = p.integer("top_k");
  o.rounds = p.integer("rounds");
  o.beta = p.real("beta");
  o.init = p.text("init");
  o.learnable = p.flag("learnable");
  o.learn_hash = p.flag("learn_hash");
  o.index = mhd::bucket_index_options("sparse_hash", p);
  if (o.top_k > o.buckets)
    throw mhd::Error("sparse_hash: top_k = " + std::to_string(o.top_k) + " exceeds buckets = " +
                     std::to_string(o.buckets) + " (a query cannot search more buckets than there are)");
  // Bank (float) + bucket per slot and round, the sorted index (int64) + W, before allocating any.
  const std::int64_t bytes = o.slots * dims.d_model * 4 + 2 * o.rounds * o.slots * 8 +
                             o.rounds * dims.d_model * o.buckets * 4 + o.rounds * (o.buckets + 1) * 8;
  mhd::check_memory_fits("sparse_hash", "size", o.slots, bytes, "bank, hash W and bucket index");
  return o;
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "sparse_hash";
  m.version = "1.0.0";
  m.description = "Sparse hash memory: Hopfield retrieval over the top-K buckets of a learnable argmax(W q) hash";
  m.params = {
      mhd::int_param("size", 4096, "number of pattern slots M", 1, std::int64_t{1} << 31),
      mhd::int_param("buckets", 256, "hash buckets per round (columns of W)", 2, std::int64_t{1} << 20),
      mhd::int_param("top_k", 4, "buckets searched per round (<= buckets; = buckets is dense Hopfield)", 1),
      mhd::int_param("rounds", 1, "independent hash rounds; a query's candidates are the union over rounds", 1, 64),
      mhd::float_param("beta", 2.0, "inverse temperature (> 0)", 1e-6),
      mhd::choice_param("init", "random", {"random", "zeros"},
                        "initial bank: \"random\" N(0, 1/D) entries, or \"zeros\" (empty slots are never candidates)"),
      mhd::bool_param("learnable", false, "the bank is a trained parameter (true) or a buffer filled by write()"),
      mhd::bool_param("learn_hash", true, "W is a trained parameter (gradients through the candidates' scores)"),
  };
  for (auto& spec : mhd::bucket_index_params()) m.params.push_back(std::move(spec));  // search, refile_every
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims& dims) -> std::shared_ptr<mhd::Memory> {
    return std::make_shared<SparseHashMemory>(options_from(p, dims), dims.d_model);
  };
  m.check = [](const mhd::Params& p, const mhd::ModelDims& dims) { options_from(p, dims); };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
