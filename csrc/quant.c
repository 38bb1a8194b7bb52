/* Matrix products over GGUF-quantized weight rows, on CPU.
 *
 * The weights stay in the GGUF's own blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; F32 and F16 rows too). As
 * llama.cpp does, each token's activations are quantized once per call to 16-bit integers (an fp32 scale per
 * 32 values for the 32-value types, per 256 for the K-quants), and each output row n of y[s, n] = sum_k x[s, k]
 * * w[n, k] is computed from the row's blocks in integer arithmetic (AVX2 madd) with the scales applied in
 * fp32 (a K-quant's sub-block scales in the integers, once per super-block in fp32): the product of the
 * dequantized matrix (as gguf-py and ggml's dequantize_row_* define it) with the rounded activations, up to
 * the order of fp32 additions. F32/F16 rows multiply the fp32 activations.
 *
 * Entry points (plain C ABI, called through ctypes from tabfill/kernels/quant.py):
 *   tf_matmul       y[S, ldy] = x[S, K] @ W^T for W = row-concatenated parts (S small: decode and drafts)
 *   tf_dequant      fp32 rows of one part (embedding lookup; weight tiles for the prefill GEMM)
 *   tf_quantize_act the activations' 16-bit blocks (for the reference twin's tests)
 *
 * Speed: AVX2 + FMA + F16C kernels chosen at run time (__builtin_cpu_supports); without them a portable
 * path computes the same integer products in plain C. Where AVX-512 VNNI is there too, the tiles (csrc/tiles.h)
 * are a second build of the same code for it, the same results bit for bit. Work is split in blocks
 * of output rows over a small persistent thread pool (the calling thread plus nthreads - 1 workers that spin
 * briefly between calls, then sleep), claimed one block at a time.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

enum { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_Q4_K = 12, T_Q6_K = 14 };

typedef struct {
    int32_t type;         /* GGML type id */
    int32_t rows;         /* output rows of this part */
    const uint8_t *data;  /* rows * row_bytes bytes */
    int64_t row_bytes;
} tf_part;

/* ---- fp16 ------------------------------------------------------------------------------------------ */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal */
            float f = ldexpf((float)mant, -24);
            return (h & 0x8000) ? -f : f;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* fp32 -> fp16, rounded to nearest even (as torch's .half() and F16C's vcvtps2ph with imm 0): overflow to
 * infinity, fp16 subnormals kept, NaN stays NaN. */
static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, abs = x & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00 | ((abs >> 13) & 0x3FF)); /* NaN */
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00); /* rounds to >= 65536: infinity */
    if (abs < 0x38800000u) { /* below 2^-14: an fp16 subnormal or zero, in units of 2^-24 */
        int e = (int)(abs >> 23);
        if (e < 102) return (uint16_t)sign; /* below 2^-25: rounds to zero */
        uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u; /* the value is mant * 2^(e - 150) */
        int shift = 126 - e; /* 14..24 */
        uint32_t q = mant >> shift, rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((abs - 0x38000000u) >> 13), rest = abs & 0x1FFF; /* rebias 127 -> 15 */
    if (rest > 0x1000 || (rest == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---- portable dequantization (the C reference; also the non-AVX2 path) ------------------------------ */

static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static int block_elems(int type) {
    switch (type) {
    case T_F32: case T_F16: return 1;
    case T_Q4_0: case T_Q4_1: case T_Q8_0: return 32;
    case T_Q4_K: case T_Q6_K: return 256;
    default: return 0;
    }
}

/* compiled twice (AVX2 and baseline), chosen at load time */
__attribute__((target_clones("arch=haswell", "default")))
static void dequant_row_generic(int type, const uint8_t *src, int K, float *y) {
    switch (type) {
    case T_F32:
        memcpy(y, src, (size_t)K * 4);
        break;
    case T_F16:
        for (int k = 0; k < K; k++) y[k] = half_to_float(rd16(src + 2 * k));
        break;
    case T_Q4_0:
        for (int b = 0; b < K / 32; b++, src += 18, y += 32) {
            float d = half_to_float(rd16(src));
            for (int j = 0; j < 16; j++) {
                y[j] = ((int)(src[2 + j] & 0xF) - 8) * d;
                y[j + 16] = ((int)(src[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    case T_Q4_1:
        for (int b = 0; b < K / 32; b++, src += 20, y += 32) {
            float d = half_to_float(rd16(src)), m = half_to_float(rd16(src + 2));
            for (int j = 0; j < 16; j++) {
                y[j] = (src[4 + j] & 0xF) * d + m;
                y[j + 16] = (src[4 + j] >> 4) * d + m;
            }
        }
        break;
    case T_Q8_0:
        for (int b = 0; b < K / 32; b++, src += 34, y += 32) {
            float d = half_to_float(rd16(src));
            for (int j = 0; j < 32; j++) y[j] = (int8_t)src[2 + j] * d;
        }
        break;
    case T_Q4_K:
        for (int b = 0; b < K / 256; b++, src += 144) {
            float d = half_to_float(rd16(src)), dmin = half_to_float(rd16(src + 2));
            const uint8_t *scales = src + 4, *q = src + 16;
            for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
                uint8_t sc, m;
                scale_min_k4(is, scales, &sc, &m);
                float d1 = d * sc, m1 = dmin * m;
                scale_min_k4(is + 1, scales, &sc, &m);
                float d2 = d * sc, m2 = dmin * m;
                for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
            }
        }
        break;
    case T_Q6_K:
        for (int b = 0; b < K / 256; b++, src += 210) {
            const uint8_t *ql = src, *qh = src + 128;
            const int8_t *sc = (const int8_t *)(src + 192);
            float d = half_to_float(rd16(src + 208));
            for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * sc[is + 0] * q1;
                    y[l + 32] = d * sc[is + 2] * q2;
                    y[l + 64] = d * sc[is + 4] * q3;
                    y[l + 96] = d * sc[is + 6] * q4;
                }
            }
        }
        break;
    }
}

__attribute__((target_clones("arch=haswell", "default")))
static float dot_generic(const float *a, const float *b, int K) {
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int i = 0; i < 8; i++) acc[i] += a[k + i] * b[k + i];
    float s = 0;
    for (int i = 0; i < 8; i++) s += acc[i];
    for (; k < K; k++) s += a[k] * b[k];
    return s;
}

/* ---- AVX2 + FMA + F16C ------------------------------------------------------------------------------ */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline float h2f(const uint8_t *p) { return _cvtsh_ss(rd16(p)); }

/* One F32/F16 row times fp32 activations. */
AVX2 static float row_dot_float_avx2(int type, const uint8_t *src, const float *x, int K) {
    __m256 acc = _mm256_setzero_ps();
    if (type == T_F32) {
        const float *w = (const float *)src;
        for (int k = 0; k < K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), acc);
    } else {
        for (int k = 0; k < K; k += 8)
            acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * k))), _mm256_loadu_ps(x + k), acc);
    }
    return hsum8(acc);
}

static int force_portable = 0;

static int have_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached && !force_portable;
}

/* The first n - n % 8 values as fp16 (F16C, rounded to nearest even); returns how many. */
AVX2 static int kv_store_half_avx2(uint16_t *out, const float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    return i;
}

/* ---- 16-bit activations: what the integer kernels multiply the weight blocks with -------------------- */

/* x[K] -> per block b of 32 values: q = round(x / d) (to nearest even, via x * (1/d)), ds[b] = d * sum(q) (for
 * the offsets of Q4_0/Q4_1/Q4_K), where d = max|x| / 32767 over a group of blocks: over the block itself for
 * the 32-value types (Q4_0, Q4_1, Q8_0), over its 256-value super-block for the K-quants (Q4_K, Q6_K: `group`
 * 8), so that a K-quant row's integer products sum over a whole super-block before one fp32 scale is applied
 * (the tiles below). The products are exactly those of the dequantized weights with q * d, up to the order of
 * fp32 sums. NOTE: 16-bit, not llama.cpp's 8-bit: with 8-bit blocks 3 of 24 of the bench's greedy first lines
 * differed from the fp32 model's; 16 bits cost one more madd per 32 values and keep the rounding ~256x below
 * it. Rounding Qwen2.5-Coder-1.5B's activations per 32 or per 256 values changed none of 24 greedy first
 * lines (largest first-step logit change 0.0014 and 0.0026: the fp32 model with rounded inputs,
 * /work/runs/actround.py, 2026-12-07). */
#define KQ_GROUP 8 /* blocks of 32 per activation scale for the K-quants */
#define ACT_MAX 32767.0f

typedef struct {
    int16_t *q;  /* [K] */
    float *d;    /* [K / 32] */
    float *ds;   /* [K / 32] */
    /* d and ds of this token's group of 8 (tokens 8g..8g+7 of a product), block-major: [K / 32][8] (what
     * a tile over them loads as one vector per block); NULL for a product of one token */
    float *group_d, *group_ds;
} qact;

static void quantize_act_generic(const float *x, int K, qact a, int group) {
    for (int g = 0; g < K / 32; g += group) {
        float amax = 0.0f;
        for (int j = 0; j < 32 * group; j++) amax = fmaxf(amax, fabsf(x[32 * g + j]));
        float d = amax / ACT_MAX, id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int b = g; b < g + group; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                int v = (int)nearbyintf(x[32 * b + j] * id);
                a.q[32 * b + j] = (int16_t)v;
                sum += v;
            }
            a.d[b] = d;
            a.ds[b] = d * (float)sum;
        }
    }
}

AVX2 static void quantize_act_avx2(const float *x, int K, qact a, int split, int group) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    float d = 0.0f;
    __m256 mul = _mm256_setzero_ps();
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        if (b % group == 0) { /* the scale of blocks b .. b + group - 1 */
            __m256 m = _mm256_setzero_ps();
            for (int k = 0; k < 32 * group; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + k)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            d = _mm_cvtss_f32(h) / ACT_MAX;
            mul = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        }
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const int round = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), round));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), round));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), round));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), round));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        /* 32 int32 -> 32 int16 in order (packs work within 128-bit lanes: permute the quadwords back) */
        __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
        __m256i p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
        if (split) { /* values 0, 2, .., 30 then 1, 3, .., 31: each lane's even words, then its odd ones */
            const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                   0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
            __m256i a = _mm256_shuffle_epi8(p0, order), c = _mm256_shuffle_epi8(p1, order);
            p0 = _mm256_permute4x64_epi64(_mm256_unpacklo_epi64(a, c), 0xD8);
            p1 = _mm256_permute4x64_epi64(_mm256_unpackhi_epi64(a, c), 0xD8);
        }
        _mm256_storeu_si256((__m256i *)(a.q + 32 * b), p0);
        _mm256_storeu_si256((__m256i *)(a.q + 32 * b + 16), p1);
        a.d[b] = d;
        a.ds[b] = d * (float)_mm_cvtsi128_si32(s4);
    }
}

/* One block of a 32-value type (Q4_0, Q4_1, Q8_0) as integers: w[j] = scale * q[j] + offset. The portable
 * integer path (no AVX2), and what the AVX2 kernels compute block by block. */
static void unpack_block32(int type, const uint8_t *row, int b, int8_t q[32], float *scale, float *offset) {
    *offset = 0.0f;
    memset(q, 0, 32);
    *scale = 0.0f;
    switch (type) {
    case T_Q4_0: case T_Q4_1: {
        const uint8_t *blk = row + (int64_t)b * (type == T_Q4_0 ? 18 : 20), *qs = blk + (type == T_Q4_0 ? 2 : 4);
        int zero = type == T_Q4_0 ? 8 : 0;
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)((qs[j] & 0xF) - zero);
            q[j + 16] = (int8_t)((qs[j] >> 4) - zero);
        }
        *scale = half_to_float(rd16(blk));
        if (type == T_Q4_1) *offset = half_to_float(rd16(blk + 2));
        break;
    }
    case T_Q8_0: {
        const uint8_t *blk = row + (int64_t)b * 34;
        memcpy(q, blk + 2, 32);
        *scale = half_to_float(rd16(blk));
        break;
    }
    }
}

/* A K-quant block of 32 as integers times their sub-block scales: w[j] = q[j] * sc (Q4_K: q 0..15, sc 0..63;
 * Q6_K: q - 32 in -32..31 times the 8-bit scale of its 16 values), in 16 bits (|w| <= 4096); the value is
 * d * w[j] + offset with d the super-block's scale (Q4_K's offset: -dmin * m). */
static void unpack_kblock32(int type, const uint8_t *row, int b, int16_t w[32], float *d, float *offset) {
    *offset = 0.0f;
    if (type == T_Q4_K) {
        const uint8_t *blk = row + (int64_t)(b / 8) * 144, *qs = blk + 16 + 32 * ((b % 8) / 2);
        uint8_t sc, m;
        scale_min_k4(b % 8, blk + 4, &sc, &m);
        for (int j = 0; j < 32; j++) w[j] = (int16_t)((b % 2 ? qs[j] >> 4 : qs[j] & 0xF) * sc);
        *d = half_to_float(rd16(blk));
        *offset = -half_to_float(rd16(blk + 2)) * m;
    } else {
        const uint8_t *blk = row + (int64_t)(b / 8) * 210;
        int half = (b % 8) / 4, i = b % 4;
        const uint8_t *ql = blk + 64 * half + 32 * (i % 2), *qh = blk + 128 + 32 * half;
        const int8_t *sc = (const int8_t *)(blk + 192) + 8 * half + 2 * i;
        for (int l = 0; l < 32; l++)
            w[l] = (int16_t)(((int)((i < 2 ? ql[l] & 0xF : ql[l] >> 4) | (((qh[l] >> (2 * i)) & 3) << 4)) - 32) * sc[l / 16]);
        *d = half_to_float(rd16(blk + 208));
    }
}

/* Blocks of 32 a K-quant row sums in 32-bit integers before its fp32 scale: Q4_K's whole super-block (|sum| <=
 * 32 * 945 * 32767 < 2^31 per AVX2 lane), Q6_K's half super-block (4 blocks: 4 * 4 * 4096 * 32767 < 2^31). */
static int kquant_run(int type) { return type == T_Q4_K ? 8 : 4; }

static int is_kquant(int type) { return type == T_Q4_K || type == T_Q6_K; }

static float row_dot_qact_generic(int type, const uint8_t *row, qact a, int K) {
    float sum = 0.0f;
    if (is_kquant(type)) {
        float offsets = 0.0f;
        int64_t isum = 0;
        for (int b = 0; b < K / 32; b++) {
            int16_t w[32];
            float d, offset;
            unpack_kblock32(type, row, b, w, &d, &offset);
            for (int j = 0; j < 32; j++) isum += w[j] * a.q[32 * b + j];
            offsets += offset * a.ds[b];
            if (b % kquant_run(type) == kquant_run(type) - 1) {
                sum += (float)isum * (d * a.d[b]);
                isum = 0;
            }
        }
        return sum + offsets;
    }
    for (int b = 0; b < K / 32; b++) {
        int8_t q[32];
        float scale, offset;
        unpack_block32(type, row, b, q, &scale, &offset);
        int s = 0;
        for (int j = 0; j < 32; j++) s += q[j] * a.q[32 * b + j];
        sum += a.d[b] * (scale * (float)s) + offset * a.ds[b];
    }
    return sum;
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31) */
AVX2 static inline __m256i nibbles32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* Q6_K: block i (0..3) of a half super-block as 32 unsigned values 0..63, from its 32 bytes of low nibbles
 * (ql + 32 * (i % 2), the low or the high nibbles) and its bit pairs (bits 2i, 2i + 1 of qh's 32 bytes) */
AVX2 static inline __m256i q6k_unpack_one(const uint8_t *ql, const uint8_t *qh, int i) {
    __m256i l = _mm256_loadu_si256((const __m256i *)(ql + 32 * (i % 2))), h = _mm256_loadu_si256((const __m256i *)qh);
    if (i >= 2) l = _mm256_srli_epi16(l, 4);
    h = i == 0 ? _mm256_slli_epi16(h, 4) : i == 1 ? _mm256_slli_epi16(h, 2) : i == 2 ? h : _mm256_srli_epi16(h, 2);
    return _mm256_or_si256(_mm256_and_si256(l, _mm256_set1_epi8(0x0F)), _mm256_and_si256(h, _mm256_set1_epi8(0x30)));
}

/* Q6_K: block i's two sub-block scales spread over the lanes of its products (lanes 0..3: dword 2i of `scales`,
 * lanes 4..7: dword 2i + 1), for scales held one per dword (as int32, or as an int16 pair) */
AVX2 static inline __m256i q6k_block_scales(__m256i scales, int i) {
    return _mm256_permutevar8x32_epi32(scales, _mm256_setr_epi32(2 * i, 2 * i, 2 * i, 2 * i, 2 * i + 1, 2 * i + 1, 2 * i + 1, 2 * i + 1));
}

/* ---- tiles: rows times up to 8 tokens of split 16-bit activations -------------------------------- */

/* The AVX2 kernels take each token's activation block of 32 values split (quantize_act_avx2): its 16
 * even-indexed values, then its 16 odd-indexed ones. A weight block then widens to two 16 x int16 vectors
 * E (even values) and O (odd values) with 16-bit shifts and masks over its bytes, no shuffles, and
 * madd(E, a_even) + madd(O, a_odd) is its integer dot product: 8 int32 partial sums, lanes 0..3 from values
 * 0..15, lanes 4..7 from values 16..31 (which Q6_K's two scales per block need).
 * NOTE: widening the bytes with vpmovzxbw + vextracti128 (natural order) bounded the Q4_K tile at one token
 * to ~4 cycles per block of 32 on this Zen 3; without shuffles, 2.9 (/work/runs/kbq.py, 2026-12-07). */

#define MAX_TILE 8 /* tokens per tile */
/* Keeps v in a register here, so that what is computed from it after this point is not hoisted above: a tile
 * keeps one block's weight vectors live at a time, 8 tokens' sums beside them in the 16 AVX2 registers. NOTE:
 * with both blocks of a Q4_K byte vector unpacked at once the sums spilled to the stack, and the 8-token tile
 * ran at ~2.4 cycles per block and token instead of ~1.6 (/tmp/mb/inner3.c, 2026-12-07). */
#define ONE_BLOCK_LIVE(v) __asm__ volatile("" : "+x"(v))
#define KEEP_IN_MEMORY() __asm__ volatile("" ::: "memory")
#define ALWAYS_INLINE __attribute__((always_inline)) inline

/* A Q4_K super-block's 8 scales (as int16, into sc) and 8 mins (floats times dmin). Packed 6 bits each in 12
 * bytes at blk + 4 (scale_min_k4); as 32-bit words u0 u1 u2 of the 12 bytes: scales 0..3 = u0 & 0x3f..,
 * scales 4..7 = (u2 & 0x0f..) | (u0 >> 6 & 3..) << 4, mins 0..3 = u1 & 0x3f.., mins 4..7 = (u2 >> 4 & 0x0f..) |
 * (u1 >> 6 & 3..) << 4: computed in one vector (16 bytes loaded: the block is 144 bytes, the 4 after are its own). */
AVX2 static inline void k4_scales(const uint8_t *blk, int16_t sc[8], __m256 *mn) {
    __m128i u = _mm_loadu_si128((const __m128i *)(blk + 4));
    __m128i p = _mm_shuffle_epi32(u, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    __m128i q = _mm_shuffle_epi32(u, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    __m128i low = _mm_and_si128(p, _mm_set1_epi8(0x3f));
    __m128i high = _mm_or_si128(_mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)), _mm_set1_epi8(0x0f)),
                                _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(q, 6), _mm_set1_epi8(0x03)), 4));
    __m128i bytes = _mm_blend_epi32(low, high, 0xA); /* scales 0..7, mins 0..7 */
    _mm_store_si128((__m128i *)sc, _mm_cvtepu8_epi16(bytes));
    *mn = _mm256_mul_ps(_mm256_set1_ps(h2f(blk + 2)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8))));
}

/* K-quant super-blocks ask for the cache lines 2 KiB ahead of them: Qwen2.5-Coder-1.5B's decode step
 * (980 MB of weights streamed from memory per token) went from 61 to 55 ms with a prefetch 1 KiB ahead (2
 * threads, median of 4 alternating runs); once the tiles summed super-blocks in integers, 2 KiB beat 1 KiB
 * in 6 of 7 alternating rounds (medians 52.7 vs 57 ms; 4 KiB alike, 512 bytes slower: /work/runs/ab_decode.sh).
 * SmolLM2's 20-byte Q4_1 blocks gained nothing measurable from one per cache line. */
#define PREFETCH_AHEAD 2048
#define PREFETCH(p, n)                                                                                        \
    do {                                                                                                   \
        for (int o_ = 0; o_ < (n); o_ += 64) _mm_prefetch((const char *)(p) + PREFETCH_AHEAD + o_, _MM_HINT_T0); \
    } while (0)

typedef void (*tile_fn)(const uint8_t *rows, int64_t row_bytes, int n, const qact *act, int K, float *y, int64_t ldy);

/* The tiles (csrc/tiles.h) twice: for AVX2, and for AVX-512 with VNNI (Zen 4, Ice Lake and later): 32 vector
 * registers instead of 16 (the one-token Q4_K tile spilled its constants to the stack) and a block's two madds
 * and adds fused in two instructions. The same results bit for bit; chosen at run time (have_avx512). On the Zen
 * 4 host, 64 rows of 1,536 values from L2, 1 thread, ns per block and token, AVX2 / AVX-512 (/tmp/mb2/hv5.c,
 * 2026-12-07): Q4_K 1.15 / 1.02 at one token, 0.57 / 0.47 at 8; Q6_K 1.48 / 1.46 and 0.77 / 0.50; Q4_1 1.50 /
 * 1.44 and 0.79 / 0.78. Qwen2.5-Coder-1.5B's decode step, medians of 5 alternating rounds: 40.2 -> 37.7 ms;
 * SmolLM2's (Q4_1) unchanged. */
#define TILE_ATTR AVX2
#define TV(name) name##_avx2
#define TILE_VNNI 0
#include "tiles.h"
#undef TILE_ATTR
#undef TV
#undef TILE_VNNI
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")))
#define TILE_ATTR AVX512
#define TV(name) name##_avx512
#define TILE_VNNI 1
#include "tiles.h"
#undef TILE_ATTR
#undef TV
#undef TILE_VNNI

static int force_avx2 = 0; /* tests: the AVX2 tiles on a machine that has AVX-512 */

static int have_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    }
    return cached && !force_avx2;
}

static const tile_fn *tiles_for(int type) {
    int v = type == T_Q4_0 ? 0 : type == T_Q4_1 ? 1 : type == T_Q8_0 ? 2 : type == T_Q4_K ? 3 : type == T_Q6_K ? 4 : -1;
    if (v < 0) return NULL;
    return have_avx512() ? tile_table_avx512[v] : tile_table_avx2[v];
}

/* Rows [lo, hi) of one quantized part times S tokens: row by row, the tokens up to MAX_TILE at a time.
 * NOTE: tiles of several rows (2 x 2, 4 x 1) were measured too: no faster on the layers' matrices, and up
 * to 1.6x slower on SmolLM2's Q8_0 head (python -m bench.decode_step; /work/runs/kb2.py). */
AVX2 static void quant_rows_avx2(const tf_part *w, int lo, int hi, const qact *act, int S, int K, float *y, int64_t ldy) {
    const tile_fn *tiles = tiles_for(w->type);
    int64_t rb = w->row_bytes;
    for (int s = 0; s < S; s += MAX_TILE) {
        int n = S - s < MAX_TILE ? S - s : MAX_TILE;
        tiles[n - 1](w->data + lo * rb, rb, hi - lo, act + s, K, y + s * ldy + lo, ldy);
    }
}

/* ---- AVX2 dequantization (weight tiles of the prefill GEMM, embedding rows) --------------------------- */

/* 32 bytes (as signed when `is_signed`) -> 32 floats scale * q + offset, stored at y */
AVX2 static inline void store32(__m256i q, int is_signed, __m256 scale, __m256 offset, float *y) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; i++) {
        __m256i v = is_signed ? _mm256_cvtepi8_epi32(parts[i]) : _mm256_cvtepu8_epi32(parts[i]);
        _mm256_storeu_ps(y + 8 * i, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), scale), offset));
    }
}

/* 16 signed bytes -> 16 floats scale * q */
AVX2 static inline void store16(__m128i q, __m256 scale, float *y) {
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), scale));
}

/* the reference's formulas with the same fp32 roundings (d * q + m as a product, then a sum) */
AVX2 static int dequant_row_avx2(int type, const uint8_t *src, int K, float *y) {
    const __m256 zero = _mm256_setzero_ps();
    switch (type) {
    case T_Q4_0:
        for (int b = 0; b < K / 32; b++, src += 18, y += 32) {
            __m256i q = _mm256_sub_epi8(nibbles32(src + 2), _mm256_set1_epi8(8));
            store32(q, 1, _mm256_set1_ps(h2f(src)), zero, y);
        }
        return 1;
    case T_Q4_1:
        for (int b = 0; b < K / 32; b++, src += 20, y += 32)
            store32(nibbles32(src + 4), 0, _mm256_set1_ps(h2f(src)), _mm256_set1_ps(h2f(src + 2)), y);
        return 1;
    case T_Q8_0:
        for (int b = 0; b < K / 32; b++, src += 34, y += 32)
            store32(_mm256_loadu_si256((const __m256i *)(src + 2)), 1, _mm256_set1_ps(h2f(src)), zero, y);
        return 1;
    case T_Q4_K: {
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        for (int sb = 0; sb < K / 256; sb++, src += 144) {
            float d = h2f(src), dmin = h2f(src + 2);
            const uint8_t *q = src + 16;
            for (int j = 0; j < 4; j++, q += 32, y += 64) {
                uint8_t sc0, m0, sc1, m1;
                scale_min_k4(2 * j, src + 4, &sc0, &m0);
                scale_min_k4(2 * j + 1, src + 4, &sc1, &m1);
                __m256i raw = _mm256_loadu_si256((const __m256i *)q);
                store32(_mm256_and_si256(raw, m4), 0, _mm256_set1_ps(d * sc0), _mm256_set1_ps(-(dmin * m0)), y);
                store32(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), 0, _mm256_set1_ps(d * sc1), _mm256_set1_ps(-(dmin * m1)), y + 32);
            }
        }
        return 1;
    }
    case T_Q6_K: {
        const __m256i off = _mm256_set1_epi8(32);
        for (int sb = 0; sb < K / 256; sb++, src += 210) {
            const uint8_t *ql = src, *qh = src + 128;
            const int8_t *sc = (const int8_t *)(src + 192);
            float d = h2f(src + 208);
            for (int n = 0; n < 2; n++, ql += 64, qh += 32, sc += 8) {
                for (int i = 0; i < 4; i++, y += 32) {
                    __m256i v = _mm256_sub_epi8(q6k_unpack_one(ql, qh, i), off);
                    store16(_mm256_castsi256_si128(v), _mm256_set1_ps(d * sc[2 * i]), y);
                    store16(_mm256_extracti128_si256(v, 1), _mm256_set1_ps(d * sc[2 * i + 1]), y + 16);
                }
            }
        }
        return 1;
    }
    }
    return 0;
}

/* ---- a small persistent thread pool ------------------------------------------------------------------ */

/* A job is `blocks` independent pieces of work; the calling thread and the workers claim them one at a time
 * from a shared counter until none are left. NOTE: on a loaded machine a worker may not run for a whole time
 * slice: with static shares the caller would wait for it; here the caller takes the pieces the worker did
 * not get to and waits only for a piece a worker has started. */

#define MAX_THREADS 64
#define SPIN_ROUNDS 20000 /* ~50-200 us of pause instructions before a worker sleeps */
#define MAX_BLOCKS (1 << 20)

typedef void (*job_fn)(void *arg, int block);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;   /* bumped for each job: wakes the workers */
    atomic_uint_fast64_t claim; /* job tag (24 bits) | blocks (20 bits) | next block (20 bits) */
    atomic_int done;          /* blocks finished */
    job_fn fn;
    void *arg;
    int workers;              /* started so far */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* Claim and run blocks of the job tagged `tag` while there are any. A block claimed is one of that job (the
 * claim word holds its tag and size), so the job is not finished and its fn/arg are still the current ones. */
static void run_blocks(uint64_t tag) {
    for (;;) {
        uint64_t v = atomic_load(&pool.claim);
        uint64_t next = v & (MAX_BLOCKS - 1), blocks = (v >> 20) & (MAX_BLOCKS - 1);
        if ((v >> 40) != tag || next >= blocks) return;
        if (!atomic_compare_exchange_weak(&pool.claim, &v, v + 1)) continue;
        pool.fn(pool.arg, (int)next);
        atomic_fetch_add(&pool.done, 1);
    }
}

static void *worker_main(void *arg) {
    unsigned seen = (unsigned)(uintptr_t)arg; /* the generation current when the worker was created */
    for (;;) {
        unsigned now;
        int spins = 0;
        while ((now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen && spins < SPIN_ROUNDS) {
            if (++spins % 256 == 0) sched_yield(); /* let a runnable thread have the core when it is shared */
            else _mm_pause();
        }
        if (now == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((now = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = now;
        run_blocks(now & 0xFFFFFF);
    }
    return NULL;
}

/* Run fn(arg, b) for b in 0..blocks-1 on up to `threads` threads (the caller's included). One caller at a time. */
static void run_parallel(job_fn fn, void *arg, int blocks, int threads) {
    static pthread_mutex_t callers = PTHREAD_MUTEX_INITIALIZER;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads <= 1 || blocks <= 1 || blocks >= MAX_BLOCKS) {
        for (int b = 0; b < blocks; b++) fn(arg, b);
        return;
    }
    pthread_mutex_lock(&callers);
    while (pool.workers < threads - 1) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, worker_main, (void *)(uintptr_t)atomic_load(&pool.generation)) != 0) break;
        pthread_detach(thread);
        pool.workers++;
    }
    unsigned generation = atomic_load(&pool.generation) + 1;
    uint64_t tag = generation & 0xFFFFFF;
    pool.fn = fn;
    pool.arg = arg;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.claim, (tag << 40) | ((uint64_t)blocks << 20));
    pthread_mutex_lock(&pool.lock);
    atomic_store_explicit(&pool.generation, generation, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_blocks(tag);
    for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < blocks; spins++) {
        if (spins < 2000) _mm_pause();
        else sched_yield();
    }
    pthread_mutex_unlock(&callers);
}

/* ---- entry points ----------------------------------------------------------------------------------- */

static int is_float_type(int type) { return type == T_F32 || type == T_F16; }

typedef struct {
    const tf_part *parts;
    int nparts, K, S, total_rows, block_rows;
    const float *x; /* [S, K] */
    qact *act;    /* [S]: x quantized per block of 32 (NULL when no part is a 32-value type) */
    qact *kact;   /* [S]: x quantized per super-block of 256 (NULL when no part is a K-quant) */
    float *y;
    int64_t ldy;
} matmul_job;

/* A product's rows are split in CHUNKS pieces per thread, each a multiple of BLOCK_ROWS rows (64 bytes of y
 * per token: a cache line threads do not share), claimed in turn. Long pieces keep each thread's reads one
 * sequential stream the hardware prefetcher follows: pieces of 16 rows (Qwen2.5-Coder's 864-byte Q4_K rows:
 * 14 KB, the two threads alternating) made its decode step 72 ms, pieces of a quarter of a thread's rows 61
 * (SmolLM2: 10.1 -> 7.5 ms); 2 to 8 pieces per thread measured alike. */
#define BLOCK_ROWS 16
#define CHUNKS 4

static void matmul_rows(void *arg, int block) {
    const matmul_job *job = arg;
    /* rows [begin, end) of the concatenation */
    int begin = block * job->block_rows, end = begin + job->block_rows < job->total_rows ? begin + job->block_rows : job->total_rows;
    int K = job->K, S = job->S, avx2 = have_avx2();
    float *buf = NULL;
    int base = 0;
    for (int p = 0; p < job->nparts; base += job->parts[p].rows, p++) {
        const tf_part *w = &job->parts[p];
        int lo = begin > base ? begin - base : 0, hi = end - base < w->rows ? end - base : w->rows;
        int fp = is_float_type(w->type);
        if (fp && !avx2 && buf == NULL && lo < hi) buf = malloc((size_t)K * 4);
        if (!fp && avx2 && lo < hi) {
            quant_rows_avx2(w, lo, hi, is_kquant(w->type) ? job->kact : job->act, S, K, job->y + base, job->ldy);
            continue;
        }
        for (int r = lo; r < hi; r++) {
            const uint8_t *row = w->data + (int64_t)r * w->row_bytes;
            float *out = job->y + base + r;
            if (fp && !avx2) dequant_row_generic(w->type, row, K, buf);
            for (int s = 0; s < S; s++) {
                float v;
                if (!fp) v = row_dot_qact_generic(w->type, row, is_kquant(w->type) ? job->kact[s] : job->act[s], K);
                else v = avx2 ? row_dot_float_avx2(w->type, row, job->x + (int64_t)s * K, K) : dot_generic(buf, job->x + (int64_t)s * K, K);
                out[s * job->ldy] = v;
            }
        }
    }
    free(buf);
}

/* Each token's activations, one scale per `group` blocks of 32 (1, or KQ_GROUP for the K-quants). `grouped`:
 * also group_d and group_ds (what the AVX2 tiles of several tokens read) */
static qact *quantize_rows(const float *x, int S, int K, int group, int grouped) {
    /* one allocation: S headers, then q [S K], d [S K/32], ds [S K/32], and when grouped
     * group_d and group_ds [groups K/32 8] */
    size_t nb = (size_t)K / 32, groups = grouped ? ((size_t)S + 7) / 8 : 0;
    qact *act = malloc(sizeof(qact) * (size_t)S + 2 * (size_t)S * K + 2 * sizeof(float) * ((size_t)S + 8 * groups) * nb + 64);
    if (act == NULL) return NULL;
    float *d = (float *)(((uintptr_t)(act + S) + 63) & ~(uintptr_t)63), *ds = d + (size_t)S * nb;
    float *group_d = ds + (size_t)S * nb, *group_ds = group_d + 8 * groups * nb;
    int16_t *q = (int16_t *)(group_ds + 8 * groups * nb);
    if (groups) memset(group_d, 0, 2 * sizeof(float) * 8 * groups * nb);
    for (int s = 0; s < S; s++) {
        act[s] = (qact){q + (size_t)s * K, d + (size_t)s * nb, ds + (size_t)s * nb, NULL, NULL};
        if (have_avx2()) quantize_act_avx2(x + (int64_t)s * K, K, act[s], 1, group);
        else quantize_act_generic(x + (int64_t)s * K, K, act[s], group);
        if (groups) {
            size_t g = (size_t)s / 8;
            act[s].group_d = group_d + 8 * g * nb;
            act[s].group_ds = group_ds + 8 * g * nb;
            for (size_t b = 0; b < nb; b++) {
                act[s].group_d[8 * b + s % 8] = act[s].d[b];
                act[s].group_ds[8 * b + s % 8] = act[s].ds[b];
            }
        }
    }
    return act;
}

/* y[S, ldy] = x[S, K] @ W^T for W = the parts' rows concatenated. Quantized parts multiply the 16-bit
 * activations in integers (rounded per 32 values for the 32-value types, per 256 for the K-quants; a fused
 * product of both kinds rounds both ways); F32/F16 parts the fp32 activations. Returns 0, or -1 for an
 * unknown type or a K the type's blocks do not divide, -2 when out of memory. */
int tf_matmul(const tf_part *parts, int nparts, int K, const float *x, int S, float *y, int64_t ldy, int nthreads) {
    int total = 0, blocks32 = 0, kquants = 0, grouped = 0;
    for (int p = 0; p < nparts; p++) {
        int elems = block_elems(parts[p].type);
        if (elems == 0 || K % elems != 0 || K % 32 != 0) return -1;
        total += parts[p].rows;
        kquants |= is_kquant(parts[p].type);
        blocks32 |= !is_float_type(parts[p].type) && !is_kquant(parts[p].type);
        grouped |= parts[p].type == T_Q4_0 || parts[p].type == T_Q4_1;
    }
    qact *act = NULL, *kact = NULL;
    if (blocks32 && (act = quantize_rows(x, S, K, 1, grouped && S > 1 && have_avx2())) == NULL) return -2;
    if (kquants && (kact = quantize_rows(x, S, K, KQ_GROUP, S > 1 && have_avx2())) == NULL) {
        free(act);
        return -2;
    }
    int threads = total < 64 || nthreads < 1 ? 1 : nthreads < MAX_THREADS ? nthreads : MAX_THREADS;
    int block_rows = (total + threads * CHUNKS - 1) / (threads * CHUNKS);
    block_rows = block_rows < BLOCK_ROWS ? BLOCK_ROWS : (block_rows + BLOCK_ROWS - 1) / BLOCK_ROWS * BLOCK_ROWS;
    matmul_job job = {parts, nparts, K, S, total, block_rows, x, act, kact, y, ldy};
    run_parallel(matmul_rows, &job, (total + block_rows - 1) / block_rows, threads);
    free(act);
    free(kact);
    return 0;
}

/* The activations' 16-bit blocks as tf_matmul computes them (for the reference twin's tests), one scale per
 * `group` blocks (1 or 8): q [S, K] int16, d and ds [S, K / 32] (d repeated over a group). */
int tf_quantize_act(const float *x, int S, int K, int group, int16_t *q, float *d, float *ds) {
    if (group != 1 && group != KQ_GROUP) return -1;
    if (K % (32 * group)) return -1;
    for (int s = 0; s < S; s++) {
        qact a = {q + (int64_t)s * K, d + (int64_t)s * (K / 32), ds + (int64_t)s * (K / 32), NULL, NULL};
        if (have_avx2()) quantize_act_avx2(x + (int64_t)s * K, K, a, 0, group);
        else quantize_act_generic(x + (int64_t)s * K, K, a, group);
    }
    return 0;
}

typedef struct {
    int type, K;
    const uint8_t *data;
    int64_t row_bytes;
    const int64_t *rows; /* NULL: rows 0..n-1 */
    int n;
    float *out;
} dequant_job;

static void dequant_rows(void *arg, int block) {
    const dequant_job *job = arg;
    int begin = block * BLOCK_ROWS, end = begin + BLOCK_ROWS < job->n ? begin + BLOCK_ROWS : job->n;
    for (int i = begin; i < end; i++) {
        int64_t r = job->rows ? job->rows[i] : i;
        const uint8_t *row = job->data + r * job->row_bytes;
        float *out = job->out + (int64_t)i * job->K;
        if (!(have_avx2() && dequant_row_avx2(job->type, row, job->K, out))) dequant_row_generic(job->type, row, job->K, out);
    }
}

int tf_dequant(int type, const uint8_t *data, int64_t row_bytes, int K, const int64_t *rows, int n, float *out, int nthreads) {
    int elems = block_elems(type);
    if (elems == 0 || K % elems != 0) return -1;
    dequant_job job = {type, K, data, row_bytes, rows, n, out};
    run_parallel(dequant_rows, &job, (n + BLOCK_ROWS - 1) / BLOCK_ROWS, n < 64 ? 1 : nthreads);
    return 0;
}

int tf_has_avx2(void) { return have_avx2(); }

/* Tests: 1 runs the portable C path on an AVX2 machine too (what a machine without AVX2 computes). */
void tf_force_portable(int on) { force_portable = on; }

int tf_has_avx512(void) { return have_avx512(); }

/* Tests: 1 runs the AVX2 tiles on a machine that has AVX-512 VNNI (they must give the same bits). */
void tf_force_avx2(int on) { force_avx2 = on; }

/* ---- one decode step of a Llama/Qwen2 decoder, whole, in C ------------------------------------------- */

/* The same forward as tabfill/kernels/decoder.py's LeanDecoder for one token (RMS norms, q|k|v with an
 * optional bias, rotate-half rotary from the decoder's tables, grouped-query attention over the KV cache
 * (fp16 or fp32: kv_half), SiLU-gated MLP, a tied or separate head): without a Python call per operation. The matrices go
 * through tf_matmul's kernels, so each product is bit for bit the one QuantLinear computes. */

typedef struct {
    const tf_part *parts;
    int nparts, rows;
    const float *bias; /* [rows] or NULL */
} tf_linear;

typedef struct {
    const float *norm1, *norm2; /* [D] */
    tf_linear qkv, o, up, down;  /* up: gate rows then up rows */
} tf_layer;

typedef struct {
    int layers, dim, heads, kv_heads, head_dim, inter, cache_tokens;
    float eps;
    const tf_layer *layer;
    const float *final_norm;
    tf_linear head;
    tf_part embed;
    const float *cos, *signed_sin; /* [T, Dh] */
    void *k_cache, *v_cache;       /* [L, slots, Hkv, cache_tokens, Dh] of fp16 (kv_half) or fp32 */
    int slots;                     /* sequences the cache holds (1: a decoder's own; a batch's slot pool) */
    int kv_half;                   /* 1: the cache holds fp16 (each key and value rounded to nearest even once,
                                      when written), 0: fp32 */
} tf_model;

/* Element i of a K or V cache of fp16 (half) or fp32 values, as fp32. */
static inline float kv_at(const void *cache, int64_t i, int half) {
    return half ? half_to_float(((const uint16_t *)cache)[i]) : ((const float *)cache)[i];
}

/* n values into a K or V cache at element `at`, rounded to fp16 (to nearest even, as torch's .half()) when
 * half. */
static void kv_store(void *cache, int64_t at, const float *x, int n, int half) {
    if (!half) {
        memcpy((float *)cache + at, x, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t *out = (uint16_t *)cache + at;
    int i = have_avx2() ? kv_store_half_avx2(out, x, n) : 0;
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}

/* y[S, rows] = x[S, K] @ W^T + bias */
static int linear_rows(const tf_linear *l, int K, const float *x, int S, float *y, int nthreads) {
    int status = tf_matmul(l->parts, l->nparts, K, x, S, y, l->rows, nthreads);
    if (status == 0 && l->bias)
        for (int s = 0; s < S; s++)
            for (int n = 0; n < l->rows; n++) y[(int64_t)s * l->rows + n] += l->bias[n];
    return status;
}

static void rms_norm(const float *x, const float *w, int D, float eps, float *y) {
    float ss = 0.0f;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    for (int i = 0; i < D; i++) y[i] = x[i] * r * w[i];
}

typedef struct {
    const tf_model *m;
    const float *q;       /* row r's query heads at q + r * q_stride: [Hq, Dh] */
    int64_t q_stride;
    const void *k, *v;    /* this layer's pool [slots, Hkv, T, Dh], fp16 when m->kv_half */
    const int *slot, *pos; /* per row: its slot, its position (keys 0..pos) */
    int max_len;
    float *scores;        /* [rows * Hq, max_len] */
    float *out;           /* [rows, Hq, Dh] */
} attend_job;

/* e^x for 8 floats (x <= 0 here: scores minus their maximum): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2],
 * p the degree-6 Taylor polynomial (relative error < 2e-7); below -87 the result is 0. */
AVX2 static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#define MAX_GROUP 16 /* query heads per kv head the AVX2 attention handles */

/* 8 keys' or values' elements from i on, as fp32 */
AVX2 static ALWAYS_INLINE __m256 kv_load8(const void *cache, int64_t i, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)cache + i))) : _mm256_loadu_ps((const float *)cache + i);
}

/* attend_values for the values i0 .. i0 + 8 w of each head (w: 4 or 2 vectors, a constant where inlined) */
AVX2 static ALWAYS_INLINE void attend_values_chunk(const attend_job *job, int64_t base, int len, const float *s, const float *inv,
                                                   float *out, int j0, int nj, int i0, int w, int half) {
    int Dh = job->m->head_dim;
    __m256 acc[3][4];
    for (int j = 0; j < 3; j++)
        for (int c = 0; c < 4; c++) acc[j][c] = _mm256_setzero_ps();
    for (int t = 0; t < len; t++) {
        int64_t vt = base + (int64_t)t * Dh + i0;
        __m256 v[4];
        for (int c = 0; c < w; c++) v[c] = kv_load8(job->v, vt + 8 * c, half);
        for (int j = 0; j < nj; j++) {
            __m256 p = _mm256_set1_ps(s[(int64_t)(j0 + j) * job->max_len + t] * inv[j0 + j]);
            for (int c = 0; c < w; c++) acc[j][c] = _mm256_fmadd_ps(p, v[c], acc[j][c]);
        }
    }
    for (int j = 0; j < nj; j++)
        for (int c = 0; c < w; c++) _mm256_storeu_ps(out + (int64_t)(j0 + j) * Dh + i0 + 8 * c, acc[j][c]);
}

/* out[j] = sum over keys t of p_j[t] v[t] for the nj (1..3) query heads j0.. of a kv head, p_j[t] = s_j[t] *
 * inv[j]: 32 (or 16) values of each head's sum in registers at a time over all keys (summed in key order, one FMA a
 * key, as a sum kept in memory would be), so each value vector is read, and widened from fp16, once for the
 * heads. NOTE: the sums in memory, read and written again for each key and head, took about as long as the
 * scores (Zen 3, SmolLM2, 8 rows at 400 keys: attention ~20 % of the step). */
AVX2 static ALWAYS_INLINE void attend_values(const attend_job *job, int64_t base, int len, const float *s, const float *inv, float *out,
                                             int j0, int nj, int half) {
    int Dh = job->m->head_dim, w = Dh % 32 ? 2 : 4; /* vectors of 8 values at a time (Dh % 16 == 0) */
    for (int i0 = 0; i0 < Dh; i0 += 8 * w) {
        if (w == 4) attend_values_chunk(job, base, len, s, inv, out, j0, nj, i0, 4, half);
        else attend_values_chunk(job, base, len, s, inv, out, j0, nj, i0, 2, half);
    }
}

/* The G query heads of one kv head of one row: each K and V row is read once for all of them.
 * NOTE: tried and dropped (2026-12-07): units of (row, kv head, 128 keys) merged in chunk order (a row's split
 * fixed by its length alone), 8 keys' scores in one vector sum, the weighted values summed in registers and the
 * next keys prefetched. Alone (attention of 30 layers, /work/runs/s15_att) one row at 400 keys took 0.37 instead of 0.70
 * ms on 2 threads (its 3 units no longer split 2:1), 8 rows 6.1 instead of 6.4 ms. In the real step it gained
 * nothing: one row 5.38 vs 5.42 ms, 8 rows 23.3 vs 22.1 ms (bench.batch_step, means of 3 alternating rounds):
 * there the K/V rows come from memory (the 97 MB of weights a step push them out of L3) and the 18 MB (one row
 * at 400 keys; 147 MB for 8) of fp32 K/V bound it. Fewer bytes (fp16 K/V, as llama.cpp keeps them) is what
 * could. fp16 K/V since (Zen 3 host, AVX2, 2026-12-07): the one-row step 2-3 % faster, the 8-row step the same
 * within noise; attend_values' sums in registers took ~25 % off attention in the 8-row step (perf shares). */
AVX2 static ALWAYS_INLINE void attend_group(const attend_job *job, int row, int g, int half) {
    const tf_model *m = job->m;
    int Hq = m->heads, G = Hq / m->kv_heads, Dh = m->head_dim, len = job->pos[row] + 1;
    int64_t base = ((int64_t)job->slot[row] * m->kv_heads + g) * m->cache_tokens * Dh;
    const float *q = job->q + row * job->q_stride + (int64_t)g * G * Dh;
    float *s = job->scores + ((int64_t)row * Hq + (int64_t)g * G) * job->max_len;
    float *out = job->out + ((int64_t)row * Hq + (int64_t)g * G) * Dh;
    float scale = 1.0f / sqrtf((float)Dh), top[MAX_GROUP], inv[MAX_GROUP];
    for (int j = 0; j < G; j++) top[j] = -INFINITY;
    for (int t = 0; t < len; t++) {
        int64_t kt = base + (int64_t)t * Dh;
        for (int j = 0; j < G; j++) {
            const float *qj = q + (int64_t)j * Dh;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int i = 0; i < Dh; i += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qj + i), kv_load8(job->k, kt + i, half), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qj + i + 8), kv_load8(job->k, kt + i + 8, half), a1);
            }
            float x = hsum8(_mm256_add_ps(a0, a1)) * scale;
            s[(int64_t)j * job->max_len + t] = x;
            top[j] = x > top[j] ? x : top[j];
        }
    }
    for (int j = 0; j < G; j++) {
        float *sj = s + (int64_t)j * job->max_len;
        __m256 sum8 = _mm256_setzero_ps(), t8 = _mm256_set1_ps(top[j]);
        int t = 0;
        for (; t + 8 <= len; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sj + t), t8));
            _mm256_storeu_ps(sj + t, e);
            sum8 = _mm256_add_ps(sum8, e);
        }
        float sum = hsum8(sum8);
        for (; t < len; t++) sum += (sj[t] = expf(sj[t] - top[j]));
        inv[j] = 1.0f / sum;
    }
    /* the weighted values, up to 3 heads at a time (each value vector read once for them) */
    for (int j = 0; j < G; j += 3) {
        if (G - j >= 3) attend_values(job, base, len, s, inv, out, j, 3, half);
        else if (G - j == 2) attend_values(job, base, len, s, inv, out, j, 2, half);
        else attend_values(job, base, len, s, inv, out, j, 1, half);
    }
}

AVX2 static void attend_group_f32(const attend_job *job, int row, int g) { attend_group(job, row, g, 0); }
AVX2 static void attend_group_f16(const attend_job *job, int row, int g) { attend_group(job, row, g, 1); }

/* o[i] = silu(u[i]) * u[I + i]: u[0..I) the gate rows' outputs, u[I..2I) the up rows'. In AVX2 with exp8 of
 * -|u| (no overflow): sigmoid(u) = 1 / (1 + e) for u >= 0, e / (1 + e) below. NOTE: expf one value at a time
 * took 8 us per SmolLM2 layer (1536 values; 0.25 ms of a ~10 ms step), on one thread while the other waited. */
AVX2 static int silu_gate_avx2(const float *u, int I, float *o) { /* the first I - I % 8; returns how many */
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= I; i += 8) {
        __m256 x = _mm256_loadu_ps(u + i);
        __m256 e = exp8(_mm256_or_ps(x, sign)); /* e^-|x| */
        __m256 num = _mm256_blendv_ps(one, e, x); /* x < 0 (sign bit set): e */
        __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(u + I + i)));
    }
    return i;
}

static void silu_gate(const float *u, int I, float *o) {
    for (int i = have_avx2() ? silu_gate_avx2(u, I, o) : 0; i < I; i++) o[i] = u[i] / (1.0f + expf(-u[i])) * u[I + i];
}

/* One (row, query head) pair: softmax(q . k / sqrt(Dh)) v over the row's own slot (the portable path). */
static void attend_head_generic(const attend_job *job, int row, int h) {
    const tf_model *m = job->m;
    int Hq = m->heads, Dh = m->head_dim, len = job->pos[row] + 1, g = h / (Hq / m->kv_heads), unit = row * Hq + h;
    const float *q = job->q + row * job->q_stride + (int64_t)h * Dh;
    int64_t base = ((int64_t)job->slot[row] * m->kv_heads + g) * m->cache_tokens * Dh;
    float *s = job->scores + (int64_t)unit * job->max_len, *o = job->out + (int64_t)unit * Dh, kt[512];
    float scale = 1.0f / sqrtf((float)Dh), top = -INFINITY, sum = 0.0f;
    for (int t = 0; t < len; t++) {
        for (int i = 0; i < Dh; i++) kt[i] = kv_at(job->k, base + (int64_t)t * Dh + i, m->kv_half);
        s[t] = dot_generic(q, kt, Dh) * scale;
        top = s[t] > top ? s[t] : top;
    }
    for (int t = 0; t < len; t++) sum += (s[t] = expf(s[t] - top));
    for (int i = 0; i < Dh; i++) o[i] = 0.0f;
    for (int t = 0; t < len; t++) {
        float p = s[t] / sum;
        for (int i = 0; i < Dh; i++) o[i] += p * kv_at(job->v, base + (int64_t)t * Dh + i, m->kv_half);
    }
}

/* Unit u = (row, kv head): its G query heads. */
static void attend_unit(void *arg, int unit) {
    const attend_job *job = arg;
    const tf_model *m = job->m;
    int Hkv = m->kv_heads, G = m->heads / Hkv, row = unit / Hkv, g = unit % Hkv;
    if (have_avx2() && m->head_dim % 16 == 0 && G <= MAX_GROUP) {
        if (m->kv_half) attend_group_f16(job, row, g);
        else attend_group_f32(job, row, g);
        return;
    }
    for (int j = 0; j < G; j++) attend_head_generic(job, row, g * G + j);
}

static void rotate(float *v, const float *cos, const float *ssin, int Dh) {
    float tmp[512];
    memcpy(tmp, v, sizeof(float) * (size_t)Dh);
    for (int i = 0; i < Dh; i++) v[i] = tmp[i] * cos[i] + tmp[(i + Dh / 2) % Dh] * ssin[i];
}

/* n decode rows in one step: row r writes tokens[r] at pos[r] of slot slots[r]. Rows of one slot at distinct
 * positions are a causal forward of several tokens (a draft's verification, a short prefill): every row's K/V
 * is written before any row attends, and a row attends to positions 0..pos[r] of its slot. The logits of the
 * nout rows listed in out_rows (all n rows in order when out_rows is NULL) go to logits + i * head.rows. Each
 * product runs once for all rows (tf_matmul's tiles unpack a weight block once for them), attention per (row,
 * kv head). A row's logits are bit for bit what it gets alone (given the same keys before it). Returns 0, what
 * tf_matmul returned, -3 for a token, position, slot or output row outside the model / cache or a (slot,
 * position) written twice, -2 when out of memory. */
int tf_decode_rows(const tf_model *m, int n, const int *tokens, const int *pos, const int *slots, int nout, const int *out_rows,
                   float *logits, int nthreads) {
    int D = m->dim, Hq = m->heads, Hkv = m->kv_heads, Dh = m->head_dim, I = m->inter, T = m->cache_tokens, B = m->slots;
    if (n < 1 || Dh > 512 || Dh % 2) return -3;
    int max_len = 0, total_len = 0;
    for (int r = 0; r < n; r++) {
        if (pos[r] < 0 || pos[r] >= T || tokens[r] < 0 || tokens[r] >= m->embed.rows || slots[r] < 0 || slots[r] >= B) return -3;
        for (int j = 0; j < r; j++)
            if (slots[j] == slots[r] && pos[j] == pos[r]) return -3;
        max_len = pos[r] + 1 > max_len ? pos[r] + 1 : max_len;
        total_len += pos[r] + 1;
    }
    if (out_rows == NULL) nout = n;
    if (nout < 1 || nout > n) return -3;
    for (int i = 0; out_rows != NULL && i < nout; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n) return -3;
    int qkv_rows = (Hq + 2 * Hkv) * Dh;
    size_t floats = (size_t)n * ((size_t)D * 3 + (size_t)qkv_rows + (size_t)Hq * Dh + (size_t)3 * I + (size_t)Hq * max_len);
    float *x = malloc(sizeof(float) * floats);
    if (x == NULL) return -2;
    float *h = x + (size_t)n * D, *tmp = h + (size_t)n * D, *qkv = tmp + (size_t)n * D, *att = qkv + (size_t)n * qkv_rows;
    float *up = att + (size_t)n * Hq * Dh, *gated = up + (size_t)n * 2 * I, *scores = gated + (size_t)n * I;
    int status = 0;
    for (int r = 0; r < n; r++) {
        const uint8_t *row = m->embed.data + (int64_t)tokens[r] * m->embed.row_bytes;
        if (!(have_avx2() && dequant_row_avx2(m->embed.type, row, D, x + (size_t)r * D))) dequant_row_generic(m->embed.type, row, D, x + (size_t)r * D);
    }
    for (int l = 0; l < m->layers && status == 0; l++) {
        const tf_layer *layer = &m->layer[l];
        size_t elem = m->kv_half ? 2 : 4;
        char *kc = (char *)m->k_cache + (size_t)l * B * Hkv * T * Dh * elem, *vc = (char *)m->v_cache + (size_t)l * B * Hkv * T * Dh * elem;
        for (int r = 0; r < n; r++) rms_norm(x + (size_t)r * D, layer->norm1, D, m->eps, h + (size_t)r * D);
        if ((status = linear_rows(&layer->qkv, D, h, n, qkv, nthreads))) break;
        for (int r = 0; r < n; r++) {
            float *q = qkv + (size_t)r * qkv_rows;
            const float *cos = m->cos + (int64_t)pos[r] * Dh, *ssin = m->signed_sin + (int64_t)pos[r] * Dh;
            for (int i = 0; i < Hq + Hkv; i++) rotate(q + (int64_t)i * Dh, cos, ssin, Dh);
            for (int g = 0; g < Hkv; g++) {
                int64_t at = (((int64_t)slots[r] * Hkv + g) * T + pos[r]) * Dh;
                kv_store(kc, at, q + (int64_t)(Hq + g) * Dh, Dh, m->kv_half);
                kv_store(vc, at, q + (int64_t)(Hq + Hkv + g) * Dh, Dh, m->kv_half);
            }
        }
        attend_job job = {m, qkv, qkv_rows, kc, vc, slots, pos, max_len, scores, att};
        run_parallel(attend_unit, &job, n * Hkv, total_len < 256 ? 1 : nthreads);
        if ((status = linear_rows(&layer->o, Hq * Dh, att, n, tmp, nthreads))) break;
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += tmp[i];
        for (int r = 0; r < n; r++) rms_norm(x + (size_t)r * D, layer->norm2, D, m->eps, h + (size_t)r * D);
        if ((status = linear_rows(&layer->up, D, h, n, up, nthreads))) break;
        for (int r = 0; r < n; r++) silu_gate(up + (size_t)r * 2 * I, I, gated + (size_t)r * I);
        if ((status = linear_rows(&layer->down, I, gated, n, tmp, nthreads))) break;
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += tmp[i];
    }
    if (status == 0) { /* the head over the rows asked for only: h row i is output row i */
        for (int i = 0; i < nout; i++) {
            int r = out_rows == NULL ? i : out_rows[i];
            rms_norm(x + (size_t)r * D, m->final_norm, D, m->eps, h + (size_t)i * D);
        }
        status = linear_rows(&m->head, D, h, nout, logits, nthreads);
    }
    free(x);
    return status;
}

/* Tests: n floats to fp16 as the decode step writes keys and values (the F16C path, or the portable one when
 * forced). */
void tf_to_half(const float *x, int n, uint16_t *out) { kv_store(out, 0, x, n, 1); }
