/* The decoder layers of a Llama-family decode step on GGUF weights in one call (issue 22: single-stream decode).
 *
 * core/models/llama_cpu_decode.py runs a decode step as the kernel calls the model's modules make; from Python
 * that is ~10 ctypes calls per layer, ~3 ms of a ~12 ms single-stream step on a 2-core CPU. This file makes the
 * same calls, in the same order, on the same buffers, from C: the kernels are the other libraries' own
 * functions, passed in as pointers (rms_norm, rotary_embedding and act_and_mul of cpu_layer_ops.c, store_kv
 * and paged_decode of cpu_paged_decode.c, gguf_matmul_q8 of cpu_gguf.c), so the results are the modules' bit
 * for bit. Any status but 0 stops the loop and is returned (the caller then runs the step in Python).
 */
#include <stdint.h>
#include <string.h>

typedef int (*rms_norm_fn)(const void *x, long x_stride, const void *residual, long r_stride, void *res_out,
                           void *out, const float *weight, int rows, int cols, float eps, int round_before_weight,
                           int is_bf16, int threads);
typedef int (*matmul_fn)(const void *x, int x_bf16, long x_stride, long m, const uint8_t *w, long row_bytes,
                         int type, long rows, long k, void *out, int out_bf16, long out_stride, int threads);
typedef int (*rotary_fn)(void *x, long x_stride, int rows, int heads, int head_dim, const int64_t *positions,
                         const void *cos, const void *sin, long max_position, int half, int neox, int is_bf16,
                         int threads);
typedef int (*store_fn)(const void *k, long k_stride, const void *v, long v_stride, void *k_cache, void *v_cache,
                        const int64_t *slots, int tokens, long row_len, long num_slots, int elem);
typedef int (*store_fp8_fn)(const void *k, long k_stride, const void *v, long v_stride, uint8_t *k_cache,
                            uint8_t *v_cache, const int64_t *slots, int tokens, int kvh, int D, long num_slots,
                            int is_bf16);
typedef int (*decode_fn)(const void *q, const void *k_cache, const void *v_cache, const int32_t *block_tables,
                         int max_blocks, const int32_t *context_lens, void *out, int num_seqs, int num_heads,
                         int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window,
                         float soft_cap, const float *alibi_slopes, int is_bf16, float *scratch, int max_context,
                         int num_threads);
typedef int (*act_fn)(const void *x, long x_stride, void *out, int rows, int d, int act, int gated, int is_bf16,
                      int threads);

/* One GGUF weight: blocks, bytes per row, ggml type, rows (outputs) and columns (inputs). */
typedef struct {
    const uint8_t *blocks;
    long row_bytes;
    int type;
    long rows, cols;
} weight_t;

typedef struct {
    const float *input_norm, *post_norm;
    weight_t qkv, o, gate_up, down;
    void *k_cache, *v_cache;
    const void *cos, *sin;
    long max_position;
    int half, neox;
    float scale;
} layer_t;

/* The model: kernels, sizes, layers. An fp8 KV cache (rows of e4m3 codes and a scale) has store_kv_fp8 set
 * (store_kv unused) and paged_decode_fp8 as paged_decode. */
typedef struct {
    rms_norm_fn rms_norm;
    matmul_fn matmul;
    rotary_fn rotary;
    store_fn store_kv;
    store_fp8_fn store_kv_fp8;
    decode_fn paged_decode;
    act_fn act_and_mul;
    int num_layers, width, heads, kv_heads, head_dim, intermediate, block_size, is_bf16, silu;
    long num_slots;
    float eps;
    const layer_t *layers;
} model_t;

/* One step's inputs and buffers (n rows; buffers of the model's dtype, element size elem). */
typedef struct {
    int n, threads, team, max_blocks, window;
    const int64_t *positions, *slots;
    const int32_t *tables, *lens;
    float *scratch;
    void *hidden;      /* [n, width]: the embeddings in, the last layer's MLP output back */
    void *residual;    /* [n, width]: the residual stream after the last layer */
    void *normed, *summed, *qkv, *q, *attn, *o, *gate_up, *act; /* scratch rows */
} step_t;

#define TRY(call) do { const int status_ = (call); if (status_) return status_; } while (0)

static int linear(const model_t *m, const weight_t *w, const void *x, void *out, const step_t *s) {
    return m->matmul(x, m->is_bf16, w->cols, s->n, w->blocks, w->row_bytes, w->type, w->rows, w->cols, out,
                     m->is_bf16, w->rows, s->threads);
}

/* The layers of one decode step: hidden -> (hidden, residual) for the final norm, as LlamaDecoderLayer does it. */
int decode_layers(const model_t *m, const step_t *s) {
    const int n = s->n, W = m->width, H = m->heads, KVH = m->kv_heads, D = m->head_dim, bf = m->is_bf16;
    const long elem = bf ? 2 : 4, q_size = (long)H * D, kv_size = (long)KVH * D, qkv_row = q_size + 2 * kv_size;
    char *hidden = (char *)s->hidden, *residual = (char *)s->residual, *summed = (char *)s->summed;
    for (int i = 0; i < m->num_layers; i++) {
        const layer_t *L = &m->layers[i];
        if (i == 0) {
            memcpy(residual, hidden, (size_t)n * W * elem);
            TRY(m->rms_norm(hidden, W, NULL, 0, NULL, s->normed, L->input_norm, n, W, m->eps, 1, bf, s->threads));
        } else {
            TRY(m->rms_norm(hidden, W, residual, W, summed, s->normed, L->input_norm, n, W, m->eps, 1, bf, s->threads));
            char *t = residual; residual = summed; summed = t;
        }
        TRY(linear(m, &L->qkv, s->normed, s->qkv, s));
        TRY(m->rotary(s->qkv, qkv_row, n, H + KVH, D, s->positions, L->cos, L->sin, L->max_position, L->half, L->neox,
                      bf, s->threads));
        const char *qkv = (const char *)s->qkv;
        if (m->store_kv_fp8)
            TRY(m->store_kv_fp8(qkv + q_size * elem, qkv_row, qkv + (q_size + kv_size) * elem, qkv_row, L->k_cache,
                                L->v_cache, s->slots, n, KVH, D, m->num_slots, bf));
        else
            TRY(m->store_kv(qkv + q_size * elem, qkv_row, qkv + (q_size + kv_size) * elem, qkv_row, L->k_cache,
                            L->v_cache, s->slots, n, kv_size, m->num_slots, (int)elem));
        const void *q = s->qkv;
        if (n > 1) { /* the decode kernel reads [n, H, D] rows back to back */
            for (int r = 0; r < n; r++) memcpy((char *)s->q + r * q_size * elem, qkv + r * qkv_row * elem, q_size * elem);
            q = s->q;
        }
        TRY(m->paged_decode(q, L->k_cache, L->v_cache, s->tables, s->max_blocks, s->lens, s->attn, n, H, KVH, D,
                            m->block_size, L->scale, 0, 0.0f, NULL, bf, s->scratch, s->window, s->team));
        TRY(linear(m, &L->o, s->attn, s->o, s));
        TRY(m->rms_norm(s->o, W, residual, W, summed, s->normed, L->post_norm, n, W, m->eps, 1, bf, s->threads));
        { char *t = residual; residual = summed; summed = t; }
        TRY(linear(m, &L->gate_up, s->normed, s->gate_up, s));
        TRY(m->act_and_mul(s->gate_up, 2L * m->intermediate, s->act, n, m->intermediate, m->silu, 1, bf, s->threads));
        TRY(linear(m, &L->down, s->act, hidden, s));
    }
    if (residual != (char *)s->residual) memcpy(s->residual, residual, (size_t)n * W * elem);
    return 0;
}
