// Summaries the trainer logs: iteration statistics of validation solves and the continual-learning
// measures of an accuracy matrix (train/trainer.h).
#include <algorithm>
#include <numeric>

#include "train/trainer.h"

namespace mhd {

IterationStats iteration_stats(std::vector<double> iterations) {
  IterationStats s;
  if (iterations.empty()) return s;
  std::sort(iterations.begin(), iterations.end());
  const std::size_t n = iterations.size();
  double sum = 0;
  for (double x : iterations) sum += x;
  s.mean = sum / static_cast<double>(n);
  s.median = n % 2 == 1 ? iterations[n / 2] : 0.5 * (iterations[n / 2 - 1] + iterations[n / 2]);
  s.max = iterations.back();
  return s;
}

double average_forgetting(const std::vector<std::vector<double>>& A) {
  const std::size_t K = A.size();
  if (K < 2) return 0.0;
  double total = 0;
  for (std::size_t j = 0; j + 1 < K; ++j) {
    double best = A[0][j];
    for (std::size_t i = 1; i + 1 < K; ++i) best = std::max(best, A[i][j]);
    total += best - A[K - 1][j];
  }
  return total / static_cast<double>(K - 1);
}

double average_final_accuracy(const std::vector<std::vector<double>>& A) {
  if (A.empty() || A.back().empty()) return 0.0;
  double total = 0;
  for (double a : A.back()) total += a;
  return total / static_cast<double>(A.back().size());
}

}  // namespace mhd
