// Fused CPU P-pooling: forward and analytic backward, for NCHW and channels-last inputs.
//
// NCHW: one task per (n, c) plane, V outputs of a row per vector. Each plane is first copied
// into "split" buffers whose columns are grouped by their phase modulo the horizontal
// stride: padded column pc = t * sw + q is stored at [row][q][t]. Window element (i, j) of
// outputs ow, ow + 1, ... then lies at consecutive t (phase q = (j * dw) % sw,
// t = ow + (j * dw) / sw), so every window element is one contiguous vector load for V
// outputs at once, for any stride and dilation. The buffers
// also hold the padding and the tail that rounds the output width up to a multiple of V,
// so the inner loops have no bounds checks and no per-element branches. Per position they
// hold x (0 on padding), l = log(max(x, eps)) (kPad on padding) and, for backward,
// r = 1 / x where x >= eps (else 0).
//
// Channels-last: one task per (n, group of channels), V channels of one pixel per vector.
// The task walks the output rows in order and converts each padded input row it reads once
// into a small ring of row buffers holding the same x, l and r, so the input is read as
// contiguous stretches and every window element is again one vector load; alpha is a
// vector (per channel or broadcast) and dL/dalpha accumulates per lane, i.e. per channel.
// Backward accumulates dL/dx in the ring and writes a row out once no later window reads it.
//
// Non-overlapping windows inside the input (e.g. VGG's 2x2 stride 2) skip both layouts'
// buffers: every input is read by one window only, so each window's inputs are loaded
// straight from the tensor and backward writes dL/dx straight out (see "Non-overlapping
// windows" below).
//
// Alpha comes in two forms, a template parameter of every kernel (`dense`), so that neither
// pays for the other in its inner loops. Flat: one value, or one per channel, fixed per plane
// (NCHW) or per channel block (channels-last) and hoisted out of the loops; dL/dalpha is
// summed per (n, c) plane. Dense: one value per output, a float32 tensor of the output's
// shape in the output's memory layout, so the alphas of a vector of outputs are one load at
// the outputs' offset (NCHW: V outputs of a row; channels-last: V channels of a pixel);
// dL/dalpha is then written per output, a map of the same shape and layout.
//
// Numerics (as in lit_ppool.kernels.reference): weights u_i = exp(alpha * (l_i - lm)), lm =
// the window maximum of l (at least log eps), so u is in (0, 1], the maximum weighs 1 and
// nothing overflows; padded positions weigh 0; NaN propagates. exp and log are inlined
// polynomial approximations (within 1 ulp of float32, measured) instead of calls into Sleef,
// since they are most of the arithmetic. Forward saves lm (one float per output) for backward. Backward
// recomputes the weights and accumulates dL/dx into the task's buffers window by window in
// a fixed order (deterministic, no atomics), and dL/dalpha per (n, c) plane or per output.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
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
  // (ln2 in two parts, e * 0.693359375 and f^2 / 2 exact, Fast2Sum twice): 0.66 ulp at most
  // on 32M random inputs against float64. Large alpha amplifies errors in l_i - lm: a plainer
  // sum (0.93 ulp) tripled the dL/dalpha error at alpha = 100 (3x3 s1: 2.2e-5 against
  // 7.6e-6 off the float64 oracle).
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

// x, l and r of one task's padded input; `recips` is only filled (and allocated) for backward.
struct Buffers {
  std::vector<float> values, logs, recips, row;

  Buffers(int64_t size, bool with_recips, int64_t row_size = 0)
      : values(size), logs(size), recips(with_recips ? size : 0), row(row_size) {}
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
void split_plane(const scalar_t* src, const Geometry& g, float eps, Buffers& s) {
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
// The window math, shared by both layouts. `logs`, `values`, `recips` and `grad` point at the
// window origin of V outputs; taps[k] is the offset of window element k from there.

// Window maximum of the logs, at least log(eps); NaN propagates.
inline Vec window_log_max(const std::vector<int64_t>& taps, const float* logs, const Vec& log_eps) {
  Vec lm(kPad);
  for (const int64_t tap : taps) lm = at::vec::maximum(lm, Vec::loadu(logs + tap));
  return at::vec::maximum(lm, log_eps);
}

// y = sum_i u_i x_i / sum_i u_i, u_i = exp(alpha_w (l_i - lm)).
inline Vec window_output(const std::vector<int64_t>& taps, const float* logs, const float* values, const Vec& lm,
                         const Vec& alpha_w) {
  Vec total(0.0f), weighted(0.0f);
  for (const int64_t tap : taps) {
    const Vec u = exp_nonpositive(alpha_w * (Vec::loadu(logs + tap) - lm));
    total = total + u;
    weighted = at::vec::fmadd(u, Vec::loadu(values + tap), weighted);
  }
  // The maximum weighs 1, so total >= 1 except for a padding-only window (output 0).
  return weighted / at::vec::maximum(total, Vec(1.0f));
}

// Backward of V outputs: adds dL/dx into `grad` and returns the dL/dalpha terms.
// `masked` (with `live`): lanes that are not outputs add nothing (NCHW: lanes past the
// output width, which may read real columns that no window covers, NaN included).
template <bool masked>
inline Vec window_backward(const std::vector<int64_t>& taps, const float* logs, const float* values,
                           const float* recips, float* grad, float* weights, const Vec& lm, const Vec& grad_y,
                           const Vec& alpha, const Vec& alpha_w, const Vec& live) {
  const int64_t window_size = static_cast<int64_t>(taps.size());
  Vec total(0.0f), weighted(0.0f);
  for (int64_t k = 0; k < window_size; ++k) {
    const Vec u = exp_nonpositive(alpha_w * (Vec::loadu(logs + taps[k]) - lm));
    u.store(weights + k * V);
    total = total + u;
    weighted = at::vec::fmadd(u, Vec::loadu(values + taps[k]), weighted);
  }
  const Vec inv_total = Vec(1.0f) / at::vec::maximum(total, Vec(1.0f));
  const Vec y = weighted * inv_total;
  const Vec grad_scaled = grad_y * inv_total;  // dL/dy / sum(u)
  Vec grad_alpha(0.0f);
  for (int64_t k = 0; k < window_size; ++k) {
    const int64_t tap = taps[k];
    const Vec grad_w = grad_scaled * Vec::loadu(weights + k * V);  // dL/dy * w_i
    const Vec centred = Vec::loadu(values + tap) - y;
    const Vec log_ratio = Vec::loadu(logs + tap) - lm;
    // dy/dalpha = sum_i w_i log(x~_i / m) (x_i - y); the log(m) part sums to 0.
    Vec alpha_term = grad_w * log_ratio * centred;
    // dy/dx_i = w_i (1 + alpha r_i (x_i - y)), r_i = 1 / x_i, or 0 below eps (locally constant weight).
    Vec contribution = grad_w * at::vec::fmadd(alpha * Vec::loadu(recips + tap), centred, Vec(1.0f));
    if (masked) {
      alpha_term = Vec::blendv(Vec(0.0f), alpha_term, live);
      contribution = Vec::blendv(Vec(0.0f), contribution, live);
    }
    grad_alpha = grad_alpha + alpha_term;
    (Vec::loadu(grad + tap) + contribution).store(grad + tap);
  }
  return grad_alpha;
}

// alpha as given and as used in the weights (lane by lane; NaN stays NaN).
inline std::pair<Vec, Vec> with_weight_alpha(const Vec& alpha) {
  return {alpha, at::vec::maximum(alpha, Vec(kTinyAlpha))};
}

// A dense alpha: the alphas of the `count` outputs at offset `at` of the output (0 past
// them), as given and as used in the weights.
inline std::pair<Vec, Vec> output_alphas(const float* alphas, int64_t at, int64_t count) {
  return with_weight_alpha(Vec::loadu(alphas + at, count));
}

// The dL/dalpha terms of V outputs: added to the plane's or channel block's sum (flat alpha),
// or the `count` of them written at offset `at` of the dL/dalpha map (dense alpha).
template <bool dense>
inline void collect_grad_alpha(const Vec& terms, Vec& sum, float* galpha, int64_t at, int64_t count) {
  if constexpr (dense) {
    terms.store(galpha + at, count);
  } else {
    sum = sum + terms;
  }
}

inline float lane_sum(const Vec& v) {
  float lanes[V];
  v.store(lanes);
  float sum = 0.0f;
  for (int64_t k = 0; k < V; ++k) sum += lanes[k];
  return sum;
}

// The tensors of one call, as sizes and raw pointers.
// `alphas`: a flat alpha (`per_channel`: C values, else 1) or a dense one (one per output, in
// the output's layout); `galpha`: dL/dalpha per (n, c) plane, or per output for a dense alpha.
template <typename scalar_t>
struct ForwardData {
  int64_t batch, channels;
  const scalar_t* in;
  const float* alphas;
  bool per_channel;
  scalar_t* out;
  float* lmax;

  ForwardData(const at::Tensor& input, const at::Tensor& alpha, at::Tensor& output, at::Tensor& log_max)
      : batch(input.size(0)), channels(input.size(1)), in(input.data_ptr<scalar_t>()),
        alphas(alpha.data_ptr<float>()), per_channel(alpha.numel() > 1), out(output.data_ptr<scalar_t>()),
        lmax(log_max.data_ptr<float>()) {}
};

template <typename scalar_t>
struct BackwardData {
  int64_t batch, channels;
  const scalar_t* in;
  const scalar_t* gout;
  const float* alphas;
  bool per_channel;
  const float* lmax;
  scalar_t* gin;
  float* galpha;

  BackwardData(const at::Tensor& input, const at::Tensor& alpha, const at::Tensor& log_max,
               const at::Tensor& grad_output, at::Tensor& grad_input, at::Tensor& grad_alpha)
      : batch(input.size(0)), channels(input.size(1)), in(input.data_ptr<scalar_t>()),
        gout(grad_output.data_ptr<scalar_t>()), alphas(alpha.data_ptr<float>()), per_channel(alpha.numel() > 1),
        lmax(log_max.data_ptr<float>()), gin(grad_input.data_ptr<scalar_t>()),
        galpha(grad_alpha.data_ptr<float>()) {}
};

// ---------------------------------------------------------------------------------------
// NCHW kernels.

// The flat alpha of plane p, as given and as used in the weights (nothing for a dense alpha,
// which the kernels load per vector of outputs).
template <bool dense>
inline std::pair<Vec, Vec> plane_alpha(const float* alphas, bool per_channel, int64_t p, int64_t channels) {
  if constexpr (dense) {
    return {};
  } else {
    return with_weight_alpha(Vec(alphas[per_channel ? p % channels : 0]));
  }
}

template <bool dense, typename scalar_t>
void forward_kernel(const ForwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t planes = d.batch * d.channels;
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    Buffers s(g.split_size(), /*with_recips=*/false, g.width);
    std::vector<float> row(g.out_w_padded);
    const Vec log_eps(std::log(eps));
    for (int64_t p = begin; p < end; ++p) {
      split_plane(d.in + p * in_plane, g, eps, s);
      Vec a_w = plane_alpha<dense>(d.alphas, d.per_channel, p, d.channels).second;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t row_at = p * out_plane + oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          const int64_t count = std::min(V, g.out_w - ow);
          if constexpr (dense) a_w = output_alphas(d.alphas, row_at + ow, count).second;
          const float* logs = s.logs.data() + g.origin(oh, ow);
          const Vec lm = window_log_max(g.taps, logs, log_eps);
          window_output(g.taps, logs, s.values.data() + g.origin(oh, ow), lm, a_w).store(row.data() + ow);
          lm.store(d.lmax + row_at + ow, count);
        }
        store_row(row.data(), d.out + row_at, g.out_w);
      }
    }
  });
}

template <bool dense, typename scalar_t>
void backward_kernel(const BackwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t planes = d.batch * d.channels;
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    Buffers s(g.split_size(), /*with_recips=*/true, g.width);
    std::vector<float> grad(g.split_size()), weights(g.taps.size() * V), grow(g.out_w_padded),
        lrow(g.out_w_padded), in_row(g.width);
    for (int64_t p = begin; p < end; ++p) {
      split_plane(d.in + p * in_plane, g, eps, s);
      std::fill(grad.begin(), grad.end(), 0.0f);
      Vec a, a_w;
      std::tie(a, a_w) = plane_alpha<dense>(d.alphas, d.per_channel, p, d.channels);
      Vec grad_alpha(0.0f);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t row_at = p * out_plane + oh * g.out_w;
        load_row(d.gout + row_at, grow.data(), g.out_w, g.out_w_padded, 0.0f);
        load_row(d.lmax + row_at, lrow.data(), g.out_w, g.out_w_padded, kNoWindow);
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          const int64_t origin = g.origin(oh, ow), count = std::min(V, g.out_w - ow);
          if constexpr (dense) std::tie(a, a_w) = output_alphas(d.alphas, row_at + ow, count);
          const Vec lm = Vec::loadu(lrow.data() + ow);
          const Vec grad_y = Vec::loadu(grow.data() + ow);
          Vec terms;
          if (count == V) {
            terms = window_backward<false>(g.taps, s.logs.data() + origin, s.values.data() + origin,
                                           s.recips.data() + origin, grad.data() + origin, weights.data(), lm, grad_y,
                                           a, a_w, Vec());
          } else {
            const Vec live = Vec::set(Vec(0.0f), Vec(1.0f), count) == Vec(1.0f);
            terms = window_backward<true>(g.taps, s.logs.data() + origin, s.values.data() + origin,
                                          s.recips.data() + origin, grad.data() + origin, weights.data(), lm, grad_y,
                                          a, a_w, live);
          }
          collect_grad_alpha<dense>(terms, grad_alpha, d.galpha, row_at + ow, count);
        }
      }
      if constexpr (!dense) d.galpha[p] = lane_sum(grad_alpha);
      // Un-split: input row r sits at padded row r + ph; rows no window reads get 0.
      scalar_t* dst = d.gin + p * in_plane;
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

// `count` channels starting at `src`; lanes past them are 0.
template <typename scalar_t>
inline Vec load_lanes(const scalar_t* src, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return Vec::loadu(src, count);
  } else {
    float lanes[V] = {};
    for (int64_t k = 0; k < count; ++k) lanes[k] = static_cast<float>(src[k]);
    return Vec::loadu(lanes);
  }
}

template <typename scalar_t>
inline void store_lanes(const Vec& v, scalar_t* dst, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    v.store(dst, count);
  } else {
    float lanes[V];
    v.store(lanes);
    for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<scalar_t>(lanes[k]);
  }
}

// ---------------------------------------------------------------------------------------
// Non-overlapping windows (both layouts).
//
// When no two windows share an input and every window lies inside the input (no padding;
// e.g. VGG's 2x2 stride 2), each input's log and reciprocal are needed exactly once, so the
// split buffers, the row ring, the zeroed dL/dx accumulators and the un-split pass only cost
// memory traffic. These kernels read each window's inputs straight from the tensor into a
// small per-window scratch (V lanes per window element, in L1) and backward writes dL/dx
// straight to the output tensor. The window math is the shared code above, so results are
// the same bit for bit as through the general kernels.

inline bool non_overlapping(const Geometry& g) {
  return g.ph == 0 && g.pw == 0 && g.sh >= (g.kh - 1) * g.dh + 1 && g.sw >= (g.kw - 1) * g.dw + 1 &&
         g.rows <= g.height && (g.out_w - 1) * g.sw + (g.kw - 1) * g.dw + 1 <= g.width;
}

// Window element k of V windows at [k * V, (k + 1) * V) of each buffer.
struct WindowScratch {
  std::vector<int64_t> taps;
  std::vector<float> values, logs, recips, grad, weights;

  explicit WindowScratch(int64_t window_size)
      : taps(window_size), values(window_size * V), logs(window_size * V), recips(window_size * V),
        grad(window_size * V), weights(window_size * V) {
    for (int64_t k = 0; k < window_size; ++k) taps[k] = k * V;
  }
  // Element k holds x; its log and, for backward, its reciprocal (0 below eps).
  void set(int64_t k, const Vec& x, const Vec& eps, bool with_recips) {
    x.store(values.data() + k * V);
    log_floored(x, eps).store(logs.data() + k * V);
    if (with_recips) Vec::blendv(Vec(0.0f), reciprocal(x), x >= eps).store(recips.data() + k * V);
  }
};

// Whether input row (or column) r is read by a window, given the windows' size, stride,
// dilation and count along that axis: rows between the windows of a stride larger than the
// window, or past the last window, get dL/dx = 0.
inline bool is_read(int64_t r, int64_t k, int64_t s, int64_t d, int64_t out) {
  const int64_t o = r / s, i = r % s;
  return o < out && i % d == 0 && i / d < k;
}

// NCHW, windows 2 columns wide at stride 2 (dw = 1): the two columns of V windows are one
// deinterleave of 2V consecutive inputs, and dL/dx one interleave back.
inline bool nchw_pairs(const Geometry& g) { return non_overlapping(g) && g.kw == 2 && g.sw == 2 && g.dw == 1; }

template <bool dense, typename scalar_t>
void forward_pairs(const ForwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t planes = d.batch * d.channels;
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t row_size = 2 * g.out_w_padded;  // 2 * out_w <= width: the tail is zeros past the input

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    WindowScratch w(g.kh * 2);
    std::vector<float> rows(g.kh * row_size);
    const Vec veps(eps), log_eps(std::log(eps));
    for (int64_t p = begin; p < end; ++p) {
      Vec a_w = plane_alpha<dense>(d.alphas, d.per_channel, p, d.channels).second;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const scalar_t* src = d.in + p * in_plane + (oh * g.sh + i * g.dh) * g.width;
          load_row(src, rows.data() + i * row_size, std::min(g.width, row_size), row_size, 0.0f);
        }
        const int64_t row_at = p * out_plane + oh * g.out_w;
        scalar_t* out_row = d.out + row_at;
        float* lmax_row = d.lmax + row_at;
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          for (int64_t i = 0; i < g.kh; ++i) {
            const float* src = rows.data() + i * row_size + 2 * ow;
            const auto pair = at::vec::deinterleave2(Vec::loadu(src), Vec::loadu(src + V));
            w.set(2 * i, pair.first, veps, false);
            w.set(2 * i + 1, pair.second, veps, false);
          }
          const int64_t count = std::min(V, g.out_w - ow);
          if constexpr (dense) a_w = output_alphas(d.alphas, row_at + ow, count).second;
          const Vec lm = window_log_max(w.taps, w.logs.data(), log_eps);
          store_lanes(window_output(w.taps, w.logs.data(), w.values.data(), lm, a_w), out_row + ow, count);
          lm.store(lmax_row + ow, count);
        }
      }
    }
  });
}

template <bool dense, typename scalar_t>
void backward_pairs(const BackwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t planes = d.batch * d.channels;
  const int64_t in_plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t row_size = std::max(g.width, 2 * g.out_w_padded);

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    WindowScratch w(g.kh * 2);
    std::vector<float> rows(g.kh * row_size), grad_rows(g.kh * row_size, 0.0f);
    const Vec veps(eps);
    for (int64_t p = begin; p < end; ++p) {
      Vec a, a_w;
      std::tie(a, a_w) = plane_alpha<dense>(d.alphas, d.per_channel, p, d.channels);
      scalar_t* gin = d.gin + p * in_plane;
      Vec grad_alpha(0.0f);
      for (int64_t r = 0; r < g.height; ++r) {
        if (!is_read(r, g.kh, g.sh, g.dh, g.out_h)) std::fill(gin + r * g.width, gin + (r + 1) * g.width, static_cast<scalar_t>(0.0f));
      }
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const scalar_t* src = d.in + p * in_plane + (oh * g.sh + i * g.dh) * g.width;
          load_row(src, rows.data() + i * row_size, g.width, row_size, 0.0f);
        }
        const int64_t row_at = p * out_plane + oh * g.out_w;
        const scalar_t* gout_row = d.gout + row_at;
        const float* lmax_row = d.lmax + row_at;
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          for (int64_t i = 0; i < g.kh; ++i) {
            const float* src = rows.data() + i * row_size + 2 * ow;
            const auto pair = at::vec::deinterleave2(Vec::loadu(src), Vec::loadu(src + V));
            w.set(2 * i, pair.first, veps, true);
            w.set(2 * i + 1, pair.second, veps, true);
          }
          std::fill(w.grad.begin(), w.grad.end(), 0.0f);
          const int64_t count = std::min(V, g.out_w - ow);
          if constexpr (dense) std::tie(a, a_w) = output_alphas(d.alphas, row_at + ow, count);
          const Vec grad_y = load_lanes(gout_row + ow, count);
          Vec terms;
          if (count == V) {
            terms = window_backward<false>(w.taps, w.logs.data(), w.values.data(), w.recips.data(), w.grad.data(),
                                           w.weights.data(), Vec::loadu(lmax_row + ow), grad_y, a, a_w, Vec());
          } else {
            // Lanes past the output width read columns no window covers (or zeros): masked.
            const Vec live = Vec::set(Vec(0.0f), Vec(1.0f), count) == Vec(1.0f);
            const Vec lm = Vec::blendv(Vec(kNoWindow), Vec::loadu(lmax_row + ow, count), live);
            terms = window_backward<true>(w.taps, w.logs.data(), w.values.data(), w.recips.data(), w.grad.data(),
                                          w.weights.data(), lm, grad_y, a, a_w, live);
          }
          collect_grad_alpha<dense>(terms, grad_alpha, d.galpha, row_at + ow, count);
          for (int64_t i = 0; i < g.kh; ++i) {
            const auto pair = at::vec::interleave2(Vec::loadu(w.grad.data() + 2 * i * V),
                                                   Vec::loadu(w.grad.data() + (2 * i + 1) * V));
            float* dst = grad_rows.data() + i * row_size + 2 * ow;
            pair.first.store(dst);
            pair.second.store(dst + V);
          }
        }
        // Columns past the last window (an odd width) get 0.
        for (int64_t i = 0; i < g.kh; ++i) {
          float* grad_row = grad_rows.data() + i * row_size;
          std::fill(grad_row + 2 * g.out_w, grad_row + g.width, 0.0f);
          store_row(grad_row, gin + (oh * g.sh + i * g.dh) * g.width, g.width);
        }
      }
      if constexpr (!dense) d.galpha[p] = lane_sum(grad_alpha);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Channels-last kernels.

// One task: image n, channels [c0, c1) (whole blocks of V but the last). It walks the output
// rows in order and keeps the padded input rows they read in a ring of `slots` row buffers
// [padded column][block][V], each filled once from a contiguous stretch of the input.
struct RowRing {
  int64_t c0, c1, blocks, cols, slots, row_size;
  Buffers s;
  std::vector<float> grad;          // backward: dL/dx accumulated per slot
  std::vector<int64_t> slot_row;    // the padded row each slot holds, -1 for none
  std::vector<int64_t> taps;        // of the current output row: offset of window element k

  RowRing(const Geometry& g, int64_t c0, int64_t c1, bool backward)
      : c0(c0), c1(c1), blocks((c1 - c0 + V - 1) / V),
        cols((g.out_w - 1) * g.sw + (g.kw - 1) * g.dw + 1),
        slots((g.kh - 1) * g.dh + 1),
        row_size(cols * blocks * V),
        s(slots * row_size, backward),
        grad(backward ? slots * row_size : 0),
        slot_row(slots, -1),
        taps(g.kh * g.kw) {}

  int64_t count(int64_t b) const { return std::min(V, c1 - c0 - b * V); }
  // Offset, within a row buffer, of the window of output column ow, block b.
  int64_t origin(const Geometry& g, int64_t ow, int64_t b) const { return (ow * g.sw * blocks + b) * V; }
};

// Converts padded row pr of the NHWC `image` into slot `slot`.
template <typename scalar_t>
void fill_row(const scalar_t* image, const Geometry& g, int64_t channels, float eps, int64_t pr, int64_t slot,
              RowRing& ring) {
  const bool with_recips = !ring.s.recips.empty();
  const Vec veps(eps);
  const int64_t r = pr - g.ph;
  for (int64_t pc = 0; pc < ring.cols; ++pc) {
    const int64_t col = pc - g.pw;
    const bool inside = r >= 0 && r < g.height && col >= 0 && col < g.width;
    const scalar_t* src = inside ? image + (r * g.width + col) * channels + ring.c0 : nullptr;
    for (int64_t b = 0; b < ring.blocks; ++b) {
      const int64_t at = slot * ring.row_size + (pc * ring.blocks + b) * V;
      if (!inside) {
        Vec(0.0f).store(ring.s.values.data() + at);
        Vec(kPad).store(ring.s.logs.data() + at);
        if (with_recips) Vec(0.0f).store(ring.s.recips.data() + at);
        continue;
      }
      const Vec x = load_lanes(src + b * V, ring.count(b));
      x.store(ring.s.values.data() + at);
      log_floored(x, veps).store(ring.s.logs.data() + at);
      if (with_recips) Vec::blendv(Vec(0.0f), reciprocal(x), x >= veps).store(ring.s.recips.data() + at);
    }
  }
  ring.slot_row[slot] = pr;
}

// Writes the gradient accumulated in `slot` to its input row (if it is one) and clears it.
template <typename scalar_t>
void flush_row(const Geometry& g, int64_t channels, int64_t slot, RowRing& ring, scalar_t* grad_image,
               std::vector<bool>& written) {
  const int64_t r = ring.slot_row[slot] - g.ph;
  float* grad = ring.grad.data() + slot * ring.row_size;
  if (r >= 0 && r < g.height) {
    for (int64_t col = 0; col < g.width; ++col) {
      const int64_t pc = col + g.pw;
      scalar_t* dst = grad_image + (r * g.width + col) * channels + ring.c0;
      for (int64_t b = 0; b < ring.blocks; ++b) {
        const Vec v = pc < ring.cols ? Vec::loadu(grad + (pc * ring.blocks + b) * V) : Vec(0.0f);
        store_lanes(v, dst + b * V, ring.count(b));
      }
    }
    written[r] = true;
  }
  std::fill(grad, grad + ring.row_size, 0.0f);
  ring.slot_row[slot] = -1;
}

// Makes the ring hold the rows that output row oh reads (evicting, and in backward flushing,
// rows no later output reads) and sets the taps.
template <typename scalar_t>
void prepare_rows(const scalar_t* image, const Geometry& g, int64_t channels, float eps, int64_t oh, RowRing& ring,
                  scalar_t* grad_image, std::vector<bool>& written) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t pr = oh * g.sh + i * g.dh, slot = pr % ring.slots;
    if (ring.slot_row[slot] != pr) {
      if (grad_image != nullptr && ring.slot_row[slot] >= 0) flush_row(g, channels, slot, ring, grad_image, written);
      fill_row(image, g, channels, eps, pr, slot, ring);
    }
    for (int64_t j = 0; j < g.kw; ++j) ring.taps[i * g.kw + j] = slot * ring.row_size + j * g.dw * ring.blocks * V;
  }
}

// Splits (image, channel block) work into N * groups tasks, enough to keep the threads busy.
inline int64_t channel_groups(int64_t batch, int64_t channels) {
  const int64_t blocks = (channels + V - 1) / V;
  const int64_t wanted = (2 * at::get_num_threads() + batch - 1) / batch;
  return std::max<int64_t>(1, std::min(blocks, wanted));
}

inline std::pair<int64_t, int64_t> group_channels(int64_t group, int64_t groups, int64_t channels) {
  const int64_t blocks = (channels + V - 1) / V;
  return {group * blocks / groups * V, std::min(channels, (group + 1) * blocks / groups * V)};
}

// The flat alphas of channels [c0, c1) per block of V, as given and as used in the weights
// (none for a dense alpha, which the kernels load per pixel and block).
template <bool dense>
inline std::pair<std::vector<Vec>, std::vector<Vec>> channel_alphas(const float* alphas, bool per_channel,
                                                                     int64_t c0, int64_t c1) {
  std::vector<Vec> a, a_w;
  for (int64_t c = c0; c < c1 && !dense; c += V) {
    const auto [given, used] = with_weight_alpha(per_channel ? Vec::loadu(alphas + c, std::min(V, c1 - c))
                                                             : Vec(alphas[0]));
    a.push_back(given);
    a_w.push_back(used);
  }
  return {a, a_w};
}

template <bool dense, typename scalar_t>
void forward_channels_last(const ForwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t groups = channel_groups(d.batch, d.channels);

  at::parallel_for(0, d.batch * groups, 1, [&](int64_t begin, int64_t end) {
    const Vec log_eps(std::log(eps));
    std::vector<bool> unused;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups;
      const auto [c0, c1] = group_channels(task % groups, groups, d.channels);
      RowRing ring(g, c0, c1, /*backward=*/false);
      const scalar_t* image = d.in + n * g.height * g.width * d.channels;
      const auto a_w = channel_alphas<dense>(d.alphas, d.per_channel, c0, c1).second;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        prepare_rows<scalar_t>(image, g, d.channels, eps, oh, ring, nullptr, unused);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          for (int64_t b = 0; b < ring.blocks; ++b) {
            const int64_t origin = ring.origin(g, ow, b);
            const int64_t at = ((n * g.out_h + oh) * g.out_w + ow) * d.channels + c0 + b * V;
            const Vec alpha_w = dense ? output_alphas(d.alphas, at, ring.count(b)).second : a_w[b];
            const float* logs = ring.s.logs.data() + origin;
            const Vec lm = window_log_max(ring.taps, logs, log_eps);
            const Vec y = window_output(ring.taps, logs, ring.s.values.data() + origin, lm, alpha_w);
            store_lanes(y, d.out + at, ring.count(b));
            lm.store(d.lmax + at, ring.count(b));
          }
        }
      }
    }
  });
}

template <bool dense, typename scalar_t>
void backward_channels_last(const BackwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t groups = channel_groups(d.batch, d.channels);

  at::parallel_for(0, d.batch * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> weights(g.kh * g.kw * V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups;
      const auto [c0, c1] = group_channels(task % groups, groups, d.channels);
      RowRing ring(g, c0, c1, /*backward=*/true);
      const scalar_t* image = d.in + n * g.height * g.width * d.channels;
      scalar_t* grad_image = d.gin + n * g.height * g.width * d.channels;
      std::vector<bool> written(g.height, false);
      const auto [a, a_w] = channel_alphas<dense>(d.alphas, d.per_channel, c0, c1);
      std::vector<Vec> grad_alpha(ring.blocks, Vec(0.0f));
      // Lanes past the channels hold x = 0, lm = 0 and dL/dy = 0: they add exactly 0.
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        prepare_rows(image, g, d.channels, eps, oh, ring, grad_image, written);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          for (int64_t b = 0; b < ring.blocks; ++b) {
            const int64_t origin = ring.origin(g, ow, b);
            const int64_t at = ((n * g.out_h + oh) * g.out_w + ow) * d.channels + c0 + b * V;
            const auto [alpha, alpha_w] = dense ? output_alphas(d.alphas, at, ring.count(b)) : std::make_pair(a[b], a_w[b]);
            const Vec terms = window_backward<false>(
                ring.taps, ring.s.logs.data() + origin, ring.s.values.data() + origin,
                ring.s.recips.data() + origin, ring.grad.data() + origin, weights.data(),
                Vec::loadu(d.lmax + at, ring.count(b)), load_lanes(d.gout + at, ring.count(b)), alpha, alpha_w, Vec());
            collect_grad_alpha<dense>(terms, grad_alpha[b], d.galpha, at, ring.count(b));
          }
        }
      }
      for (int64_t slot = 0; slot < ring.slots; ++slot) {
        if (ring.slot_row[slot] >= 0) flush_row(g, d.channels, slot, ring, grad_image, written);
      }
      // Rows that no window reads get 0.
      for (int64_t r = 0; r < g.height; ++r) {
        if (written[r]) continue;
        for (int64_t col = 0; col < g.width; ++col) {
          scalar_t* dst = grad_image + (r * g.width + col) * d.channels;
          std::fill(dst + c0, dst + c1, static_cast<scalar_t>(0.0f));
        }
      }
      for (int64_t b = 0; b < ring.blocks && !dense; ++b) {
        float lanes[V];
        grad_alpha[b].store(lanes);
        std::copy(lanes, lanes + ring.count(b), d.galpha + n * d.channels + c0 + b * V);
      }
    }
  });
}

// Channels-last, non-overlapping windows: element k of a window is V contiguous channels at
// a fixed offset from the window's first pixel, one load each; no row ring.
inline std::vector<int64_t> pixel_offsets(const Geometry& g, int64_t channels) {
  std::vector<int64_t> offsets;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) offsets.push_back((i * g.dh * g.width + j * g.dw) * channels);
  }
  return offsets;
}

template <bool dense, typename scalar_t>
void forward_channels_last_direct(const ForwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t groups = channel_groups(d.batch, d.channels);
  const int64_t channels = d.channels;
  const std::vector<int64_t> offsets = pixel_offsets(g, channels);

  at::parallel_for(0, d.batch * groups, 1, [&](int64_t begin, int64_t end) {
    WindowScratch w(g.kh * g.kw);
    const Vec veps(eps), log_eps(std::log(eps));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups;
      const auto [c0, c1] = group_channels(task % groups, groups, channels);
      const auto a_w = channel_alphas<dense>(d.alphas, d.per_channel, c0, c1).second;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const scalar_t* window = d.in + ((n * g.height + oh * g.sh) * g.width + ow * g.sw) * channels;
          const int64_t at = ((n * g.out_h + oh) * g.out_w + ow) * channels;
          for (int64_t c = c0; c < c1; c += V) {
            const int64_t count = std::min(V, c1 - c);
            for (size_t k = 0; k < offsets.size(); ++k) w.set(k, load_lanes(window + offsets[k] + c, count), veps, false);
            const Vec alpha_w = dense ? output_alphas(d.alphas, at + c, count).second : a_w[(c - c0) / V];
            const Vec lm = window_log_max(w.taps, w.logs.data(), log_eps);
            const Vec y = window_output(w.taps, w.logs.data(), w.values.data(), lm, alpha_w);
            store_lanes(y, d.out + at + c, count);
            lm.store(d.lmax + at + c, count);
          }
        }
      }
    }
  });
}

template <bool dense, typename scalar_t>
void backward_channels_last_direct(const BackwardData<scalar_t>& d, const Geometry& g, float eps) {
  const int64_t groups = channel_groups(d.batch, d.channels);
  const int64_t channels = d.channels;
  const std::vector<int64_t> offsets = pixel_offsets(g, channels);

  at::parallel_for(0, d.batch * groups, 1, [&](int64_t begin, int64_t end) {
    WindowScratch w(g.kh * g.kw);
    const Vec veps(eps);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups;
      const auto [c0, c1] = group_channels(task % groups, groups, channels);
      const auto [a, a_w] = channel_alphas<dense>(d.alphas, d.per_channel, c0, c1);
      std::vector<Vec> grad_alpha((c1 - c0 + V - 1) / V, Vec(0.0f));
      scalar_t* grad_image = d.gin + n * g.height * g.width * channels;
      // Inputs no window reads get 0.
      for (int64_t r = 0; r < g.height; ++r) {
        const bool row_read = is_read(r, g.kh, g.sh, g.dh, g.out_h);
        for (int64_t col = 0; col < g.width; ++col) {
          if (row_read && is_read(col, g.kw, g.sw, g.dw, g.out_w)) continue;
          scalar_t* dst = grad_image + (r * g.width + col) * channels;
          std::fill(dst + c0, dst + c1, static_cast<scalar_t>(0.0f));
        }
      }
      // Lanes past the channels hold x = 0, lm = 0 and dL/dy = 0: they add exactly 0.
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t origin = ((n * g.height + oh * g.sh) * g.width + ow * g.sw) * channels;
          const int64_t at = ((n * g.out_h + oh) * g.out_w + ow) * channels;
          for (int64_t c = c0; c < c1; c += V) {
            const int64_t count = std::min(V, c1 - c), b = (c - c0) / V;
            for (size_t k = 0; k < offsets.size(); ++k) {
              w.set(k, load_lanes(d.in + origin + offsets[k] + c, count), veps, true);
            }
            std::fill(w.grad.begin(), w.grad.end(), 0.0f);
            const auto [alpha, alpha_w] = dense ? output_alphas(d.alphas, at + c, count) : std::make_pair(a[b], a_w[b]);
            const Vec terms = window_backward<false>(
                w.taps, w.logs.data(), w.values.data(), w.recips.data(), w.grad.data(), w.weights.data(),
                Vec::loadu(d.lmax + at + c, count), load_lanes(d.gout + at + c, count), alpha, alpha_w, Vec());
            collect_grad_alpha<dense>(terms, grad_alpha[b], d.galpha, at + c, count);
            for (size_t k = 0; k < offsets.size(); ++k) {
              store_lanes(Vec::loadu(w.grad.data() + k * V), d.gin + origin + offsets[k] + c, count);
            }
          }
        }
      }
      for (int64_t c = c0; c < c1 && !dense; c += V) {
        float lanes[V];
        grad_alpha[(c - c0) / V].store(lanes);
        std::copy(lanes, lanes + std::min(V, c1 - c), d.galpha + n * channels + c);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Entry points.

// NHWC in memory (and not also NCHW-contiguous): the channels-last kernels.
bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat layout_of(const at::Tensor& input) {
  return is_channels_last(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_input(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu() && input.dim() == 4 && (input.is_contiguous() || is_channels_last(input)),
              "p_pool2d_cpu: expected a 4-d CPU input, contiguous or channels-last");
}

// A dense alpha (one value per output) is 4-d; a flat one holds 1 or C values.
bool is_dense(const at::Tensor& alpha) { return alpha.dim() == 4; }

void check_alpha(const at::Tensor& alpha, const at::Tensor& input, const Geometry& g) {
  TORCH_CHECK(alpha.scalar_type() == at::kFloat, "p_pool2d_cpu: expected a float32 alpha");
  if (is_dense(alpha)) {
    const std::vector<int64_t> out_shape{input.size(0), input.size(1), g.out_h, g.out_w};
    TORCH_CHECK(alpha.sizes().vec() == out_shape && alpha.is_contiguous(layout_of(input)),
                "p_pool2d_cpu: expected a dense alpha of the output's shape, in the output's memory layout");
  } else {
    TORCH_CHECK(alpha.is_contiguous() && (alpha.numel() == 1 || alpha.numel() == input.size(1)),
                "p_pool2d_cpu: expected a contiguous alpha with 1 or C values, or a dense one");
  }
}

// Raised as a Python ValueError. Checked once, in forward: one pass over alpha's values (a few
// floats, or one per output for a dense alpha). NaN passes (it makes the outputs it pools NaN).
void check_alpha_sign(const at::Tensor& alpha) {
  const float* a = alpha.data_ptr<float>();
  float lowest = 0.0f;
  for (int64_t k = 0; k < alpha.numel(); ++k) lowest = std::min(lowest, a[k]);
  TORCH_CHECK_VALUE(!(lowest < 0.0f), "Expected `alpha` >= 0 (0 is average pooling, large alpha approaches max ",
                    "pooling), but it holds ", lowest, ". PPool2d keeps its alpha in [0, alpha_max]; clamp a ",
                    "tensor alpha with alpha.clamp_min(0).");
}

// Calls run(std::true_type{}) for a dense alpha and run(std::false_type{}) for a flat one:
// the kernels' `dense` parameter, chosen once per call.
template <typename Run>
void with_alpha_form(const at::Tensor& alpha, Run&& run) {
  if (is_dense(alpha)) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

}  // namespace

std::vector<at::Tensor> p_pool2d_forward(const at::Tensor& input, const at::Tensor& alpha,
                                         std::vector<int64_t> geometry, double eps) {
  check_input(input);
  const Geometry g(geometry, input.size(2), input.size(3));
  check_alpha(alpha, input, g);
  check_alpha_sign(alpha);
  const bool channels_last = is_channels_last(input);
  const auto layout = layout_of(input);
  auto output = at::empty({input.size(0), input.size(1), g.out_h, g.out_w}, input.options().memory_format(layout));
  auto log_max = at::empty({input.size(0), input.size(1), g.out_h, g.out_w},
                           input.options().dtype(at::kFloat).memory_format(layout));
  const float e = static_cast<float>(eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "p_pool2d_cpu_forward", [&] {
    const ForwardData<scalar_t> data(input, alpha, output, log_max);
    with_alpha_form(alpha, [&](auto form) {
      constexpr bool dense = decltype(form)::value;
      if (channels_last) {
        if (non_overlapping(g)) {
          forward_channels_last_direct<dense>(data, g, e);
        } else {
          forward_channels_last<dense>(data, g, e);
        }
      } else if (nchw_pairs(g)) {
        forward_pairs<dense>(data, g, e);
      } else {
        forward_kernel<dense>(data, g, e);
      }
    });
  });
  return {output, log_max};
}

std::vector<at::Tensor> p_pool2d_backward(const at::Tensor& input, const at::Tensor& alpha,
                                          const at::Tensor& log_max, const at::Tensor& grad_output,
                                          std::vector<int64_t> geometry, double eps) {
  check_input(input);
  const Geometry g(geometry, input.size(2), input.size(3));
  check_alpha(alpha, input, g);
  const bool channels_last = is_channels_last(input);
  const auto layout = layout_of(input);
  TORCH_CHECK(grad_output.is_contiguous(layout) && grad_output.scalar_type() == input.scalar_type(),
              "p_pool2d_cpu: expected grad_output in the input's dtype and layout");
  auto grad_input = at::empty_like(input, layout);
  const auto float_options = input.options().dtype(at::kFloat);
  auto grad_alpha = is_dense(alpha)
                        ? at::empty({input.size(0), input.size(1), g.out_h, g.out_w}, float_options.memory_format(layout))
                        : at::empty({input.size(0), input.size(1)}, float_options);
  const at::Tensor lmax = log_max.contiguous(layout);
  const float e = static_cast<float>(eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "p_pool2d_cpu_backward", [&] {
    const BackwardData<scalar_t> data(input, alpha, lmax, grad_output, grad_input, grad_alpha);
    with_alpha_form(alpha, [&](auto form) {
      constexpr bool dense = decltype(form)::value;
      if (channels_last) {
        if (non_overlapping(g)) {
          backward_channels_last_direct<dense>(data, g, e);
        } else {
          backward_channels_last<dense>(data, g, e);
        }
      } else if (nchw_pairs(g)) {
        backward_pairs<dense>(data, g, e);
      } else {
        backward_kernel<dense>(data, g, e);
      }
    });
  });
  return {grad_input, grad_alpha};
}

// How many of torch's intra-op threads at::parallel_for spreads `tasks` one-item tasks over, as
// the kernels above call it. 1 where the extension was built without the threading runtime
// that torch uses (the loop then runs on the calling thread alone).
int64_t worker_threads(int64_t tasks) {
  std::vector<int64_t> thread_of(tasks, -1);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) thread_of[t] = at::get_thread_num();
  });
  std::sort(thread_of.begin(), thread_of.end());
  return std::unique(thread_of.begin(), thread_of.end()) - thread_of.begin();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &p_pool2d_forward, "P-pooling forward: (output, log window max)");
  m.def("backward", &p_pool2d_backward,
        "P-pooling backward: (grad input, dL/dalpha per (n, c) plane, or per output for a dense alpha)");
  m.def("worker_threads", &worker_threads, "Threads that at::parallel_for uses for `tasks` tasks");
}
