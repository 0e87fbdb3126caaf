// A task kind written outside framework/tasks/, in one file, to show what adding a task takes:
// a Task subclass and MHD_REGISTER_TASK. "copy": the second half of each sequence repeats the
// first half; the targets are the repeated tokens (CONTRIBUTING.md, "Adding a task").
#include <ATen/ATen.h>

#include "tasks/task.h"

namespace {

class CopyTask final : public mhd::Task {
 public:
  CopyTask(const mhd::Params& p, std::uint64_t seed)
      : vocab_(p.integer("vocab_size")), half_(p.integer("seq_len") / 2), seed_(seed) {}

  mhd::Batch train_batch(std::int64_t batch_size) override { return make(batch_size, seed_ * 7919 + step_++); }
  void seek(std::int64_t step) override { step_ = step; }
  mhd::Batch eval_batch(std::int64_t batch_size, std::int64_t index) override {
    return make(batch_size, 1000003 + static_cast<std::uint64_t>(index));
  }
  std::int64_t vocab_size() const override { return vocab_; }
  double chance_accuracy() const override { return 1.0 / static_cast<double>(vocab_); }

 private:
  mhd::Batch make(std::int64_t batch_size, std::uint64_t stream) const {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(stream);
    auto first = at::randint(vocab_, {batch_size, half_}, gen, at::kLong);  // [B, L/2]
    auto inputs = at::cat({first, first}, 1);                              // [B, L]
    auto targets = at::full_like(inputs, mhd::kIgnoreIndex);
    // Position t of the second half predicts token t + 1, which repeats first[t + 1 - L/2].
    using at::indexing::Slice;
    targets.index_put_({Slice(), Slice(half_ - 1, 2 * half_ - 1)}, first);
    return {inputs, targets};
  }

  std::int64_t vocab_, half_;
  std::uint64_t seed_;
  std::int64_t step_ = 0;
};

}  // namespace

MHD_REGISTER_TASK(copy, [] {
  return mhd::TaskDefinition{
      "copy",
      "Copy: the second half of each sequence repeats the first (a test task).",
      {mhd::int_param("vocab_size", 8, "Tokens 0..V-1.", 2, 1 << 20),
       mhd::int_param("seq_len", 16, "Sequence length (even): L/2 tokens, then the same again.", 4, 1 << 20)},
      [](const mhd::Params& params, std::uint64_t seed) -> std::unique_ptr<mhd::Task> {
        return std::make_unique<CopyTask>(params, seed);
      }};
});
