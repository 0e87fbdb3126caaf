// Tensor shapes in error messages.
#pragma once

#include <string>

#include <c10/util/ArrayRef.h>

namespace mhd {

// "[2, 16]" for sizes {2, 16}.
std::string shape_string(c10::IntArrayRef sizes);

}  // namespace mhd
