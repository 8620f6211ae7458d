// The 'cpu' backend of vmamba_mm's selective scan: one fused pass over the sequence.
//
// Layout (prepared by cpu.py): u, delta, z, out and the sequence gradients are
// time-major (batch, L, dim) with unit channel stride (any batch / time stride);
// B, C (batch, L, G, N) with any strides; A transposed to (N, dim), contiguous;
// D, delta_bias (dim). Compute dtype = storage dtype (float or double).
//
// A task owns one block of W = Vectorized<T>::size() consecutive channels of one
// group (a tail block is masked): the state h (N x W) stays in registers, each step
// is, per state n, one vectorised exp and two fused multiply-adds. Tasks run on
// PyTorch's intra-op pool (at::parallel_for, torch.get_num_threads()).
//
// Forward with `save`: the state entering every chunk of `chunk` steps is kept,
// (batch, n_chunks, N, dim). Backward: a task owns (batch, group, a run of channel
// blocks); per chunk, last to first, per block, it recomputes the chunk's decays
// and states from the kept one (a small buffer in cache), then runs the adjoint
// recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} in reverse. Gradients of B and C sum
// over the group's channels: per chunk in lane vectors, reduced to scalars once
// per chunk. dA, dD and d(delta_bias) are written per batch (summed by cpu.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp of the decays: the fast polynomial (about 2 ulp in float; std precision in double).
template <typename T>
inline Vec<T> exp_decay(const Vec<T>& x) { return x.exp_u20(); }

// exp for the elementwise functions: the same fast polynomial in float; full
// precision in double (the dtype the tests compare against float64 references in).
template <typename T>
inline Vec<T> exp_elementwise(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + exp_elementwise(x.neg()));
}

// softplus(x) = log1p(exp(x)), and x itself above 20 (PyTorch's threshold). In
// float: max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], with log1p(e) =
// 2 atanh(s), s = e / (2 + e) in (0, 1/3], by its odd series to s^17 (truncation
// below 1e-9 relative): inline, several times faster than the library's log1p.
template <typename T>
inline Vec<T> softplus(const Vec<T>& x) {
  using V = Vec<T>;
  if constexpr (std::is_same_v<T, float>) {
    const V e = x.abs().neg().exp_u20();
    const V s = e / (V(T(2)) + e);
    const V s2 = s * s;
    V poly(T(1) / T(17));
    for (int k = 15; k >= 1; k -= 2) poly = at::vec::fmadd(poly, s2, V(T(1) / T(k)));
    const V sp = at::vec::fmadd(V(T(2)) * s, poly, at::vec::maximum(x, V(T(0))));
    return V::blendv(sp, x, x > V(T(20)));
  } else {
    return V::blendv(x.exp().log1p(), x, x > V(T(20)));
  }
}

template <typename T>
inline T lane_sum(const Vec<T>& v) {
  T lanes[Vec<T>::size()];
  v.store(lanes);
  T total = T(0);
  for (int k = 0; k < Vec<T>::size(); ++k) total += lanes[k];
  return total;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Strides of a (batch, L, dim) sequence tensor with unit channel stride.
// Strides of a (batch, L, dim) sequence tensor: time-major (sc == 1) or any other
// layout (channel-major: st == 1, sc == L), read and written in place.
struct Seq {
  int64_t sb, st, sc;
};

// The channels [d0, d0 + cnt) of row (b, t): one vector load where they are
// contiguous, else gathered (a block's rows of a chunk stay in L1 meanwhile).
template <typename T>
inline Vec<T> load_seq(const T* base, const Seq& s, int64_t b, int64_t t, int64_t d0, int cnt) {
  const T* ptr = base + b * s.sb + t * s.st + d0 * s.sc;
  if (s.sc == 1) return Vec<T>::loadu(ptr, cnt);
  using I = at::vec::int_same_size_t<T>;
  if (cnt == Vec<T>::size() && s.sc * Vec<T>::size() < (int64_t(1) << 30)) {
    // a hardware gather where there is one (AVX2 / AVX-512)
    return at::vec::gather<sizeof(T)>(ptr, at::vec::Vectorized<I>::arange(I(0), I(s.sc)));
  }
  T lanes[Vec<T>::size()];
  for (int k = 0; k < cnt; ++k) lanes[k] = ptr[k * s.sc];
  return Vec<T>::loadu(lanes, cnt);
}

template <typename T>
inline void store_seq(const Vec<T>& v, T* base, const Seq& s, int64_t b, int64_t t, int64_t d0,
                      int cnt) {
  T* ptr = base + b * s.sb + t * s.st + d0 * s.sc;
  if (s.sc == 1) {
    v.store(ptr, cnt);
    return;
  }
  T lanes[Vec<T>::size()];
  v.store(lanes);
  for (int k = 0; k < cnt; ++k) ptr[k * s.sc] = lanes[k];
}

template <typename T>
struct Problem {
  int64_t batch, L, dim, G, N, dg, nblk;  // nblk: channel blocks per group
  int64_t chunk, nck;
  bool softplus;
  const T *u, *delta, *At, *B, *C, *D, *z, *bias;
  Seq su, sd, sz, so;  // inputs u, delta, z; every sequence output
  int64_t bs[4], cs[4];  // strides of B and C (batch, L, G, N)

  inline const T* bptr(int64_t b, int64_t t, int64_t g) const {
    return B + b * bs[0] + t * bs[1] + g * bs[2];
  }
  inline const T* cptr(int64_t b, int64_t t, int64_t g) const {
    return C + b * cs[0] + t * cs[1] + g * cs[2];
  }
};

inline Seq seq_strides(const Tensor& t) {
  TORCH_CHECK(t.dim() == 3, "scan_cpu: sequence tensors must be (batch, L, dim) views, got sizes ",
              t.sizes());
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// A new (batch, L, dim) tensor, stored time-major or channel-major (as a view).
inline Tensor new_seq(const Tensor& like, int64_t batch, int64_t L, int64_t dim, bool time_major) {
  if (time_major) return at::empty({batch, L, dim}, like.options());
  return at::empty({batch, dim, L}, like.options()).transpose(1, 2);
}

template <typename T>
Problem<T> make_problem(const Tensor& u, const Tensor& delta, const Tensor& At, const Tensor& B,
                        const Tensor& C, const std::optional<Tensor>& D,
                        const std::optional<Tensor>& z, const std::optional<Tensor>& bias,
                        bool softplus, int64_t chunk) {
  Problem<T> p;
  p.batch = u.size(0);
  p.L = u.size(1);
  p.dim = u.size(2);
  p.G = B.size(2);
  p.N = B.size(3);
  TORCH_CHECK(p.G > 0 && p.dim % p.G == 0, "scan_cpu: dim ", p.dim, " not divisible by G ", p.G);
  TORCH_CHECK(At.is_contiguous() && At.size(0) == p.N && At.size(1) == p.dim,
              "scan_cpu: At must be contiguous (N, dim)");
  TORCH_CHECK(chunk > 0, "scan_cpu: chunk must be positive");
  p.dg = p.dim / p.G;
  p.nblk = ceil_div(p.dg, Vec<T>::size());
  p.chunk = chunk;
  p.nck = ceil_div(p.L, chunk);
  p.softplus = softplus;
  p.u = u.const_data_ptr<T>();
  p.delta = delta.const_data_ptr<T>();
  p.At = At.const_data_ptr<T>();
  p.B = B.const_data_ptr<T>();
  p.C = C.const_data_ptr<T>();
  p.D = D.has_value() ? D->const_data_ptr<T>() : nullptr;
  p.z = z.has_value() ? z->const_data_ptr<T>() : nullptr;
  p.bias = bias.has_value() ? bias->const_data_ptr<T>() : nullptr;
  p.su = seq_strides(u);
  p.sd = seq_strides(delta);
  p.sz = z.has_value() ? seq_strides(*z) : Seq{0, 0, 0};
  for (int i = 0; i < 4; ++i) {
    p.bs[i] = B.stride(i);
    p.cs[i] = C.stride(i);
  }
  return p;
}

// Hint the memory system to fetch rows [t0, t0 + tl) of a (batch, L, dim) sequence at
// channel d0 (one cache line each). A block reads one line per row of every sequence,
// rows `dim` floats apart: beyond what the hardware prefetchers follow, so each chunk
// asks for the rows of the chunk it will work on next while it computes this one.
template <typename T>
inline void prefetch_rows(const T* base, const Seq& s, int64_t b, int64_t t0, int64_t tl,
                          int64_t d0, bool write = false) {
  if (base == nullptr || s.sc != 1) return;  // other layouts: a chunk's lines are few
  for (int64_t t = t0; t < t0 + tl; ++t) {
    if (write) {
      __builtin_prefetch(base + b * s.sb + t * s.st + d0, 1);
    } else {
      __builtin_prefetch(base + b * s.sb + t * s.st + d0, 0);
    }
  }
}

// Time steps of `tl` steps from t0 for the channels at d0: dt[i] and dt[i] * u[i]
// (the only out-of-line vector calls, softplus, stay out of the state loops, which
// keep the state in registers).
template <typename T>
inline void time_steps(const Problem<T>& p, const Vec<T>& bias, int64_t b, int64_t t0,
                       int64_t tl, int64_t d0, int cnt, Vec<T>* dt, Vec<T>* dtu, Vec<T>* us) {
  for (int64_t i = 0; i < tl; ++i) {
    const int64_t t = t0 + i;
    Vec<T> x = load_seq(p.delta, p.sd, b, t, d0, cnt) + bias;
    dt[i] = p.softplus ? softplus(x) : x;
    us[i] = load_seq(p.u, p.su, b, t, d0, cnt);
    dtu[i] = dt[i] * us[i];
  }
}

// The state loop over `tl` steps from t0: h <- a h + dt u B, y = <C, h> + D u.
// kStore: also keep every step's decays and states (the backward's recompute).
template <typename T, int kN, bool kStore>
inline void state_loop(const Problem<T>& p, int64_t N, const Vec<T>* A, Vec<T>* h,
                       const Vec<T>& Dv, int64_t b, int64_t g, int64_t t0, int64_t tl,
                       int64_t d0, int cnt, const Vec<T>* dt, const Vec<T>* dtu,
                       const Vec<T>* us, Vec<T>* y, Vec<T>* as, Vec<T>* hs) {
  using V = Vec<T>;
  // Local copies (no aliasing with the stores below): registers when kN is known.
  constexpr int kMax = kN > 0 ? kN : 64;
  const int64_t n_state = kN > 0 ? kN : N;
  V Al[kMax], hl[kMax];
  for (int64_t n = 0; n < n_state; ++n) {
    Al[n] = A[n];
    hl[n] = h[n];
  }
  const int64_t sbn = p.bs[3], scn = p.cs[3];
  for (int64_t i = 0; i < tl; ++i) {
    const int64_t t = t0 + i;
    const T* Bt = p.bptr(b, t, g);
    const T* Ct = p.cptr(b, t, g);
    const V dti = dt[i], dtui = dtu[i];
    // Two sums of <C, h> (even and odd n): half the chain of dependent adds.
    V acc0 = Dv * us[i], acc1(T(0));
#pragma GCC unroll 16
    for (int64_t n = 0; n < n_state; ++n) {
      const V a = exp_decay(dti * Al[n]);
      hl[n] = at::vec::fmadd(a, hl[n], dtui * V(Bt[n * sbn]));
      if (n & 1) {
        acc1 = at::vec::fmadd(hl[n], V(Ct[n * scn]), acc1);
      } else {
        acc0 = at::vec::fmadd(hl[n], V(Ct[n * scn]), acc0);
      }
      if (kStore) {
        as[i * n_state + n] = a;
        hs[(i + 1) * n_state + n] = hl[n];
      }
    }
    y[i] = acc0 + acc1;
  }
  for (int64_t n = 0; n < n_state; ++n) h[n] = hl[n];
}

// ------------------------------------------------------------------ forward
// One chunk of one block (batch b, group g, block j): steps [c * chunk, ...) from the
// state h (N vectors, updated in place). kN > 0: N known at compile time (the state
// lives in registers in the step loop); kN == 0: any N.
template <typename T, int kN>
void forward_chunk(const Problem<T>& p, int64_t b, int64_t g, int64_t j, int64_t c, Vec<T>* h,
                   T* out, T* last, T* ckpt, Vec<T>* buf) {
  using V = Vec<T>;
  constexpr int W = V::size();
  const int64_t N = kN > 0 ? kN : p.N;
  const int64_t d0 = g * p.dg + j * W;
  const int cnt = static_cast<int>(std::min<int64_t>(W, p.dg - j * W));
  const int64_t t0 = c * p.chunk, tl = std::min(p.chunk, p.L - t0);
  constexpr int kMax = kN > 0 ? kN : 64;
  V A[kMax];
  for (int64_t n = 0; n < N; ++n) A[n] = V::loadu(p.At + n * p.dim + d0, cnt);
  const V bias = p.bias ? V::loadu(p.bias + d0, cnt) : V(T(0));
  const V Dv = p.D ? V::loadu(p.D + d0, cnt) : V(T(0));
  V *dt = buf, *dtu = buf + p.chunk, *us = buf + 2 * p.chunk, *y = buf + 3 * p.chunk;
  if (ckpt) {
    T* dst = ckpt + ((b * p.nck + c) * N) * p.dim + d0;
    for (int64_t n = 0; n < N; ++n) h[n].store(dst + n * p.dim, cnt);
  }
  time_steps(p, bias, b, t0, tl, d0, cnt, dt, dtu, us);
  state_loop<T, kN, false>(p, N, A, h, Dv, b, g, t0, tl, d0, cnt, dt, dtu, us, y, nullptr,
                           nullptr);
  for (int64_t i = 0; i < tl; ++i) {
    const int64_t t = t0 + i;
    V yi = y[i];
    if (p.z) {
      const V zv = load_seq(p.z, p.sz, b, t, d0, cnt);
      yi = yi * zv * sigmoid(zv);
    }
    store_seq(yi, out, p.so, b, t, d0, cnt);
  }
  if (c == p.nck - 1) {
    T tmp[W];
    for (int64_t n = 0; n < N; ++n) {
      h[n].store(tmp);
      for (int k = 0; k < cnt; ++k) last[(b * p.dim + d0 + k) * N + n] = tmp[k];
    }
  }
}

// A thread owns a run of (batch, group, block) tasks and walks them chunk by chunk
// (every task's chunk c, then c + 1): the rows of a chunk are shared by the run's
// blocks, so their pages and lines are fetched once for all of them (one block at a
// time over the whole sequence touches a new page nearly every step).
// Tasks per thread at the least: each of about kMinWork state updates (a parallel
// region costs more than a small scan).
constexpr int64_t kMinWork = 1 << 15;

template <typename T>
int64_t grain(const Problem<T>& p, int64_t blocks_per_task) {
  const int64_t work = p.L * p.N * Vec<T>::size() * blocks_per_task;
  return std::max<int64_t>(1, ceil_div(kMinWork, std::max<int64_t>(1, work)));
}

template <typename T, int kN>
void forward(const Problem<T>& p, T* out, T* last, T* ckpt) {
  const int64_t per_batch = p.G * p.nblk, N = p.N;
  at::parallel_for(0, p.batch * per_batch, grain(p, 1), [&](int64_t begin, int64_t end) {
    std::vector<Vec<T>> buf(4 * p.chunk), states((end - begin) * N, Vec<T>(T(0)));
    for (int64_t c = 0; c < p.nck; ++c) {
      for (int64_t i = begin; i < end; ++i) {
        // the rows the next task (or the first one, in the next chunk) reads
        const bool wrap = i + 1 == end;
        const int64_t k = wrap ? begin : i + 1, cn = wrap ? c + 1 : c;
        if (cn < p.nck) {
          const int64_t bk = k / per_batch, rk = k % per_batch;
          const int64_t dk = (rk / p.nblk) * p.dg + (rk % p.nblk) * Vec<T>::size();
          const int64_t tn = cn * p.chunk, ln = std::min(p.chunk, p.L - tn);
          prefetch_rows(p.delta, p.sd, bk, tn, ln, dk);
          prefetch_rows(p.u, p.su, bk, tn, ln, dk);
          prefetch_rows(p.z, p.sz, bk, tn, ln, dk);
          prefetch_rows(out, p.so, bk, tn, ln, dk, true);
        }
        const int64_t b = i / per_batch, r = i % per_batch;
        forward_chunk<T, kN>(p, b, r / p.nblk, r % p.nblk, c, &states[(i - begin) * N], out,
                             last, ckpt, buf.data());
      }
    }
  });
}

// ------------------------------------------------------------------ backward
template <typename T>
struct Grads {
  const T* dout;  // (batch, L, dim), strides sdo
  Seq sdo;
  const T* dlast;  // (batch, dim, N) contiguous or null
  const T* ckpt;   // (batch, nck, N, dim)
  T *du, *ddelta, *dz;     // (batch, L, dim) contiguous
  T *dAt, *dD, *dbias;     // per batch: (batch, N, dim), (batch, dim), (batch, dim)
  T *dB, *dC;              // (splits, batch, L, G, N)
  int64_t splits;
};

// One task: batch b, group g, channel blocks [j0, j1), partial sums into split s.
template <typename T, int kN>
void backward_task(const Problem<T>& p, const Grads<T>& q, int64_t b, int64_t g, int64_t s,
                   int64_t j0, int64_t j1) {
  using V = Vec<T>;
  constexpr int W = V::size();
  const int64_t N = kN > 0 ? kN : p.N;
  const int64_t T_ = p.chunk, nb = j1 - j0;
  constexpr int kMax = kN > 0 ? kN : 64;
  // Per-block carries across chunks (the adjoint entering from the next step), and
  // the per-channel sums; the chunk buffers (states, decays, per-step vectors and the
  // lane-wise sums of dB / dC) are reused by every block and chunk.
  std::vector<V> carry(nb * N), dA(nb * N, V(T(0))), dD(nb, V(T(0))), dbias(nb, V(T(0)));
  std::vector<V> hs((T_ + 1) * N), as(T_ * N), accB(T_ * N), accC(T_ * N);
  std::vector<V> dts(T_), dtus(T_), us(T_), ys(T_), dys(T_);
  T lanes[W];
  for (int64_t jb = 0; jb < nb; ++jb) {
    const int64_t d0 = g * p.dg + (j0 + jb) * W;
    const int cnt = static_cast<int>(std::min<int64_t>(W, p.dg - (j0 + jb) * W));
    for (int64_t n = 0; n < N; ++n) {
      V c(T(0));
      if (q.dlast) {
        for (int k = 0; k < W; ++k) lanes[k] = k < cnt ? q.dlast[(b * p.dim + d0 + k) * N + n] : T(0);
        c = V::loadu(lanes);
      }
      carry[jb * N + n] = c;
    }
  }
  for (int64_t c = p.nck - 1; c >= 0; --c) {
    const int64_t t0 = c * T_, tl = std::min(T_, p.L - t0);
    std::fill(accB.begin(), accB.begin() + tl * N, V(T(0)));
    std::fill(accC.begin(), accC.begin() + tl * N, V(T(0)));
    for (int64_t jb = 0; jb < nb; ++jb) {
      const int64_t d0 = g * p.dg + (j0 + jb) * W;
      const int cnt = static_cast<int>(std::min<int64_t>(W, p.dg - (j0 + jb) * W));
      V A[kMax], h[kMax];
      const T* start = q.ckpt + ((b * p.nck + c) * N) * p.dim + d0;
      for (int64_t n = 0; n < N; ++n) {
        A[n] = V::loadu(p.At + n * p.dim + d0, cnt);
        h[n] = V::loadu(start + n * p.dim, cnt);
        hs[n] = h[n];
      }
      const V bias = p.bias ? V::loadu(p.bias + d0, cnt) : V(T(0));
      const V Dv = p.D ? V::loadu(p.D + d0, cnt) : V(T(0));
      // Recompute the chunk's decays, states and y from the kept state.
      time_steps(p, bias, b, t0, tl, d0, cnt, dts.data(), dtus.data(), us.data());
      {  // the rows the next block (or the first block of the previous chunk) reads
        const bool last = jb + 1 == nb;
        if (!last || c > 0) {
          const int64_t dn = last ? g * p.dg + j0 * W : d0 + W;
          const int64_t tn = last ? t0 - T_ : t0, ln = last ? T_ : tl;
          prefetch_rows(p.delta, p.sd, b, tn, ln, dn);
          prefetch_rows(p.u, p.su, b, tn, ln, dn);
          prefetch_rows(p.z, p.sz, b, tn, ln, dn);
          prefetch_rows(q.dout, q.sdo, b, tn, ln, dn);
          prefetch_rows(q.du, p.so, b, tn, ln, dn, true);
          prefetch_rows(q.ddelta, p.so, b, tn, ln, dn, true);
          prefetch_rows(q.dz, p.so, b, tn, ln, dn, true);
        }
      }
      state_loop<T, kN, true>(p, N, A, h, Dv, b, g, t0, tl, d0, cnt, dts.data(), dtus.data(),
                              us.data(), ys.data(), as.data(), hs.data());
      // dy (through the gate), dz; dC sums.
      for (int64_t i = 0; i < tl; ++i) {
        const int64_t t = t0 + i;
        V dy = load_seq(q.dout, q.sdo, b, t, d0, cnt);
        if (p.z) {
          const V zv = load_seq(p.z, p.sz, b, t, d0, cnt);
          const V sz = sigmoid(zv);
          // d silu(z) / dz = sig * (1 + z * (1 - sig))
          const V dz = dy * ys[i] * sz * at::vec::fmadd(zv, V(T(1)) - sz, V(T(1)));
          store_seq(dz, q.dz, p.so, b, t, d0, cnt);
          dy = dy * zv * sz;
        }
        dys[i] = dy;
        for (int64_t n = 0; n < N; ++n) {
          accC[i * N + n] = at::vec::fmadd(dy, hs[(i + 1) * N + n], accC[i * N + n]);
        }
      }
      // Reverse: the adjoint states and every gradient (d(dt) before softplus in ys).
      V* cr = &carry[jb * N];
      V* dAj = &dA[jb * N];
      V dDj = dD[jb];
      for (int64_t i = tl - 1; i >= 0; --i) {
        const int64_t t = t0 + i;
        const V dt = dts[i], dy = dys[i], dtu = dtus[i];
        const V uv = us[i];
        const T* Bt = p.bptr(b, t, g);
        const T* Ct = p.cptr(b, t, g);
        V ddtu(T(0)), ddt_a(T(0));
#pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
          const V gn = at::vec::fmadd(dy, V(Ct[n * p.cs[3]]), cr[n]);
          accB[i * N + n] = at::vec::fmadd(gn, dtu, accB[i * N + n]);
          ddtu = at::vec::fmadd(gn, V(Bt[n * p.bs[3]]), ddtu);
          const V ga = gn * as[i * N + n];
          const V qn = ga * hs[i * N + n];  // g_t a_t h_{t-1}
          dAj[n] = at::vec::fmadd(qn, dt, dAj[n]);
          ddt_a = at::vec::fmadd(qn, A[n], ddt_a);
          cr[n] = ga;
        }
        store_seq(at::vec::fmadd(ddtu, dt, dy * Dv), q.du, p.so, b, t, d0, cnt);
        dDj = at::vec::fmadd(dy, uv, dDj);
        ys[i] = at::vec::fmadd(ddtu, uv, ddt_a);
      }
      dD[jb] = dDj;
      // Through the softplus: d(delta) = d(dt) * sigmoid(delta + bias).
      V dbj = dbias[jb];
      for (int64_t i = 0; i < tl; ++i) {
        const int64_t t = t0 + i;
        V ddt = ys[i];
        if (p.softplus) {
          ddt = ddt * sigmoid(load_seq(p.delta, p.sd, b, t, d0, cnt) + bias);
        }
        store_seq(ddt, q.ddelta, p.so, b, t, d0, cnt);
        dbj = dbj + ddt;
      }
      dbias[jb] = dbj;
    }
    // Lane sums of the chunk's dB / dC into this split's partial sums.
    for (int64_t i = 0; i < tl; ++i) {
      const int64_t row = (((s * p.batch + b) * p.L + t0 + i) * p.G + g) * N;
      for (int64_t n = 0; n < N; ++n) {
        q.dB[row + n] = lane_sum(accB[i * N + n]);
        q.dC[row + n] = lane_sum(accC[i * N + n]);
      }
    }
  }
  for (int64_t jb = 0; jb < nb; ++jb) {
    const int64_t d0 = g * p.dg + (j0 + jb) * W;
    const int cnt = static_cast<int>(std::min<int64_t>(W, p.dg - (j0 + jb) * W));
    for (int64_t n = 0; n < N; ++n) dA[jb * N + n].store(q.dAt + (b * N + n) * p.dim + d0, cnt);
    if (q.dD) dD[jb].store(q.dD + b * p.dim + d0, cnt);
    if (q.dbias) dbias[jb].store(q.dbias + b * p.dim + d0, cnt);
  }
}

template <typename T, int kN>
void backward(const Problem<T>& p, const Grads<T>& q) {
  const int64_t S = q.splits;
  at::parallel_for(0, p.batch * p.G * S, grain(p, ceil_div(p.nblk, S)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i % S, g = (i / S) % p.G, b = i / (S * p.G);
      backward_task<T, kN>(p, q, b, g, s, s * p.nblk / S, (s + 1) * p.nblk / S);
    }
  });
}

// Dispatch on the compute dtype and the state size.
template <typename F>
void dispatch_n(int64_t N, F&& f) {
  if (N == 1) {
    f(std::integral_constant<int, 1>());
  } else if (N == 16) {
    f(std::integral_constant<int, 16>());
  } else {
    TORCH_CHECK(N <= 64, "scan_cpu: state size N = ", N, " > 64 is not supported");
    f(std::integral_constant<int, 0>());
  }
}

std::tuple<Tensor, Tensor, Tensor> scan_fwd(const Tensor& u, const Tensor& delta, const Tensor& At,
                                            const Tensor& B, const Tensor& C,
                                            const std::optional<Tensor>& D,
                                            const std::optional<Tensor>& z,
                                            const std::optional<Tensor>& bias, bool softplus,
                                            int64_t chunk, bool save, bool time_major) {
  const auto opts = u.options();
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), N = B.size(3);
  Tensor out = new_seq(u, batch, L, dim, time_major);
  Tensor last = at::empty({batch, dim, N}, opts);
  Tensor ckpt = save ? at::empty({batch, (L + chunk - 1) / chunk, N, dim}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_cpu_fwd", [&] {
    auto p = make_problem<scalar_t>(u, delta, At, B, C, D, z, bias, softplus, chunk);
    p.so = seq_strides(out);
    dispatch_n(N, [&](auto kn) {
      forward<scalar_t, decltype(kn)::value>(p, out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(),
                                             save ? ckpt.data_ptr<scalar_t>() : nullptr);
    });
  });
  return {out, last, ckpt};
}

std::vector<Tensor> scan_bwd(const Tensor& dout, const std::optional<Tensor>& dlast,
                             const Tensor& u, const Tensor& delta, const Tensor& At,
                             const Tensor& B, const Tensor& C, const std::optional<Tensor>& D,
                             const std::optional<Tensor>& z, const std::optional<Tensor>& bias,
                             const Tensor& ckpt, bool softplus, int64_t chunk, int64_t splits,
                             bool time_major) {
  const auto opts = u.options();
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), G = B.size(2), N = B.size(3);
  TORCH_CHECK(ckpt.is_contiguous() && ckpt.dim() == 4 && ckpt.size(0) == batch &&
              ckpt.size(1) == (L + chunk - 1) / chunk && ckpt.size(2) == N && ckpt.size(3) == dim,
              "scan_cpu: kept states of shape ", ckpt.sizes(), " do not fit the inputs");
  TORCH_CHECK(!dlast.has_value() || (dlast->is_contiguous() && dlast->numel() == batch * dim * N),
              "scan_cpu: dlast must be contiguous (batch, dim, N)");
  Tensor du = new_seq(u, batch, L, dim, time_major), ddelta = new_seq(u, batch, L, dim, time_major);
  Tensor dz = z.has_value() ? new_seq(u, batch, L, dim, time_major) : at::empty({0}, opts);
  Tensor dAt = at::empty({batch, N, dim}, opts);
  Tensor dD = D.has_value() ? at::empty({batch, dim}, opts) : at::empty({0}, opts);
  Tensor dbias = bias.has_value() ? at::empty({batch, dim}, opts) : at::empty({0}, opts);
  Tensor dB = at::empty({splits, batch, L, G, N}, opts), dC = at::empty({splits, batch, L, G, N}, opts);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_cpu_bwd", [&] {
    auto p = make_problem<scalar_t>(u, delta, At, B, C, D, z, bias, softplus, chunk);
    p.so = seq_strides(du);
    TORCH_CHECK(splits >= 1 && splits <= p.nblk, "scan_cpu: splits must be in [1, ", p.nblk, "]");
    Grads<scalar_t> q;
    q.dout = dout.const_data_ptr<scalar_t>();
    q.sdo = seq_strides(dout);
    q.dlast = dlast.has_value() ? dlast->const_data_ptr<scalar_t>() : nullptr;
    q.ckpt = ckpt.const_data_ptr<scalar_t>();
    q.du = du.data_ptr<scalar_t>();
    q.ddelta = ddelta.data_ptr<scalar_t>();
    q.dz = z.has_value() ? dz.data_ptr<scalar_t>() : nullptr;
    q.dAt = dAt.data_ptr<scalar_t>();
    q.dD = D.has_value() ? dD.data_ptr<scalar_t>() : nullptr;
    q.dbias = bias.has_value() ? dbias.data_ptr<scalar_t>() : nullptr;
    q.dB = dB.data_ptr<scalar_t>();
    q.dC = dC.data_ptr<scalar_t>();
    q.splits = splits;
    dispatch_n(N, [&](auto kn) { backward<scalar_t, decltype(kn)::value>(p, q); });
  });
  return {du, ddelta, dAt, dB, dC, dD, dz, dbias};
}

// Elements per second of the decays' exp on a cache-resident buffer: the bound the
// benchmark compares the scan with (same function, same flags).
Tensor exp_bound(const Tensor& x, int64_t reps) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat, "exp_bound: contiguous float32");
  Tensor out = at::empty_like(x);
  using V = Vec<float>;
  const float* src = x.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = x.numel() / V::size() * V::size();
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; i += V::size()) {
      exp_decay(V::loadu(src + i)).store(dst + i);
    }
  }
  return out;
}

std::string capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

int64_t vector_width() { return Vec<float>::size(); }


}  // namespace

TORCH_LIBRARY(vmamba_mm_scan_cpu, m) {
  m.def("scan_fwd", &scan_fwd);
  m.def("scan_bwd", &scan_bwd);
  m.def("exp_bound", &exp_bound);
  m.def("vector_width", &vector_width);
  m.def("capability", &capability);
}
