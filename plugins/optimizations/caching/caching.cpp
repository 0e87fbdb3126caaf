// Optimization plugin `caching`: equilibrium caching (docs/design.md §3). An LRU cache of
// (context key -> z*) rows; a batch whose keys are near stored ones starts its solve from their
// cached equilibria.
//
// * Key: the context summary the model passes to the hooks, X at the last position: [B, D] (the
//   state of a causal backbone that has read the whole sequence), compared by cosine similarity.
// * on_equilibrium(f, z*, key) stores each row's detached z*: [B, S] (S = P * D, one state per
//   position, flattened) under its key. A key within `threshold` of a stored one replaces that
//   entry's value (the newest equilibrium of the same context wins); otherwise a new entry is added,
//   evicting the least recently used one beyond `capacity` rows. A z* of another width S (another
//   sequence length) than the stored ones empties the cache first: rows of different widths are
//   never mixed.
// * warm_start(key) returns a full start state [B, S]: row b gets the cached z* of its nearest
//   stored key when the cosine is >= threshold (a hit). The model uses a warm start only when it has
//   the shape of the solve's start, and the hook cannot see the model's default start (zeros, or the
//   stream's previous z*), so missed rows cannot keep it: they get the mean of the cached z* rows, a
//   start inside the region where equilibria were found (better than zeros on average, never worse
//   than a hit). Because such a start may be worse than the default for a missed row, the cache
//   answers only when at least `min_hit_share` of the batch's rows hit; otherwise it returns nothing
//   and the solve starts from the default.
// * The model calls on_equilibrium only on forwards run with observe = true; the trainer observes
//   the first held-out batch of each evaluation, never a training step (the hook is meant for
//   probes that cost a Jacobian). So in a study the cache fills from that batch, which repeats at
//   every evaluation; caching every training equilibrium would need the trainer to observe every
//   forward. Direct users (tests, benches) call forward(tokens, true).
// * metrics() since the last call: cache_hit_rate (hit rows / looked-up rows), cache_lookups,
//   cache_warm_starts (batches served), and the current cache_entries and cache_bytes. Iterations
//   saved are the solver's to report (the model's solver_iters on the served batches).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/optimization.h"
#include "mhd/plugin.h"

namespace {

struct CachingOptions {
  std::int64_t capacity = 1000;
  double threshold = 0.99;
  double min_hit_share = 0.5;
};

class EquilibriumCache final : public mhd::Optimization {
 public:
  explicit EquilibriumCache(CachingOptions o) : o_(o) {}

  std::optional<at::Tensor> warm_start(const at::Tensor& key) override {
    if (!keys_.defined() || size_ == 0 || key.dim() != 2 || key.size(1) != keys_.size(1)) return std::nullopt;
    const at::Tensor q = unit(key.detach().to(keys_.options()));  // [B, D]
    const at::Tensor sims = q.matmul(stored_keys().t());          // [B, N]
    const auto [best, index] = sims.max(1);                       // [B], [B]
    const at::Tensor hit = best.ge(o_.threshold);                 // [B]
    const std::int64_t B = key.size(0), hits = hit.sum().item<std::int64_t>();
    lookups_ += B;
    hits_ += hits;
    if (hits == 0 || static_cast<double>(hits) < o_.min_hit_share * static_cast<double>(B)) return std::nullopt;
    touch(index.index({hit}));
    ++warm_starts_;
    const at::Tensor values = stored_values();                        // [N, S]
    const at::Tensor mean = values.mean(0, /*keepdim=*/true);         // [1, S]
    return at::where(hit.unsqueeze(1), values.index_select(0, index), mean).to(key.device());  // [B, S]
  }

  void on_equilibrium(const mhd::TensorMap& /*f*/, const at::Tensor& z_star, const at::Tensor& key) override {
    if (!z_star.defined() || !key.defined() || z_star.dim() != 2 || key.dim() != 2 || z_star.size(0) != key.size(0))
      return;
    const at::Tensor z = z_star.detach();
    if (!values_.defined() || values_.size(1) != z.size(1) || keys_.size(1) != key.size(1) ||
        values_.scalar_type() != z.scalar_type()) {
      values_ = at::zeros({0, z.size(1)}, z.options());
      keys_ = at::zeros({0, key.size(1)}, z.options());
      stamps_ = at::zeros({0}, at::kLong);
      size_ = 0;
    }
    const at::Tensor q = unit(key.detach().to(keys_.options()));  // [B, D]
    for (std::int64_t b = 0; b < q.size(0); ++b) {
      std::int64_t slot = -1;
      if (size_ > 0) {
        const auto [sim, idx] = stored_keys().matmul(q[b]).max(0);
        if (sim.item<double>() >= o_.threshold) slot = idx.item<std::int64_t>();
      }
      if (slot < 0 && size_ < o_.capacity) {
        grow_to(size_ + 1);
        slot = size_++;
      }
      if (slot < 0) slot = stamps_.argmin().item<std::int64_t>();  // the least recently used
      keys_[slot].copy_(q[b]);
      values_[slot].copy_(z[b]);
      stamps_[slot] = ++clock_;
    }
  }

  std::map<std::string, double> metrics() override {
    std::map<std::string, double> m;
    m["cache_hit_rate"] = lookups_ > 0 ? static_cast<double>(hits_) / static_cast<double>(lookups_) : 0.0;
    m["cache_lookups"] = static_cast<double>(lookups_);
    m["cache_warm_starts"] = static_cast<double>(warm_starts_);
    m["cache_entries"] = static_cast<double>(size_);
    m["cache_bytes"] = size_ == 0 ? 0.0
                                  : static_cast<double>(size_ * (keys_.size(1) * keys_.element_size() +
                                                                 values_.size(1) * values_.element_size()));
    lookups_ = hits_ = warm_starts_ = 0;
    return m;
  }

 private:
  static at::Tensor unit(const at::Tensor& x) { return x / (x.norm(2, {1}, /*keepdim=*/true) + 1e-12); }
  at::Tensor stored_keys() const { return keys_.narrow(0, 0, size_); }      // [N, D], unit rows
  at::Tensor stored_values() const { return values_.narrow(0, 0, size_); }  // [N, S]
  // Storage grows by doubling up to capacity, so a large capacity costs nothing until it is used.
  void grow_to(std::int64_t rows) {
    if (rows <= keys_.size(0)) return;
    const std::int64_t n = std::min(o_.capacity, std::max<std::int64_t>(16, 2 * keys_.size(0))) - keys_.size(0);
    keys_ = at::cat({keys_, at::zeros({n, keys_.size(1)}, keys_.options())});
    values_ = at::cat({values_, at::zeros({n, values_.size(1)}, values_.options())});
    stamps_ = at::cat({stamps_, at::full({n}, -1, stamps_.options())});
  }
  void touch(const at::Tensor& slots) {
    for (std::int64_t i = 0; i < slots.size(0); ++i) stamps_[slots[i].item<std::int64_t>()] = ++clock_;
  }

  CachingOptions o_;
  at::Tensor keys_, values_, stamps_;  // [R, D], [R, S], [R] (last use); R <= capacity rows allocated
  std::int64_t size_ = 0, clock_ = 0;
  std::int64_t lookups_ = 0, hits_ = 0, warm_starts_ = 0;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Optimization;
  m.name = "caching";
  m.version = "1.0.0";
  m.description = "Equilibrium caching: LRU cache of (context key -> z*), near hits warm-start the solve";
  m.params = {
      mhd::int_param("capacity", 1000, "cached rows (one per sequence); the least recently used is evicted", 1,
                     10000000),
      mhd::float_param("threshold", 0.99, "cosine similarity of context keys at or above which a row hits", -1.0,
                       1.0),
      mhd::float_param("min_hit_share", 0.5,
                       "share of a batch's rows that must hit for the cache to warm-start it (missed rows "
                       "start from the mean cached z*)",
                       0.0, 1.0),
  };
  m.make_optimization = [](const mhd::Params& p) -> std::shared_ptr<mhd::Optimization> {
    CachingOptions o;
    o.capacity = p.integer("capacity");
    o.threshold = p.real("threshold");
    o.min_hit_share = p.real("min_hit_share");
    return std::make_shared<EquilibriumCache>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Optimization, make_manifest)
