// What the process runs on: the BLAS LibTorch calls, its threads, the CPU's vector features and the
// device. `mhd run` prints it, the study row records it and `mhd --version` shows it
// (docs/benchmarks.md, "What mhd runs on").
#pragma once

#include <string>

namespace mhd {

struct BlasInfo {
  std::string name;       // e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64 (openmp)"
  bool optimised = true;  // false for the reference (netlib) BLAS, which is 20x slower
};
// The library that provides sgemm_ (what LibTorch's matrix products call), with OpenBLAS's own
// build description when it is OpenBLAS.
BlasInfo blas_info();

// The SIMD levels the CPU offers that our fused kernels can use, e.g. "avx512f avx512bw avx512vl
// avx512dq avx512bf16 avx2 fma" ("none" when it has none of them).
std::string cpu_features();

// The threads LibTorch uses by default: every core, unless OMP_NUM_THREADS or MKL_NUM_THREADS set a
// count (LibTorch's own default counts "physical" cores and says 1 on some VMs). Returns the count set.
int use_all_cores();

// Keeps freed tensor memory in the process instead of returning it to the OS: glibc serves large
// blocks (a scan's 4 MB outputs and gradients, every step) with mmap and unmaps them on free, so
// every reuse page-faults afresh (17% of a backward's time, docs/benchmarks.md "The allocator
// setting"). Sets the mmap threshold to glibc's 32 MiB ceiling and the trim threshold to 1 GiB.
// Does nothing when GLIBC_TUNABLES or MHD_MALLOC_DEFAULTS is set (to compare, or to choose other
// values) or off glibc. Returns whether it changed the settings.
bool keep_freed_memory();

// One line each: blas, threads (intra-op, inter-op), cpu, device; ends with a newline.
// `intra_op_threads` < 1 reports LibTorch's current count (a study reports its trials' count).
std::string runtime_summary(const std::string& device, int intra_op_threads = 0);

// One line for stderr when the reference BLAS is in use, naming the package that fixes it;
// empty otherwise.
std::string reference_blas_warning();

}  // namespace mhd
