// What the study tests share: the test data folder, a registry with the in-tree plugins, parsing
// inline text and the message of a study that fails to parse.
#pragma once

#include <string>

#include "mhd/error.h"
#include "study/study.h"
#include "test_plugins_loaded.h"

namespace study_test {

inline const std::string kData = std::string(MHD_SOURCE_DIR) + "/tests/data/studies/";

inline mhd::PluginRegistry& registry() { return registry_with_all_plugins(); }

inline mhd::Study parse(const std::string& text, const std::string& path = "inline.toml") {
  return mhd::parse_study(text, path, registry());
}

// The message of the StudyError that parsing throws ("" when it parses).
inline std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const mhd::StudyError& e) {
    return e.what();
  }
  return "";
}

inline const std::string kHead = R"(
[study]
name = "t"
[task]
kind = "associative_recall"
)";

}  // namespace study_test
