// Memory plugin `product_key`: product-key addressing (Lample et al. 2019, "Large Memory Layers with
// Product Keys") of a Hopfield pattern bank (docs/design.md §3, "Memory at scale").
//
//   K = n^2 cells, cell (i, j) keyed by the Cartesian key [c1_i ; c2_j]; sub-keys C1, C2: [H, n, D/2]
//   per head h = 1..H (learnable). The bank holds K pattern slots; each stored pattern x is filed,
//   per head, under its best cell (argmax_i c1_i . x1, argmax_j c2_j . x2): the exact nearest
//   Cartesian key, found with 2n half scores instead of n^2.
//   search(q):  the top_k sub-keys per half (scores of the normalised halves q1, q2), the top_k^2
//               Cartesian candidates re-scored as s1_i + s2_j, the best `cells` of them kept: for
//               cells <= top_k these are exactly the best `cells` of all K cells (Lample's argument).
//   retrieve(q) = softmax_{C(q)}(beta q X_C^T) X_C over the patterns C(q) filed in searched cells of
//               any head; values are read as the weighted sum of those patterns.
//   energy(q)   = hopfield's energy with the lse over C(q).
//
// With top_k = n and cells = K every pattern is a candidate: dense Hopfield retrieval (tested to
// 1e-5). Query normalisation is per query (unit halves), never over the batch, so padded or later
// positions cannot change a query's cells. Gradients reach the sub-keys through the candidates'
// scores, g = mean_h [log softmax(s1)_i + log softmax(s2)_j] of each candidate's cell (bucketed_bank.h).
// The context source files the sequence's keys the same way: a query reads the visible keys filed
// in a cell it searches (causal; exact 0 weight for the others).
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/kits/bucketed_bank.h"
#include "mhd/kits/pattern_bank.h"
#include "mhd/plugin.h"

namespace {

struct ProductKeyOptions {
  std::int64_t slots = 1024;  // K = n^2
  std::int64_t top_k = 8;
  std::int64_t cells = 8;
  std::int64_t heads = 1;
  double beta = 2.0;
  bool unit_queries = true;
  std::string init = "random";
  bool learnable = false;
  bool learn_keys = true;
  mhd::BucketIndexOptions index;  // search, refile_every
};

std::int64_t exact_sqrt(std::int64_t k) {
  auto n = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(k))));
  while (n * n > k) --n;
  while ((n + 1) * (n + 1) <= k) ++n;
  return n;
}

class ProductKeyMemory final : public mhd::BucketedBankMemory {
 public:
  ProductKeyMemory(const ProductKeyOptions& o, std::int64_t dim)
      : BucketedBankMemory("product_key", mhd::initial_pattern_bank("product_key", o.init, o.slots, dim), o.learnable,
                           o.beta, o.heads, o.slots, o.init == "random", o.index),
        n_(exact_sqrt(o.slots)),
        top_k_(o.top_k),
        cells_(o.cells),
        unit_queries_(o.unit_queries) {
    // Unit sub-keys in random directions: each half's scores are cosines when queries are unit too.
    at::Tensor c = at::randn({o.heads, 2, n_, dim / 2});
    c = c / c.norm(2, -1, true);
    subkeys_ = o.learn_keys ? register_parameter("subkeys", c) : register_buffer("subkeys", c);
  }

  std::map<std::string, double> stats(const torch::Tensor& query) override {
    std::map<std::string, double> s = bucket_stats(query);
    at::NoGradGuard no_grad;
    // Usage of the K slots over this batch (Lample's "memory usage"): mean retrieval weight per slot.
    const at::Tensor q = query.reshape({-1, query.size(-1)});
    const Candidates c = candidates(q);
    const auto [scores, x] = candidate_scores(q, c);
    const at::Tensor w = at::softmax(scores.masked_fill(c.valid.any(1, true).logical_not(), 0.0), -1) *
                         c.valid.to(scores.scalar_type());                                   // [N, C]
    const at::Tensor usage = at::zeros({size()}, w.options()).index_add_(0, c.index.reshape({-1}), w.reshape({-1})) /
                             static_cast<double>(q.size(0));                                  // [K], sums to <= 1
    const at::Tensor u = usage / usage.sum().clamp_min(1e-30);
    s["usage_share"] = usage.gt(0).to(at::kDouble).mean().item<double>();
    // KL(u || uniform) = sum u log(u K): 0 when every slot is read alike, log K when one slot is.
    s["usage_kl_uniform"] = (u * (u.clamp_min(1e-30) * static_cast<double>(size())).log()).sum().item<double>();
    return s;
  }

 protected:
  // The per-half scores of every head: x: [N, D] -> ([H, N, n], [H, N, n]).
  std::pair<at::Tensor, at::Tensor> half_scores(const at::Tensor& x) const {
    const std::int64_t half = x.size(1) / 2;
    at::Tensor x1 = x.narrow(1, 0, half), x2 = x.narrow(1, half, half);
    if (unit_queries_) {
      x1 = x1 / x1.norm(2, -1, true).clamp_min(1e-12);
      x2 = x2 / x2.norm(2, -1, true).clamp_min(1e-12);
    }
    const at::Tensor c1 = subkeys_.select(1, 0), c2 = subkeys_.select(1, 1);  // [H, n, D/2]
    return {at::matmul(x1.unsqueeze(0), c1.transpose(1, 2)), at::matmul(x2.unsqueeze(0), c2.transpose(1, 2))};
  }

  // Two halves' sub-key scores per head, not one per cell: rows are filed K / (2 n) times as many at once.
  std::int64_t router_scores_per_row() const override { return rounds() * 2 * n_; }

  at::Tensor assign(const at::Tensor& x) const override {
    at::NoGradGuard no_grad;
    const auto [s1, s2] = half_scores(x);
    return (s1.argmax(-1) * n_ + s2.argmax(-1)).t().contiguous();  // [N, H]
  }

  at::Tensor search(const at::Tensor& q) const override {
    at::NoGradGuard no_grad;
    const auto [s1, s2] = half_scores(q);
    const auto [v1, i1] = s1.topk(top_k_, -1);  // [H, N, k]
    const auto [v2, i2] = s2.topk(top_k_, -1);
    const std::int64_t H = v1.size(0), N = v1.size(1), kk = top_k_ * top_k_;
    const at::Tensor grid = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).reshape({H, N, kk});       // [H, N, k^2]
    const at::Tensor cell = (i1.unsqueeze(-1) * n_ + i2.unsqueeze(-2)).reshape({H, N, kk});
    const at::Tensor best = std::get<1>(grid.topk(cells_, -1));                               // [H, N, cells]
    return cell.gather(-1, best).permute({1, 0, 2}).contiguous();                             // [N, H, cells]
  }

  at::Tensor gate_term(const at::Tensor& q, const at::Tensor& filed) const override {
    const at::Tensor g = log_gate(q, filed);
    return g - g.detach();
  }

 private:
  // g of the candidates: [N, C].
  at::Tensor log_gate(const at::Tensor& q, const at::Tensor& filed) const {
    const auto [s1, s2] = half_scores(q);
    const at::Tensor l1 = at::log_softmax(s1, -1), l2 = at::log_softmax(s2, -1);  // [H, N, n]
    std::vector<at::Tensor> per_head;
    for (std::int64_t h = 0; h < rounds(); ++h) {
      const at::Tensor cell = filed.select(2, h).clamp_min(0);  // [N, C]
      per_head.push_back(l1[h].gather(1, at::div(cell, n_, "floor")) + l2[h].gather(1, at::remainder(cell, n_)));
    }
    return at::stack(per_head).mean(0);
  }

  std::int64_t n_, top_k_, cells_;
  bool unit_queries_;
  at::Tensor subkeys_;  // [H, 2, n, D/2]: C1 = [:, 0], C2 = [:, 1]
};

// The options of `p`, checked against each other and d_model (Manifest::check runs this too).
ProductKeyOptions options_from(const mhd::Params& p, const mhd::ModelDims& dims) {
  ProductKeyOptions o;
  o.slots = p.integer("size");
  o.top_k = p.integer("top_k");
  o.cells = p.integer("cells");
  o.heads = p.integer("heads");
  o.beta = p.real("beta");
  o.unit_queries = p.text("query_norm") == "unit";
  o.init = p.text("init");
  o.learnable = p.flag("learnable");
  o.learn_keys = p.flag("learn_keys");
  o.index = mhd::bucket_index_options("product_key", p);
  const std::int64_t n = exact_sqrt(o.slots);
  if (n * n != o.slots)
    throw mhd::Error("product_key: size = " + std::to_string(o.slots) + " is not a perfect square (nearest: " +
                     std::to_string(n * n) + " or " + std::to_string((n + 1) * (n + 1)) + ")");
  if (o.top_k > n)
    throw mhd::Error("product_key: top_k = " + std::to_string(o.top_k) + " exceeds the " + std::to_string(n) +
                     " sub-keys per half (sqrt(size))");
  if (o.cells > o.top_k * o.top_k)
    throw mhd::Error("product_key: cells = " + std::to_string(o.cells) + " exceeds top_k^2 = " +
                     std::to_string(o.top_k * o.top_k) + " Cartesian candidates");
  if (dims.d_model % 2 != 0)
    throw mhd::Error("product_key: d_model = " + std::to_string(dims.d_model) + " must be even (the query is split in halves)");
  const std::int64_t bytes = o.slots * dims.d_model * 4 + 2 * o.heads * o.slots * 8 + o.heads * n * dims.d_model * 4 +
                             o.heads * (o.slots + 1) * 8;
  mhd::check_memory_fits("product_key", "size", o.slots, bytes, "bank, sub-keys and cell index");
  return o;
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "product_key";
  m.version = "1.0.0";
  m.description = "Product-key memory: top-k sub-keys per query half, k^2 Cartesian cells re-scored, Hopfield over their patterns";
  m.params = {
      mhd::int_param("size", 1024, "pattern slots and cells K; must be a perfect square n^2 (n sub-keys per half)", 4,
                     std::int64_t{1} << 34),
      mhd::int_param("top_k", 8, "sub-keys kept per half (<= sqrt(size)); top_k^2 Cartesian candidates", 1),
      mhd::int_param("cells", 8, "cells searched: the best of the top_k^2 candidates (<= top_k^2; exact when <= top_k)", 1),
      mhd::int_param("heads", 1, "heads with their own sub-keys; a query's candidates are the union over heads", 1, 64),
      mhd::float_param("beta", 2.0, "inverse temperature of the retrieval over the candidates (> 0)", 1e-6),
      mhd::choice_param("query_norm", "unit", {"unit", "none"},
                        "each query half scaled to unit norm before scoring sub-keys (per query, not per batch)"),
      mhd::choice_param("init", "random", {"random", "zeros"},
                        "initial bank: \"random\" N(0, 1/D) entries, or \"zeros\" (empty slots are never candidates)"),
      mhd::bool_param("learnable", false, "the bank is a trained parameter (true) or a buffer filled by write()"),
      mhd::bool_param("learn_keys", true, "the sub-keys are trained (gradients through the candidates' scores)"),
  };
  for (auto& spec : mhd::bucket_index_params()) m.params.push_back(std::move(spec));  // search, refile_every
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims& dims) -> std::shared_ptr<mhd::Memory> {
    return std::make_shared<ProductKeyMemory>(options_from(p, dims), dims.d_model);
  };
  m.check = [](const mhd::Params& p, const mhd::ModelDims& dims) { options_from(p, dims); };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
