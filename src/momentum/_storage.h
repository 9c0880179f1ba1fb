/* 16-bit storage for momentum's kernels: conversions and the blocked driver.
 *
 * Compiled into every kernel build (each _kernels*.pyx includes it through
 * _loops.pxi), so the loops below vectorise for that build's instruction set.
 * A rule's loops exist for float and double only; a kernel whose arrays mix
 * float32 with bfloat16 or float16 runs them in chunks: each 16-bit array's
 * chunk is widened into float32 scratch (exactly), the rule's float32 loop
 * runs on the scratch, and each written 16-bit array's chunk is rounded back
 * once.  So the arithmetic is float32 in the rule's order, and every value is
 * rounded once, when it is stored.  (In the common 16-bit layouts,
 * rules.vector16_combos, rounded to nearest or with a master, the AVX-512
 * builds run a task's whole vectors in _vector16.h's bodies instead, with
 * the same results; the driver takes the remainder.)
 *
 * The roundings are bitwise those of NumPy's astype (momentum.reference):
 *  - float32 -> bfloat16 as ml_dtypes: nearest even, subnormals kept, NaN to
 *    the quiet NaN 0x7fc0 with the input's sign;
 *  - float32 -> float16 as NumPy: nearest even, subnormals kept, overflow to
 *    infinity, NaN keeps the top 10 bits of its payload (at least 1);
 *  - float16 -> float32 as NumPy (exact; a NaN's payload is not quieted).
 * Stochastic rounding adds random bits below the kept ones and truncates
 * (bfloat16: 16 bits; float16: 13 bits for normal results, and for
 * subnormal ones rounds up with probability equal to the dropped fraction,
 * at 2^-24 resolution); NaN and infinity round as to nearest.
 * The random bits of element i of a tensor come from a counter-based hash
 * of (seed, step, tensor, array, i): independent of threads, chunking,
 * batches and ISA.
 */
#ifndef MOMENTUM_STORAGE_H
#define MOMENTUM_STORAGE_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "momentum.h"

#if defined(__AVX512BF16__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* Elements per chunk: the scratch of a 6-array rule stays inside L1.  256
 * measured fastest out of DRAM on Zen 5 (all-bfloat16 sgd at 32 Mi, one
 * thread: 64 1.6, 128 1.9-2.0, 256 2.4-2.5, 512 2.1-2.2, 2048 1.3 Gelem/s),
 * the same in cache from 128 up. */
#define MOMENTUM_CHUNK 256

static inline uint32_t mm_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float mm_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---------------------------------------------------------------- widening */

static void mm_load_bf16(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] = mm_float((uint32_t)src[i] << 16);
}

/* The loops below pick among candidate results with masks, not branches or
 * ?:, so that GCC vectorises them (it does not if-convert these chains). */
static inline uint32_t mm_mask(int condition) { return 0u - (uint32_t)condition; }

static inline float mm_f16_widen(uint32_t h)
{
    uint32_t a = h & 0x7fffu, sign = (h & 0x8000u) << 16;
    uint32_t special = mm_mask(a >= 0x7c00u), normal = mm_mask(a >= 0x0400u) & ~special;
    uint32_t big = ((a << 13) + 0x38000000u) & normal;             /* normal */
    uint32_t odd = ((a << 13) | 0x7f800000u) & special;           /* inf, NaN */
    uint32_t sub = mm_bits((float)(int32_t)a * 0x1p-24f) & ~(special | normal);
    return mm_float(sign | big | odd | sub);
}

#if defined(__F16C__) && defined(__AVX512F__)
/* Whether 16 float16 values hold a NaN (vcvtph2ps would quiet a signalling one). */
static inline int mm_f16_any_nan(__m256i h)
{
    __m256i a = _mm256_and_si256(h, _mm256_set1_epi16(0x7fff));
    return _mm256_movemask_epi8(_mm256_cmpgt_epi16(a, _mm256_set1_epi16(0x7c00))) != 0;
}
#endif

static void mm_load_f16(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    size_t i = 0;
    /* vcvtph2ps is exact but quiets a signalling NaN: a vector holding a
     * NaN takes the portable path.  AVX-512 builds convert 16 at a time
     * first (8 at a time left half the AVX-512 build's float16 step in here). */
#if defined(__F16C__) && defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(src + i));
        if (mm_f16_any_nan(h)) {
            size_t j;
            for (j = i; j < i + 16; j++)
                dst[j] = mm_f16_widen(src[j]);
        } else {
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
        }
    }
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i a = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
        if (_mm_movemask_epi8(_mm_cmpgt_epi16(a, _mm_set1_epi16(0x7c00)))) {
            size_t j;
            for (j = i; j < i + 8; j++)
                dst[j] = mm_f16_widen(src[j]);
        } else {
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
    }
#endif
    for (; i < n; i++)
        dst[i] = mm_f16_widen(src[i]);
}

/* ------------------------------------------------------ rounding to nearest */

static inline uint32_t mm_bf16_nearest(uint32_t u)
{
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? nan : r;
}

static inline uint32_t mm_f16_nearest(uint32_t u)
{
    uint32_t a = u & 0x7fffffffu, sign = (u >> 16) & 0x8000u;
    uint32_t payload = (a >> 13) & 0x3ffu;
    uint32_t nan = mm_mask(a > 0x7f800000u), inf = mm_mask(a >= 0x477ff000u) & ~nan;
    uint32_t normal = mm_mask(a >= 0x38800000u) & ~(nan | inf);
    uint32_t sub = ~(nan | inf | normal);
    /* below 2^-14 the result is a multiple of 2^-24: scale (exactly) and
     * round to an integer by the float adder, which rounds to nearest even */
    float t = mm_float(a & sub) * 0x1p24f;
    uint32_t whole = (uint32_t)(int32_t)((t + 0x1p23f) - 0x1p23f);
    return sign | ((0x7c00u | payload | (payload == 0)) & nan) | (0x7c00u & inf)
           | (((a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13) & normal) | (whole & sub);
}

#if defined(__AVX512BF16__)
/* The lanes vcvtneps2bf16 rounds otherwise than mm_bf16_nearest: NaN (it
 * keeps the payload) and subnormal (it flushes them), by integer compares,
 * not vfpclassps: under DAZ (as torch.set_flush_denormal(True) sets) that
 * reports a subnormal as zero. */
static inline __mmask16 mm_bf16_odd(__m512 x)
{
    __m512i a = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
    return _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000))
         | _mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(1)),
                                   _mm512_set1_epi32(0x007fffff));
}
#endif

static void mm_store_bf16(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    size_t i = 0;
#if defined(__AVX512BF16__)
    /* a vector holding a lane vcvtneps2bf16 rounds otherwise takes the
     * portable path (zeros convert exactly) */
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(src + i);
        if (mm_bf16_odd(x)) {
            size_t j;
            for (j = i; j < i + 16; j++)
                dst[j] = (uint16_t)mm_bf16_nearest(mm_bits(src[j]));
        } else {
            _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(x));
        }
    }
#endif
    for (; i < n; i++)
        dst[i] = (uint16_t)mm_bf16_nearest(mm_bits(src[i]));
}

static void mm_store_f16(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    size_t i = 0;
    /* vcvtps2ph rounds as above, but quiets a NaN: a vector holding one
     * takes the portable path (16 at a time in AVX-512 builds, then 8). */
#if defined(__F16C__) && defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(src + i);
        if (_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q)) {
            size_t j;
            for (j = i; j < i + 16; j++)
                dst[j] = (uint16_t)mm_f16_nearest(mm_bits(src[j]));
        } else {
            _mm256_storeu_si256((__m256i *)(dst + i),
                                _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
    }
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) {
            size_t j;
            for (j = i; j < i + 8; j++)
                dst[j] = (uint16_t)mm_f16_nearest(mm_bits(src[j]));
        } else {
            _mm_storeu_si128((__m128i *)(dst + i),
                             _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
    }
#endif
    for (; i < n; i++)
        dst[i] = (uint16_t)mm_f16_nearest(mm_bits(src[i]));
}

/* -------------------------------------------------------- random bits */

static inline uint64_t mm_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The key of one array's stochastic rounding, for elements whose index
 * shares the high 32 bits `high`. */
static inline uint64_t mm_key(const momentum_task *t, uint32_t array, uint64_t high)
{
    uint64_t k = mm_mix64(t->seed);
    k = mm_mix64(k ^ t->step);
    k = mm_mix64(k ^ t->tensor);
    return mm_mix64(k ^ ((uint64_t)array | high << 8));
}

static inline uint32_t mm_hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* 32 random bits for the element of low index bits `i`: one round of the
 * hash over the index and the key's low half (the key itself is well mixed,
 * per chunk), xored with its high half. */
static inline uint32_t mm_random(uint64_t key, uint32_t i)
{
    return mm_hash32(i ^ (uint32_t)key) ^ (uint32_t)(key >> 32);
}

/* ------------------------------------------------------ stochastic rounding */

/* n is at most MOMENTUM_CHUNK: a 32-bit counter keeps the index in 32-bit lanes. */
static void mm_store_bf16_stochastic(uint16_t *restrict dst, const float *restrict src,
                                     uint32_t n, uint64_t key, uint32_t first)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        uint32_t u = mm_bits(src[i]), a = u & 0x7fffffffu;
        uint32_t nan = mm_mask(a > 0x7f800000u), inf = mm_mask(a == 0x7f800000u);
        uint32_t r = (u + (mm_random(key, first + i) >> 16)) >> 16;
        dst[i] = (uint16_t)(((((u >> 16) & 0x8000u) | 0x7fc0u) & nan) | ((u >> 16) & inf)
                            | (r & ~(nan | inf)));
    }
}

static void mm_store_f16_stochastic(uint16_t *restrict dst, const float *restrict src,
                                    uint32_t n, uint64_t key, uint32_t first)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        uint32_t u = mm_bits(src[i]), bits = mm_random(key, first + i);
        uint32_t a = u & 0x7fffffffu, sign = (u >> 16) & 0x8000u;
        uint32_t payload = (a >> 13) & 0x3ffu;
        uint32_t nan = mm_mask(a > 0x7f800000u), inf = mm_mask(a >= 0x47800000u) & ~nan;
        uint32_t normal = mm_mask(a >= 0x38800000u) & ~(nan | inf);
        uint32_t sub = ~(nan | inf | normal);
        float t = mm_float(a & sub) * 0x1p24f;                     /* exact */
        int32_t whole = (int32_t)t;
        float below = t - (float)whole;                            /* exact */
        uint32_t up = (uint32_t)((float)(int32_t)(bits >> 8) * 0x1p-24f < below);
        dst[i] = (uint16_t)(sign | ((0x7c00u | payload | (payload == 0)) & nan) | (0x7c00u & inf)
                            | (((a - 0x38000000u + (bits >> 19)) >> 13) & normal)
                            | (((uint32_t)whole + up) & sub));
    }
}

/* ------------------------------------------------------- by dtype code */

static void mm_load16(uint32_t dtype, float *dst, const uint16_t *src, size_t n)
{
    if (dtype == MOMENTUM_BFLOAT16)
        mm_load_bf16(dst, src, n);
    else
        mm_load_f16(dst, src, n);
}

/* Round src[0:n] into dst[0:n] to nearest. */
static void mm_store_nearest(uint32_t dtype, uint16_t *dst, const float *src, size_t n)
{
    if (dtype == MOMENTUM_BFLOAT16)
        mm_store_bf16(dst, src, n);
    else
        mm_store_f16(dst, src, n);
}

/* Round src[0:n] into dst[0:n], elements `index`.. of array `array`. */
static void mm_store16(const momentum_task *t, uint32_t dtype, uint32_t array,
                       uint16_t *dst, const float *src, size_t n, size_t index)
{
    if ((t->stochastic >> array) & 1u) {
        uint64_t key = mm_key(t, array, (uint64_t)index >> 32);
        if (dtype == MOMENTUM_BFLOAT16)
            mm_store_bf16_stochastic(dst, src, (uint32_t)n, key, (uint32_t)index);
        else
            mm_store_f16_stochastic(dst, src, (uint32_t)n, key, (uint32_t)index);
    } else {
        mm_store_nearest(dtype, dst, src, n);
    }
}

/* Kahan-compensated store of a 16-bit parameter.  `fresh` holds the rule's
 * float32 result computed from the stored parameter p; with c the
 * compensation, y = (fresh - p) + c and s = p + y: the parameter becomes
 * round(s) and c becomes round(y - (round(s) - p)), both to nearest.  Where
 * y or s is not finite (an infinite or NaN parameter or result, or an
 * overflow) the parameter is round(fresh) and c is 0, as without Kahan (c
 * is 0 too where round(s) overflows to infinity); a
 * zero s takes the sign of fresh (-0.0 stays -0.0).
 *
 * In passes over the chunk (n <= MOMENTUM_CHUNK), so that every widening
 * and rounding is the vector one of mm_load16/mm_store16 (the hardware's,
 * where the build has it): widen p and c; form y and the value to store;
 * round it into param; widen what was stored; form and round the carry. */

static inline uint32_t mm_not_finite(float x)
{
    return mm_mask((mm_bits(x) & 0x7f800000u) == 0x7f800000u);
}

static void mm_store_kahan(uint32_t dtype, uint16_t *restrict param, uint16_t *restrict comp,
                           const float *restrict fresh, size_t n)
{
    float p[MOMENTUM_CHUNK], c[MOMENTUM_CHUNK], y[MOMENTUM_CHUNK], v[MOMENTUM_CHUNK];
    size_t i;
    mm_load16(dtype, p, param, n);
    mm_load16(dtype, c, comp, n);
    for (i = 0; i < n; i++) {
        float yi = (fresh[i] - p[i]) + c[i];
        uint32_t f = mm_bits(fresh[i]), sb = mm_bits(p[i] + yi);
        uint32_t plain = mm_not_finite(yi) | mm_not_finite(p[i] + yi);
        uint32_t zero = mm_mask((sb & 0x7fffffffu) == 0);
        y[i] = yi;
        v[i] = mm_float((f & plain) | (((f & 0x80000000u) | (sb & 0x7fffffffu)) & zero)
                        | (sb & ~(plain | zero)));
    }
    mm_store_nearest(dtype, param, v, n);
    mm_load16(dtype, v, param, n);       /* what was stored */
    for (i = 0; i < n; i++) {
        /* an overflow to infinity in the store carries nothing either */
        uint32_t plain = mm_not_finite(y[i]) | mm_not_finite(p[i] + y[i]) | mm_not_finite(v[i]);
        c[i] = mm_float(mm_bits(y[i] - (v[i] - p[i])) & ~plain);
    }
    mm_store_nearest(dtype, comp, c, n);
}

/* ------------------------------------------------------------ Lion's sign */

/* sign(x) as momentum.reference defines it: 1, -1, +0 for either zero, and
 * for NaN x - x (x quieted, payload and sign kept), built from the compares'
 * masks.  Integer selects never trap, so GCC vectorises the loop that calls
 * it in every build; the conditional form (x - x under a condition) does not
 * vectorise without AVX-512's masks.  The compares are float ones, so under
 * DAZ a subnormal is a zero here as in the reference. */
static inline float momentum_sign(float x)
{
    uint32_t quiet = mm_bits(x) | 0x00400000u;
    return mm_float((mm_mask(x > 0) & 0x3f800000u) | (mm_mask(x < 0) & 0xbf800000u)
                    | (mm_mask(x != x) & quiet));
}

static inline double momentum_sign_double(double x)
{
    uint64_t u, one = 0x3ff0000000000000ull, minus = 0xbff0000000000000ull, r;
    memcpy(&u, &x, 8);
    r = ((0ull - (uint64_t)(x > 0)) & one) | ((0ull - (uint64_t)(x < 0)) & minus)
        | ((0ull - (uint64_t)(x != x)) & (u | 0x0008000000000000ull));
    memcpy(&x, &r, 8);
    return x;
}

/* ------------------------------------------------- a rule's per-task terms */

/* 1 - beta ** step (Adam's bias corrections), as the reference computes it.
 * A rule's loop runs once per chunk of a 16-bit task, and two pow() calls
 * cost as much as the rest of a 256-element chunk of bfloat16 Adam: each
 * thread keeps the last value for each of two betas (a tensor's chunks
 * share them). */
static inline double momentum_bias(double beta, double step)
{
    static __thread double seen[2][3];   /* beta, step, 1 - beta ** step */
    static __thread int next;
    int i;
    for (i = 0; i < 2; i++)
        if (seen[i][0] == beta && seen[i][1] == step && seen[i][2] != 0)
            return seen[i][2];
    i = next;
    next ^= 1;
    seen[i][0] = beta;
    seen[i][1] = step;
    seen[i][2] = 1.0 - pow(beta, step);
    return seen[i][2];
}

/* ------------------------------------------------------ the blocked driver */

/* A rule's float32 loop: arrays (NULL where unused), n, its hyperparameters. */
typedef void (*momentum_loop32)(float *const *arrays, size_t n, const double *hyper);

/* Run elements [start, start + n) of task t whose arrays have the dtype codes
 * `codes` (4 bits per array, array 0 lowest), `written` a bit per written
 * array, `param` the index of the rule's param (-1: none), through `loop`. */
static void momentum_blocked(const momentum_task *t, size_t start, size_t n,
                             momentum_loop32 loop, int narrays, uint32_t codes,
                             uint32_t written, int param)
{
    float scratch[MOMENTUM_MAX_ARRAYS][MOMENTUM_CHUNK] __attribute__((aligned(64)));
    float *arrays[MOMENTUM_MAX_ARRAYS];
    int i, master = param >= 0 && t->rounding == MOMENTUM_ROUND_MASTER;
    int kahan = param >= 0 && t->rounding == MOMENTUM_ROUND_KAHAN, half = 0;
    size_t at, k;
    for (i = 0; i < narrays; i++)
        half |= ((codes >> (4 * i)) & 15u) != MOMENTUM_FLOAT32;
    if (!master && !half) {
        /* every array float32: no chunks */
        for (i = 0; i < narrays; i++)
            arrays[i] = t->arrays[i] ? (float *)t->arrays[i] + start : NULL;
        loop(arrays, n, t->hyper);
        return;
    }
    for (at = 0; at < n; at += k) {
        size_t index = start + at;
        k = n - at < MOMENTUM_CHUNK ? n - at : MOMENTUM_CHUNK;
        /* a chunk's element indices share their high 32 bits (the key's) */
        if ((uint64_t)(uint32_t)index + k > 0x100000000ull)
            k = (size_t)(0x100000000ull - (uint32_t)index);
        for (i = 0; i < narrays; i++) {
            uint32_t code = (codes >> (4 * i)) & 15u;
            if (t->arrays[i] == NULL) {
                arrays[i] = NULL;
            } else if (code == MOMENTUM_FLOAT32) {
                arrays[i] = (float *)t->arrays[i] + index;
            } else {
                mm_load16(code, scratch[i], (const uint16_t *)t->arrays[i] + index, k);
                arrays[i] = scratch[i];
            }
        }
        loop(arrays, k, t->hyper);
        for (i = 0; i < narrays; i++) {
            uint32_t code = (codes >> (4 * i)) & 15u;
            if (!((written >> i) & 1u) || t->arrays[i] == NULL || code == MOMENTUM_FLOAT32)
                continue;
            if (i == param && kahan)
                mm_store_kahan(code, (uint16_t *)t->arrays[i] + index,
                               (uint16_t *)t->arrays[narrays] + index, scratch[i], k);
            else
                mm_store16(t, code, (uint32_t)i, (uint16_t *)t->arrays[i] + index,
                           scratch[i], k, index);
        }
        if (master)
            mm_store16(t, t->extra_dtype, (uint32_t)narrays,
                       (uint16_t *)t->arrays[narrays] + index, arrays[param], k, index);
    }
}

#endif
