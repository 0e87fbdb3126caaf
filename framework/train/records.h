// What training produces, as plain records: the sink a trial's numbers go to, solver traces, probe
// points and the trial's outcome. The results file stores them (results/results.h); the trainer
// and the probes only write them, so neither depends on SQLite.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace mhd {

enum class TrialStatus { Pending, Running, Done, Failed, Diverged };
const char* to_string(TrialStatus status);
TrialStatus trial_status_from_string(const std::string& s);

struct TracePoint {
  std::int64_t step = 0;
  std::string phase;  // "forward" | "backward"
  std::int64_t iteration = 0;
  double abs_residual = 0.0;
  double rel_residual = 0.0;
  double energy = 0.0;  // NaN when the solve had no energy
};

// What a probe stores for charts (probe.h): a cell of a 2-D grid (i, j), a point of a trajectory
// (i = trajectory, j = iteration), an entry of a matrix or a point of a curve. x, y are the
// coordinates to draw at (NaN when the chart uses i, j), value what is drawn there.
struct ProbePoint {
  std::string probe;  // "landscape"
  std::string name;   // "energy_slice", "trajectories", "accuracy_matrix" ...
  std::int64_t i = 0, j = 0;
  double x = 0.0, y = 0.0, value = 0.0;
};

// Where a trial's numbers go (the results file, or a test's capture).
struct MetricSink {
  std::function<void(std::int64_t step, const std::string& name, double value)> metric;
  std::function<void(const TracePoint& point)> trace;
  std::function<void(const ProbePoint& point)> point;  // probes' chart data (probe.h); may be empty
  std::function<void()> flush;  // a good moment to persist (after evaluations)
};

}  // namespace mhd
