// The AVX-512 build of the fused selective scan (scan_avx512.cpp), as selective_scan.cpp calls it.
// Internal to the plugin; the tests include it to check the vector exp / softplus and the kernel's
// thread use directly.
//
// Unlike the portable and AVX2 builds (one channel per task, vectorised over the N states, which
// needs a horizontal sum per step for y_t = sum_n h_t[n] C_t[n]), this build vectorises over 16
// channels: a block of channels d0 .. d0 + 15 of one batch row keeps its N states in N vector
// registers, h[n] = (h_t[d0 + j, n])_j, so every update of the recurrence (see selective_scan.h)
//   h_t[n] = exp(delta_t A[:, n]) h_{t-1}[n] + (delta_t u_t) B_t[n]      y_t += h_t[n] C_t[n]
// is one lane-wise exp and three FMAs on 16 channels, with no horizontal sum in the forward; B_t[n]
// and C_t[n] are scalars broadcast to the 16 lanes. u, delta, y are read and written as 16-channel
// vectors per position, so their natural [B, L, D] layout streams; a channel-major [B, D, L] buffer
// (the block's conv output) is read in 16 x 16 tiles transposed in registers, so neither layout is
// copied per call (docs/benchmarks.md, "Selective scan").
#pragma once

#include <cstdint>

namespace mhd::mamba::kernels {

constexpr std::int64_t kLanes = 16;  // channels per vector (float32 in a 512-bit register)

// The forward keeps each channel block's state before every kCheckpointEvery-th position (a
// checkpoint, [N] vectors of 16 lanes) when asked, and the backward recomputes the states between two
// checkpoints from the earlier one, chunk by chunk backwards in time. Both advance all channel blocks
// of a task together over chunks of this many positions.
constexpr std::int64_t kCheckpointEvery = 64;
inline std::int64_t checkpoint_count(std::int64_t len) { return (len + kCheckpointEvery - 1) / kCheckpointEvery; }

// Element type of u, delta, B, C, y and dL/dy. bfloat16 is widened to float32 on load; the state,
// every product and every sum stay float32 (the mixed-precision path).
enum class Elem { F32, BF16 };

// A tensor indexed [b, t, d] with arbitrary element strides: [B, L, D] contiguous has sd = 1,
// a [B, L, D] view of a [B, D, L] buffer has st = 1.
struct Strided {
  const void* data = nullptr;
  std::int64_t sb = 0, st = 0, sd = 0;
};

struct Job {
  Elem elem = Elem::F32;
  Strided u;               // [B, L, D]
  Strided delta;           // [B, L, D]  raw step: delta_bias and softplus are applied in the kernel
  const float* A = nullptr;           // [D, N] contiguous
  const void* B = nullptr;            // [B, L, N], n-stride 1, elem
  std::int64_t B_sb = 0, B_st = 0;
  const void* C = nullptr;            // [B, L, N], n-stride 1, elem
  std::int64_t C_sb = 0, C_st = 0;
  const float* D = nullptr;           // [D] or nullptr
  const float* delta_bias = nullptr;  // [D] or nullptr
  bool softplus = false;
  const float* h0 = nullptr;          // [B, D, N] contiguous or nullptr
  std::int64_t batch = 0, dim = 0, len = 0, nstate = 0;
};

struct ForwardOut {
  void* y = nullptr;     // [B, L, D] contiguous, elem
  float* hL = nullptr;   // [B, D, N] contiguous
  float* checkpoints = nullptr;  // [B, channel_blocks(D), checkpoint_count(L), N, 16] or nullptr (none kept)
};

struct BackwardOut {
  const float* checkpoints = nullptr;  // the forward's, as in ForwardOut (required)
  Strided gy;                    // [B, L, D] dLoss/dy, elem
  const float* ghL = nullptr;    // [B, D, N] contiguous or nullptr
  float* du = nullptr;           // [B, L, D] contiguous
  float* ddelta = nullptr;       // [B, L, D] contiguous, w.r.t. the raw delta (softplus' chain applied)
  float* dA_by_batch = nullptr;  // [B, D, N]  summed over b by the caller
  float* dD_by_batch = nullptr;  // [B, D]
  float* dbias_by_batch = nullptr;  // [B, D]
  float* dB_parts = nullptr;     // [B, P, L, N] zero-initialised, summed over P by the caller
  float* dC_parts = nullptr;     // [B, P, L, N]
  float* dh0 = nullptr;          // [B, D, N]
  std::int64_t parts = 1;        // P: slices of each batch row's channel blocks
};

// True when the CPU (and OS) support AVX-512 F, BW, VL and DQ.
bool cpu_has_avx512();

// Channel blocks per batch row: ceil(D / 16).
inline std::int64_t channel_blocks(std::int64_t dim) { return (dim + kLanes - 1) / kLanes; }

// Forward over items [begin, end) of the B x channel_blocks(D) range (item = b * blocks + block).
// Each item writes only its own y and h_L entries.
void avx512_forward(const Job& job, const ForwardOut& out, std::int64_t begin, std::int64_t end);

// Backward over tasks [begin, end) of the B x P range: task (b, p) takes the p-th contiguous slice of
// batch row b's channel blocks and owns the p-th [L, N] slabs of dB_parts / dC_parts.
void avx512_backward(const Job& job, const BackwardOut& out, std::int64_t begin, std::int64_t end);

// The kernel's vector functions, applied elementwise (n need not be a multiple of 16), for tests:
//   exp2:     2^t, the scan's exp (exp(delta A) = 2^(delta (A log2 e)), A log2 e precomputed)
//   exp:      e^x as the scan evaluates it from x = delta A with delta = x, A = 1
//   softplus: log(1 + e^x), x > 20 -> x (PyTorch's threshold)
void avx512_exp2(const float* t, float* out, std::int64_t n);
void avx512_exp(const float* x, float* out, std::int64_t n);
void avx512_softplus(const float* x, float* out, std::int64_t n);

}  // namespace mhd::mamba::kernels
