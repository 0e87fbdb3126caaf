// Task `lm_bytes`: next-byte windows of a text file, a held-out tail, and its path resolved from
// the study file's folder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <unistd.h>

#include "mhd/error.h"
#include "study/study.h"
#include "tasks/task.h"
#include "test_plugins_loaded.h"

namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  auto dir = fs::temp_directory_path() / ("mhd_lm_bytes_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

// 900 training bytes cycling through "abc", then 100 held-out bytes cycling through "xyz".
std::string write_corpus() {
  std::string text;
  for (int i = 0; i < 900; ++i) text += "abc"[i % 3];
  for (int i = 0; i < 100; ++i) text += "xyz"[i % 3];
  const auto path = (temp_dir() / "corpus.txt").string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

mhd::Params params(const std::string& path, std::int64_t seq_len = 8) {
  return mhd::validate_params(mhd::task_schema("lm_bytes"), {{"path", path}, {"seq_len", seq_len}}, "task");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

TEST(LmBytes, TargetsAreTheNextByteAtEveryPosition) {
  auto task = mhd::make_task("lm_bytes", params(write_corpus()), 1);
  EXPECT_EQ(task->vocab_size(), 256);
  EXPECT_DOUBLE_EQ(task->chance_accuracy(), 1.0 / 6) << "six distinct bytes";
  auto b = task->train_batch(5);
  ASSERT_EQ(b.inputs.sizes(), (std::vector<std::int64_t>{5, 8}));
  EXPECT_TRUE(b.targets.slice(1, 0, 7).equal(b.inputs.slice(1, 1, 8))) << "targets are inputs shifted by one";
  // The training part is the cycle a b c: each target follows its input in that cycle.
  EXPECT_TRUE(b.targets.equal((b.inputs - 'a' + 1).remainder(3) + 'a'));
}

TEST(LmBytes, HeldOutBatchesComeFromTheTailAndAreFixed) {
  auto task = mhd::make_task("lm_bytes", params(write_corpus()), 1);
  for (std::int64_t i = 0; i < 4; ++i) {
    auto b = task->eval_batch(3, i);
    EXPECT_TRUE(b.inputs.ge('x').all().item<bool>() && b.targets.ge('x').all().item<bool>()) << "batch " << i;
    EXPECT_TRUE(b.inputs.equal(task->eval_batch(3, i).inputs));
  }
  auto first = task->eval_batch(2, 0);
  EXPECT_FALSE(first.inputs[0].equal(first.inputs[1])) << "consecutive windows, not one repeated";
}

TEST(LmBytes, SeekMakesTheBatchAFunctionOfSeedAndStep) {
  const auto path = write_corpus();
  auto a = mhd::make_task("lm_bytes", params(path), 4), b = mhd::make_task("lm_bytes", params(path), 4);
  a->seek(1);
  a->train_batch(4);
  const auto second = a->train_batch(4).inputs;
  b->seek(2);
  EXPECT_TRUE(b->train_batch(4).inputs.equal(second));
  auto other_seed = mhd::make_task("lm_bytes", params(path), 5);
  other_seed->seek(2);
  EXPECT_FALSE(other_seed->train_batch(4).inputs.equal(second));
}

TEST(LmBytes, MissingOrTooSmallFilesFailInOneLine) {
  const auto missing = (temp_dir() / "absent.txt").string();
  EXPECT_NE(error_of([&] { mhd::make_task("lm_bytes", params(missing), 0); }).find(missing), std::string::npos);
  const auto tiny = (temp_dir() / "tiny.txt").string();
  std::ofstream(tiny) << "hello";
  const std::string e = error_of([&] { mhd::make_task("lm_bytes", params(tiny), 0); });
  EXPECT_NE(e.find("too few"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

TEST(LmBytes, StudyPathIsRelativeToTheStudyFolder) {
  const auto corpus = write_corpus();
  const std::string study_file = (temp_dir() / "lm.toml").string();
  const std::string text = "[study]\nname = \"lm\"\n[task]\nkind = \"lm_bytes\"\npath = \"corpus.txt\"\nseq_len = 8\n"
                           "[model]\nd_model = 8\n[backbone]\nplugin = \"mamba\"\n[memory]\nplugin = \"hopfield\"\n"
                           "[solver]\nplugin = \"anderson\"\n";
  auto study = mhd::parse_study(text, study_file, registry_with_all_plugins());
  EXPECT_EQ(fs::path(study.trials.front().task.text("path")), fs::path(corpus));
  std::string bad = text;
  bad.replace(bad.find("corpus.txt"), 10, "nothere.txt");
  const std::string e = error_of([&] { mhd::parse_study(bad, study_file, registry_with_all_plugins()); });
  EXPECT_NE(e.find("lm.toml:5:"), std::string::npos) << e;
  EXPECT_NE(e.find("nothere.txt"), std::string::npos) << e;
  // A file too short for a variant's seq_len fails validation at that variant's key, not the trial.
  const std::string long_window =
      error_of([&] { mhd::parse_study(text + "[[variant]]\nname = \"long\"\ntask = { seq_len = 100000 }\n", study_file,
                                      registry_with_all_plugins()); });
  EXPECT_NE(long_window.find("lm.toml:17:20: error: task.path:"), std::string::npos) << long_window;
  EXPECT_NE(long_window.find("too few for task.seq_len = 100000"), std::string::npos) << long_window;
  EXPECT_NE(long_window.find("(in variant 'long')"), std::string::npos) << long_window;
}

}  // namespace
