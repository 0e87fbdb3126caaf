// The bucket index of the sparse memories' pattern bank (bucketed_bank.h): filing patterns under the
// router, following writes and router or bank changes (refile_every), and sorting the filing into
// per-bucket ranges. Retrieval over the index is bucketed_bank.cpp.
#include "mhd/kits/bucketed_bank.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace mhd {

// Rows per chunk so that a chunk's temporary (the gathered candidates [n, C, D], the router's scores)
// stays near 2^22 floats (16 MB): below glibc's mmap threshold as mhd::keep_freed_memory sets it, so it
// is reused from the heap instead of faulted in afresh for every chunk.
std::int64_t BucketedBankMemory::chunk_rows(std::int64_t per_row) { return std::max<std::int64_t>(1, (std::int64_t{1} << 22) / std::max<std::int64_t>(1, per_row)); }

namespace {

// The bytes of t's values summed as 64-bit words (wrapping): any change of a value changes it, short
// of changes that cancel bit for bit. Read in place on the CPU (a 1M-pattern bank is 256 MB: no
// widened copy); elsewhere through a copy to the CPU.
std::int64_t bit_sum(const at::Tensor& t) {
  const at::Tensor c = t.detach().device().is_cpu() ? t.detach().contiguous() : t.detach().cpu().contiguous();
  const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
  const std::int64_t n = static_cast<std::int64_t>(c.nbytes());
  const std::int64_t words = n / 8;
  const std::uint64_t total = at::parallel_reduce(
      0, words, std::int64_t{1} << 16, std::uint64_t{0},
      [&](std::int64_t begin, std::int64_t end, std::uint64_t sum) {
        for (std::int64_t i = begin; i < end; ++i) {
          std::uint64_t word;
          std::memcpy(&word, bytes + 8 * i, 8);
          sum += word;
        }
        return sum;
      },
      [](std::uint64_t a, std::uint64_t b) { return a + b; });
  std::uint64_t tail = 0;
  for (std::int64_t i = 8 * words; i < n; ++i) tail += bytes[i];
  return static_cast<std::int64_t>(total + tail);
}

}  // namespace

// The filed content is every floating-point parameter and buffer: the bank and the router (trained or
// not); the integer buffers are the index and counters themselves.
std::vector<at::Tensor> BucketedBankMemory::filed_content() const {
  std::vector<at::Tensor> content;
  for (const auto& p : parameters())
    if (p.is_floating_point()) content.push_back(p);
  for (const auto& b : buffers())
    if (b.is_floating_point()) content.push_back(b);
  return content;
}

std::int64_t BucketedBankMemory::content_checksum() const {
  std::int64_t sum = 0;
  for (const auto& t : filed_content()) sum += bit_sum(t);
  return sum;
}

std::int64_t BucketedBankMemory::content_versions() const {
  // A dtype or device move (Module::to) swaps the data without necessarily moving the counter: the
  // data's address counts too.
  std::int64_t sum = 0;
  for (const auto& t : filed_content())
    sum += t._version() + static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(t.data_ptr()));
  return sum;
}

const at::Tensor& BucketedBankMemory::filing() {
  const std::int64_t versions = content_versions();
  if (versions != seen_versions_) {
    at::NoGradGuard no_grad;
    seen_versions_ = versions;
    const std::int64_t checksum = content_checksum();
    if (checksum != filed_checksum_.item<std::int64_t>()) {
      refile_changed();
      filed_checksum_.fill_(checksum);
    }
  }
  // The filing changes by refiles and writes, and by a checkpoint load copying into the buffer.
  if (sorted_version_ != bucket_of_._version()) rebuild_sorted();
  return bucket_of_;
}

void BucketedBankMemory::refile_all() {
  at::NoGradGuard no_grad;
  const std::int64_t filled = filled_slots();
  bucket_of_.fill_(-1);
  if (filled == 0) return;
  // All filled slots: the bank's leading rows as they are, without an index_select copy.
  bucket_of_.narrow(1, 0, filled).copy_(assign_chunked(bank().narrow(0, 0, filled).detach()).t());
  refiled_slots_ += filled;
}

void BucketedBankMemory::refile_changed() {
  const std::int64_t filled = filled_slots();
  if (filled == 0) return;
  if (refile_every_ == 1 || bucket_of_.narrow(1, 0, filled).lt(0).any().item<bool>()) {
    refile_all();
    return;
  }
  const std::int64_t share = (filled + refile_every_ - 1) / refile_every_;
  const std::int64_t start = refile_cursor_.item<std::int64_t>() % filled;
  file_slots(at::remainder(at::arange(start, start + share, bucket_of_.options()), filled));
  refile_cursor_.fill_((start + share) % filled);
}

void BucketedBankMemory::file_slots(const at::Tensor& slots) {
  at::NoGradGuard no_grad;
  // Filed in chunks: the router's scores [n, R, buckets] would not fit at once for a large bank.
  bucket_of_.index_copy_(1, slots, assign_chunked(bank().index_select(0, slots).detach()).t());  // [R, n]
  refiled_slots_ += slots.numel();
}

at::Tensor BucketedBankMemory::assign_chunked(const at::Tensor& x) const {
  // The router's scores [n, R, buckets] of a large write would not fit at once.
  const std::int64_t step = chunk_rows(router_scores_per_row());
  if (x.size(0) <= step) return assign(x);
  std::vector<at::Tensor> parts;
  for (std::int64_t start = 0; start < x.size(0); start += step)
    parts.push_back(assign(x.narrow(0, start, std::min(step, x.size(0) - start))));
  return at::cat(parts);
}

void BucketedBankMemory::rebuild_sorted() {
  at::NoGradGuard no_grad;
  const std::int64_t M = size();
  if (bucket_of_.device().is_cpu()) {
    // A counting sort per round, O(R (M + buckets)): the buckets are small integers, and a comparison
    // sort of the [R, M] filing (with its index copy) cost a large bank most of a training step.
    const at::Tensor filing = bucket_of_.contiguous();
    const std::int64_t* f = filing.data_ptr<std::int64_t>();
    if (!order_.defined() || order_.numel() != rounds_ * M) order_ = at::empty({rounds_ * M}, filing.options());
    at::Tensor offsets = at::empty({rounds_, buckets_ + 1}, filing.options());
    std::int64_t* order = order_.data_ptr<std::int64_t>();
    std::int64_t* off = offsets.data_ptr<std::int64_t>();
    at::parallel_for(0, rounds_, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<std::int64_t> next(static_cast<std::size_t>(buckets_ + 1));
      for (std::int64_t r = begin; r < end; ++r) {
        const std::int64_t* row = f + r * M;
        std::int64_t* o = off + r * (buckets_ + 1);
        // Empty slots (-1) first, then bucket b at o[b] ... o[b + 1].
        std::fill(next.begin(), next.end(), 0);
        std::int64_t empty = 0;
        for (std::int64_t m = 0; m < M; ++m) {
          if (row[m] < 0) ++empty;
          else ++next[static_cast<std::size_t>(row[m]) + 1];
        }
        next[0] = empty;
        for (std::int64_t b = 0; b < buckets_; ++b) next[static_cast<std::size_t>(b) + 1] += next[static_cast<std::size_t>(b)];
        for (std::int64_t b = 0; b <= buckets_; ++b) o[b] = next[static_cast<std::size_t>(b)];
        std::int64_t unfiled = 0;
        std::int64_t* sorted = order + r * M;
        for (std::int64_t m = 0; m < M; ++m) {
          if (row[m] < 0) sorted[unfiled++] = m;
          else sorted[next[static_cast<std::size_t>(row[m])]++] = m;
        }
      }
    });
    offsets_ = offsets;
    sorted_version_ = bucket_of_._version();
    return;
  }
  // Empty slots (-1) sort first, so bucket b of round r starts after them: offsets from counts.
  // order_[r M + i]: the slot at sorted position i of round r.
  order_ = std::get<1>(bucket_of_.sort(1)).reshape({-1});
  std::vector<at::Tensor> rows;
  for (std::int64_t r = 0; r < rounds_; ++r) {
    const at::Tensor b = bucket_of_[r];
    const at::Tensor filed = b.masked_select(b.ge(0));
    const at::Tensor counts = at::bincount(filed, {}, buckets_);  // [buckets]
    const std::int64_t empty = M - filed.numel();
    rows.push_back(at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)}) + empty);
  }
  offsets_ = at::stack(rows);  // [R, buckets + 1]
  sorted_version_ = bucket_of_._version();
}

std::int64_t BucketedBankMemory::write(const torch::Tensor& patterns) {
  at::NoGradGuard no_grad;
  filing();  // bring the index up to date with the bank before this write
  const std::int64_t before = written();
  const std::int64_t n = PatternBankMemory::write(patterns);
  if (n == 0) return 0;
  // File only the slots just written (the queue's k mod M); the rest keep their buckets.
  file_slots(at::remainder(at::arange(before, before + n, bucket_of_.options()), size()));  // [n]
  filed_checksum_.fill_(content_checksum());
  seen_versions_ = content_versions();
  return n;
}

void BucketedBankMemory::consolidate() {
  at::NoGradGuard no_grad;
  refile_all();
  filed_checksum_.fill_(content_checksum());
  seen_versions_ = content_versions();
  rebuild_sorted();
}

}  // namespace mhd
