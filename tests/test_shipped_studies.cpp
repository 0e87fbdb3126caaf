// Every study shipped in studies/ loads and validates with the plugins this build makes, so a
// change to a schema, a task's checks or a plugin cannot silently break the examples users start
// from (docs/studies.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "mhd/error.h"
#include "plugin_host/registry.h"
#include "study/study.h"

namespace fs = std::filesystem;

namespace {

std::vector<fs::path> shipped_studies() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(fs::path(MHD_SOURCE_DIR) / "studies"))
    if (entry.is_regular_file() && entry.path().extension() == ".toml") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// Every plugin of this build (tests/study.cmake makes this test depend on each plugin target).
mhd::PluginRegistry& registry() {
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins");
  return registry;
}

}  // namespace

TEST(ShippedStudies, EveryStudyValidates) {
  auto& plugins = registry();
  std::string load_failures;
  for (const auto& failure : plugins.failures()) load_failures += "\n  " + failure.reason;
  const auto files = shipped_studies();
  ASSERT_GE(files.size(), 10u) << "studies/ should hold the shipped examples";
  for (const auto& file : files) {
    try {
      const mhd::Study study = mhd::load_study(file.string(), plugins);
      EXPECT_FALSE(study.trials.empty()) << file;
    } catch (const mhd::Error& e) {
      ADD_FAILURE() << file.filename() << " does not validate: " << e.what()
                    << (load_failures.empty() ? "" : "\nplugins that failed to load:" + load_failures);
    }
  }
}

// The negative control: a shipped study with a cross-key mistake planted in [task] is rejected, at
// the planted key's line (so the test above would notice a study that fails at a trial's start).
TEST(ShippedStudies, APlantedCrossKeyMistakeIsRejected) {
  const fs::path quickstart = fs::path(MHD_SOURCE_DIR) / "studies" / "quickstart.toml";
  std::ifstream in(quickstart);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto pairs = text.find("\nnum_pairs = 4\n");
  const auto seq_len = text.find("\nseq_len = 24\n");
  ASSERT_NE(pairs, std::string::npos);
  ASSERT_NE(seq_len, std::string::npos);
  text.replace(pairs, 15, "\nnum_pairs = 12\n");  // 2 * 12 pairs + 2 * 12 queries > 24 positions
  const long line = static_cast<long>(std::count(text.begin(), text.begin() + static_cast<long>(text.find("\nseq_len = 24\n")), '\n')) + 2;
  try {
    mhd::parse_study(text, quickstart.string(), registry());
    FAIL() << "a study with seq_len too short for its pairs validated";
  } catch (const mhd::StudyError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(":" + std::to_string(line) + ":"), std::string::npos) << message;
    EXPECT_NE(message.find("task.seq_len = 24 is too short"), std::string::npos) << message;
  }
}
