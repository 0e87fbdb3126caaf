#include "config/model_options.h"

#include "mhd/error.h"

namespace mhd {
namespace {

Gate gate_from(const std::string& text) {
  if (text == "sigmoid") return Gate::Sigmoid;
  if (text == "tanh") return Gate::Tanh;
  throw Error("model.gate must be \"sigmoid\" or \"tanh\", got \"" + text + "\"");
}

StateNorm state_norm_from(const std::string& text) {
  if (text == "none") return StateNorm::None;
  if (text == "layernorm") return StateNorm::LayerNorm;
  throw Error("model.state_norm must be \"none\" or \"layernorm\", got \"" + text + "\"");
}

BackwardMode backward_mode_from(const std::string& text) {
  if (text == "implicit") return BackwardMode::Implicit;
  if (text == "phantom") return BackwardMode::Phantom;
  if (text == "unrolled") return BackwardMode::Unrolled;
  throw Error("backward.mode must be \"implicit\", \"phantom\" or \"unrolled\", got \"" + text + "\"");
}

Equilibrium equilibrium_from(const std::string& text) {
  if (text == "sequence") return Equilibrium::Sequence;
  if (text == "pooled") return Equilibrium::Pooled;
  throw Error("model.equilibrium must be \"sequence\" or \"pooled\", got \"" + text + "\"");
}

MemorySource memory_source_from(const std::string& text) {
  if (text == "bank") return MemorySource::Bank;
  if (text == "context") return MemorySource::Context;
  if (text == "both") return MemorySource::Both;
  throw Error("model.memory_source must be \"bank\", \"context\" or \"both\", got \"" + text + "\"");
}

}  // namespace

ModelOptions model_options(const TrialConfig& config, std::int64_t vocab_size) {
  const auto& m = config.model;
  ModelOptions o;
  o.vocab_size = vocab_size;
  o.d_model = m.integer("d_model");
  o.n_layers = m.integer("n_layers");
  o.backbone = config.backbone;
  o.deq = m.flag("deq");
  o.dynamics.d_model = o.d_model;
  o.dynamics.use_memory = m.flag("use_memory");
  o.dynamics.equilibrium = equilibrium_from(m.text("equilibrium"));
  o.dynamics.memory_source = memory_source_from(m.text("memory_source"));
  o.dynamics.gate = gate_from(m.text("gate"));
  o.dynamics.out_init_scale = m.real("out_init_scale");
  o.dynamics.state_norm = state_norm_from(m.text("state_norm"));
  o.dynamics.residual = m.flag("residual");
  o.dynamics.alpha = config.energy.real("alpha");
  o.dynamics.lambda_l2 = config.energy.real("lambda_l2");
  o.dynamics.lambda_smooth = config.energy.real("lambda_smooth");
  o.memory = config.memory;
  o.optimizations = config.optimizations;
  o.solver = config.solver;
  o.backward_solver = config.backward_solver;
  o.forward_limits = {config.solve.integer("max_iter"), config.solve.real("tol")};
  o.backward_limits = {config.backward.integer("max_iter"), config.backward.real("tol")};
  o.energy = config.energy.flag("enabled");
  o.backward_mode = backward_mode_from(config.backward.text("mode"));
  o.phantom_steps = config.backward.integer("phantom_steps");
  o.phantom_damping = config.backward.real("phantom_damping");
  o.warm_start = config.solve.flag("warm_start");
  o.memory_writes = m.flag("memory_writes") && o.dynamics.use_memory;
  o.write_threshold = m.real("write_threshold");
  o.validate();
  return o;
}

}  // namespace mhd
