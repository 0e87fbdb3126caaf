#include "train/records.h"

#include "mhd/error.h"

namespace mhd {

const char* to_string(TrialStatus status) {
  switch (status) {
    case TrialStatus::Pending: return "pending";
    case TrialStatus::Running: return "running";
    case TrialStatus::Done: return "done";
    case TrialStatus::Failed: return "failed";
    case TrialStatus::Diverged: return "diverged";
  }
  return "?";
}

TrialStatus trial_status_from_string(const std::string& s) {
  for (auto status : {TrialStatus::Pending, TrialStatus::Running, TrialStatus::Done, TrialStatus::Failed,
                      TrialStatus::Diverged}) {
    if (s == to_string(status)) return status;
  }
  throw Error("unknown trial status '" + s + "' (expected pending, running, done, failed or diverged)");
}

}  // namespace mhd
