/* GGUF block-quantized weights on CPU: dequantize rows and multiply activations by them without ever
 * holding a dense copy of the weight (issue 22). A decode step reads every weight once per token, so
 * reading 4.5-bit blocks instead of 32-bit floats is most of what a quantized model buys.
 *
 * Layouts are ggml's (ggml-common.h); the type ids are GGMLQuantizationType's. Each weight row is
 * K / block_size blocks; a row is dequantized into a float32 buffer that stays in L1 and dotted with
 * every activation row, so one call reads the quantized weight once whatever the row count; for a
 * single row (decode) Q4_0/Q4_1/Q8_0 blocks are dequantized in registers and never stored. Every
 * (row, output) dot product sums in the same order whatever the other rows, so a row's result does
 * not depend on the batch it came in. float32 math throughout (no activation
 * quantization): results match a float32 matmul of the dequantized weight up to summation order.
 *
 * Built at first use by kernels/cpu_gguf.py (-O3 -march=native, OpenMP); AVX2+FMA where the CPU has
 * them, plain C otherwise (the compiler vectorizes the dequantize loops either way).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cpu_dot.h"
#include "cpu_simd.h"
#include "cpu_amx.h"
#include "cpu_q8.h"
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define GGUF_AVX2 1
#endif

enum { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14 };
#define QK_K 256
/* weights x rows below which one thread runs the call: a decode step's layer matmuls (0.3-1.8M weights
 * here) lost more to the fork/join of a 2-thread team than they gained on a shared 2-core machine */
#define PARALLEL_MIN_WORK (1L << 23)
/* The 8-bit activation path (gguf_matmul_q8) splits from 128K weights x rows: its integer dots keep up with
 * memory, and one core streams only ~4-6 GB/s of the ~13 the machine's two give (2-core Xeon, quiet) */
#define PARALLEL_MIN_Q8 (1L << 17)
/* Dequantizing (prefill and batches: float32 tiles for a GEMM) splits from 1M weights: the GEMM that
 * follows wakes the second thread anyway. */
#define PARALLEL_MIN_DEQUANT (1L << 20)
/* The AMX batch path (gguf_matmul_amx) splits from 256K weights: its work is the dequantizing, and a
 * 576 x 576 layer's (0.3M weights) is ~40 us on one core */
#define PARALLEL_MIN_AMX (1L << 18)

static inline float fp16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    union { uint32_t u; float f; } c;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 */
        c.f = (float)mant * 5.9604644775390625e-8f;
        c.u |= sign;
        return c.f;
    }
    c.u = sign | (exp == 31 ? 0x7f800000u | (mant << 13) : ((exp + 112u) << 23) | (mant << 13));
    return c.f;
#endif
}

/* Bytes and weights of one block of `type`, or 0 when this file has no kernel for it. */
static int block_bytes(int type) {
    switch (type) {
    case Q4_0: return 18; case Q4_1: return 20; case Q5_0: return 22; case Q5_1: return 24;
    case Q8_0: return 34; case Q2_K: return 84; case Q3_K: return 110; case Q4_K: return 144; case Q5_K: return 176;
    case Q6_K: return 210;
    default: return 0;
    }
}

static int block_size(int type) { return type >= Q2_K && type <= Q6_K ? QK_K : 32; }

static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* One block of `type` at b -> y (32 or 256 floats), as ggml's dequantize_row_* does it. */
static inline void dequantize_block(int type, const uint8_t *b, float *restrict y) {
    switch (type) {
    case Q4_0: {
        const float d = fp16_to_f32(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((int)(qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((int)(qs[j] >> 4) - 8) * d;
        }
        break;
    }
    case Q4_1: {
        const float d = fp16_to_f32(b), m = fp16_to_f32(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0xF) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
        break;
    }
    case Q5_0: case Q5_1: {
        const int with_min = type == Q5_1;
        const float d = fp16_to_f32(b), m = with_min ? fp16_to_f32(b + 2) : 0.0f;
        const uint8_t *hp = b + (with_min ? 4 : 2);
        uint32_t qh;
        memcpy(&qh, hp, 4);
        const uint8_t *qs = hp + 4;
        const int offset = with_min ? 0 : 16;
        for (int j = 0; j < 16; j++) {
            const int x0 = (int)((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - offset;
            const int x1 = (int)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - offset;
            y[j] = (float)x0 * d + m;
            y[j + 16] = (float)x1 * d + m;
        }
        break;
    }
    case Q8_0: {
        const float d = fp16_to_f32(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
        break;
    }
    case Q2_K: { /* scales[16] (low nibble: scale, high: min, per 16 weights), qs[64] (2 bits), d, dmin */
        const uint8_t *sc = b, *qs = b + 16;
        const float d = fp16_to_f32(b + 80), dmin = fp16_to_f32(b + 82);
        for (int h = 0; h < 2; h++) /* weight 128 h + 32 j + l: bits 2 j of qs[32 h + l] */
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    const int w = 128 * h + 32 * j + l;
                    const float dl = d * (float)(sc[w / 16] & 0xF), ml = dmin * (float)(sc[w / 16] >> 4);
                    y[w] = dl * (float)((qs[32 * h + l] >> (2 * j)) & 3) - ml;
                }
        break;
    }
    case Q3_K: { /* hmask[32] (bit 3, set = no -4 offset), qs[64] (bits 0-1), scales[12] (16 x 6 bits), d */
        const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
        const float d = fp16_to_f32(b + 108);
        float dl[16];
        for (int i = 0; i < 16; i++) { /* low 4 bits from bytes 0-7, high 2 bits from bytes 8-11; offset 32 */
            const int low = (sc[i % 8] >> (4 * (i / 8))) & 0xF, high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
            dl[i] = d * (float)((low | (high << 4)) - 32);
        }
        for (int h = 0; h < 2; h++) /* weight 128 h + 32 j + l: bits 2 j of qs[32 h + l], bit 4 h + j of hmask[l] */
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    const int w = 128 * h + 32 * j + l;
                    const int q = ((qs[32 * h + l] >> (2 * j)) & 3) - ((hm[l] >> (4 * h + j)) & 1 ? 0 : 4);
                    y[w] = dl[w / 16] * (float)q;
                }
        break;
    }
    case Q4_K: case Q5_K: {
        const int five = type == Q5_K;
        const float d = fp16_to_f32(b), dmin = fp16_to_f32(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
        uint8_t sc, m, u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
            scale_min_k4(is, scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) {
                const int h1 = five && (qh[l] & u1) ? 16 : 0, h2 = five && (qh[l] & u2) ? 16 : 0;
                y[j + l] = d1 * (float)((q[l] & 0xF) + h1) - m1;
                y[j + 32 + l] = d2 * (float)((q[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
        break;
    }
    case Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        const float d = fp16_to_f32(b + 208);
        for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[n + l] = d * (float)sc[is] * (float)q1;
                y[n + l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[n + l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[n + l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
        break;
    }
    }
}

#ifdef GGUF_AVX2
/* Whether deq32 takes `type`: the 32-weight types a decode step meets most (the bundled file's). */
static inline int has_deq32(int type) { return type == Q4_0 || type == Q4_1 || type == Q8_0; }

/* The 32 weights of a Q4_0/Q4_1/Q8_0 block as four 8-float vectors (weights 0-7, 8-15, 16-23, 24-31),
 * equal to dequantize_block's values (each product of a small integer and an fp16 scale is exact). */
static inline void deq32(int type, const uint8_t *b, __m256 v[4]) {
    const __m256 d = _mm256_set1_ps(fp16_to_f32(b));
    if (type == Q8_0) {
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * j)))), d);
        return;
    }
    const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == Q4_1 ? 4 : 2)));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    if (type == Q4_1) {
        const __m256 m = _mm256_set1_ps(fp16_to_f32(b + 2));
        for (int j = 0; j < 4; j++) v[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[j])), d, m);
    } else {
        const __m256i eight = _mm256_set1_epi32(8);
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[j]), eight)), d);
    }
}

/* One quantized row . x without a buffer: the same vectors and the same accumulation as
 * dequantize_row followed by dot, so a row alone gives the bits it gives in a batch. */
static inline float fused_dot(int type, const uint8_t *row, const float *x, long k) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}, v[4];
    const int bb = block_bytes(type);
    for (long i = 0; i < k; i += 32, row += bb) {
        deq32(type, row, v);
        for (int j = 0; j < 4; j++) s[j] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(x + i + 8 * j), s[j]);
    }
    return hsum(s[0], s[1], s[2], s[3]);
}

/* Eight floats -> eight bf16 (nearest even, as f32_to_bf16 for every value a block dequantizes to). */
static inline __m128i bf16x8(__m256 v) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
    return (__m128i)_mm256_cvtneps_pbh(v);
#else
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
#endif
}
#endif

static inline void dequantize_row(int type, const uint8_t *row, long k, float *restrict y) {
    const int bs = block_size(type), bb = block_bytes(type);
#ifdef GGUF_AVX2
    if (has_deq32(type)) {
        __m256 v[4];
        for (long i = 0; i < k / 32; i++) {
            deq32(type, row + i * bb, v);
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + 32 * i + 8 * j, v[j]);
        }
        return;
    }
#endif
    for (long i = 0; i < k / bs; i++) dequantize_block(type, row + i * bb, y + i * bs);
}

/* The k weights of one row as bf16, through a float32 buffer `tmp` of k floats (in L1) where the row has
 * no register path. */
static inline void dequantize_row_bf16(int type, const uint8_t *row, long k, float *restrict tmp,
                                       uint16_t *restrict y) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if (has_deq32(type)) { /* a block is two 16-float vectors and one store of 32 bf16 */
        const int bb = block_bytes(type);
        for (long i = 0; i < k / 32; i++, row += bb) {
            const __m512 d = _mm512_set1_ps(fp16_to_f32(row));
            __m512 lo, hi;
            if (type == Q8_0) {
                lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + 2))));
                hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + 18))));
                lo = _mm512_mul_ps(lo, d);
                hi = _mm512_mul_ps(hi, d);
            } else {
                const __m128i raw = _mm_loadu_si128((const __m128i *)(row + (type == Q4_1 ? 4 : 2)));
                const __m128i mask = _mm_set1_epi8(0x0F);
                __m512i qlo = _mm512_cvtepu8_epi32(_mm_and_si128(raw, mask));
                __m512i qhi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), mask));
                if (type == Q4_1) {
                    const __m512 m = _mm512_set1_ps(fp16_to_f32(row + 2));
                    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qlo), d, m);
                    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qhi), d, m);
                } else {
                    const __m512i eight = _mm512_set1_epi32(8);
                    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qlo, eight)), d);
                    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qhi, eight)), d);
                }
            }
            _mm512_storeu_si512((void *)(y + 32 * i), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        return;
    }
#endif
#ifdef GGUF_AVX2
    if (has_deq32(type)) {
        const int bb = block_bytes(type);
        __m256 v[4];
        for (long i = 0; i < k / 32; i++) {
            deq32(type, row + i * bb, v);
            for (int j = 0; j < 4; j++) _mm_storeu_si128((__m128i *)(y + 32 * i + 8 * j), bf16x8(v[j]));
        }
        return;
    }
#endif
    dequantize_row(type, row, k, tmp);
    f32_to_bf16_row(tmp, y, k);
}

/* Whether the library has a kernel for `type` (the Python side asks before it keeps a weight quantized). */
int gguf_supports(int type) { return block_bytes(type) != 0; }

static int check(int type, long row_bytes, long k) {
    const int bb = block_bytes(type);
    if (!bb) return 1;
    if (k <= 0 || k % block_size(type)) return 2;
    if (row_bytes != k / block_size(type) * bb) return 3;
    return 0;
}

/* out[r, :] = the k weights of quantized row r, for rows r in [0, rows): float32, or bf16 (rounded to
 * nearest even) when out_bf16. bf16 is what a batch in a bf16 model multiplies by (torch's bf16 GEMM: AMX
 * or AVX512-BF16 where the CPU has them): half the bytes to write and read back, and the weights the dense
 * bf16 model holds. Each row goes through a float32 buffer that stays in L1. */
int gguf_dequantize(const uint8_t *w, long row_bytes, int type, long rows, long k, void *out, int out_bf16,
                    int threads) {
    const int status = check(type, row_bytes, k);
    if (status) return status;
    const int team = rows * k >= PARALLEL_MIN_DEQUANT ? (threads > 0 ? threads : 1) : 1;
    if (!out_bf16) {
#pragma omp parallel for schedule(static) num_threads(team)
        for (long r = 0; r < rows; r++) dequantize_row(type, w + r * row_bytes, k, (float *)out + r * k);
        return 0;
    }
    float *buffers = (float *)malloc((size_t)team * (size_t)k * sizeof(float));
    if (buffers == NULL) return 4;
#pragma omp parallel num_threads(team)
    {
        float *row = buffers + (long)omp_get_thread_num() * k;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) dequantize_row_bf16(type, w + r * row_bytes, k, row, (uint16_t *)out + r * k);
    }
    free(buffers);
    return 0;
}

/* out[i, n] = x[i, :] . W[n, :] for i < m, n < rows: x [m, k] float32 (rows x_stride apart), W `rows`
 * quantized rows of k weights, out [m, rows] (rows out_stride apart). Parallel over weight rows. */
int gguf_matmul(const float *x, long x_stride, long m, const uint8_t *w, long row_bytes, int type, long rows,
                long k, float *out, long out_stride, int threads) {
    const int status = check(type, row_bytes, k);
    if (status) return status;
    const int team = rows * k * m >= PARALLEL_MIN_WORK ? (threads > 0 ? threads : 1) : 1;
    float *buffers = (float *)malloc((size_t)team * (size_t)k * sizeof(float)); /* one dequantized row per thread */
    if (buffers == NULL) return 4;
#pragma omp parallel num_threads(team)
    {
        float *row = buffers + (long)omp_get_thread_num() * k;
#pragma omp for schedule(static)
        for (long n = 0; n < rows; n++) {
#ifdef GGUF_AVX2
            if (m == 1 && has_deq32(type)) { /* decode: no round trip through the buffer */
                out[n] = fused_dot(type, w + n * row_bytes, x, k);
                continue;
            }
#endif
            dequantize_row(type, w + n * row_bytes, k, row);
            for (long i = 0; i < m; i++) out[i * out_stride + n] = dot(row, x + i * x_stride, k);
        }
    }
    free(buffers);
    return 0;
}

/* Whether gguf_matmul_q8 runs here: built with AVX2 (every type of q8_supports then has its integer path). */
int gguf_has_q8(void) {
#ifdef CPU_Q8
    return 1;
#else
    return 0;
#endif
}

/* As gguf_matmul for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights, with each activation row first rounded to 8-bit blocks
 * and the products summed in integers (cpu_q8.h): llama.cpp's decode numerics, at a fraction of the
 * float path's arithmetic per weight. x is float32 or bf16 (x_bf16), out float32 or bf16 rounded to nearest
 * even (out_bf16): a bf16 model's decode step then needs no conversion around the call. Status 7 for
 * another type or a build without AVX2. */
int gguf_matmul_q8(const void *x, int x_bf16, long x_stride, long m, const uint8_t *w, long row_bytes, int type,
                   long rows, long k, void *out, int out_bf16, long out_stride, int threads) {
    const int status = check(type, row_bytes, k);
    if (status) return status;
#ifdef CPU_Q8
    if (!q8_supports(type)) return 7;
    const long blocks = k / 32;
    q8_row *xq = (q8_row *)malloc((size_t)m * sizeof(q8_row));
    int8_t *codes = (int8_t *)malloc((size_t)m * (size_t)k * 2); /* q, then q2 */
    float *scales = (float *)malloc((size_t)m * (size_t)blocks * 2 * sizeof(float));
    float *row = x_bf16 ? (float *)malloc((size_t)k * sizeof(float)) : NULL;
    if (xq == NULL || codes == NULL || scales == NULL || (x_bf16 && row == NULL)) {
        free(xq); free(codes); free(scales); free(row);
        return 4;
    }
    for (long i = 0; i < m; i++) {
        xq[i] = (q8_row){codes + i * k, codes + (m + i) * k, scales + 2 * i * blocks, scales + (2 * i + 1) * blocks};
        if (x_bf16) {
            for (long j = 0; j < k; j++) row[j] = bf16_to_f32(((const uint16_t *)x)[i * x_stride + j]);
            q8_quantize_row(row, k, xq[i]);
        } else {
            q8_quantize_row((const float *)x + i * x_stride, k, xq[i]);
        }
    }
    const int team = rows * k * m >= PARALLEL_MIN_Q8 ? (threads > 0 ? threads : 1) : 1;
#pragma omp parallel for schedule(static) num_threads(team)
    for (long n = 0; n < rows; n++)
        for (long i = 0; i < m; i++) store_scalar(out, i * out_stride + n, q8_dot(type, w + n * row_bytes, xq[i], k), out_bf16);
    free(xq); free(codes); free(scales); free(row);
    return 0;
#else
    (void)x; (void)x_bf16; (void)x_stride; (void)m; (void)w; (void)rows; (void)out; (void)out_bf16; (void)out_stride;
    (void)threads;
    return 7;
#endif
}

#ifdef CPU_AMX
typedef struct {
    const uint8_t *w;
    long row_bytes, k;
    int type;
} gguf_rows;

static void gguf_fill(const void *ctx, long n0, long count, uint16_t *dst, long ld, float *tmp) {
    const gguf_rows *g = (const gguf_rows *)ctx;
    for (long i = 0; i < count; i++) dequantize_row_bf16(g->type, g->w + (n0 + i) * g->row_bytes, g->k, tmp, dst + i * ld);
}
#endif

/* Whether gguf_matmul_amx runs here: compiled for AMX-BF16 and the tile state granted by the kernel. */
int gguf_has_amx(void) {
#ifdef CPU_AMX
    return amx_available();
#else
    return 0;
#endif
}

/* As gguf_matmul for a batch in a bf16 model, on AMX-BF16 (cpu_amx.h): activations (float32, or bf16 when
 * x_bf16) and weights rounded to bf16, products summed in float32, out float32 or bf16 (out_bf16). Status 6
 * where AMX is not available. */
int gguf_matmul_amx(const void *x, int x_bf16, long x_stride, long m, const uint8_t *w, long row_bytes, int type,
                    long rows, long k, void *out, long out_stride, int out_bf16, int threads) {
    const int status = check(type, row_bytes, k);
    if (status) return status;
#ifdef CPU_AMX
    const gguf_rows ctx = {w, row_bytes, k, type};
    return amx_matmul(x, x_bf16, x_stride, m, rows, k, gguf_fill, &ctx, out, out_stride, out_bf16,
                      rows * k >= PARALLEL_MIN_AMX ? threads : 1);
#else
    (void)x; (void)x_bf16; (void)x_stride; (void)m; (void)rows; (void)out; (void)out_stride; (void)out_bf16;
    (void)threads;
    return 6;
#endif
}
