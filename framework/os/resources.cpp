#include "os/resources.h"

#include <fstream>

#include <sys/resource.h>

namespace mhd {

bool reset_peak_resident() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  if (!clear_refs) return false;
  clear_refs << "5";  // 5: reset the peak resident set size (proc(5))
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

double peak_resident_mb() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0.0;
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

}  // namespace mhd
