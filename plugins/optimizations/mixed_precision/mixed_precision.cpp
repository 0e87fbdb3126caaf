// Optimization plugin `mixed_precision`: the first part of each forward solve in reduced precision,
// the rest in float32 (docs/design.md §3).
//
// wrap_solve gives every forward solve its own map, knowing the solve's limits. Its first
// n = round(reduced_share * max_iter) evaluations run f under autocast (CPU: bfloat16; CUDA: the
// chosen `dtype`), so the matrix products run in reduced precision while the parameters stay
// float32; the value is returned as float32, so the solver's iterates, its residuals and its
// stopping rule stay float32. Every later evaluation runs f in float32.
//
// Why the converged flag refers to a float32 residual: a reduced evaluation is accepted only while
// every sample's relative residual of it, ||f(z) - z|| / (||f(z)|| + 1e-8), is above guard * tol
// (and it is finite). Otherwise f is evaluated again in float32, that value is returned, and the rest
// of the solve runs in float32. So no value with a residual within guard * tol of the stopping rule
// ever comes from reduced precision: a solve reports converged only on a float32 evaluation, and a
// sample's reported final residual below guard * tol is a float32 one. (A damped map wrapped around
// this one, e.g. contractive's, shrinks the solver's residual by its damping a: guard >= 1 / a keeps
// the rule.)
//
// Which evaluations may be reduced: those of the solve itself, whatever the grad mode. Most solvers
// evaluate f without a graph; L-BFGS (and hybrid's L-BFGS phase) takes J_f(z)^T r by autograd inside
// the solve (mhd::residual_objective: grad mode on, z a fresh leaf that requires grad, the gradient
// taken with respect to that leaf only). Skipping every evaluation with grad mode on, as this map
// once did, left L-BFGS with no reduced evaluation at all (0 of 264 in convergence_speed's
// lbfgs + mixed variant). The solver's own search direction may come from a reduced graph; the
// training gradient may not: an evaluation with grad mode on whose z is not such a leaf (unrolled
// training differentiates through f(z) into the parameters: z is the detached start or an earlier
// f's output) runs in float32. So the training gradient never passes through reduced precision and
// float16 needs no loss scaler.
//
// A solver that differentiates f also compares values of its objective 1/2 ||z - f(z)||^2 (L-BFGS's
// Armijo test) and keeps the value of its current point across steps; a reduced value's rounding
// (relative error ~ eps of the type in f) is noise of relative size ~ eps / rel in r, so once rel nears
// eps that noise decides the test, and a float32 trial compared with a reduced current value can fail
// every backtrack: the sample stalls for good (measured: L-BFGS on a contraction stopped at rel
// 1.3e-3 against tol 1e-4 when only the guard applied). So for such evaluations the reduced part also
// ends, with the same float32 redo, once some sample's rel falls below 8 eps (bfloat16: 0.0625,
// float16: 0.0078), where the noise is at most a few percent of phi.
//
// The budget is counted in evaluations of f (line-search trials included), not in the solver's
// iterations, which the map cannot see: for solvers that evaluate f once per iteration they are the
// same; L-BFGS spends its reduced evaluations over fewer steps.
//
// Metrics since the last call: mixed_reduced_evals, mixed_float32_evals, mixed_guard_switches (solves
// that left reduced precision early), mixed_solves.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include "mhd/error.h"
#include "mhd/optimization.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"

namespace {

enum class Reduced { BFloat16, Float16 };

Reduced reduced_from(const std::string& name) {
  if (name == "bfloat16") return Reduced::BFloat16;
  if (name == "float16") return Reduced::Float16;
  throw mhd::Error("mixed_precision: dtype must be \"bfloat16\" or \"float16\", got \"" + name + "\"");
}

at::ScalarType scalar_type(Reduced r) { return r == Reduced::BFloat16 ? at::kBFloat16 : at::kHalf; }

struct MixedOptions {
  double reduced_share = 0.7;
  Reduced dtype = Reduced::BFloat16;
  double guard = 10.0;
};

struct Counts {
  std::int64_t reduced = 0, float32 = 0, guard_switches = 0, solves = 0;
};

// Autocast on `device` in `dtype` for one scope, restoring the previous state (and emptying the
// cast-weight cache when the outermost scope ends, as torch.autocast does: weights change between
// solves).
class AutocastScope {
 public:
  AutocastScope(at::DeviceType device, at::ScalarType dtype) : cuda_(device == at::kCUDA) {
    at::autocast::increment_nesting();
    if (cuda_) {
      was_enabled_ = at::autocast::is_enabled();
      was_dtype_ = at::autocast::get_autocast_gpu_dtype();
      at::autocast::set_autocast_gpu_dtype(dtype);
      at::autocast::set_enabled(true);
    } else {
      was_enabled_ = at::autocast::is_cpu_enabled();
      was_dtype_ = at::autocast::get_autocast_cpu_dtype();
      at::autocast::set_autocast_cpu_dtype(dtype);
      at::autocast::set_cpu_enabled(true);
    }
  }
  ~AutocastScope() {
    if (cuda_) {
      at::autocast::set_enabled(was_enabled_);
      at::autocast::set_autocast_gpu_dtype(was_dtype_);
    } else {
      at::autocast::set_cpu_enabled(was_enabled_);
      at::autocast::set_autocast_cpu_dtype(was_dtype_);
    }
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool cuda_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

// The state of one solve's map.
struct SolveState {
  std::int64_t reduced_left = 0;  // reduced evaluations still allowed
  double switch_below = 0.0;      // guard * tol
  double differentiated_below = 0.0;  // max(guard * tol, 8 eps): for evaluations the solver differentiates
};

// The reduced type's machine epsilon.
double epsilon(Reduced r) { return r == Reduced::BFloat16 ? 0.0078125 : 0.0009765625; }

class MixedPrecision final : public mhd::Optimization {
 public:
  explicit MixedPrecision(MixedOptions o) : o_(o), counts_(std::make_shared<Counts>()) {}

  mhd::TensorMap wrap_solve(mhd::TensorMap f, const mhd::SolveLimits& limits) override {
    auto state = std::make_shared<SolveState>();
    state->reduced_left = std::llround(o_.reduced_share * static_cast<double>(limits.max_iter));
    state->switch_below = o_.guard * limits.tol;
    state->differentiated_below = std::max(state->switch_below, 8.0 * epsilon(o_.dtype));
    ++counts_->solves;
    return [f = std::move(f), state, counts = counts_, dtype = o_.dtype](const at::Tensor& z) -> at::Tensor {
      const bool differentiated = at::GradMode::is_enabled() && solver_leaf(z);
      if (state->reduced_left <= 0 || !z.is_floating_point() || (at::GradMode::is_enabled() && !differentiated)) {
        ++counts->float32;
        return f(z);
      }
      --state->reduced_left;
      if (dtype == Reduced::Float16 && z.device().type() != at::kCUDA)
        throw mhd::Error("mixed_precision: dtype = \"float16\" needs a CUDA device; on CPU use dtype = \"bfloat16\"");
      at::Tensor fz;
      {
        AutocastScope scope(z.device().type(), scalar_type(dtype));
        fz = f(z);
      }
      fz = fz.to(z.scalar_type());
      ++counts->reduced;
      if (acceptable(z, fz, differentiated ? state->differentiated_below : state->switch_below)) return fz;
      state->reduced_left = 0;  // near tol (or non-finite): the rest of the solve is float32
      ++counts->guard_switches;
      ++counts->float32;
      return f(z);
    };
  }

  std::map<std::string, double> metrics() override {
    std::map<std::string, double> m{{"mixed_reduced_evals", static_cast<double>(counts_->reduced)},
                                    {"mixed_float32_evals", static_cast<double>(counts_->float32)},
                                    {"mixed_guard_switches", static_cast<double>(counts_->guard_switches)},
                                    {"mixed_solves", static_cast<double>(counts_->solves)}};
    *counts_ = Counts();
    return m;
  }

 private:
  // z is a point the solver differentiates f at (a leaf it made with requires_grad; see the top):
  // only its own gradient flows through the reduced graph.
  static bool solver_leaf(const at::Tensor& z) { return z.requires_grad() && z.is_leaf(); }

  // A reduced value is kept while every sample's relative residual of it is above guard * tol.
  static bool acceptable(const at::Tensor& z, const at::Tensor& fz, double switch_below) {
    if (fz.sizes() != z.sizes()) return true;  // the solver reports the shape error
    at::NoGradGuard no_grad;  // a check, not part of the solver's graph
    const mhd::Residuals r = mhd::residuals(z.detach(), fz.detach());
    return at::isfinite(fz).all().item<bool>() && r.rel.min().item<double>() > switch_below;
  }

  MixedOptions o_;
  std::shared_ptr<Counts> counts_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Optimization;
  m.name = "mixed_precision";
  m.version = "1.0.0";
  m.description = "Mixed precision: the first reduced_share of each forward solve's iterations under autocast, "
                  "the rest (and the converged check) in float32";
  m.params = {
      mhd::float_param("reduced_share", 0.7,
                       "share of max_iter whose evaluations of f run in reduced precision (0: none, 1: all until "
                       "the guard)",
                       0.0, 1.0),
      mhd::choice_param("dtype", "bfloat16", {"bfloat16", "float16"},
                        "the reduced type: bfloat16 (CPU or CUDA) or float16 (CUDA only)"),
      mhd::float_param("guard", 10.0,
                       "a reduced evaluation with some sample's relative residual within guard * tol is redone in "
                       "float32 and ends the reduced part",
                       1.0, 1e6),
  };
  m.make_optimization = [](const mhd::Params& p) -> std::shared_ptr<mhd::Optimization> {
    MixedOptions o;
    o.reduced_share = p.real("reduced_share");
    o.dtype = reduced_from(p.text("dtype"));
    o.guard = p.real("guard");
    return std::make_shared<MixedPrecision>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Optimization, make_manifest)
