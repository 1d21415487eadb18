// Fused CPU P-pooling: forward and analytic backward, one pass over each (n, c) plane.
//
// Layout trick. Each plane is first copied into a "split" buffer whose columns are grouped
// by their phase modulo the horizontal stride: padded column pc = t * sw + q is stored at
// [row][q][t]. Window element (i, j) of outputs ow, ow + 1, ... then lies at consecutive t
// (phase q = (j * dw) % sw, t = ow + (j * dw) / sw), so every window element is one
// contiguous vector load for V outputs at once, for any stride and dilation. The same
// buffer holds the padding (value 0, log -inf) and the tail that rounds the output width up
// to a multiple of V, so the inner loops have no bounds checks.
//
// Numerics (as in lit_ppool.kernels.reference): weights u_i = exp(alpha * (log x~_i - log m)),
// x~ = max(x, eps), m = the window maximum of x~ (at least eps), so u is in (0, 1], the
// maximum weighs 1 and nothing overflows; padded positions weigh 0; NaN propagates.
// Forward saves log m (one float per output) for backward. Backward recomputes the weights
// and accumulates dL/dx into a per-plane buffer window by window in a fixed order
// (deterministic, no atomics), and dL/dalpha per plane.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Geometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t height, width, out_h, out_w;
  int64_t rows;   // padded rows read by some window
  int64_t span;   // entries per (row, phase): the output width rounded up to V plus the largest column offset
  int64_t out_w_padded;

  Geometry(std::vector<int64_t> g, int64_t h, int64_t w) {
    TORCH_CHECK(g.size() == 10, "p_pool2d_cpu: expected 10 geometry values");
    kh = g[0]; kw = g[1]; sh = g[2]; sw = g[3]; ph = g[4]; pw = g[5]; dh = g[6]; dw = g[7];
    out_h = g[8]; out_w = g[9];
    height = h; width = w;
    rows = (out_h - 1) * sh + (kh - 1) * dh + 1;
    out_w_padded = (out_w + V - 1) / V * V;
    span = out_w_padded + ((kw - 1) * dw) / sw;
  }
  int64_t row_stride() const { return sw * span; }
  int64_t split_size() const { return rows * row_stride(); }
  // Offset in the split buffer of window element (i, j) for output (oh, ow).
  int64_t offset(int64_t oh, int64_t ow, int64_t i, int64_t j) const {
    return (oh * sh + i * dh) * row_stride() + ((j * dw) % sw) * span + ow + (j * dw) / sw;
  }
};

// Copies one input plane into the split layout: `values` holds x (0 on padding) and `logs`
// holds log(max(x, eps)) (-inf on padding).
template <typename scalar_t>
void split_plane(const scalar_t* src, const Geometry& g, float eps, float* values, float* logs) {
  const int64_t rs = g.row_stride();
  for (int64_t pr = 0; pr < g.rows; ++pr) {
    const int64_t r = pr - g.ph;
    float* vrow = values + pr * rs;
    float* lrow = logs + pr * rs;
    if (r < 0 || r >= g.height) {
      std::fill(vrow, vrow + rs, 0.0f);
      std::fill(lrow, lrow + rs, kNegInf);
      continue;
    }
    const scalar_t* srow = src + r * g.width;
    for (int64_t q = 0; q < g.sw; ++q) {
      float* vq = vrow + q * g.span;
      float* lq = lrow + q * g.span;
      // Entries t of phase q hold input column t * sw + q - pw: inside [0, width) for t in [lo, hi).
      const int64_t lo = std::min(g.span, std::max<int64_t>(0, (g.pw - q + g.sw - 1) / g.sw));
      const int64_t hi = std::max(lo, std::min(g.span, (g.width + g.pw - q + g.sw - 1) / g.sw));
      std::fill(vq, vq + lo, 0.0f);
      std::fill(lq, lq + lo, kNegInf);
      for (int64_t t = lo; t < hi; ++t) vq[t] = static_cast<float>(srow[t * g.sw + q - g.pw]);
      int64_t t = lo;
      const Vec veps(eps);
      for (; t + V <= hi; t += V) at::vec::maximum(Vec::loadu(vq + t), veps).log().store(lq + t);
      for (; t < hi; ++t) lq[t] = std::isnan(vq[t]) ? vq[t] : std::log(std::max(vq[t], eps));
      std::fill(vq + hi, vq + g.span, 0.0f);
      std::fill(lq + hi, lq + g.span, kNegInf);
    }
  }
}

template <typename scalar_t>
void store_row(const float* src, scalar_t* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<scalar_t>(src[k]);
}

template <typename scalar_t>
void load_row(const scalar_t* src, float* dst, int64_t n, int64_t n_padded) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<float>(src[k]);
  std::fill(dst + n, dst + n_padded, 0.0f);
}

// Window maximum of the logs, at least log(eps); NaN propagates.
inline Vec window_log_max(const Geometry& g, const float* logs, int64_t oh, int64_t ow, const Vec& log_eps) {
  Vec lm(kNegInf);
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      lm = at::vec::maximum(lm, Vec::loadu(logs + g.offset(oh, ow, i, j)));
    }
  }
  return at::vec::maximum(lm, log_eps);
}

// Unnormalised weight exp(alpha * (l - lm)) and the log ratio (l - lm), both 0 on padding.
inline void weight_and_log_ratio(const Vec& l, const Vec& lm, const Vec& alpha, Vec& u, Vec& d) {
  const Vec pad = l == Vec(kNegInf);
  d = Vec::blendv(l - lm, Vec(0.0f), pad);
  u = Vec::blendv((alpha * d).exp(), Vec(0.0f), pad);
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
    std::vector<float> values(g.split_size()), logs(g.split_size()), row(g.out_w_padded);
    const Vec log_eps(std::log(eps));
    for (int64_t p = begin; p < end; ++p) {
      split_plane(in + p * in_plane, g, eps, values.data(), logs.data());
      const Vec a(alphas[per_channel ? p % channels : 0]);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        float* lmax_row = lmax + p * out_plane + oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          const int64_t count = std::min(V, g.out_w - ow);
          const Vec lm = window_log_max(g, logs.data(), oh, ow, log_eps);
          Vec total(0.0f), weighted(0.0f), u, d;
          for (int64_t i = 0; i < g.kh; ++i) {
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t off = g.offset(oh, ow, i, j);
              weight_and_log_ratio(Vec::loadu(logs.data() + off), lm, a, u, d);
              total = total + u;
              weighted = at::vec::fmadd(u, Vec::loadu(values.data() + off), weighted);
            }
          }
          // The maximum weighs 1, so total >= 1 except for a padding-only window (output 0).
          (weighted / at::vec::maximum(total, Vec(1.0f))).store(row.data() + ow);
          lm.store(lmax_row + ow, count);
        }
        store_row(row.data(), out + p * out_plane + oh * g.out_w, g.out_w);
      }
    }
  });
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
  const int64_t window_size = g.kh * g.kw;

  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    const int64_t n = g.split_size();
    std::vector<float> values(n), logs(n), grad(n), weights(window_size * V), grow(g.out_w_padded),
        lrow(g.out_w_padded), in_row(g.width);
    const Vec veps(eps);
    for (int64_t p = begin; p < end; ++p) {
      split_plane(in + p * in_plane, g, eps, values.data(), logs.data());
      std::fill(grad.begin(), grad.end(), 0.0f);
      const Vec a(alphas[per_channel ? p % channels : 0]);
      Vec grad_alpha(0.0f);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        load_row(gout + p * out_plane + oh * g.out_w, grow.data(), g.out_w, g.out_w_padded);
        load_row(lmax + p * out_plane + oh * g.out_w, lrow.data(), g.out_w, g.out_w_padded);
        for (int64_t ow = 0; ow < g.out_w; ow += V) {
          const Vec lm = Vec::loadu(lrow.data() + ow);
          Vec total(0.0f), weighted(0.0f), u, d;
          for (int64_t k = 0; k < window_size; ++k) {
            const int64_t off = g.offset(oh, ow, k / g.kw, k % g.kw);
            weight_and_log_ratio(Vec::loadu(logs.data() + off), lm, a, u, d);
            u.store(weights.data() + k * V);
            total = total + u;
            weighted = at::vec::fmadd(u, Vec::loadu(values.data() + off), weighted);
          }
          const Vec inv_total = Vec(1.0f) / at::vec::maximum(total, Vec(1.0f));
          const Vec y = weighted * inv_total;
          // Lanes past the output width carry no window: their gradient is masked to 0 below.
          const int64_t count = std::min(V, g.out_w - ow);
          const Vec live = Vec::set(Vec(0.0f), Vec(1.0f), count) == Vec(1.0f);
          const Vec grad_scaled = Vec::loadu(grow.data() + ow) * inv_total;  // dL/dy / sum(u)
          for (int64_t k = 0; k < window_size; ++k) {
            const int64_t off = g.offset(oh, ow, k / g.kw, k % g.kw);
            const Vec l = Vec::loadu(logs.data() + off);
            const Vec x = Vec::loadu(values.data() + off);
            d = Vec::blendv(l - lm, Vec(0.0f), l == Vec(kNegInf));
            const Vec grad_w = grad_scaled * Vec::loadu(weights.data() + k * V);  // dL/dy * w_i
            const Vec centred = x - y;
            // dy/dalpha = sum_i w_i log(x~_i / m) (x_i - y); the log(m) part sums to 0.
            grad_alpha = grad_alpha + Vec::blendv(Vec(0.0f), grad_w * d * centred, live);
            // dy/dx_i = w_i (1 + alpha (x_i - y) / x_i); the weight is locally constant below eps.
            const Vec slope = Vec::blendv(Vec(0.0f), a * centred / x, x >= veps);
            const Vec contribution = Vec::blendv(Vec(0.0f), grad_w * (Vec(1.0f) + slope), live);
            (Vec::loadu(grad.data() + off) + contribution).store(grad.data() + off);
          }
        }
      }
      float lanes[V];
      grad_alpha.store(lanes);
      float plane_sum = 0.0f;
      for (int64_t k = 0; k < V; ++k) plane_sum += lanes[k];
      galpha[p] = plane_sum;
      // Un-split: input (r, col) sits at padded row r + ph, column col + pw = t * sw + q; rows
      // and columns that no window reads get 0.
      scalar_t* dst = gin + p * in_plane;
      for (int64_t r = 0; r < g.height; ++r) {
        const int64_t pr = r + g.ph;
        std::fill(in_row.begin(), in_row.end(), 0.0f);
        if (pr < g.rows) {
          const float* src = grad.data() + pr * g.row_stride();
          for (int64_t q = 0; q < g.sw; ++q) {
            for (int64_t t = 0; t < g.span; ++t) {
              const int64_t col = t * g.sw + q - g.pw;
              if (col >= 0 && col < g.width) in_row[col] = src[q * g.span + t];
            }
          }
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
