// Memory plugin `hierarchical`: three Hopfield levels mixed by a learned router (docs/design.md §3,
// "Memory at scale").
//
//   levels l = 1 episodic (X1: [S1, D], beta1 2.0), 2 semantic (X2: [S2, D], beta 1.0),
//            3 schematic (X3: [S3, D], beta 0.5)
//   r_l(q)      = softmax(beta_l q X_l^T) X_l                                   q: [B, D] -> [B, D]
//   pi(q)       = softmax(W2 tanh(W1 q + b1) + b2)                              router: [B, 3]
//   retrieve(q) = sum_l pi_l(q) r_l(q)
//   energy(q)   = sum_l pi_l(q) E_l(q),  E_l = hopfield's energy of level l
//
// With the router held fixed, grad_q E = q - retrieve(q) (each E_l is hopfield's, whose gradient is
// q - r_l): retrieval is the gradient step of the energy, as for hopfield (tested with a constant
// router); the router's own dependence on q adds sum_l E_l grad pi_l to the full gradient.
//
// Writes (store) go to L1, the episodic queue (or to a named level). Consolidation moves what L1
// keeps retrieving into L2 (slots whose router-weighted retrieval mass since the last round is at
// least promote_factor times the mean) and summarises L2 into L3 with one Lloyd step (L3 slots as
// centroids of the L2 patterns nearest them). A round starts every consolidation_freq writes and is
// amortised: each later write does at most consolidation_chunk rows of the L2 -> L3 step, so no step
// stalls; consolidate() runs a whole round at once.
//
// The context source applies the three temperatures to the sequence's own keys, mixed by the same
// router: sum_l pi_l(q) softmax_causal(beta_l Q K^T) V, and the energy likewise (hopfield's context
// energy per level).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "mhd/error.h"
#include "mhd/kits/bucketed_bank.h"
#include "mhd/kits/context_memory.h"
#include "mhd/memory.h"
#include "mhd/plugin.h"
#include "mhd/shapes.h"

namespace {

constexpr int kLevels = 3;

struct HierarchicalOptions {
  std::array<std::int64_t, kLevels> sizes{1024, 10240, 512};
  std::array<double, kLevels> betas{2.0, 1.0, 0.5};
  std::int64_t hidden = 32;
  std::int64_t consolidation_freq = 100;
  std::int64_t consolidation_chunk = 2048;
  double promote_factor = 2.0;
  bool learnable = false;
};

// Counters (int64 buffer "counts"): written per level (3), promoted L1 -> L2, rounds finished,
// writes since the last round, the L2 row the running round has reached (-1: none running).
enum Count { kWritten1 = 0, kPromoted = 3, kRounds = 4, kSinceRound = 5, kCursor = 6, kCounts = 7 };

class HierarchicalMemory final : public mhd::Memory {
 public:
  HierarchicalMemory(const HierarchicalOptions& o, std::int64_t dim) : opt_(o), dim_(dim) {
    for (int l = 0; l < kLevels; ++l) {
      const std::string name = "level" + std::to_string(l + 1);
      // Random N(0, 1/D) patterns, as hopfield's "random" init: ||x|| ~ 1 whatever D.
      const at::Tensor init = at::randn({o.sizes[l], dim}) / std::sqrt(static_cast<double>(dim));
      banks_[l] = o.learnable ? register_parameter(name, init) : register_buffer(name, init);
    }
    const double s1 = 1 / std::sqrt(static_cast<double>(dim)), s2 = 1 / std::sqrt(static_cast<double>(o.hidden));
    w1_ = register_parameter("router_w1", at::randn({dim, o.hidden}) * s1);
    b1_ = register_parameter("router_b1", at::zeros({o.hidden}));
    w2_ = register_parameter("router_w2", at::randn({o.hidden, kLevels}) * s2 * 0.1);  // near-uniform at start
    b2_ = register_parameter("router_b2", at::zeros({kLevels}));
    hits_ = register_buffer("l1_hits", at::zeros({o.sizes[0]}));
    sums_ = register_buffer("l3_sums", at::zeros({o.sizes[2], dim}));    // the running round's sums
    members_ = register_buffer("l3_members", at::zeros({o.sizes[2]}));  // and counts per centroid
    counts_ = register_buffer("counts", at::zeros({kCounts}, at::kLong));
    counts_[kCursor].fill_(-1);
  }

  // pi(q): [B, 3]
  at::Tensor router(const at::Tensor& q) const { return at::softmax(at::tanh(q.matmul(w1_) + b1_).matmul(w2_) + b2_, -1); }

  torch::Tensor retrieve(const torch::Tensor& query) override {
    check_query(query, "retrieve");
    const at::Tensor pi = router(query);  // [B, 3]
    at::Tensor out;
    for (int l = 0; l < kLevels; ++l) {
      const at::Tensor a = at::softmax(opt_.betas[l] * query.matmul(banks_[l].t()), -1);  // [B, S_l]
      if (l == 0) {
        // What L1 keeps retrieving: router-weighted attention mass per slot, outside autograd.
        at::NoGradGuard no_grad;
        hits_.add_((a * pi.select(-1, 0).unsqueeze(-1)).reshape({-1, a.size(-1)}).sum(0).to(hits_.scalar_type()));
      }
      const at::Tensor r = pi.select(-1, l).unsqueeze(-1) * a.matmul(banks_[l]);
      out = out.defined() ? out + r : r;
    }
    return out;
  }

  torch::Tensor energy(const torch::Tensor& query) override {
    check_query(query, "energy");
    const at::Tensor pi = router(query);
    at::Tensor e;
    for (int l = 0; l < kLevels; ++l) {
      const at::Tensor el = pi.select(-1, l) * level_energy(l, query);
      e = e.defined() ? e + el : el;
    }
    return e;
  }

  torch::Tensor retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                 const torch::Tensor& values) override {
    mhd::check_context("hierarchical", "retrieve_context", queries, keys, values);
    const at::Tensor pi = router(queries);                 // [B, Lq, 3]
    const at::Tensor dots = queries.matmul(keys.transpose(1, 2));  // [B, Lq, Lk]
    at::Tensor out;
    for (int l = 0; l < kLevels; ++l) {
      const at::Tensor r = pi.select(-1, l).unsqueeze(-1) * mhd::causal_softmax(opt_.betas[l] * dots).matmul(values);
      out = out.defined() ? out + r : r;
    }
    return out;
  }

  torch::Tensor context_energy(const torch::Tensor& queries, const torch::Tensor& keys) override {
    mhd::check_context("hierarchical", "context_energy", queries, keys, {});
    const std::int64_t Lq = queries.size(1), Lk = keys.size(1);
    const at::Tensor pi = router(queries);
    const at::Tensor dots = queries.matmul(keys.transpose(1, 2));
    const at::Tensor max_norm_sq = std::get<0>(at::cummax(keys.pow(2).sum(-1), 1)).narrow(1, Lk - Lq, Lq);
    const at::Tensor log_count = mhd::visible_counts(Lq, Lk, queries.options()).log();
    const at::Tensor common = 0.5 * queries.pow(2).sum(-1) + 0.5 * max_norm_sq;
    at::Tensor e;
    for (int l = 0; l < kLevels; ++l) {
      const double b = opt_.betas[l];
      const at::Tensor el = pi.select(-1, l) * (-mhd::causal_logsumexp(b * dots) / b + log_count / b + common);
      e = e.defined() ? e + el : el;
    }
    return e;
  }

  // store(pattern, level = auto): auto is L1, the episodic queue.
  std::int64_t write(const torch::Tensor& patterns) override {
    const std::int64_t n = store(patterns, 0);
    at::NoGradGuard no_grad;
    counts_[kSinceRound].add_(1);
    if (count(kCursor) < 0 && count(kSinceRound) >= opt_.consolidation_freq) start_round();
    if (count(kCursor) >= 0) advance_round(opt_.consolidation_chunk);
    return n;
  }

  std::int64_t store(const at::Tensor& patterns, int level) {
    at::NoGradGuard no_grad;
    if (patterns.dim() != 2 || patterns.size(1) != dim_)
      throw mhd::Error("hierarchical: write expects patterns of shape [N, " + std::to_string(dim_) + "], got " +
                       mhd::shape_string(patterns.sizes()));
    at::Tensor& bank = banks_[level];
    const std::int64_t slots = bank.size(0), n = std::min(patterns.size(0), slots);
    if (n == 0) return 0;
    const std::int64_t total = count(kWritten1 + level);
    const at::Tensor slot = at::remainder(at::arange(total, total + n, at::TensorOptions().dtype(at::kLong)), slots);
    bank.index_copy_(0, slot, patterns.narrow(0, patterns.size(0) - n, n).to(bank.options()));
    if (level == 0) hits_.index_fill_(0, slot, 0.0);  // a new episode has not been retrieved yet
    counts_[kWritten1 + level].add_(n);
    return n;
  }

  void consolidate() override {
    at::NoGradGuard no_grad;
    if (count(kCursor) < 0) start_round();
    advance_round(banks_[1].size(0));
  }

  torch::Tensor max_similarity(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "max_similarity");
    const at::Tensor q = query / query.norm(2, -1, true).clamp_min(1e-12);
    at::Tensor best;
    for (int l = 0; l < kLevels; ++l) {
      const at::Tensor x = banks_[l] / banks_[l].norm(2, -1, true).clamp_min(1e-12);
      const at::Tensor m = std::get<0>(q.matmul(x.t()).max(-1));
      best = best.defined() ? at::maximum(best, m) : m;
    }
    return best;
  }

  std::int64_t size() const override { return banks_[0].size(0) + banks_[1].size(0) + banks_[2].size(0); }

  std::map<std::string, double> stats(const torch::Tensor& query) override {
    at::NoGradGuard no_grad;
    check_query(query, "stats");
    const at::Tensor pi = router(query).reshape({-1, kLevels}).mean(0).to(at::kDouble);
    std::map<std::string, double> s;
    std::int64_t bytes = 0;
    for (const auto& t : parameters()) bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
    for (const auto& t : buffers()) bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
    for (int l = 0; l < kLevels; ++l) {
      const std::string level = "l" + std::to_string(l + 1);
      s["router_" + level] = pi[l].item<double>();
      const std::int64_t stored = std::min(count(kWritten1 + l), banks_[l].size(0));
      s["occupancy_" + level] = static_cast<double>(stored) / static_cast<double>(banks_[l].size(0));
    }
    s["promoted"] = static_cast<double>(count(kPromoted));
    s["consolidations"] = static_cast<double>(count(kRounds));
    s["stored"] = static_cast<double>(std::min(count(kWritten1), banks_[0].size(0)));
    s["memory_bytes"] = static_cast<double>(bytes);
    s["bytes_per_pattern"] = static_cast<double>(bytes) / static_cast<double>(size());
    return s;
  }

  // dtype casts convert every buffer: keep the counters exact int64 (as PatternBankMemory does).
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    const at::Tensor keep = counts_.clone();
    torch::nn::Module::to(dtype, non_blocking);
    counts_.set_data(keep.to(counts_.device()));
  }
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    const at::Tensor keep = counts_.clone();
    torch::nn::Module::to(device, dtype, non_blocking);
    counts_.set_data(keep.to(device));
  }

 private:
  std::int64_t count(int which) const { return counts_[which].item<std::int64_t>(); }

  void check_query(const at::Tensor& query, const char* op) const {
    if (query.dim() < 1 || query.size(-1) != dim_)
      throw mhd::Error(std::string("hierarchical: ") + op + " expects queries of shape [B, " + std::to_string(dim_) +
                       "], got " + mhd::shape_string(query.sizes()));
  }

  // hopfield's energy against level l: [B]
  at::Tensor level_energy(int l, const at::Tensor& q) const {
    const double b = opt_.betas[l], m = static_cast<double>(banks_[l].size(0));
    const at::Tensor lse = at::logsumexp(b * q.matmul(banks_[l].t()), -1);
    return -lse / b + 0.5 * q.pow(2).sum(-1) + std::log(m) / b + 0.5 * banks_[l].pow(2).sum(-1).max();
  }

  // L1 -> L2 at once (L1 is small), then the L2 -> L3 Lloyd step starts at row 0.
  void start_round() {
    const std::int64_t stored = std::min(count(kWritten1), banks_[0].size(0));
    if (stored > 0) {
      const at::Tensor hits = hits_.narrow(0, 0, stored);
      const at::Tensor pick = hits.ge(opt_.promote_factor * hits.mean()).logical_and(hits.gt(0)).nonzero().squeeze(1);
      if (pick.numel() > 0) {
        store(banks_[0].index_select(0, pick), 1);
        counts_[kPromoted].add_(pick.numel());
      }
    }
    hits_.mul_(0.5);  // "keeps retrieving": older mass counts half in the next round
    sums_.zero_();
    members_.zero_();
    counts_[kCursor].fill_(0);
    counts_[kSinceRound].fill_(0);
  }

  // Up to `rows` more L2 patterns assigned to their nearest L3 centroid; at the end, centroids with
  // members move to their mean.
  void advance_round(std::int64_t rows) {
    const std::int64_t stored2 = std::min(count(kWritten1 + 1), banks_[1].size(0));
    const std::int64_t start = count(kCursor), n = std::max<std::int64_t>(0, std::min(rows, stored2 - start));
    if (n > 0) {
      const at::Tensor x = banks_[1].narrow(0, start, n);                                       // [n, D]
      const at::Tensor c = banks_[2];
      const at::Tensor nearest = (x.matmul(c.t()) * 2 - c.pow(2).sum(-1)).argmax(-1);           // min ||x - c||^2
      sums_.index_add_(0, nearest, x.to(sums_.scalar_type()));
      members_.index_add_(0, nearest, at::ones({n}, members_.options()));
    }
    if (start + n < stored2) {
      counts_[kCursor].fill_(start + n);
      return;
    }
    const at::Tensor has = members_.gt(0);
    const at::Tensor mean = sums_ / members_.clamp_min(1).unsqueeze(-1);
    banks_[2].copy_(at::where(has.unsqueeze(-1), mean, banks_[2].detach()).to(banks_[2].scalar_type()));
    if (stored2 > 0) counts_[kWritten1 + 2].fill_(std::max(count(kWritten1 + 2), members_.gt(0).sum().item<std::int64_t>()));
    counts_[kRounds].add_(1);
    counts_[kCursor].fill_(-1);
  }

  HierarchicalOptions opt_;
  std::int64_t dim_;
  std::array<at::Tensor, kLevels> banks_;
  at::Tensor w1_, b1_, w2_, b2_;
  at::Tensor hits_, sums_, members_, counts_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "hierarchical";
  m.version = "1.0.0";
  m.description = "Hierarchical memory: episodic, semantic and schematic Hopfield levels mixed by a learned router, amortised consolidation";
  m.params = {
      mhd::int_param("size", 1024, "episodic level (L1) slots, where writes land", 1),
      mhd::int_param("l2_size", 10240, "semantic level slots (what L1 keeps retrieving is promoted here)", 1),
      mhd::int_param("l3_size", 512, "schematic level slots (centroids summarising L2)", 1),
      mhd::float_param("l1_beta", 2.0, "episodic inverse temperature (> 0)", 1e-6),
      mhd::float_param("l2_beta", 1.0, "semantic inverse temperature (> 0)", 1e-6),
      mhd::float_param("l3_beta", 0.5, "schematic inverse temperature (> 0)", 1e-6),
      mhd::int_param("router_hidden", 32, "hidden width of the router MLP giving per-query level weights", 1, 4096),
      mhd::int_param("consolidation_freq", 100, "writes between consolidation rounds", 1),
      mhd::int_param("consolidation_chunk", 2048, "L2 rows summarised into L3 per write while a round runs", 1),
      mhd::float_param("promote_factor", 2.0,
                       "an L1 slot moves to L2 when its retrieval mass since the last round is >= this x the mean", 0.0),
      mhd::bool_param("learnable", false, "the levels' banks are trained parameters (true) or buffers"),
  };
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims& dims) -> std::shared_ptr<mhd::Memory> {
    HierarchicalOptions o;
    o.sizes = {p.integer("size"), p.integer("l2_size"), p.integer("l3_size")};
    o.betas = {p.real("l1_beta"), p.real("l2_beta"), p.real("l3_beta")};
    o.hidden = p.integer("router_hidden");
    o.consolidation_freq = p.integer("consolidation_freq");
    o.consolidation_chunk = p.integer("consolidation_chunk");
    o.promote_factor = p.real("promote_factor");
    o.learnable = p.flag("learnable");
    if (dims.d_model < 1) throw mhd::Error("hierarchical: d_model must be >= 1, got " + std::to_string(dims.d_model));
    // Three banks, L1 hits, L3 sums (float32) before allocating any.
    const std::int64_t slots = o.sizes[0] + o.sizes[1] + o.sizes[2];
    const std::int64_t bytes = (slots + o.sizes[2]) * dims.d_model * 4 + (o.sizes[0] + o.sizes[2]) * 4;
    mhd::check_memory_fits("hierarchical", "size + l2_size + l3_size", slots, bytes, "three level banks");
    return std::make_shared<HierarchicalMemory>(o, dims.d_model);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
