// Projection of 3D Gaussians to screen-space splats on the CPU, forward and backward, one
// Gaussian at a time (Gaussians in parallel). The maths is that of render/projection.py's
// project_gaussians_torch (the oracle the tests hold this to); written out per Gaussian because
// on the CPU the tensor version spends its time in dozens of small batched operations and their
// autograd records, not in arithmetic.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename T>
struct Camera {
  T W[3][3], t[3];  // world-to-camera rotation and translation
  T fx, fy, cx, cy;
  T lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;  // where the Jacobian's view angle is clamped
  T eps2d;
};

// What the forward computes for one Gaussian, and the backward needs again.
template <typename T>
struct Projection {
  T qn[4], q_norm;     // normalised quaternion (w, x, y, z) and the raw one's norm
  T R[3][3];           // its rotation
  T C[3][3];           // camera covariance W Sigma W^T, Sigma = R S S^T R^T the world one
  T p[3];              // camera-space mean
  T rx_c, ry_c;        // the view angles tx/tz, ty/tz after clamping
  bool x_free, y_free; // whether they were inside the clamp
  T J[2][3];           // the projection's Jacobian at the (clamped) mean
  T c00, c01, c11;     // 2D covariance J C J^T + eps I
  T det_raw, det;      // its determinant, and that clamped at 1e-10
};

template <typename T>
Projection<T> project_one(const Camera<T>& cam, const T* m, const T* q, const T* s) {
  Projection<T> r;
  r.q_norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T inv = T(1) / std::max(r.q_norm, T(1e-12));  // F.normalize's eps
  for (int i = 0; i < 4; ++i) r.qn[i] = q[i] * inv;
  const T w = r.qn[0], x = r.qn[1], y = r.qn[2], z = r.qn[3];
  const T R[3][3] = {{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
                     {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
                     {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}};
  T M[3][3], Sigma[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      r.R[i][j] = R[i][j];
      M[i][j] = R[i][j] * s[j];
    }
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) Sigma[i][j] = M[i][0] * M[j][0] + M[i][1] * M[j][1] + M[i][2] * M[j][2];
  T WS[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      WS[i][j] = cam.W[i][0] * Sigma[0][j] + cam.W[i][1] * Sigma[1][j] + cam.W[i][2] * Sigma[2][j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.C[i][j] = WS[i][0] * cam.W[j][0] + WS[i][1] * cam.W[j][1] + WS[i][2] * cam.W[j][2];
  for (int i = 0; i < 3; ++i) r.p[i] = cam.W[i][0] * m[0] + cam.W[i][1] * m[1] + cam.W[i][2] * m[2] + cam.t[i];
  const T tx = r.p[0], ty = r.p[1], tz = r.p[2];
  const T rx = tx / tz, ry = ty / tz;
  r.rx_c = std::min(std::max(rx, -cam.lim_x_neg), cam.lim_x_pos);
  r.ry_c = std::min(std::max(ry, -cam.lim_y_neg), cam.lim_y_pos);
  // torch.clamp passes the gradient at the bounds themselves
  r.x_free = rx >= -cam.lim_x_neg && rx <= cam.lim_x_pos;
  r.y_free = ry >= -cam.lim_y_neg && ry <= cam.lim_y_pos;
  const T txc = tz * r.rx_c, tyc = tz * r.ry_c;
  r.J[0][0] = cam.fx / tz;
  r.J[0][1] = 0;
  r.J[0][2] = -cam.fx * txc / (tz * tz);
  r.J[1][0] = 0;
  r.J[1][1] = cam.fy / tz;
  r.J[1][2] = -cam.fy * tyc / (tz * tz);
  T JC[2][3];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) JC[i][j] = r.J[i][0] * r.C[0][j] + r.J[i][1] * r.C[1][j] + r.J[i][2] * r.C[2][j];
  r.c00 = JC[0][0] * r.J[0][0] + JC[0][1] * r.J[0][1] + JC[0][2] * r.J[0][2] + cam.eps2d;
  r.c01 = JC[0][0] * r.J[1][0] + JC[0][1] * r.J[1][1] + JC[0][2] * r.J[1][2];
  r.c11 = JC[1][0] * r.J[1][0] + JC[1][1] * r.J[1][1] + JC[1][2] * r.J[1][2] + cam.eps2d;
  r.det_raw = r.c00 * r.c11 - r.c01 * r.c01;
  r.det = std::max(r.det_raw, T(1e-10));
  return r;
}

template <typename T>
Camera<T> camera_from(const at::Tensor& viewmat, const at::Tensor& K, int64_t width, int64_t height, double eps2d) {
  auto v = viewmat.accessor<T, 2>();
  auto k = K.accessor<T, 2>();
  Camera<T> cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.W[i][j] = v[i][j];
    cam.t[i] = v[i][3];
  }
  cam.fx = k[0][0];
  cam.fy = k[1][1];
  cam.cx = k[0][2];
  cam.cy = k[1][2];
  const T tan_fovx = T(0.5) * width / cam.fx, tan_fovy = T(0.5) * height / cam.fy;
  cam.lim_x_pos = (width - cam.cx) / cam.fx + T(0.3) * tan_fovx;
  cam.lim_x_neg = cam.cx / cam.fx + T(0.3) * tan_fovx;
  cam.lim_y_pos = (height - cam.cy) / cam.fy + T(0.3) * tan_fovy;
  cam.lim_y_neg = cam.cy / cam.fy + T(0.3) * tan_fovy;
  cam.eps2d = T(eps2d);
  return cam;
}

}  // namespace

// Returns means2d [N, 2], conics [N, 3], depths [N] and [N, 3] the 2D covariance's diagonal and
// its clamped determinant (for the radii, which the caller derives as the oracle does).
std::vector<at::Tensor> project_forward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                        at::Tensor viewmat, at::Tensor K, int64_t width, int64_t height,
                                        double eps2d) {
  const int64_t n = means.size(0);
  auto means2d = at::empty({n, 2}, means.options());
  auto conics = at::empty({n, 3}, means.options());
  auto depths = at::empty({n}, means.options());
  auto extra = at::empty({n, 3}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    const Camera<scalar_t> cam = camera_from<scalar_t>(viewmat, K, width, height, eps2d);
    const scalar_t* m = means.data_ptr<scalar_t>();
    const scalar_t* q = quats.data_ptr<scalar_t>();
    const scalar_t* s = scales.data_ptr<scalar_t>();
    scalar_t* out_m = means2d.data_ptr<scalar_t>();
    scalar_t* out_c = conics.data_ptr<scalar_t>();
    scalar_t* out_z = depths.data_ptr<scalar_t>();
    scalar_t* out_e = extra.data_ptr<scalar_t>();
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const Projection<scalar_t> r = project_one(cam, m + 3 * g, q + 4 * g, s + 3 * g);
        const scalar_t tz = r.p[2];
        out_m[2 * g] = cam.fx * r.p[0] / tz + cam.cx;
        out_m[2 * g + 1] = cam.fy * r.p[1] / tz + cam.cy;
        out_c[3 * g] = r.c11 / r.det;
        out_c[3 * g + 1] = -r.c01 / r.det;
        out_c[3 * g + 2] = r.c00 / r.det;
        out_z[g] = tz;
        out_e[3 * g] = r.c00;
        out_e[3 * g + 1] = r.c11;
        out_e[3 * g + 2] = r.det;
      }
    });
  });
  return {means2d, conics, depths, extra};
}

// Gradients with respect to means [N, 3], quats [N, 4] and scales [N, 3], given those of means2d,
// conics and depths. Gaussians whose incoming gradients are all zero (culled, or not seen) get
// zero without the chain rule (where the oracle's autograd would multiply 0 by 1/tz).
std::vector<at::Tensor> project_backward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                         at::Tensor viewmat, at::Tensor K, int64_t width, int64_t height,
                                         double eps2d, at::Tensor grad_means2d, at::Tensor grad_conics,
                                         at::Tensor grad_depths) {
  const int64_t n = means.size(0);
  auto grad_means = at::zeros_like(means);
  auto grad_quats = at::zeros_like(quats);
  auto grad_scales = at::zeros_like(scales);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    using T = scalar_t;
    const Camera<T> cam = camera_from<T>(viewmat, K, width, height, eps2d);
    const T* m = means.data_ptr<T>();
    const T* q = quats.data_ptr<T>();
    const T* s = scales.data_ptr<T>();
    const T* gm2 = grad_means2d.data_ptr<T>();
    const T* gcon = grad_conics.data_ptr<T>();
    const T* gdep = grad_depths.data_ptr<T>();
    T* out_m = grad_means.data_ptr<T>();
    T* out_q = grad_quats.data_ptr<T>();
    T* out_s = grad_scales.data_ptr<T>();
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const T gu = gm2[2 * g], gv = gm2[2 * g + 1];
        const T ga = gcon[3 * g], gb = gcon[3 * g + 1], gc = gcon[3 * g + 2], gz = gdep[g];
        if (gu == 0 && gv == 0 && ga == 0 && gb == 0 && gc == 0 && gz == 0) continue;
        const Projection<T> r = project_one(cam, m + 3 * g, q + 4 * g, s + 3 * g);
        const T tx = r.p[0], ty = r.p[1], tz = r.p[2];
        // conic = (c11, -c01, c00) / det, det = max(c00 c11 - c01^2, 1e-10)
        const T D = r.det, D2 = D * D;
        const T g_det = r.det_raw >= T(1e-10) ? (-ga * r.c11 + gb * r.c01 - gc * r.c00) / D2 : T(0);
        const T g00 = gc / D + g_det * r.c11;
        const T g11 = ga / D + g_det * r.c00;
        const T g01 = -gb / D - 2 * g_det * r.c01;  // the off-diagonal counted once, as a symmetric pair
        // as a symmetric matrix G: dL = tr(G dA) for A = J C J^T + eps I
        const T G[2][2] = {{g00, g01 / 2}, {g01 / 2, g11}};
        // dL/dC = J^T G J
        T GJ[2][3];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 3; ++j) GJ[i][j] = G[i][0] * r.J[0][j] + G[i][1] * r.J[1][j];
        T gC[3][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) gC[i][j] = r.J[0][i] * GJ[0][j] + r.J[1][i] * GJ[1][j];
        // dL/dJ = 2 G J C (G and C symmetric)
        T gJ[2][3];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 3; ++j)
            gJ[i][j] = 2 * (GJ[i][0] * r.C[0][j] + GJ[i][1] * r.C[1][j] + GJ[i][2] * r.C[2][j]);
        // J00 = fx/tz, J11 = fy/tz, J02 = -fx txc/tz^2, J12 = -fy tyc/tz^2 with txc = tz * clamp(tx/tz):
        // d txc/d tx = 1 inside the clamp (0 outside), d txc/d tz = clamp(tx/tz) - (tx/tz inside the clamp)
        const T tz2 = tz * tz, tz3 = tz2 * tz;
        const T txc = tz * r.rx_c, tyc = tz * r.ry_c;
        const T dtxc_dtx = r.x_free ? T(1) : T(0), dtyc_dty = r.y_free ? T(1) : T(0);
        const T dtxc_dtz = r.rx_c - (r.x_free ? tx / tz : T(0)), dtyc_dtz = r.ry_c - (r.y_free ? ty / tz : T(0));
        T g_tx = gJ[0][2] * (-cam.fx / tz2) * dtxc_dtx;
        T g_ty = gJ[1][2] * (-cam.fy / tz2) * dtyc_dty;
        T g_tz = gJ[0][0] * (-cam.fx / tz2) + gJ[1][1] * (-cam.fy / tz2)
                 + gJ[0][2] * (-cam.fx) * (dtxc_dtz / tz2 - 2 * txc / tz3)
                 + gJ[1][2] * (-cam.fy) * (dtyc_dtz / tz2 - 2 * tyc / tz3);
        // means2d = (fx tx/tz + cx, fy ty/tz + cy); depth = tz
        g_tx += gu * cam.fx / tz;
        g_ty += gv * cam.fy / tz;
        g_tz += -gu * cam.fx * tx / tz2 - gv * cam.fy * ty / tz2 + gz;
        // p = W m + t
        const T gp[3] = {g_tx, g_ty, g_tz};
        for (int j = 0; j < 3; ++j)
          out_m[3 * g + j] = cam.W[0][j] * gp[0] + cam.W[1][j] * gp[1] + cam.W[2][j] * gp[2];
        // C = W Sigma W^T: dL/dSigma = W^T gC W
        T gCW[3][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) gCW[i][j] = gC[i][0] * cam.W[0][j] + gC[i][1] * cam.W[1][j] + gC[i][2] * cam.W[2][j];
        T gS[3][3];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) gS[i][j] = cam.W[0][i] * gCW[0][j] + cam.W[1][i] * gCW[1][j] + cam.W[2][i] * gCW[2][j];
        // Sigma = M M^T with M = R diag(s): dL/dM = (gS + gS^T) M
        T gR[3][3];
        T g_s[3] = {0, 0, 0};
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) {
            T gM = 0;
            for (int k = 0; k < 3; ++k) gM += (gS[i][k] + gS[k][i]) * r.R[k][j] * s[3 * g + j];
            gR[i][j] = gM * s[3 * g + j];
            g_s[j] += gM * r.R[i][j];
          }
        for (int j = 0; j < 3; ++j) out_s[3 * g + j] = g_s[j];
        // R(w, x, y, z) of the normalised quaternion
        const T w = r.qn[0], x = r.qn[1], y = r.qn[2], z = r.qn[3];
        const T gw = 2 * (-z * gR[0][1] + y * gR[0][2] + z * gR[1][0] - x * gR[1][2] - y * gR[2][0] + x * gR[2][1]);
        const T gx = 2 * (y * gR[0][1] + z * gR[0][2] + y * gR[1][0] - 2 * x * gR[1][1] - w * gR[1][2] + z * gR[2][0]
                          + w * gR[2][1] - 2 * x * gR[2][2]);
        const T gy = 2 * (-2 * y * gR[0][0] + x * gR[0][1] + w * gR[0][2] + x * gR[1][0] + z * gR[1][2] - w * gR[2][0]
                          + z * gR[2][1] - 2 * y * gR[2][2]);
        const T gzq = 2 * (-2 * z * gR[0][0] - w * gR[0][1] + x * gR[0][2] + w * gR[1][0] - 2 * z * gR[1][1]
                           + y * gR[1][2] + x * gR[2][0] + y * gR[2][1]);
        // normalisation q / max(|q|, eps): the gradient's component along q drops out
        const T gqn[4] = {gw, gx, gy, gzq};
        if (r.q_norm > T(1e-12)) {
          const T along = gqn[0] * r.qn[0] + gqn[1] * r.qn[1] + gqn[2] * r.qn[2] + gqn[3] * r.qn[3];
          for (int i = 0; i < 4; ++i) out_q[4 * g + i] = (gqn[i] - r.qn[i] * along) / r.q_norm;
        } else {
          for (int i = 0; i < 4; ++i) out_q[4 * g + i] = gqn[i] / T(1e-12);
        }
      }
    });
  });
  return {grad_means, grad_quats, grad_scales};
}

namespace {

constexpr double kC0 = 0.28209479177387814, kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                           0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                           -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

// The real SH basis at a unit direction (x, y, z), the first (degree + 1)^2 functions (as in
// render/projection.py's sh_basis), and with `jac` its derivatives d b_k / d(x, y, z).
template <typename T>
void sh_basis_at(T x, T y, T z, int degree, T* b, T (*jac)[3]) {
  const T xx = x * x, yy = y * y, zz = z * z;
  b[0] = T(kC0);
  if (jac) jac[0][0] = jac[0][1] = jac[0][2] = 0;
  if (degree < 1) return;
  b[1] = -T(kC1) * y; b[2] = T(kC1) * z; b[3] = -T(kC1) * x;
  if (degree >= 2) {
    b[4] = T(kC2[0]) * x * y; b[5] = T(kC2[1]) * y * z; b[6] = T(kC2[2]) * (2 * zz - xx - yy);
    b[7] = T(kC2[3]) * x * z; b[8] = T(kC2[4]) * (xx - yy);
  }
  if (degree >= 3) {
    b[9] = T(kC3[0]) * y * (3 * xx - yy); b[10] = T(kC3[1]) * x * y * z; b[11] = T(kC3[2]) * y * (4 * zz - xx - yy);
    b[12] = T(kC3[3]) * z * (2 * zz - 3 * xx - 3 * yy); b[13] = T(kC3[4]) * x * (4 * zz - xx - yy);
    b[14] = T(kC3[5]) * z * (xx - yy); b[15] = T(kC3[6]) * x * (xx - 3 * yy);
  }
  if (!jac) return;
  const T d1[3][3] = {{0, -T(kC1), 0}, {0, 0, T(kC1)}, {-T(kC1), 0, 0}};
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < 3; ++i) jac[1 + k][i] = d1[k][i];
  if (degree >= 2) {
    const T d2[5][3] = {{T(kC2[0]) * y, T(kC2[0]) * x, 0},
                        {0, T(kC2[1]) * z, T(kC2[1]) * y},
                        {-2 * T(kC2[2]) * x, -2 * T(kC2[2]) * y, 4 * T(kC2[2]) * z},
                        {T(kC2[3]) * z, 0, T(kC2[3]) * x},
                        {2 * T(kC2[4]) * x, -2 * T(kC2[4]) * y, 0}};
    for (int k = 0; k < 5; ++k)
      for (int i = 0; i < 3; ++i) jac[4 + k][i] = d2[k][i];
  }
  if (degree >= 3) {
    const T d3[7][3] = {{T(kC3[0]) * 6 * x * y, T(kC3[0]) * (3 * xx - 3 * yy), 0},
                        {T(kC3[1]) * y * z, T(kC3[1]) * x * z, T(kC3[1]) * x * y},
                        {T(kC3[2]) * -2 * x * y, T(kC3[2]) * (4 * zz - xx - 3 * yy), T(kC3[2]) * 8 * y * z},
                        {T(kC3[3]) * -6 * x * z, T(kC3[3]) * -6 * y * z, T(kC3[3]) * (6 * zz - 3 * xx - 3 * yy)},
                        {T(kC3[4]) * (4 * zz - 3 * xx - yy), T(kC3[4]) * -2 * x * y, T(kC3[4]) * 8 * x * z},
                        {T(kC3[5]) * 2 * x * z, T(kC3[5]) * -2 * y * z, T(kC3[5]) * (xx - yy)},
                        {T(kC3[6]) * (3 * xx - 3 * yy), T(kC3[6]) * -6 * x * y, 0}};
    for (int k = 0; k < 7; ++k)
      for (int i = 0; i < 3; ++i) jac[9 + k][i] = d3[k][i];
  }
}

// The unit direction of d as F.normalize gives it (d / max(|d|, 1e-12)), and |d|.
template <typename T>
void unit(const T* d, T* u, T& norm) {
  norm = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const T inv = T(1) / std::max(norm, T(1e-12));
  for (int i = 0; i < 3; ++i) u[i] = d[i] * inv;
}

}  // namespace

// Spherical-harmonics colour before the offset and clamp, per Gaussian: rgb[n, c] =
// sum_k b_k(dirs[n] / |dirs[n]|) coeffs[n, k, c] over the first (degree + 1)^2 coefficients of
// [N, K, 3]. One pass per Gaussian, where the tensor version spends its time in some sixty small
// elementwise operations (basis and its autograd) and a batched product of N tiny matrices.
at::Tensor sh_colour_forward(at::Tensor dirs, at::Tensor coeffs, int64_t degree) {
  const int64_t n = dirs.size(0), k_all = coeffs.size(1), c = coeffs.size(2), used = (degree + 1) * (degree + 1);
  auto out = at::empty({n, c}, dirs.options());
  AT_DISPATCH_FLOATING_TYPES(dirs.scalar_type(), "sh_colour_forward", [&] {
    const scalar_t* d = dirs.data_ptr<scalar_t>();
    const scalar_t* co = coeffs.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        scalar_t u[3], norm, b[16];
        unit(d + 3 * g, u, norm);
        sh_basis_at<scalar_t>(u[0], u[1], u[2], int(degree), b, nullptr);
        for (int64_t ch = 0; ch < c; ++ch) {
          scalar_t sum = 0;
          for (int64_t i = 0; i < used; ++i) sum += b[i] * co[(g * k_all + i) * c + ch];
          o[g * c + ch] = sum;
        }
      }
    });
  });
  return out;
}

// Gradients of sh_colour_forward with respect to dirs [N, 3] and coeffs [N, K, 3] (0 beyond the
// first (degree + 1)^2), given that of its output [N, 3].
std::vector<at::Tensor> sh_colour_backward(at::Tensor dirs, at::Tensor coeffs, int64_t degree,
                                           at::Tensor grad) {
  const int64_t n = dirs.size(0), k_all = coeffs.size(1), c = coeffs.size(2), used = (degree + 1) * (degree + 1);
  auto grad_dirs = at::zeros_like(dirs);
  auto grad_coeffs = at::zeros_like(coeffs);
  AT_DISPATCH_FLOATING_TYPES(dirs.scalar_type(), "sh_colour_backward", [&] {
    const scalar_t* d = dirs.data_ptr<scalar_t>();
    const scalar_t* co = coeffs.data_ptr<scalar_t>();
    const scalar_t* gr = grad.data_ptr<scalar_t>();
    scalar_t* gd = grad_dirs.data_ptr<scalar_t>();
    scalar_t* gc = grad_coeffs.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        scalar_t u[3], norm, b[16], jac[16][3];
        unit(d + 3 * g, u, norm);
        sh_basis_at<scalar_t>(u[0], u[1], u[2], int(degree), b, jac);
        scalar_t gu[3] = {0, 0, 0};
        for (int64_t i = 0; i < used; ++i) {
          scalar_t g_b = 0;
          for (int64_t ch = 0; ch < c; ++ch) {
            g_b += gr[g * c + ch] * co[(g * k_all + i) * c + ch];
            gc[(g * k_all + i) * c + ch] = b[i] * gr[g * c + ch];
          }
          for (int j = 0; j < 3; ++j) gu[j] += g_b * jac[i][j];
        }
        if (degree == 0) continue;  // the constant term does not see the direction
        // through the normalisation: the component along u drops out
        if (norm > scalar_t(1e-12)) {
          const scalar_t along = gu[0] * u[0] + gu[1] * u[1] + gu[2] * u[2];
          for (int j = 0; j < 3; ++j) gd[3 * g + j] = (gu[j] - u[j] * along) / norm;
        } else {
          for (int j = 0; j < 3; ++j) gd[3 * g + j] = gu[j] / scalar_t(1e-12);
        }
      }
    });
  });
  return {grad_dirs, grad_coeffs};
}
