#include "commands.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <tuple>

#include "train/checkpoint.h"
#include "mhd/error.h"
#include "core/generate.h"
#include "core/model.h"
#include "os/process.h"
#include "run/pipeline.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "results/results.h"
#include "study/study.h"

namespace mhd::cli {
namespace {

PluginRegistry& discovered_plugins() {
  auto& registry = PluginRegistry::global();
  registry.scan_default_paths();
  return registry;
}

// Runs a command body, turning errors into one line on stderr and an exit code.
template <typename Body>
int guarded(Body&& body) {
  try {
    return body();
  } catch (const StudyError& e) {
    std::cerr << e.what() << std::endl;
    return kExitBadInput;
  } catch (const ResultsFileFull& e) {  // not the input's fault: free space, then --resume
    std::cerr << "mhd: error: " << e.what() << std::endl;
    return kExitFailure;
  } catch (const Error& e) {
    std::cerr << "mhd: error: " << e.what() << std::endl;
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::cerr << "mhd: error: " << e.what() << std::endl;
    return kExitFailure;
  }
}

std::string describe_range(const ParamSpec& spec) {
  std::ostringstream out;
  if (!spec.choices.empty()) {
    for (std::size_t i = 0; i < spec.choices.size(); ++i) out << (i ? "|" : "") << spec.choices[i];
  } else if (spec.min || spec.max) {
    out << "[" << (spec.min ? std::to_string(*spec.min) : "-inf") << ", " << (spec.max ? std::to_string(*spec.max) : "inf") << "]";
  }
  std::string s = out.str();
  // std::to_string prints 6 decimals; drop the trailing zeros.
  for (std::size_t pos; (pos = s.find(".000000")) != std::string::npos;) s.erase(pos, 7);
  return s;
}

void print_plugin(const LoadedPlugin& plugin) {
  const Manifest& m = *plugin.manifest;
  std::cout << to_string(m.kind) << " " << m.name << " " << m.version << " - " << m.description << "\n"
            << "  file: " << plugin.path << "\n";
  if (m.params.empty()) std::cout << "  (no parameters)\n";
  // Each column as wide as its longest entry plus two spaces, so no two run together.
  std::size_t name_w = 0, type_w = 0, default_w = 0, range_w = 0;
  for (const auto& spec : m.params) {
    name_w = std::max(name_w, spec.name.size() + 2);
    type_w = std::max(type_w, std::string(to_string(spec.type)).size() + 2);
    default_w = std::max(default_w, format_param_value(spec.default_value).size() + 2);
    range_w = std::max(range_w, describe_range(spec).size() + 2);
  }
  for (const auto& spec : m.params) {
    std::cout << "  " << std::left << std::setw(static_cast<int>(name_w)) << spec.name
              << std::setw(static_cast<int>(type_w)) << to_string(spec.type) << "default "
              << std::setw(static_cast<int>(default_w)) << format_param_value(spec.default_value)
              << std::setw(static_cast<int>(range_w)) << describe_range(spec) << spec.doc << "\n";
  }
}

}  // namespace

// This executable, to start trial processes (`mhd run-trial`) with.
std::string self_executable() {
  std::error_code ec;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the mhd executable (/proc/self/exe): " + ec.message() + "; use --in-process");
  return path.string();
}

// The exact command that continues an interrupted run.
std::string resume_command(const RunArgs& args) {
  std::string cmd = "mhd run " + shell_word(args.study) + " --resume";
  if (!args.output.empty()) cmd += " --out " + shell_word(args.output);
  if (!args.device.empty()) cmd += " --device " + args.device;
  if (!args.only.empty()) cmd += " --only " + shell_word(args.only);
  if (args.jobs != 1) cmd += " --jobs " + std::to_string(args.jobs);
  if (!args.shard.empty()) cmd += " --shard " + args.shard;
  if (args.in_process) cmd += " --in-process";
  return cmd;
}

int run(const RunArgs& args) {
  return guarded([&] {
    auto& registry = discovered_plugins();
    Study study = load_study(args.study, registry);
    RunOptions options{args.output, args.device, args.only};
    options.resume = args.resume;
    options.jobs = args.jobs;
    if (!args.shard.empty()) {
      std::tie(options.shard_index, options.shard_count) = parse_shard(args.shard);
      if (options.output.empty()) options.output = shard_output_path(study.output, options.shard_index, options.shard_count);
    }
    if (args.in_process && args.jobs > 1) throw Error("--in-process runs one trial at a time; drop --jobs or --in-process");
    if (!args.in_process) options.worker_executable = self_executable();
    install_stop_on_sigint();
    RunSummary summary = run_study(study, registry, options, std::cout);
    if (summary.interrupted) {
      std::cout << "stopped by SIGINT; finished trials are kept. Resume with:\n  " << resume_command(args) << std::endl;
      return kExitInterrupted;
    }
    return summary.failed > 0 ? kExitTrialsFailed : kExitOk;
  });
}

int run_trial(const WorkerCliArgs& args) {
  return guarded([&] {
    auto& registry = discovered_plugins();
    for (const auto& dir : args.plugin_path) registry.scan_directory(dir);
    WorkerArgs worker{args.results, args.trial_id, args.threads, args.device, args.prefix, args.plugin_path};
    return run_trial_worker(worker, registry, std::cout);
  });
}

int merge(const std::string& output, const std::vector<std::string>& inputs) {
  return guarded([&] {
    const MergeSummary summary = ResultsDb::merge(output, inputs);
    std::cout << "merged " << inputs.size() << " file(s) of study '" << summary.study << "': " << summary.trials
              << " trial(s) -> " << output << std::endl;
    if (!summary.missing_shards.empty()) {
      std::cout << "warning: shard(s) not among the inputs:";
      for (const auto& s : summary.missing_shards) std::cout << " " << s;
      std::cout << " (the merged study is incomplete)" << std::endl;
    }
    return kExitOk;
  });
}

int slurm(const SlurmArgs& args) {
  return guarded([&] {
    Study study = load_study(args.study, discovered_plugins());
    SlurmOptions options;
    options.study_path = args.study;
    options.mhd_executable = self_executable();
    options.out_dir = args.out_dir.empty() ? "slurm/" + study.name : args.out_dir;
    options.shards = args.shards;
    options.partition = args.partition;
    options.time = args.time;
    const auto files = write_slurm_scripts(study, options);
    std::cout << "study '" << study.name << "': " << study.trials.size() << " trial(s) in " << args.shards
              << " shard(s). Wrote:\n";
    for (const auto& f : files) std::cout << "  " << f << "\n";
    std::cout << "Submit with: bash " << shell_word(files.back()) << std::endl;
    return kExitOk;
  });
}

int validate(const std::string& path) {
  return guarded([&] {
    Study study = load_study(path, discovered_plugins());
    std::cout << path << ": ok: study '" << study.name << "', " << study.variants.size() << " variant(s), "
              << study.trials.size() << " trial(s) -> " << study.output << std::endl;
    return kExitOk;
  });
}

int plan(const std::string& path) {
  return guarded([&] {
    Study study = load_study(path, discovered_plugins());
    std::cout << "study '" << study.name << "': " << study.trials.size() << " trial(s) -> " << study.output << "\n";
    std::size_t variant_width = 8, sweep_width = 6;
    for (const auto& t : study.trials) {
      variant_width = std::max(variant_width, t.variant.size() + 2);
      sweep_width = std::max(sweep_width, t.sweep_label().size() + 2);
    }
    const int vw = static_cast<int>(variant_width), sw = static_cast<int>(sweep_width);
    std::cout << std::left << std::setw(6) << "#" << std::setw(vw) << "variant" << std::setw(sw) << "sweep"
              << std::setw(6) << "seed" << "components, config hash\n";
    // Trials are numbered from 0 like trials.idx in the results file, with the whole config hash,
    // and only the components the trial builds: no memory when use_memory = false, backbone only
    // without the DEQ.
    for (std::size_t i = 0; i < study.trials.size(); ++i) {
      const auto& t = study.trials[i];
      std::string components = t.backbone.plugin;
      if (!t.model.flag("deq")) {
        components += " (no DEQ)";
      } else {
        if (t.model.flag("use_memory")) components += "+" + t.memory.plugin;
        components += "+" + t.solver.plugin;
        if (!t.model.flag("use_memory")) components += " (no memory)";
      }
      std::cout << std::setw(6) << i << std::setw(vw) << t.variant << std::setw(sw)
                << (t.sweep_label().empty() ? "-" : t.sweep_label()) << std::setw(6) << t.seed << components << " "
                << t.hash() << "\n";
    }
    std::cout << std::flush;
    return kExitOk;
  });
}

int plugins(const std::string& kind) {
  return guarded([&] {
    auto& registry = discovered_plugins();
    const auto list = kind.empty() ? registry.all() : registry.plugins(plugin_kind_from_string(kind));
    for (const auto* plugin : list) {
      print_plugin(*plugin);
      std::cout << "\n";
    }
    if (list.empty()) std::cout << "no plugins found\n";
    std::cout << "searched: ";
    for (const auto& dir : registry.searched_directories()) std::cout << dir << " ";
    std::cout << "(add directories with MHD_PLUGIN_PATH or a study's plugin_path)\n";
    for (const auto& failure : registry.failures()) std::cout << "failed to load: " << failure.reason << "\n";
    std::cout << std::flush;
    return kExitOk;
  });
}

int report(const std::string& file, const std::vector<std::string>& metrics, bool csv, std::int64_t last_k) {
  return guarded([&] {
    auto db = ResultsDb::open(file, /*read_only=*/true);
    ReportOptions options;
    options.metrics = metrics;
    options.csv = csv;
    options.last_k = last_k;
    std::cout << format_report(*db, options) << std::flush;
    return kExitOk;
  });
}

namespace {

// An lm_bytes prompt is its bytes; any other task's is whitespace-separated ids below the vocabulary.
std::vector<std::int64_t> prompt_tokens(const std::string& prompt, bool bytes, std::int64_t vocab) {
  std::vector<std::int64_t> tokens;
  if (bytes) {
    for (unsigned char c : prompt) tokens.push_back(c);
  } else {
    std::istringstream in(prompt);
    std::string word;
    while (in >> word) {
      std::size_t used = 0;
      std::int64_t id = -1;
      try {
        id = std::stoll(word, &used);
      } catch (const std::exception&) {
      }
      if (used != word.size() || id < 0 || id >= vocab)
        throw Error("--prompt: \"" + word + "\" is not a token id in [0, " + std::to_string(vocab) +
                    ") (this checkpoint's task is not lm_bytes, so the prompt is token ids)");
      tokens.push_back(id);
    }
  }
  if (tokens.empty()) throw Error("--prompt: empty; give at least one token");
  return tokens;
}

}  // namespace

int generate(const GenerateArgs& args) {
  return guarded([&] {
    auto loaded = load_model_from_checkpoint(args.checkpoint, discovered_plugins());
    const bool bytes = loaded.config->task_kind == "lm_bytes";
    const std::int64_t vocab = loaded.model->named_parameters()["embedding.weight"].size(0);
    GenerationOptions options;
    options.max_new_tokens = args.max_length;
    options.sampling.temperature = args.temperature;
    options.sampling.top_k = args.top_k;
    options.sampling.top_p = args.top_p;
    options.seed = args.seed;
    options.warm_start = !args.cold;
    const auto prompt = prompt_tokens(args.prompt, bytes, vocab);
    const auto result = mhd::generate(*loaded.model, prompt, options);
    // The prompt first, then what was generated: the text as it reads on.
    if (bytes) {
      for (std::int64_t t : prompt) std::cout << static_cast<char>(t);
      for (std::int64_t t : result.tokens) std::cout << static_cast<char>(t);
    } else {
      for (std::size_t i = 0; i < prompt.size(); ++i) std::cout << (i ? " " : "") << prompt[i];
      std::cout << " |";
      for (std::int64_t t : result.tokens) std::cout << " " << t;
    }
    std::cout << std::endl;
    std::cerr << "mhd generate: " << result.tokens.size() << " tokens after a " << prompt.size()
              << "-token prompt; " << std::fixed << std::setprecision(1)
              << result.tokens_per_second() << " positions/s; mean solver iterations per position "
              << std::setprecision(2) << result.mean_iterations() << " (" << (args.cold ? "cold" : "warm")
              << " start, " << result.unconverged << " unconverged)" << std::endl;
    return kExitOk;
  });
}

int guarded_command(const std::function<int()>& body) { return guarded(body); }

}  // namespace mhd::cli
