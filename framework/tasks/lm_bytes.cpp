// Byte-level language modelling: next-byte prediction on a text file.
//
//   vocabulary: the 256 byte values
//   the file:   bytes b_0 .. b_{N-1}; the first (1 - holdout) N are for training, the rest held out
//   inputs:     b_o .. b_{o+L-1}   targets: b_{o+1} .. b_{o+L}   (a target at every position)
//
// Training windows start at uniformly random offsets in the training part; held-out batch `index`
// reads consecutive windows of the held-out part (wrapping around), so a few eval batches cover it
// and its loss in nats / ln 2 is the bits per byte. Chance accuracy is 1 / (distinct bytes in the
// file): guessing uniformly among the bytes that occur.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"
#include "tasks/task.h"

namespace mhd {

namespace {

const ParamSchema& lm_bytes_schema() {
  static const ParamSchema schema{
      string_param("path", "", "Text file to model, relative to the study file's folder (any bytes; vocabulary 256)."),
      int_param("seq_len", 64, "Sequence length L: each window has L inputs and L next-byte targets.", 2, 1000000),
      float_param("holdout", 0.1, "Fraction of the file at its end held out for evaluation.", 0.01, 0.5),
  };
  return schema;
}

class LmBytes final : public Task {
 public:
  LmBytes(const Params& p, std::uint64_t seed) : seq_len_(p.integer("seq_len")), seed_(seed) {
    const std::string& path = p.text("path");
    if (path.empty()) throw Error("task.path: lm_bytes needs a text file, e.g. path = \"data/tiny_corpus.txt\"");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("task.path: cannot read \"" + path + "\"");
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto n = static_cast<std::int64_t>(bytes.size());
    data_ = at::empty({n}, at::kByte);
    std::copy(bytes.begin(), bytes.end(), data_.data_ptr<std::uint8_t>());
    data_ = data_.to(at::kLong);

    train_end_ = check_size(p, n);
    distinct_ = static_cast<std::int64_t>(std::set<char>(bytes.begin(), bytes.end()).size());
  }

  // Validation (TaskDefinition::check): the checks the constructor makes, from the file's size alone.
  static void check(const Params& p) {
    const std::string& path = p.text("path");
    if (path.empty()) throw Error("task.path: lm_bytes needs a text file, e.g. path = \"data/tiny_corpus.txt\"");
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw Error("task.path: cannot read \"" + path + "\"");
    check_size(p, static_cast<std::int64_t>(size));
  }

  Batch train_batch(std::int64_t batch_size) override {
    // One generator per batch number, so the stream is a function of (seed, batch number) only.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix(seed_, next_batch_++));
    auto offsets = at::randint(train_end_ - seq_len_, {batch_size}, gen);  // [B] in [0, train_end - L - 1]
    return windows(offsets);
  }

  Batch eval_batch(std::int64_t batch_size, std::int64_t index) override {
    // Consecutive windows of the held-out part: row b of batch i starts at (i B + b) L (wrapping).
    const std::int64_t starts = (static_cast<std::int64_t>(data_.size(0)) - train_end_) - seq_len_;  // >= 1
    auto k = at::arange(index * batch_size, (index + 1) * batch_size, at::kLong);                  // [B]
    return windows(train_end_ + at::remainder(k * seq_len_, starts));
  }

  void seek(std::int64_t step) override { next_batch_ = static_cast<std::uint64_t>(step); }

  std::int64_t vocab_size() const override { return 256; }
  double chance_accuracy() const override { return 1.0 / static_cast<double>(distinct_); }

 private:
  // Where the held-out part of an n-byte file starts; throws when a part is shorter than a window.
  static std::int64_t check_size(const Params& p, std::int64_t n) {
    const std::int64_t train_end = n - static_cast<std::int64_t>(static_cast<double>(n) * p.real("holdout"));
    // Each part must hold at least one window of L + 1 bytes (inputs and their targets).
    const std::int64_t window = p.integer("seq_len") + 1;
    if (train_end < window || n - train_end < window) {
      const auto needed = static_cast<std::int64_t>(static_cast<double>(window) / p.real("holdout")) + window;
      throw Error("task.path: \"" + p.text("path") + "\" has " + std::to_string(n) + " bytes, too few for task.seq_len = " +
                  std::to_string(p.integer("seq_len")) + " and task.holdout = " + std::to_string(p.real("holdout")) +
                  " (needs at least " + std::to_string(needed) + ")");
    }
    return train_end;
  }

  // SplitMix64 of the seed and the batch number: independent streams for neighbouring values.
  static std::uint64_t mix(std::uint64_t seed, std::uint64_t n) {
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + n + 0x632BE59BD9B4E019ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }

  // offsets: [B] -> inputs data[o : o+L], targets data[o+1 : o+L+1], both [B, L].
  Batch windows(const at::Tensor& offsets) const {
    auto index = offsets.unsqueeze(1) + at::arange(seq_len_, at::kLong).unsqueeze(0);  // [B, L]
    return {data_.index_select(0, index.reshape(-1)).view(index.sizes()),
            data_.index_select(0, (index + 1).reshape(-1)).view(index.sizes())};
  }

  std::int64_t seq_len_;
  std::uint64_t seed_;
  std::uint64_t next_batch_ = 0;
  at::Tensor data_;  // [N] int64 byte values
  std::int64_t train_end_ = 0;
  std::int64_t distinct_ = 1;
};

}  // namespace

MHD_REGISTER_TASK(lm_bytes, [] {
  return TaskDefinition{"lm_bytes", "Byte-level language modelling of a text file: the next byte at every position.",
                        lm_bytes_schema(), [](const Params& params, std::uint64_t seed) -> std::unique_ptr<Task> {
                          return std::make_unique<LmBytes>(params, seed);
                        },
                        [](const Params& params) { LmBytes::check(params); }};
});

}  // namespace mhd
