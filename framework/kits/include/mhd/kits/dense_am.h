// Dense associative memory: the energy E = -Q( sum_mu F( S(xi_mu, x) ) ) built from three
// choices, shared by the `dense_am` memory plugin (continuous states, differentiable) and the discrete
// capacity experiment (capacity.h, +-1 states and sign updates).
//
//   similarity S(xi, x):  dot        xi . x
//                         cosine     xi . x / (||xi|| ||x||)
//                         neg_dist   -||x - xi||^2
//   separation F(S):      poly       S^n                 (seed: "power nonlinearity"; Krotov-Hopfield)
//                         rect_poly  max(0, S)^n         (seed: "rectified power")
//                         exp        exp(beta S)         (seed: "exponential"; modern Hopfield)
//   shaping Q(z):         linear     z
//                         log        log z               (exp + log: E = -log sum exp(beta S), lse energy)
//                         power      z^p, p > 1
//
// The original design's capacity section uses F(x) = x^n / n so that f = F' = x^(n-1); the positive factor 1/n
// changes neither an update's sign nor the order of energies, so here F(S) = S^n (the seed's
// "general form") and F'(S) = n S^(n-1).
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace mhd::dam {

enum class Similarity { Dot, Cosine, NegDistance };
enum class Separation { Poly, RectifiedPoly, Exp };
enum class Shaping { Linear, Log, Power };

struct Spec {
  Similarity similarity = Similarity::Dot;
  Separation separation = Separation::Poly;
  std::int64_t degree = 3;  // n of poly / rect_poly (>= 1)
  double beta = 1.0;        // inverse temperature of exp (> 0)
  Shaping shaping = Shaping::Linear;
  double power = 2.0;       // p of the power shaping (> 1)
};

// "dot" | "cosine" | "neg_dist";  "poly" | "rect_poly" | "exp";  "linear" | "log" | "power".
// Unknown names throw mhd::Error naming the accepted ones.
Similarity parse_similarity(const std::string& name);
Separation parse_separation(const std::string& name);
Shaping parse_shaping(const std::string& name);

// Throws mhd::Error when the choices do not define a real energy: degree < 1, beta <= 0, p <= 1, or
// log / power shaping of an evidence z = sum F that can be negative (poly of odd degree), or
// neg_dist with a polynomial separation (S <= 0 there: F would reward distance or vanish).
void validate(const Spec& spec);

// S(xi_mu, x) for every query and pattern. query: [B, D], patterns: [M, D] -> [B, M]; or per
// sequence (the context source): query [B, Lq, D], patterns [B, M, D] -> [B, Lq, M].
at::Tensor similarity(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns);

// F(S) and F'(S), elementwise (any shape).
at::Tensor separation(const Spec& spec, const at::Tensor& s);
at::Tensor separation_derivative(const Spec& spec, const at::Tensor& s);

// E(x) = -Q( sum_mu F(S_mu) ). query: [B, D], patterns: [M, D] -> [B] (or the per-sequence
// shapes of similarity -> [B, Lq]). exp + log is computed as a logsumexp, so it does not overflow;
// differentiable with respect to the query and the patterns. `visible` (bool, broadcastable to the
// similarities' shape; undefined: all) restricts the sum to the patterns a query may see.
at::Tensor energy(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns,
                  const at::Tensor& visible = {});

// The retrieval weights w_mu = F'(S_mu) / sum_nu |F'(S_nu)|: [B, M], rows of absolute sum 1.
// retrieve(x) = w X is the direction of the original design's update T(x) = Sign[X^T f(X x)] (eq. 2) before the
// sign, normalised so that ||retrieve(x)|| <= max ||xi|| instead of taking the sign. For dot
// similarity it is the direction of -grad_x E; for neg_dist (exp only) it is the point -grad_x E
// pulls x towards (-grad_x E = c (w X - x), c > 0). For exp it is softmax(beta S): the
// modern Hopfield update. Shaping rescales -grad E by Q'(z) > 0 alike for every mu, so it does not
// change the weights. poly of even degree gives anti-aligned patterns negative weights (-xi is
// stored too, as in the classical Hopfield network).
// Hidden patterns (`visible` false) get exactly 0 weight.
at::Tensor retrieval_weights(const Spec& spec, const at::Tensor& query, const at::Tensor& patterns,
                             const at::Tensor& visible = {});

}  // namespace mhd::dam
