/* Fused elementwise ops of a decoder layer for CPUs: RMSNorm (with the residual add folded in),
 * LayerNorm, the MLP activations (SiLU, tanh-GELU, exact GELU; gated or not) and rotary embeddings. On CPU each unfused torch op is a pass over
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

static inline __m512 widen_bf16(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }
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

/* v += row, rounded to the dtype as a torch add of two such tensors rounds (one pass; tmp: scratch). */
static inline void add_row(float *v, const void *p, long off, int n, int is_bf16, float *tmp) {
    int i = 0;
#ifdef __AVX512F__
    if (is_bf16) {
        const uint16_t *s = (const uint16_t *)p + off;
        for (; i + 16 <= n; i += 16) {
            const __m512 sum = _mm512_add_ps(_mm512_loadu_ps(v + i), widen_bf16(_mm256_loadu_si256((const __m256i *)(s + i))));
            _mm512_storeu_ps(v + i, widen_bf16(bf16x16(sum)));
        }
    }
#endif
    if (i == n) return;
    load_row(p, off + i, n - i, is_bf16, tmp);
    for (int j = 0; j < n - i; j++) v[i + j] += tmp[j];
    round_row(v + i, n - i, is_bf16);
}

/* Sums of a row (of its squares, of its squared distances from c): four accumulators, so the
 * adds do not wait on each other (with those and the one-pass output below, a LayerNorm of 512 rows
 * of 576 went from 76 to 50 us on 2 threads). */
static inline float sum_row(const float *v, int n) {
    float sum = 0.f;
    int i = 0;
#ifdef __AVX512F__
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++) acc[j] = _mm512_add_ps(acc[j], _mm512_loadu_ps(v + i + 16 * j));
    for (; i + 16 <= n; i += 16) acc[0] = _mm512_add_ps(acc[0], _mm512_loadu_ps(v + i));
    sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#endif
    for (; i < n; i++) sum += v[i];
    return sum;
}

static inline float sum_sq_dist(const float *v, int n, float c) {
    float ss = 0.f;
    int i = 0;
#ifdef __AVX512F__
    const __m512 vc = _mm512_set1_ps(c);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(v + i + 16 * j), vc);
            acc[j] = _mm512_fmadd_ps(d, d, acc[j]);
        }
    for (; i + 16 <= n; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(v + i), vc);
        acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
    }
    ss = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#endif
    for (; i < n; i++) ss += (v[i] - c) * (v[i] - c);
    return ss;
}

static inline float sum_squares(const float *v, int n) { return sum_sq_dist(v, n, 0.f); }

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
            add_row(v, residual, (long)r * r_stride, cols, is_bf16, tmp);
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

/* dst = (v - mean) * rstd [* weight] [+ bias], stored to row off of out in its dtype. */
static inline void norm_row_out(const float *v, float mean, float rstd, const float *weight, const float *bias,
                                float *dst, void *out, long off, int cols, int is_bf16) {
    if (weight && bias) /* one pass: the compiler vectorizes each form */
        for (int i = 0; i < cols; i++) dst[i] = (v[i] - mean) * rstd * weight[i] + bias[i];
    else if (weight)
        for (int i = 0; i < cols; i++) dst[i] = (v[i] - mean) * rstd * weight[i];
    else
        for (int i = 0; i < cols; i++) dst[i] = (v[i] - mean) * rstd + (bias ? bias[i] : 0.f);
    store_row(out, off, cols, is_bf16, dst);
}

/* out = LayerNorm(s) [* weight] [+ bias] over rows x cols, float32 math and one rounding at the
 * end, as torch's CPU kernel: y = (s - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps),
 * var the biased variance (two passes over the row in float32). weight/bias are float32 or NULL.
 * s is x, or with add1 (and add2) the residual stream sum ((x + add1) + add2), rounded to the dtype
 * after each add as torch's adds are and written to sum_out: a parallel-residual block's
 * attn + mlp + hidden folded into the next norm instead of two more passes over memory.
 * out2 (or NULL) gets a second norm of the same s with weight2/bias2 (GPT-NeoX's two norms of
 * one input): the same mean and rstd, one more output pass. */
int layer_norm(const void *x, long x_stride, const void *add1, long a1_stride, const void *add2, long a2_stride,
               void *sum_out, void *out, const float *weight, const float *bias, void *out2, const float *weight2,
               const float *bias2, int rows, int cols, float eps, int is_bf16, int threads) {
    if (cols > MAX_COLS) return 1;
#pragma omp parallel for num_threads(threads) if ((long)rows * cols >= PARALLEL_MIN_ELEMS)
    for (int r = 0; r < rows; r++) {
        float v[MAX_COLS], tmp[MAX_COLS];
        load_row(x, (long)r * x_stride, cols, is_bf16, v);
        if (add1) add_row(v, add1, (long)r * a1_stride, cols, is_bf16, tmp);
        if (add2) add_row(v, add2, (long)r * a2_stride, cols, is_bf16, tmp);
        if (add1) store_row(sum_out, (long)r * cols, cols, is_bf16, v);
        const float mean = sum_row(v, cols) / (float)cols;
        const float rstd = 1.f / sqrtf(sum_sq_dist(v, cols, mean) / (float)cols + eps);
        norm_row_out(v, mean, rstd, weight, bias, tmp, out, (long)r * cols, cols, is_bf16);
        if (out2) norm_row_out(v, mean, rstd, weight2, bias2, tmp, out2, (long)r * cols, cols, is_bf16);
    }
    return 0;
}

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
            /* erfc is below float's normal range from a ~ 9.2 on (|x| ~ 13); a subnormal operand costs a
             * microcode assist per lane (a row of such values took 9.5x as long), so erfc is 0 past
             * a = 9.3, where the exact GELU of a negative x is itself below the normal range, and the
             * negative branch multiplies 0.5 x t first so that nothing subnormal is formed before. */
            const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(9.3f), _CMP_LE_OQ),
                                                 exp_avx512(_mm512_fnmadd_ps(a, a, p)));
            const __m512 half_x = _mm512_mul_ps(_mm512_set1_ps(0.5f), x);
            const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
            y = _mm512_mask_mul_ps(_mm512_mul_ps(half_x, _mm512_fnmadd_ps(t, e, _mm512_set1_ps(2.f))), neg,
                                   _mm512_mul_ps(half_x, t), e);
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

/* Rotary embedding: a float rounded as the tensor's dtype rounds it. */
static inline float rounded(float v, int is_bf16) { return is_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

/* Pair i of a head: (i, i + half) in the NeoX layout (rotate_half), (2i, 2i+1) in GPT-J's. The
 * products and the sum are each rounded, as the unfused model's x * cos + rotate(x) * sin in the
 * tensor's dtype; fp-contract off keeps the float32 products unfused from the sum as well. */
__attribute__((optimize("fp-contract=off")))
static void rotate_pairs(void *x, long off, int half, int neox, const void *cos, const void *sin,
                         long cs_off, int is_bf16) {
    for (int i = 0; i < half; i++) {
        const long a = off + (neox ? i : 2 * i), b = off + (neox ? i + half : 2 * i + 1);
        const float x1 = load_scalar(x, a, is_bf16), x2 = load_scalar(x, b, is_bf16);
        const float c = load_scalar(cos, cs_off + i, is_bf16), s = load_scalar(sin, cs_off + i, is_bf16);
        store_scalar(x, a, rounded(rounded(x1 * c, is_bf16) - rounded(x2 * s, is_bf16), is_bf16), is_bf16);
        store_scalar(x, b, rounded(rounded(x2 * c, is_bf16) + rounded(x1 * s, is_bf16), is_bf16), is_bf16);
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ROTARY_AVX512 1
static inline __m512 round_bf16(__m512 v) { return widen_bf16(bf16x16(v)); }

/* All pairs of one bf16 head, 16 at a time (masked tail): NeoX halves are two runs of 16 values;
 * GPT-J's interleaved pairs are one 32-bit lane each, x1 in the low half and x2 in the high one. */
static void rotate_pairs_bf16(uint16_t *x, int half, int neox, const uint16_t *cos, const uint16_t *sin) {
    for (int i = 0; i < half; i += 16) {
        const __mmask16 m = half - i >= 16 ? 0xffff : (__mmask16)((1u << (half - i)) - 1);
        const __m512 c = widen_bf16(_mm256_maskz_loadu_epi16(m, cos + i));
        const __m512 s = widen_bf16(_mm256_maskz_loadu_epi16(m, sin + i));
        __m512 x1, x2;
        if (neox) {
            x1 = widen_bf16(_mm256_maskz_loadu_epi16(m, x + i));
            x2 = widen_bf16(_mm256_maskz_loadu_epi16(m, x + i + half));
        } else {
            const __m512i pairs = _mm512_maskz_loadu_epi32(m, x + 2 * i);
            x1 = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
            x2 = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32((int)0xffff0000u)));
        }
        const __m512 o1 = _mm512_sub_ps(round_bf16(_mm512_mul_ps(x1, c)), round_bf16(_mm512_mul_ps(x2, s)));
        const __m512 o2 = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, c)), round_bf16(_mm512_mul_ps(x1, s)));
        if (neox) {
            _mm256_mask_storeu_epi16(x + i, m, bf16x16(o1));
            _mm256_mask_storeu_epi16(x + i + half, m, bf16x16(o2));
        } else {
            const __m512i lo = _mm512_cvtepu16_epi32(bf16x16(o1)), hi = _mm512_cvtepu16_epi32(bf16x16(o2));
            _mm512_mask_storeu_epi32(x + 2 * i, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}
#endif

/* Rotates the first 2 * half dims of every head of x [rows, heads, head_dim] in place (rows
 * `x_stride` elements apart, heads contiguous in a row) by the angles of each row's position:
 * cos/sin are [max_position, half] tables in x's dtype. Returns 2 when a position is out of the
 * table (the caller's torch path raises the indexing error), 1 when 2 * half exceeds head_dim. */
int rotary_embedding(void *x, long x_stride, int rows, int heads, int head_dim, const int64_t *positions,
                     const void *cos, const void *sin, long max_position, int half, int neox, int is_bf16,
                     int threads) {
    if (2 * half > head_dim) return 1;
    for (int r = 0; r < rows; r++)
        if (positions[r] < 0 || positions[r] >= max_position) return 2;
#pragma omp parallel for num_threads(threads) if ((long)rows * heads * half >= PARALLEL_MIN_ELEMS)
    for (int r = 0; r < rows; r++) {
        const long cs_off = positions[r] * half;
        for (int h = 0; h < heads; h++) {
            const long off = (long)r * x_stride + (long)h * head_dim;
#ifdef ROTARY_AVX512
            if (is_bf16) {
                rotate_pairs_bf16((uint16_t *)x + off, half, neox, (const uint16_t *)cos + cs_off,
                                  (const uint16_t *)sin + cs_off);
                continue;
            }
#endif
            rotate_pairs(x, off, half, neox, cos, sin, cs_off, is_bf16);
        }
    }
    return 0;
}
