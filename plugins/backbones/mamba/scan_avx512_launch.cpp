// The tensor side of the AVX-512 build of the fused scan (the kernels are scan_avx512*.cpp, their
// interface scan_kernels.h): float32 or bfloat16 inputs, float32 state and sums. u, delta and
// dLoss/dy are read through their strides (no layout copy), y and the [B, L, D] gradients are
// written channel-contiguous; delta_bias and softplus are applied inside the kernel. Runs
// at::parallel_for, so it is compiled with -fopenmp (CMakeLists.txt).
#include <algorithm>
#include <atomic>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "scan_builds.h"
#include "scan_kernels.h"

namespace mhd::mamba::detail {

namespace {

kernels::Strided strided(const at::Tensor& t) {  // t: [B, L, D]
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// Small tensors as contiguous float32; B and C with unit stride over n.
at::Tensor float_contiguous(const at::Tensor& t) {
  return t.defined() ? t.to(at::kFloat).contiguous() : t;
}
at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

struct Avx512Inputs {
  at::Tensor u, delta, A, B, C, D, bias, h0;  // kept alive while the kernel reads them
  kernels::Job job;

  explicit Avx512Inputs(const ScanArgs& a)
      : u(a.u),
        delta(a.delta.stride(2) == 1 || a.delta.stride(1) == 1 ? a.delta : a.delta.contiguous()),
        A(float_contiguous(a.A)),
        B(unit_last_stride(a.B)),
        C(unit_last_stride(a.C)),
        D(float_contiguous(a.D)),
        bias(float_contiguous(a.delta_bias)),
        h0(float_contiguous(a.h0)) {
    job.elem = a.u.scalar_type() == at::kBFloat16 ? kernels::Elem::BF16 : kernels::Elem::F32;
    job.u = strided(u);
    job.delta = strided(delta);
    job.A = A.data_ptr<float>();
    job.B = B.data_ptr();
    job.B_sb = B.stride(0);
    job.B_st = B.stride(1);
    job.C = C.data_ptr();
    job.C_sb = C.stride(0);
    job.C_st = C.stride(1);
    job.D = D.defined() ? D.data_ptr<float>() : nullptr;
    job.delta_bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
    job.softplus = a.delta_softplus;
    job.h0 = h0.defined() ? h0.data_ptr<float>() : nullptr;
    job.batch = a.u.size(0);
    job.len = a.u.size(1);
    job.dim = a.u.size(2);
    job.nstate = a.A.size(1);
  }
};

}  // namespace

bool avx512_handles(const ScanArgs& a) {
  const auto dtype = a.u.scalar_type();
  return resolved_isa() == ScanIsa::Avx512 && (dtype == at::kFloat || dtype == at::kBFloat16);
}

namespace {

// [B, channel_blocks(D), checkpoint_count(L), N, 16] float32, for the forward to fill (scan_kernels.h).
at::Tensor empty_checkpoints(const kernels::Job& job, const at::TensorOptions& like) {
  return at::empty({job.batch, kernels::channel_blocks(job.dim), kernels::checkpoint_count(job.len), job.nstate,
                    kernels::kLanes},
                   like.dtype(at::kFloat));
}

ScanResult run_forward(const ScanArgs& a, const Avx512Inputs& in, at::Tensor* checkpoints) {
  const kernels::Job& job = in.job;
  const at::Tensor y = at::empty({job.batch, job.len, job.dim}, a.u.options());
  const at::Tensor hL = at::empty({job.batch, job.dim, job.nstate}, a.u.options().dtype(at::kFloat));
  if (checkpoints) *checkpoints = empty_checkpoints(job, a.u.options());
  const kernels::ForwardOut out{y.data_ptr(), hL.data_ptr<float>(),
                                checkpoints ? checkpoints->data_ptr<float>() : nullptr};
  const std::int64_t items = job.batch * kernels::channel_blocks(job.dim);
  const std::int64_t per_item = std::max<std::int64_t>(1, job.len * job.nstate * kernels::kLanes);
  std::atomic<std::int64_t> tasks{0};
  at::parallel_for(0, items, std::max<std::int64_t>(1, kMinUpdatesPerTask / per_item),
                   [&](std::int64_t begin, std::int64_t end) {
                     tasks.fetch_add(1, std::memory_order_relaxed);
                     kernels::avx512_forward(job, out, begin, end);
                   });
  record_forward_tasks(tasks.load());
  return {y, hL};
}

}  // namespace

// y: [B, L, D] contiguous in u's dtype; h_L: [B, D, N] float32.
ScanResult avx512_forward(const ScanArgs& a, at::Tensor* checkpoints) {
  return run_forward(a, Avx512Inputs(a), checkpoints);
}

FusedGrads avx512_backward(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL,
                           const at::Tensor& checkpoints) {
  const Avx512Inputs in(a);
  const kernels::Job& job = in.job;
  // Checkpoints the forward did not keep (it ran another build) are made by running it again.
  at::Tensor ck = checkpoints;
  if (!ck.defined()) run_forward(a, in, &ck);
  const at::Tensor gy_in = gy.scalar_type() == a.u.scalar_type() ? gy : gy.to(a.u.scalar_type());
  const at::Tensor ghL_f = float_contiguous(ghL);
  const std::int64_t blocks = kernels::channel_blocks(job.dim);
  const std::int64_t P = chunks_per_batch(job.batch, blocks);
  const auto opts = a.u.options().dtype(at::kFloat);
  const at::Tensor du = at::empty({job.batch, job.len, job.dim}, opts);
  const at::Tensor ddelta = at::empty({job.batch, job.len, job.dim}, opts);
  const at::Tensor dA_by_batch = at::empty({job.batch, job.dim, job.nstate}, opts);
  const at::Tensor dD_by_batch = at::empty({job.batch, job.dim}, opts);
  const at::Tensor dbias_by_batch = at::empty({job.batch, job.dim}, opts);
  const at::Tensor dB_parts = at::zeros({job.batch, P, job.len, job.nstate}, opts);
  const at::Tensor dC_parts = at::zeros({job.batch, P, job.len, job.nstate}, opts);
  const at::Tensor dh0 = at::empty({job.batch, job.dim, job.nstate}, opts);
  kernels::BackwardOut out;
  out.checkpoints = ck.data_ptr<float>();
  out.gy = strided(gy_in);
  out.ghL = ghL_f.defined() ? ghL_f.data_ptr<float>() : nullptr;
  out.du = du.data_ptr<float>();
  out.ddelta = ddelta.data_ptr<float>();
  out.dA_by_batch = dA_by_batch.data_ptr<float>();
  out.dD_by_batch = dD_by_batch.data_ptr<float>();
  out.dbias_by_batch = dbias_by_batch.data_ptr<float>();
  out.dB_parts = dB_parts.data_ptr<float>();
  out.dC_parts = dC_parts.data_ptr<float>();
  out.dh0 = dh0.data_ptr<float>();
  out.parts = P;
  const std::int64_t per_task = std::max<std::int64_t>(1, blocks / P * job.len * job.nstate * kernels::kLanes);
  at::parallel_for(0, job.batch * P, std::max<std::int64_t>(1, kMinUpdatesPerTask / per_task),
                   [&](std::int64_t begin, std::int64_t end) { kernels::avx512_backward(job, out, begin, end); });

  FusedGrads g;
  g.u = as_dtype_of(du, a.u);
  g.delta = as_dtype_of(ddelta, a.delta);
  g.A = as_dtype_of(dA_by_batch.sum(0), a.A);
  g.B = as_dtype_of(P == 1 ? dB_parts.squeeze(1) : dB_parts.sum(1), a.B);
  g.C = as_dtype_of(P == 1 ? dC_parts.squeeze(1) : dC_parts.sum(1), a.C);
  if (a.D.defined()) g.D = as_dtype_of(dD_by_batch.sum(0), a.D);
  if (a.delta_bias.defined()) g.delta_bias = as_dtype_of(dbias_by_batch.sum(0), a.delta_bias);
  if (a.h0.defined()) g.h0 = as_dtype_of(dh0, a.h0);
  return g;
}

}  // namespace mhd::mamba::detail
