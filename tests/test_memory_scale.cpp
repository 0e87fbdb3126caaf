// The memories at scale (docs/design.md §3, "Memory at scale"): `sparse_hash` and
// `product_key` loaded through the registry. Searched exhaustively they are dense Hopfield
// retrieval; product-key search finds exactly the best Cartesian cells; energies match finite
// differences (float64); gradients reach the hash W and the sub-keys; the context source is causal;
// memory use is reported in bytes; bad parameters get one-line errors naming the key. And the
// `hierarchical` memory: its energy's gradient, its router, its amortised consolidation.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "memory_test_support.h"

namespace {

class MemoryScale : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

// The configurations that search every stored pattern: equal to the `hopfield` plugin.
const std::vector<std::pair<std::string, Overrides>>& exhaustive() {
  static const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash",
       {{"size", std::int64_t{64}}, {"buckets", std::int64_t{8}}, {"top_k", std::int64_t{8}}, {"rounds", std::int64_t{2}}}},
      {"product_key",
       {{"size", std::int64_t{64}}, {"top_k", std::int64_t{8}}, {"cells", std::int64_t{64}}, {"heads", std::int64_t{2}}}},
  };
  return configs;
}

TEST_F(MemoryScale, EverythingSearchedIsDenseHopfield) {
  const std::int64_t dim = 16, slots = 64;
  const double beta = 4.0;
  const at::Tensor stored = 2 * random_patterns(slots, dim);
  auto dense = make_memory("hopfield", dim, {{"size", slots}, {"beta", beta}, {"init", std::string("zeros")}});
  dense->write(stored);
  for (const auto& [name, base] : exhaustive()) {
    Overrides o = base;
    o["beta"] = beta;
    o["init"] = std::string("zeros");
    auto sparse = make_memory(name, dim, o);
    ASSERT_EQ(sparse->write(stored), slots);
    const at::Tensor q = at::randn({10, dim});
    EXPECT_LT(max_abs_diff(sparse->retrieve(q), dense->retrieve(q)), 1e-5) << name;
    EXPECT_LT(max_abs_diff(sparse->energy(q), dense->energy(q)), 1e-5) << name;
    EXPECT_EQ(sparse->stats(q).at("candidates_per_query"), static_cast<double>(slots)) << name;

    const at::Tensor Q = at::randn({2, 5, dim}), K = at::randn({2, 9, dim}), V = at::randn({2, 9, dim});
    EXPECT_LT(max_abs_diff(sparse->retrieve_context(Q, K, V), dense->retrieve_context(Q, K, V)), 1e-5) << name;
    EXPECT_LT(max_abs_diff(sparse->context_energy(Q, K), dense->context_energy(Q, K)), 1e-5) << name;
  }
}

// Without autograd the retrieval reads the index directly (fused, no gathered [N, C, D]); with it,
// the differentiable tensor path runs. Both give the same retrieval and energy.
TEST_F(MemoryScale, FusedPathEqualsTheDifferentiablePath) {
  const std::int64_t dim = 24;
  const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash", {{"size", std::int64_t{900}}, {"buckets", std::int64_t{16}}, {"top_k", std::int64_t{3}},
                       {"rounds", std::int64_t{3}}, {"beta", 5.0}}},
      {"product_key", {{"size", std::int64_t{900}}, {"top_k", std::int64_t{6}}, {"cells", std::int64_t{10}},
                       {"heads", std::int64_t{3}}, {"beta", 5.0}}},
  };
  for (const auto& [name, o] : configs) {
    auto memory = make_memory(name, dim, o);
    const at::Tensor q = at::randn({40, dim});
    const at::Tensor graph_out = memory->retrieve(q), graph_energy = memory->energy(q);
    ASSERT_TRUE(graph_out.requires_grad()) << name << ": the router's parameters put the tensor path on the graph";
    at::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(memory->retrieve(q), graph_out), 1e-5) << name;
    EXPECT_LT(max_abs_diff(memory->energy(q), graph_energy), 1e-5) << name;
    // The empty-row convention holds on both paths: an empty memory reads 0.
    Overrides empty = o;
    empty["init"] = std::string("zeros");
    EXPECT_TRUE(make_memory(name, dim, empty)->retrieve(q).eq(0).all().item<bool>()) << name;
  }
}

// A solve fixes each query row's searched buckets at its first iterate (search = "per_solve"):
// along a path of iterates q(t) from q0 to q1 the retrieval then changes smoothly, and every
// retrieval of the solve reads the fixed buckets (solve_searches = 0). Searched at every call
// (per_call, the negative control) the candidates switch where q(t) crosses a bucket boundary and
// the retrieval jumps. The tensor path (autograd) reads the same fixed buckets as the fused one.
TEST_F(MemoryScale, OneSolveKeepsEachQuerysCandidates) {
  const std::int64_t dim = 16, rows = 8, steps = 200;
  const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash", {{"size", std::int64_t{1024}}, {"buckets", std::int64_t{32}}, {"top_k", std::int64_t{2}},
                       {"rounds", std::int64_t{2}}}},
      {"product_key", {{"size", std::int64_t{1024}}, {"top_k", std::int64_t{4}}, {"cells", std::int64_t{4}},
                       {"heads", std::int64_t{2}}}},
  };
  const at::Tensor q0 = random_patterns(rows, dim), q1 = random_patterns(rows, dim);
  auto largest_jump = [&](mhd::Memory& memory) {  // max_t |r(q(t + dt)) - r(q(t))|
    at::NoGradGuard no_grad;
    memory.begin_solve(q0);
    double jump = 0;
    at::Tensor previous = memory.retrieve(q0);
    for (std::int64_t i = 1; i <= steps; ++i) {
      const at::Tensor r = memory.retrieve(at::lerp(q0, q1, static_cast<double>(i) / steps));
      jump = std::max(jump, max_abs_diff(r, previous));
      previous = r;
    }
    memory.begin_solve(at::Tensor());
    return jump;
  };
  for (const auto& [name, base] : configs) {
    Overrides o = base;
    o["search"] = std::string("per_call");
    auto per_call = make_memory(name, dim, o);
    at::manual_seed(1);
    o["search"] = std::string("per_solve");
    auto per_solve = make_memory(name, dim, o);
    at::manual_seed(1);
    auto twin = make_memory(name, dim, o);  // the same bank and router as per_solve

    const double fixed = largest_jump(*per_solve);
    EXPECT_EQ(per_solve->stats(q0).at("solve_searches"), 0) << name;
    EXPECT_EQ(per_solve->stats(q0).at("solve_fixed_reads"), steps + 1) << name;
    const double searched = largest_jump(*per_call);
    EXPECT_EQ(per_call->stats(q0).at("solve_searches"), steps + 1) << name;
    EXPECT_LT(fixed, 0.05) << name << ": within a solve the retrieval is smooth";
    EXPECT_GT(searched, 5 * fixed) << name << ": searched per call, the candidates switch and the retrieval jumps";

    // The tensor path under a solve reads the fixed buckets too; a closed solve searches afresh.
    per_solve->begin_solve(q0);
    const at::Tensor on_graph = per_solve->retrieve(q1.clone().requires_grad_(true));
    const at::Tensor fused = [&] { at::NoGradGuard g; return per_solve->retrieve(q1); }();
    per_solve->begin_solve(at::Tensor());
    EXPECT_LT(max_abs_diff(on_graph, fused), 1e-5) << name;
    at::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(per_solve->retrieve(q1), twin->retrieve(q1)), 1e-6) << name;
    EXPECT_GT(max_abs_diff(fused, twin->retrieve(q1)), 1e-3) << name << ": q0's buckets are not q1's";
  }
}

// Product-key search (top_k sub-keys per half, top_k^2 candidates re-scored) finds exactly the best
// `cells` of all n^2 Cartesian keys when cells <= top_k, and files each pattern under its nearest
// Cartesian key: compared with a brute force over every cell.
TEST_F(MemoryScale, ProductKeySearchEqualsBruteForceOverTheCartesianKeys) {
  const std::int64_t dim = 8, n = 16, K = n * n, cells = 4;
  const double beta = 3.0;
  auto memory = make_memory("product_key", dim, {{"size", K}, {"top_k", std::int64_t{4}}, {"cells", cells},
                                                 {"beta", beta}, {"init", std::string("zeros")}});
  const at::Tensor stored = random_patterns(K, dim);
  memory->write(stored);
  const at::Tensor sub = named_tensor(*memory, "subkeys").detach();  // [1, 2, n, D/2]
  ASSERT_TRUE(sub.defined());
  // Scores of every Cartesian key [c1_i ; c2_j] for unit halves: [N, n^2].
  auto cartesian = [&](const at::Tensor& x) {
    const at::Tensor x1 = x.narrow(1, 0, dim / 2), x2 = x.narrow(1, dim / 2, dim / 2);
    const at::Tensor s1 = (x1 / x1.norm(2, -1, true)).matmul(sub[0][0].t());  // [N, n]
    const at::Tensor s2 = (x2 / x2.norm(2, -1, true)).matmul(sub[0][1].t());
    return (s1.unsqueeze(2) + s2.unsqueeze(1)).reshape({x.size(0), K});
  };
  const at::Tensor filed = cartesian(stored).argmax(1);  // [K]: each pattern's nearest Cartesian key
  const at::Tensor q = at::randn({12, dim});
  const at::Tensor searched = std::get<1>(cartesian(q).topk(cells, 1));  // [12, cells]
  at::NoGradGuard no_grad;
  const at::Tensor got = memory->retrieve(q);
  for (std::int64_t b = 0; b < q.size(0); ++b) {
    const at::Tensor in_cells = filed.unsqueeze(1).eq(searched[b].unsqueeze(0)).any(1);  // [K]
    const at::Tensor x = stored.index({in_cells});
    ASSERT_GT(x.size(0), 0) << "query " << b << " found no pattern in its cells";
    const at::Tensor expected = at::softmax(beta * x.matmul(q[b]), 0).matmul(x);
    EXPECT_LT(max_abs_diff(got[b], expected), 1e-5) << "query " << b;
  }
}

// Float64: d/dq energy (autograd) against central differences, and grad E = q - retrieve(q) within
// the candidate set (the Hopfield relation the DEQ's energy terms rely on).
TEST_F(MemoryScale, EnergiesMatchFiniteDifferences) {
  const std::int64_t dim = 12;
  const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash", {{"size", std::int64_t{200}}, {"buckets", std::int64_t{16}}, {"top_k", std::int64_t{3}},
                       {"rounds", std::int64_t{2}}, {"beta", 3.0}}},
      {"product_key", {{"size", std::int64_t{196}}, {"top_k", std::int64_t{4}}, {"cells", std::int64_t{6}},
                       {"heads", std::int64_t{2}}, {"beta", 3.0}}},
  };
  for (const auto& [name, o] : configs) {
    auto memory = make_memory(name, dim, o);
    memory->to(at::kDouble);
    const at::Tensor q = at::randn({6, dim}, at::kDouble).requires_grad_(true);
    const at::Tensor grad = torch::autograd::grad({memory->energy(q).sum()}, {q})[0];
    EXPECT_LT(max_abs_diff(grad, q.detach() - memory->retrieve(q.detach())), 1e-10) << name;
    const double h = 1e-6;
    for (int trial = 0; trial < 3; ++trial) {
      const at::Tensor dir = at::randn({6, dim}, at::kDouble);
      at::NoGradGuard no_grad;
      const at::Tensor fd = (memory->energy(q.detach() + h * dir) - memory->energy(q.detach() - h * dir)) / (2 * h);
      EXPECT_LT(max_abs_diff(fd, (grad * dir).sum(1)), 1e-6) << name;
    }
    // The context energy, with respect to the queries.
    const at::Tensor Q = at::randn({2, 4, dim}, at::kDouble).requires_grad_(true);
    const at::Tensor Kc = at::randn({2, 7, dim}, at::kDouble);
    const at::Tensor gQ = torch::autograd::grad({memory->context_energy(Q, Kc).sum()}, {Q})[0];
    const at::Tensor dir = at::randn({2, 4, dim}, at::kDouble);
    at::NoGradGuard no_grad;
    const at::Tensor fd = (memory->context_energy(Q.detach() + h * dir, Kc) - memory->context_energy(Q.detach() - h * dir, Kc)) / (2 * h);
    EXPECT_LT(max_abs_diff(fd, (gQ * dir).sum(2)), 1e-6) << name;
  }
}

// The router learns: a loss on the retrieval (bank and context sources) puts a gradient on W and on
// the sub-keys; with learn_hash / learn_keys off they are buffers and nothing is trained.
TEST_F(MemoryScale, GradientsReachTheHashAndTheSubKeys) {
  const std::int64_t dim = 16;
  const std::vector<std::tuple<std::string, std::string, std::string, Overrides>> configs = {
      {"sparse_hash", "hash", "learn_hash", {{"size", std::int64_t{256}}, {"buckets", std::int64_t{16}}, {"top_k", std::int64_t{4}}}},
      {"product_key", "subkeys", "learn_keys", {{"size", std::int64_t{256}}, {"top_k", std::int64_t{4}}, {"cells", std::int64_t{8}}}},
  };
  for (const auto& [name, param, flag, o] : configs) {
    auto memory = make_memory(name, dim, o);
    ASSERT_EQ(memory->parameters().size(), 1u) << name;
    const at::Tensor w = named_tensor(*memory, param);
    ASSERT_TRUE(w.requires_grad()) << name;
    memory->retrieve(at::randn({8, dim})).pow(2).sum().backward();
    ASSERT_TRUE(w.grad().defined()) << name;
    EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0) << name;

    w.mutable_grad().zero_();
    const at::Tensor X = at::randn({2, 10, dim});
    memory->retrieve_context(X, X, at::randn({2, 10, dim})).pow(2).sum().backward();
    EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0) << name << " (context source)";

    Overrides fixed = o;
    fixed[flag] = false;
    EXPECT_TRUE(make_memory(name, dim, fixed)->parameters().empty()) << name;
  }
}

// Changing keys and values after position t leaves every output at positions <= t bit-identical,
// for the whole sequence (Lq = Lk) and for a decoder's last queries (Lq < Lk).
TEST_F(MemoryScale, ContextSourceIsCausal) {
  const std::int64_t dim = 16, L = 12;
  const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash", {{"buckets", std::int64_t{4}}, {"top_k", std::int64_t{2}}, {"rounds", std::int64_t{2}}}},
      {"product_key", {{"size", std::int64_t{64}}, {"top_k", std::int64_t{3}}, {"cells", std::int64_t{4}}}},
      {"hierarchical", {{"size", std::int64_t{16}}, {"l2_size", std::int64_t{32}}, {"l3_size", std::int64_t{8}}}},
  };
  for (const auto& [name, o] : configs) {
    auto memory = make_memory(name, dim, o);
    at::NoGradGuard no_grad;
    const at::Tensor K = at::randn({2, L, dim}), V = at::randn({2, L, dim});
    for (const std::int64_t Lq : {L, std::int64_t{5}}) {
      const at::Tensor Q = K.narrow(1, L - Lq, Lq) + 0.3 * at::randn({2, Lq, dim});
      const at::Tensor out = memory->retrieve_context(Q, K, V), energy = memory->context_energy(Q, K);
      for (const std::int64_t t : {L - 5, L - 2}) {
        at::Tensor K2 = K.clone(), V2 = V.clone();
        K2.narrow(1, t + 1, L - t - 1).copy_(at::randn({2, L - t - 1, dim}));
        V2.narrow(1, t + 1, L - t - 1).copy_(1e3 * at::randn({2, L - t - 1, dim}));
        const std::int64_t seen = t - (L - Lq) + 1;  // queries at positions <= t
        const at::Tensor out2 = memory->retrieve_context(Q, K2, V2), energy2 = memory->context_energy(Q, K2);
        EXPECT_TRUE(out2.narrow(1, 0, seen).equal(out.narrow(1, 0, seen))) << name << " Lq " << Lq << " t " << t;
        EXPECT_TRUE(energy2.narrow(1, 0, seen).equal(energy.narrow(1, 0, seen))) << name << " Lq " << Lq << " t " << t;
        // Negative control: new values at the later positions (keys kept) reach the later queries.
        EXPECT_FALSE(memory->retrieve_context(Q, K, V2).narrow(1, seen, Lq - seen).equal(out.narrow(1, seen, Lq - seen)))
            << name << " Lq " << Lq << " t " << t;
      }
    }
  }
}

// Stored patterns come back from queries with 10% of their components replaced: the retrieval's
// nearest stored pattern is the original.
TEST_F(MemoryScale, SparseRetrievalRecallsStoredPatterns) {
  const std::int64_t dim = 64, slots = 4096;
  const std::vector<std::pair<std::string, Overrides>> configs = {
      {"sparse_hash", {{"size", slots}, {"buckets", std::int64_t{128}}, {"top_k", std::int64_t{4}},
                       {"rounds", std::int64_t{4}}, {"beta", 32.0}, {"init", std::string("zeros")}}},
      {"product_key", {{"size", slots}, {"top_k", std::int64_t{8}}, {"cells", std::int64_t{16}},
                       {"heads", std::int64_t{4}}, {"beta", 32.0}, {"init", std::string("zeros")}}},
  };
  const at::Tensor stored = random_patterns(slots, dim);
  const at::Tensor xn = stored / stored.norm(2, 1, true);
  for (const auto& [name, o] : configs) {
    auto memory = make_memory(name, dim, o);
    memory->write(stored);
    at::NoGradGuard no_grad;
    const at::Tensor pick = at::randperm(slots).narrow(0, 0, 200);
    const at::Tensor out = memory->retrieve(corrupt(stored.index_select(0, pick), 0.1));
    const double recall = out.matmul(xn.t()).argmax(1).eq(pick).to(at::kDouble).mean().item<double>();
    EXPECT_GE(recall, 0.9) << name;
    const auto s = memory->stats(stored.narrow(0, 0, 32));
    EXPECT_LT(s.at("candidates_per_query"), slots / 4.0) << name << ": the search must be sparse";
  }
}

TEST_F(MemoryScale, MemoryUseIsReportedInBytes) {
  const std::int64_t dim = 64, slots = 4096;
  for (const auto& [name, o] : std::vector<std::pair<std::string, Overrides>>{
           {"sparse_hash", {{"size", slots}, {"buckets", std::int64_t{64}}}},
           {"product_key", {{"size", slots}, {"top_k", std::int64_t{8}}}}}) {
    auto memory = make_memory(name, dim, o);
    const auto s = memory->stats(at::randn({4, dim}));
    EXPECT_GE(s.at("memory_bytes"), static_cast<double>(slots * dim * 4)) << name;
    // Within 2x of the raw D floats per pattern (the bank, one bucket and one sorted slot per round).
    EXPECT_LE(s.at("bytes_per_pattern"), 2.0 * dim * 4) << name;
    EXPECT_GE(s.at("bucket_load_max"), s.at("bucket_load_mean")) << name;
    EXPECT_GE(s.at("bucket_empty_share"), 0.0) << name;
    EXPECT_LE(s.at("bucket_empty_share"), 1.0) << name;
  }
  const auto p = make_memory("product_key", dim, {{"size", slots}})->stats(at::randn({16, dim}));
  EXPECT_GT(p.at("usage_share"), 0.0);
  EXPECT_LE(p.at("usage_share"), 1.0);
  EXPECT_GE(p.at("usage_kl_uniform"), 0.0);
  EXPECT_LE(p.at("usage_kl_uniform"), std::log(static_cast<double>(slots)) + 1e-9);
}

TEST_F(MemoryScale, BadParametersGetOneLineErrorsNamingTheKey) {
  auto expect = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  expect(build_error("product_key", 16, {{"size", std::int64_t{1000}}}), "size = 1000 is not a perfect square");
  expect(build_error("product_key", 16, {{"size", std::int64_t{64}}, {"top_k", std::int64_t{9}}}),
         "top_k = 9 exceeds the 8 sub-keys per half");
  expect(build_error("product_key", 16, {{"size", std::int64_t{64}}, {"top_k", std::int64_t{2}}, {"cells", std::int64_t{5}}}),
         "cells = 5 exceeds top_k^2 = 4");
  expect(build_error("product_key", 15, {}), "d_model = 15 must be even");
  expect(build_error("sparse_hash", 16, {{"buckets", std::int64_t{8}}, {"top_k", std::int64_t{9}}}),
         "top_k = 9 exceeds buckets = 8");
  // Shape errors name the plugin.
  for (const std::string name : {"sparse_hash", "product_key"}) {
    auto memory = make_memory(name, 16, {{"size", std::int64_t{64}}});
    try {
      memory->retrieve_context(at::zeros({1, 5, 16}), at::zeros({1, 3, 16}), at::zeros({1, 3, 16}));
      ADD_FAILURE() << name << ": more queries than keys must be refused";
    } catch (const mhd::Error& e) {
      expect(e.what(), name + ": retrieve_context expects queries [B, Lq, D]");
    }
  }
  // 2^31 slots of 4096 floats: refused before allocating, with the bytes it would take.
  const std::string huge = build_error("sparse_hash", 4096, {{"size", std::int64_t{1} << 31}});
  expect(huge, "sparse_hash: size = 2147483648 needs ");
  expect(huge, "bytes of memory available");
}

// Float64: the energy against central differences, and with the router held constant (its last
// layer zero: pi = 1/3 each) grad E = q - retrieve(q), the Hopfield relation per level.
TEST_F(MemoryScale, HierarchicalEnergyMatchesFiniteDifferencesAndRetrieval) {
  const std::int64_t dim = 10;
  auto memory = make_memory("hierarchical", dim, {{"size", std::int64_t{20}}, {"l2_size", std::int64_t{30}},
                                                  {"l3_size", std::int64_t{6}}});
  memory->to(at::kDouble);
  const double h = 1e-6;
  for (const bool constant_router : {false, true}) {
    if (constant_router) {
      at::NoGradGuard no_grad;
      named_tensor(*memory, "router_w2").zero_();
    }
    const at::Tensor q = at::randn({5, dim}, at::kDouble).requires_grad_(true);
    const at::Tensor grad = torch::autograd::grad({memory->energy(q).sum()}, {q})[0];
    const at::Tensor dir = at::randn({5, dim}, at::kDouble);
    {
      at::NoGradGuard no_grad;
      const at::Tensor fd = (memory->energy(q.detach() + h * dir) - memory->energy(q.detach() - h * dir)) / (2 * h);
      EXPECT_LT(max_abs_diff(fd, (grad * dir).sum(1)), 1e-6) << "constant router " << constant_router;
    }
    const double gap = max_abs_diff(grad, q.detach() - memory->retrieve(q.detach()));
    if (constant_router) EXPECT_LT(gap, 1e-10);
    else EXPECT_GT(gap, 1e-6) << "negative control: a varying router adds sum_l E_l grad pi_l";
  }
  // The context energy, with respect to the queries.
  const at::Tensor Q = at::randn({2, 4, dim}, at::kDouble).requires_grad_(true);
  const at::Tensor K = at::randn({2, 6, dim}, at::kDouble);
  const at::Tensor gQ = torch::autograd::grad({memory->context_energy(Q, K).sum()}, {Q})[0];
  const at::Tensor dir = at::randn({2, 4, dim}, at::kDouble);
  at::NoGradGuard no_grad;
  const at::Tensor fd = (memory->context_energy(Q.detach() + h * dir, K) - memory->context_energy(Q.detach() - h * dir, K)) / (2 * h);
  EXPECT_LT(max_abs_diff(fd, (gQ * dir).sum(2)), 1e-6);
}

TEST_F(MemoryScale, HierarchicalRouterIsTrainedAndLogged) {
  const std::int64_t dim = 16;
  auto memory = make_memory("hierarchical", dim, {{"size", std::int64_t{32}}, {"l2_size", std::int64_t{64}},
                                                  {"l3_size", std::int64_t{8}}});
  memory->retrieve(at::randn({4, dim})).pow(2).sum().backward();
  const at::Tensor w1 = named_tensor(*memory, "router_w1");
  ASSERT_TRUE(w1.grad().defined());
  EXPECT_GT(w1.grad().abs().sum().item<double>(), 0.0);
  const auto s = memory->stats(at::randn({8, dim}));
  EXPECT_NEAR(s.at("router_l1") + s.at("router_l2") + s.at("router_l3"), 1.0, 1e-6);
  EXPECT_EQ(s.at("occupancy_l1"), 0.0);
  EXPECT_GE(s.at("memory_bytes"), static_cast<double>((32 + 64 + 8) * dim * 4));
}

// What L1 keeps retrieving moves to L2, and L3 moves to centroids of L2; a round started by writes
// is spread over later writes (consolidation_chunk rows each) instead of one stalled step.
TEST_F(MemoryScale, HierarchicalConsolidationPromotesAndIsAmortised) {
  const std::int64_t dim = 16;
  auto memory = make_memory("hierarchical", dim, {{"size", std::int64_t{32}}, {"l2_size", std::int64_t{64}},
                                                  {"l3_size", std::int64_t{4}}, {"l1_beta", 20.0},
                                                  {"consolidation_freq", std::int64_t{3}},
                                                  {"consolidation_chunk", std::int64_t{10}}});
  const at::Tensor episodes = 2 * random_patterns(32, dim);
  memory->write(episodes);  // write 1
  at::NoGradGuard no_grad;
  const at::Tensor favourite = episodes.narrow(0, 0, 3);
  for (int i = 0; i < 20; ++i) memory->retrieve(favourite);  // L1 keeps retrieving these three
  memory->write(episodes.narrow(0, 0, 0));  // write 2: nothing stored, the round not yet due
  EXPECT_EQ(memory->stats(favourite).at("promoted"), 0.0);
  memory->write(episodes.narrow(0, 0, 0));  // write 3: the round starts: promotion at once
  const auto s = memory->stats(favourite);
  EXPECT_GE(s.at("promoted"), 3.0);
  EXPECT_LT(s.at("promoted"), 32.0) << "only what L1 keeps retrieving";
  EXPECT_GT(s.at("occupancy_l2"), 0.0);
  const at::Tensor l2 = named_tensor(*memory, "level2");
  const at::Tensor promoted = l2.narrow(0, 0, static_cast<std::int64_t>(s.at("promoted")));
  EXPECT_LT(max_abs_diff(std::get<0>(((promoted.unsqueeze(1) - favourite.unsqueeze(0)).abs().amax(-1)).min(0)), at::zeros({3})), 1e-6)
      << "each favourite is in L2";
  EXPECT_EQ(s.at("consolidations"), 1.0) << "the few promoted rows fit one chunk: the round ended";

  // 32 rows to summarise at 10 per write: the round ends on the fourth write, not the first.
  auto spread = make_memory("hierarchical", dim, {{"size", std::int64_t{32}}, {"l2_size", std::int64_t{64}},
                                                  {"l3_size", std::int64_t{4}}, {"promote_factor", 0.0},
                                                  {"consolidation_freq", std::int64_t{2}},
                                                  {"consolidation_chunk", std::int64_t{10}}});
  spread->write(episodes);                        // write 1
  spread->retrieve(episodes);                     // every slot gets some mass
  const at::Tensor l3_before = named_tensor(*spread, "level3").clone();
  std::vector<double> rounds;
  for (int w = 0; w < 4; ++w) {
    spread->write(episodes.narrow(0, 0, 0));      // writes 2..5; the round starts at write 2
    rounds.push_back(spread->stats(favourite).at("consolidations"));
  }
  EXPECT_EQ(spread->stats(favourite).at("promoted"), 32.0);
  EXPECT_EQ(rounds, (std::vector<double>{0.0, 0.0, 0.0, 1.0}));
  EXPECT_GT(max_abs_diff(named_tensor(*spread, "level3"), l3_before), 1e-3) << "L3 moved to L2's centroids";
}

}  // namespace
