// Errors are values a user can act on: what went wrong, where, and what to do.
#pragma once

#include <stdexcept>
#include <string>

namespace mhd {

// Every failure the framework reports to a user. `what()` is one line, ready to print; for study
// files it starts with "FILE:LINE:COL: error: ".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A study file problem: printed as `FILE:LINE:COL: error: MESSAGE`; `mhd` exits 2 on these.
class StudyError : public Error {
 public:
  StudyError(const std::string& file, long line, long column, const std::string& message)
      : Error(file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": error: " + message) {}
};

}  // namespace mhd
