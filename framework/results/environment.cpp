// What the study row records about the run environment (results.h, RunEnvironment).
#include "results/results.h"

#include <unistd.h>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include "mhd/runtime.h"
#include "os/process.h"

namespace mhd {

RunEnvironment current_environment(const std::string& device, std::int64_t threads) {
  RunEnvironment env;
#ifdef MHD_SOURCE_DIR
  env.git_revision = run_command("git -C " + shell_word(MHD_SOURCE_DIR) + " rev-parse --short HEAD 2>/dev/null");
#endif
  if (env.git_revision.empty()) env.git_revision = "unknown";
  env.torch_version = TORCH_VERSION;
  char host[256] = {};
  env.host = gethostname(host, sizeof host - 1) == 0 ? host : "unknown";
  env.device = device;
  env.threads = threads;
  env.interop_threads = at::get_num_interop_threads();
  env.blas = blas_info().name;
  env.cpu_features = cpu_features();
  return env;
}

}  // namespace mhd
