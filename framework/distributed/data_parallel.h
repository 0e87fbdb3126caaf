// Data-parallel training of one trial across K processes: every
// rank holds the same model, draws the same global batch, trains on its slice of the rows and
// averages the gradients with PyTorch's c10d (Gloo on CPU; NCCL for CUDA trials when the build has
// it, see MHD_WITH_NCCL in data_parallel.cpp). The c10d headers stay in data_parallel.cpp (pimpl),
// so including this header costs nothing.
//
// Rendezvous: "tcp://HOST:PORT" (a TCPStore; rank 0 serves it on PORT) or "file:///PATH" (a
// FileStore on a file every rank can reach; it must not be left over from an unfinished run).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace mhd {

struct DataParallelSpec {
  int rank = 0;
  int world_size = 1;
  std::string rendezvous;  // "tcp://HOST:PORT" | "file:///PATH"
  // How long joining (and any later collective) may wait for the other ranks.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  // Every rank must join with the same tag (e.g. the trial's configuration hash): a mismatch is an
  // error at rendezvous instead of a silently wrong average.
  std::string tag;
  // The ranks all run on this machine: Gloo talks over loopback. Otherwise it binds to the interface
  // named by GLOO_SOCKET_IFNAME, or to the address of this host's name.
  bool local = false;
  // Non-empty: the store is opened once per process and rendezvous and shared by every group that
  // names it, each group under its own key prefix `scope` (external launch: one TCP server for a
  // whole study, a group per trial).
  std::string scope;
};

// "tcp://HOST:PORT" or "file:///PATH" parsed; throws mhd::Error naming `what` on anything else.
struct Rendezvous {
  enum class Kind { Tcp, File } kind = Kind::File;
  std::string host;  // tcp
  int port = 0;      // tcp
  std::string path;  // file
  static Rendezvous parse(const std::string& spec, const std::string& what = "train.rendezvous");
};

// A free TCP port on 127.0.0.1 (bound and released: a small window remains in which another
// program could take it).
int free_local_port();

class DataParallel {
 public:
  // Joins the process group: blocks until all world_size ranks have joined or spec.timeout passes
  // (then throws mhd::Error "data parallel: ... timed out ..."). `device` picks the backend: Gloo for
  // CPU, NCCL for CUDA when built with it (otherwise Gloo through host copies).
  DataParallel(const DataParallelSpec& spec, c10::Device device);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const;
  int world_size() const;
  const char* backend() const;  // "gloo" | "nccl"

  // Rows [rank * B / K, (rank + 1) * B / K) of a [B, ...] global batch; B must be divisible by K.
  at::Tensor slice_rows(const at::Tensor& global) const;

  // Copies rank 0's values into every rank's tensors (parameters and buffers), in place.
  void broadcast_from_rank0(const std::vector<at::Tensor>& tensors);

  // The largest |x - x_rank0| over the tensors' elements and all ranks (0 when the ranks hold the
  // same values; a check that the ranks' models did not drift apart). Leaves the tensors unchanged.
  double max_difference_from_rank0(const std::vector<at::Tensor>& tensors);

  // In place: each tensor becomes the sum over ranks. Tensors are flattened into one buffer per
  // dtype, so a model's gradients take one collective per dtype.
  void allreduce_sum(const std::vector<at::Tensor>& tensors);

  // grad <- (sum over ranks of grad) / K for every parameter that requires grad. A parameter whose
  // gradient is undefined here counts as zero (and stays undefined when the sum is zero too).
  void average_gradients(const std::vector<at::Tensor>& parameters);

  // The factor K * n_local / n_global that turns this rank's mean over its n_local labelled positions
  // into its share of the global mean, so that averaging gradients over ranks (average_gradients)
  // gives exactly the gradient of the mean over all labelled positions of the global batch, even
  // when the slices hold different numbers of them. One scalar collective.
  double mean_share(double n_local);

  // True on every rank when `flag` is true on any rank (e.g. a non-finite loss: all ranks must take
  // the same branch or the next collective hangs).
  bool any(bool flag);

  // The mean over ranks of each value, in place. Ranks must pass the same number of values; a
  // mismatch leaves the values as they are and returns false.
  bool mean_over_ranks(std::vector<double>& values);

  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- One trial across processes (trial_group.cpp) ----

class PluginRegistry;
struct TrialConfig;

// The group of one trial as train_trial holds it; created by join_trial_group.
class TrialGroup {
 public:
  ~TrialGroup();  // ends spawned ranks still running, removes the temporary rendezvous folder
  DataParallel& dp() { return *dp_; }
  // Rank 0 of ranks it spawned: waits for them to exit. "" when all ended well, else one line why.
  std::string finish();

 private:
  friend std::unique_ptr<TrialGroup> join_trial_group(const TrialConfig&, PluginRegistry&, c10::Device);
  std::unique_ptr<DataParallel> dp_;
  std::vector<int> workers_;  // pids of spawned ranks 1..K-1
  std::string temp_dir_;
  int saved_threads_ = -1;
};

// The data-parallel keys against the rest: batch divisible by world_size, no memory writes.
// Throws mhd::Error with a one-line message naming the keys (check_training_config calls it).
void check_data_parallel_config(const TrialConfig& config);

// nullptr when config.train.world_size is 1. Otherwise this process joins the trial's group as
//  - the rank named by data_parallel_worker_main when this process is a `dp-worker`, else
//  - rank $RANK of $WORLD_SIZE (external launch: Slurm, torchrun) at $MHD_RENDEZVOUS or
//    tcp://$MASTER_ADDR:$MASTER_PORT when WORLD_SIZE is set in the environment, else
//  - rank 0, after spawning ranks 1..K-1 as `/proc/self/exe dp-worker ...` with the resolved
//    configuration; train.rendezvous, or a file store in a fresh temporary folder when empty.
// Intra-op threads are split: each rank gets max(1, threads / K) (threads 0: every core).
// Throws mhd::Error for a batch not divisible by world_size, memory writes, or a failed rendezvous.
std::unique_ptr<TrialGroup> join_trial_group(const TrialConfig& config, PluginRegistry& registry, c10::Device device);

// This process is rank `rank` of `world` (a `dp-worker`, run/dp_worker.h): join_trial_group then
// joins that rank instead of spawning ranks. `external`: ranks launched by Slurm/torchrun share one
// store, a scope per trial.
void act_as_data_parallel_worker(int rank, int world, const std::string& rendezvous, bool external);
// The rendezvous of an external launch: $MHD_RENDEZVOUS or tcp://$MASTER_ADDR:$MASTER_PORT.
std::string external_rendezvous();
// Intra-op threads of each of `world` ranks: max(1, threads / world) (threads 0: every core).
int threads_per_rank(const TrialConfig& config, int world);

}  // namespace mhd
