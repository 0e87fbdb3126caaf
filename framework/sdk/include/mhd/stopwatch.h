// Wall time since construction, on the steady clock: the one timer of solvers (SolverInfo::wall_ms),
// the trainer (step_ms) and the runner (trial times).
#pragma once

#include <chrono>

namespace mhd {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  double ms() const { return 1e3 * seconds(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mhd
