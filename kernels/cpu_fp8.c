/* fp8 (float8 e4m3fn) weights on CPU, w8a16: multiply float32 activations by weights stored one byte
 * each with one float32 scale per output row (core/quantization/fp8_weight.py), without holding a dense
 * copy (issue 22).
 *
 * A weight row n (an output feature) is k e4m3fn bytes: sign bit 7, exponent bits 6..3 (bias 7),
 * mantissa bits 2..0; exponent 0 is subnormal (m * 2^-9). The weight is
 *     w[n, c] = e4m3(codes[n, c]) * scales[n]
 * rounded once to float32 (e4m3 values are exact in float32), the value a dense float32 checkpoint of
 * the dequantized weights holds; products differ from a float32 matmul of those weights only in
 * summation order. No table and no subnormal float arithmetic is involved, so flush-to-zero modes
 * cannot change a value. The NaN code (0x7f/0xff) is never written by
 * the quantizer (it clamps to +-448) and decodes as 480.
 *
 * The row is dequantized into a float32 buffer that stays in L1 and dotted with every activation row
 * (cpu_dot.h), so one call reads the 1-byte weights once whatever the row count; for one activation
 * row (decode) the weights are decoded in registers and never stored, in the same accumulation order,
 * so each (row, output) dot gives the same bits whatever the batch. With AVX2+F16C a byte becomes the
 * float16 of its value * 2^-8 by two shifts (e4m3 and fp16 share the field layout one bit apart) and
 * F16C converts 8 at a time; the scale carries the 2^8 back (exact). Built at first use by
 * kernels/cpu_fp8.py (-O3 -march=native, OpenMP); plain C elsewhere.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cpu_dot.h"
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FP8_AVX2 1
#endif

/* weights x rows below which one thread runs the call (a decode step's layer products), as cpu_w4a16.c */
#define PARALLEL_MIN_WORK (1L << 23)
#define PARALLEL_MIN_DEQUANT (1L << 20)

static inline float e4m3_to_f32(uint8_t b) {
    union { uint32_t u; float f; } c;
    const uint32_t sign = (uint32_t)(b & 0x80) << 24;
    if ((b & 0x78) == 0) { /* subnormal (and zero): m * 2^-9, exact */
        c.f = (float)(b & 7) * 0x1p-9f;
        c.u |= sign;
    } else { /* rebias the exponent from 7 to 127: add (127 - 7) << 23 */
        c.u = (((uint32_t)(b & 0x7f) << 20) + 0x3C000000u) | sign;
    }
    return c.f;
}

#ifdef FP8_AVX2
/* e4m3 bytes (zero-extended to 16-bit lanes) -> float16 bit patterns of value * 2^-8: the same fields one
 * position up (exponent bias 15 instead of 7, so every e4m3 value, subnormals included, is an fp16 value
 * 2^8 smaller); F16C converts those exactly, subnormal halves included, whatever the MXCSR modes. */
static inline __m256i e4m3_to_f16_bits(__m256i v) {
    return _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(v, 7), _mm256_set1_epi16(0x3F80)),
                           _mm256_and_si256(_mm256_slli_epi16(v, 8), _mm256_set1_epi16((short)0x8000)));
}

/* Sixteen weights from column c of one row: e4m3 * scale, one rounding (``scale256`` = scale * 2^8, exact). */
static inline void dequantize16(const uint8_t *restrict codes, long c, __m256 scale256, __m256 *lo, __m256 *hi) {
    const __m256i h = e4m3_to_f16_bits(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(codes + c))));
    *lo = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), scale256);
    *hi = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), scale256);
}

static inline __m256 dequantize8(const uint8_t *restrict codes, long c, __m256 scale256) {
    uint64_t packed;
    memcpy(&packed, codes + c, 8);
    const __m256i h = e4m3_to_f16_bits(_mm256_cvtepu8_epi16(_mm_cvtsi64_si128((long long)packed)));
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), scale256);
}

/* One row . x without the buffer (decode): the weights, vectors and accumulation order of
 * dequantize_row + dot (cpu_dot.h), so the same bits as the same row in a batch. */
static inline float fused_dot(const uint8_t *restrict codes, float scale, const float *restrict x, long k) {
    const __m256 s256 = _mm256_set1_ps(scale * 256.0f);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    long i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256 w0, w1, w2, w3;
        dequantize16(codes, i, s256, &w0, &w1);
        dequantize16(codes, i + 16, s256, &w2, &w3);
        s0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), s1);
        s2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + i + 16), s2);
        s3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + i + 24), s3);
    }
    for (; i + 8 <= k; i += 8) s0 = _mm256_fmadd_ps(dequantize8(codes, i, s256), _mm256_loadu_ps(x + i), s0);
    float total = hsum(s0, s1, s2, s3);
    for (; i < k; i++) {
        const float w = e4m3_to_f32(codes[i]) * scale;
        total += w * x[i];
    }
    return total;
}
#endif

static inline void dequantize_row(const uint8_t *restrict codes, float scale, long k, float *restrict row) {
    long c = 0;
#ifdef FP8_AVX2
    const __m256 s256 = _mm256_set1_ps(scale * 256.0f);
    for (; c + 16 <= k; c += 16) {
        __m256 lo, hi;
        dequantize16(codes, c, s256, &lo, &hi);
        _mm256_storeu_ps(row + c, lo);
        _mm256_storeu_ps(row + c + 8, hi);
    }
    for (; c + 8 <= k; c += 8) _mm256_storeu_ps(row + c, dequantize8(codes, c, s256));
#endif
    for (; c < k; c++) row[c] = e4m3_to_f32(codes[c]) * scale;
}

/* The float32 [rows, k] weights (rows codes_stride bytes apart). */
int fp8_dequantize(const uint8_t *codes, long codes_stride, const float *scales, long rows, long k, float *out,
                   int threads) {
    if (k <= 0 || codes_stride < k) return 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * k >= PARALLEL_MIN_DEQUANT)
    for (long n = 0; n < rows; n++) dequantize_row(codes + n * codes_stride, scales[n], k, out + n * k);
    return 0;
}

/* out[i, n] = x[i, :] . W[n, :] for i < m, n < rows: x [m, k] float32 (rows x_stride apart), out [m, rows]
 * (rows out_stride apart). Parallel over weight rows. */
int fp8_matmul(const float *x, long x_stride, long m, const uint8_t *codes, long codes_stride,
               const float *scales, long rows, long k, float *out, long out_stride, int threads) {
    if (k <= 0 || codes_stride < k) return 1;
    const int team = rows * k * m >= PARALLEL_MIN_WORK ? (threads > 0 ? threads : 1) : 1;
    float *buffers = (float *)malloc((size_t)team * (size_t)k * sizeof(float)); /* one dequantized row per thread */
    if (buffers == NULL) return 4;
#pragma omp parallel num_threads(team)
    {
        float *row = buffers + (long)omp_get_thread_num() * k;
#pragma omp for schedule(static)
        for (long n = 0; n < rows; n++) {
#ifdef FP8_AVX2
            if (m == 1) { /* decode: no round trip through the buffer */
                out[n] = fused_dot(codes + n * codes_stride, scales[n], x, k);
                continue;
            }
#endif
            dequantize_row(codes + n * codes_stride, scales[n], k, row);
            for (long i = 0; i < m; i++) out[i * out_stride + n] = dot(row, x + i * x_stride, k);
        }
    }
    free(buffers);
    return 0;
}
