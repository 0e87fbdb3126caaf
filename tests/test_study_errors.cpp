// Study files that must not run: every error names FILE:LINE:COL and says what was expected, for
// single keys, keys that cannot go together (a task's or a plugin's own), and missing files.
#include <gtest/gtest.h>

#include <string>

#include "mhd/error.h"
#include "study/study.h"
#include "study_test_support.h"

namespace {

using namespace study_test;


struct BadCase {
  const char* file;
  int line;
  int column;
  const char* fragment;
};

class BadStudy : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadStudy, ReportsPositionAndMessage) {
  const BadCase& c = GetParam();
  const std::string path = kData + "bad/" + c.file;
  try {
    mhd::load_study(path, registry());
    FAIL() << c.file << " should not load";
  } catch (const mhd::StudyError& e) {
    const std::string what = e.what();
    const std::string prefix = path + ":" + std::to_string(c.line) + ":" + std::to_string(c.column) + ": error: ";
    EXPECT_EQ(what.rfind(prefix, 0), 0u) << "expected prefix " << prefix << "\n got " << what;
    EXPECT_NE(what.find(c.fragment), std::string::npos) << "expected '" << c.fragment << "' in\n " << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadStudy,
    ::testing::Values(
        BadCase{"syntax_error.toml", 6, 13, "TOML syntax error"},
        BadCase{"unknown_key.toml", 9, 6,
                "unknown key 'solver.mm' for solver plugin 'anderson'; did you mean 'm'? (valid keys: plugin, "
                "max_iter, tol, warm_start, m, lam, beta, fallback)"},
        BadCase{"wrong_type.toml", 8, 11, "model.d_model: expected integer, got string \"big\""},
        BadCase{"float_for_int.toml", 8, 8,
                "memory.size: expected integer, got float 1000.0 (write integers without a decimal point"},
        BadCase{"out_of_range.toml", 9, 5, "solver.m: must be in [1, 64], got 0"},
        BadCase{"unknown_plugin.toml", 8, 10,
                "memory.plugin: unknown memory plugin 'hopfeld'; did you mean 'hopfield'? (known: hopfield"},
        BadCase{"unknown_task.toml", 5, 8,
                "task.kind: unknown task kind 'associative_recal'; did you mean 'associative_recall'? (known: "
                "associative_recall"},
        BadCase{"missing_task_kind.toml", 4, 1, "missing required key task.kind (one of 'associative_recall'"},
        BadCase{"duplicate_variant.toml", 12, 8, "variant.name: duplicate variant name 'fp'"},
        BadCase{"bad_sweep_path.toml", 8, 1,
                "bad sweep path 'memroy.size': unknown section 'memroy'; did you mean 'memory'?"},
        BadCase{"empty_sweep.toml", 8, 17, "sweep 'memory.size': the array is empty"},
        BadCase{"sweep_out_of_range.toml", 8, 22,
                "memory.size: must be >= 1, got 0 (in variant 'base' at sweep point memory.size=0)"},
        BadCase{"missing_name.toml", 2, 1, "missing required key study.name"},
        BadCase{"unknown_table.toml", 7, 2, "unknown table 'solvr'; did you mean 'solver'?"},
        BadCase{"variant_unknown_key.toml", 9, 47,
                "unknown key 'solver.dampning' for solver plugin 'fixed_point'; did you mean 'damping'? (valid "
                "keys: plugin, max_iter, tol, warm_start, damping) (in variant 'fp')"},
        BadCase{"sweep_key_not_in_variant_plugin.toml", 15, 15,
                "unknown key 'solver.m' for solver plugin 'fixed_point'"},
        BadCase{"duplicate_seed.toml", 3, 16, "study.seeds: seed 0 is listed twice"},
        BadCase{"unknown_optimization.toml", 7, 16,
                "optimizations.contractve: unknown optimization plugin 'contractve'; did you mean 'contractive'?"},
        BadCase{"variant_study.toml", 9, 1, "a variant cannot change [study]"}),
    [](const ::testing::TestParamInfo<BadCase>& param_info) {
      std::string name = param_info.param.file;
      return name.substr(0, name.find('.'));
    });

TEST(StudyErrors, InlineCases) {
  // A key's value in a variant's inline table points at the value.
  EXPECT_NE(error_of(kHead + "[[variant]]\nname = \"v\"\nmodel = { d_model = 2 }\n")
                .find("inline.toml:8:21: error: model.d_model: must be in [4, 8192], got 2 (in variant 'v')"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[[variant]]\ndescription = \"no name\"\n").find("missing required key variant.name"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[variant]\nname = \"v\"\n").find("must be an array of tables"), std::string::npos);
  EXPECT_NE(error_of(kHead + "[[variant]]\nname = \"base\"\n").find("'base' is the name of the base configuration"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[sweep]\n\"memory\" = [1]\n").find("bad sweep path 'memory': expected section.key"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[sweep]\n\"memory.size\" = 64\n").find("expected an array of values"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[sweep]\n\"memory.size\" = [64, 64]\n").find("integer 64 is listed twice"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[sweep]\n\"study.seeds\" = [1]\n").find("[study] cannot be swept"), std::string::npos);
  EXPECT_NE(error_of(kHead + "[study2]\n").find("unknown table 'study2'; did you mean 'study'?"), std::string::npos);
  EXPECT_NE(error_of("seeds = [1]\n" + kHead).find("inline.toml:1:1: error: unknown top-level key 'seeds'"),
            std::string::npos);
  EXPECT_NE(error_of("[task]\nkind = \"associative_recall\"\n").find("inline.toml:1:1: error: missing [study] table"),
            std::string::npos);
  EXPECT_NE(error_of("[study]\nname = \"t\"\n").find("missing [task] table"), std::string::npos);
  EXPECT_NE(error_of("[study]\nname = \"a/b\"\n[task]\nkind = \"associative_recall\"\n").find("must not contain '/'"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[backward]\nsolver = \"broyden\"\n")
                .find("inline.toml:7:10: error: backward.solver: unknown solver plugin 'broyden'"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[train]\nobjective = 3\n").find("train.objective: expected a table of loss weights"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[train.objective]\nenrgy = 1\n")
                .find("unknown key 'train.objective.enrgy'; did you mean 'energy'?"),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[model]\ngate = \"relu\"\n").find("model.gate: must be one of \"sigmoid\", \"tanh\", got \"relu\""),
            std::string::npos);
  EXPECT_NE(error_of(kHead + "[study.extra]\n").find("unknown key 'study.extra'"), std::string::npos);
  EXPECT_NE(error_of(kHead.substr(0, kHead.find("[task]")) + "seeds = []\n[task]\nkind = \"associative_recall\"\n")
                .find("study.seeds: must list at least one seed"),
            std::string::npos);
}

// Keys that are each valid but cannot go together in [task] fail validation, not the trial's start,
// at the key as this trial wrote it: the base's, a variant's or a sweep's element.
TEST(StudyErrors, TaskCrossKeyConstraintsPointAtTheKeyTheTrialWrote) {
  EXPECT_NE(error_of(kHead + "num_pairs = 12\nseq_len = 24\n")
                .find("inline.toml:7:11: error: task.seq_len = 24 is too short for 12 pairs"),
            std::string::npos);
  const std::string variant =
      error_of(kHead + "num_pairs = 12\nseq_len = 48\n[[variant]]\nname = \"short\"\ntask = { seq_len = 24 }\n");
  EXPECT_NE(variant.find("inline.toml:10:20: error: task.seq_len = 24 is too short"), std::string::npos) << variant;
  EXPECT_NE(variant.find("(in variant 'short')"), std::string::npos) << variant;
  const std::string sweep = error_of(kHead + "seq_len = 24\n[sweep]\n\"task.num_pairs\" = [4, 12]\n");
  EXPECT_NE(sweep.find("inline.toml:8:24: error: task.seq_len = 24 is too short for 12 pairs"), std::string::npos)
      << sweep;
  EXPECT_NE(sweep.find("at sweep point task.num_pairs=12"), std::string::npos) << sweep;
  EXPECT_NE(error_of(kHead + "vocab_size = 8\nnum_pairs = 4\nseq_len = 64\n")
                .find("inline.toml:7:13: error: task.num_pairs = 4 needs at least 4 distinct keys"),
            std::string::npos);
  EXPECT_EQ(error_of(kHead + "num_pairs = 12\nseq_len = 48\n"), "");  // exactly long enough
}

TEST(StudyErrors, MissingFileIsAClearError) {
  try {
    mhd::load_study(kData + "does_not_exist.toml", registry());
    FAIL();
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("does_not_exist.toml: cannot read study file"), std::string::npos);
  }
}

// A plugin's own cross-key constraints (Manifest::check) fail validation at the key, for the base, a
// variant or a sweep point, instead of each trial at its start.
TEST(StudyErrors, PluginCrossKeyConstraintsPointAtTheKey) {
  mhd::PluginRegistry& r = registry();
  r.load_file(MHD_PLUGIN_PRODUCT_KEY);
  r.load_file(MHD_PLUGIN_ATTENTION);
  r.load_file(MHD_PLUGIN_LEARNED);
  const std::string square = error_of(kHead + "[memory]\nplugin = \"product_key\"\nsize = 250\n");
  EXPECT_NE(square.find("inline.toml:8:8: error: memory: product_key: size = 250 is not a perfect square "
                        "(nearest: 225 or 256)"),
            std::string::npos)
      << square;
  const std::string sweep =
      error_of(kHead + "[memory]\nplugin = \"product_key\"\nsize = 256\n[sweep]\n\"memory.top_k\" = [4, 32]\n");
  EXPECT_NE(sweep.find("inline.toml:10:22: error: memory: product_key: top_k = 32 exceeds the 16 sub-keys"),
            std::string::npos)
      << sweep;
  EXPECT_NE(sweep.find("at sweep point memory.top_k=32"), std::string::npos) << sweep;
  const std::string heads = error_of(kHead + "[model]\nd_model = 64\n[backbone]\nplugin = \"attention\"\n"
                                             "[[variant]]\nname = \"three\"\nbackbone = { n_heads = 3 }\n");
  EXPECT_NE(heads.find("inline.toml:12:24: error: backbone: attention: n_heads = 3 does not divide d_model = 64"),
            std::string::npos)
      << heads;
  const std::string missing =
      error_of(kHead + "[solver]\nplugin = \"learned\"\npath = \"/nonexistent/acc.pt\"\n");
  EXPECT_NE(missing.find("inline.toml:8:8: error: solver: learned: path: accelerator file '/nonexistent/acc.pt' "
                         "does not exist"),
            std::string::npos)
      << missing;
  EXPECT_EQ(error_of(kHead + "[memory]\nplugin = \"product_key\"\nsize = 256\ntop_k = 16\n"), "");
}

}  // namespace
