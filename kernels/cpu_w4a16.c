/* GPTQ/AWQ weights on CPU in pagedllm's shared w4a16 layout (core/quantization/w4a16_weight.py):
 * dequantize rows and multiply activations by them without holding a dense copy (issue 22).
 *
 * A weight row n (an output feature) is `k` codes, two 4-bit codes a byte (column 2j in the low
 * nibble) or one 8-bit code a byte; its columns form `groups` contiguous runs (group g: columns
 * starts[g] .. starts[g+1]-1), each with a float32 scale and zero point:
 *     w[n, c] = (code - zeros[n, g]) * scales[n, g].
 * (code - zero) is an exact small integer and the scale came from float16, so every dequantized
 * value equals the float32 weight a dense checkpoint of the same numbers holds; products differ from
 * a float32 matmul of those weights only in summation order.
 *
 * The row is dequantized into a float32 buffer that stays in L1 and dotted with every activation
 * row, so one call reads the packed weight once whatever the row count; for one activation row
 * (decode) with groups on multiples of 8 columns (every real checkpoint) the codes are dequantized in
 * registers and never stored. Each (row, output) dot sums in the same order whatever the batch.
 * Built at first use by kernels/cpu_w4a16.py (-O3 -march=native, OpenMP); AVX2+FMA for the dot where
 * the CPU has them, plain C otherwise.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cpu_dot.h"
#include "cpu_amx.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define W4A16_AVX2 1
#endif

/* weights x rows below which one thread runs the call (a decode step's layer products): on a shared
 * 2-core machine a 2-thread team's fork/join costs more than it gains there (as in cpu_gguf.c) */
#define PARALLEL_MIN_WORK (1L << 23)
#define PARALLEL_MIN_DEQUANT (1L << 20)
#define PARALLEL_MIN_AMX (1L << 18) /* the AMX batch path splits from 256K weights (as cpu_gguf.c) */

static inline void dequantize_row(const uint8_t *restrict codes, int bits, const float *restrict scales,
                                  const float *restrict zeros, const int32_t *restrict starts, long groups,
                                  float *restrict row) {
    for (long g = 0; g < groups; g++) {
        const float s = scales[g], z = zeros[g];
        long c = starts[g];
        const long end = starts[g + 1];
        if (bits == 8) {
            for (; c < end; c++) row[c] = ((float)codes[c] - z) * s;
            continue;
        }
        if (c & 1) { /* a group that starts on a high nibble (odd group sizes) */
            row[c] = ((float)(codes[c >> 1] >> 4) - z) * s;
            c++;
        }
        const uint8_t *b = codes + (c >> 1);
        const long pairs = (end - c) >> 1;
        float *restrict y = row + c;
        for (long j = 0; j < pairs; j++) { /* whole bytes: the compiler vectorizes this */
            y[2 * j] = ((float)(b[j] & 15) - z) * s;
            y[2 * j + 1] = ((float)(b[j] >> 4) - z) * s;
        }
        c += 2 * pairs;
        if (c < end) row[c] = ((float)(codes[c >> 1] & 15) - z) * s;
    }
}

#ifdef W4A16_AVX2
/* Eight weights from column c (a multiple of 8) of one row, dequantized in registers. */
static inline __m256 dequantize8(const uint8_t *restrict codes, int bits, long c, __m256 scale, __m256 zero) {
    __m128i bytes;
    if (bits == 4) {
        uint32_t packed;
        memcpy(&packed, codes + (c >> 1), 4);
        const __m128i b = _mm_cvtsi32_si128((int)packed), mask = _mm_set1_epi8(15);
        /* low nibbles are the even columns, high nibbles the odd ones: interleave back to column order */
        bytes = _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
    } else {
        uint64_t packed;
        memcpy(&packed, codes + c, 8);
        bytes = _mm_cvtsi64_si128((long long)packed);
    }
    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
    return _mm256_mul_ps(_mm256_sub_ps(q, zero), scale);
}

/* Thirty-two weights from column c (a multiple of 32) of one row, all in one group: one 16-byte load of
 * 4-bit codes (two for 8-bit) instead of four, the same values as four dequantize8 calls. */
static inline void dequantize32(const uint8_t *restrict codes, int bits, long c, __m256 scale, __m256 zero,
                                __m256 w[4]) {
    __m128i lo, hi; /* columns c..c+15 and c+16..c+31, one byte each */
    if (bits == 4) {
        const __m128i b = _mm_loadu_si128((const __m128i *)(codes + (c >> 1))), mask = _mm_set1_epi8(15);
        const __m128i even = _mm_and_si128(b, mask), odd = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        lo = _mm_unpacklo_epi8(even, odd);
        hi = _mm_unpackhi_epi8(even, odd);
    } else {
        lo = _mm_loadu_si128((const __m128i *)(codes + c));
        hi = _mm_loadu_si128((const __m128i *)(codes + c + 16));
    }
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int j = 0; j < 4; j++) {
        const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[j]));
        w[j] = _mm256_mul_ps(_mm256_sub_ps(q, zero), scale);
    }
}

/* One row . x without the buffer (decode), for rows whose groups start on multiples of 8 and k % 8 == 0:
 * the same weights, vectors and accumulation order as dequantize_row + dot, so the same bits. */
static inline float fused_dot(const uint8_t *restrict codes, int bits, const float *restrict scales,
                              const float *restrict zeros, const int32_t *restrict starts, const float *restrict x,
                              long k) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    long g = 0, i = 0;
    __m256 scale = _mm256_set1_ps(scales[0]), zero = _mm256_set1_ps(zeros[0]);
#define W4A16_GROUP_OF(c)                                                                  \
    if (starts[g + 1] <= (c)) {                                                            \
        while (starts[g + 1] <= (c)) g++;                                                  \
        scale = _mm256_set1_ps(scales[g]);                                                 \
        zero = _mm256_set1_ps(zeros[g]);                                                   \
    }
    for (; i + 32 <= k; i += 32) {
        W4A16_GROUP_OF(i)
        if (starts[g + 1] >= i + 32) { /* the 32 columns share a group (every chunk of the usual checkpoint) */
            __m256 w[4];
            dequantize32(codes, bits, i, scale, zero, w);
            for (int j = 0; j < 4; j++) s[j] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x + i + 8 * j), s[j]);
            continue;
        }
        for (int j = 0; j < 4; j++) {
            const long c = i + 8 * j;
            W4A16_GROUP_OF(c)
            s[j] = _mm256_fmadd_ps(dequantize8(codes, bits, c, scale, zero), _mm256_loadu_ps(x + c), s[j]);
        }
    }
    for (; i + 8 <= k; i += 8) {
        W4A16_GROUP_OF(i)
        s[0] = _mm256_fmadd_ps(dequantize8(codes, bits, i, scale, zero), _mm256_loadu_ps(x + i), s[0]);
    }
#undef W4A16_GROUP_OF
    return hsum(s[0], s[1], s[2], s[3]);
}
#endif

/* Whether every group starts on a multiple of 8 (and k is one): what fused_dot reads in whole vectors. */
static int aligned8(const int32_t *starts, long groups, long k) {
    if (k % 8) return 0;
    for (long g = 0; g <= groups; g++)
        if (starts[g] % 8) return 0;
    return 1;
}

static int check(int bits, long row_bytes, long k, const int32_t *starts, long groups) {
    if (bits != 4 && bits != 8) return 1;
    if (k <= 0 || groups <= 0) return 2;
    if (row_bytes != (bits == 4 ? (k + 1) / 2 : k)) return 3;
    if (starts[0] != 0 || starts[groups] != k) return 5;
    for (long g = 0; g < groups; g++)
        if (starts[g + 1] < starts[g]) return 5;
    return 0;
}

/* The float32 [rows, k] weights. */
int w4a16_dequantize(const uint8_t *codes, long row_bytes, int bits, const float *scales, const float *zeros,
                     const int32_t *starts, long groups, long rows, long k, float *out, int threads) {
    const int status = check(bits, row_bytes, k, starts, groups);
    if (status) return status;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * k >= PARALLEL_MIN_DEQUANT)
    for (long n = 0; n < rows; n++)
        dequantize_row(codes + n * row_bytes, bits, scales + n * groups, zeros + n * groups, starts, groups,
                       out + n * k);
    return 0;
}

/* out[i, n] = x[i, :] . W[n, :] for i < m, n < rows: x [m, k] float32 (rows x_stride apart, columns in
 * the weight's group order), out [m, rows] (rows out_stride apart). Parallel over weight rows. */
int w4a16_matmul(const float *x, long x_stride, long m, const uint8_t *codes, long row_bytes, int bits,
                 const float *scales, const float *zeros, const int32_t *starts, long groups, long rows, long k,
                 float *out, long out_stride, int threads) {
    const int status = check(bits, row_bytes, k, starts, groups);
    if (status) return status;
    const int team = rows * k * m >= PARALLEL_MIN_WORK ? (threads > 0 ? threads : 1) : 1;
    const int fused = aligned8(starts, groups, k);
    (void)fused;
    float *buffers = (float *)malloc((size_t)team * (size_t)k * sizeof(float)); /* one dequantized row per thread */
    if (buffers == NULL) return 4;
#pragma omp parallel num_threads(team)
    {
        float *row = buffers + (long)omp_get_thread_num() * k;
#pragma omp for schedule(static)
        for (long n = 0; n < rows; n++) {
#ifdef W4A16_AVX2
            if (m == 1 && fused) { /* decode: no round trip through the buffer */
                out[n] = fused_dot(codes + n * row_bytes, bits, scales + n * groups, zeros + n * groups, starts, x, k);
                continue;
            }
#endif
            dequantize_row(codes + n * row_bytes, bits, scales + n * groups, zeros + n * groups, starts, groups, row);
            for (long i = 0; i < m; i++) out[i * out_stride + n] = dot(row, x + i * x_stride, k);
        }
    }
    free(buffers);
    return 0;
}

#ifdef CPU_AMX
typedef struct {
    const uint8_t *codes;
    const float *scales, *zeros;
    const int32_t *starts;
    long row_bytes, groups, k;
    int bits;
} w4a16_rows;

static void w4a16_fill(const void *ctx, long n0, long count, uint16_t *dst, long ld, float *tmp) {
    const w4a16_rows *g = (const w4a16_rows *)ctx;
    for (long i = 0; i < count; i++) {
        const long n = n0 + i;
        dequantize_row(g->codes + n * g->row_bytes, g->bits, g->scales + n * g->groups, g->zeros + n * g->groups,
                       g->starts, g->groups, tmp);
        f32_to_bf16_row(tmp, dst + i * ld, g->k);
        memset(dst + i * ld + g->k, 0, (size_t)(ld - g->k) * sizeof(uint16_t));
    }
}
#endif

/* Whether w4a16_matmul_amx runs here: compiled for AMX-BF16 and the tile state granted by the kernel. */
int w4a16_has_amx(void) {
#ifdef CPU_AMX
    return amx_available();
#else
    return 0;
#endif
}

/* As w4a16_matmul for a batch in a bf16 model, on AMX-BF16 (cpu_amx.h): activations (float32, or bf16 when
 * x_bf16) and weights rounded to bf16, products summed in float32, out float32 or bf16 (out_bf16). Status 6
 * where AMX is not available. */
int w4a16_matmul_amx(const void *x, int x_bf16, long x_stride, long m, const uint8_t *codes, long row_bytes,
                     int bits, const float *scales, const float *zeros, const int32_t *starts, long groups, long rows,
                     long k, void *out, long out_stride, int out_bf16, int threads) {
    const int status = check(bits, row_bytes, k, starts, groups);
    if (status) return status;
#ifdef CPU_AMX
    const w4a16_rows ctx = {codes, scales, zeros, starts, row_bytes, groups, k, bits};
    return amx_matmul(x, x_bf16, x_stride, m, rows, k, w4a16_fill, &ctx, out, out_stride, out_bf16,
                      rows * k >= PARALLEL_MIN_AMX ? threads : 1);
#else
    (void)x; (void)x_bf16; (void)x_stride; (void)m; (void)codes; (void)scales; (void)zeros; (void)rows;
    (void)out; (void)out_stride; (void)out_bf16; (void)threads;
    return 6;
#endif
}
