// What mhd runs on (docs/benchmarks.md, "What mhd runs on"): the install step must leave LibTorch on
// an optimised BLAS, and every command uses every core unless told otherwise.
#include <gtest/gtest.h>

#include <cstdlib>
#include <malloc.h>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "mhd/runtime.h"

namespace {

TEST(Runtime, LibTorchRunsOnOpenBlas) {
  // `make deps` installs libopenblas0-openmp, which takes over libblas.so.3; the reference BLAS is a
  // 20x slower matrix product that once went unnoticed.
  const auto blas = mhd::blas_info();
  EXPECT_TRUE(blas.optimised) << blas.name;
  EXPECT_NE(blas.name.find("OpenBLAS"), std::string::npos) << blas.name;
  EXPECT_TRUE(mhd::reference_blas_warning().empty());
}

TEST(Runtime, UsesEveryCoreUnlessTheEnvironmentSetsACount) {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const char* mkl = std::getenv("MKL_NUM_THREADS");
  if ((omp && std::atoi(omp) > 0) || (mkl && std::atoi(mkl) > 0)) {
    const int before = at::get_num_threads();
    EXPECT_EQ(mhd::use_all_cores(), before) << "an explicit OMP_NUM_THREADS / MKL_NUM_THREADS is kept";
    return;
  }
  at::set_num_threads(1);
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  EXPECT_EQ(mhd::use_all_cores(), cores);
  EXPECT_EQ(at::get_num_threads(), cores);
}

TEST(Runtime, SummaryNamesBlasThreadsCpuAndDevice) {
  const std::string s = mhd::runtime_summary("cpu", 3);
  EXPECT_NE(s.find("blas: " + mhd::blas_info().name), std::string::npos) << s;
  EXPECT_NE(s.find("threads: 3 intra-op"), std::string::npos) << s;
  EXPECT_NE(s.find("cpu: " + mhd::cpu_features()), std::string::npos) << s;
  EXPECT_NE(s.find("device: cpu"), std::string::npos) << s;
#if defined(__x86_64__)
  // Every x86-64 CPU these machines lend has AVX2 and FMA; the report must not lose them.
  if (__builtin_cpu_supports("avx2")) EXPECT_NE(mhd::cpu_features().find("avx2"), std::string::npos);
#endif
}

// A 4 MB tensor (a scan's output at the quickstart's sizes) freed and allocated again is served from
// the heap, not by a fresh mmap that page-faults on first write; with glibc's defaults, or with
// MHD_MALLOC_DEFAULTS set, it is mmapped (the negative control).
TEST(Runtime, KeepFreedMemoryServesReusedBuffersFromTheHeap) {
  auto mapped_blocks_while_holding = [] {
    const at::Tensor buffer = at::empty({1 << 20}, at::kFloat);  // 4 MiB
    return mallinfo2().hblks;
  };
  const std::size_t before = mallinfo2().hblks;
  EXPECT_GT(mapped_blocks_while_holding(), before) << "glibc's default: a 4 MiB block is mmapped";
  setenv("MHD_MALLOC_DEFAULTS", "1", 1);
  EXPECT_FALSE(mhd::keep_freed_memory()) << "MHD_MALLOC_DEFAULTS keeps glibc's settings";
  unsetenv("MHD_MALLOC_DEFAULTS");
  if (std::getenv("GLIBC_TUNABLES") != nullptr) GTEST_SKIP() << "GLIBC_TUNABLES set: the process keeps them";
  ASSERT_TRUE(mhd::keep_freed_memory());
  EXPECT_EQ(mapped_blocks_while_holding(), mallinfo2().hblks) << "kept: the block comes from the heap";
}

}  // namespace
