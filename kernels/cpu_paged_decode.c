/* Paged decode attention for CPUs: one query token per sequence, K/V read straight from the
 * block-paged cache (no gather into a padded copy), so each K/V row crosses memory once; and the
 * write of each step's new K/V rows into their cache slots (store_kv, at the end).
 *
 * Built at first use by kernels/cpu_decode.py with the machine's compiler (-O3 -march=native,
 * OpenMP: the already-loaded libgomp of torch is reused, so both share one thread pool).
 * Layouts (all contiguous):
 *   q, out        [num_seqs, num_heads, head_dim]
 *   k/v cache     [num_blocks, block_size, num_kv_heads, head_dim]
 *   block_tables  [num_seqs, max_blocks] int32;  context_lens [num_seqs] int32 (>= 1)
 *   scratch       [num_threads, num_heads * max_context] float32
 * Per sequence: scores for every (head, token) in float32, softmax, then the weighted sum of V.
 * sliding_window > 0 keeps only the last `sliding_window` tokens; soft_cap > 0 caps the scaled
 * scores (Gemma 2); alibi_slopes (or NULL) adds one ALiBi slope per head. GQA: head h reads KV head
 * h / (num_heads / num_kv_heads). With AVX-512 and head_dim % 16 == 0 the inner loops use
 * intrinsics; otherwise plain loops (the compiler vectorizes what it can).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_simd.h"

extern int omp_get_thread_num(void);

#define MAX_HEAD_DIM 512
#define MAX_HEADS 128
#define MAX_Q_ROW 8192 /* num_heads * head_dim: per-thread float buffers of 32 KiB each */

/* Gemma-2 logit soft-capping, cap * tanh(x / cap), and the ALiBi bias slope * (key_pos - query_pos)
 * (rel0: that distance for the row's first score; it grows by one per token). */
static void adjust_row(float *s, int n, float soft_cap, float slope, int rel0) {
    int t = 0;
    if (soft_cap > 0.f) {
        const float inv_cap = 1.f / soft_cap;
#ifdef __AVX512F__
        const __m512 sign = _mm512_set1_ps(-0.f), one = _mm512_set1_ps(1.f);
        for (; t + 16 <= n; t += 16) { /* tanh|x| = (1 - e) / (1 + e), e = exp(-2|x|) */
            __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + t), _mm512_set1_ps(inv_cap));
            __m512 e = exp_avx512(_mm512_mul_ps(_mm512_andnot_ps(sign, x), _mm512_set1_ps(-2.f)));
            __m512 th = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
            th = _mm512_or_ps(th, _mm512_and_ps(sign, x));
            _mm512_storeu_ps(s + t, _mm512_mul_ps(th, _mm512_set1_ps(soft_cap)));
        }
#endif
        for (; t < n; t++) s[t] = soft_cap * tanhf(s[t] * inv_cap);
    }
    if (slope != 0.f)
        for (t = 0; t < n; t++) s[t] += slope * (float)(rel0 + t);
}

/* exp(x - max) over one row of scores, in place; returns 1 / sum (applied to the output later). */
static float softmax_row(float *s, int n) {
    float m = -INFINITY, sum = 0.f;
    int t = 0;
#ifdef __AVX512F__
    if (n >= 16) {
        __m512 vmax = _mm512_loadu_ps(s);
        for (t = 16; t + 16 <= n; t += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + t));
        m = _mm512_reduce_max_ps(vmax);
    }
#endif
    for (; t < n; t++) m = s[t] > m ? s[t] : m;
    t = 0;
#ifdef __AVX512F__
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vsum = _mm512_setzero_ps();
    for (; t + 16 <= n; t += 16) {
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + t), vm));
        _mm512_storeu_ps(s + t, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    sum = _mm512_reduce_add_ps(vsum);
#endif
    for (; t < n; t++) {
        s[t] = expf(s[t] - m);
        sum += s[t];
    }
    return 1.f / sum;
}

#ifdef __AVX512F__
static inline __m512 load16(const void *p, long i, int is_bf16) {
    if (is_bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    return _mm512_loadu_ps((const float *)p + i);
}

/* acc[h] += sum_t p[h][t] * V[t] for the G heads of one KV head, NV * 16 == head_dim known at
 * compile time: up to HB heads' accumulators live in registers across the whole token loop. */
#define DEFINE_PV(NV, HB)                                                                              \
static inline __attribute__((always_inline)) void pv_nv##NV(                                          \
    const void *vc, const int32_t *table, int first, int n, int bs, long row, int kh, int G, int D,    \
    const float *s, int max_ctx, float *acc, int is_bf16) {                                            \
    for (int g0 = 0; g0 < G; g0 += HB) {                                                               \
        const int hb = G - g0 < HB ? G - g0 : HB;                                                     \
        __m512 a[HB][NV];                                                                              \
        for (int i = 0; i < HB; i++)                                                                   \
            for (int j = 0; j < NV; j++) a[i][j] = _mm512_setzero_ps();                                \
        for (int t = first; t < n; t++) {                                                              \
            const long base = ((long)table[t / bs] * bs + t % bs) * row + (long)kh * D;                \
            __m512 v[NV];                                                                              \
            for (int j = 0; j < NV; j++) v[j] = load16(vc, base + j * 16, is_bf16);                    \
            for (int i = 0; i < HB; i++) {                                                             \
                if (i < hb) {                                                                          \
                    const __m512 p = _mm512_set1_ps(s[(long)(kh * G + g0 + i) * max_ctx + t - first]); \
                    for (int j = 0; j < NV; j++) a[i][j] = _mm512_fmadd_ps(p, v[j], a[i][j]);          \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int i = 0; i < hb; i++)                                                                   \
            for (int j = 0; j < NV; j++) _mm512_store_ps(acc + (kh * G + g0 + i) * D + j * 16, a[i][j]); \
    }                                                                                                  \
}
DEFINE_PV(4, 4)
DEFINE_PV(8, 2)

/* One sequence, head_dim % 16 == 0 (inlined per dtype, so the dtype test folds away). */
static inline __attribute__((always_inline)) void decode_one_avx512(const void *q, const void *kc, const void *vc, const int32_t *table, int first,
                              int n, void *out, int H, int KVH, int D, int bs, float scale, float soft_cap,
                              const float *slopes, float *s,
                              int max_ctx, int is_bf16) {
    const int G = H / KVH, nv = D / 16;
    const long row = (long)KVH * D;
    float qs[MAX_Q_ROW] __attribute__((aligned(64)));
    float acc[MAX_Q_ROW] __attribute__((aligned(64)));
    for (int i = 0; i < H * D; i += 16) {
        _mm512_store_ps(qs + i, _mm512_mul_ps(load16(q, i, is_bf16), _mm512_set1_ps(scale)));
        _mm512_store_ps(acc + i, _mm512_setzero_ps());
    }
    for (int t = first; t < n; t++) {
        const long base = ((long)table[t / bs] * bs + t % bs) * row;
        for (int kh = 0; kh < KVH; kh++) {
            __m512 kf[MAX_HEAD_DIM / 16];
            for (int j = 0; j < nv; j++) kf[j] = load16(kc, base + kh * D + j * 16, is_bf16);
            for (int g = 0; g < G; g++) {
                const float *qh = qs + (kh * G + g) * D;
                __m512 a = _mm512_mul_ps(kf[0], _mm512_load_ps(qh));
                for (int j = 1; j < nv; j++) a = _mm512_fmadd_ps(kf[j], _mm512_load_ps(qh + j * 16), a);
                s[(long)(kh * G + g) * max_ctx + t - first] = _mm512_reduce_add_ps(a);
            }
        }
    }
    float inv[MAX_HEADS];
    for (int h = 0; h < H; h++) {
        adjust_row(s + (long)h * max_ctx, n - first, soft_cap, slopes ? slopes[h] : 0.f, first - (n - 1));
        inv[h] = softmax_row(s + (long)h * max_ctx, n - first);
    }
    if (nv == 4 || nv == 8) {
        for (int kh = 0; kh < KVH; kh++) {
            if (nv == 4) pv_nv4(vc, table, first, n, bs, row, kh, G, D, s, max_ctx, acc, is_bf16);
            else pv_nv8(vc, table, first, n, bs, row, kh, G, D, s, max_ctx, acc, is_bf16);
        }
    } else {
        for (int t = first; t < n; t++) {
            const long base = ((long)table[t / bs] * bs + t % bs) * row;
            for (int kh = 0; kh < KVH; kh++) {
                __m512 vf[MAX_HEAD_DIM / 16];
                for (int j = 0; j < nv; j++) vf[j] = load16(vc, base + kh * D + j * 16, is_bf16);
                for (int g = 0; g < G; g++) {
                    const int h = kh * G + g;
                    const __m512 p = _mm512_set1_ps(s[(long)h * max_ctx + t - first]);
                    float *ah = acc + h * D;
                    for (int j = 0; j < nv; j++)
                        _mm512_store_ps(ah + j * 16, _mm512_fmadd_ps(p, vf[j], _mm512_load_ps(ah + j * 16)));
                }
            }
        }
    }
    for (int i = 0; i < H * D; i++) store_scalar(out, i, acc[i] * inv[i / D], is_bf16);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BF16__)
/* bf16 caches on CPUs with AVX512-BF16 (vdpbf16ps: two bf16 products added into one float32
 * lane). K and V are never widened to float32, which is most of the work of the path above when
 * every head reads its own KV head (MHA). Q.K is exact bf16 products in float32; P.V rounds the
 * probabilities to bf16 first, as SDPA's CPU flash kernel and GPU flash attention do. */

static inline __m512i load32(const uint16_t *p) { return _mm512_loadu_si512((const void *)p); }

/* The 16 horizontal sums of a[0..15], in order, with shuffles shared across the vectors. */
static inline __m512 sum16x16(const __m512 a[16]) {
    __m512 r8[8], r4[4];
    for (int i = 0; i < 8; i++) /* 128-bit lanes: [a2i lo+hi half, a2i+1 lo+hi half] */
        r8[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* lane l: 4 partial sums of a[4i + l] */
        r4[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r8[2 * i], r8[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(r8[2 * i], r8[2 * i + 1], 0xDD));
    const __m512 u = _mm512_add_ps(_mm512_unpacklo_ps(r4[0], r4[1]), _mm512_unpackhi_ps(r4[0], r4[1]));
    const __m512 v = _mm512_add_ps(_mm512_unpacklo_ps(r4[2], r4[3]), _mm512_unpackhi_ps(r4[2], r4[3]));
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(u, v, 0x44), _mm512_shuffle_ps(u, v, 0xEE));
    /* f[4l + k] is the sum of a[4k + l]; put it back in order */
    return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), f);
}

/* Pointers to the cache rows (all KV heads) of tokens t .. t+m-1. */
static inline void row_ptrs(const uint16_t *cache, const int32_t *table, int t, int m, int bs, long row,
                            const uint16_t **p) {
    for (int u = 0; u < m; u++) p[u] = cache + ((long)table[(t + u) / bs] * bs + (t + u) % bs) * row;
}

/* Software prefetch of the rows of tokens t .. t+m-1 (m <= 16, all KV heads): blocks sit anywhere
 * in the cache, so the hardware prefetchers lose the stream at every block. always_inline: gcc 12
 * takes a function of prefetches alone for one without side effects and drops the call when it
 * is not inlined early. */
static inline __attribute__((always_inline)) void prefetch_rows(const uint16_t *cache, const int32_t *table, int t,
                                                                int m, int bs, long row) {
    const uint16_t *p[16];
    row_ptrs(cache, table, t, m, bs, row, p);
    for (int u = 0; u < m; u++)
        for (long b = 0; b < row * 2; b += 64) _mm_prefetch((const char *)p[u] + b, _MM_HINT_T0);
}

/* The rows of the chunk after the one at t (16 tokens at most; none after the last): their count. */
static inline int next_chunk_ptrs(const uint16_t *cache, const int32_t *table, int t, int n, int bs, long row,
                                  const uint16_t **p) {
    const int m = n - t - 16 <= 0 ? 0 : (n - t - 16 < 16 ? n - t - 16 : 16);
    row_ptrs(cache, table, t + 16, m, bs, row, p);
    return m;
}

/* The first line of each 4 KiB page of the chunk two ahead of the one at t, into L2 (T2). On top of
 * the spread prefetch below this cut the kernel's time by 4% (MHA) to 8% (GQA) (2 threads, 30 cold
 * caches, the bench workload's shapes), presumably by starting each page's translation and the
 * L2 streamer early: a per-core fill-buffer limit, not memory bandwidth, bounds this kernel, and
 * the streamer's fetches do not hold fill buffers. Prefetching whole chunks into L2 was slower. */
static inline __attribute__((always_inline)) void prefetch_page_starts(const uint16_t *cache, const int32_t *table,
                                                                       int t, int n, int bs, long row) {
    const int t2 = t + 32;
    if (t2 >= n) return;
    const int m = n - t2 < 16 ? n - t2 : 16;
    const uint16_t *p[16];
    row_ptrs(cache, table, t2, m, bs, row, p);
    for (int u = 0; u < m; u++) { /* a block's rows are contiguous: most rows start on a page already seen */
        const uintptr_t lo = (uintptr_t)p[u], hi = lo + row * 2;
        if (u == 0 || lo != (uintptr_t)p[u - 1] + row * 2) _mm_prefetch((const char *)lo, _MM_HINT_T2);
        for (uintptr_t a = (lo + 4095) & ~(uintptr_t)4095; a < hi; a += 4096) _mm_prefetch((const char *)a, _MM_HINT_T2);
    }
}

/* The chunk of (up to) 16 tokens at t, as Q.K and P.V both walk the cache: the rows' pointers into p
 * (all KV heads), the next chunk's into pn and their count into *mn (for prefetch_head), and the
 * page starts two chunks ahead prefetched. Returns the chunk's token count. */
static inline __attribute__((always_inline)) int start_chunk(const uint16_t *cache, const int32_t *table, int t,
                                                             int n, int bs, long row, const uint16_t **p,
                                                             const uint16_t **pn, int *mn) {
    const int m = n - t < 16 ? n - t : 16;
    row_ptrs(cache, table, t, m, bs, row, p);
    *mn = next_chunk_ptrs(cache, table, t, n, bs, row, pn);
    prefetch_page_starts(cache, table, t, n, bs, row);
    return m;
}

/* Software prefetch of one KV head's D elements of m rows. Each KV head fetches its slice of the
 * next chunk as it starts on the current one, so the next chunk streams in spread over the
 * chunk's work: one burst of the whole chunk (all heads) stalled on the fill buffers; spread,
 * the kernel takes 4% (MHA) to 8% (GQA) less time on the bench workload's shapes. */
static inline __attribute__((always_inline)) void prefetch_head(const uint16_t *const *p, int m, long off, int D) {
    for (int u = 0; u < m; u++)
        for (long b = 0; b < D * 2; b += 64) _mm_prefetch((const char *)(p[u] + off) + b, _MM_HINT_T0);
}

/* Scaled scores of every head, 16 tokens at a time: the chunk's rows (all KV heads) are read
 * once, in address order, and stay in L1 while each head reduces its 16 dot products at once. */
static void qk_dpbf16(const uint16_t *q, const uint16_t *kc, const int32_t *table, int first, int n, int bs,
                      long row, int H, int G, int D, float scale, float *s, int max_ctx) {
    for (int t = first; t < n; t += 16) {
        const uint16_t *k[16], *kn[16];
        int mn;
        const int m = start_chunk(kc, table, t, n, bs, row, k, kn, &mn);
        for (int h = 0; h < H; h++) {
            const uint16_t *qh = q + (long)h * D;
            const long off = (long)(h / G) * D;
            if (h % G == 0) prefetch_head(kn, mn, off, D); /* this KV head's slice of the next chunk */
            __m512 a[16];
            for (int u = 0; u < 16; u++) {
                a[u] = _mm512_setzero_ps();
                if (u < m)
                    for (int j = 0; j < D / 32; j++)
                        a[u] = _mm512_dpbf16_ps(a[u], (__m512bh)load32(k[u] + off + j * 32), (__m512bh)load32(qh + j * 32));
            }
            _mm512_mask_storeu_ps(s + (long)h * max_ctx + t - first, (__mmask16)((1u << m) - 1),
                                  _mm512_mul_ps(sum16x16(a), _mm512_set1_ps(scale)));
        }
    }
}

/* A softmax row (float32 exp values) to bf16 in place: bf16 t lands at byte 2t, behind float t,
 * which was already read. Element n is zeroed: the token-pair loop below reads one past an odd row. */
static void row_to_bf16(float *s, int n) {
    uint16_t *d = (uint16_t *)s;
    int t = 0;
    for (; t + 16 <= n; t += 16)
        _mm256_storeu_si256((__m256i *)(d + t), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + t)));
    for (; t < n; t++) d[t] = f32_to_bf16(s[t]);
    d[n] = 0;
}

#define PV_HEADS 4 /* heads of one KV head whose accumulators stay in registers (4 x 4 zmm) */

/* acc += P.V with two tokens per vdpbf16ps: the rows of tokens t and t+1 are interleaved
 * (unpack lo/hi) and the pair of bf16 probabilities broadcast. Chunks of 16 tokens, all heads
 * per chunk, so V is read once in address order as in qk_dpbf16. acc is kept per 32 dims as
 * [lo | hi]: lane l of lo holds dims 8l..8l+3, of hi dims 8l+4..8l+7; unscramble_acc orders it. */
static void pv_dpbf16(const uint16_t *vc, const int32_t *table, int first, int n, int bs, long row, int H,
                      int G, int D, const float *s, int max_ctx, float *acc) {
    for (int t = first; t < n; t += 16) {
        const uint16_t *v[16], *vn[16];
        int mn;
        const int m = start_chunk(vc, table, t, n, bs, row, v, vn, &mn);
        for (int h0 = 0, hb; h0 < H; h0 += hb) {
            hb = G - h0 % G < PV_HEADS ? G - h0 % G : PV_HEADS; /* heads h0 .. h0+hb-1 share one KV head */
            const long off = (long)(h0 / G) * D;
            if (h0 % G == 0) prefetch_head(vn, mn, off, D); /* this KV head's slice of the next chunk */
            for (int d0 = 0; d0 < D; d0 += 64) {
                __m512 a[PV_HEADS][4];
                for (int i = 0; i < hb; i++)
                    for (int j = 0; j < 4; j++) a[i][j] = _mm512_load_ps(acc + (long)(h0 + i) * D + d0 + j * 16);
                for (int u = 0; u < m; u += 2) {
                    const uint16_t *x = v[u] + off + d0;
                    const __m512i x0 = load32(x), x1 = load32(x + 32);
                    __m512i y0 = _mm512_setzero_si512(), y1 = y0;
                    if (u + 1 < m) {
                        y0 = load32(v[u + 1] + off + d0);
                        y1 = load32(v[u + 1] + off + d0 + 32);
                    }
                    const __m512bh l0 = (__m512bh)_mm512_unpacklo_epi16(x0, y0), h0v = (__m512bh)_mm512_unpackhi_epi16(x0, y0);
                    const __m512bh l1 = (__m512bh)_mm512_unpacklo_epi16(x1, y1), h1v = (__m512bh)_mm512_unpackhi_epi16(x1, y1);
                    for (int i = 0; i < PV_HEADS; i++) {
                        if (i < hb) {
                            int32_t pair;
                            memcpy(&pair, (const uint16_t *)(s + (long)(h0 + i) * max_ctx) + t - first + u, 4);
                            const __m512bh p = (__m512bh)_mm512_set1_epi32(pair);
                            a[i][0] = _mm512_dpbf16_ps(a[i][0], l0, p);
                            a[i][1] = _mm512_dpbf16_ps(a[i][1], h0v, p);
                            a[i][2] = _mm512_dpbf16_ps(a[i][2], l1, p);
                            a[i][3] = _mm512_dpbf16_ps(a[i][3], h1v, p);
                        }
                    }
                }
                for (int i = 0; i < hb; i++)
                    for (int j = 0; j < 4; j++) _mm512_store_ps(acc + (long)(h0 + i) * D + d0 + j * 16, a[i][j]);
            }
        }
    }
}

/* [lo | hi] per 32 dims (see pv_dpbf16) back to dimension order, in place. */
static void unscramble_acc(float *acc, int len) {
    const __m512i lo_idx = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i hi_idx = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int i = 0; i < len; i += 32) {
        const __m512 lo = _mm512_load_ps(acc + i), hi = _mm512_load_ps(acc + i + 16);
        _mm512_store_ps(acc + i, _mm512_permutex2var_ps(lo, lo_idx, hi));
        _mm512_store_ps(acc + i + 16, _mm512_permutex2var_ps(lo, hi_idx, hi));
    }
}

/* One sequence of a bf16 cache, head_dim % 64 == 0. */
static void decode_one_dpbf16(const uint16_t *q, const uint16_t *kc, const uint16_t *vc, const int32_t *table,
                              int first, int n, uint16_t *out, int H, int KVH, int D, int bs, float scale,
                              float soft_cap, const float *slopes, float *s, int max_ctx) {
    const int G = H / KVH;
    const long row = (long)KVH * D;
    float acc[MAX_Q_ROW] __attribute__((aligned(64)));
    float inv[MAX_HEADS];
    qk_dpbf16(q, kc, table, first, n, bs, row, H, G, D, scale, s, max_ctx);
    prefetch_rows(vc, table, first, n - first < 16 ? n - first : 16, bs, row); /* V's first chunk, during the softmax */
    for (int h = 0; h < H; h++) {
        float *sh = s + (long)h * max_ctx;
        adjust_row(sh, n - first, soft_cap, slopes ? slopes[h] : 0.f, first - (n - 1));
        inv[h] = softmax_row(sh, n - first);
        row_to_bf16(sh, n - first);
    }
    for (int i = 0; i < H * D; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
    pv_dpbf16(vc, table, first, n, bs, row, H, G, D, s, max_ctx, acc);
    unscramble_acc(acc, H * D);
    for (int i = 0; i < H * D; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), (__m256i)_mm512_cvtneps_pbh(
            _mm512_mul_ps(_mm512_load_ps(acc + i), _mm512_set1_ps(inv[i / D]))));
}
#endif

/* One sequence, any head_dim: plain loops. */
static void decode_one_generic(const void *q, const void *kc, const void *vc, const int32_t *table, int first,
                               int n, void *out, int H, int KVH, int D, int bs, float scale, float soft_cap,
                              const float *slopes, float *s,
                               int max_ctx, int is_bf16) {
    const int G = H / KVH;
    const long row = (long)KVH * D;
    float qs[MAX_Q_ROW], acc[MAX_Q_ROW], kv[MAX_Q_ROW];
    for (int i = 0; i < H * D; i++) {
        qs[i] = load_scalar(q, i, is_bf16) * scale;
        acc[i] = 0.f;
    }
    for (int t = first; t < n; t++) {
        const long base = ((long)table[t / bs] * bs + t % bs) * row;
        for (int i = 0; i < row; i++) kv[i] = load_scalar(kc, base + i, is_bf16);
        for (int h = 0; h < H; h++) {
            const float *kh = kv + (h / G) * D, *qh = qs + h * D;
            float dot = 0.f;
            for (int d = 0; d < D; d++) dot += qh[d] * kh[d];
            s[(long)h * max_ctx + t - first] = dot;
        }
    }
    float inv[MAX_HEADS];
    for (int h = 0; h < H; h++) {
        adjust_row(s + (long)h * max_ctx, n - first, soft_cap, slopes ? slopes[h] : 0.f, first - (n - 1));
        inv[h] = softmax_row(s + (long)h * max_ctx, n - first);
    }
    for (int t = first; t < n; t++) {
        const long base = ((long)table[t / bs] * bs + t % bs) * row;
        for (int i = 0; i < row; i++) kv[i] = load_scalar(vc, base + i, is_bf16);
        for (int h = 0; h < H; h++) {
            const float p = s[(long)h * max_ctx + t - first], *vh = kv + (h / G) * D;
            float *ah = acc + h * D;
            for (int d = 0; d < D; d++) ah[d] += p * vh[d];
        }
    }
    for (int i = 0; i < H * D; i++) store_scalar(out, i, acc[i] * inv[i / D], is_bf16);
}

/* Returns 0 on success, 1 when the shapes exceed the kernel's fixed buffers (caller falls back). */
int paged_decode(const void *q, const void *k_cache, const void *v_cache, const int32_t *block_tables,
                 int max_blocks, const int32_t *context_lens, void *out, int num_seqs, int num_heads,
                 int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window,
                 float soft_cap, const float *alibi_slopes, int is_bf16,
                 float *scratch, int max_context, int num_threads) {
    if ((long)num_heads * head_dim > MAX_Q_ROW || head_dim > MAX_HEAD_DIM || num_heads > MAX_HEADS) return 1;
    const long qrow = (long)num_heads * head_dim;
    const int elem = is_bf16 ? 2 : 4;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int b = 0; b < num_seqs; b++) {
        const int n = context_lens[b];
        const int first = (sliding_window > 0 && n > sliding_window) ? n - sliding_window : 0;
        float *s = scratch + (long)omp_get_thread_num() * num_heads * max_context;
        const char *qb = (const char *)q + b * qrow * elem;
        char *ob = (char *)out + b * qrow * elem;
        const int32_t *table = block_tables + (long)b * max_blocks;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        if (head_dim % 64 == 0 && is_bf16) {
            decode_one_dpbf16((const uint16_t *)qb, k_cache, v_cache, table, first, n, (uint16_t *)ob, num_heads,
                              num_kv_heads, head_dim, block_size, scale, soft_cap, alibi_slopes, s, max_context);
            continue;
        }
#endif
#ifdef __AVX512F__
        if (head_dim % 16 == 0 && is_bf16) {
            decode_one_avx512(qb, k_cache, v_cache, table, first, n, ob, num_heads, num_kv_heads, head_dim,
                              block_size, scale, soft_cap, alibi_slopes, s, max_context, 1);
            continue;
        }
        if (head_dim % 16 == 0) {
            decode_one_avx512(qb, k_cache, v_cache, table, first, n, ob, num_heads, num_kv_heads, head_dim,
                              block_size, scale, soft_cap, alibi_slopes, s, max_context, 0);
            continue;
        }
#endif
        decode_one_generic(qb, k_cache, v_cache, table, first, n, ob, num_heads, num_kv_heads, head_dim,
                           block_size, scale, soft_cap, alibi_slopes, s, max_context, is_bf16);
    }
    return 0;
}

/* The cache write before attention: token t's K and V rows (all KV heads, row_len contiguous
 * elements of elem bytes; rows k_stride / v_stride elements apart) go to cache slot slots[t];
 * slots < 0 (padding) are skipped. Returns 2, writing nothing, when a slot is past num_slots. */
int store_kv(const void *k, long k_stride, const void *v, long v_stride, void *k_cache, void *v_cache,
             const int64_t *slots, int tokens, long row_len, long num_slots, int elem) {
    for (int t = 0; t < tokens; t++)
        if (slots[t] >= num_slots) return 2;
    const long bytes = row_len * elem;
    for (int t = 0; t < tokens; t++) {
        if (slots[t] < 0) continue;
        memcpy((char *)k_cache + slots[t] * bytes, (const char *)k + t * k_stride * elem, bytes);
        memcpy((char *)v_cache + slots[t] * bytes, (const char *)v + t * v_stride * elem, bytes);
    }
    return 0;
}

/* ---- fp8 caches (kv_cache_dtype="fp8", see kernels/kv_fp8.py) --------------------------------------
 * Each (slot, KV head) row is head_dim e4m3fn codes and then the row's scale as a little-endian bf16
 * (row stride head_dim + 2 bytes); a value is code * scale. Decode dequantizes a token's row (all KV
 * heads) to float32 once and runs the float loops on it; store quantizes each row with the scale
 * amax / 448 rounded up to bf16, codes rounded to nearest even, as the torch twin does. */

/* e4m3fn code -> float: exponent field 0 is subnormal (m * 2^-9), else the fields move into float32's
 * (exponent bias 7 -> 127) with one shift and one add. 0x7F/0xFF (NaN) are never written. */
static inline float e4m3_to_f32(uint8_t b) {
    const uint32_t em = b & 0x7Fu;
    union { uint32_t u; float f; } c;
    if (em < 8) c.f = (float)em * 0.001953125f;
    else c.u = (em << 20) + (120u << 23);
    return (b & 0x80) ? -c.f : c.f;
}

#ifdef __AVX512F__
/* 16 codes at p -> 16 floats, the same arithmetic as e4m3_to_f32 across lanes. */
static inline __m512 e4m3x16(const uint8_t *p) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    const __m512i em = _mm512_and_si512(b, _mm512_set1_epi32(0x7F));
    __m512 f = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(em, 20), _mm512_set1_epi32(120 << 23)));
    const __mmask16 sub = _mm512_cmplt_epi32_mask(em, _mm512_set1_epi32(8));
    f = _mm512_mask_mul_ps(f, sub, _mm512_cvtepi32_ps(em), _mm512_set1_ps(0.001953125f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}
#endif

static inline float row_scale(const uint8_t *row, int D) {
    uint16_t bits;
    memcpy(&bits, row + D, 2);
    return bf16_to_f32(bits);
}

/* One token's row of all KV heads, dequantized: kv[kh * D + d] = code * scale. */
static inline void dequant_row_fp8(const uint8_t *p, int KVH, int D, float *kv) {
    for (int kh = 0; kh < KVH; kh++, p += D + 2) {
        const float sc = row_scale(p, D);
        float *o = kv + (long)kh * D;
        int d = 0;
#ifdef __AVX512F__
        const __m512 vs = _mm512_set1_ps(sc);
        for (; d + 16 <= D; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(e4m3x16(p + d), vs));
#endif
        for (; d < D; d++) o[d] = e4m3_to_f32(p[d]) * sc;
    }
}

static inline float dot_f32(const float *a, const float *b, int D) {
    float r = 0.f;
    int d = 0;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
    r = _mm512_reduce_add_ps(acc);
#endif
    for (; d < D; d++) r += a[d] * b[d];
    return r;
}

static inline void axpy_f32(float p, const float *x, float *y, int D) {
    int d = 0;
#ifdef __AVX512F__
    const __m512 vp = _mm512_set1_ps(p);
    for (; d + 16 <= D; d += 16) _mm512_storeu_ps(y + d, _mm512_fmadd_ps(vp, _mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d)));
#endif
    for (; d < D; d++) y[d] += p * x[d];
}

/* One sequence of an fp8 cache, any head_dim (AVX-512 loops where head_dim % 16 allows). */
static void decode_one_fp8(const void *q, const uint8_t *kc, const uint8_t *vc, const int32_t *table, int first,
                           int n, void *out, int H, int KVH, int D, int bs, float scale, float soft_cap,
                           const float *slopes, float *s, int max_ctx, int is_bf16) {
    const int G = H / KVH;
    const long row = (long)KVH * (D + 2);
    float qs[MAX_Q_ROW] __attribute__((aligned(64)));
    float acc[MAX_Q_ROW] __attribute__((aligned(64)));
    float kv[MAX_Q_ROW] __attribute__((aligned(64)));
    for (int i = 0; i < H * D; i++) {
        qs[i] = load_scalar(q, i, is_bf16) * scale;
        acc[i] = 0.f;
    }
    for (int t = first; t < n; t++) {
        dequant_row_fp8(kc + ((long)table[t / bs] * bs + t % bs) * row, KVH, D, kv);
        for (int h = 0; h < H; h++) s[(long)h * max_ctx + t - first] = dot_f32(qs + (long)h * D, kv + (long)(h / G) * D, D);
    }
    float inv[MAX_HEADS];
    for (int h = 0; h < H; h++) {
        adjust_row(s + (long)h * max_ctx, n - first, soft_cap, slopes ? slopes[h] : 0.f, first - (n - 1));
        inv[h] = softmax_row(s + (long)h * max_ctx, n - first);
    }
    for (int t = first; t < n; t++) {
        dequant_row_fp8(vc + ((long)table[t / bs] * bs + t % bs) * row, KVH, D, kv);
        for (int h = 0; h < H; h++) axpy_f32(s[(long)h * max_ctx + t - first], kv + (long)(h / G) * D, acc + (long)h * D, D);
    }
    for (int i = 0; i < H * D; i++) store_scalar(out, i, acc[i] * inv[i / D], is_bf16);
}

/* float -> e4m3fn code, round to nearest even, |x| saturated at 448 (the store's scale keeps |x| <= 448). */
static inline uint8_t f32_to_e4m3(float x) {
    union { uint32_t u; float f; } c;
    c.f = x;
    const uint32_t sign = (c.u >> 24) & 0x80u;
    c.u &= 0x7fffffffu;
    const float a = c.f <= 448.f ? c.f : 448.f;
    uint32_t code;
    if (a < 0.015625f) { /* below 2^-6: subnormal, m = a * 2^9 rounded to nearest even (8 is 2^-6 itself) */
        const float v = a * 512.f;
        const uint32_t i = (uint32_t)v;
        const float frac = v - (float)i;
        code = i + (frac > 0.5f || (frac == 0.5f && (i & 1u)));
    } else {
        c.f = a;
        const uint32_t u = c.u + 0x7ffffu + ((c.u >> 20) & 1u); /* round the mantissa to 3 bits */
        code = (u >> 20) - (120u << 3);
    }
    return (uint8_t)(sign | code);
}

#ifdef __AVX512F__
/* f32_to_e4m3 across 16 lanes, the same bits: the subnormal branch's round-half-even is the conversion's
 * default rounding (a * 2^9 < 8 is exact), the normal branch is the same integer arithmetic. */
static inline __m128i e4m3_of16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
    const __m512 a = _mm512_min_ps(_mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff))),
                                   _mm512_set1_ps(448.f)); /* NaN -> 448, as the scalar comparison */
    const __m512i au = _mm512_castps_si512(a);
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(au, _mm512_set1_epi32(0x7ffff)),
                                             _mm512_and_si512(_mm512_srli_epi32(au, 20), _mm512_set1_epi32(1)));
    __m512i code = _mm512_sub_epi32(_mm512_srli_epi32(rounded, 20), _mm512_set1_epi32(120 << 3));
    const __mmask16 sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
    code = _mm512_mask_mov_epi32(code, sub, _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(512.f))));
    return _mm512_cvtepi32_epi8(_mm512_or_si512(code, sign));
}
#endif

/* Rows of D values (bf16 or float32) -> one packed row: D codes, then the bf16 scale. */
static void quantize_row_fp8(const void *x, long i0, int D, int is_bf16, uint8_t *dst) {
    float amax = 0.f;
    int d = 0;
#ifdef __AVX512F__
    if (D % 16 == 0) {
        __m512 m = _mm512_setzero_ps();
        for (; d < D; d += 16) m = _mm512_max_ps(_mm512_abs_ps(load16(x, i0 + d, is_bf16)), m); /* a NaN lane keeps m */
        amax = _mm512_reduce_max_ps(m);
    }
#endif
    for (; d < D; d++) {
        const float a = fabsf(load_scalar(x, i0 + d, is_bf16));
        amax = a > amax ? a : amax;
    }
    union { uint32_t u; float f; } c;
    c.f = (amax > 1e-30f ? amax : 1e-30f) * (1.0f / 448.0f);
    c.u = (c.u + 0xffffu) & 0xffff0000u; /* rounded up to a bf16 value */
    const float sc = c.f;
    d = 0;
#ifdef __AVX512F__
    if (D % 16 == 0)
        for (const __m512 vs = _mm512_set1_ps(sc); d < D; d += 16)
            _mm_storeu_si128((__m128i *)(dst + d), e4m3_of16(_mm512_div_ps(load16(x, i0 + d, is_bf16), vs)));
#endif
    for (; d < D; d++) dst[d] = f32_to_e4m3(load_scalar(x, i0 + d, is_bf16) / sc);
    const uint16_t bits = (uint16_t)(c.u >> 16);
    memcpy(dst + D, &bits, 2);
}

/* store_kv for fp8 caches: token t's K and V (kvh rows of D elements each, bf16 or float32, token rows
 * k_stride / v_stride elements apart) quantized into slot slots[t]; slots < 0 skipped. Returns 2,
 * writing nothing, when a slot is past num_slots. */
int store_kv_fp8(const void *k, long k_stride, const void *v, long v_stride, uint8_t *k_cache, uint8_t *v_cache,
                 const int64_t *slots, int tokens, int kvh, int D, long num_slots, int is_bf16) {
    for (int t = 0; t < tokens; t++)
        if (slots[t] >= num_slots) return 2;
    const long row = (long)kvh * (D + 2);
    for (int t = 0; t < tokens; t++) {
        if (slots[t] < 0) continue;
        for (int h = 0; h < kvh; h++) {
            quantize_row_fp8(k, t * k_stride + (long)h * D, D, is_bf16, k_cache + slots[t] * row + (long)h * (D + 2));
            quantize_row_fp8(v, t * v_stride + (long)h * D, D, is_bf16, v_cache + slots[t] * row + (long)h * (D + 2));
        }
    }
    return 0;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
/* fp8 caches with a bf16 model on CPUs with AVX512-BF16: codes widen to bf16 exactly (e4m3 is a subset
 * of bf16), one KV head's slice of a 16-token chunk at a time into a small buffer, and the dot
 * products are the bf16 path's vdpbf16ps. Scales stay out of the dots: K's multiply the 16 scores of
 * a chunk, V's the probabilities before they are rounded to bf16 (after the softmax sum). */

static const uint16_t E4M3_SUBNORMAL_BF16[32] __attribute__((aligned(64))) = {
    0, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60}; /* m * 2^-9, m = 0..7 */

/* 32 codes -> 32 bf16: exponent bias 7 -> 127 and mantissa 3 -> 7 bits by a shift and an add;
 * subnormals (exponent 0) from the table; the sign moves up 8 bits. */
static inline __m512i e4m3x32_bf16(const uint8_t *p) {
    const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    const __m512i em = _mm512_and_si512(b, _mm512_set1_epi16(0x7F));
    __m512i r = _mm512_add_epi16(_mm512_slli_epi16(em, 4), _mm512_set1_epi16(120 << 7));
    const __mmask32 sub = _mm512_cmplt_epu16_mask(em, _mm512_set1_epi16(8));
    r = _mm512_mask_permutexvar_epi16(r, sub, em, _mm512_load_si512((const void *)E4M3_SUBNORMAL_BF16));
    return _mm512_or_si512(r, _mm512_slli_epi16(_mm512_and_si512(b, _mm512_set1_epi16(0x80)), 8));
}

/* KV head kh of tokens t .. t+m-1 (m <= 16) as bf16 rows of D into buf, their scales into sc. */
static inline void chunk_to_bf16(const uint8_t *cache, const int32_t *table, int t, int m, int bs, long row, int kh,
                                 int D, uint16_t *buf, float *sc) {
    for (int u = 0; u < m; u++) {
        const uint8_t *p = cache + ((long)table[(t + u) / bs] * bs + (t + u) % bs) * row + (long)kh * (D + 2);
        for (int j = 0; j < D; j += 32) _mm512_storeu_si512((void *)(buf + u * D + j), e4m3x32_bf16(p + j));
        sc[u] = row_scale(p, D);
    }
    for (int u = m; u < 16; u++) sc[u] = 0.f;
}

static void qk_fp8_dpbf16(const uint16_t *q, const uint8_t *kc, const int32_t *table, int first, int n, int bs,
                          int KVH, int G, int D, float scale, float *s, int max_ctx) {
    const long row = (long)KVH * (D + 2);
    uint16_t buf[16 * MAX_HEAD_DIM] __attribute__((aligned(64)));
    float sc[16] __attribute__((aligned(64)));
    for (int t = first; t < n; t += 16) {
        const int m = n - t < 16 ? n - t : 16;
        for (int kh = 0; kh < KVH; kh++) {
            chunk_to_bf16(kc, table, t, m, bs, row, kh, D, buf, sc);
            const __m512 ks = _mm512_mul_ps(_mm512_load_ps(sc), _mm512_set1_ps(scale));
            for (int g = 0; g < G; g++) {
                const int h = kh * G + g;
                const uint16_t *qh = q + (long)h * D;
                __m512 a[16];
                for (int u = 0; u < 16; u++) {
                    a[u] = _mm512_setzero_ps();
                    if (u < m)
                        for (int j = 0; j < D / 32; j++)
                            a[u] = _mm512_dpbf16_ps(a[u], (__m512bh)load32(buf + u * D + j * 32),
                                                    (__m512bh)load32(qh + j * 32));
                }
                _mm512_mask_storeu_ps(s + (long)h * max_ctx + t - first, (__mmask16)((1u << m) - 1),
                                      _mm512_mul_ps(sum16x16(a), ks));
            }
        }
    }
}

/* acc += P.V as pv_dpbf16 (same [lo | hi] accumulator order), V's rows widened per chunk and KV head. */
static void pv_fp8_dpbf16(const uint8_t *vc, const int32_t *table, int first, int n, int bs, int KVH, int G, int D,
                          const float *s, int max_ctx, float *acc) {
    const long row = (long)KVH * (D + 2);
    uint16_t buf[17 * MAX_HEAD_DIM] __attribute__((aligned(64))); /* row 16: zeros, the odd chunk's partner */
    float sc[16];
    memset(buf + 16 * D, 0, D * sizeof(uint16_t));
    for (int t = first; t < n; t += 16) {
        const int m = n - t < 16 ? n - t : 16;
        for (int kh = 0; kh < KVH; kh++) {
            chunk_to_bf16(vc, table, t, m, bs, row, kh, D, buf, sc);
            for (int h0 = kh * G, hb; h0 < (kh + 1) * G; h0 += hb) {
                hb = (kh + 1) * G - h0 < PV_HEADS ? (kh + 1) * G - h0 : PV_HEADS;
                for (int d0 = 0; d0 < D; d0 += 64) {
                    __m512 a[PV_HEADS][4];
                    for (int i = 0; i < hb; i++)
                        for (int j = 0; j < 4; j++) a[i][j] = _mm512_load_ps(acc + (long)(h0 + i) * D + d0 + j * 16);
                    for (int u = 0; u < m; u += 2) {
                        const uint16_t *x = buf + u * D + d0, *y = u + 1 < m ? buf + (u + 1) * D + d0 : buf + 16 * D + d0;
                        const __m512i x0 = load32(x), x1 = load32(x + 32), y0 = load32(y), y1 = load32(y + 32);
                        const __m512bh l0 = (__m512bh)_mm512_unpacklo_epi16(x0, y0), h0v = (__m512bh)_mm512_unpackhi_epi16(x0, y0);
                        const __m512bh l1 = (__m512bh)_mm512_unpacklo_epi16(x1, y1), h1v = (__m512bh)_mm512_unpackhi_epi16(x1, y1);
                        for (int i = 0; i < PV_HEADS; i++) {
                            if (i < hb) {
                                int32_t pair;
                                memcpy(&pair, (const uint16_t *)(s + (long)(h0 + i) * max_ctx) + t - first + u, 4);
                                const __m512bh p = (__m512bh)_mm512_set1_epi32(pair);
                                a[i][0] = _mm512_dpbf16_ps(a[i][0], l0, p);
                                a[i][1] = _mm512_dpbf16_ps(a[i][1], h0v, p);
                                a[i][2] = _mm512_dpbf16_ps(a[i][2], l1, p);
                                a[i][3] = _mm512_dpbf16_ps(a[i][3], h1v, p);
                            }
                        }
                    }
                    for (int i = 0; i < hb; i++)
                        for (int j = 0; j < 4; j++) _mm512_store_ps(acc + (long)(h0 + i) * D + d0 + j * 16, a[i][j]);
                }
            }
        }
    }
}

/* One sequence of an fp8 cache, bf16 q/out, head_dim % 64 == 0. */
static void decode_one_fp8_dpbf16(const uint16_t *q, const uint8_t *kc, const uint8_t *vc, const int32_t *table,
                                  int first, int n, uint16_t *out, int H, int KVH, int D, int bs, float scale,
                                  float soft_cap, const float *slopes, float *s, int max_ctx) {
    const int G = H / KVH;
    const long row = (long)KVH * (D + 2);
    float acc[MAX_Q_ROW] __attribute__((aligned(64)));
    float inv[MAX_HEADS];
    qk_fp8_dpbf16(q, kc, table, first, n, bs, KVH, G, D, scale, s, max_ctx);
    for (int h = 0; h < H; h++) {
        float *sh = s + (long)h * max_ctx;
        adjust_row(sh, n - first, soft_cap, slopes ? slopes[h] : 0.f, first - (n - 1));
        inv[h] = softmax_row(sh, n - first);
    }
    for (int t = first; t < n; t++) { /* V's scales into the probabilities, before their bf16 rounding */
        const uint8_t *p = vc + ((long)table[t / bs] * bs + t % bs) * row;
        for (int kh = 0; kh < KVH; kh++) {
            const float vs = row_scale(p + (long)kh * (D + 2), D);
            for (int g = 0; g < G; g++) s[(long)(kh * G + g) * max_ctx + t - first] *= vs;
        }
    }
    for (int h = 0; h < H; h++) row_to_bf16(s + (long)h * max_ctx, n - first);
    for (int i = 0; i < H * D; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
    pv_fp8_dpbf16(vc, table, first, n, bs, KVH, G, D, s, max_ctx, acc);
    unscramble_acc(acc, H * D);
    for (int i = 0; i < H * D; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), (__m256i)_mm512_cvtneps_pbh(
            _mm512_mul_ps(_mm512_load_ps(acc + i), _mm512_set1_ps(inv[i / D]))));
}
#endif

/* Returns 0 on success, 1 when the shapes exceed the kernel's fixed buffers (caller falls back). */
int paged_decode_fp8(const void *q, const uint8_t *k_cache, const uint8_t *v_cache, const int32_t *block_tables,
                     int max_blocks, const int32_t *context_lens, void *out, int num_seqs, int num_heads,
                     int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window,
                     float soft_cap, const float *alibi_slopes, int is_bf16,
                     float *scratch, int max_context, int num_threads) {
    if ((long)num_heads * head_dim > MAX_Q_ROW || head_dim > MAX_HEAD_DIM || num_heads > MAX_HEADS) return 1;
    const long qrow = (long)num_heads * head_dim;
    const int elem = is_bf16 ? 2 : 4;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int b = 0; b < num_seqs; b++) {
        const int n = context_lens[b];
        const int first = (sliding_window > 0 && n > sliding_window) ? n - sliding_window : 0;
        float *s = scratch + (long)omp_get_thread_num() * num_heads * max_context;
#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
        if (head_dim % 64 == 0 && is_bf16) {
            decode_one_fp8_dpbf16((const uint16_t *)((const char *)q + b * qrow * elem), k_cache, v_cache,
                                  block_tables + (long)b * max_blocks, first, n,
                                  (uint16_t *)((char *)out + b * qrow * elem), num_heads, num_kv_heads, head_dim,
                                  block_size, scale, soft_cap, alibi_slopes, s, max_context);
            continue;
        }
#endif
        decode_one_fp8((const char *)q + b * qrow * elem, k_cache, v_cache, block_tables + (long)b * max_blocks,
                       first, n, (char *)out + b * qrow * elem, num_heads, num_kv_heads, head_dim, block_size, scale,
                       soft_cap, alibi_slopes, s, max_context, is_bf16);
    }
    return 0;
}
