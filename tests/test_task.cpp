// Multi-query associative recall: the data is what the task promises.
#include <gtest/gtest.h>

#include <set>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "tasks/task.h"

namespace {

mhd::Params recall_params(std::int64_t vocab, std::int64_t pairs, std::int64_t seq_len, std::int64_t queries) {
  auto p = mhd::Params::defaults(mhd::task_schema("associative_recall"));
  p.set("vocab_size", vocab);
  p.set("num_pairs", pairs);
  p.set("seq_len", seq_len);
  p.set("num_queries", queries);
  return p;
}

TEST(AssociativeRecall, EveryLabelIsTheValuePairedWithItsKey) {
  auto task = mhd::make_task("associative_recall", recall_params(64, 6, 40, 5), 1);
  const auto batch = task->train_batch(16);
  ASSERT_EQ(batch.inputs.sizes(), (std::vector<std::int64_t>{16, 40}));
  ASSERT_EQ(batch.targets.sizes(), batch.inputs.sizes());
  auto in = batch.inputs.accessor<std::int64_t, 2>();
  auto tg = batch.targets.accessor<std::int64_t, 2>();
  for (std::int64_t b = 0; b < 16; ++b) {
    std::map<std::int64_t, std::int64_t> pairs;
    std::set<std::int64_t> values;
    for (std::int64_t i = 0; i < 6; ++i) {
      const auto key = in[b][2 * i], value = in[b][2 * i + 1];
      EXPECT_GE(key, 1);
      EXPECT_LT(key, 32);
      EXPECT_GE(value, 32);
      EXPECT_LT(value, 64);
      EXPECT_TRUE(pairs.emplace(key, value).second) << "keys are distinct within an example";
      EXPECT_TRUE(values.insert(value).second) << "values are distinct within an example";
    }
    int labelled = 0;
    for (std::int64_t t = 0; t < 40; ++t) {
      if (tg[b][t] == mhd::kIgnoreIndex) continue;
      ++labelled;
      ASSERT_GE(t, 12) << "no labels inside the context";
      ASSERT_TRUE(pairs.count(in[b][t])) << "a labelled position holds a key of the context";
      EXPECT_EQ(tg[b][t], pairs[in[b][t]]);
      EXPECT_EQ(in[b][t + 1], tg[b][t]) << "the answer follows its key (teacher forcing)";
    }
    EXPECT_EQ(labelled, 5);
  }
  EXPECT_DOUBLE_EQ(task->chance_accuracy(), 1.0 / 32);
}

TEST(AssociativeRecall, HeldOutBatchesAreFixedAndApartFromTraining) {
  auto a = mhd::make_task("associative_recall", recall_params(32, 4, 24, 0), 1);
  auto b = mhd::make_task("associative_recall", recall_params(32, 4, 24, 0), 99);
  EXPECT_TRUE(a->eval_batch(8, 0).inputs.equal(b->eval_batch(8, 0).inputs)) << "same held-out data for any seed";
  EXPECT_TRUE(a->eval_batch(8, 0).inputs.equal(a->eval_batch(8, 0).inputs));
  EXPECT_FALSE(a->eval_batch(8, 0).inputs.equal(a->eval_batch(8, 1).inputs));
  EXPECT_FALSE(a->train_batch(8).inputs.equal(a->eval_batch(8, 0).inputs));
  EXPECT_FALSE(a->train_batch(8).inputs.equal(b->train_batch(8).inputs)) << "training streams follow the seed";
}

TEST(AssociativeRecall, SameSeedSameStream) {
  auto a = mhd::make_task("associative_recall", recall_params(32, 4, 24, 0), 5);
  auto b = mhd::make_task("associative_recall", recall_params(32, 4, 24, 0), 5);
  EXPECT_TRUE(a->train_batch(8).inputs.equal(b->train_batch(8).inputs));
}

TEST(AssociativeRecall, ImpossibleShapesAreClearErrors) {
  try {
    mhd::make_task("associative_recall", recall_params(16, 4, 10, 4), 0);
    FAIL() << "seq_len too short must throw";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("task.seq_len = 10 is too short"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mhd::make_task("associative_recall", recall_params(8, 5, 64, 1), 0), mhd::Error);
  EXPECT_THROW(mhd::task_schema("copying"), mhd::Error);
}

}  // namespace
