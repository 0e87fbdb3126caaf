#include "mhd/params.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "mhd/error.h"

namespace mhd {

const char* to_string(ParamType type) {
  switch (type) {
    case ParamType::Bool: return "bool";
    case ParamType::Int: return "integer";
    case ParamType::Float: return "float";
    case ParamType::String: return "string";
  }
  return "?";
}

std::string format_param_value(const ParamValue& value) {
  std::ostringstream out;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) out << (v ? "true" : "false");
        else if constexpr (std::is_same_v<T, std::string>) out << '"' << v << '"';
        else out << v;
      },
      value);
  return out.str();
}

namespace {
std::optional<double> opt_double(std::optional<std::int64_t> v) {
  if (!v) return std::nullopt;
  return static_cast<double>(*v);
}
}  // namespace

ParamSpec int_param(std::string name, std::int64_t default_value, std::string doc,
                    std::optional<std::int64_t> min, std::optional<std::int64_t> max) {
  return {std::move(name), ParamType::Int, default_value, opt_double(min), opt_double(max), {}, std::move(doc)};
}
ParamSpec float_param(std::string name, double default_value, std::string doc, std::optional<double> min,
                      std::optional<double> max) {
  return {std::move(name), ParamType::Float, default_value, min, max, {}, std::move(doc)};
}
ParamSpec bool_param(std::string name, bool default_value, std::string doc) {
  return {std::move(name), ParamType::Bool, default_value, std::nullopt, std::nullopt, {}, std::move(doc)};
}
ParamSpec choice_param(std::string name, std::string default_value, std::vector<std::string> choices,
                       std::string doc) {
  return {std::move(name), ParamType::String, std::move(default_value), std::nullopt, std::nullopt,
          std::move(choices), std::move(doc)};
}
ParamSpec string_param(std::string name, std::string default_value, std::string doc) {
  return choice_param(std::move(name), std::move(default_value), {}, std::move(doc));
}

std::optional<std::string> check_param_value(const ParamSpec& spec, const ParamValue& value) {
  const bool type_ok = std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        switch (spec.type) {
          case ParamType::Bool: return std::is_same_v<T, bool>;
          case ParamType::Int: return std::is_same_v<T, std::int64_t>;
          case ParamType::Float: return std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>;
          case ParamType::String: return std::is_same_v<T, std::string>;
        }
        return false;
      },
      value);
  if (!type_ok) {
    return std::string("expected ") + to_string(spec.type) + ", got " + format_param_value(value);
  }
  if (spec.type == ParamType::Int || spec.type == ParamType::Float) {
    const double x = std::holds_alternative<double>(value) ? std::get<double>(value)
                                                            : static_cast<double>(std::get<std::int64_t>(value));
    if (!std::isfinite(x)) return "must be a finite number, got " + format_param_value(value);
    const bool below = spec.min && x < *spec.min;
    const bool above = spec.max && x > *spec.max;
    if (below || above) {
      std::ostringstream out;
      out << "must be ";
      if (spec.min && spec.max) out << "in [" << *spec.min << ", " << *spec.max << "]";
      else if (spec.min) out << ">= " << *spec.min;
      else out << "<= " << *spec.max;
      out << ", got " << format_param_value(value);
      return out.str();
    }
  }
  if (spec.type == ParamType::String && !spec.choices.empty()) {
    const auto& s = std::get<std::string>(value);
    if (std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end()) {
      std::string list;
      for (const auto& c : spec.choices) list += (list.empty() ? "" : ", ") + ("\"" + c + "\"");
      return "must be one of " + list + ", got \"" + s + "\"";
    }
  }
  return std::nullopt;
}

const ParamSpec* find_param(const ParamSchema& schema, const std::string& name) {
  for (const auto& spec : schema)
    if (spec.name == name) return &spec;
  return nullptr;
}

namespace {
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}
}  // namespace

std::optional<std::string> closest_name(const std::string& name, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = 4;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(name, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

Params Params::defaults(const ParamSchema& schema) {
  Params p;
  for (const auto& spec : schema) p.values_[spec.name] = spec.default_value;
  return p;
}

void Params::set(const std::string& name, ParamValue value) { values_[name] = std::move(value); }
bool Params::has(const std::string& name) const { return values_.count(name) != 0; }

const ParamValue& Params::at(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw Error("parameter '" + name + "' is not set (is it in the plugin's schema?)");
  return it->second;
}

bool Params::flag(const std::string& name) const {
  const auto& v = at(name);
  if (!std::holds_alternative<bool>(v)) throw Error("parameter '" + name + "' is not a bool");
  return std::get<bool>(v);
}
std::int64_t Params::integer(const std::string& name) const {
  const auto& v = at(name);
  if (!std::holds_alternative<std::int64_t>(v)) throw Error("parameter '" + name + "' is not an integer");
  return std::get<std::int64_t>(v);
}
double Params::real(const std::string& name) const {
  const auto& v = at(name);
  if (std::holds_alternative<double>(v)) return std::get<double>(v);
  if (std::holds_alternative<std::int64_t>(v)) return static_cast<double>(std::get<std::int64_t>(v));
  throw Error("parameter '" + name + "' is not a number");
}
const std::string& Params::text(const std::string& name) const {
  const auto& v = at(name);
  if (!std::holds_alternative<std::string>(v)) throw Error("parameter '" + name + "' is not a string");
  return std::get<std::string>(v);
}

}  // namespace mhd
