// Fused CPU P-pooling: forward and analytic backward, one pass over each (n, c) plane.
//
// Layout trick. Each plane is first copied into "split" buffers whose columns are grouped
// by their phase modulo the horizontal stride: padded column pc = t * sw + q is stored at
// [row][q][t]. Window element (i, j) of outputs ow, ow + 1, ... then lies at consecutive t
// (phase q = (j * dw) % sw, t = ow + (j * dw) / sw), so every window element is one
// contiguous vector load for V outputs at once, for any stride and dilation. The buffers
// also hold the padding and the tail that rounds the output width up to a multiple of V,
// so the inner loops have no bounds checks and no per-element branches. Per position they
// hold x (0 on padding), l = log(max(x, eps)) (kPad on padding) and, for backward,
// r = 1 / x where x >= eps (else 0).
//
// Numerics (as in lit_ppool.kernels.reference): weights u_i = exp(alpha * (l_i - lm)), lm =
// the window maximum of l (at least log eps), so u is in (0, 1], the maximum weighs 1 and
// nothing overflows; padded positions weigh 0; NaN propagates. exp and log are inlined
// polynomial approximations (within 1 ulp of float32), not calls into Sleef: they are most
// of the arithmetic. Forward saves lm (one float per output) for backward. Backward
// recomputes the weights and accumulates dL/dx into a per-plane buffer window by window in
// a fixed order (deterministic, no atomics), and dL/dalpha per plane.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t V = Vec::size();
// l of a padded position: exp(alpha * (kPad - lm)) is 0 for every alpha >= kTinyAlpha, and
// kPad times a zero weight is 0 (with -inf it would be NaN).
constexpr float kPad = -std::numeric_limits<float>::max();
// alpha = 0 is evaluated as this: the same weights (exp of at most 1e-29 in magnitude is
// 1.0f) but padding still weighs exactly 0.
constexpr float kTinyAlpha = 1e-30f;
// lm of the lanes past the output width in backward: their weights are finite (0 or tiny)
// and their dL/dy is 0, so they contribute exactly 0.
constexpr float kNoWindow = 1e30f;

// ---------------------------------------------------------------------------------------
// Inlined exp and log. They rely on fused multiply-adds (exact products) and bit casts, so
// builds without AVX2 or AVX512 use the library functions instead.

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define LIT_PPOOL_FAST_MATH 1
#else
#define LIT_PPOOL_FAST_MATH 0
#endif

inline IVec bits_of(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castps_si512(x);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_castps_si256(x);
#else
  return at::vec::cast<int32_t>(x);
#endif
}

// 1 / x for normal x > 0: the hardware estimate and one Newton step (a division costs
// several times more).
inline Vec reciprocal(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
  const Vec r = _mm512_rcp14_ps(x);
#else
  const Vec r = _mm256_rcp_ps(x);
#endif
  return at::vec::fmadd(r, at::vec::fnmadd(x, r, Vec(1.0f)), r);
#else
  return Vec(1.0f) / x;
#endif
}

// exp(z) for z <= 0: 0 below -87 (so no subnormal weights), NaN stays NaN.
// z = n ln2 + r with |r| <= ln2 / 2; exp(r) by its degree-7 Taylor polynomial; 2^n built in the exponent bits.
inline Vec exp_nonpositive(const Vec& z) {
  if (!LIT_PPOOL_FAST_MATH) return Vec::blendv(z.exp(), Vec(0.0f), z < Vec(-87.0f));
  const Vec clamped = at::vec::maximum(z, Vec(-87.0f));
  // Adding 1.5 * 2^23 rounds z / ln2 to the integer n and leaves n in the low mantissa bits.
  const Vec shifter(12582912.0f);
  const Vec shifted = at::vec::fmadd(clamped, Vec(1.44269504088896341f), shifter);
  const Vec n = shifted - shifter;
  Vec r = at::vec::fmadd(n, Vec(-0.693145751953125f), clamped);  // ln2 in two parts (Cody-Waite)
  r = at::vec::fmadd(n, Vec(-1.428606765330187e-06f), r);
  Vec p = at::vec::fmadd(r, Vec(1.0f / 5040.0f), Vec(1.0f / 720.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f / 120.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f / 24.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f / 6.0f));
  p = at::vec::fmadd(p, r, Vec(0.5f));
  p = at::vec::fmadd(p, r, Vec(1.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f));
  // The low mantissa bits of `shifted` hold n: 2^n has exponent field n + 127 (>= 1 here).
  const IVec exponent = bits_of(shifted) - bits_of(shifter) + IVec(127);
  const Vec scale = at::vec::cast<float>(exponent << IVec(23));
  return Vec::blendv(p * scale, Vec(0.0f), z < Vec(-87.0f));
}

// log(max(x, eps)) for eps > 0 normal; NaN stays NaN and inf stays inf.
// max(x, eps) = 2^e m with m in [sqrt(1/2), sqrt(2)), log = e ln2 + log1p(m - 1);
// log1p(f) = f - f^2 / 2 + f^3 Q(f), Q of degree 7 fitted (weighted least squares) on that
// interval.
inline Vec log_floored(const Vec& x, const Vec& eps) {
  const Vec v = at::vec::maximum(x, eps);
  if (!LIT_PPOOL_FAST_MATH) return v.log();
  // Offsetting the bits by those of sqrt(1/2) puts e in the exponent field and m's offset
  // from sqrt(1/2) in the mantissa field.
  const IVec offset = bits_of(v) - IVec(0x3f3504f3);
  const IVec e = offset >> IVec(23);
  const Vec m = at::vec::cast<float>((offset & IVec(0x007fffff)) + IVec(0x3f3504f3));
  const Vec f = m - Vec(1.0f);
  Vec q = at::vec::fmadd(f, Vec(-7.362867871e-02f), Vec(1.262032749e-01f));
  q = at::vec::fmadd(q, f, Vec(-1.320210421e-01f));
  q = at::vec::fmadd(q, f, Vec(1.422711404e-01f));
  q = at::vec::fmadd(q, f, Vec(-1.662136991e-01f));
  q = at::vec::fmadd(q, f, Vec(1.999982657e-01f));
  q = at::vec::fmadd(q, f, Vec(-2.500085194e-01f));
  q = at::vec::fmadd(q, f, Vec(3.333335405e-01f));
  // Sum e ln2 + f - f^2 / 2 + f^3 Q(f), largest terms first with their rounding errors kept
  // (ln2 in two parts, e * 0.693359375 and f^2 / 2 exact, Fast2Sum twice): the result is
  // within about 0.5 ulp, as accurate as a correctly rounded log for the differences l_i - lm
  // that large alpha amplifies.
  const Vec ef = at::vec::convert_to_fp_of_same_size<float>(e);
  const Vec big = ef * Vec(0.693359375f);
  const Vec f2 = f * f;
  const Vec half_f2 = f2 * Vec(-0.5f);
  const Vec s1 = big + f;
  const Vec err1 = (big - s1) + f;
  const Vec s2 = s1 + half_f2;
  const Vec err2 = (s1 - s2) + half_f2;
  Vec small = at::vec::fmadd(at::vec::fmsub(f, f, f2), Vec(-0.5f), err1 + err2);
  small = at::vec::fmadd(ef, Vec(-2.12194440e-4f), small);
  small = at::vec::fmadd(f2 * f, q, small);
  const Vec result = s2 + small;
  return Vec::blendv(result, v, (v != v) | (v == Vec(std::numeric_limits<float>::infinity())));
}

// ---------------------------------------------------------------------------------------
// Geometry and the split layout.

struct Geometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t height, width, out_h, out_w;
  int64_t rows;   // padded rows read by some window
  int64_t span;   // entries per (row, phase): the output width rounded up to V plus the largest column offset
  int64_t out_w_padded;
  std::vector<int64_t> taps;  // offset of window element k = i * kw + j from its window's origin

  Geometry(std::vector<int64_t> g, int64_t h, int64_t w) {
    TORCH_CHECK(g.size() == 10, "p_pool2d_cpu: expected 10 geometry values");
    kh = g[0]; kw = g[1]; sh = g[2]; sw = g[3]; ph = g[4]; pw = g[5]; dh = g[6]; dw = g[7];
    out_h = g[8]; out_w = g[9];
    height = h; width = w;
    rows = (out_h - 1) * sh + (kh - 1) * dh + 1;
    out_w_padded = (out_w + V - 1) / V * V;
    span = out_w_padded + ((kw - 1) * dw) / sw;
    for (int64_t i = 0; i < kh; ++i) {
      for (int64_t j = 0; j < kw; ++j) taps.push_back(i * dh * row_stride() + ((j * dw) % sw) * span + (j * dw) / sw);
    }
  }
  int64_t row_stride() const { return sw * span; }
  int64_t split_size() const { return rows * row_stride(); }
  // Offset in a split buffer of the window of output (oh, ow); add taps[k] for its element k.
  int64_t origin(int64_t oh, int64_t ow) const { return oh * sh * row_stride() + ow; }
  // Entries t of phase q hold input column t * sw + q - pw: inside [0, width) for t in [lo, hi).
  int64_t first_inside(int64_t q) const { return std::min(span, std::max<int64_t>(0, (pw - q + sw - 1) / sw)); }
  int64_t end_inside(int64_t q) const {
    return std::max(first_inside(q), std::min(span, (width + pw - q + sw - 1) / sw));
  }
};

// One plane in the split layout; `recips` is only filled (and allocated) for backward.
struct SplitPlane {
  std::vector<float> values, logs, recips, row;

  SplitPlane(const Geometry& g, bool with_recips)
      : values(g.split_size()), logs(g.split_size()), recips(with_recips ? g.split_size() : 0), row(g.width) {}
};

// Phase q of one input row: out[t] = row[t * sw + q - pw] for t in [lo, hi).
inline void gather_phase(const float* row, const Geometry& g, int64_t q, int64_t lo, int64_t hi, float* out) {
  const int64_t shift = q - g.pw;
  int64_t t = lo;
  if (g.sw == 1) {
    std::copy(row + lo + shift, row + hi + shift, out + lo);
    return;
  }
  if (g.sw == 2) {
    for (; t + V <= hi && 2 * (t + V) + shift <= g.width; t += V) {
      const float* src = row + 2 * t + shift;
      at::vec::deinterleave2(Vec::loadu(src), Vec::loadu(src + V)).first.store(out + t);
    }
  }
  for (; t < hi; ++t) out[t] = row[t * g.sw + shift];
}

// Copies input plane `src` into the split layout.
template <typename scalar_t>
void split_plane(const scalar_t* src, const Geometry& g, float eps, SplitPlane& s) {
  const int64_t rs = g.row_stride();
  const bool with_recips = !s.recips.empty();
  const Vec veps(eps);
  for (int64_t pr = 0; pr < g.rows; ++pr) {
    const int64_t r = pr - g.ph;
    float* vrow = s.values.data() + pr * rs;
    float* lrow = s.logs.data() + pr * rs;
    float* rrow = with_recips ? s.recips.data() + pr * rs : nullptr;
    if (r < 0 || r >= g.height) {
      std::fill(vrow, vrow + rs, 0.0f);
      std::fill(lrow, lrow + rs, kPad);
      if (with_recips) std::fill(rrow, rrow + rs, 0.0f);
      continue;
    }
    const scalar_t* srow = src + r * g.width;
    for (int64_t k = 0; k < g.width; ++k) s.row[k] = static_cast<float>(srow[k]);
    for (int64_t q = 0; q < g.sw; ++q) {
      float* vq = vrow + q * g.span;
      float* lq = lrow + q * g.span;
      const int64_t lo = g.first_inside(q), hi = g.end_inside(q);
      std::fill(vq, vq + lo, 0.0f);
      std::fill(lq, lq + lo, kPad);
      gather_phase(s.row.data(), g, q, lo, hi, vq);
      for (int64_t t = lo; t < hi; t += V) {
        const int64_t count = std::min(V, hi - t);
        const Vec x = Vec::loadu(vq + t, count);
        log_floored(x, veps).store(lq + t, count);
        if (with_recips) Vec::blendv(Vec(0.0f), reciprocal(x), x >= veps).store(rrow + q * g.span + t, count);
      }
      std::fill(vq + hi, vq + g.span, 0.0f);
      std::fill(lq + hi, lq + g.span, kPad);
      if (with_recips) {
        std::fill(rrow + q * g.span, rrow + q * g.span + lo, 0.0f);
        std::fill(rrow + q * g.span + hi, rrow + (q + 1) * g.span, 0.0f);
      }
    }
  }
}

// Inverse of the split layout for one input row: dst[col] = split entry of column col (0
// where no window reads it).
inline void unsplit_row(const float* src, const Geometry& g, float* dst) {
  int64_t col = 0;
  if (g.sw == 2) {
    // Even columns come from phase qe at t = m + oe, odd ones from phase qo at t = m + oo.
    const int64_t qe = g.pw % 2, qo = (g.pw + 1) % 2;
    const int64_t oe = (g.pw - qe) / 2, oo = (1 + g.pw - qo) / 2;
    const float* even = src + qe * g.span + oe;
    const float* odd = src + qo * g.span + oo;
    for (int64_t m = 0; 2 * (m + V) <= g.width && m + V + std::max(oe, oo) <= g.span; m += V) {
      const auto pair = at::vec::interleave2(Vec::loadu(even + m), Vec::loadu(odd + m));
      pair.first.store(dst + 2 * m);
      pair.second.store(dst + 2 * m + V);
      col = 2 * (m + V);
    }
  }
  for (; col < g.width; ++col) {
    const int64_t t = (col + g.pw) / g.sw, q = (col + g.pw) % g.sw;
    dst[col] = t < g.span ? src[q * g.span + t] : 0.0f;
  }
}

template <typename scalar_t>
void store_row(const float* src, scalar_t* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<scalar_t>(src[k]);
}

template <typename scalar_t>
void load_row(const scalar_t* src, float* dst, int64_t n, int64_t n_padded, float fill) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<float>(src[k]);
  std::fill(dst + n, dst + n_padded, fill);
}

// ---------------------------------------------------------------------------------------
// Kernels.

// Window maximum of the logs, at least log(eps); NaN propagates.
inline Vec window_log_max(const Geometry& g, const float* logs, const Vec& log_eps) {
  Vec lm(kPad);
  for (const int64_t tap : g.taps) lm = at::vec::maximum(lm, Vec::loadu(logs + tap));
  return at::vec::maximum(lm, log_eps);
}

// The alpha of plane p: (alpha as given, alpha used in the weights).
inline std::pair<float, float> plane_alpha(const float* alphas, bool per_channel, int64_t p, int64_t channels) {
  const float a = alphas[per_channel ? p % channels : 0];
  return {a, a > kTinyAlpha ? a : kTinyAlpha};
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& alpha, const Geometry& g, float eps,
                    at::Tensor& output, at::Tensor& log_max) {
  const int64_t channels = input.size(1);
  const int64_t planes = input.size(0) * channels;
  const scalar_t* in = input.data_ptr<scalar_t>();
  const float* alphas = alpha.data_ptr<float>();
  const bool per_channel = alpha.numel() > 1;
  scalar_t* out = output.data_ptr<scalar_t>();
  float* lmax = log_max.data_ptr<float>();
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    SplitPlane s(g, /*with_recips=*/false);
    std::vector<float> row(g.out_w_padded);
    const Vec log_eps(std::log(eps));
    for (int64_t p = begin; p < end; ++p) {
      split_plane(in + p * in_plane, g, eps, s);
      const Vec a(plane_alpha(alphas, per_channel, p, channels).second);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        float* lmax_row = lmax + p * out_plane + oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          const float* logs = s.logs.data() + g.origin(oh, ow);
          const float* values = s.values.data() + g.origin(oh, ow);
          const Vec lm = window_log_max(g, logs, log_eps);
          Vec total(0.0f), weighted(0.0f);
          for (const int64_t tap : g.taps) {
            const Vec u = exp_nonpositive(a * (Vec::loadu(logs + tap) - lm));
            total = total + u;
            weighted = at::vec::fmadd(u, Vec::loadu(values + tap), weighted);
          }
          // The maximum weighs 1, so total >= 1 except for a padding-only window (output 0).
          (weighted / at::vec::maximum(total, Vec(1.0f))).store(row.data() + ow);
          lm.store(lmax_row + ow, std::min(V, g.out_w - ow));
        }
        store_row(row.data(), out + p * out_plane + oh * g.out_w, g.out_w);
      }
    }
  });
}

// Backward of V outputs (oh, ow ...): adds dL/dx into `grad` and returns the dL/dalpha terms.
// `masked`: the last vector of a row, whose lanes past the output width must add nothing
// (they may read real columns that no window covers, NaN included).
template <bool masked>
inline Vec backward_vector(const Geometry& g, const SplitPlane& s, float* grad, float* weights, int64_t oh,
                           int64_t ow, const Vec& lm, const Vec& grad_y, float alpha, float alpha_w) {
  const int64_t window_size = g.kh * g.kw;
  const int64_t origin = g.origin(oh, ow);
  const float* logs = s.logs.data() + origin;
  const float* values = s.values.data() + origin;
  const float* recips = s.recips.data() + origin;
  grad += origin;
  const Vec a_w(alpha_w);
  Vec total(0.0f), weighted(0.0f);
  for (int64_t k = 0; k < window_size; ++k) {
    const int64_t tap = g.taps[k];
    const Vec u = exp_nonpositive(a_w * (Vec::loadu(logs + tap) - lm));
    u.store(weights + k * V);
    total = total + u;
    weighted = at::vec::fmadd(u, Vec::loadu(values + tap), weighted);
  }
  const Vec inv_total = Vec(1.0f) / at::vec::maximum(total, Vec(1.0f));
  const Vec y = weighted * inv_total;
  const Vec grad_scaled = grad_y * inv_total;  // dL/dy / sum(u)
  const Vec a(alpha);
  Vec live;
  if (masked) live = Vec::set(Vec(0.0f), Vec(1.0f), g.out_w - ow) == Vec(1.0f);
  Vec grad_alpha(0.0f);
  for (int64_t k = 0; k < window_size; ++k) {
    const int64_t tap = g.taps[k];
    const Vec grad_w = grad_scaled * Vec::loadu(weights + k * V);  // dL/dy * w_i
    const Vec centred = Vec::loadu(values + tap) - y;
    const Vec log_ratio = Vec::loadu(logs + tap) - lm;
    // dy/dalpha = sum_i w_i log(x~_i / m) (x_i - y); the log(m) part sums to 0.
    Vec alpha_term = grad_w * log_ratio * centred;
    // dy/dx_i = w_i (1 + alpha r_i (x_i - y)), r_i = 1 / x_i, or 0 below eps (locally constant weight).
    Vec contribution = grad_w * at::vec::fmadd(a * Vec::loadu(recips + tap), centred, Vec(1.0f));
    if (masked) {
      alpha_term = Vec::blendv(Vec(0.0f), alpha_term, live);
      contribution = Vec::blendv(Vec(0.0f), contribution, live);
    }
    grad_alpha = grad_alpha + alpha_term;
    (Vec::loadu(grad + tap) + contribution).store(grad + tap);
  }
  return grad_alpha;
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& input, const at::Tensor& alpha, const at::Tensor& log_max,
                     const at::Tensor& grad_output, const Geometry& g, float eps, at::Tensor& grad_input,
                     at::Tensor& grad_alpha_planes) {
  const int64_t channels = input.size(1);
  const int64_t planes = input.size(0) * channels;
  const scalar_t* in = input.data_ptr<scalar_t>();
  const scalar_t* gout = grad_output.data_ptr<scalar_t>();
  const float* alphas = alpha.data_ptr<float>();
  const bool per_channel = alpha.numel() > 1;
  const float* lmax = log_max.data_ptr<float>();
  scalar_t* gin = grad_input.data_ptr<scalar_t>();
  float* galpha = grad_alpha_planes.data_ptr<float>();
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    SplitPlane s(g, /*with_recips=*/true);
    std::vector<float> grad(g.split_size()), weights(g.kh * g.kw * V), grow(g.out_w_padded),
        lrow(g.out_w_padded), in_row(g.width);
    for (int64_t p = begin; p < end; ++p) {
      split_plane(in + p * in_plane, g, eps, s);
      std::fill(grad.begin(), grad.end(), 0.0f);
      const auto [a, a_w] = plane_alpha(alphas, per_channel, p, channels);
      Vec grad_alpha(0.0f);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        load_row(gout + p * out_plane + oh * g.out_w, grow.data(), g.out_w, g.out_w_padded, 0.0f);
        load_row(lmax + p * out_plane + oh * g.out_w, lrow.data(), g.out_w, g.out_w_padded, kNoWindow);
        int64_t ow = 0;
        for (; ow + V <= g.out_w; ow += V) {
          grad_alpha = grad_alpha + backward_vector<false>(g, s, grad.data(), weights.data(), oh, ow,
                                                           Vec::loadu(lrow.data() + ow),
                                                           Vec::loadu(grow.data() + ow), a, a_w);
        }
        if (ow < g.out_w) {
          grad_alpha = grad_alpha + backward_vector<true>(g, s, grad.data(), weights.data(), oh, ow,
                                                          Vec::loadu(lrow.data() + ow),
                                                          Vec::loadu(grow.data() + ow), a, a_w);
        }
      }
      float lanes[V];
      grad_alpha.store(lanes);
      float plane_sum = 0.0f;
      for (int64_t k = 0; k < V; ++k) plane_sum += lanes[k];
      galpha[p] = plane_sum;
      // Un-split: input row r sits at padded row r + ph; rows no window reads get 0.
      scalar_t* dst = gin + p * in_plane;
      for (int64_t r = 0; r < g.height; ++r) {
        const int64_t pr = r + g.ph;
        if (pr < g.rows) {
          unsplit_row(grad.data() + pr * g.row_stride(), g, in_row.data());
        } else {
          std::fill(in_row.begin(), in_row.end(), 0.0f);
        }
        store_row(in_row.data(), dst + r * g.width, g.width);
      }
    }
  });
}

void check_args(const at::Tensor& input, const at::Tensor& alpha) {
  TORCH_CHECK(input.device().is_cpu() && input.dim() == 4 && input.is_contiguous(),
              "p_pool2d_cpu: expected a contiguous 4-d CPU input");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.is_contiguous() &&
                  (alpha.numel() == 1 || alpha.numel() == input.size(1)),
              "p_pool2d_cpu: expected a contiguous float32 alpha with 1 or C values");
  const float* a = alpha.data_ptr<float>();
  TORCH_CHECK(std::none_of(a, a + alpha.numel(), [](float v) { return v < 0.0f; }),
              "p_pool2d: alpha must be >= 0 (0 is average pooling, large alpha approaches max pooling), "
              "but got a negative value. PPool2d keeps its alpha in [0, alpha_max]; clamp a tensor alpha "
              "with alpha.clamp_min(0).");
}

}  // namespace

std::vector<at::Tensor> p_pool2d_forward(const at::Tensor& input, const at::Tensor& alpha,
                                         std::vector<int64_t> geometry, double eps) {
  check_args(input, alpha);
  const Geometry g(geometry, input.size(2), input.size(3));
  auto output = at::empty({input.size(0), input.size(1), g.out_h, g.out_w}, input.options());
  auto log_max = at::empty({input.size(0), input.size(1), g.out_h, g.out_w}, input.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "p_pool2d_cpu_forward", [&] {
    forward_kernel<scalar_t>(input, alpha, g, static_cast<float>(eps), output, log_max);
  });
  return {output, log_max};
}

std::vector<at::Tensor> p_pool2d_backward(const at::Tensor& input, const at::Tensor& alpha,
                                          const at::Tensor& log_max, const at::Tensor& grad_output,
                                          std::vector<int64_t> geometry, double eps) {
  check_args(input, alpha);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == input.scalar_type(),
              "p_pool2d_cpu: expected a contiguous grad_output in the input dtype");
  const Geometry g(geometry, input.size(2), input.size(3));
  auto grad_input = at::empty_like(input);
  auto grad_alpha_planes = at::empty({input.size(0), input.size(1)}, input.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "p_pool2d_cpu_backward", [&] {
    backward_kernel<scalar_t>(input, alpha, log_max.contiguous(), grad_output, g, static_cast<float>(eps),
                              grad_input, grad_alpha_planes);
  });
  return {grad_input, grad_alpha_planes};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &p_pool2d_forward, "P-pooling forward: (output, log window max)");
  m.def("backward", &p_pool2d_backward, "P-pooling backward: (grad input, dL/dalpha per (n, c) plane)");
}
