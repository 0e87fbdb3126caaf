// Dense associative memory energies and retrieval weights (dense_am.h).
#include "mhd/kits/dense_am.h"

#include <limits>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"

namespace mhd::dam {

namespace {

// Below this a sum of |F'| or an evidence z counts as zero (a division or log would blow up).
constexpr double kTiny = 1e-30;
constexpr double kInfinity = std::numeric_limits<double>::infinity();

// values with `fill` where `visible` is false (undefined visible: all kept).
at::Tensor hide(const at::Tensor& values, const at::Tensor& visible, double fill) {
  return visible.defined() ? values.masked_fill(visible.logical_not(), fill) : values;
}

[[noreturn]] void unknown(const char* what, const std::string& name, const char* accepted) {
  throw Error(std::string("dense_am: ") + what + " must be one of " + accepted + ", got \"" + name + "\"");
}

bool is_poly(const Spec& spec) { return spec.separation != Separation::Exp; }

}  // namespace

Similarity parse_similarity(const std::string& name) {
  if (name == "dot") return Similarity::Dot;
  if (name == "cosine") return Similarity::Cosine;
  if (name == "neg_dist") return Similarity::NegDistance;
  unknown("similarity", name, "\"dot\", \"cosine\", \"neg_dist\"");
}

Separation parse_separation(const std::string& name) {
  if (name == "poly") return Separation::Poly;
  if (name == "rect_poly") return Separation::RectifiedPoly;
  if (name == "exp") return Separation::Exp;
  unknown("separation", name, "\"poly\", \"rect_poly\", \"exp\"");
}

Shaping parse_shaping(const std::string& name) {
  if (name == "linear") return Shaping::Linear;
  if (name == "log") return Shaping::Log;
  if (name == "power") return Shaping::Power;
  unknown("shaping", name, "\"linear\", \"log\", \"power\"");
}

void validate(const Spec& spec) {
  if (is_poly(spec) && spec.degree < 1) {
    throw Error("dense_am: degree must be >= 1, got " + std::to_string(spec.degree));
  }
  if (spec.separation == Separation::Exp && !(spec.beta > 0)) {
    throw Error("dense_am: beta must be > 0, got " + std::to_string(spec.beta));
  }
  if (spec.shaping == Shaping::Power && !(spec.power > 1)) {
    throw Error("dense_am: power must be > 1, got " + std::to_string(spec.power));
  }
  // z = sum_mu S_mu^n is negative for some states when n is odd: log z and z^p are not real there.
  const bool z_can_be_negative = spec.separation == Separation::Poly && spec.degree % 2 == 1;
  if (spec.shaping != Shaping::Linear && z_can_be_negative) {
    throw Error("dense_am: shaping \"" + std::string(spec.shaping == Shaping::Log ? "log" : "power") +
                "\" needs an evidence z >= 0: use an even degree, rect_poly or exp (got poly of degree " +
                std::to_string(spec.degree) + ")");
  }
  if (spec.similarity == Similarity::NegDistance && spec.separation != Separation::Exp) {
    throw Error("dense_am: similarity \"neg_dist\" (S <= 0) needs separation \"exp\"; a polynomial of S <= 0 "
                "would reward distance (odd degree) or vanish (rect_poly)");
  }
}

at::Tensor similarity(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns) {
  switch (spec.similarity) {
    case Similarity::Dot:
      return query.matmul(patterns.transpose(-2, -1));  // [B, M] or [B, Lq, M]
    case Similarity::Cosine: {
      const at::Tensor q = query / query.norm(2, -1, true).clamp_min(1e-12);        // [B, (Lq,) D]
      const at::Tensor x = patterns / patterns.norm(2, -1, true).clamp_min(1e-12);  // [(B,) M, D]
      return q.matmul(x.transpose(-2, -1));
    }
    case Similarity::NegDistance: {
      // -||q - x||^2 = -(||q||^2 - 2 q.x + ||x||^2), clamped at 0 against rounding.
      const at::Tensor sq = query.pow(2).sum(-1, true) - 2 * query.matmul(patterns.transpose(-2, -1)) +
                            patterns.pow(2).sum(-1).unsqueeze(-2);
      return -sq.clamp_min(0);
    }
  }
  throw Error("dense_am: unknown similarity");
}

at::Tensor separation(const Spec& spec, const at::Tensor& s) {
  const double n = static_cast<double>(spec.degree);
  switch (spec.separation) {
    case Separation::Poly: return s.pow(n);
    case Separation::RectifiedPoly: return s.clamp_min(0).pow(n);
    case Separation::Exp: return (spec.beta * s).exp();
  }
  throw Error("dense_am: unknown separation");
}

at::Tensor separation_derivative(const Spec& spec, const at::Tensor& s) {
  const double n = static_cast<double>(spec.degree);
  switch (spec.separation) {
    case Separation::Poly:
      return spec.degree == 1 ? at::ones_like(s) : n * s.pow(n - 1);
    case Separation::RectifiedPoly:
      // n = 1: the step function (0^0 would give 1 for S <= 0).
      return spec.degree == 1 ? s.gt(0).to(s.scalar_type()) : n * s.clamp_min(0).pow(n - 1);
    case Separation::Exp: return spec.beta * (spec.beta * s).exp();
  }
  throw Error("dense_am: unknown separation");
}

at::Tensor energy(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns, const at::Tensor& visible) {
  const at::Tensor s = similarity(spec, query, patterns);  // [B, M]
  if (spec.separation == Separation::Exp) {
    // log z = logsumexp(beta S): Q(z) from log z without forming z.
    const at::Tensor log_z = at::logsumexp(hide(spec.beta * s, visible, -kInfinity), -1);  // [B]
    switch (spec.shaping) {
      case Shaping::Linear: return -log_z.exp();
      case Shaping::Log: return -log_z;
      case Shaping::Power: return -(spec.power * log_z).exp();
    }
  }
  const at::Tensor z = hide(separation(spec, s), visible, 0.0).sum(-1);  // [B]
  switch (spec.shaping) {
    case Shaping::Linear: return -z;
    case Shaping::Log: return -z.clamp_min(kTiny).log();
    case Shaping::Power: return -z.clamp_min(0).pow(spec.power);
  }
  throw Error("dense_am: unknown shaping");
}

at::Tensor retrieval_weights(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns,
                             const at::Tensor& visible) {
  const at::Tensor s = hide(similarity(spec, query, patterns), visible, 0.0);  // [B, M]
  if (spec.separation == Separation::Exp) return at::softmax(hide(spec.beta * s, visible, -kInfinity), -1);
  // F' is homogeneous of degree n - 1, so dividing S by its row maximum |S| first changes no weight
  // and keeps S^(n-1) in range for large n or large queries. The scale carries no gradient: the
  // weights do not depend on it.
  const at::Tensor scale = s.detach().abs().amax(-1, true).clamp_min(1e-12);  // [B, 1]
  const at::Tensor f = hide(separation_derivative(spec, s / scale), visible, 0.0);  // [B, M]
  return f / f.abs().sum(-1, true).clamp_min(kTiny);
}

}  // namespace mhd::dam
