/* The float32 dot product of the quantized-weight kernels (cpu_gguf.c, cpu_w4a16.c): four 8-lane
 * accumulators reduced in one fixed order (hsum), so a fused decode path that feeds the same four
 * accumulators gives the bits the buffered dequantize-then-dot path gives. Header-only, static
 * inline; the build hashes it with each source. */
#ifndef PAGEDLLM_CPU_DOT_H
#define PAGEDLLM_CPU_DOT_H
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CPU_DOT_AVX2 1

static inline float hsum(__m256 s0, __m256 s1, __m256 s2, __m256 s3) {
    const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#endif

/* sum a[i] * b[i] over k: 32 at a time into four accumulators, then 8 at a time, then the tail. */
static inline float dot(const float *restrict a, const float *restrict b, long k) {
    long i = 0;
#ifdef CPU_DOT_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (; i + 32 <= k; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= k; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float total = hsum(s0, s1, s2, s3);
#else
    float lanes[8] = {0};
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++) lanes[j] += a[i + j] * b[i + j];
    float total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
#endif
    for (; i < k; i++) total += a[i] * b[i];
    return total;
}
#endif
