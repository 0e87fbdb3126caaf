#include "mhd/kits/context_memory.h"

#include <limits>
#include <sstream>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"

namespace mhd {
namespace {

std::string shape(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

at::Tensor hide_future(const at::Tensor& scores) {  // [B, Lq, Lk] with -inf where hidden
  const auto Lq = scores.size(-2), Lk = scores.size(-1);
  return scores.masked_fill(visible_keys(Lq, Lk, scores.device()).logical_not(),
                            -std::numeric_limits<double>::infinity());
}

}  // namespace

at::Tensor visible_keys(std::int64_t Lq, std::int64_t Lk, const at::Device& device) {
  if (Lq < 1 || Lq > Lk)
    throw Error("context retrieval needs 1 <= queries <= keys, got " + std::to_string(Lq) + " queries and " +
                std::to_string(Lk) + " keys");
  // Query i at position Lk - Lq + i sees key j when j <= Lk - Lq + i: the lower triangle shifted.
  return at::ones({Lq, Lk}, at::TensorOptions().dtype(at::kBool).device(device)).tril(Lk - Lq);
}

void check_context(const char* who, const char* op, const at::Tensor& queries, const at::Tensor& keys,
                   const at::Tensor& values) {
  const bool ok = queries.dim() == 3 && keys.dim() == 3 && queries.size(0) == keys.size(0) &&
                  queries.size(2) == keys.size(2) && queries.size(1) >= 1 && queries.size(1) <= keys.size(1) &&
                  (!values.defined() || values.sizes() == keys.sizes());
  if (!ok)
    throw Error(std::string(who) + ": " + op + " expects queries [B, Lq, D] and keys (and values) [B, Lk, D] with " +
                "Lq <= Lk, got queries " + shape(queries) + ", keys " + shape(keys) +
                (values.defined() ? ", values " + shape(values) : std::string()));
}

at::Tensor causal_softmax(const at::Tensor& scores) { return at::softmax(hide_future(scores), -1); }

at::Tensor causal_logsumexp(const at::Tensor& scores) { return at::logsumexp(hide_future(scores), -1); }

at::Tensor visible_counts(std::int64_t Lq, std::int64_t Lk, const at::TensorOptions& options) {
  return at::arange(Lk - Lq + 1, Lk + 1, options);
}

}  // namespace mhd
