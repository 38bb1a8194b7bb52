/* Matrix products over GGUF-quantized weight rows, on CPU, with fp32 activations.
 *
 * The weights stay in the GGUF's own blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; F32 and F16 rows too): each
 * output row n of y[s, n] = sum_k x[s, k] * w[n, k] is computed by unpacking the row's blocks in registers
 * and multiplying them with fp32 activations, so the product is the dequantized matrix's (as gguf-py and
 * ggml's dequantize_row_* define it) up to the order of fp32 additions.
 *
 * Entry points (plain C ABI, called through ctypes from tabfill/kernels/quant.py):
 *   tf_matmul   y[S, ldy] = x[S, K] @ W^T for W = row-concatenated parts (S small: decode and drafts)
 *   tf_dequant  fp32 rows of one part (embedding lookup; weight tiles for the prefill GEMM)
 *
 * Speed: AVX2 + FMA + F16C kernels chosen at run time (__builtin_cpu_supports); without them a portable
 * path dequantizes each row and takes plain dot products. Nothing here needs AVX-512. Work is split by
 * output rows over a small persistent thread pool (the calling thread plus nthreads - 1 workers that spin
 * briefly between calls, then sleep).
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

/* 16 unsigned bytes -> two vectors of 8 floats */
#define U8X16_TO_PS(v, f0, f1)                                                                  \
    do {                                                                                        \
        f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));                                       \
        f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));                    \
    } while (0)

/* x[0..31] . nibbles of 16 bytes (low nibbles are elements 0..15, high nibbles 16..31) */
AVX2 static inline __m256 nibble_dot32(const uint8_t *qs, const float *x) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(raw, m4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    __m256 f0, f1, f2, f3;
    U8X16_TO_PS(lo, f0, f1);
    U8X16_TO_PS(hi, f2, f3);
    __m256 acc = _mm256_mul_ps(f0, _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), acc);
    return _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), acc);
}

/* x[0..31] . 32 signed bytes */
AVX2 static inline __m256 s8_dot32(__m256i q, const float *x) {
    __m128i a = _mm256_castsi256_si128(q), b = _mm256_extracti128_si256(q, 1);
    __m256 acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))), _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_loadu_ps(x + 16), acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))), _mm256_loadu_ps(x + 24), acc);
}

/* x[0..15] . 16 signed bytes */
AVX2 static inline __m256 s8_dot16(__m128i q, const float *x) {
    __m256 acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_loadu_ps(x));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), _mm256_loadu_ps(x + 8), acc);
}

/* One row of W times one activation vector. `xsum` holds the sums of x over each 32-element block (for
 * the offsets of Q4_1 and Q4_K: sum (d q + m) x = d sum q x + m sum x). */
AVX2 static float row_dot_avx2(int type, const uint8_t *src, const float *x, const float *xsum, int K) {
    __m256 acc = _mm256_setzero_ps();
    float offset = 0.0f;
    switch (type) {
    case T_F32: {
        const float *w = (const float *)src;
        for (int k = 0; k < K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), acc);
        break;
    }
    case T_F16:
        for (int k = 0; k < K; k += 8)
            acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * k))), _mm256_loadu_ps(x + k), acc);
        break;
    case T_Q4_0:
        for (int b = 0; b < K / 32; b++, src += 18) {
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(src)), nibble_dot32(src + 2, x + 32 * b), acc);
            offset -= 8.0f * h2f(src) * xsum[b];
        }
        break;
    case T_Q4_1:
        for (int b = 0; b < K / 32; b++, src += 20) {
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(src)), nibble_dot32(src + 4, x + 32 * b), acc);
            offset += h2f(src + 2) * xsum[b];
        }
        break;
    case T_Q8_0:
        for (int b = 0; b < K / 32; b++, src += 34)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(src)), s8_dot32(_mm256_loadu_si256((const __m256i *)(src + 2)), x + 32 * b), acc);
        break;
    case T_Q4_K: {
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        for (int b = 0; b < K / 256; b++, src += 144) {
            float d = h2f(src), dmin = h2f(src + 2);
            const uint8_t *scales = src + 4, *q = src + 16;
            const float *xb = x + 256 * b, *sb = xsum + 8 * b;
            for (int j = 0; j < 4; j++, q += 32, xb += 64) {
                uint8_t sc0, m0, sc1, m1;
                scale_min_k4(2 * j, scales, &sc0, &m0);
                scale_min_k4(2 * j + 1, scales, &sc1, &m1);
                __m256i raw = _mm256_loadu_si256((const __m256i *)q);
                __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                /* nibbles are 0..15: as signed bytes they convert the same */
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc0), s8_dot32(lo, xb), acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc1), s8_dot32(hi, xb + 32), acc);
                offset -= dmin * m0 * sb[2 * j] + dmin * m1 * sb[2 * j + 1];
            }
        }
        break;
    }
    case T_Q6_K: {
        const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x30), off = _mm256_set1_epi8(32);
        for (int b = 0; b < K / 256; b++, src += 210) {
            const uint8_t *ql = src, *qh = src + 128;
            const int8_t *sc = (const int8_t *)(src + 192);
            float d = h2f(src + 208);
            const float *xb = x + 256 * b;
            for (int n = 0; n < 2; n++, ql += 64, qh += 32, sc += 8, xb += 128) {
                __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                __m256i h = _mm256_loadu_si256((const __m256i *)qh);
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m3));
                q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m3));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m3));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m3));
                for (int i = 0; i < 4; i++) {
                    __m256i v = _mm256_sub_epi8(q[i], off);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * i]), s8_dot16(_mm256_castsi256_si128(v), xb + 32 * i), acc);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * i + 1]), s8_dot16(_mm256_extracti128_si256(v, 1), xb + 32 * i + 16), acc);
                }
            }
        }
        break;
    }
    }
    return hsum8(acc) + offset;
}

AVX2 static float dot_avx2(const float *a, const float *b, int K) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
    }
    for (; k + 8 <= K; k += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; k < K; k++) s += a[k] * b[k];
    return s;
}

/* Four activation rows against one fp32 weight row: the row is loaded once per four products. */
AVX2 static void dot4_avx2(const float *w, const float *x, int64_t ldx, int K, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
        __m256 wv = _mm256_loadu_ps(w + k);
        a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + ldx + k), a1);
        a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 2 * ldx + k), a2);
        a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 3 * ldx + k), a3);
    }
    out[0] = hsum8(a0);
    out[1] = hsum8(a1);
    out[2] = hsum8(a2);
    out[3] = hsum8(a3);
}

static int have_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached;
}

/* ---- a small persistent thread pool ------------------------------------------------------------------ */

#define MAX_THREADS 64
#define SPIN_ROUNDS 20000 /* ~50-200 us of pause instructions before a worker sleeps */

typedef void (*job_fn)(void *arg, int part, int parts);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;
    atomic_int pending;
    job_fn fn;
    void *arg;
    int parts;
    int workers; /* started so far */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void *worker_main(void *arg) {
    /* the generation current when the worker was created: its first job is the next one */
    int index = (int)((uintptr_t)arg & 0xFF); /* 1.. */
    unsigned seen = (unsigned)((uintptr_t)arg >> 8);
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
        if (index < pool.parts) {
            pool.fn(pool.arg, index, pool.parts);
            atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
        }
    }
    return NULL;
}

/* Run fn(arg, i, parts) for i in 0..parts-1: part 0 on the calling thread. One caller at a time. */
static void run_parallel(job_fn fn, void *arg, int parts) {
    static pthread_mutex_t callers = PTHREAD_MUTEX_INITIALIZER;
    if (parts > MAX_THREADS) parts = MAX_THREADS;
    if (parts <= 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&callers);
    while (pool.workers < parts - 1) {
        pthread_t thread;
        uintptr_t arg = ((uintptr_t)atomic_load(&pool.generation) << 8) | (uintptr_t)(pool.workers + 1);
        if (pthread_create(&thread, NULL, worker_main, (void *)arg) != 0) break;
        pthread_detach(thread);
        pool.workers++;
    }
    if (parts > pool.workers + 1) parts = pool.workers + 1;
    pool.fn = fn;
    pool.arg = arg;
    pool.parts = parts;
    atomic_store(&pool.pending, parts - 1);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(arg, 0, parts);
    /* NOTE: on an oversubscribed machine the worker may be descheduled: after a short spin, give the core away */
    for (int spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spins++) {
        if (spins < 2000) _mm_pause();
        else sched_yield();
    }
    pthread_mutex_unlock(&callers);
}

/* ---- entry points ----------------------------------------------------------------------------------- */

typedef struct {
    const tf_part *parts;
    int nparts, K, S, total_rows;
    const float *x, *xsum;
    float *y;
    int64_t ldy;
} matmul_job;

static void matmul_rows(void *arg, int part, int parts) {
    const matmul_job *job = arg;
    /* rows [begin, end) of the concatenation, in multiples of 8 so threads do not share cache lines of y */
    int chunk = ((job->total_rows + parts - 1) / parts + 7) & ~7;
    int begin = part * chunk, end = begin + chunk < job->total_rows ? begin + chunk : job->total_rows;
    int K = job->K, S = job->S, avx2 = have_avx2();
    float *buf = NULL;
    if (S > 1 || !avx2) buf = aligned_alloc(64, ((size_t)K * 4 + 63) & ~(size_t)63);
    int base = 0;
    for (int p = 0; p < job->nparts; base += job->parts[p].rows, p++) {
        const tf_part *w = &job->parts[p];
        int lo = begin > base ? begin - base : 0, hi = end - base < w->rows ? end - base : w->rows;
        for (int r = lo; r < hi; r++) {
            const uint8_t *row = w->data + (int64_t)r * w->row_bytes;
            float *out = job->y + base + r;
            if (S == 1 && avx2) {
                out[0] = row_dot_avx2(w->type, row, job->x, job->xsum, K);
                continue;
            }
            dequant_row_generic(w->type, row, K, buf);
            int s = 0;
            if (avx2) {
                float four[4];
                for (; s + 4 <= S; s += 4) {
                    dot4_avx2(buf, job->x + (int64_t)s * K, K, K, four);
                    for (int i = 0; i < 4; i++) out[(s + i) * job->ldy] = four[i];
                }
                for (; s < S; s++) out[s * job->ldy] = dot_avx2(buf, job->x + (int64_t)s * K, K);
            } else {
                for (; s < S; s++) out[s * job->ldy] = dot_generic(buf, job->x + (int64_t)s * K, K);
            }
        }
    }
    free(buf);
}

/* Returns 0, or -1 for an unknown type or a K the type's blocks do not divide. */
int tf_matmul(const tf_part *parts, int nparts, int K, const float *x, int S, float *y, int64_t ldy, int nthreads) {
    int total = 0;
    for (int p = 0; p < nparts; p++) {
        int elems = block_elems(parts[p].type);
        if (elems == 0 || K % elems != 0 || K % 8 != 0) return -1;
        total += parts[p].rows;
    }
    float *xsum = NULL;
    if (S == 1) {
        xsum = malloc(sizeof(float) * (size_t)(K / 32 + 1));
        for (int b = 0; b < K / 32; b++) {
            float s = 0;
            for (int j = 0; j < 32; j++) s += x[32 * b + j];
            xsum[b] = s;
        }
    }
    matmul_job job = {parts, nparts, K, S, total, x, xsum, y, ldy};
    int threads = nthreads < 1 ? 1 : nthreads;
    if (total < 64 * threads) threads = 1;
    run_parallel(matmul_rows, &job, threads);
    free(xsum);
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

static void dequant_rows(void *arg, int part, int parts) {
    const dequant_job *job = arg;
    int chunk = (job->n + parts - 1) / parts;
    int begin = part * chunk, end = begin + chunk < job->n ? begin + chunk : job->n;
    for (int i = begin; i < end; i++) {
        int64_t r = job->rows ? job->rows[i] : i;
        dequant_row_generic(job->type, job->data + r * job->row_bytes, job->K, job->out + (int64_t)i * job->K);
    }
}

int tf_dequant(int type, const uint8_t *data, int64_t row_bytes, int K, const int64_t *rows, int n, float *out, int nthreads) {
    int elems = block_elems(type);
    if (elems == 0 || K % elems != 0) return -1;
    dequant_job job = {type, K, data, row_bytes, rows, n, out};
    int threads = nthreads < 1 ? 1 : nthreads;
    if (n < 16 * threads) threads = 1;
    run_parallel(dequant_rows, &job, threads);
    return 0;
}

int tf_has_avx2(void) { return have_avx2(); }
