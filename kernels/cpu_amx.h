/* A batch times a quantized weight on AMX-BF16 tiles, the weight dequantized 16 rows at a time into a
 * buffer that stays in L1 (issue 22: quantized matmuls must not cost batch throughput).
 *
 * Why: for a batch of many rows in a bf16 model, dequantizing a whole layer to bf16 and handing it to
 * torch's GEMM writes and reads back 2 bytes a weight through memory and reorders the weight for
 * oneDNN on every call; here each 32-row slice of the weight is dequantized (by the caller's `fill`)
 * straight into the layout of AMX A tiles (16 rows x 32 bf16, plain row-major) and multiplied by
 * every activation tile while it is in L1, so the weight is read once, in its quantized form.
 * The activations are the B operand: rounded to bf16 once per call and laid out in AMX's pair-
 * interleaved (VNNI) form, 16 rows a tile. Products of bf16 values are exact in float32 and summed in
 * float32 (tdpbf16ps), as a bf16 GEMM does; the order of the sum is the tile's, so a result may differ
 * from oneDNN's in the last float32 bits, and it does not depend on the other rows of the batch.
 *
 * Header-only (static), included by cpu_gguf.c; compiled where the compiler targets AMX-BF16
 * (-march=native on such a CPU). amx_available() also asks Linux for the tile state (arch_prctl).
 */
#ifndef PAGEDLLM_CPU_AMX_H
#define PAGEDLLM_CPU_AMX_H
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#define CPU_AMX 1
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <omp.h>
#include "cpu_simd.h"

#define AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_XFEATURE_XTILEDATA 18

/* Writes weight rows n0 .. n0 + count - 1 (count <= 16) as bf16 into dst (rows ld elements apart),
 * zeros in columns k .. ld - 1; tmp: a float32 scratch of ld floats. */
typedef void (*amx_fill_fn)(const void *ctx, long n0, long count, uint16_t *dst, long ld, float *tmp);

static int amx_state; /* 0 unknown, 1 usable, -1 not */

static int amx_available(void) {
    if (amx_state == 0) amx_state = syscall(SYS_arch_prctl, AMX_ARCH_REQ_XCOMP_PERM, AMX_XFEATURE_XTILEDATA) == 0 ? 1 : -1;
    return amx_state == 1;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

static void amx_configure(void) {
    amx_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) { /* 0-3: float32 results, 4-5: weights, 6-7: activations; all 16 x 64 bytes */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* dst = the transpose of the 16 x 16 dwords at src (rows `stride` dwords apart in src, `dst_stride` in dst). */
static inline void amx_transpose16(const uint32_t *src, long stride, uint32_t *dst, long dst_stride) {
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(src + i * stride);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + j], lane L: column 4L + j of rows i .. i + 3 */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 8; j++) {
        _mm512_storeu_si512(dst + j * dst_stride, _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88));
        _mm512_storeu_si512(dst + (j + 8) * dst_stride, _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd));
    }
}

/* out[i, n] = x[i, :] . W[n, :] for i < m, n < rows (float32 out, or bf16 rounded to nearest even when
 * out_bf16, rows out_stride elements apart); x float32 or bf16 (x_bf16), rows x_stride elements apart. Returns 0, 4 (out of memory) or 6 (no AMX here).
 * A tiles: 16 weight rows x 32 columns (bf16, the rows `fill` writes); B tiles: 32 columns x 16 activation
 * rows in pairs (B[p][r] = the bf16 pair x[r, 2p .. 2p + 1]); a result tile [weight row][activation row]
 * is transposed into out (16 x 16 floats: fewer than the weight tiles it took when m < k / 2). */
static int amx_matmul(const void *x, int x_bf16, long x_stride, long m, long rows, long k, amx_fill_fn fill,
                      const void *ctx, void *out, long out_stride, int out_bf16, int threads) {
    if (!amx_available()) return 6;
    const long ld = (k + 31) / 32 * 32, chunks = ld / 32, mtiles = (m + 15) / 16;
    /* xv[t][c]: the B tile of activation rows 16 t .., columns 32 c ..: pair q of row i at
     * ((t * chunks + q / 16) * 16 + q % 16) * 16 + i % 16 (uint32 units), zero past m and k */
    uint32_t *xv = (uint32_t *)calloc((size_t)(mtiles * chunks * 256), sizeof(uint32_t));
    uint16_t *row = (uint16_t *)calloc((size_t)ld, sizeof(uint16_t));
    if (xv == NULL || row == NULL) {
        free(xv);
        free(row);
        return 4;
    }
    for (long i = 0; i < m; i++) {
        if (x_bf16) memcpy(row, (const uint16_t *)x + i * x_stride, (size_t)k * sizeof(uint16_t));
        else f32_to_bf16_row((const float *)x + i * x_stride, row, k);
        const uint32_t *src = (const uint32_t *)row;
        uint32_t *dst = xv + (i / 16) * chunks * 256 + i % 16;
        for (long q = 0; q < ld / 2; q++) dst[q * 16] = src[q];
    }
    free(row);
    /* 32 weight rows (two A tiles) x 32 activation rows (two B tiles) a step: four independent float32
     * accumulators (tiles 0-3), enough to cover tdpbf16ps's latency */
    const long slices = (rows + 31) / 32;
    const int team = threads > 0 ? (int)(threads < slices ? threads : slices) : 1;
    int status = 0;
#pragma omp parallel num_threads(team)
    {
        uint16_t *w = (uint16_t *)aligned_alloc(64, (size_t)(32 * ld) * sizeof(uint16_t));
        float *tmp = (float *)malloc((size_t)ld * sizeof(float));
        float acc[16 * 16], part[16 * 16];
        const int ok = w != NULL && tmp != NULL;
        if (!ok) {
#pragma omp atomic write
            status = 4;
        } else {
            amx_configure();
        }
#pragma omp for schedule(static)
        for (long s = 0; s < slices; s++) {
            if (!ok) continue;
            const long n0 = s * 32, count = rows - n0 < 32 ? rows - n0 : 32;
            fill(ctx, n0, count, w, ld, tmp);
            if (count < 32) memset(w + count * ld, 0, (size_t)((32 - count) * ld) * sizeof(uint16_t));
            const uint16_t *w1 = w + 16 * ld;
            for (long t0 = 0; t0 < mtiles; t0 += 2) {
                const int two = t0 + 1 < mtiles;
                const uint32_t *b0 = xv + t0 * chunks * 256, *b1 = b0 + chunks * 256;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (long c = 0; c < chunks; c++) {
                    _tile_loadd(4, w + c * 32, ld * 2);
                    _tile_loadd(5, w1 + c * 32, ld * 2);
                    _tile_loadd(6, b0 + c * 256, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(2, 5, 6);
                    if (two) {
                        _tile_loadd(7, b1 + c * 256, 64);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                /* tile 2 h + j: weight rows n0 + 16 h .., activation rows 16 (t0 + j) .. */
                for (int j = 0; j < 1 + two; j++) {
                    const long r0 = 16 * (t0 + j), nr = m - r0 < 16 ? m - r0 : 16;
                    for (int h = 0; h < 2; h++) {
                        const long nc = count - 16 * h < 16 ? count - 16 * h : 16;
                        if (nc <= 0) continue;
                        if (h == 0 && j == 0) _tile_stored(0, acc, 64);
                        else if (h == 0) _tile_stored(1, acc, 64);
                        else if (j == 0) _tile_stored(2, acc, 64);
                        else _tile_stored(3, acc, 64);
                        const long at = r0 * out_stride + n0 + 16 * h;
                        if (out_bf16) { /* rounded as torch's .to(torch.bfloat16): no float32 copy of out */
                            amx_transpose16((const uint32_t *)acc, 16, (uint32_t *)part, 16);
                            for (long r = 0; r < nr; r++)
                                f32_to_bf16_row(part + r * 16, (uint16_t *)out + at + r * out_stride, nc);
                            continue;
                        }
                        float *o = (float *)out + at;
                        if (nr == 16 && nc == 16) { /* a whole tile: transposed straight into out */
                            amx_transpose16((const uint32_t *)acc, 16, (uint32_t *)o, out_stride);
                            continue;
                        }
                        amx_transpose16((const uint32_t *)acc, 16, (uint32_t *)part, 16);
                        for (long r = 0; r < nr; r++) memcpy(o + r * out_stride, part + r * 16, (size_t)nc * sizeof(float));
                    }
                }
            }
        }
        if (ok) _tile_release();
        free(w);
        free(tmp);
    }
    free(xv);
    return status;
}
#endif
#endif
