#include "train/trainer_state.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "mhd/error.h"

namespace mhd {

std::string TrainerState::record() const {
  std::ostringstream out;
  out.precision(17);
  out << step << ' ' << converged_solves << ' ' << skipped_in_a_row << ' ' << accuracy_matrix.size() << ' '
      << (accuracy_matrix.empty() ? 0 : accuracy_matrix[0].size());
  for (const auto& row : accuracy_matrix)
    for (double a : row) out << ' ' << a;
  return out.str();
}

std::optional<TrainerState> TrainerState::parse(const std::string& line) {
  std::istringstream in(line);
  TrainerState s;
  std::size_t rows = 0, cols = 0;
  if (!(in >> s.step >> s.converged_solves >> s.skipped_in_a_row >> rows >> cols)) return std::nullopt;
  s.accuracy_matrix.assign(rows, std::vector<double>(cols));
  for (auto& row : s.accuracy_matrix)
    for (double& a : row)
      if (!(in >> a)) return std::nullopt;
  return s;
}

namespace {
std::string trainer_state_path(const std::string& checkpoint_path) { return checkpoint_path + ".trainer"; }
}  // namespace

TrainerState read_trainer_state(const std::string& checkpoint_path, std::int64_t step) {
  const std::string path = trainer_state_path(checkpoint_path);
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (auto s = TrainerState::parse(line); s && s->step == step) return *s;
  throw Error(path + ": no trainer state for the checkpoint's step " + std::to_string(step) +
              " (the file is missing or from another run); delete the checkpoint to start the trial afresh");
}

void write_trainer_state(const std::string& checkpoint_path, const std::string& previous, const std::string& current) {
  const std::string path = trainer_state_path(checkpoint_path);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!previous.empty()) out << previous << '\n';
    out << current << '\n';
    if (!out) throw Error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace mhd
