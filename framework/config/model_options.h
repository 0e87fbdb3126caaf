// The model's typed options (core/model_options.h) from a trial's configuration.
#pragma once

#include <cstdint>

#include "config/trial_config.h"
#include "core/model_options.h"

namespace mhd {

// Validated (ModelOptions::validate). The keys' own ranges were checked by the study parser.
ModelOptions model_options(const TrialConfig& config, std::int64_t vocab_size);

}  // namespace mhd
