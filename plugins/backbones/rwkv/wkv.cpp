#include "wkv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd::rwkv {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("rwkv: wkv: " + message); }

void check_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
  const std::pair<const char*, const at::Tensor*> all[] = {{"k", &k}, {"v", &v}, {"w", &w}, {"u", &u}};
  for (const auto& [name, t] : all) {
    if (!t->defined()) fail(std::string(name) + " is undefined");
    if (!t->device().is_cpu()) {
      fail(std::string(name) + " is on " + t->device().str() + "; the fused WKV kernel runs on the CPU");
    }
  }
  if (k.dim() != 3) fail("k must be [B, L, D], got " + shape_string(k.sizes()));
  if (v.sizes() != k.sizes()) fail("v must be [B, L, D] like k = " + shape_string(k.sizes()) + ", got " + shape_string(v.sizes()));
  if (w.sizes() != k.sizes()) fail("w must be [B, L, D] like k = " + shape_string(k.sizes()) + ", got " + shape_string(w.sizes()));
  if (u.dim() != 1 || u.size(0) != k.size(2)) fail("u must be [D] = [" + std::to_string(k.size(2)) + "], got " + shape_string(u.sizes()));
}

// Channels per task: the inner loop runs over a block of adjacent channels, which are adjacent in
// memory in [B, L, D], so each time step reads one short contiguous run of k, v and w.
constexpr std::int64_t kBlock = 16;
// Below this many channel-steps per task, threads cost more than they save.
constexpr std::int64_t kMinStepsPerTask = 1 << 14;

std::atomic<std::int64_t> g_last_forward_tasks{0};

template <typename T>
struct Job {
  const T* k;  // [B, L, D]
  const T* v;  // [B, L, D]
  const T* w;  // [B, L, D]
  const T* u;  // [D]
  std::int64_t batch, len, dim;

  std::int64_t blocks() const { return (dim + kBlock - 1) / kBlock; }
  std::int64_t items() const { return batch * blocks(); }
  std::int64_t grain() const { return std::max<std::int64_t>(1, kMinStepsPerTask / std::max<std::int64_t>(1, len * kBlock)); }
};

// One item = batch row b, channels [d0, d0 + n).
struct Item {
  std::int64_t b, d0, n;
};

template <typename T>
Item item_of(const Job<T>& job, std::int64_t item) {
  const std::int64_t b = item / job.blocks(), d0 = (item % job.blocks()) * kBlock;
  return {b, d0, std::min(kBlock, job.dim - d0)};
}

// The output at t from the state before t, and the state after t, for one channel:
//   y_t = (a_{t-1} + e^{u + k} v) / (b_{t-1} + e^{u + k}),  a_t = e^{-w} a_{t-1} + e^{k} v (b alike),
// in the scaled form a = aa e^{pp}; every exponent below is <= 0.
template <typename T>
inline T wkv_step(T& aa, T& bb, T& pp, T u, T k, T v, T w) {
  T ww = u + k;
  T p = std::max(pp, ww);
  T e1 = std::exp(pp - p), e2 = std::exp(ww - p);
  const T y = (e1 * aa + e2 * v) / (e1 * bb + e2);
  ww = pp - w;
  p = std::max(ww, k);
  e1 = std::exp(ww - p);
  e2 = std::exp(k - p);
  aa = e1 * aa + e2 * v;
  bb = e1 * bb + e2;
  pp = p;
  return y;
}

template <typename T>
void forward_items(const Job<T>& job, T* y, T* aa_out, T* bb_out, T* pp_out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t item = begin; item < end; ++item) {
    const Item it = item_of(job, item);
    T aa[kBlock], bb[kBlock], pp[kBlock];
    for (std::int64_t i = 0; i < it.n; ++i) aa[i] = 0, bb[i] = 0, pp[i] = static_cast<T>(kEmptyExponent);
    const T* u = job.u + it.d0;
    for (std::int64_t t = 0; t < job.len; ++t) {
      const std::int64_t off = (it.b * job.len + t) * job.dim + it.d0;
      for (std::int64_t i = 0; i < it.n; ++i)
        y[off + i] = wkv_step(aa[i], bb[i], pp[i], u[i], job.k[off + i], job.v[off + i], job.w[off + i]);
    }
    const std::int64_t s = it.b * job.dim + it.d0;
    for (std::int64_t i = 0; i < it.n; ++i) aa_out[s + i] = aa[i], bb_out[s + i] = bb[i], pp_out[s + i] = pp[i];
  }
}

template <typename T>
struct Grads {
  const T* gy;   // [B, L, D]
  const T* gaa;  // [B, D] or nullptr
  const T* gbb;  // [B, D] or nullptr
  T* dk;         // [B, L, D]
  T* dv;         // [B, L, D]
  T* dw;         // [B, L, D]
  T* du_by_batch;  // [B, D], summed over b by the caller
};

// The backward, per channel. With the adjoints alpha_t = dLoss/da_t, beta_t = dLoss/db_t, the
// denominator Den_t = b_{t-1} + e^{u + k_t} and g_t = dLoss/dy_t:
//   dv_t = g_t e^{u+k_t} / Den_t + alpha_t e^{k_t}
//   dk_t = g_t e^{u+k_t} (v_t - y_t) / Den_t + e^{k_t} (alpha_t v_t + beta_t)       du += the first term
//   dw_t = -e^{-w_t} (alpha_t a_{t-1} + beta_t b_{t-1})
//   alpha_{t-1} = g_t / Den_t + e^{-w_t} alpha_t       beta_{t-1} = -g_t y_t / Den_t + e^{-w_t} beta_t
// a_{t-1} ~ e^{pp_{t-1}} and alpha_t ~ e^{-pp_t}, so the loop carries A_t = alpha_t e^{pp_t} and
// B_t = beta_t e^{pp_t}; then every exponential has an argument <= 0 (pp_t >= k_t, pp_t >= pp_{t-1} - w_t,
// q_t = max(pp_{t-1}, u + k_t)). The final state's gradients enter as A_{L-1} = dLoss/daa,
// B_{L-1} = dLoss/dbb: pp carries no gradient, which is exact for any use of the state that depends on
// (aa e^{pp}, bb e^{pp}) only, as the recurrence itself does (a common shift of pp cancels).
template <typename T>
void backward_items(const Job<T>& job, const Grads<T>& g, std::int64_t begin, std::int64_t end) {
  const std::int64_t L = job.len;
  // States before each t (row t) and after the last (row L), recomputed: 3 (L + 1) kBlock values.
  std::vector<T> s_aa((L + 1) * kBlock), s_bb((L + 1) * kBlock), s_pp((L + 1) * kBlock);
  for (std::int64_t item = begin; item < end; ++item) {
    const Item it = item_of(job, item);
    const T* u = job.u + it.d0;
    for (std::int64_t i = 0; i < it.n; ++i) s_aa[i] = 0, s_bb[i] = 0, s_pp[i] = static_cast<T>(kEmptyExponent);
    for (std::int64_t t = 0; t < L; ++t) {
      const std::int64_t off = (it.b * L + t) * job.dim + it.d0;
      for (std::int64_t i = 0; i < it.n; ++i) {
        T aa = s_aa[t * kBlock + i], bb = s_bb[t * kBlock + i], pp = s_pp[t * kBlock + i];
        wkv_step(aa, bb, pp, u[i], job.k[off + i], job.v[off + i], job.w[off + i]);
        s_aa[(t + 1) * kBlock + i] = aa, s_bb[(t + 1) * kBlock + i] = bb, s_pp[(t + 1) * kBlock + i] = pp;
      }
    }
    const std::int64_t s = it.b * job.dim + it.d0;
    T A[kBlock], Bq[kBlock], du[kBlock];
    for (std::int64_t i = 0; i < it.n; ++i) {
      A[i] = g.gaa ? g.gaa[s + i] : T(0);
      Bq[i] = g.gbb ? g.gbb[s + i] : T(0);
      du[i] = 0;
    }
    for (std::int64_t t = L - 1; t >= 0; --t) {
      const std::int64_t off = (it.b * L + t) * job.dim + it.d0;
      for (std::int64_t i = 0; i < it.n; ++i) {
        const T aa0 = s_aa[t * kBlock + i], bb0 = s_bb[t * kBlock + i], pp0 = s_pp[t * kBlock + i];
        const T pp1 = s_pp[(t + 1) * kBlock + i];
        const T k = job.k[off + i], v = job.v[off + i], w = job.w[off + i];
        const T ww = u[i] + k, q = std::max(pp0, ww);
        const T e1 = std::exp(pp0 - q), e2 = std::exp(ww - q);
        const T den = e1 * bb0 + e2;
        const T y = (e1 * aa0 + e2 * v) / den;
        const T gd = g.gy[off + i] / den;
        const T ek = std::exp(k - pp1), decay = std::exp(pp0 - w - pp1);
        const T gu = gd * e2 * (v - y);
        g.dv[off + i] = gd * e2 + A[i] * ek;
        g.dk[off + i] = gu + ek * (A[i] * v + Bq[i]);
        g.dw[off + i] = -decay * (A[i] * aa0 + Bq[i] * bb0);
        du[i] += gu;
        A[i] = gd * e1 + decay * A[i];
        Bq[i] = -gd * y * e1 + decay * Bq[i];
      }
    }
    for (std::int64_t i = 0; i < it.n; ++i) g.du_by_batch[s + i] = du[i];
  }
}

template <typename T>
Job<T> make_job(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
  return {k.data_ptr<T>(), v.data_ptr<T>(), w.data_ptr<T>(), u.data_ptr<T>(), k.size(0), k.size(1), k.size(2)};
}

// k, v, w, u contiguous, one of float32 / float64.
std::vector<at::Tensor> run_forward(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
  at::Tensor y = at::empty_like(k);
  const auto state_opts = k.options();
  at::Tensor aa = at::empty({k.size(0), k.size(2)}, state_opts), bb = at::empty_like(aa), pp = at::empty_like(aa);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "rwkv_wkv_forward", [&] {
    const Job<scalar_t> job = make_job<scalar_t>(k, v, w, u);
    std::atomic<std::int64_t> tasks{0};
    at::parallel_for(0, job.items(), job.grain(), [&](std::int64_t begin, std::int64_t end) {
      tasks.fetch_add(1, std::memory_order_relaxed);
      forward_items(job, y.data_ptr<scalar_t>(), aa.data_ptr<scalar_t>(), bb.data_ptr<scalar_t>(),
                    pp.data_ptr<scalar_t>(), begin, end);
    });
    g_last_forward_tasks.store(tasks.load(), std::memory_order_relaxed);
  });
  return {y, aa, bb, pp};
}

at::Tensor contiguous_or_undefined(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

// The autograd node: forward and backward are the kernels above; pp is marked non-differentiable.
struct WkvFunction : public torch::autograd::Function<WkvFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
    std::vector<at::Tensor> out = run_forward(k, v, w, u);
    ctx->save_for_backward({k, v, w, u});
    ctx->mark_non_differentiable({out[3]});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &k = saved[0], &v = saved[1], &w = saved[2], &u = saved[3];
    const at::Tensor gy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(k);
    const at::Tensor gaa = contiguous_or_undefined(grads[1]), gbb = contiguous_or_undefined(grads[2]);
    at::Tensor dk = at::empty_like(k), dv = at::empty_like(k), dw = at::empty_like(k);
    at::Tensor du_by_batch = at::empty({k.size(0), k.size(2)}, k.options());
    AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "rwkv_wkv_backward", [&] {
      const Job<scalar_t> job = make_job<scalar_t>(k, v, w, u);
      auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
      const Grads<scalar_t> g{gy.data_ptr<scalar_t>(), ptr(gaa), ptr(gbb), dk.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), du_by_batch.data_ptr<scalar_t>()};
      at::parallel_for(0, job.items(), job.grain(),
                       [&](std::int64_t begin, std::int64_t end) { backward_items(job, g, begin, end); });
    });
    return {dk, dv, dw, du_by_batch.sum(0)};
  }
};

}  // namespace

WkvResult wkv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
  check_args(k, v, w, u);
  // Sums in float32 unless the inputs are float64 (docs/design.md §4, "Backbones").
  const at::ScalarType acc = k.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto prep = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const torch::autograd::variable_list out = WkvFunction::apply(prep(k), prep(v), prep(w), prep(u));
  return {out[0], out[1], out[2], out[3]};
}

std::int64_t last_wkv_forward_tasks() { return g_last_forward_tasks.load(std::memory_order_relaxed); }

}  // namespace mhd::rwkv
