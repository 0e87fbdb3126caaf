#include "core/model_options.h"

#include "mhd/error.h"

namespace mhd {

void ModelOptions::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw Error("model options: " + what);
  };
  require(vocab_size > 0, "vocab_size must be > 0, got " + std::to_string(vocab_size));
  require(d_model > 0, "d_model must be > 0, got " + std::to_string(d_model));
  require(n_layers >= 0, "n_layers must be >= 0, got " + std::to_string(n_layers));
  require(!backbone.plugin.empty(), "no backbone plugin");
  if (!deq) return;
  require(dynamics.d_model == d_model, "dynamics.d_model must equal d_model");
  require(!dynamics.use_memory || !memory.plugin.empty(), "use_memory without a memory plugin");
  require(!solver.plugin.empty() && !backward_solver.plugin.empty(), "no solver plugin");
  require(forward_limits.max_iter > 0 && backward_limits.max_iter > 0, "max_iter must be > 0");
  require(forward_limits.tol >= 0 && backward_limits.tol >= 0, "tol must be >= 0");
  require(phantom_steps > 0, "phantom_steps must be > 0");
  require(!memory_writes || dynamics.use_memory, "memory_writes needs the memory");
}

}  // namespace mhd
