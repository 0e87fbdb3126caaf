// Adding a task is one file: tests/tasks/copy_task.cpp registers "copy" with MHD_REGISTER_TASK, and
// the study parser, the trainer and the catalogue see it with no other change.
#include <gtest/gtest.h>

#include "mhd/error.h"
#include "study/study.h"
#include "tasks/task.h"
#include "test_plugins_loaded.h"
#include "train/trainer.h"

namespace {

TEST(TaskCatalog, ATaskRegisteredInItsOwnFileIsKnownEverywhere) {
  const auto kinds = mhd::task_kinds();
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "copy"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "associative_recall"), kinds.end());
  EXPECT_EQ(mhd::task_schema("copy").size(), 2u);

  auto task = mhd::make_task("copy", mhd::Params::defaults(mhd::task_schema("copy")), 0);
  const auto batch = task->train_batch(3);
  ASSERT_EQ(batch.inputs.sizes(), (std::vector<std::int64_t>{3, 16}));
  // The labelled positions 7..14 predict the repeated tokens 1..8 of the first half... shifted by one:
  // target[t] = input[t + 1] wherever a target exists.
  const auto labelled = batch.targets != mhd::kIgnoreIndex;
  EXPECT_EQ(labelled.sum().item<std::int64_t>(), 3 * 8);
  using at::indexing::Slice;
  EXPECT_TRUE(batch.targets.index({Slice(), Slice(7, 15)}).equal(batch.inputs.index({Slice(), Slice(8, 16)})));
}

TEST(TaskCatalog, UnknownKindsGetADidYouMean) {
  try {
    mhd::task_schema("cpy");
    FAIL() << "an unknown task kind must throw";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'copy'"), std::string::npos) << e.what();
  }
}

TEST(TaskCatalog, AStudyOfTheNewKindValidatesAndTrains) {
  const std::string text = R"([study]
name = "copy_study"
threads = 1
[task]
kind = "copy"
vocab_size = 6
seq_len = 8
[model]
d_model = 16
n_layers = 1
deq = false
[backbone]
plugin = "mamba"
d_state = 4
[train]
steps = 3
batch = 4
eval_every = 0
eval_batches = 1
)";
  auto& registry = registry_with_all_plugins();
  const auto study = mhd::parse_study(text, "copy_study.toml", registry);
  ASSERT_EQ(study.trials.size(), 1u);
  EXPECT_EQ(study.trials[0].task_kind, "copy");
  EXPECT_THROW(mhd::parse_study(text + "\n[sweep]\n\"task.seq_len\" = [2]\n", "copy_study.toml", registry),
               mhd::StudyError)
      << "the kind's own schema bounds its keys (seq_len >= 4)";
  mhd::MetricSink sink;
  double last_loss = -1;
  sink.metric = [&](std::int64_t, const std::string& name, double value) {
    if (name == "loss") last_loss = value;
  };
  const auto result = mhd::train_trial(study.trials[0], registry, sink);
  EXPECT_EQ(result.status, mhd::TrialStatus::Done) << result.error;
  EXPECT_GT(last_loss, 0.0);
  EXPECT_DOUBLE_EQ(result.chance_accuracy, 1.0 / 6.0);
}

}  // namespace
