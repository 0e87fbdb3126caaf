#include "mhd/runtime.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <limits.h>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>

namespace mhd {
namespace {

template <typename Fn>
Fn find_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

// The file that provides sgemm_ to the process, symlinks resolved: the BLAS LibTorch's matrix
// products bind to. (Asking for openblas_get_config alone is not enough: Debian's LAPACK can load
// OpenBLAS while libblas.so.3 is still netlib's.)
std::string sgemm_provider() {
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info where{};
  if (!sgemm || !dladdr(sgemm, &where) || !where.dli_fname) return "";
  char resolved[PATH_MAX];
  return realpath(where.dli_fname, resolved) ? std::string(resolved) : std::string(where.dli_fname);
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

bool env_count_set(const char* name) {
  const char* v = std::getenv(name);
  return v && std::atoi(v) > 0;
}

}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
  const std::string path = sgemm_provider();
  if (path.empty()) {
    info.name = "no BLAS found (sgemm_ is not loaded)";
    info.optimised = false;
  } else if (contains(path, "openblas")) {
    auto config = find_symbol<char* (*)()>("openblas_get_config");
    info.name = config ? config() : "OpenBLAS " + path;
    if (auto parallel = find_symbol<int (*)()>("openblas_get_parallel")) {
      static const char* kinds[] = {"sequential", "pthreads", "openmp"};
      const int p = parallel();
      if (p >= 0 && p <= 2) info.name += std::string(" (") + kinds[p] + ")";
    }
  } else if (contains(path, "/blas/libblas") || contains(path, "libblas.so")) {
    // Debian's reference BLAS (package libblas3) is .../blas/libblas.so.3; the optimised ones
    // install under their own names (openblas-*, blis-*, mkl).
    info.name = "reference BLAS (netlib) " + path;
    info.optimised = false;
  } else {
    info.name = path;  // MKL, BLIS or another optimised build, named by its file
  }
  return info;
}

std::string cpu_features() {
  std::string out;
  auto add = [&](bool has, const char* name) {
    if (!has) return;
    if (!out.empty()) out += ' ';
    out += name;
  };
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add(__builtin_cpu_supports("avx512dq"), "avx512dq");
  add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
#endif
  return out.empty() ? "none" : out;
}

int use_all_cores() {
  if (env_count_set("OMP_NUM_THREADS") || env_count_set("MKL_NUM_THREADS")) return at::get_num_threads();
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  at::set_num_threads(cores);
  return cores;
}

bool keep_freed_memory() {
#if defined(__GLIBC__)
  if (std::getenv("GLIBC_TUNABLES") != nullptr || std::getenv("MHD_MALLOC_DEFAULTS") != nullptr) return false;
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024) == 1;
  return mmap_set && trim_set;
#else
  return false;
#endif
}

std::string runtime_summary(const std::string& device, int intra_op_threads) {
  const BlasInfo blas = blas_info();
  std::ostringstream out;
  out << "blas: " << blas.name << (blas.optimised ? "" : " [reference, slow]") << "\n"
      << "threads: " << (intra_op_threads > 0 ? intra_op_threads : at::get_num_threads()) << " intra-op, " << at::get_num_interop_threads() << " inter-op ("
      << std::thread::hardware_concurrency() << " cores)\n"
      << "cpu: " << cpu_features() << "\n"
      << "device: " << device << "\n";
  return out.str();
}

std::string reference_blas_warning() {
  if (blas_info().optimised) return "";
  return "warning: LibTorch runs on the reference BLAS (about 20x slower matrix products); install "
         "libopenblas0-openmp (make deps does)";
}

}  // namespace mhd
