/* fp8 (float8 e4m3fn) weights on CPU, w8a16: multiply float32 activations by weights stored one byte
 * each with one float32 scale per output row (core/quantization/fp8_weight.py), without holding a dense
 * copy (issue 22).
 *
 * A weight row n (an output feature) is k e4m3fn bytes: sign bit 7, exponent bits 6..3 (bias 7),
 * mantissa bits 2..0; exponent 0 is subnormal (m * 2^-9). The weight is
 *     w[n, c] = e4m3(codes[n, c]) * scales[n]
 * rounded once to float32 (e4m3 values are exact in float32), the value a dense float32 checkpoint of
 * the dequantized weights holds; products differ from a float32 matmul of those weights only in
 * summation order. The byte is decoded with integer operations (no table, no subnormal float
 * arithmetic, so flush-to-zero modes cannot change it). The NaN code (0x7f/0xff) is never written by
 * the quantizer (it clamps to +-448) and decodes as 480.
 *
 * The row is dequantized into a float32 buffer that stays in L1 and dotted with every activation row
 * (cpu_dot.h), so one call reads the 1-byte weights once whatever the row count; each (row, output) dot
 * sums in the same order whatever the batch. Built at first use by kernels/cpu_fp8.py (-O3
 * -march=native, OpenMP); AVX2 decoding where the CPU has it, plain C otherwise.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cpu_dot.h"
#if defined(__AVX2__) && defined(__FMA__)
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
/* Eight weights from column c of one row, decoded and scaled in registers. */
static inline __m256 dequantize8(const uint8_t *restrict codes, long c, __m256 scale) {
    uint64_t packed;
    memcpy(&packed, codes + c, 8);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)packed));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
    const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7f)), 20),
                                            _mm256_set1_epi32(0x3C000000));
    const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(7))),
                                     _mm256_set1_ps(0x1p-9f));
    const __m256i is_sub = _mm256_cmpeq_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x78)), _mm256_setzero_si256());
    const __m256i bits = _mm256_or_si256(_mm256_blendv_epi8(normal, _mm256_castps_si256(sub), is_sub), sign);
    return _mm256_mul_ps(_mm256_castsi256_ps(bits), scale);
}
#endif

static inline void dequantize_row(const uint8_t *restrict codes, float scale, long k, float *restrict row) {
    long c = 0;
#ifdef FP8_AVX2
    const __m256 s = _mm256_set1_ps(scale);
    for (; c + 8 <= k; c += 8) _mm256_storeu_ps(row + c, dequantize8(codes, c, s));
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
            dequantize_row(codes + n * codes_stride, scales[n], k, row);
            for (long i = 0; i < m; i++) out[i * out_stride + n] = dot(row, x + i * x_stride, k);
        }
    }
    free(buffers);
    return 0;
}
