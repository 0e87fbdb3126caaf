// Study files: parsing, validation with file positions, merge semantics and expansion.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unistd.h>

#include "config/sections.h"
#include "mhd/error.h"
#include "plugin_host/registry.h"
#include "study_test_support.h"
#include "test_plugins_loaded.h"
#include "study/study.h"
#include "tasks/task.h"

namespace fs = std::filesystem;

namespace {

using namespace study_test;

std::int64_t integer(const mhd::ParamValue& v) { return std::get<std::int64_t>(v); }
double real(const mhd::ParamValue& v) { return std::get<double>(v); }


// --- resolution and defaults ----------------------------------------------------------------

TEST(Study, MinimalStudyResolvesEveryDefault) {
  const auto study = mhd::load_study(kData + "good/minimal.toml", registry());
  EXPECT_EQ(study.name, "minimal");
  EXPECT_EQ(study.output, "results/minimal.sqlite");
  EXPECT_EQ(study.seeds, std::vector<std::int64_t>{0});
  EXPECT_EQ(study.variants, std::vector<std::string>{"base"});
  ASSERT_EQ(study.trials.size(), 1u);
  const auto& t = study.trials[0];
  EXPECT_EQ(t.study, "minimal");
  EXPECT_EQ(t.variant, "base");
  EXPECT_EQ(t.seed, 0);
  EXPECT_TRUE(t.sweep_point.empty());
  EXPECT_EQ(t.run.text("device"), "auto");
  EXPECT_EQ(t.run.integer("threads"), 0);

  // Every key of every framework table is present with its schema default.
  const std::pair<const mhd::Params*, const mhd::SectionSchema*> tables[] = {
      {&t.model, &mhd::model_section()},       {&t.energy, &mhd::energy_section()},
      {&t.backward, &mhd::backward_section()}, {&t.train, &mhd::train_section()},
      {&t.objective, &mhd::objective_section()}};
  for (const auto& [params, section] : tables) {
    EXPECT_EQ(params->values().size(), section->keys.size()) << section->name;
    for (const auto& spec : section->keys) {
      ASSERT_TRUE(params->has(spec.name)) << section->name << "." << spec.name;
      EXPECT_EQ(params->values().at(spec.name), spec.default_value) << section->name << "." << spec.name;
    }
  }
  EXPECT_EQ(t.solve.integer("max_iter"), 30);
  EXPECT_DOUBLE_EQ(t.solve.real("tol"), 1e-3);
  EXPECT_FALSE(t.solve.flag("warm_start"));
  EXPECT_EQ(t.solve.values().size(), mhd::solver_section().keys.size() - 1) << "every [solver] key but plugin";
  EXPECT_FALSE(t.solve.has("plugin"));

  // Plugins: the schema defaults, with each plugin's own defaults filled in.
  EXPECT_EQ(t.backbone.plugin, "mamba");
  EXPECT_EQ(t.backbone.params.integer("d_state"), 16);
  EXPECT_EQ(t.memory.plugin, "hopfield");
  EXPECT_EQ(t.memory.params.integer("size"), 1024);
  EXPECT_EQ(t.solver.plugin, "anderson");
  EXPECT_EQ(t.solver.params.values().size(), 4u);  // m, lam, beta, fallback
  EXPECT_EQ(t.solver.params.integer("m"), 5);
  EXPECT_EQ(t.backward_solver.plugin, "anderson");
  EXPECT_EQ(t.backward_solver.params.integer("m"), 5);
  EXPECT_TRUE(t.optimizations.empty());

  EXPECT_EQ(t.task_kind, "associative_recall");
  const auto& task_schema = mhd::task_schema("associative_recall");
  EXPECT_EQ(t.task.values().size(), task_schema.size());
  for (const auto& spec : task_schema) EXPECT_EQ(t.task.values().at(spec.name), spec.default_value) << spec.name;
}

TEST(Study, IntegersStayIntegersAndWidenToFloatKeys) {
  const auto study = parse(kHead + "[train]\nlr = 1\nsteps = 7\n[solver]\ntol = 0\n");
  const auto& t = study.trials[0];
  EXPECT_TRUE(std::holds_alternative<double>(t.train.values().at("lr")));
  EXPECT_EQ(t.train.real("lr"), 1.0);
  EXPECT_TRUE(std::holds_alternative<std::int64_t>(t.train.values().at("steps")));
  EXPECT_EQ(t.train.integer("steps"), 7);
  EXPECT_TRUE(std::holds_alternative<double>(t.solve.values().at("tol")));
}

TEST(Study, StudyKeysAndOutput) {
  const auto study = parse(R"(
[study]
name = "keys"
description = "about"
seeds = [3, 1]
output = "elsewhere/out.sqlite"
device = "cpu"
threads = 2
[task]
kind = "associative_recall"
)");
  EXPECT_EQ(study.description, "about");
  EXPECT_EQ(study.output, "elsewhere/out.sqlite") << "relative outputs stay relative to the working directory";
  EXPECT_EQ(study.seeds, (std::vector<std::int64_t>{3, 1}));
  ASSERT_EQ(study.trials.size(), 2u);
  EXPECT_EQ(study.trials[0].seed, 3);
  EXPECT_EQ(study.trials[1].seed, 1);
  EXPECT_EQ(study.trials[0].run.text("device"), "cpu");
  EXPECT_EQ(study.trials[0].run.integer("threads"), 2);
  EXPECT_NE(study.toml_text.find("description = \"about\""), std::string::npos) << "kept verbatim";
}

TEST(Study, PluginPathIsRelativeToTheStudyFile) {
  const fs::path dir = fs::temp_directory_path() / ("mhd_study_pp_" + std::to_string(::getpid()));
  fs::create_directories(dir / "extra");
  const std::string text = R"(
[study]
name = "pp"
plugin_path = ["extra"]
[task]
kind = "associative_recall"
)";
  const auto study = parse(text, (dir / "s.toml").string());
  ASSERT_EQ(study.plugin_path.size(), 1u);
  EXPECT_EQ(fs::path(study.plugin_path[0]), (dir / "extra").lexically_normal());

  const std::string missing = std::regex_replace(text, std::regex("extra"), "nowhere");
  try {
    parse(missing, (dir / "s.toml").string());
    FAIL() << "a missing plugin directory must be an error";
  } catch (const mhd::StudyError& e) {
    EXPECT_NE(std::string(e.what()).find(":4:16: error: study.plugin_path: \"nowhere\" is not a directory"),
              std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

// --- expansion, order, merging --------------------------------------------------------------

class Ablation : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { study_ = new mhd::Study(mhd::load_study(kData + "good/ablation.toml", registry())); }
  static void TearDownTestSuite() { delete study_; }
  static const mhd::TrialConfig& first(const std::string& variant) {
    for (const auto& t : study_->trials)
      if (t.variant == variant) return t;
    throw std::runtime_error("no trial of variant " + variant);
  }
  static mhd::Study* study_;
};
mhd::Study* Ablation::study_ = nullptr;

TEST_F(Ablation, ExpandsVariantsTimesSweepPointsTimesSeeds) {
  const auto& s = *study_;
  EXPECT_EQ(s.variants, (std::vector<std::string>{"base", "fixed_point", "big_memory"}));
  EXPECT_EQ(s.variant_descriptions, (std::vector<std::string>{"", "plain iteration", ""}));
  EXPECT_EQ(s.sweep_axes, (std::vector<std::string>{"memory.beta", "train.steps"})) << "file order";
  ASSERT_EQ(s.trials.size(), 3u * (2u * 3u) * 3u);

  // Nesting: variant, then sweep point (first axis outermost), then seed.
  std::size_t i = 0;
  const double betas[] = {1.0, 2.5};
  const std::int64_t steps[] = {5, 10, 20};
  for (const auto& variant : s.variants) {
    for (const double beta : betas) {
      for (const std::int64_t step : steps) {
        for (const std::int64_t seed : {0, 1, 2}) {
          const auto& t = s.trials[i++];
          ASSERT_EQ(t.variant, variant) << i;
          ASSERT_EQ(t.seed, seed) << i;
          ASSERT_EQ(t.sweep_point.size(), 2u);
          EXPECT_EQ(t.sweep_point[0].first, "memory.beta");
          EXPECT_EQ(real(t.sweep_point[0].second), beta) << "an integer swept into a float key is widened";
          EXPECT_EQ(t.sweep_point[1].first, "train.steps");
          EXPECT_EQ(integer(t.sweep_point[1].second), step);
          // The sweep values are applied to the configuration itself.
          EXPECT_EQ(t.memory.params.real("beta"), beta);
          EXPECT_EQ(t.train.integer("steps"), step);
        }
      }
    }
  }
  EXPECT_EQ(s.trials[0].sweep_label(), "memory.beta=1 train.steps=5");
  EXPECT_EQ(s.trials[4].label(), "base memory.beta=1 train.steps=10 seed=1");
  EXPECT_EQ(s.trials[0].sweep_json(), R"({"memory.beta":1.0,"train.steps":5})");
}

TEST_F(Ablation, BaseValuesReachEveryVariant) {
  for (const auto& t : study_->trials) {
    EXPECT_EQ(t.model.integer("d_model"), 16);
    EXPECT_EQ(t.backbone.params.integer("d_state"), 8);
    EXPECT_EQ(t.solve.integer("max_iter"), 12) << "framework keys survive a plugin switch";
    EXPECT_DOUBLE_EQ(t.solve.real("tol"), 1e-4);
    EXPECT_EQ(t.task.integer("vocab_size"), 32);
    EXPECT_EQ(t.backward_solver.plugin, "fixed_point");
    EXPECT_EQ(t.backward_solver.params.real("damping"), 1.0) << "the backward solver gets its defaults";
  }
  const auto& base = first("base");
  EXPECT_EQ(base.solver.plugin, "anderson");
  EXPECT_EQ(base.solver.params.integer("m"), 7);
  EXPECT_EQ(base.memory.params.integer("size"), 128);
  ASSERT_EQ(base.optimizations.size(), 1u);
  EXPECT_EQ(base.optimizations[0].plugin, "contractive");
  EXPECT_EQ(base.optimizations[0].params.real("factor"), 0.8);
  EXPECT_EQ(base.optimizations[0].params.real("damping"), 0.5) << "plugin defaults filled in";
  EXPECT_FALSE(base.optimizations[0].params.has("enabled")) << "a framework key, not the plugin's";
  EXPECT_EQ(base.train.real("lr"), 1.0);
  EXPECT_EQ(base.objective.real("energy"), 0.1);
  EXPECT_EQ(base.objective.real("convergence"), 0.05);
  EXPECT_EQ(base.objective.real("task"), 1.0);
}

TEST_F(Ablation, PluginSwitchDropsTheOldPluginsKeys) {
  const auto& fp = first("fixed_point");
  EXPECT_EQ(fp.solver.plugin, "fixed_point");
  ASSERT_EQ(fp.solver.params.values().size(), 1u) << "anderson's m is dropped, not an error";
  EXPECT_EQ(fp.solver.params.real("damping"), 0.5);
  EXPECT_EQ(fp.memory.params.integer("size"), 128) << "untouched sections come from the base";
}

TEST_F(Ablation, OverridesDeepMerge) {
  const auto& big = first("big_memory");
  EXPECT_EQ(big.memory.plugin, "hopfield");
  EXPECT_EQ(big.memory.params.integer("size"), 512) << "[variant.memory] sub-table";
  EXPECT_EQ(big.train.real("lr"), 3e-3);
  EXPECT_EQ(big.objective.real("energy"), 0.5) << "nested objective override";
  EXPECT_EQ(big.objective.real("convergence"), 0.05) << "kept from the base objective";
  EXPECT_TRUE(big.optimizations.empty()) << "disabled optimizations are left out";
  EXPECT_EQ(big.solver.params.integer("m"), 7);
}

TEST_F(Ablation, JsonIsCanonicalAndRoundTrips) {
  const auto& a = study_->trials[0];
  const auto& b = study_->trials[1];  // same but the seed
  // Canonical: the same configuration written with its tables and keys in another order gives the
  // same text and hash; one value changed gives another.
  const std::string tables_one_way = kHead + "vocab_size = 32\nnum_pairs = 2\n[memory]\nplugin = \"hopfield\"\nsize = 64\n"
                                             "beta = 2.0\n[train]\nlr = 0.01\nsteps = 9\n";
  const std::string tables_other_way = R"(
[train]
steps = 9
lr = 0.01
[memory]
beta = 2.0
size = 64
plugin = "hopfield"
[task]
num_pairs = 2
vocab_size = 32
kind = "associative_recall"
[study]
name = "t"
)";
  const auto one = parse(tables_one_way).trials.at(0), other = parse(tables_other_way).trials.at(0);
  EXPECT_EQ(one.to_json(), other.to_json());
  EXPECT_EQ(one.hash(), other.hash());
  std::string changed_text = tables_other_way;
  changed_text.replace(changed_text.find("size = 64"), 9, "size = 65");
  EXPECT_NE(parse(changed_text).trials.at(0).hash(), one.hash());
  EXPECT_NE(a.hash(), b.hash());
  EXPECT_EQ(a.hash().size(), 16u);
  EXPECT_EQ(a.hash().find_first_not_of("0123456789abcdef"), std::string::npos);
  const auto json = a.to_json();
  // Sorted keys, so equal configurations give equal text whatever order they were built in.
  EXPECT_LT(json.find("\"backbone\""), json.find("\"energy\""));
  EXPECT_LT(json.find("\"energy\""), json.find("\"variant\""));
  EXPECT_NE(json.find("\"lr\":1.0"), std::string::npos) << "floats stay floats: " << json;
  EXPECT_NE(json.find("\"d_model\":16,"), std::string::npos) << "integers stay integers";

  for (const auto& t : study_->trials) {
    const auto back = mhd::TrialConfig::from_json(t.to_json());
    ASSERT_EQ(back.to_json(), t.to_json());
    EXPECT_EQ(back.hash(), t.hash());
    EXPECT_EQ(back.label(), t.label());
    // The values themselves come back, not just a text that prints the same.
    EXPECT_EQ(back.seed, t.seed);
    EXPECT_EQ(back.solver.plugin, t.solver.plugin);
    EXPECT_EQ(back.memory.params.real("beta"), t.memory.params.real("beta"));
    EXPECT_EQ(back.train.integer("steps"), t.train.integer("steps"));
    EXPECT_EQ(back.optimizations.size(), t.optimizations.size());
    EXPECT_EQ(back.sweep_json(), t.sweep_json());
  }
  EXPECT_THROW(mhd::TrialConfig::from_json("{\"study\": 1}"), mhd::Error);
  EXPECT_THROW(mhd::TrialConfig::from_json("not json"), mhd::Error);
}

TEST(Study, IncludeBaseFalseRunsOnlyVariants) {
  const std::string variants = R"(
[[variant]]
name = "a"
memory = { size = 64 }
[[variant]]
name = "b"
memory = { size = 32 }
)";
  auto with_base = parse(kHead + variants);
  EXPECT_EQ(with_base.variants, (std::vector<std::string>{"base", "a", "b"}));
  EXPECT_EQ(with_base.trials.size(), 3u);

  const std::string no_base = R"(
[study]
name = "t"
include_base = false
seeds = [0, 1]
[task]
kind = "associative_recall"
)";
  auto without = parse(no_base + variants);
  EXPECT_EQ(without.variants, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(without.trials.size(), 4u);
  EXPECT_EQ(without.trials[0].memory.params.integer("size"), 64);
  EXPECT_EQ(without.trials[2].memory.params.integer("size"), 32);

  auto only_base = parse(no_base);
  EXPECT_EQ(only_base.variants, (std::vector<std::string>{"base"})) << "nothing else to run";
  EXPECT_EQ(only_base.trials.size(), 2u);

  // With the base left out, a variant may take its name.
  EXPECT_NO_THROW(parse(no_base + "[[variant]]\nname = \"base\"\n"));
}

TEST(Study, SweepOverPluginKeepsKeysTheNewPluginDeclares) {
  const auto s = parse(kHead + R"(
[solver]
plugin = "anderson"
m = 9
[sweep]
"solver.plugin" = ["anderson", "fixed_point"]
)");
  ASSERT_EQ(s.trials.size(), 2u);
  EXPECT_EQ(s.trials[0].solver.plugin, "anderson");
  EXPECT_EQ(s.trials[0].solver.params.integer("m"), 9) << "anderson declares m: kept";
  EXPECT_EQ(s.trials[1].solver.plugin, "fixed_point");
  EXPECT_FALSE(s.trials[1].solver.params.has("m")) << "fixed_point does not: dropped";
  EXPECT_EQ(s.trials[1].sweep_label(), "solver.plugin=fixed_point");
}

TEST(Study, VariantSwitchingBackKeepsDeclaredKeys) {
  // Base on fixed_point with damping; the variant returns to anderson with its own keys; another
  // variant names the same plugin again, so the base's plugin keys stay.
  const auto s = parse(kHead + R"(
[solver]
plugin = "fixed_point"
damping = 0.25
[[variant]]
name = "anderson"
solver = { plugin = "anderson", m = 3 }
[[variant]]
name = "same"
solver = { plugin = "fixed_point" }
)");
  ASSERT_EQ(s.trials.size(), 3u);
  EXPECT_EQ(s.trials[1].solver.params.integer("m"), 3);
  EXPECT_FALSE(s.trials[1].solver.params.has("damping"));
  EXPECT_EQ(s.trials[2].solver.params.real("damping"), 0.25);
}

TEST(Study, SweepsOverObjectiveOptimizationsAndTask) {
  const auto s = parse(kHead + R"(
[optimizations.contractive]
factor = 0.5
[sweep]
"train.objective.energy" = [0.0, 0.1]
"optimizations.contractive.enabled" = [true, false]
"task.num_pairs" = [2]
)");
  ASSERT_EQ(s.trials.size(), 4u);
  EXPECT_EQ(s.trials[0].objective.real("energy"), 0.0);
  EXPECT_EQ(s.trials[2].objective.real("energy"), 0.1);
  EXPECT_EQ(s.trials[0].optimizations.size(), 1u);
  EXPECT_TRUE(s.trials[1].optimizations.empty());
  EXPECT_EQ(s.trials[1].sweep_label(), "train.objective.energy=0 optimizations.contractive.enabled=false task.num_pairs=2");
  for (const auto& t : s.trials) EXPECT_EQ(t.task.integer("num_pairs"), 2);
}

TEST(Study, VariantMayAddAnOptimization) {
  const auto s = parse(kHead + R"(
[[variant]]
name = "contractive"
optimizations = { contractive = { factor = 0.7 } }
)");
  ASSERT_EQ(s.trials.size(), 2u);
  EXPECT_TRUE(s.trials[0].optimizations.empty());
  ASSERT_EQ(s.trials[1].optimizations.size(), 1u);
  EXPECT_EQ(s.trials[1].optimizations[0].params.real("factor"), 0.7);
}

TEST(Study, BaseMustBeValidEvenWhenLeftOut) {
  const auto msg = error_of(R"(
[study]
name = "t"
include_base = false
[task]
kind = "associative_recall"
[solver]
m = 100
[[variant]]
name = "fp"
solver = { plugin = "fixed_point" }
)");
  EXPECT_NE(msg.find("inline.toml:8:5: error: solver.m: must be in [1, 64], got 100"), std::string::npos) << msg;
}

TEST(Study, ValidateParamsForCodeBuiltConfigs) {
  const mhd::ParamSchema schema = {mhd::int_param("m", 5, "", 1, 64), mhd::float_param("beta", 1.0, "")};
  const auto p = mhd::validate_params(schema, {{"beta", std::int64_t{2}}}, "solver");
  EXPECT_EQ(p.integer("m"), 5);
  EXPECT_TRUE(std::holds_alternative<double>(p.values().at("beta")));
  try {
    mhd::validate_params(schema, {{"mm", std::int64_t{2}}}, "solver");
    FAIL();
  } catch (const mhd::Error& e) {
    EXPECT_STREQ(e.what(), "unknown key 'solver.mm'; did you mean 'm'?");
  }
  EXPECT_THROW(mhd::validate_params(schema, {{"m", std::int64_t{0}}}, "solver"), mhd::Error);
}

// --- the repository's own studies and docs stay valid ---------------------------------------

// docs/studies.md holds the key tables between markers; they are generated from the schemas here, so
// a changed schema fails this test until the docs are regenerated with
//   MHD_UPDATE_DOCS=1 build/bin/test_study --gtest_filter='StudyDocs.*'
std::string number_text(double v) {
  char buf[40];
  if (v == static_cast<double>(static_cast<long long>(v)) && std::fabs(v) < 1e13) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%g", v);
  }
  return buf;
}

// Markdown-safe table cell: '|' would end the cell, '<name>' would vanish as an HTML tag.
std::string cell_text(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

std::string range_text(const mhd::ParamSpec& spec) {
  if (!spec.choices.empty()) {
    std::string out;
    for (const auto& c : spec.choices) out += (out.empty() ? "" : ", ") + ("`" + c + "`");
    return "one of " + out;
  }
  if (spec.min && spec.max) return "[" + number_text(*spec.min) + ", " + number_text(*spec.max) + "]";
  if (spec.min) return ">= " + number_text(*spec.min);
  if (spec.max) return "<= " + number_text(*spec.max);
  return "";
}

std::string default_text(const mhd::ParamSpec& spec) {
  if (const auto* d = std::get_if<double>(&spec.default_value)) return "`" + number_text(*d) + "`";
  return "`" + mhd::format_param_value(spec.default_value) + "`";
}

std::string key_table(const mhd::ParamSchema& keys) {
  std::string out = "| key | type | default | range | meaning |\n|---|---|---|---|---|\n";
  for (const auto& spec : keys) {
    out += "| `" + spec.name + "` | " + mhd::to_string(spec.type) + " | " + default_text(spec) + " | " +
           range_text(spec) + " | " + cell_text(spec.doc) + " |\n";
  }
  return out;
}

std::string framework_tables() {
  std::string out;
  for (const auto* section : mhd::all_sections())
    out += "### [" + section->name + "]\n\n" + section->doc + "\n\n" + key_table(section->keys) + "\n";
  return out;
}

std::string task_tables() {
  std::string out;
  for (const auto& kind : mhd::task_kinds()) out += "#### `" + kind + "`\n\n" + key_table(mhd::task_schema(kind)) + "\n";
  return out;
}

const std::string kDocPath = std::string(MHD_SOURCE_DIR) + "/docs/studies.md";

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The text between "<!-- BEGIN GENERATED: name -->\n" and "<!-- END GENERATED: name -->".
std::pair<std::size_t, std::size_t> generated_block(const std::string& doc, const std::string& name) {
  const std::string begin = "<!-- BEGIN GENERATED: " + name + " -->\n";
  const std::size_t b = doc.find(begin);
  const std::size_t e = doc.find("<!-- END GENERATED: " + name + " -->");
  if (b == std::string::npos || e == std::string::npos || e < b) return {std::string::npos, std::string::npos};
  return {b + begin.size(), e};
}

TEST(StudyDocs, KeyTablesMatchTheSchemas) {
  std::string doc = read_text(kDocPath);
  ASSERT_FALSE(doc.empty()) << kDocPath << " is missing";
  const std::pair<std::string, std::string> blocks[] = {{"framework tables", framework_tables()},
                                                        {"task tables", task_tables()}};
  const bool update = std::getenv("MHD_UPDATE_DOCS") != nullptr;
  for (const auto& [name, expected] : blocks) {
    const auto [b, e] = generated_block(doc, name);
    ASSERT_NE(b, std::string::npos) << "docs/studies.md lacks the '" << name << "' markers";
    if (update) doc.replace(b, e - b, expected);
    else EXPECT_EQ(doc.substr(b, e - b), expected)
        << "docs/studies.md is out of date with the schemas; regenerate it with\n  MHD_UPDATE_DOCS=1 "
        << "build/bin/test_study --gtest_filter='StudyDocs.*'";
  }
  if (update) std::ofstream(kDocPath) << doc;
}

TEST(StudyDocs, ExamplesParse) {
  // Every ```toml block of the docs that starts with [study] is a complete study and must load.
  const std::string doc = read_text(kDocPath);
  int checked = 0;
  for (std::size_t at = doc.find("```toml\n"); at != std::string::npos; at = doc.find("```toml\n", at + 1)) {
    const std::size_t from = at + 8;
    const std::string block = doc.substr(from, doc.find("```", from) - from);
    if (block.rfind("[study]", 0) != 0) continue;
    EXPECT_NO_THROW(parse(block, "docs/studies.md")) << block;
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

}  // namespace
