// Checkpoints (checkpoint.h). One torch::serialize archive holding
//
//   format       "mhd-checkpoint-1" (a marker, so another archive is refused by name)
//   step         int
//   config_json  TrialConfig::to_json() of the trial that wrote it
//   config_hash  TrialConfig::hash(), compared on load when the caller passes its configuration
//   model        {name -> tensor} for every named parameter and buffer (the memory bank's patterns
//                and write_count included), keyed as Module::named_parameters/named_buffers spell them
//   optimizer    the optimizer's own archive (Optimizer::save), absent when none was given
//
// The model is restored tensor by tensor (not with Module::load, which silently reshapes a tensor of
// another shape), so a file written for another configuration fails with the tensor's name.
#include "train/checkpoint.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <unistd.h>

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "mhd/error.h"
#include "config/model_options.h"
#include "core/model.h"
#include "plugin_host/registry.h"
#include "config/trial_config.h"

namespace mhd {
namespace {

constexpr const char* kFormat = "mhd-checkpoint-1";

// c10 messages carry a backtrace after the first line; a user needs the first line only.
std::string first_line(const char* message) {
  std::string s(message);
  const auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// Every parameter and buffer of the model by its dotted name, in registration order.
std::vector<std::pair<std::string, at::Tensor>> model_tensors(UnifiedModel& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

at::Device model_device(UnifiedModel& model) {
  for (const auto& p : model.parameters()) return p.device();
  return at::kCPU;
}

// Opens the archive; any failure (missing, truncated, not a zip archive) is one line naming the file.
void open_archive(const std::string& path, torch::serialize::InputArchive& archive, at::Device device) {
  if (!std::ifstream(path).good()) throw Error("checkpoint " + path + ": no such file (or not readable)");
  try {
    archive.load_from(path, device);
  } catch (const c10::Error& e) {
    throw Error("checkpoint " + path + ": not a readable checkpoint (" + first_line(e.what_without_backtrace()) + ")");
  }
  c10::IValue format;
  if (!archive.try_read("format", format) || !format.isString() || format.toStringRef() != kFormat)
    throw Error("checkpoint " + path + ": not an mhd checkpoint (no \"" + kFormat + "\" marker)");
}

std::string read_string(torch::serialize::InputArchive& archive, const std::string& key, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read(key, value) || !value.isString())
    throw Error("checkpoint " + path + ": the entry \"" + key + "\" is missing");
  return value.toStringRef();
}

std::int64_t read_step(torch::serialize::InputArchive& archive, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read("step", value) || !value.isInt()) throw Error("checkpoint " + path + ": the entry \"step\" is missing");
  return value.toInt();
}

c10::Dict<std::string, at::Tensor> read_model_state(torch::serialize::InputArchive& archive, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read("model", value) || !value.isGenericDict())
    throw Error("checkpoint " + path + ": the entry \"model\" is missing");
  return c10::impl::toTypedDict<std::string, at::Tensor>(value.toGenericDict());
}

// Copies every stored tensor into the model's own (keeping their identity, so an optimizer built
// on the model's parameters stays attached). Missing, extra or reshaped tensors are errors.
void restore_model(UnifiedModel& model, const c10::Dict<std::string, at::Tensor>& stored, const std::string& path) {
  torch::NoGradGuard no_grad;
  std::set<std::string> expected;
  for (auto& [name, tensor] : model_tensors(model)) {
    expected.insert(name);
    auto it = stored.find(name);
    if (it == stored.end())
      throw Error("checkpoint " + path + ": has no tensor \"" + name + "\" (written for another model configuration?)");
    const at::Tensor& value = it->value();
    if (value.sizes() != tensor.sizes()) {
      throw Error("checkpoint " + path + ": tensor \"" + name + "\" has shape " + shape_text(value.sizes()) +
                  ", the model expects " + shape_text(tensor.sizes()));
    }
    tensor.copy_(value);
  }
  for (const auto& entry : stored)
    if (!expected.count(entry.key()))
      throw Error("checkpoint " + path + ": holds tensor \"" + entry.key() + "\" which the model does not have");
}

}  // namespace

void save_checkpoint(const std::string& path, const TrialConfig& config, std::int64_t step, UnifiedModel& model,
                     torch::optim::Optimizer* optimizer) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("step", c10::IValue(step));
  archive.write("config_json", c10::IValue(config.to_json()));
  archive.write("config_hash", c10::IValue(config.hash()));
  c10::Dict<std::string, at::Tensor> state;
  for (auto& [name, tensor] : model_tensors(model)) state.insert(name, tensor.detach().cpu());
  archive.write("model", c10::IValue(state));
  if (optimizer) {
    torch::serialize::OutputArchive nested;
    optimizer->save(nested);
    archive.write("optimizer", nested);
  }
  // Temporary file beside the target (same file system), renamed over it: rename is atomic, so a
  // reader sees the old checkpoint or the new one, never half of one.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    archive.save_to(tmp);
  } catch (const c10::Error& e) {
    std::remove(tmp.c_str());
    throw Error("checkpoint " + path + ": cannot write (" + first_line(e.what_without_backtrace()) + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("checkpoint " + path + ": cannot rename the temporary file " + tmp + " over it");
  }
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  torch::serialize::InputArchive archive;
  open_archive(path, archive, at::kCPU);
  CheckpointInfo info;
  info.step = read_step(archive, path);
  info.config_json = read_string(archive, "config_json", path);
  return info;
}

std::int64_t load_checkpoint(const std::string& path, UnifiedModel& model, torch::optim::Optimizer* optimizer,
                             const TrialConfig* expected) {
  torch::serialize::InputArchive archive;
  open_archive(path, archive, model_device(model));
  if (expected) {
    const std::string stored = read_string(archive, "config_hash", path);
    if (stored != expected->hash()) {
      throw Error("checkpoint " + path + ": written by another configuration (hash " + stored + ", this trial's " +
                  expected->hash() + ")");
    }
  }
  const std::int64_t step = read_step(archive, path);
  restore_model(model, read_model_state(archive, path), path);
  if (optimizer) {
    torch::serialize::InputArchive nested;
    if (!archive.try_read("optimizer", nested)) throw Error("checkpoint " + path + ": holds no optimizer state");
    try {
      optimizer->load(nested);
    } catch (const c10::Error& e) {
      throw Error("checkpoint " + path + ": optimizer state does not fit (" + first_line(e.what_without_backtrace()) +
                  ")");
    }
  }
  return step;
}

LoadedModel load_model_from_checkpoint(const std::string& path, PluginRegistry& registry, std::int64_t vocab_size) {
  torch::serialize::InputArchive archive;
  open_archive(path, archive, at::kCPU);
  LoadedModel loaded;
  loaded.step = read_step(archive, path);
  try {
    loaded.config = std::make_unique<TrialConfig>(TrialConfig::from_json(read_string(archive, "config_json", path)));
  } catch (const Error& e) {
    throw Error("checkpoint " + path + ": its configuration cannot be read (" + e.what() + ")");
  }
  const auto state = read_model_state(archive, path);
  if (vocab_size < 0) {
    // The vocabulary is the embedding's row count, so the task (and its data) is not needed.
    auto it = state.find("embedding.weight");
    if (it == state.end()) throw Error("checkpoint " + path + ": has no tensor \"embedding.weight\"");
    vocab_size = it->value().size(0);
  }
  loaded.model = std::make_shared<UnifiedModel>(model_options(*loaded.config, vocab_size), registry);
  restore_model(*loaded.model, state, path);
  loaded.model->eval();
  return loaded;
}

}  // namespace mhd
