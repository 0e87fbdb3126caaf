// The names of the metrics the trainer records (docs/studies.md, "Metrics"), shared by the
// trainer, `mhd report` and the viewer so a name is spelled once. Probes, memories and
// optimizations add their own, prefixed with their name.
#pragma once

namespace mhd::metric {

inline constexpr const char* kAbsResidual = "abs_residual";
inline constexpr const char* kBackwardIters = "backward_iters";
inline constexpr const char* kBackwardRelResidual = "backward_rel_residual";
inline constexpr const char* kChanceAccuracy = "chance_accuracy";  // accuracy of a uniform guess among the task's labels
inline constexpr const char* kCheckpointStep = "checkpoint_step";
inline constexpr const char* kContinualAvgAccuracy = "continual_avg_accuracy";
inline constexpr const char* kContinualForgetting = "continual_forgetting";
inline constexpr const char* kConverged = "converged";
inline constexpr const char* kConvergedShare = "converged_share";  // share of training solves so far that reached tol
inline constexpr const char* kConvergenceTerm = "convergence_term";
inline constexpr const char* kDivergedStep = "diverged_step";
inline constexpr const char* kDpParamDrift = "dp_param_drift";
inline constexpr const char* kEnergy = "energy";
inline constexpr const char* kEnergyConsistency = "energy_consistency";
inline constexpr const char* kEnergyL2 = "energy_l2";
inline constexpr const char* kEnergyMemory = "energy_memory";
inline constexpr const char* kEnergySmooth = "energy_smooth";
inline constexpr const char* kEvalAccuracy = "eval_accuracy";  // held-out accuracy at an evaluation step
inline constexpr const char* kEvalLoss = "eval_loss";
inline constexpr const char* kEvalSolverIters = "eval_solver_iters";
inline constexpr const char* kGradNorm = "grad_norm";
inline constexpr const char* kJacobianFro2 = "jacobian_fro2";
inline constexpr const char* kLoss = "loss";  // the objective minimised at a step (task loss + weighted terms)
inline constexpr const char* kLr = "lr";
inline constexpr const char* kMemoryEnabled = "memory_enabled";
inline constexpr const char* kMemoryWrites = "memory_writes";
inline constexpr const char* kObjectiveTask = "objective_task";
inline constexpr const char* kParameterCount = "parameter_count";  // trainable parameters of the model
inline constexpr const char* kPeakRssMb = "peak_rss_mb";  // peak resident memory of the trial (MiB), once at its end
inline constexpr const char* kRelResidual = "rel_residual";  // the forward solve's largest relative residual
inline constexpr const char* kResumedFromStep = "resumed_from_step";
inline constexpr const char* kSkippedStep = "skipped_step";
inline constexpr const char* kSolverFEvals = "solver_f_evals";
inline constexpr const char* kSolverIters = "solver_iters";  // iterations of the forward solve
inline constexpr const char* kSolverMaxIter = "solver_max_iter";
inline constexpr const char* kSolverMs = "solver_ms";
inline constexpr const char* kSolverTol = "solver_tol";
inline constexpr const char* kStepMs = "step_ms";  // wall time of the training step
inline constexpr const char* kTaskLoss = "task_loss";  // cross-entropy at the labelled positions
inline constexpr const char* kTrainAccuracy = "train_accuracy";
inline constexpr const char* kValAccuracy = "val_accuracy";
inline constexpr const char* kValConvergenceRate = "val_convergence_rate";
inline constexpr const char* kValItersMax = "val_iters_max";
inline constexpr const char* kValItersMean = "val_iters_mean";
inline constexpr const char* kValItersMedian = "val_iters_median";
inline constexpr const char* kValLoss = "val_loss";
inline constexpr const char* kWarmStarted = "warm_started";

// Prefixes of families: memory_<stat> (a memory's stats()), objective_<term> (weighted terms).
inline constexpr const char* kMemoryPrefix = "memory_";
inline constexpr const char* kObjectivePrefix = "objective_";
inline constexpr const char* kContinualAccuracyPrefix = "continual_acc_task";

}  // namespace mhd::metric
