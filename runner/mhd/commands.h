// The `mhd` subcommands (DESIGN.md §7). Each returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace mhd::cli {

// Exit codes: 0 fine, 1 a runtime failure, 2 a bad study or command line, 3 some trials failed.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;
constexpr int kExitTrialsFailed = 3;

struct RunArgs {
  std::string study, output, device, only;
};
int run(const RunArgs& args);
int validate(const std::string& study);
int plan(const std::string& study);
int plugins(const std::string& kind);
int report(const std::string& file, const std::vector<std::string>& metrics, bool csv);

}  // namespace mhd::cli
