/* The tiles of csrc/quant.c, included there once per instruction set (no include guard): TILE_ATTR is the
 * functions' target attribute, TV(name) their name for it, TILE_VNNI whether a block's madds and adds are
 * fused (vpdpwssd). Every variant computes the same integers and the same fp32 operations in the same order,
 * so the same bits: which one a machine runs changes speed only (tests/unit/kernels/test_quant.py). */

/* acc + token t's integer dot product of block b with the weights' even and odd values: two madds and their
 * adds, or two fused ones (AVX-512 VNNI vpdpwssd: the same wrapping 32-bit sums, so the same integers) */
TILE_ATTR static ALWAYS_INLINE __m256i TV(block_dot)(__m256i acc, __m256i even, __m256i odd, const qact *act, int t, int b) {
    const __m256i *a = (const __m256i *)(act[t].q + 32 * b);
#if TILE_VNNI
    return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(acc, even, _mm256_loadu_si256(a)), odd, _mm256_loadu_si256(a + 1));
#else
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(even, _mm256_loadu_si256(a)), _mm256_madd_epi16(odd, _mm256_loadu_si256(a + 1))));
#endif
}

/* One token (a decode step) through Q4_K: the same integer lanes, fp32 operations and order as ktile_dot gives each
 * token of a tile, so the same bits, but each block's two madds are summed unscaled and then multiplied by its
 * scale in 32 bits (madd(q * sc, a) = sc * madd(q, a) exactly: no lane overflows, see kquant_run), and the fp32 sum
 * stays in a register: 2 scale multiplies + 2 madds a block became 2 madds + 1 multiply (32 rows of 1,536 values
 * from L2, 1 thread: 1.31 -> 1.16 ns a block; Qwen2.5-Coder-1.5B's decode step, 2 threads, medians of 5 alternating
 * rounds: 41.2 -> 39.4 ms on the Zen 4 host, /work/runs/abstep.py, 2026-12-07). An earlier note guessed the vector
 * integer multiplies share one pipe on Zen 4; a register-only loop there runs two vpdpwssd a cycle, so the tile is
 * bound by its ~10 operations a block as a whole. Q6_K alike: ktile1_q6k. NOTE: summing each run exactly (as
 * doubles) so that a one-token tile could scale a run's 8 block sums in one multiply after an hadd tree was slower
 * at one token (1.39 ns) and made the 8-token tile 15 % slower: not kept. */
TILE_ATTR static ALWAYS_INLINE void TV(ktile1_q4k)(const uint8_t *row, const qact *act, int K, float *y) {
    const __m256i low4 = _mm256_set1_epi16(0x000F);
    __m256 sum = _mm256_setzero_ps(), mn;
    for (int sb = 0; sb < K / 256; sb++) {
        const uint8_t *blk = row + (int64_t)sb * 144;
        PREFETCH(blk, 144);
        int16_t sc16[8] __attribute__((aligned(16)));
        int32_t sc[8] __attribute__((aligned(32)));
        k4_scales(blk, sc16, &mn);
        _mm256_store_si256((__m256i *)sc, _mm256_cvtepi16_epi32(_mm_load_si128((const __m128i *)sc16)));
        __m256i isum = _mm256_setzero_si256();
        for (int p = 0; p < 4; p++) { /* 32 bytes: block 2p in the low nibbles, 2p + 1 in the high ones */
            __m256i raw = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * p));
            __m256i u0 = TV(block_dot)(_mm256_setzero_si256(), _mm256_and_si256(raw, low4), _mm256_and_si256(_mm256_srli_epi16(raw, 8), low4), act, 0, 8 * sb + 2 * p);
            __m256i u1 = TV(block_dot)(_mm256_setzero_si256(), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), _mm256_srli_epi16(raw, 12), act, 0, 8 * sb + 2 * p + 1);
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(u0, _mm256_set1_epi32(sc[2 * p])));
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(u1, _mm256_set1_epi32(sc[2 * p + 1])));
        }
        sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(blk) * act[0].d[8 * sb]), sum);
        sum = _mm256_fnmadd_ps(mn, _mm256_loadu_ps(act[0].ds + 8 * sb), sum); /* value = d * sc * q - dmin * m */
    }
    *y = hsum8(sum);
}

/* One token through Q6_K, as ktile1_q4k does for Q4_K: each block's two madds of (q - 32) and the activations
 * summed unscaled, then times its two sub-block scales in 32 bits (lanes 0..3 scale 2i, lanes 4..7 scale 2i + 1,
 * the lanes of ktile_dot's 16-bit products: the same integers), the half super-block's sum converted and added as
 * ktile_dot does for each token of a tile, so the same bits. 4 multiplies a block became 3: 1.45 -> 1.23 ns a block
 * with AVX-512 VNNI, 1.48 -> 1.36 with AVX2 (64 rows of 1,536 values from L2, 1 thread, /tmp/mb3, 2026-12-07). An
 * earlier try of this, before the AVX-512 build and the Q4_K tile's change, measured no gain. */
TILE_ATTR static ALWAYS_INLINE void TV(ktile1_q6k)(const uint8_t *row, const qact *act, int K, float *y) {
    const __m256i low8 = _mm256_set1_epi16(0x00FF), off32 = _mm256_set1_epi16(32);
    __m256 sum = _mm256_setzero_ps();
    for (int sb = 0; sb < K / 256; sb++) {
        const uint8_t *blk = row + (int64_t)sb * 210;
        PREFETCH(blk, 210);
        float d = h2f(blk + 208);
        for (int half = 0; half < 2; half++) {
            __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 192 + 8 * half)));
            const uint8_t *ql = blk + 64 * half, *qh = blk + 128 + 32 * half;
            __m256i isum = _mm256_setzero_si256();
            for (int i = 0; i < 4; i++) {
                __m256i q = q6k_unpack_one(ql, qh, i);
                __m256i scale = q6k_block_scales(sc, i);
                __m256i u = TV(block_dot)(_mm256_setzero_si256(), _mm256_sub_epi16(_mm256_and_si256(q, low8), off32),
                                          _mm256_sub_epi16(_mm256_srli_epi16(q, 8), off32), act, 0, 8 * sb + 4 * half + i);
                isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(u, scale));
            }
            sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * act[0].d[8 * sb]), sum);
        }
    }
    *y = hsum8(sum);
}

/* The K-quants: y[t * ldy + r] = row r . token t for T tokens and NR rows (1, or 2 at rows row and row + rb:
 * KPAIRS). Each block's values times their sub-block's integer
 * scale in 16 bits (Q4_K: q * sc <= 945; Q6_K: |(q - 32) * sc| <= 4096), their madds summed in 32-bit lanes
 * over kquant_run blocks (the token's activations share one scale over the super-block), then one conversion
 * and one FMA per token into its fp32 sums, kacc[r][t]; Q4_K's mins times the blocks' activation sums. Every (row,
 * token) sum takes the same operations in the same order whatever T and NR are (one token: ktile1_q4k and
 * ktile1_q6k, the same bits). The fp32 sums stay in memory (KEEP_IN_MEMORY): in
 * registers they left too few for 8 tokens' integer sums and a block's weights, and the 8-token tile ran 1.2x
 * slower on Qwen2.5-Coder's Q4_K rows (/work/runs/kab.py, 2026-12-07). NOTE: cutting the rows' super-blocks in
 * chunks whose activations L1 holds (16 KB for 8 tokens; fp32 sums of 16 rows waiting between chunks) made its
 * ffn_down (8,960 values) 3-7 % faster and its 1,536-value rows 10-15 % slower: not kept. */
TILE_ATTR static ALWAYS_INLINE void TV(ktile_dot)(int type, int T, int NR, const uint8_t *row, int64_t rb, const qact *act, int K, float *y, int64_t ldy) {
    if (T == 1) { /* never in pairs (KPAIRS) */
        if (type == T_Q4_K) TV(ktile1_q4k)(row, act, K, y);
        else TV(ktile1_q6k)(row, act, K, y);
        return;
    }
    const __m256i low4 = _mm256_set1_epi16(0x000F), low8 = _mm256_set1_epi16(0x00FF);
    __m256i isum[2][MAX_TILE];
    __m256 mn[2]; /* Q4_K: the super-block's mins */
    float kacc[2][MAX_TILE][8] __attribute__((aligned(32)));
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            isum[r][t] = _mm256_setzero_si256();
            _mm256_store_ps(kacc[r][t], _mm256_setzero_ps());
        }
    }
    /* block b of each row r (its weights: the expressions even, odd of r) times the T tokens: a token's
     * activations are loaded once for both rows of a pair */
#define KBLOCK(even, odd, b)                                                                                    \
    do {                                                                                                       \
        _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                                                  \
            for (int r = 0; r < NR; r++) {                                                                     \
                isum[r][t] = TV(block_dot)(isum[r][t], even, odd, act, t, b);                                   \
                ONE_BLOCK_LIVE(isum[r][t]);                                                                     \
            }                                                                                                  \
        }                                                                                                      \
    } while (0)
    /* the integer sums times the row's scale dw times each token's (one vector product over the group's scales,
     * lane t the product dw * act[t].d[b] that the one-token tiles take), plus Q4_K's mins (mn: 8 blocks' dmin * m)
     * times the blocks' activation sums (ds), in one update of the fp32 sums */
#define KFLUSH(doff, b, mins)                                                                                   \
    do {                                                                                                       \
        for (int r = 0; r < NR; r++) {                                                                         \
            float scl[8] __attribute__((aligned(32)));                                                         \
            float dw = h2f(blk[r] + (doff));                                                                   \
            _mm256_store_ps(scl, _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(act[0].group_d + 8 * (b))));   \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                                              \
                __m256 sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_broadcast_ss(&scl[t]), _mm256_load_ps(kacc[r][t])); \
                if (mins) sum = _mm256_fnmadd_ps(mn[r], _mm256_loadu_ps(act[t].ds + (b)), sum);                 \
                _mm256_store_ps(kacc[r][t], sum);                                                              \
                isum[r][t] = _mm256_setzero_si256();                                                           \
            }                                                                                                  \
        }                                                                                                      \
        KEEP_IN_MEMORY();                                                                                      \
    } while (0)
    if (type == T_Q4_K) {
        for (int sb = 0; sb < K / 256; sb++) {
            const uint8_t *blk[2];
            int16_t sc[2][8] __attribute__((aligned(16)));
            for (int r = 0; r < NR; r++) {
                blk[r] = row + r * rb + (int64_t)sb * 144;
                PREFETCH(blk[r], 144);
                k4_scales(blk[r], sc[r], &mn[r]);
            }
            /* 32 bytes: block 2p in the low nibbles, 2p + 1 in the high ones */
            for (int p = 0; p < 4; p++) {
                __m256i raw[2];
                for (int r = 0; r < NR; r++) raw[r] = _mm256_loadu_si256((const __m256i *)(blk[r] + 16 + 32 * p));
                KBLOCK(_mm256_mullo_epi16(_mm256_and_si256(raw[r], low4), _mm256_set1_epi16(sc[r][2 * p])),
                       _mm256_mullo_epi16(_mm256_and_si256(_mm256_srli_epi16(raw[r], 8), low4), _mm256_set1_epi16(sc[r][2 * p])), 8 * sb + 2 * p);
                for (int r = 0; r < NR; r++) ONE_BLOCK_LIVE(raw[r]);
                KBLOCK(_mm256_mullo_epi16(_mm256_and_si256(_mm256_srli_epi16(raw[r], 4), low4), _mm256_set1_epi16(sc[r][2 * p + 1])),
                       _mm256_mullo_epi16(_mm256_srli_epi16(raw[r], 12), _mm256_set1_epi16(sc[r][2 * p + 1])), 8 * sb + 2 * p + 1);
            }
            KFLUSH(0, 8 * sb, 1); /* value = d * sc * q - dmin * m */
        }
    } else {
        /* lanes 0..7 of E and O hold values 0..15 of the block, lanes 8..15 values 16..31: each 16 with its scale */
        const __m256i off32 = _mm256_set1_epi16(32);
        for (int sb = 0; sb < K / 256; sb++) {
            const uint8_t *blk[2];
            for (int r = 0; r < NR; r++) {
                blk[r] = row + r * rb + (int64_t)sb * 210;
                PREFETCH(blk[r], 210);
            }
            for (int half = 0; half < 2; half++) {
                __m256i pairs[2];
                for (int r = 0; r < NR; r++) {
                    __m128i sc8 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(blk[r] + 192 + 8 * half)));
                    /* dword k: scale k twice */
                    pairs[r] = _mm256_set_m128i(_mm_unpackhi_epi16(sc8, sc8), _mm_unpacklo_epi16(sc8, sc8));
                }
                for (int i = 0; i < 4; i++) {
                    __m256i even[2], odd[2];
                    for (int r = 0; r < NR; r++) {
                        __m256i q = q6k_unpack_one(blk[r] + 64 * half, blk[r] + 128 + 32 * half, i);
                        __m256i scale = q6k_block_scales(pairs[r], i);
                        even[r] = _mm256_mullo_epi16(_mm256_sub_epi16(_mm256_and_si256(q, low8), off32), scale);
                        odd[r] = _mm256_mullo_epi16(_mm256_sub_epi16(_mm256_srli_epi16(q, 8), off32), scale);
                    }
                    KBLOCK(even[r], odd[r], 8 * sb + 4 * half + i);
                    for (int r = 0; r < NR; r++) ONE_BLOCK_LIVE(pairs[r]);
                }
                KFLUSH(208, 8 * sb, 0);
            }
        }
    }
#undef KBLOCK
#undef KFLUSH
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) y[t * ldy + r] = hsum8(_mm256_load_ps(kacc[r][t]));
    }
}

/* The 32-value types (Q4_0, Q4_1, Q8_0): y[t * ldy] = row . token t for T tokens. Each block's weights are
 * unpacked once for all T tokens (the batched decode rows of many editors, a draft verification, a small
 * prefill chunk). Per block and token: two madds, one conversion and one FMA with the block's scale times the
 * token's. Offsets (Q4_0's -8, Q4_1's mins) times the activation blocks' sums are summed apart. Every (row,
 * token) sum takes the same operations in the same order whatever T is, so a token's products do not depend
 * on how many others share the call (the same holds for ktile_dot). */
TILE_ATTR static ALWAYS_INLINE void TV(tile_dot)(int type, int T, const uint8_t *row, const qact *act, int K, float *y, int64_t ldy) {
    __m256 acc[MAX_TILE];
    float scl[8] __attribute__((aligned(32))), off[MAX_TILE] __attribute__((aligned(32)));
    const __m256i low4 = _mm256_set1_epi16(0x000F);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        off[t] = 0.0f;
    }
    /* per block a scalar scale (gathering 8 blocks' scales in a vector was 1.1-1.3x slower on SmolLM2's rows
     * of 18 blocks) */
    const int bytes = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : 34;
    __m256 offsets = _mm256_setzero_ps();
    for (int b = 0; b < K / 32; b++) {
        const uint8_t *blk = row + (int64_t)b * bytes;
        __m256i even, odd;
        if (type == T_Q8_0) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(blk + 2));
            even = _mm256_srai_epi16(_mm256_slli_epi16(raw, 8), 8);
            odd = _mm256_srai_epi16(raw, 8);
        } else {
            __m128i raw = _mm_loadu_si128((const __m128i *)(blk + (type == T_Q4_1 ? 4 : 2)));
            __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
            even = _mm256_and_si256(both, low4);
            odd = _mm256_and_si256(_mm256_srli_epi16(both, 8), low4);
        }
        /* Q4_1's d and m (fp16 at blk, blk + 2) in one conversion: 1.61 -> 1.54 ns a block at one token on
         * SmolLM2's 576-value rows (/work/runs/hv5.c), its decode step 6.00 -> 5.66 ms (medians of 5
         * alternating rounds, /work/runs/abstep.py; 2026-12-07); Q4_0 and Q8_0 convert their d alike. NOTE:
         * fp32 scales read from memory instead ran 1.27 ns: a table of them would cost 8 bytes a block (+36 MB
         * for SmolLM2, past its RSS target) or a repacked copy of the weights. */
        __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(rd16(blk) | (uint32_t)(type == T_Q4_1 ? rd16(blk + 2) : 0) << 16)));
        float d = _mm_cvtss_f32(dm), m = type == T_Q4_1 ? _mm_cvtss_f32(_mm_movehdup_ps(dm)) : -8.0f * d;
        if (T == 1 || type == T_Q8_0) {
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * act[t].d[b]), _mm256_cvtepi32_ps(TV(block_dot)(_mm256_setzero_si256(), even, odd, act, t, b)), acc[t]);
                if (type != T_Q8_0) off[t] = fmaf(m, act[t].ds[b], off[t]);
            }
        } else {
            /* Q4_0/Q4_1 tiles of several tokens: their scales in one vector product (lane t: d * token t's
             * scale, the same product as above), broadcast from memory, and their offsets summed in the
             * lanes of one vector: 1.25x faster at 8 tokens on SmolLM2's rows (Q8_0, with no offsets,
             * gained nothing) */
            _mm256_store_ps(scl, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(act[0].group_d + 8 * b)));
            offsets = _mm256_fmadd_ps(_mm256_set1_ps(m), _mm256_loadu_ps(act[0].group_ds + 8 * b), offsets);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scl[t]), _mm256_cvtepi32_ps(TV(block_dot)(_mm256_setzero_si256(), even, odd, act, t, b)), acc[t]);
        }
    }
    if (T > 1 && type != T_Q8_0) _mm256_store_ps(off, offsets);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) y[t * ldy] = hsum8(acc[t]) + off[t];
}


/* n rows in one call: SmolLM2's rows are 18 blocks, and a call per row cost ~10 cycles per block */
#define TILE(TYPE, T)                                                                                                  \
    TILE_ATTR static void TV(tile_##TYPE##_##T)(const uint8_t *rows, int64_t row_bytes, int n, const qact *act, int K, float *y, int64_t ldy) { \
        for (int r = 0; r < n; r++) TV(tile_dot)(T_##TYPE, T, rows + r * row_bytes, act, K, y + r, ldy);                \
    }
#define TILES(TYPE) TILE(TYPE, 1) TILE(TYPE, 2) TILE(TYPE, 3) TILE(TYPE, 4) TILE(TYPE, 5) TILE(TYPE, 6) TILE(TYPE, 7) TILE(TYPE, 8)
TILES(Q4_0) TILES(Q4_1) TILES(Q8_0)
/* K-quant rows in pairs, for 8 tokens whose activations L1 cannot hold (8 x K x 2 bytes > 32 KiB, K > 2,048:
 * Qwen2.5-Coder's ffn_down of 8,960 values), where AVX-512's 32 registers hold both rows' sums: each activation
 * vector read from L2 serves two rows. ns per block and token, 32 rows from L2, 1 thread, one row / pairs
 * (/tmp/mb3, 2026-12-07): Q4_K at 8,960 values 0.68 / 0.47, at 2,560 0.67 / 0.48, at 2,048 0.56 / 0.55, at
 * 1,536 0.47 / 0.50; Q6_K at 8,960 0.64 / 0.59, at 1,536 0.50 / 0.58. Each (row, token) sum is computed as a
 * single row's, so the same bits. */
#define KPAIRS(T, K) (TILE_VNNI && (T) == MAX_TILE && (K) > 2048)
#define KTILE(TYPE, T)                                                                                                 \
    TILE_ATTR static void TV(tile_##TYPE##_##T)(const uint8_t *rows, int64_t row_bytes, int n, const qact *act, int K, float *y, int64_t ldy) { \
        int r = 0;                                                                                                     \
        if (KPAIRS(T, K))                                                                                              \
            for (; r + 1 < n; r += 2) TV(ktile_dot)(T_##TYPE, T, 2, rows + r * row_bytes, row_bytes, act, K, y + r, ldy); \
        for (; r < n; r++) TV(ktile_dot)(T_##TYPE, T, 1, rows + r * row_bytes, row_bytes, act, K, y + r, ldy);         \
    }
#define KTILES(TYPE) KTILE(TYPE, 1) KTILE(TYPE, 2) KTILE(TYPE, 3) KTILE(TYPE, 4) KTILE(TYPE, 5) KTILE(TYPE, 6) KTILE(TYPE, 7) KTILE(TYPE, 8)
KTILES(Q4_K) KTILES(Q6_K)

#define TILE_TABLE(TYPE) {TV(tile_##TYPE##_1), TV(tile_##TYPE##_2), TV(tile_##TYPE##_3), TV(tile_##TYPE##_4), TV(tile_##TYPE##_5), TV(tile_##TYPE##_6), TV(tile_##TYPE##_7), TV(tile_##TYPE##_8)}
static const tile_fn TV(tile_table)[5][MAX_TILE] = {TILE_TABLE(Q4_0), TILE_TABLE(Q4_1), TILE_TABLE(Q8_0), TILE_TABLE(Q4_K), TILE_TABLE(Q6_K)};

#undef TILE
#undef TILES
#undef KTILE
#undef KTILES
#undef KPAIRS
#undef TILE_TABLE
