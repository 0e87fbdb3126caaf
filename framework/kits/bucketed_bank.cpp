// Bucket-searched pattern bank shared by the sparse memories (bucketed_bank.h).
#include "mhd/kits/bucketed_bank.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include "mhd/error.h"
#include "mhd/kits/context_memory.h"

namespace mhd {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();


// softmax over masked scores with rows of no candidate reading nothing: s [.., C] with -inf where
// hidden -> weights (exact 0 for hidden entries, all 0 in an empty row).
at::Tensor masked_weights(const at::Tensor& s, const at::Tensor& empty_row) {
  const at::Tensor safe = at::where(empty_row.unsqueeze(-1), at::zeros({}, s.options()), s);
  return at::softmax(safe, -1).masked_fill(empty_row.unsqueeze(-1), 0.0);
}

// lse over masked scores, 0 in an empty row.
at::Tensor masked_lse(const at::Tensor& s, const at::Tensor& empty_row) {
  const at::Tensor safe = at::where(empty_row.unsqueeze(-1), at::zeros({}, s.options()), s);
  return at::logsumexp(safe, -1).masked_fill(empty_row, 0.0);
}

// a . b over D entries in 8 independent partial sums, so the compiler can vectorise the loop
// without reassociating one running sum.
template <typename T>
T dot_product(const T* a, const T* b, std::int64_t D) {
  T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[d + j] * b[d + j];
  T sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; d < D; ++d) sum += a[d] * b[d];
  return sum;
}

// The retrieval without autograd, one query at a time straight from the index: the candidates'
// scores, an online softmax and the weighted sum, without materialising X_C ([N, C, D]) whose
// allocation and page faults dominate the tensor path at scale. Same values as the tensor path
// (g - sg(g) is 0). q: [N, D], bank: [M, D], order: [R M], offsets: [R, NB + 1], probes: [N, R, P]
// -> out [N, D] (when `out` is set), lse [N] (0 for a query with no candidate).
template <typename T>
void fused_retrieval(const T* q, const T* bank, std::int64_t N, std::int64_t D, std::int64_t M, std::int64_t R,
                     std::int64_t NB, std::int64_t P, const std::int64_t* order, const std::int64_t* offsets,
                     const std::int64_t* probes, double beta, T* out, T* lse) {
  at::parallel_for(0, N, 16, [&](std::int64_t begin, std::int64_t end) {
    // A slot filed in searched buckets of two rounds is read once: stamp[slot] = the last query
    // that read it.
    std::vector<std::int64_t> stamp(R > 1 ? static_cast<std::size_t>(M) : 0, -1);
    std::vector<T> acc(static_cast<std::size_t>(D));
    for (std::int64_t i = begin; i < end; ++i) {
      const T* qi = q + i * D;
      double m = -kInf, z = 0;
      std::fill(acc.begin(), acc.end(), T(0));
      for (std::int64_t r = 0; r < R; ++r) {
        for (std::int64_t p = 0; p < P; ++p) {
          const std::int64_t b = probes[(i * R + r) * P + p];
          const std::int64_t* off = offsets + r * (NB + 1) + b;
          for (std::int64_t pos = off[0]; pos < off[1]; ++pos) {
            const std::int64_t slot = order[r * M + pos];
            // The rows are scattered over the bank: fetch a few candidates ahead.
            if (pos + 4 < off[1]) __builtin_prefetch(bank + order[r * M + pos + 4] * D);
            if (R > 1) {
              if (stamp[static_cast<std::size_t>(slot)] == i) continue;
              stamp[static_cast<std::size_t>(slot)] = i;
            }
            const T* x = bank + slot * D;
            const double s = beta * static_cast<double>(dot_product(qi, x, D));
            double w = 1;
            if (s > m) {  // a new maximum: rescale what was summed so far
              const double scale = std::exp(m - s);
              z *= scale;
              if (out) for (auto& a : acc) a *= static_cast<T>(scale);
              m = s;
            } else {
              w = std::exp(s - m);
            }
            z += w;
            if (out) {
              const T wt = static_cast<T>(w);
              T* a = acc.data();
              for (std::int64_t d = 0; d < D; ++d) a[d] += wt * x[d];
            }
          }
        }
      }
      const bool empty = z == 0;
      lse[i] = empty ? T(0) : static_cast<T>(m + std::log(z));
      if (out)
        for (std::int64_t d = 0; d < D; ++d) out[i * D + d] = empty ? T(0) : static_cast<T>(static_cast<double>(acc[static_cast<std::size_t>(d)]) / z);
    }
  });
}

}  // namespace

CandidateSearch parse_candidate_search(const std::string& who, const std::string& text) {
  if (text == "per_solve") return CandidateSearch::PerSolve;
  if (text == "per_call") return CandidateSearch::PerCall;
  throw Error(who + ": search = \"" + text + "\" is not one of \"per_solve\", \"per_call\"");
}

ParamSchema bucket_index_params() {
  return {
      choice_param("search", "per_solve", {"per_solve", "per_call"},
                   "when a query's buckets are chosen: \"per_solve\" once per forward solve, from its first "
                   "iterate (f smooth within a solve), or \"per_call\" at every retrieval"),
      int_param("refile_every", 1,
                "bank or router changes (optimizer steps) over which every pattern is refiled once: 1 refiles all "
                "at each change (exact); k > 1 refiles a rolling 1/k of them per change (large banks)",
                1, std::int64_t{1} << 20),
  };
}

BucketIndexOptions bucket_index_options(const std::string& who, const Params& p) {
  BucketIndexOptions o;
  o.search = parse_candidate_search(who, p.text("search"));
  o.refile_every = p.integer("refile_every");
  return o;
}

BucketedBankMemory::BucketedBankMemory(std::string name, const at::Tensor& bank, bool learnable, double beta,
                                       std::int64_t rounds, std::int64_t buckets, bool all_slots_filled,
                                       const BucketIndexOptions& index)
    : PatternBankMemory(name, bank, learnable),
      name_(std::move(name)),
      beta_(beta),
      rounds_(rounds),
      buckets_(buckets),
      all_slots_filled_(all_slots_filled),
      search_mode_(index.search),
      refile_every_(index.refile_every) {
  const auto index_options = at::TensorOptions().dtype(at::kLong);
  bucket_of_ = register_buffer("filing", at::full({rounds, bank.size(0)}, -1, index_options));
  refile_cursor_ = register_buffer("filing_cursor", at::zeros({}, index_options));
  filed_checksum_ = register_buffer("filing_checksum", at::zeros({}, index_options));
}

void BucketedBankMemory::begin_solve(const torch::Tensor& queries) {
  at::NoGradGuard no_grad;
  fixed_probes_ = at::Tensor();
  in_solve_ = queries.defined();
  if (!in_solve_) return;
  solve_searches_ = 0;
  solve_fixed_reads_ = 0;
  if (search_mode_ == CandidateSearch::PerSolve) {
    check_query(queries, "begin_solve");
    fixed_probes_ = search(queries.detach().reshape({-1, queries.size(-1)}).to(bank().scalar_type())).contiguous();
  }
}

at::Tensor BucketedBankMemory::probes(const at::Tensor& q) {
  if (fixed_probes_.defined() && q.size(0) == fixed_probes_.size(0)) {
    ++solve_fixed_reads_;
    return fixed_probes_;
  }
  if (in_solve_) ++solve_searches_;
  return search(q);
}

std::int64_t BucketedBankMemory::filled_slots() const { return all_slots_filled_ ? size() : stored(); }


BucketedBankMemory::Candidates BucketedBankMemory::candidates(const at::Tensor& query) {
  at::NoGradGuard no_grad;
  filing();
  const std::int64_t N = query.size(0), M = size();
  const at::Tensor probes = this->probes(query.detach());                              // [N, R, P]
  const std::int64_t P = probes.size(2);
  const at::Tensor round_base = at::arange(rounds_, probes.options()).view({1, rounds_, 1});
  // Flat bucket ids into offsets_ (row r at r * (buckets + 1)): the range of each searched bucket.
  const at::Tensor flat_offsets = offsets_.reshape({-1});
  const at::Tensor at_bucket = probes + round_base * (buckets_ + 1);                   // [N, R, P]
  const at::Tensor starts = (flat_offsets.index({at_bucket}) + round_base * M).reshape({N, rounds_ * P});
  const at::Tensor counts = (flat_offsets.index({at_bucket + 1}) - flat_offsets.index({at_bucket})).reshape({N, rounds_ * P});
  // Range expansion: candidate c of a query lies in the range `which` whose running total passes c.
  const at::Tensor ends = counts.cumsum(1);                                             // [N, S]
  const at::Tensor total = ends.select(1, rounds_ * P - 1);                             // [N]
  const std::int64_t C = std::max<std::int64_t>(1, total.max().item<std::int64_t>());
  const at::Tensor pos = at::arange(C, probes.options()).unsqueeze(0).expand({N, C}).contiguous();
  const at::Tensor which = at::searchsorted(ends, pos, /*out_int32=*/false, /*right=*/true).clamp_max(rounds_ * P - 1);
  const at::Tensor within = pos - (ends - counts).gather(1, which);
  const at::Tensor valid = pos.lt(total.unsqueeze(1));
  const at::Tensor flat = (starts.gather(1, which) + within).clamp(0, rounds_ * M - 1);
  at::Tensor index = at::where(valid, order_.index({flat}), at::zeros({}, flat.options()));
  at::Tensor keep = valid;
  if (rounds_ > 1) {
    // A pattern filed in searched buckets of two rounds appears twice: keep one.
    const at::Tensor sorted = std::get<0>(at::where(valid, index, at::full({}, M, index.options())).sort(1));
    keep = sorted.lt(M);
    keep.narrow(1, 1, C - 1).logical_and_(sorted.narrow(1, 1, C - 1).ne(sorted.narrow(1, 0, C - 1)));
    index = at::where(keep, sorted, at::zeros({}, sorted.options()));
  }
  return {index, keep};
}

std::pair<at::Tensor, at::Tensor> BucketedBankMemory::candidate_scores(const at::Tensor& query, const Candidates& c) {
  const std::int64_t N = query.size(0), C = c.index.size(1), D = query.size(1);
  const at::Tensor x = bank().index_select(0, c.index.reshape({-1})).view({N, C, D}) *
                       c.valid.unsqueeze(-1).to(bank().scalar_type());              // X_C: [N, C, D]
  at::Tensor s = beta_ * x.bmm(query.unsqueeze(2)).squeeze(2);                        // [N, C]
  const at::Tensor filed = bucket_of_.index_select(1, c.index.reshape({-1})).view({rounds_, N, C}).permute({1, 2, 0});
  s = s + gate_term(query.detach(), filed.clamp_min(0));                              // [N, C]
  return {s.masked_fill(c.valid.logical_not(), -kInf), x};
}

std::pair<at::Tensor, at::Tensor> BucketedBankMemory::fused(const at::Tensor& q, bool want_output) {
  at::NoGradGuard no_grad;
  filing();
  const at::Tensor qc = q.contiguous().to(bank().scalar_type());
  const at::Tensor probes = this->probes(qc).contiguous();  // [N, R, P]
  const at::Tensor x = bank().contiguous();
  const std::int64_t N = qc.size(0), D = qc.size(1);
  at::Tensor out = want_output ? at::empty({N, D}, x.options()) : at::Tensor();
  at::Tensor lse = at::empty({N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bucketed_bank_fused", [&] {
    fused_retrieval<scalar_t>(qc.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), N, D, size(), rounds_, buckets_,
                              probes.size(2), order_.data_ptr<std::int64_t>(), offsets_.contiguous().data_ptr<std::int64_t>(),
                              probes.data_ptr<std::int64_t>(), beta_, want_output ? out.data_ptr<scalar_t>() : nullptr,
                              lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

bool BucketedBankMemory::needs_graph(const at::Tensor& query) const {
  if (!at::GradMode::is_enabled()) return false;
  if (query.requires_grad()) return true;
  for (const auto& p : parameters())
    if (p.requires_grad()) return true;
  return false;
}

torch::Tensor BucketedBankMemory::retrieve(const torch::Tensor& query) {
  check_query(query, "retrieve");
  const at::Tensor q = query.reshape({-1, query.size(-1)});
  if (!needs_graph(query) && (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble))
    return fused(q, true).first.view(query.sizes());
  const Candidates all = candidates(q);
  std::vector<at::Tensor> out;
  const std::int64_t N = q.size(0), step = chunk_rows(all.index.size(1) * q.size(1));
  for (std::int64_t start = 0; start < N; start += step) {
    const std::int64_t n = std::min(step, N - start);
    const Candidates c{all.index.narrow(0, start, n), all.valid.narrow(0, start, n)};
    const auto [s, x] = candidate_scores(q.narrow(0, start, n), c);
    const at::Tensor w = masked_weights(s, c.valid.any(1).logical_not());  // [n, C]
    out.push_back(w.unsqueeze(1).bmm(x).squeeze(1));                        // [n, D]
  }
  return at::cat(out).view(query.sizes());
}

torch::Tensor BucketedBankMemory::energy(const torch::Tensor& query) {
  check_query(query, "energy");
  const at::Tensor q = query.reshape({-1, query.size(-1)});
  const double m = static_cast<double>(size());
  if (!needs_graph(query) && (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble)) {
    at::NoGradGuard no_grad;
    const at::Tensor e = -fused(q, false).second / beta_ + 0.5 * q.pow(2).sum(-1) + std::log(m) / beta_ +
                         0.5 * max_norm_sq();
    return e.view(query.sizes().slice(0, query.dim() - 1));
  }
  const Candidates all = candidates(q);
  std::vector<at::Tensor> lse;
  const std::int64_t N = q.size(0), step = chunk_rows(all.index.size(1) * q.size(1));
  for (std::int64_t start = 0; start < N; start += step) {
    const std::int64_t n = std::min(step, N - start);
    const Candidates c{all.index.narrow(0, start, n), all.valid.narrow(0, start, n)};
    lse.push_back(masked_lse(candidate_scores(q.narrow(0, start, n), c).first, c.valid.any(1).logical_not()));
  }
  const at::Tensor e = -at::cat(lse) / beta_ + 0.5 * q.pow(2).sum(-1) + std::log(m) / beta_ + 0.5 * max_norm_sq();
  return e.view(query.sizes().slice(0, query.dim() - 1));
}

namespace {

// Which visible keys each query may read: visible and filed under a bucket the query searches in
// some round. key_buckets: [B, Lk, R], probes: [B, Lq, R, P] -> [B, Lq, Lk] bool.
at::Tensor context_mask(const at::Tensor& key_buckets, const at::Tensor& probes, std::int64_t Lq, std::int64_t Lk) {
  at::Tensor match;
  for (std::int64_t r = 0; r < key_buckets.size(2); ++r) {
    const at::Tensor kb = key_buckets.select(2, r).unsqueeze(1).unsqueeze(-1);  // [B, 1, Lk, 1]
    const at::Tensor pr = probes.select(2, r).unsqueeze(2);                     // [B, Lq, 1, P]
    const at::Tensor m = kb.eq(pr).any(-1);                                      // [B, Lq, Lk]
    match = match.defined() ? match.logical_or(m) : m;
  }
  return match.logical_and(visible_keys(Lq, Lk, key_buckets.device()));
}

}  // namespace

torch::Tensor BucketedBankMemory::retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                                   const torch::Tensor& values) {
  check_context(name_.c_str(), "retrieve_context", queries, keys, values);
  const std::int64_t B = queries.size(0), Lq = queries.size(1), Lk = keys.size(1), D = queries.size(2);
  at::Tensor mask, filed;
  {
    at::NoGradGuard no_grad;
    filed = assign(keys.detach().reshape({-1, D})).view({B, Lk, rounds_});
    const at::Tensor probes = this->probes(queries.detach().reshape({-1, D}));
    mask = context_mask(filed, probes.view({B, Lq, rounds_, probes.size(2)}), Lq, Lk);  // [B, Lq, Lk]
  }
  // g - sg(g) of each (query, key) pair: g the query's log-probability of the key's buckets.
  const at::Tensor gate = gate_term(queries.detach().reshape({-1, D}),
                                    filed.unsqueeze(1).expand({B, Lq, Lk, rounds_}).reshape({B * Lq, Lk, rounds_}))
                              .view({B, Lq, Lk});
  const at::Tensor s = (beta_ * queries.matmul(keys.transpose(1, 2)) + gate).masked_fill(mask.logical_not(), -kInf);
  return masked_weights(s, mask.any(-1).logical_not()).matmul(values);  // [B, Lq, D]
}

torch::Tensor BucketedBankMemory::context_energy(const torch::Tensor& queries, const torch::Tensor& keys) {
  check_context(name_.c_str(), "context_energy", queries, keys, {});
  const std::int64_t B = queries.size(0), Lq = queries.size(1), Lk = keys.size(1), D = queries.size(2);
  at::Tensor mask, filed;
  {
    at::NoGradGuard no_grad;
    filed = assign(keys.detach().reshape({-1, D})).view({B, Lk, rounds_});
    const at::Tensor probes = this->probes(queries.detach().reshape({-1, D}));
    mask = context_mask(filed, probes.view({B, Lq, rounds_, probes.size(2)}), Lq, Lk);
  }
  const at::Tensor gate = gate_term(queries.detach().reshape({-1, D}),
                                    filed.unsqueeze(1).expand({B, Lq, Lk, rounds_}).reshape({B * Lq, Lk, rounds_}))
                              .view({B, Lq, Lk});
  const at::Tensor s = (beta_ * queries.matmul(keys.transpose(1, 2)) + gate).masked_fill(mask.logical_not(), -kInf);
  const at::Tensor lse = masked_lse(s, mask.any(-1).logical_not());                               // [B, Lq]
  const at::Tensor max_norm_sq = std::get<0>(at::cummax(keys.pow(2).sum(-1), 1)).narrow(1, Lk - Lq, Lq);
  const at::Tensor log_count = visible_counts(Lq, Lk, queries.options()).log();
  return -lse / beta_ + 0.5 * queries.pow(2).sum(-1) + log_count / beta_ + 0.5 * max_norm_sq;
}

at::Tensor BucketedBankMemory::max_norm_sq() {
  // Differentiable where the bank is trained; otherwise read once per content (filing() has just
  // compared it), as one norm reduction without an [M, D] temporary.
  if (at::GradMode::is_enabled() && bank().requires_grad()) return bank().pow(2).sum(-1).max();
  const std::int64_t versions = content_versions();
  if (!max_norm_sq_.defined() || max_norm_versions_ != versions) {
    at::NoGradGuard no_grad;
    max_norm_sq_ = at::linalg_vector_norm(bank(), 2, {-1}).max().pow(2);
    max_norm_versions_ = versions;
  }
  return max_norm_sq_;
}

std::int64_t BucketedBankMemory::memory_bytes() const {
  std::int64_t bytes = 0;
  auto add = [&](const at::Tensor& t) {
    if (t.defined()) bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
  };
  for (const auto& p : parameters()) add(p);
  for (const auto& b : buffers()) add(b);  // the filing included
  add(order_);
  add(offsets_);
  return bytes;
}

std::map<std::string, double> BucketedBankMemory::bucket_stats(const at::Tensor& query) {
  at::NoGradGuard no_grad;
  check_query(query, "stats");
  const at::Tensor q = query.reshape({-1, query.size(-1)});
  filing();
  const at::Tensor loads = (offsets_.narrow(1, 1, buckets_) - offsets_.narrow(1, 0, buckets_)).select(0, 0).to(at::kDouble);
  const Candidates c = candidates(q);
  const auto [s, x] = candidate_scores(q, c);
  const at::Tensor w = masked_weights(s, c.valid.any(1).logical_not());                  // [N, C]
  const at::Tensor entropy = -(w * w.clamp_min(1e-30).log()).sum(-1);                   // [N], nats
  const std::int64_t held = memory_bytes();
  const double filled = static_cast<double>(std::max<std::int64_t>(1, filled_slots()));
  double stale = 0;
  if (filled_slots() > 0) {
    const at::Tensor sample =
        at::linspace(0, static_cast<double>(filled_slots() - 1), std::min<std::int64_t>(4096, filled_slots()),
                     at::TensorOptions().dtype(at::kDouble)).round().to(bucket_of_.options());      // [S]
    const at::Tensor now = assign_chunked(bank().index_select(0, sample).detach()).t();              // [R, S]
    stale = now.ne(bucket_of_.index_select(1, sample)).to(at::kDouble).mean().item<double>();
  }
  const double refiled = static_cast<double>(refiled_slots_);
  refiled_slots_ = 0;
  return {{"bucket_load_max", loads.max().item<double>()},
          {"bucket_load_mean", loads.mean().item<double>()},
          {"bucket_empty_share", loads.eq(0).to(at::kDouble).mean().item<double>()},
          {"candidates_per_query", c.valid.sum(1).to(at::kDouble).mean().item<double>()},
          {"attention_entropy", entropy.mean().item<double>()},
          {"stored", static_cast<double>(stored())},
          {"memory_bytes", static_cast<double>(held)},
          {"bytes_per_pattern", static_cast<double>(held) / filled},
          {"filing_stale_share", stale},
          {"refiled_slots", refiled},
          {"solve_searches", static_cast<double>(solve_searches_)},
          {"solve_fixed_reads", static_cast<double>(solve_fixed_reads_)}};
}

void check_memory_fits(const std::string& who, const std::string& key, std::int64_t value, std::int64_t bytes,
                       const std::string& what) {
  std::ifstream meminfo("/proc/meminfo");
  std::string name;
  std::int64_t kib = 0;
  std::string unit;
  while (meminfo >> name >> kib >> unit) {
    if (name != "MemAvailable:") continue;
    const std::int64_t available = kib * 1024;
    if (bytes > available) {
      std::ostringstream os;
      os << who << ": " << key << " = " << value << " needs " << bytes << " bytes (" << what << "), more than the "
         << available << " bytes of memory available";
      throw Error(os.str());
    }
    return;
  }
}

}  // namespace mhd
