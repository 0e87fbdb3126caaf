// Multi-query associative recall (MQAR, in the style of Zoology): a context of key-value pairs,
// then queries whose answers are the values paired with their keys earlier in the sequence.
//
//   vocabulary: 0 = filler, keys in [1, V/2), values in [V/2, V)
//   inputs:     k1 v1 k2 v2 ... kP vP | 0 .. kq vq .. 0 .. kq' vq' ..
//   targets:    -100 everywhere except at each query key, where the label is its value
//   query_at_end: the seed's recall experiment: k1 v1 ... kP vP 0 .. 0 kq, one query whose key is the
//               last token and whose label sits there (the only layout the pooled equilibrium may train on)
//   part k of K (continual learning): keys and values from the k-th of K equal disjoint slices of
//               their ranges, so a model that learned one part has not seen the other parts' tokens
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"
#include "tasks/task.h"

namespace mhd {
namespace {

const ParamSchema& associative_recall_schema() {
  static const ParamSchema schema{
      int_param("vocab_size", 64, "Vocabulary V: keys come from [1, V/2), values from [V/2, V).", 8, 1000000),
      int_param("num_pairs", 4, "Key-value pairs P in each context.", 1, 100000),
      int_param("seq_len", 32, "Sequence length L; needs 2 P + 2 Q <= L.", 4, 1000000),
      int_param("num_queries", 0, "Queries Q after the context; 0 asks about every pair once.", 0, 100000),
      bool_param("query_at_end", false,
                 "One query, its key the last token and its label there (the seed's recall experiment; allows "
                 "model.equilibrium = \"pooled\"). Needs num_queries = 0 or 1 and 2 P + 1 <= L."),
  };
  return schema;
}

class AssociativeRecall final : public Task {
 public:
  AssociativeRecall(const Params& p, std::uint64_t seed)
      : vocab_(p.integer("vocab_size")),
        pairs_(p.integer("num_pairs")),
        seq_len_(p.integer("seq_len")),
        queries_(p.flag("query_at_end") ? 1 : p.integer("num_queries") == 0 ? pairs_ : p.integer("num_queries")),
        at_end_(p.flag("query_at_end")),
        seed_(seed),
        train_gen_(at::make_generator<at::CPUGeneratorImpl>(seed)),
        eval_seed_(held_out_seed()) {
    check(p);
  }

  // The keys' joint constraints, shared by the constructor and validation (TaskDefinition::check).
  static void check(const Params& p) {
    const std::int64_t vocab = p.integer("vocab_size"), pairs = p.integer("num_pairs"), seq_len = p.integer("seq_len");
    const bool at_end = p.flag("query_at_end");
    const std::int64_t queries = p.integer("num_queries") == 0 ? pairs : p.integer("num_queries");
    const std::int64_t keys = vocab / 2 - 1;
    if (at_end && p.integer("num_queries") > 1)
      throw Error("task.num_queries = " + std::to_string(p.integer("num_queries")) +
                  " cannot go with task.query_at_end = true, which asks one query at the last position; use 0 or 1");
    if (at_end && 2 * pairs + 1 > seq_len) {
      throw Error("task.seq_len = " + std::to_string(seq_len) + " is too short for " + std::to_string(pairs) +
                  " pairs (task.num_pairs) and a final query key (task.query_at_end); it needs at least " +
                  std::to_string(2 * pairs + 1));
    }
    if (pairs > keys) {
      throw Error("task.num_pairs = " + std::to_string(pairs) + " needs at least " + std::to_string(pairs) +
                  " distinct keys, but vocab_size = " + std::to_string(vocab) + " gives " + std::to_string(keys) +
                  "; raise task.vocab_size to at least " + std::to_string(2 * (pairs + 1)));
    }
    if (pairs > vocab - vocab / 2)
      throw Error("task.num_pairs exceeds the number of distinct values V/2 (task.vocab_size)");
    if (!at_end && 2 * pairs + 2 * queries > seq_len) {
      throw Error("task.seq_len = " + std::to_string(seq_len) + " is too short for " + std::to_string(pairs) +
                  " pairs (task.num_pairs) and " + std::to_string(queries) +
                  " queries (task.num_queries); it needs at least " + std::to_string(2 * pairs + 2 * queries));
    }
  }

  Batch train_batch(std::int64_t batch_size) override { return sample(batch_size, train_gen_); }

  void seek(std::int64_t step) override {
    train_gen_ = at::make_generator<at::CPUGeneratorImpl>(mix(seed_, static_cast<std::uint64_t>(step)));
  }

  void select_part(std::int64_t index, std::int64_t count) override {
    if (count < 1 || index < 0 || index >= count)
      throw Error("task part " + std::to_string(index) + " of " + std::to_string(count) + " does not exist");
    const std::int64_t half = vocab_ / 2;
    const std::int64_t keys = (half - 1) / count, values = (vocab_ - half) / count;
    if (pairs_ > keys || pairs_ > values) {
      throw Error("train.continual_tasks = " + std::to_string(count) + " leaves " + std::to_string(std::min(keys, values)) +
                  " keys/values per task, fewer than task.num_pairs = " + std::to_string(pairs_) +
                  "; raise task.vocab_size to at least " + std::to_string(2 * pairs_ * count + 2));
    }
    key_lo_ = 1 + index * keys;
    key_count_ = keys;
    value_lo_ = half + index * values;
    value_count_ = values;
  }

  Batch eval_batch(std::int64_t batch_size, std::int64_t index) override {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(eval_seed_ + static_cast<std::uint64_t>(index) * 7919u);
    return sample(batch_size, gen);
  }

  std::int64_t vocab_size() const override { return vocab_; }
  double chance_accuracy() const override { return 1.0 / static_cast<double>(value_count_); }

 private:
  // Eval batches depend only on the task's shape, so every trial of a study is scored on the same
  // held-out data; the offset keeps them apart from any training stream (seeds are small ints).
  std::uint64_t held_out_seed() const {
    return 0x9E3779B97F4A7C15ull ^ (static_cast<std::uint64_t>(vocab_) * 1000003u + pairs_ * 10007u +
                                    seq_len_ * 101u + queries_ + (at_end_ ? 0x5bd1e995u : 0u));
  }

  // SplitMix64 of the seed and the step: independent streams for neighbouring steps and seeds.
  static std::uint64_t mix(std::uint64_t seed, std::uint64_t step) {
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + step + 0x632BE59BD9B4E019ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }

  // A random choice of k distinct items from [0, n) for each of B rows: [B, k] int64.
  static at::Tensor distinct_per_row(std::int64_t batch, std::int64_t n, std::int64_t k, at::Generator& gen) {
    return at::rand({batch, n}, gen).argsort(/*dim=*/1, /*descending=*/false).slice(1, 0, k);
  }

  Batch sample(std::int64_t batch, at::Generator& gen) const {
    // keys: [B, P] in [1, V/2), values: [B, P] in [V/2, V), distinct within a row (within the
    // selected part's slices of those ranges).
    auto keys = distinct_per_row(batch, key_count_, pairs_, gen) + key_lo_;
    auto values = distinct_per_row(batch, value_count_, pairs_, gen) + value_lo_;

    auto inputs = at::zeros({batch, seq_len_}, at::kLong);
    auto targets = at::full({batch, seq_len_}, kIgnoreIndex, at::kLong);
    // Context: k1 v1 k2 v2 ... at positions 0..2P-1.
    auto context = at::stack({keys, values}, 2).reshape({batch, 2 * pairs_});
    inputs.slice(1, 0, 2 * pairs_).copy_(context);

    if (at_end_) {
      // One query: its key is the last token, its label there ([B, 1] each).
      auto asked = distinct_per_row(batch, pairs_, 1, gen);
      inputs.select(1, seq_len_ - 1).copy_(keys.gather(1, asked).squeeze(1));
      targets.select(1, seq_len_ - 1).copy_(values.gather(1, asked).squeeze(1));
      return {inputs, targets};
    }
    // Queries: which pair each asks about ([B, Q]) and which 2-token slot of the query region
    // holds it ([B, Q], distinct).
    const std::int64_t slots = (seq_len_ - 2 * pairs_) / 2;
    at::Tensor asked = queries_ <= pairs_ ? distinct_per_row(batch, pairs_, queries_, gen)
                                          : at::randint(pairs_, {batch, queries_}, gen);
    auto slot = distinct_per_row(batch, slots, queries_, gen);
    auto key_pos = 2 * pairs_ + 2 * slot;  // [B, Q]
    auto query_keys = keys.gather(1, asked);
    auto query_values = values.gather(1, asked);
    inputs.scatter_(1, key_pos, query_keys);
    inputs.scatter_(1, key_pos + 1, query_values);  // teacher forcing: the answer follows its key
    targets.scatter_(1, key_pos, query_values);
    return {inputs, targets};
  }

  std::int64_t vocab_, pairs_, seq_len_, queries_;
  bool at_end_;
  // The selected part's key range [key_lo_, key_lo_ + key_count_) and value range (the whole task
  // by default).
  std::int64_t key_lo_ = 1, key_count_ = vocab_ / 2 - 1, value_lo_ = vocab_ / 2, value_count_ = vocab_ - vocab_ / 2;
  std::uint64_t seed_;
  at::Generator train_gen_;
  std::uint64_t eval_seed_;
};

}  // namespace

MHD_REGISTER_TASK(associative_recall, [] {
  return TaskDefinition{"associative_recall",
                        "Multi-query associative recall: key-value pairs, then queries whose values the model recalls.",
                        associative_recall_schema(),
                        [](const Params& params, std::uint64_t seed) -> std::unique_ptr<Task> {
                          return std::make_unique<AssociativeRecall>(params, seed);
                        },
                        [](const Params& params) { AssociativeRecall::check(params); },
                        [](const Params& params) { return params.flag("query_at_end"); }};
});

}  // namespace mhd
