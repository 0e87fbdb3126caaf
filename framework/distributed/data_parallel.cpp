// The process group behind mhd::DataParallel (data_parallel.h).
//
// Backends: Debian's LibTorch 1.13 has c10d with Gloo compiled into libtorch_cpu; its public
// headers guard ProcessGroupGloo behind USE_C10D_GLOO (the build defines it for PyTorch itself, not
// for users), so we define it here, and Gloo's own headers come from libgloo-dev. NCCL: a CUDA
// LibTorch built with NCCL ships ProcessGroupNCCL the same way behind USE_C10D_NCCL; configure with
// -DCMAKE_CXX_FLAGS=-DMHD_WITH_NCCL to use it for CUDA trials. Without it, CUDA trials still work
// with Gloo through host copies of the flattened buffers.
#include "distributed/data_parallel.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>

#include <ATen/ATen.h>

#include "mhd/error.h"

#if __has_include(<gloo/config.h>)
#define MHD_HAVE_GLOO 1
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#else
#define MHD_HAVE_GLOO 0
#endif
#if defined(MHD_WITH_NCCL)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace mhd {
namespace {

// c10::Error texts carry a C++ backtrace; users get the first line.
std::string first_line(std::string s) {
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}
std::string first_line(const c10::Error& e) { return first_line(std::string(e.what_without_backtrace())); }

double seconds(std::chrono::milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; }

bool is_loopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

}  // namespace

Rendezvous Rendezvous::parse(const std::string& spec, const std::string& what) {
  Rendezvous r;
  const auto bad = [&](const std::string& why) {
    return Error(what + " = \"" + spec + "\": " + why + "; expected \"tcp://HOST:PORT\" or \"file:///PATH\"");
  };
  if (spec.rfind("file://", 0) == 0) {
    r.kind = Kind::File;
    r.path = spec.substr(7);
    if (r.path.empty() || r.path[0] != '/') throw bad("the file path must be absolute");
    return r;
  }
  if (spec.rfind("tcp://", 0) == 0) {
    r.kind = Kind::Tcp;
    const std::string rest = spec.substr(6);
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0) throw bad("no HOST:PORT");
    r.host = rest.substr(0, colon);
    const std::string port = rest.substr(colon + 1);
    char* end = nullptr;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 1 || p > 65535) throw bad("the port must be 1..65535");
    r.port = static_cast<int>(p);
    return r;
  }
  throw bad("unknown scheme");
}

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error("data parallel: cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  if (!ok) throw Error("data parallel: cannot bind a loopback socket to find a free port");
  return ntohs(addr.sin_port);
}

struct DataParallel::Impl {
  DataParallelSpec spec;
  c10::Device device{c10::kCPU};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  const char* backend = "gloo";

  std::string where() const {
    return "data parallel (rank " + std::to_string(spec.rank) + " of " + std::to_string(spec.world_size) +
           ", rendezvous " + spec.rendezvous + ")";
  }

  c10::intrusive_ptr<c10d::Store> open_store() {
    const Rendezvous r = Rendezvous::parse(spec.rendezvous);
    try {
      if (r.kind == Rendezvous::Kind::Tcp) {
        c10d::TCPStoreOptions o;
        o.port = static_cast<std::uint16_t>(r.port);
        o.isServer = spec.rank == 0;
        o.numWorkers = spec.world_size;
        o.waitWorkers = false;  // the handshake below waits, with a clearer message
        o.timeout = spec.timeout;
        return c10::make_intrusive<c10d::TCPStore>(r.host, o);
      }
      auto s = c10::make_intrusive<c10d::FileStore>(r.path, spec.world_size);
      s->setTimeout(spec.timeout);
      return s;
    } catch (const c10::Error& e) {
      throw Error(where() + ": cannot open the store: " + first_line(e));
    } catch (const std::exception& e) {  // e.g. c10d's socket errors when no server answers in time
      throw Error(where() + ": cannot open the store: " + first_line(e.what()));
    }
  }

  // Every rank publishes "tag|world_size" and waits for all the others: a rank that never comes
  // is a timeout naming the missing ranks, a rank from another trial or world size a mismatch.
  void handshake() {
    auto keys = c10::make_intrusive<c10d::PrefixStore>("mhd_dp", store);
    const std::string mine = spec.tag + "|" + std::to_string(spec.world_size);
    keys->set("rank/" + std::to_string(spec.rank), std::vector<std::uint8_t>(mine.begin(), mine.end()));
    std::vector<std::string> all;
    for (int r = 0; r < spec.world_size; ++r) all.push_back("rank/" + std::to_string(r));
    try {
      keys->wait(all, spec.timeout);
    } catch (const std::exception&) {
      std::string missing;
      for (int r = 0; r < spec.world_size; ++r)
        if (!keys->check({all[r]})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      throw Error(where() + ": timed out after " + std::to_string(seconds(spec.timeout)).substr(0, 5) +
                  " s waiting for rank(s) " + missing + " to join");
    }
    for (int r = 0; r < spec.world_size; ++r) {
      const auto v = keys->get(all[r]);
      const std::string theirs(v.begin(), v.end());
      if (theirs != mine)
        throw Error(where() + ": rank " + std::to_string(r) + " joined with \"" + theirs + "\" but this rank has \"" +
                    mine + "\" (tag|world_size): the ranks run different trials or world sizes");
    }
  }

  void make_group() {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("pg", store);
    // Collectives may wait long for a slow peer (rank 0 evaluates while the others wait): a dead
    // peer closes its sockets and fails the collective at once, so this bound is only a backstop.
    const auto collective_timeout = std::max<std::chrono::milliseconds>(spec.timeout, std::chrono::minutes(30));
#if defined(MHD_WITH_NCCL)
    if (device.is_cuda()) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = collective_timeout;
      group = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, spec.rank, spec.world_size, options);
      backend = "nccl";
      return;
    }
#endif
#if MHD_HAVE_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(collective_timeout);
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (spec.local) options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else if (ifname && *ifname) options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, spec.rank, spec.world_size, options);
    backend = "gloo";
#else
    throw Error(where() + ": this build has no Gloo headers (install libgloo-dev and rebuild)");
#endif
  }

  // Runs one collective on `flat` (CPU copies when Gloo meets a CUDA tensor).
  template <typename Launch>
  void collective(at::Tensor& flat, const char* name, Launch&& launch) {
    const bool host_copy = flat.is_cuda() && std::string(backend) == "gloo";
    std::vector<at::Tensor> io{host_copy ? flat.cpu() : flat};
    try {
      launch(io)->wait();
    } catch (const c10::Error& e) {
      throw Error(where() + ": " + name + " failed: " + first_line(e));
    } catch (const std::exception& e) {
      throw Error(where() + ": " + name + " failed: " + first_line(e.what()));
    }
    if (host_copy) flat.copy_(io[0]);
  }

  // One flat buffer per dtype: `run` gets it and may change it; the values are copied back.
  template <typename Run>
  void per_dtype(const std::vector<at::Tensor>& tensors, Run&& run) {
    std::map<c10::ScalarType, std::vector<std::size_t>> groups;
    for (std::size_t i = 0; i < tensors.size(); ++i) groups[tensors[i].scalar_type()].push_back(i);
    for (auto& [dtype, idx] : groups) {
      std::vector<at::Tensor> pieces;
      for (auto i : idx) pieces.push_back(tensors[i].reshape({-1}));
      at::Tensor flat = at::cat(pieces);  // [sum of numels]
      run(flat);
      std::int64_t offset = 0;
      for (auto i : idx) {
        const auto n = tensors[i].numel();
        tensors[i].copy_(flat.narrow(0, offset, n).view_as(tensors[i]));
        offset += n;
      }
    }
  }

  void allreduce(at::Tensor& flat, c10d::ReduceOp op = c10d::ReduceOp::SUM) {
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    collective(flat, "allreduce", [&](std::vector<at::Tensor>& io) { return group->allreduce(io, o); });
  }
};

DataParallel::DataParallel(const DataParallelSpec& spec, c10::Device device) : impl_(std::make_unique<Impl>()) {
  impl_->spec = spec;
  impl_->device = device;
  if (spec.world_size < 1 || spec.rank < 0 || spec.rank >= spec.world_size)
    throw Error("data parallel: rank " + std::to_string(spec.rank) + " is outside 0.." +
                std::to_string(spec.world_size - 1) + " (world_size " + std::to_string(spec.world_size) + ")");
  if (spec.rendezvous.rfind("tcp://", 0) == 0 && !impl_->spec.local)
    impl_->spec.local = is_loopback(Rendezvous::parse(spec.rendezvous).host);
  if (spec.scope.empty()) {
    impl_->store = impl_->open_store();
  } else {
    static std::mutex mutex;
    static std::map<std::string, c10::intrusive_ptr<c10d::Store>> shared;  // by rendezvous
    std::lock_guard<std::mutex> lock(mutex);
    auto& base = shared[spec.rendezvous];
    if (!base) base = impl_->open_store();
    impl_->store = c10::make_intrusive<c10d::PrefixStore>(spec.scope, base);
  }
  impl_->handshake();
  try {
    impl_->make_group();
  } catch (const c10::Error& e) {
    throw Error(impl_->where() + ": cannot connect the ranks: " + first_line(e));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(impl_->where() + ": cannot connect the ranks: " + first_line(e.what()));
  }
}

DataParallel::~DataParallel() = default;

int DataParallel::rank() const { return impl_->spec.rank; }
int DataParallel::world_size() const { return impl_->spec.world_size; }
const char* DataParallel::backend() const { return impl_->backend; }

at::Tensor DataParallel::slice_rows(const at::Tensor& global) const {
  const auto B = global.size(0), K = static_cast<std::int64_t>(world_size());
  if (B % K != 0)
    throw Error("train.batch = " + std::to_string(B) + " is not divisible by train.world_size = " + std::to_string(K));
  return global.narrow(0, rank() * (B / K), B / K);
}

void DataParallel::broadcast_from_rank0(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;  // parameters are leaves that require grad: copy into their data
  impl_->per_dtype(tensors, [&](at::Tensor& flat) {
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    impl_->collective(flat, "broadcast", [&](std::vector<at::Tensor>& io) { return impl_->group->broadcast(io, o); });
  });
}

double DataParallel::max_difference_from_rank0(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> copies;
  for (const auto& t : tensors) copies.push_back(t.detach().clone());
  broadcast_from_rank0(copies);
  double diff = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].numel() > 0) diff = std::max(diff, (tensors[i].detach() - copies[i]).abs().max().item<double>());
  at::Tensor t = at::full({1}, diff, at::kDouble);
  impl_->allreduce(t, c10d::ReduceOp::MAX);
  return t.item<double>();
}

void DataParallel::allreduce_sum(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  impl_->per_dtype(tensors, [&](at::Tensor& flat) { impl_->allreduce(flat); });
}

void DataParallel::average_gradients(const std::vector<at::Tensor>& parameters) {
  std::vector<at::Tensor> params, grads;
  for (const auto& p : parameters) {
    if (!p.requires_grad()) continue;
    params.push_back(p);
    grads.push_back(p.grad().defined() ? p.grad() : at::zeros_like(p));
  }
  const double inv_k = 1.0 / static_cast<double>(world_size());
  at::NoGradGuard no_grad;
  impl_->per_dtype(grads, [&](at::Tensor& flat) {
    impl_->allreduce(flat);
    flat.mul_(inv_k);
  });
  for (std::size_t i = 0; i < params.size(); ++i)
    if (!params[i].grad().defined() && grads[i].count_nonzero().item<std::int64_t>() > 0)
      params[i].mutable_grad() = grads[i];
}

double DataParallel::mean_share(double n_local) {
  at::Tensor n = at::full({1}, n_local, at::kDouble);
  impl_->allreduce(n);
  const double n_global = n.item<double>();
  return n_global > 0 ? static_cast<double>(world_size()) * n_local / n_global : 0.0;
}

bool DataParallel::any(bool flag) {
  at::Tensor t = at::full({1}, flag ? 1.0 : 0.0, at::kDouble);
  impl_->allreduce(t);
  return t.item<double>() > 0;
}

bool DataParallel::mean_over_ranks(std::vector<double>& values) {
  const double n = static_cast<double>(values.size());
  at::Tensor count = at::tensor({n, -n}, at::kDouble);  // max of n and of -n: equal counts iff max == min
  impl_->allreduce(count, c10d::ReduceOp::MAX);
  if (count[0].item<double>() != -count[1].item<double>()) return false;
  if (values.empty()) return true;
  at::Tensor t = at::tensor(values, at::kDouble);
  impl_->allreduce(t);
  t.div_(static_cast<double>(world_size()));
  const double* data = t.data_ptr<double>();
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = data[i];
  return true;
}

void DataParallel::barrier() {
  at::Tensor dummy = at::zeros({1}, at::kDouble);
  impl_->collective(dummy, "barrier", [&](std::vector<at::Tensor>&) { return impl_->group->barrier(); });
}

}  // namespace mhd
