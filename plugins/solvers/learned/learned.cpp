// Solver plugin `learned`: Anderson acceleration with a meta-trained accelerator (docs/design.md §3,
// "Learned solver"; the networks and the solve are mhd/kits/learned_accelerator.h): an initialiser
// that predicts z0 from each position's input (FixedPointProblem::context) and a mixer that corrects
// Anderson's weights and sets the damping beta from the residual history. `mhd meta-train
// CHECKPOINT --out FILE` trains one against a frozen model's tight fixed points; `path` loads it.
//
// Without `path` the solver is plain Anderson (history m, regularisation lam, beta = 1): exactly what
// an untrained accelerator computes, since its output layers start at zero. The fallback, rather
// than refusing to construct, lets a study or the shared solver suite build the plugin from its
// defaults, and makes "learned without a file" the baseline a trained file is measured against.
// A file is read once, at construction: a missing or foreign file is a one-line error then; a file
// trained for another d_model is refused at the first solve whose context shows the model's D.
// A problem without a context (the backward solve) skips the initialiser and keeps the mixer.
#include <memory>
#include <string>

#include "mhd/error.h"
#include "mhd/kits/learned_accelerator.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"

namespace {

class LearnedSolver final : public mhd::Solver {
 public:
  LearnedSolver(std::shared_ptr<mhd::learned::Accelerator> accelerator, mhd::learned::SolveOptions options)
      : accelerator_(std::move(accelerator)), options_(std::move(options)) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    return mhd::learned::accelerated_solve("learned", accelerator_.get(), options_, problem, z0, limits);
  }

 private:
  std::shared_ptr<mhd::learned::Accelerator> accelerator_;  // null: plain Anderson
  mhd::learned::SolveOptions options_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "learned";
  m.version = "1.0.0";
  m.description =
      "Anderson with a meta-trained initialiser and mixing weights (mhd meta-train); plain Anderson without a path";
  m.params = {
      mhd::string_param("path", "",
                        "accelerator file written by mhd meta-train; empty: plain Anderson (an untrained "
                        "accelerator)"),
      mhd::int_param("m", 5, "history size without a file (a file sets its own)", 1, 64),
      mhd::float_param("lam", 1e-4,
                       "Tikhonov regularisation of Anderson's small solve, relative to tr(G G^T)/n as in anderson",
                       0.0, 1e3),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    mhd::learned::SolveOptions o;
    o.lam = p.real("lam");
    o.m = p.integer("m");
    o.source = p.text("path");
    std::shared_ptr<mhd::learned::Accelerator> accelerator;
    if (!o.source.empty()) accelerator = mhd::learned::load_accelerator(o.source);
    return std::make_shared<LearnedSolver>(std::move(accelerator), std::move(o));
  };
  // The study validator reads the file once: missing, foreign or trained for another d_model fails
  // `mhd validate` at solver.path rather than each trial at its start.
  m.check = [](const mhd::Params& p, const mhd::ModelDims& dims) {
    const std::string path = p.text("path");
    if (path.empty()) return;
    std::int64_t trained_for = 0;
    try {
      trained_for = mhd::learned::load_accelerator(path)->dims().d_model;
    } catch (const mhd::Error& e) {
      std::string why = e.what();
      const std::string ours = "learned: ";
      if (why.rfind(ours, 0) == 0) why.erase(0, ours.size());
      throw mhd::Error("learned: path: " + why);
    }
    if (trained_for != dims.d_model)
      throw mhd::Error("learned: path: '" + path + "' was meta-trained for d_model = " + std::to_string(trained_for) +
                       ", this model has d_model = " + std::to_string(dims.d_model) +
                       " (meta-train one on a checkpoint of this model)");
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
