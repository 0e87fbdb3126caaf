// A pattern bank searched through buckets: the part that the sparse memories (sparse_hash,
// product_key) share (docs/design.md §3, "Memory at scale"). Each stored pattern is filed under one
// bucket per round (hash round or product-key head); a query searches a few buckets per round and
// runs the Hopfield retrieval over the union of the patterns filed there:
//
//   C(q)        = { mu : bucket_r(x_mu) in search_r(q) for some round r }       the candidates
//   s_mu(q)     = beta q . x_mu + (g_mu(q) - sg(g_mu(q)))                         mu in C(q)
//   retrieve(q) = softmax_{C(q)}(s) X_C                                           q: [N, D] -> [N, D]
//   energy(q)   = -1/beta lse_{C(q)}(s) + 1/2 ||q||^2 + 1/beta log M + 1/2 max_mu ||x_mu||^2
//
// g_mu(q) is the log-probability the router (hash W or product sub-keys) gives x_mu's bucket for the
// detached query; g - sg(g) is exactly 0, so values are those of Hopfield over C(q) (with every
// bucket searched: the `hopfield` plugin to rounding), while the gradient reaches the router as if
// each candidate's weight were scaled by its bucket's probability: training raises the probability
// of the buckets whose patterns lower the loss. Within a fixed candidate set grad_q E = q - retrieve(q),
// as for Hopfield. A query with no candidate reads 0 (lse taken as 0).
//
// The index (patterns sorted by bucket, per round) follows writes incrementally. Any other change of
// the bank or the router (an optimizer step, a copy into them) refiles patterns on the next retrieval: all of them
// (refile_every = 1, exact), or a rolling share of ceil(M / refile_every) slots per change, so that
// no pattern's filing is more than refile_every changes old and no step pays for a whole refile of a
// large bank (refiling 100K patterns under 4 x 4096 hash buckets is ~1e11 multiply-adds). Between
// refiles a pattern sits in its old bucket: retrieval still reads its current value, a query may
// miss it (the stat filing_stale_share measures how often). A change is a change of content: the
// bank's and router's bits are checksummed when their version counters move, so a checkpoint load
// that restores the state the filing was saved with refiles nothing. The filing, the rolling cursor
// and that checksum are int64 buffers ("filing", "filing_cursor", "filing_checksum"): a checkpoint
// holds the index it was trained with, and a resumed run refiles exactly as an uninterrupted one.
// consolidate() refiles every pattern under the router's current parameters.
//
// C(q) is a step function of q: chosen afresh at every retrieval, an iterate crossing a bucket
// boundary changes its candidates and f jumps, so a forward solve stalls above tol. Searched once
// per solve instead (CandidateSearch::PerSolve, the default), each query row keeps the buckets its
// first iterate searched (Memory::begin_solve) until the solve ends: within a solve f is smooth, and
// the next solve searches again.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <boost/config.hpp>

#include "mhd/kits/pattern_bank.h"
#include "mhd/params.h"

namespace mhd {

// When a query's searched buckets are chosen (the plugins' `search` parameter).
enum class CandidateSearch {
  PerSolve,  // once per forward solve, from its first iterate (Memory::begin_solve)
  PerCall,   // at every retrieval (f piecewise within a solve)
};
// "per_solve" / "per_call"; anything else throws mhd::Error naming `who` and the key `search`.
CandidateSearch parse_candidate_search(const std::string& who, const std::string& text);

// How a sparse memory keeps its bucket index: the parameters `search` and `refile_every` that every
// bucketed memory plugin declares (bucket_index_params) and reads (bucket_index_options).
struct BucketIndexOptions {
  CandidateSearch search = CandidateSearch::PerSolve;
  std::int64_t refile_every = 1;  // bank or router changes over which every pattern is refiled once
};
ParamSchema bucket_index_params();
BucketIndexOptions bucket_index_options(const std::string& who, const Params& p);

class BOOST_SYMBOL_VISIBLE BucketedBankMemory : public PatternBankMemory {
 public:
  torch::Tensor retrieve(const torch::Tensor& query) override;
  torch::Tensor energy(const torch::Tensor& query) override;
  // The same bucketing applied to the sequence's keys: query i reads the visible keys filed under a
  // bucket it searches (causal softmax over visible & same-bucket keys); the energy likewise, with
  // the visible count and the running max ||k||^2 as hopfield's context energy.
  torch::Tensor retrieve_context(const torch::Tensor& queries, const torch::Tensor& keys,
                                 const torch::Tensor& values) override;
  torch::Tensor context_energy(const torch::Tensor& queries, const torch::Tensor& keys) override;
  std::int64_t write(const torch::Tensor& patterns) override;
  // Refiles every stored pattern under the router's current parameters.
  void consolidate() override;
  // PerSolve: fixes each row's searched buckets to those of `queries` ([N, D]) until the solve ends
  // (undefined `queries`); a retrieval during the solve with another number of rows searches afresh
  // (counted in the stat solve_searches). PerCall: only counts.
  void begin_solve(const torch::Tensor& queries) override;

  // Bytes held: parameters, buffers and the index.
  std::int64_t memory_bytes() const;

 protected:
  // all_slots_filled: the initial bank holds patterns (init "random"); otherwise a slot counts only
  // once written (init "zeros": empty slots are never candidates).
  BucketedBankMemory(std::string name, const at::Tensor& bank, bool learnable, double beta, std::int64_t rounds,
                     std::int64_t buckets, bool all_slots_filled, const BucketIndexOptions& index);

  // The bucket of each pattern per round: x: [N, D] -> [N, R] int64 in [0, buckets). No autograd.
  virtual at::Tensor assign(const at::Tensor& x) const = 0;
  // Scores the router computes per filed row (assign's temporary): rounds x buckets by default. Sets
  // how many rows are filed at once.
  virtual std::int64_t router_scores_per_row() const { return rounds_ * buckets_; }
  // The buckets a query searches per round: q: [N, D] -> [N, R, P] int64, distinct within a round.
  virtual at::Tensor search(const at::Tensor& q) const = 0;
  // g - sg(g) of the candidates: exactly 0, with the gradient (to the router) of g, the router's
  // log-probability of each candidate's buckets (combined over rounds) for query q ([N, D], already
  // detached). buckets: [N, C, R] int64 (>= 0) -> [N, C].
  virtual at::Tensor gate_term(const at::Tensor& q, const at::Tensor& buckets) const = 0;

  // Diagnostics shared by the sparse memories: bucket loads (max, mean, empty share, round 0),
  // candidates per query, attention entropy, stored, memory_bytes, bytes_per_pattern,
  // filing_stale_share (share of a sample of up to 4096 filed slots, per round, whose bucket under the
  // router's current parameters is not the one they are filed under), refiled_slots (slots refiled
  // since the last stats call), and of the
  // last solve: solve_searches (searches after its first iterate; 0 when every retrieval read the
  // fixed buckets) and solve_fixed_reads (retrievals that read them).
  std::map<std::string, double> bucket_stats(const at::Tensor& query);

  // The candidates of each query: index [N, C] into the bank (0 where invalid), valid [N, C].
  struct Candidates {
    at::Tensor index;
    at::Tensor valid;
  };
  Candidates candidates(const at::Tensor& query);
  // s over the candidates ([N, C], -inf where invalid) and the candidates' patterns [N, C, D] (0
  // where invalid).
  std::pair<at::Tensor, at::Tensor> candidate_scores(const at::Tensor& query, const Candidates& c);

  double beta() const { return beta_; }
  std::int64_t rounds() const { return rounds_; }
  std::int64_t buckets() const { return buckets_; }
  // The bucket of every slot per round: [R, M] int64, -1 for empty slots. Refreshed on demand.
  const at::Tensor& filing();

 private:
  // Without autograd (the DEQ's forward solve, inference): retrieval and lse read straight from the
  // index, one query at a time (no [N, C, D] gather). q: [N, D] -> (out [N, D] or undefined, lse [N]).
  std::pair<at::Tensor, at::Tensor> fused(const at::Tensor& q, bool want_output);
  bool needs_graph(const at::Tensor& query) const;
  // The buckets q ([N, D], detached) searches: the solve's fixed ones when they have N rows, else
  // search(q). [N, R, P]
  at::Tensor probes(const at::Tensor& q);
  at::Tensor assign_chunked(const at::Tensor& x) const;  // assign() over row chunks: [N, R]
  // Rows per chunk of a temporary with `per_row` entries per row: near 2^22 floats.
  static std::int64_t chunk_rows(std::int64_t per_row);
  void refile_all();
  // Brings the filing up to date after a change of the bank or router: every slot when refile_every
  // is 1 or some filled slot was never filed, else the next ceil(filled / refile_every) slots from
  // the rolling cursor.
  void refile_changed();
  void file_slots(const at::Tensor& slots);  // slots: [n] int64
  std::vector<at::Tensor> filed_content() const;  // the floating-point parameters and buffers
  // Their bits summed as integers: changes with any value.
  std::int64_t content_checksum() const;
  std::int64_t content_versions() const;  // their version counters and data addresses, summed
  at::Tensor max_norm_sq();  // max_mu ||x_mu||^2, the energy's constant: a scalar
  void rebuild_sorted();
  std::int64_t filled_slots() const;

  std::string name_;  // the plugin's, for error messages
  double beta_;
  std::int64_t rounds_, buckets_;
  bool all_slots_filled_;
  CandidateSearch search_mode_;
  std::int64_t refile_every_;
  at::Tensor fixed_probes_;  // [N, R, P] of the current solve's first iterate (PerSolve), else undefined
  bool in_solve_ = false;
  std::int64_t solve_searches_ = 0, solve_fixed_reads_ = 0;  // of the current (or last) solve
  at::Tensor bucket_of_;         // buffer "filing": [R, M] int64, -1 where not filed
  at::Tensor refile_cursor_;     // buffer "filing_cursor": scalar int64, the next slot a rolling refile files
  at::Tensor filed_checksum_;    // buffer "filing_checksum": scalar int64, content_checksum() as last filed
  at::Tensor order_;      // [R * M] int64: round r's slots sorted by bucket, at r * M ...
  at::Tensor offsets_;    // [R, buckets + 1] int64: bucket b of round r at order_[r M + offsets_[r][b] ...]
  std::int64_t seen_versions_ = -1;   // content_versions() when the checksum was last compared
  std::int64_t sorted_version_ = -1;  // bucket_of_'s version counter when order_ and offsets_ were built
  std::int64_t refiled_slots_ = 0;    // since the last bucket_stats
  at::Tensor max_norm_sq_;            // cached off the graph, for content_versions() == max_norm_versions_
  std::int64_t max_norm_versions_ = -1;
};

// Throws mhd::Error "WHO: KEY = VALUE needs BYTES bytes (WHAT), more than the AVAILABLE bytes of
// memory available" when `bytes` exceeds MemAvailable (/proc/meminfo; unchecked where unreadable).
void check_memory_fits(const std::string& who, const std::string& key, std::int64_t value, std::int64_t bytes,
                       const std::string& what);

}  // namespace mhd
