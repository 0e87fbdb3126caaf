#include "config/sections.h"

namespace mhd {

const SectionSchema& study_section() {
  static const SectionSchema s{
      "study",
      "What the study is and where it writes. `seeds` (array of integers, default [0]) and "
      "`plugin_path` (array of directories searched for plugins) are arrays.",
      {
          string_param("name", "", "Name of the study (required); also the default output file name."),
          string_param("description", "", "Free text, stored with the results."),
          choice_param("device", "auto", {"auto", "cpu", "cuda"}, "Where trials run; auto picks CUDA when available."),
          string_param("output", "", "Results file; default results/<name>.sqlite next to the study's working directory."),
          int_param("threads", 0, "Intra-op threads per trial; 0 uses every core.", 0, 1024),
          bool_param("include_base", true, "Run the base configuration as a variant named 'base' beside the [[variant]]s."),
      },
      ""};
  return s;
}

const SectionSchema& model_section() {
  static const SectionSchema s{
      "model",
      "The unified model of docs/design.md §4.",
      {
          int_param("d_model", 64, "Width D of tokens, context and equilibrium state.", 4, 8192),
          int_param("n_layers", 2, "Backbone layers building the context X before the DEQ.", 0, 128),
          bool_param("deq", true, "Solve for the equilibrium Z*; false gives the backbone-only baseline."),
          choice_param("equilibrium", "sequence", {"sequence", "pooled"},
                       "sequence: one state per position, Z: [B, L, D], solved jointly; causal (docs/design.md §4). "
                       "pooled: one z per sequence from the state after the whole sequence, broadcast over L; only "
                       "for tasks scored at the last position (position t would see tokens after t)."),
          choice_param("memory_source", "bank", {"bank", "context", "both"},
                       "What retrieval reads: the memory's persistent bank, the sequence's own keys W_k X and values "
                       "W_v X at positions <= t (causal Hopfield retrieval), or both (their mean)."),
          bool_param("use_memory", true, "Retrieve from the memory inside the dynamics; false drops that branch."),
          bool_param("memory_writes", false,
                     "During training, store each equilibrium's memory query W_q z* whose largest cosine similarity "
                     "to the bank is below write_threshold (novelty-gated; the memory replaces its oldest slots)."),
          float_param("write_threshold", 0.7, "Novelty threshold of memory writes on the cosine similarity.", -1.0, 1.0),
          choice_param("gate", "sigmoid", {"sigmoid", "tanh"}, "Activation of the learned gate g that blends the Mamba update and the memory retrieval."),
          bool_param("residual", false,
                     "true: f(z) = z + W_out(...), whose Jacobian has spectral norm >= 1 at initialisation (measured not to "
                     "converge); false (default): the theory form f(z) = W_out(...) of docs/design.md §4."),
          choice_param("state_norm", "none", {"none", "layernorm"},
                       "layernorm: f(z) = LayerNorm(W_out(...)) (or of z + W_out(...) in the residual form), which bounds the iterates; none is docs/design.md §4."),
          float_param("out_init_scale", 1.0, "Initial scale of W_out relative to the default init (a small value keeps the residual form near the identity at the start).", 0.0, 10.0),
      },
      ""};
  return s;
}

const SectionSchema& energy_section() {
  static const SectionSchema s{
      "energy",
      "The unified energy E(z) = E_mem(W_q z) + alpha ||z - f(z)||^2 + lambda_l2 ||z||^2 + lambda_smooth ||dE_mem/dz||^2.",
      {
          bool_param("enabled", true, "Compute E(z) during solves (traces, objective). Off saves work."),
          float_param("alpha", 1.0, "Weight of the consistency term ||z - f(z)||^2.", 0.0, 1e6),
          float_param("lambda_l2", 1e-3, "Weight of the regulariser ||z||^2.", 0.0, 1e6),
          float_param("lambda_smooth", 0.0, "Weight of the smoothness term ||dE_mem/dz||^2 (one extra backward pass per energy evaluation).", 0.0, 1e6),
      },
      ""};
  return s;
}

const SectionSchema& backbone_section() {
  static const SectionSchema s{"backbone", "The sequence mixer; other keys are the plugin's parameters.",
                               {string_param("plugin", "mamba", "Backbone plugin name.")}, "backbone"};
  return s;
}

const SectionSchema& memory_section() {
  static const SectionSchema s{"memory", "The associative memory; other keys are the plugin's parameters.",
                               {string_param("plugin", "hopfield", "Memory plugin name.")}, "memory"};
  return s;
}

const SectionSchema& solver_section() {
  static const SectionSchema s{
      "solver",
      "The forward equilibrium solver; other keys are the plugin's parameters.",
      {
          string_param("plugin", "anderson", "Solver plugin name."),
          int_param("max_iter", 30, "Most iterations per solve.", 1, 100000),
          float_param("tol", 1e-3, "Stop when the largest relative residual in the batch is below this.", 0.0, 1.0),
          bool_param("warm_start", false,
                     "Start each solve from the previous equilibrium of the same stream (batch row) instead of z0 "
                     "(training and evaluation keep separate streams)."),
      },
      "solver"};
  return s;
}

const SectionSchema& backward_section() {
  static const SectionSchema s{
      "backward",
      "How gradients pass through the equilibrium.",
      {
          choice_param("mode", "implicit", {"implicit", "phantom", "unrolled"},
                       "implicit: solve g = J^T g + dL/dz* with `solver`; phantom: backprop through `phantom_steps` "
                       "damped steps from z*; unrolled: plain iteration from z0 with backprop through every step."),
          string_param("solver", "anderson", "Solver plugin for the backward linear fixed point (its default parameters)."),
          int_param("max_iter", 30, "Most iterations of the backward solve.", 1, 100000),
          float_param("tol", 1e-4, "Relative residual tolerance of the backward solve.", 0.0, 1.0),
          int_param("phantom_steps", 5, "Damped steps from z* whose graph gives the phantom gradient.", 1, 1000),
          float_param("phantom_damping", 0.5, "Damping of the phantom steps: z <- (1 - d) z + d f(z).", 1e-6, 1.0),
      },
      ""};
  return s;
}

const SectionSchema& train_section() {
  static const SectionSchema s{
      "train",
      "The training loop (AdamW). `objective` is a table of loss weights.",
      {
          int_param("steps", 300, "Optimizer steps per trial.", 0, 100000000),
          int_param("batch", 32, "Sequences per step.", 1, 1000000),
          float_param("lr", 1e-3, "AdamW learning rate.", 0.0, 10.0),
          float_param("weight_decay", 0.01, "AdamW weight decay.", 0.0, 10.0),
          float_param("grad_clip", 1.0, "Clip the global gradient norm to this; 0 disables.", 0.0, 1e9),
          int_param("eval_every", 50, "Evaluate on held-out batches every N steps (and at the end); 0 only at the end.", 0, 100000000),
          int_param("eval_batches", 4, "Held-out batches per evaluation.", 1, 100000),
          int_param("log_every", 10, "Print progress every N steps; 0 prints only trial summaries.", 0, 100000000),
          int_param("trace_every", 1, "Store the solver's residual trace every N steps; 0 never.", 0, 100000000),
          int_param("warmup_steps", 0,
                    "Curriculum: learning-rate warm-up, lr * s / warmup_steps at step s until it reaches lr; 0 off.", 0,
                    100000000),
          int_param("schedule_steps", 0,
                    "Curriculum: the forward solve's max_iter and tol move from max_iter_start / tol_start at step 1 "
                    "to the [solver] values at this step (max_iter linearly, tol geometrically); 0 off.",
                    0, 100000000),
          int_param("max_iter_start", 0, "Curriculum: max_iter of the forward solve at step 1; 0 = solver.max_iter.", 0,
                    100000),
          float_param("tol_start", 0.0, "Curriculum: tol of the forward solve at step 1; 0 = solver.tol.", 0.0, 1.0),
          int_param("memory_enable_step", 0,
                    "Curriculum: the memory branch (retrieval and writes) is off before this step and on from it; "
                    "0 or 1: on from the start. Needs model.use_memory.",
                    0, 100000000),
          int_param("validate_every", 0,
                    "Validate every N steps on held-out batches (apart from the evaluation's): val_loss, "
                    "val_accuracy, val_convergence_rate, val_iters_mean/median/max; 0 off.",
                    0, 100000000),
          int_param("validate_batches", 4, "Held-out batches (one forward solve each) per validation.", 1, 100000),
          int_param("checkpoint_every", 0,
                    "Write a checkpoint (model, optimizer, memory bank, step) every N steps when the runner gives "
                    "the trial a checkpoint path; 0 off.",
                    0, 100000000),
          int_param("continual_tasks", 0,
                    "Continual learning: K >= 2 trains K parts of the task (disjoint vocabulary slices) in sequence, "
                    "steps / K steps each, and evaluates every part after each: accuracy matrix and forgetting; 0 off.",
                    0, 1000),
          // Divergence beyond non-finite values (train/divergence.h, docs/studies.md "Divergence").
          float_param("diverge_loss_factor", 10.0,
                      "Divergence: the trial is `diverged` when its loss stays above this factor x |median of the "
                      "previous diverge_window steps| for diverge_patience steps in a row; 0 off.",
                      0.0, 1e12),
          float_param("diverge_residual_factor", 1000.0,
                      "Divergence: the same rule on the forward solve's abs_residual (residuals that explode); 0 off.",
                      0.0, 1e12),
          int_param("diverge_window", 20, "Divergence: steps whose median is the running level (judged once full).", 2,
                    100000),
          int_param("diverge_patience", 5, "Divergence: consecutive steps above the level before the trial diverges.",
                    1, 100000),
          // Data parallel (data_parallel.h): K processes, each on batch / K rows of the same global batch.
          int_param("world_size", 1, "Processes that train this trial data-parallel (gradients averaged with c10d: Gloo on CPU); 1 is off. `batch` must be divisible by it.", 1, 1024),
          string_param("rendezvous", "", "Where the ranks meet: \"tcp://HOST:PORT\" (rank 0 serves) or \"file:///PATH\"; empty: a file store in a fresh temporary folder."),
          float_param("rendezvous_timeout", 60.0, "Seconds a rank waits for the others to join before the trial fails.", 0.1, 86400.0),
      },
      ""};
  return s;
}

const SectionSchema& objective_section() {
  static const SectionSchema s{
      "train.objective",
      "loss = task * L_task + energy * mean E(z*) + convergence * iterations / max_iter "
      "+ stability * relu(L_est - contraction_target) + jacobian * ||J_f(z*)||_F^2 / D.",
      {
          float_param("task", 1.0, "Weight of the task loss (cross-entropy on labelled positions).", 0.0, 1e6),
          float_param("energy", 0.0, "Weight of the mean final energy.", 0.0, 1e6),
          float_param("convergence", 0.0, "Weight of iterations / max_iter (logged; it carries no gradient).", 0.0, 1e6),
          float_param("stability", 0.0, "Weight of relu(L_est - contraction_target), L_est a Lipschitz estimate of f at z* (see lipschitz).", 0.0, 1e6),
          choice_param("lipschitz", "finite_difference", {"finite_difference", "power_iteration"},
                       "L_est of the stability term: finite_difference ||f(z*+d) - f(z*)|| / ||d|| for a random d "
                       "(a lower bound), or power_iteration: the spectral norm ||J_f(z*)||_2, whose gradient is taken "
                       "through u^T J v at the converged singular vectors u, v."),
          int_param("lipschitz_iterations", 10, "Power iterations for lipschitz = \"power_iteration\".", 1, 1000),
          float_param("contraction_target", 0.9, "Lipschitz level above which the stability term acts.", 0.0, 100.0),
          float_param("jacobian", 0.0, "Weight of the Jacobian regulariser ||J_f(z*)||_F^2 / D, a one-sample Hutchinson estimate.", 0.0, 1e6),
      },
      ""};
  return s;
}

const SectionSchema& optimization_common_section() {
  static const SectionSchema s{"optimizations.NAME",
                               "One table per optimization plugin, named by the plugin; other keys are its parameters.",
                               {bool_param("enabled", true, "Apply this optimization (variants can switch it off).")},
                               "optimization"};
  return s;
}

const SectionSchema& probe_common_section() {
  static const SectionSchema s{"probes.NAME",
                               "One table per probe (a measurement of the trained model, run after training), named by "
                               "the probe; other keys are its parameters.",
                               {bool_param("enabled", true, "Run this probe (variants can switch it off).")},
                               "probe"};
  return s;
}

std::vector<const SectionSchema*> all_sections() {
  return {&study_section(),  &model_section(),    &energy_section(),
          &backbone_section(), &memory_section(), &solver_section(),
          &backward_section(), &train_section(),  &objective_section(),
          &optimization_common_section(), &probe_common_section()};
}

}  // namespace mhd
