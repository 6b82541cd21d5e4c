/* Activations quantized to 8-bit codes and multiplied by 4/5/8-bit weight blocks with integer dot products
 * (issue 22: single-stream decode). A decode step's matmuls are one activation row against every weight:
 * converting each weight to float32 costs more than reading it. llama.cpp rounds the activation row to int8
 * in 32-value blocks (its Q8_1: a scale d = max|x| / 127 per block) and sums weight x activation codes in
 * int32 (AVX-512 VNNI / AVX-VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd: the same exact integers), leaving
 * one float multiply-add per block. Its rounding (|error| <= d / 2, about bf16's precision) moved 1.1% of
 * the bundled model's teacher-forced top-1 tokens against the dense float32 model; so each activation here
 * also carries its rounding error in a second int8 code: x = d (q + q2 / 128), q2 = round((x / d - q) 128)
 * in [-64, 64], |error| <= d / 256. The two dot products join in int32 (128 sum(u q) + sum(u q2): at most
 * 2^23, exact), so a block still costs one float multiply-add; the block's scale is kept as d / 128 and
 * s = (d / 128) (128 sum(q) + sum(q2)), the sum of the activations as multiplied.
 *
 * Weight blocks as ggml stores them (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32 weights each). A block's
 * contribution is dw * (dx * sum(u * q) - offset * sx) + mw * sx, with u the block's unsigned codes, offset
 * 8 (Q4_0) or 16 (Q5_0) and mw the block minimum (Q4_1, Q5_1); Q8_0's signed codes multiply as
 * |w| * sign(q, w). Lanes and blocks are summed in one fixed order, so a row's result does not depend on the
 * batch it came in nor on the build (the integer sums are exact in every path). Header-only; needs AVX2. */
#ifndef PAGEDLLM_CPU_Q8_H
#define PAGEDLLM_CPU_Q8_H
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#define CPU_Q8 1
#ifndef Q8_PREFETCH
#define Q8_PREFETCH 2048
#endif

/* One activation row as 32-value blocks: codes q[k] and their rounding codes q2[k], and per block d (the
 * scale of 128 q + q2) and s (the sum of the activations as multiplied). */
typedef struct {
    int8_t *q, *q2;
    float *d, *s;
} q8_row;

/* 4 x 8 int32 in [-128, 127] -> their 32 int8 in order: packs interleave 128-bit lanes, the permute puts
 * them back. */
static inline __m256i q8_pack(const __m256i *i32) {
    const __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16a, i16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* The sum of 32 int8. */
static inline int q8_sum(__m256i i8) {
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), i8), _mm256_set1_epi16(1));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}

/* x[0..k) (k a multiple of 32) -> r: with D = max|x| / 127, q = x / D rounded to nearest even, as llama.cpp's
 * quantize_row_q8_1, and q2 = (x / D - q) * 128 rounded to nearest even (all 0 for an all-zero block);
 * d = D / 128. */
static inline void q8_quantize_row(const float *x, long k, q8_row r) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    for (long b = 0; b < k / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 scale = _mm256_set1_ps(id);
        __m256i i32[4], r32[4];
        for (int j = 0; j < 4; j++) {
            const __m256 scaled = _mm256_mul_ps(v[j], scale);
            i32[j] = _mm256_cvtps_epi32(scaled); /* nearest even */
            /* |scaled - q| <= 1/2 (exact in float32): its code in 1/128ths, |q2| <= 64 */
            r32[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(scaled, _mm256_cvtepi32_ps(i32[j])),
                                                      _mm256_set1_ps(128.0f)));
        }
        const __m256i i8 = q8_pack(i32), r8 = q8_pack(r32);
        _mm256_storeu_si256((__m256i *)(r.q + 32 * b), i8);
        _mm256_storeu_si256((__m256i *)(r.q2 + 32 * b), r8);
        r.d[b] = d * (1.0f / 128.0f);
        r.s[b] = r.d[b] * (float)(128 * q8_sum(i8) + q8_sum(r8));
    }
}

/* Eight int32 lanes, each the sum of four u8 x s8 products of 32 unsigned codes u and 32 signed codes q. */
static inline __m256i q8_dot_u8s8(__m256i u, __m256i q) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, q);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1)); /* |pair| <= 2*128*127: no saturation */
#endif
}

static inline float q8_fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* The 16 code bytes of a 4-bit block as 32 bytes in weight order: low nibbles are weights 0-15, high 16-31. */
static inline __m256i q8_nibbles(const uint8_t *qs) {
#if defined(__AVX512BW__) && defined(__AVX512VL__) /* both halves in one register, shifted 0 and 4 */
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i shifts = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
    return _mm256_and_si256(_mm256_srlv_epi16(raw, shifts), _mm256_set1_epi8(0x0F));
#else
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
#endif
}

/* The fp16 scales (offset 0) and minimums (offset 2: Q4_1, Q5_1) of 8 blocks bb bytes apart, as floats: one
 * gather of each block's first 4 bytes instead of 8-16 scalar conversions. */
static inline void q8_scales8(const uint8_t *w, int bb, __m256 *d, __m256 *m) {
    const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bb));
    const __m256i dm = _mm256_i32gather_epi32((const int *)w, at, 1); /* per block: d | m << 16 */
    const __m256i halves = _mm256_shuffle_epi8(dm, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                                       0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    const __m256i dd_mm = _mm256_permute4x64_epi64(halves, 0xD8); /* d0-3 d4-7 | m0-3 m4-7 */
    *d = _mm256_cvtph_ps(_mm256_castsi256_si128(dd_mm));
    *m = _mm256_cvtph_ps(_mm256_extracti128_si256(dd_mm, 1));
}

/* Bit j of the 32-bit qh as 0x10 in byte j (a 5-bit block's fifth bits). */
static inline __m256i q8_fifth_bits(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                               _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                                                  0x0303030303030303LL));
    const __m256i select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select), _mm256_set1_epi8(0x10));
}

/* Whether q8_dot takes `type` (ggml type ids: Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8). */
static inline int q8_supports(int type) { return type == 2 || type == 3 || type == 6 || type == 7 || type == 8; }

/* Block b's 32 activation codes and their 32 rounding codes. */
typedef struct {
    __m256i q, q2;
} q8_codes_t;

static inline q8_codes_t q8_codes(q8_row x, long b) {
    return (q8_codes_t){_mm256_loadu_si256((const __m256i *)(x.q + 32 * b)),
                        _mm256_loadu_si256((const __m256i *)(x.q2 + 32 * b))};
}

/* 128 (u . q) + u . q2 in eight int32 lanes. */
static inline __m256i q8_dot2(__m256i u, __m256i q, __m256i q2) {
    return _mm256_add_epi32(_mm256_slli_epi32(q8_dot_u8s8(u, q), 7), q8_dot_u8s8(u, q2));
}

/* The weight block at w . a block's activation codes: eight int32 lane sums (each block's scale multiplies
 * them later). Called with a constant type (no branch per block). */
static inline __attribute__((always_inline)) __m256i q8_block_dots(const int type, const uint8_t *w, q8_codes_t c) {
    switch (type) {
    case 2: return q8_dot2(q8_nibbles(w + 2), c.q, c.q2);                                   /* Q4_0: d, qs[16] */
    case 3: return q8_dot2(q8_nibbles(w + 4), c.q, c.q2);                                   /* Q4_1: d, m, qs[16] */
    case 6: return q8_dot2(_mm256_or_si256(q8_nibbles(w + 6), q8_fifth_bits(w + 2)), c.q, c.q2); /* Q5_0: d, qh, qs */
    case 7: return q8_dot2(_mm256_or_si256(q8_nibbles(w + 8), q8_fifth_bits(w + 4)), c.q, c.q2); /* Q5_1: d, m, qh, qs */
    default: { /* Q8_0: d, qs[32] signed: |w| . sign(q, w) */
        const __m256i qs = _mm256_loadu_si256((const __m256i *)(w + 2));
        return q8_dot2(_mm256_abs_epi8(qs), _mm256_sign_epi8(c.q, qs), _mm256_sign_epi8(c.q2, qs));
    }
    }
}

/* The block's offset or minimum term for activations whose codes sum to s / d: w = d (u - 8) (Q4_0), d (u - 16)
 * (Q5_0), d u + m (Q4_1, Q5_1), d q (Q8_0: none). */
static inline __attribute__((always_inline)) float q8_block_extra(const int type, const uint8_t *w, float s) {
    switch (type) {
    case 2: return -8.0f * q8_fp16(w) * s;
    case 6: return -16.0f * q8_fp16(w) * s;
    case 3: case 7: return q8_fp16(w + 2) * s;
    default: return 0.0f;
    }
}

static inline int q8_block_bytes(int type) { return type == 2 ? 18 : type == 3 ? 20 : type == 6 ? 22 : type == 7 ? 24 : 34; }

/* One weight row of `type` (k / 32 blocks) . one quantized activation row. Even and odd blocks sum in
 * separate chains (one chain would wait on its add latency), joined at the end in a fixed order. */
static inline __attribute__((always_inline)) float q8_dot_type(const int type, const uint8_t *w, q8_row x, long k) {
    const int bb = q8_block_bytes(type);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), extra8 = _mm256_setzero_ps();
    float extra = 0.0f; /* the offset and minimum terms of the blocks past the last group of 8 */
    long b = 0;
    /* groups of 8 blocks: their scales converted together, the offset/minimum terms as one vector */
    for (; b + 8 <= k / 32; b += 8, w += 8 * bb) {
        _mm_prefetch((const char *)w + Q8_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)w + Q8_PREFETCH + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)w + Q8_PREFETCH + 128, _MM_HINT_T0);
        __m256 d8, m8;
        q8_scales8(w, bb, &d8, &m8);
        const __m256 xs8 = _mm256_loadu_ps(x.s + b);
        if (type == 3 || type == 7) extra8 = _mm256_fmadd_ps(m8, xs8, extra8);
        else if (type == 2 || type == 6) extra8 = _mm256_fnmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(type == 2 ? 8.0f : 16.0f)), xs8, extra8);
        float scale[8];
        _mm256_storeu_ps(scale, _mm256_mul_ps(d8, _mm256_loadu_ps(x.d + b)));
        for (int j = 0; j < 8; j += 2) {
            const __m256i even = q8_block_dots(type, w + j * bb, q8_codes(x, b + j));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(even), _mm256_set1_ps(scale[j]), acc0);
            const __m256i odd = q8_block_dots(type, w + (j + 1) * bb, q8_codes(x, b + j + 1));
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(odd), _mm256_set1_ps(scale[j + 1]), acc1);
        }
    }
    for (; b < k / 32; b++, w += bb) {
        extra += q8_block_extra(type, w, x.s[b]);
        const __m256i dots = q8_block_dots(type, w, q8_codes(x, b));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(q8_fp16(w) * x.d[b]), acc0);
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(acc0, acc1), extra8);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + extra;
}

static inline float q8_dot(int type, const uint8_t *w, q8_row x, long k) {
    switch (type) {
    case 2: return q8_dot_type(2, w, x, k);
    case 3: return q8_dot_type(3, w, x, k);
    case 6: return q8_dot_type(6, w, x, k);
    case 7: return q8_dot_type(7, w, x, k);
    default: return q8_dot_type(8, w, x, k);
    }
}
#endif
#endif
