/* Fused elementwise ops of a decoder layer for CPUs: RMSNorm (with the residual add folded in) and
 * the MLP activations (SiLU, tanh-GELU, exact GELU; gated or not). On CPU each unfused torch op is a pass over
 * memory plus a dispatch of several microseconds; a decode step runs ~10 of them per layer.
 *
 * Built at first use by kernels/cpu_ops.py like the paged-decode kernel (-O3 -march=native, OpenMP).
 * Numerics follow the unfused Hugging Face models: float32 math, and a rounding to the tensor's
 * dtype wherever the unfused model rounds (the residual sum, the normed value before a bf16 weight,
 * the activation before the gate product). Rows may be strided; columns are contiguous.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_simd.h"

#define PARALLEL_MIN_ELEMS 32768 /* below this a thread team costs more than it saves */

/* A row of n values to float32 and back: the only places the dtype matters. */
static inline void load_row(const void *p, long off, int n, int is_bf16, float *dst) {
    int i = 0;
    if (is_bf16) {
        const uint16_t *s = (const uint16_t *)p + off;
#ifdef __AVX512F__
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i))), 16)));
#endif
        for (; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        const float *s = (const float *)p + off;
        for (; i < n; i++) dst[i] = s[i];
    }
}

#ifdef __AVX512F__
static inline __m256i bf16x16(__m512 v) { /* round to nearest even, as f32_to_bf16 (NaN kept NaN) */
    const __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
#endif

static inline void store_row(void *p, long off, int n, int is_bf16, const float *src) {
    int i = 0;
    if (is_bf16) {
        uint16_t *d = (uint16_t *)p + off;
#ifdef __AVX512F__
        for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(d + i), bf16x16(_mm512_loadu_ps(src + i)));
#endif
        for (; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        float *d = (float *)p + off;
        for (; i < n; i++) d[i] = src[i];
    }
}

/* Rounds a float32 row to bf16 and back, in place (a no-op for float32 tensors). */
static inline void round_row(float *v, int n, int is_bf16) {
    if (!is_bf16) return;
    int i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(v + i, _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(bf16x16(_mm512_loadu_ps(v + i))), 16)));
#endif
    for (; i < n; i++) v[i] = bf16_to_f32(f32_to_bf16(v[i]));
}

static inline float sum_squares(const float *v, int n) {
    float ss = 0.f;
    int i = 0;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(v + i);
        acc = _mm512_fmadd_ps(x, x, acc);
    }
    ss = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) ss += v[i] * v[i];
    return ss;
}

#define MAX_COLS 16384 /* per-thread row buffers of 64 KiB; wider rows take the torch path */

/* out = RMSNorm(x [+ residual]) * weight over rows x cols. With a residual, res_out gets the
 * rounded sum and the norm is of that. weight is float32; round_before_weight rounds the normed
 * value to the dtype first (Llama: bf16 weight * bf16 normed) instead of after (Gemma: float32
 * normed * (1 + weight)). Returns 1 when cols exceeds the row buffers. */
int rms_norm(const void *x, long x_stride, const void *residual, long r_stride, void *res_out, void *out,
             const float *weight, int rows, int cols, float eps, int round_before_weight, int is_bf16,
             int threads) {
    if (cols > MAX_COLS) return 1;
#pragma omp parallel for num_threads(threads) if ((long)rows * cols >= PARALLEL_MIN_ELEMS)
    for (int r = 0; r < rows; r++) {
        float v[MAX_COLS], tmp[MAX_COLS];
        load_row(x, (long)r * x_stride, cols, is_bf16, v);
        if (residual) {
            load_row(residual, (long)r * r_stride, cols, is_bf16, tmp);
            for (int i = 0; i < cols; i++) v[i] += tmp[i];
            round_row(v, cols, is_bf16);
            store_row(res_out, (long)r * cols, cols, is_bf16, v);
        }
        const float inv = 1.f / sqrtf(sum_squares(v, cols) / (float)cols + eps);
        for (int i = 0; i < cols; i++) v[i] *= inv;
        if (round_before_weight) round_row(v, cols, is_bf16);
        for (int i = 0; i < cols; i++) v[i] *= weight[i];
        store_row(out, (long)r * cols, cols, is_bf16, v);
    }
    return 0;
}

#ifdef __AVX512F__
#endif

enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU_ERF = 2 };
#define GELU_BETA 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f

/* The activation of a float32 row in place: silu x / (1 + e^-x); tanh-GELU
 * 0.5 x (1 + tanh z), z = b (x + k x^3), computed as x / (1 + e^-2z) (the same function, without
 * the cancellation of 1 + tanh z for very negative x); exact GELU 0.5 x (1 + erf(x / sqrt 2)) with
 * erfc(a) = t exp(-a^2 + poly(t)), t = 1 / (1 + a / 2) (Numerical Recipes' erfcc: relative error
 * < 1.2e-7 everywhere), taken as 0.5 x erfc(|x| / sqrt 2) for negative x: no cancellation. */
static void activate_row(float *v, int n, int act) {
    int i = 0;
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.f);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(v + i);
        __m512 y;
        if (act == ACT_SILU) {
            y = _mm512_div_ps(x, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        } else if (act == ACT_GELU_ERF) {
            const __m512 a = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
            const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.5f), a, one));
            static const float c[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                        -0.18628806f, 0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f};
            __m512 p = _mm512_set1_ps(c[0]);
            for (int k = 1; k < 10; k++) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[k]));
            const __m512 erfc = _mm512_mul_ps(t, exp_avx512(_mm512_fnmadd_ps(a, a, p)));
            const __m512 half_x = _mm512_mul_ps(_mm512_set1_ps(0.5f), x);
            const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
            y = _mm512_mask_mul_ps(_mm512_mul_ps(half_x, _mm512_sub_ps(_mm512_set1_ps(2.f), erfc)), neg, half_x, erfc);
        } else {
            const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
            const __m512 z = _mm512_mul_ps(_mm512_set1_ps(GELU_BETA), _mm512_fmadd_ps(_mm512_set1_ps(GELU_KAPPA), x3, x));
            y = _mm512_div_ps(x, _mm512_add_ps(one, exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.f), z))));
        }
        _mm512_storeu_ps(v + i, y);
    }
#endif
    for (; i < n; i++) {
        const float x = v[i];
        if (act == ACT_GELU_ERF) {
            v[i] = 0.5f * x * erfcf(-x * 0.70710678118654752f); /* 1 + erf(z) = erfc(-z) */
            continue;
        }
        const float t = act == ACT_SILU ? x : 2.f * GELU_BETA * (x + GELU_KAPPA * x * x * x);
        v[i] = x / (1.f + expf(-t));
    }
}

/* out[r] = act(x[r, :d]) * x[r, d:2d] (gated) or act(x[r, :d]); the activation is rounded to the
 * dtype before the product, as the unfused model's two ops do. out is contiguous [rows, d]. */
int act_and_mul(const void *x, long x_stride, void *out, int rows, int d, int act, int gated, int is_bf16,
                int threads) {
    if (d > MAX_COLS) return 1;
#pragma omp parallel for num_threads(threads) if ((long)rows * d >= PARALLEL_MIN_ELEMS)
    for (int r = 0; r < rows; r++) {
        float v[MAX_COLS], up[MAX_COLS];
        load_row(x, (long)r * x_stride, d, is_bf16, v);
        activate_row(v, d, act);
        if (gated) {
            round_row(v, d, is_bf16);
            load_row(x, (long)r * x_stride + d, d, is_bf16, up);
            for (int i = 0; i < d; i++) v[i] *= up[i];
        }
        store_row(out, (long)r * d, d, is_bf16, v);
    }
    return 0;
}
