// Checkpoints (checkpoint.h): a save/load round trip restores the model, its memory bank and the
// optimizer exactly; bad files fail with one line naming the file.
#include <gtest/gtest.h>

#include <cstdio>
#include <unistd.h>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "train/checkpoint.h"
#include "mhd/error.h"
#include "mhd/memory.h"
#include "config/model_options.h"
#include "core/model.h"
#include "study/study.h"
#include "test_plugins_loaded.h"

namespace {

namespace fs = std::filesystem;

const char* kStudy = R"(
[study]
name = "checkpoint_test"
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
[backbone]
plugin = "mamba"
d_state = 4
[memory]
plugin = "hopfield"
size = 8
[solver]
plugin = "anderson"
max_iter = 30
tol = 1e-6
[train]
steps = 3
)";

mhd::TrialConfig config(const std::string& extra = "") {
  return mhd::parse_study(std::string(kStudy) + extra, "checkpoint_test.toml", registry_with_all_plugins())
      .trials.front();
}

struct Trial {
  std::shared_ptr<mhd::UnifiedModel> model;
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

Trial make_trial(const mhd::TrialConfig& c, std::uint64_t seed) {
  torch::manual_seed(seed);
  Trial t;
  t.model = std::make_shared<mhd::UnifiedModel>(mhd::model_options(c, 16), registry_with_all_plugins());
  t.optimizer = std::make_unique<torch::optim::AdamW>(t.model->parameters(), torch::optim::AdamWOptions(1e-2));
  return t;
}

at::Tensor batch(std::int64_t step) {
  at::manual_seed(100 + step);
  return at::randint(16, {3, 8}, at::kLong);
}

void train_step(Trial& t, std::int64_t step) {
  t.optimizer->zero_grad();
  t.model->forward(batch(step)).logits.pow(2).mean().backward();
  t.optimizer->step();
}

std::string temp_path(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("mhd_ckpt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

void expect_same_parameters(mhd::UnifiedModel& a, mhd::UnifiedModel& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) EXPECT_TRUE(item.value().equal(pb[item.key()])) << item.key();
}

// The error's text, or "" when none was thrown.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, RoundTripContinuesTrainingExactly) {
  const auto c = config();
  Trial a = make_trial(c, 1);
  for (std::int64_t s = 0; s < 2; ++s) train_step(a, s);
  const std::string path = temp_path("round_trip.pt");
  mhd::save_checkpoint(path, c, 2, *a.model, a.optimizer.get());

  Trial b = make_trial(c, 2);  // other initial weights: everything must come from the file
  EXPECT_EQ(mhd::load_checkpoint(path, *b.model, b.optimizer.get(), &c), 2);
  expect_same_parameters(*a.model, *b.model);
  a.model->eval();
  b.model->eval();
  EXPECT_TRUE(a.model->forward(batch(9)).logits.equal(b.model->forward(batch(9)).logits));

  // AdamW's moments and step counts came back: one more step is identical on both.
  a.model->train();
  b.model->train();
  train_step(a, 2);
  train_step(b, 2);
  expect_same_parameters(*a.model, *b.model);

  // Without the optimizer state the next step differs (the test would notice a lost state).
  Trial fresh_opt = make_trial(c, 3);
  mhd::load_checkpoint(path, *fresh_opt.model, nullptr);
  train_step(fresh_opt, 2);
  EXPECT_FALSE(fresh_opt.model->named_parameters()["head.weight"].equal(a.model->named_parameters()["head.weight"]));

  auto info = mhd::read_checkpoint_info(path);
  EXPECT_EQ(info.step, 2);
  EXPECT_EQ(info.config_json, c.to_json());
}

TEST(Checkpoint, MemoryBankContentsAndQueuePositionSurvive) {
  const auto c = config();
  Trial a = make_trial(c, 1);
  mhd::Memory& memory = *a.model->dynamics().memory();
  at::manual_seed(5);
  EXPECT_EQ(memory.write(at::randn({3, 16})), 3);  // slots 0..2; the next write goes to slot 3
  const std::string path = temp_path("memory.pt");
  mhd::save_checkpoint(path, c, 0, *a.model, nullptr);

  Trial b = make_trial(c, 2);
  mhd::load_checkpoint(path, *b.model, nullptr);
  mhd::Memory& restored = *b.model->dynamics().memory();
  auto bank = [](mhd::Memory& m) { return m.named_buffers()["patterns"]; };
  EXPECT_TRUE(bank(restored).equal(bank(memory)));
  EXPECT_EQ(restored.size(), memory.size());
  EXPECT_EQ(restored.named_buffers()["write_count"].item<std::int64_t>(), 3);
  const auto next = at::ones({1, 16});
  restored.write(next);
  EXPECT_TRUE(bank(restored)[3].equal(next[0])) << "the queue continues at slot 3";
}

TEST(Checkpoint, ModelRebuiltFromTheFileAlone) {
  const auto c = config();
  Trial a = make_trial(c, 1);
  train_step(a, 0);
  const std::string path = temp_path("rebuild.pt");
  mhd::save_checkpoint(path, c, 1, *a.model, a.optimizer.get());
  auto loaded = mhd::load_model_from_checkpoint(path, registry_with_all_plugins());
  EXPECT_EQ(loaded.step, 1);
  EXPECT_EQ(loaded.config->hash(), c.hash());
  EXPECT_FALSE(loaded.model->is_training());
  a.model->eval();
  EXPECT_TRUE(loaded.model->forward(batch(4)).logits.equal(a.model->forward(batch(4)).logits));
}

TEST(Checkpoint, BadFilesFailWithOneLineNamingTheFile) {
  const auto c = config();
  Trial a = make_trial(c, 1);
  const std::string good = temp_path("good.pt");
  mhd::save_checkpoint(good, c, 0, *a.model, a.optimizer.get());

  const std::string missing = temp_path("missing.pt");
  std::string e = error_of([&] { mhd::read_checkpoint_info(missing); });
  EXPECT_NE(e.find(missing), std::string::npos) << e;
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;

  // Truncated: the first half of a valid file.
  const std::string truncated = temp_path("truncated.pt");
  {
    std::ifstream in(good, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  e = error_of([&] { mhd::load_checkpoint(truncated, *a.model, nullptr); });
  EXPECT_NE(e.find(truncated), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << "one line: " << e;

  const std::string garbage = temp_path("garbage.pt");
  std::ofstream(garbage) << "not a checkpoint at all\n";
  e = error_of([&] { mhd::read_checkpoint_info(garbage); });
  EXPECT_NE(e.find(garbage), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << "one line: " << e;
}

TEST(Checkpoint, ConfigurationMismatchIsRefused) {
  const auto c = config();
  Trial a = make_trial(c, 1);
  const std::string path = temp_path("mismatch.pt");
  mhd::save_checkpoint(path, c, 0, *a.model, a.optimizer.get());

  // Another shape: named tensor, both shapes.
  auto c32 = c;
  c32.model.set("d_model", std::int64_t{32});
  Trial b = make_trial(c32, 1);
  std::string e = error_of([&] { mhd::load_checkpoint(path, *b.model, nullptr); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("embedding.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[16, 16]"), std::string::npos) << e;

  // Same shapes, other configuration: refused when the caller names its configuration.
  auto other = c;
  other.solve.set("max_iter", std::int64_t{31});
  e = error_of([&] { mhd::load_checkpoint(path, *a.model, nullptr, &other); });
  EXPECT_NE(e.find("another configuration"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] { mhd::load_checkpoint(path, *a.model, nullptr, &c); }), "");

  // No memory in the model, one in the file: the extra tensors are named.
  auto no_memory = c;
  no_memory.model.set("use_memory", false);
  Trial d = make_trial(no_memory, 1);
  e = error_of([&] { mhd::load_checkpoint(path, *d.model, nullptr); });
  EXPECT_NE(e.find("memory.patterns"), std::string::npos) << e;
}

}  // namespace
