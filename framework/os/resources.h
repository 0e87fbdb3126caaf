// This process's resident memory, what the trainer's peak_rss_mb records (docs/studies.md, "Reading results").
#pragma once

namespace mhd {

// Resets the kernel's high-water mark of resident memory to the current resident size (writes 5 to
// /proc/self/clear_refs, Linux), so that a later peak_resident_mb() reads the peak since now; false
// where the kernel refuses (the peak then counts from the process's start).
bool reset_peak_resident();

// The peak resident memory of this process in MiB (getrusage ru_maxrss): since the last successful
// reset_peak_resident(), else since the process started.
double peak_resident_mb();

}  // namespace mhd
