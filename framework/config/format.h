// Internal helpers shared by the study parser, the trial configuration and the report: how numbers
// and values are written for people (labels, messages, tables). Not a public header.
#pragma once

#include <string>

#include "mhd/params.h"

namespace mhd::detail {

// The shortest decimal form that reads back as the same double ("0.001", "1e-05", "3").
std::string format_number(double value);

// A value as it appears in labels: numbers as above, strings without quotes, bools true/false.
std::string format_plain(const ParamValue& value);

}  // namespace mhd::detail
