// Plugin parameters: the schema a plugin declares and the validated values it is built from.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mhd {

enum class ParamType { Bool, Int, Float, String };
const char* to_string(ParamType type);

using ParamValue = std::variant<bool, std::int64_t, double, std::string>;
std::string format_param_value(const ParamValue& value);

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::Float;
  ParamValue default_value;
  std::optional<double> min;         // inclusive, Int and Float only
  std::optional<double> max;         // inclusive
  std::vector<std::string> choices;  // String only; empty means any string
  std::string doc;
};
using ParamSchema = std::vector<ParamSpec>;

// Builders, so a manifest reads like a table:  int_param("m", 5, "history size", 1, 64)
ParamSpec int_param(std::string name, std::int64_t default_value, std::string doc,
                    std::optional<std::int64_t> min = std::nullopt,
                    std::optional<std::int64_t> max = std::nullopt);
ParamSpec float_param(std::string name, double default_value, std::string doc,
                      std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt);
ParamSpec bool_param(std::string name, bool default_value, std::string doc);
ParamSpec choice_param(std::string name, std::string default_value, std::vector<std::string> choices,
                       std::string doc);
ParamSpec string_param(std::string name, std::string default_value, std::string doc);

// Why `value` does not fit `spec` ("must be in [1, 64], got 0"), or nullopt when it fits.
// An Int value is accepted for a Float parameter.
std::optional<std::string> check_param_value(const ParamSpec& spec, const ParamValue& value);

const ParamSpec* find_param(const ParamSchema& schema, const std::string& name);

// The closest name in `candidates` to `name` (edit distance <= 3), for "did you mean" hints.
std::optional<std::string> closest_name(const std::string& name, const std::vector<std::string>& candidates);

// Validated values, one per schema entry (defaults filled in). Getters throw mhd::Error naming the
// parameter when it is missing or of another type, which is a plugin bug, not a user error.
class Params {
 public:
  Params() = default;
  static Params defaults(const ParamSchema& schema);

  void set(const std::string& name, ParamValue value);
  bool has(const std::string& name) const;

  bool flag(const std::string& name) const;
  std::int64_t integer(const std::string& name) const;
  double real(const std::string& name) const;  // Int values are widened
  const std::string& text(const std::string& name) const;

  const std::map<std::string, ParamValue>& values() const { return values_; }

 private:
  const ParamValue& at(const std::string& name) const;
  std::map<std::string, ParamValue> values_;
};

// A plugin and its validated parameters.
struct ComponentConfig {
  std::string plugin;
  Params params;  // the plugin's parameters, validated, defaults filled in
};

}  // namespace mhd
