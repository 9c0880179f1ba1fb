/* Hand-vectorised bodies for uniform 16-bit layouts: every array of a task
 * bfloat16 (in builds with AVX512-BF16) or every array float16 (AVX-512
 * with F16C), rounded to nearest.
 *
 * Why: _storage.h's chunked driver widens each 16-bit array into float32
 * scratch, runs the rule's float loop there and rounds the results back, so
 * every element passes through L1 three times; GCC 12 cannot vectorise a
 * float -> bfloat16 conversion inside the rule's own loop.  Here a rule's
 * arithmetic runs on 16 elements in registers: widen (a shift for bfloat16,
 * vcvtph2ps for float16), the rule's float32 arithmetic, and one hardware
 * rounding per stored vector (vcvtneps2bf16, vcvtps2ph).  All-bfloat16 Adam
 * ran 2-2.6x the chunked driver on Zen 5 (in cache and out of DRAM).
 *
 * The arithmetic is each rule's loop in _loops.pxi, operation for operation
 * and in its order, in float32 (the build passes -ffp-contract=off): its
 * results are bitwise the loop's, and so the reference's.  The hardware
 * conversions differ from NumPy's astype only on a few inputs, and a vector
 * holding one takes the portable conversion of _storage.h instead:
 *  - vcvtneps2bf16 flushes float32 subnormals and keeps NaN payloads
 *    (the check is vfpclassps, or integer compares under DAZ, where
 *    vfpclassps calls a subnormal zero: MXCSR is read once per call);
 *  - vcvtps2ph quiets a NaN, and vcvtph2ps quiets a signalling one.
 *
 * Each rule's function steps the whole vectors of [start, start + n) and
 * returns how many elements it stepped (a multiple of 16, or 0 where this
 * build, the layout or the task's rounding has no body here); the generated
 * entry (of each rule whose table entry says vector16) calls it as
 * MM_V16(rule) and hands the rest to the chunked driver.  Each flag combination is its
 * own loop (the flags are constants of an always-inlined body), so no
 * branch but the rare conversion fallback is left inside a loop. */
#ifndef MOMENTUM_VECTOR16_H
#define MOMENTUM_VECTOR16_H

#include "_storage.h"

#if defined(__AVX512F__) && defined(__F16C__)
#define MM_INLINE static inline __attribute__((always_inline))

typedef const uint16_t *restrict mm_in16;
typedef uint16_t *restrict mm_out16;

/* Whether this build has a body for all-`dtype` arrays. */
static inline int mm_v16_built(uint32_t dtype)
{
#if defined(__AVX512BF16__)
    if (dtype == MOMENTUM_BFLOAT16)
        return 1;
#endif
    return dtype == MOMENTUM_FLOAT16;
}

/* Whether the task rounds every store to nearest (no stochastic, Kahan or
 * master rounding), and this build has a body for its layout. */
static inline int mm_v16_serves(const momentum_task *t, uint32_t dtype)
{
    return mm_v16_built(dtype) && t->stochastic == 0 && t->rounding == MOMENTUM_ROUND_NEAREST;
}

/* Denormals-are-zero: MXCSR bit 6 (torch.set_flush_denormal(True) sets it). */
static inline int mm_daz(void) { return (_mm_getcsr() >> 6) & 1u; }

/* The portable conversions of one vector, out of the loops (rarely taken). */
static __attribute__((noinline)) __m512 mm_v16_load_f16_nan(const uint16_t *src)
{
    float wide[16];
    mm_load_f16(wide, src, 16);      /* its payload kept */
    return _mm512_loadu_ps(wide);
}

static __attribute__((noinline)) void mm_v16_store_odd(uint32_t dtype, uint16_t *dst, __m512 x)
{
    float v[16];
    _mm512_storeu_ps(v, x);
    mm_store_nearest(dtype, dst, v, 16);
}

/* 16 elements of src widened exactly (as mm_load16). */
MM_INLINE __m512 mm_v16_load(uint32_t dtype, const uint16_t *src)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)src);
    if (dtype == MOMENTUM_BFLOAT16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    if (_mm256_movemask_epi8(_mm256_cmpgt_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)),
                                                _mm256_set1_epi16(0x7c00))))
        return mm_v16_load_f16_nan(src);
    return _mm512_cvtph_ps(h);
}

/* x rounded to nearest into dst[0:16] (as mm_store_nearest). */
MM_INLINE void mm_v16_store(uint32_t dtype, int daz, uint16_t *dst, __m512 x)
{
    __mmask16 odd;
    if (dtype == MOMENTUM_BFLOAT16) {
#if defined(__AVX512BF16__)
        if (daz) {
            __m512i a = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
            odd = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000))
                | _mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(1)),
                                          _mm512_set1_epi32(0x007fffff));
        } else {
            odd = _mm512_fpclass_ps_mask(x, 0x01 | 0x20 | 0x80);   /* NaN, subnormal */
        }
        if (!odd) {
            _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(x));
            return;
        }
#endif
    } else {
        odd = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        if (!odd) {
            _mm256_storeu_si256((__m256i *)dst,
                                _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            return;
        }
    }
    mm_v16_store_odd(dtype, dst, x);
}

#define MM_SPLAT(x) _mm512_set1_ps((float)(x))
#define MM_ARRAY(i) ((uint16_t *)t->arrays[i] + start)

/* CALL(f1, f2, f3) with each flag a constant 0 or 1: one loop per combination. */
#define MM_BY_FLAGS(CALL, f1, f2, f3) \
    ((f1) ? MM_BY_FLAGS_2(CALL, 1, f2, f3) : MM_BY_FLAGS_2(CALL, 0, f2, f3))
#define MM_BY_FLAGS_2(CALL, a, f2, f3) \
    ((f2) ? MM_BY_FLAGS_3(CALL, a, 1, f3) : MM_BY_FLAGS_3(CALL, a, 0, f3))
#define MM_BY_FLAGS_3(CALL, a, b, f3) ((f3) ? CALL(a, b, 1) : CALL(a, b, 0))

/* -maximize negates (a sign flip, as the loops' -grad[i]) */
MM_INLINE __m512 mm_v16_grad(uint32_t dtype, const uint16_t *grad, int maximize)
{
    __m512 g = mm_v16_load(dtype, grad);
    if (maximize)
        g = -g;
    return g;
}

/* The loops' _max: a where a > b or a is NaN, else b. */
MM_INLINE __m512 mm_v16_max(__m512 a, __m512 b)
{
    __mmask16 pick = _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) | _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(pick, b, a);
}

/* The loops' _sign (momentum_sign): 1, -1, +0, or x quieted for NaN. */
MM_INLINE __m512 mm_v16_sign(__m512 x)
{
    __m512 zero = _mm512_setzero_ps();
    __m512i r = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ),
                                       _mm512_set1_epi32(0x3f800000));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ),
                              _mm512_set1_epi32((int)0xbf800000u));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                              _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x00400000)));
    return _mm512_castsi512_ps(r);
}

/* ------------------------------------------------------------ update_buffer */

MM_INLINE size_t mm_v16_update_buffer_loop(const momentum_task *t, size_t start, size_t n,
                                           uint32_t dt, int daz)
{
    const double *h = t->hyper;
    __m512 m = MM_SPLAT(h[MOMENTUM_UPDATE_BUFFER_HYPER_MOMENTUM]);
    __m512 c = MM_SPLAT(1.0 - h[MOMENTUM_UPDATE_BUFFER_HYPER_DAMPENING]);
    mm_out16 buf = MM_ARRAY(MOMENTUM_UPDATE_BUFFER_ARRAY_BUF);
    mm_in16 grad = MM_ARRAY(MOMENTUM_UPDATE_BUFFER_ARRAY_GRAD);
    size_t i;
    for (i = 0; i + 16 <= n; i += 16)
        mm_v16_store(dt, daz, buf + i, m * mm_v16_load(dt, buf + i) + c * mm_v16_load(dt, grad + i));
    return i;
}

static size_t momentum_v16_update_buffer(const momentum_task *t, size_t start, size_t n,
                                         uint32_t dt)
{
    if (!mm_v16_serves(t, dt))
        return 0;
    return mm_v16_update_buffer_loop(t, start, n, dt, mm_daz());
}

/* ---------------------------------------------------------------------- sgd */

enum { MM_SGD_PLAIN, MM_SGD_FIRST, MM_SGD_MOMENTUM };

MM_INLINE size_t mm_v16_sgd_loop(const momentum_task *t, size_t start, size_t n, uint32_t dt,
                                 int daz, int mode, int decay, int maximize, int nesterov)
{
    const double *h = t->hyper;
    __m512 lr = MM_SPLAT(h[MOMENTUM_SGD_HYPER_LR]), m = MM_SPLAT(h[MOMENTUM_SGD_HYPER_MOMENTUM]);
    __m512 c = MM_SPLAT(1.0 - h[MOMENTUM_SGD_HYPER_DAMPENING]);
    __m512 wd = MM_SPLAT(h[MOMENTUM_SGD_HYPER_WEIGHT_DECAY]);
    mm_out16 param = MM_ARRAY(MOMENTUM_SGD_ARRAY_PARAM);
    mm_in16 grad = MM_ARRAY(MOMENTUM_SGD_ARRAY_GRAD);
    mm_out16 buf = mode == MM_SGD_PLAIN ? NULL : MM_ARRAY(MOMENTUM_SGD_ARRAY_BUF);
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 g = mm_v16_grad(dt, grad + i, maximize), p = mm_v16_load(dt, param + i), b;
        if (decay)
            g = g + wd * p;
        if (mode == MM_SGD_FIRST) {
            mm_v16_store(dt, daz, buf + i, g);
            if (nesterov)
                g = g + m * g;
        } else if (mode == MM_SGD_MOMENTUM) {
            b = m * mm_v16_load(dt, buf + i) + c * g;
            mm_v16_store(dt, daz, buf + i, b);
            if (nesterov)
                g = g + m * b;
            else
                g = b;
        }
        mm_v16_store(dt, daz, param + i, p - lr * g);
    }
    return i;
}

#define MM_SGD_LOOP_PLAIN(decay, maximize, nesterov) \
    mm_v16_sgd_loop(t, start, n, dt, daz, MM_SGD_PLAIN, decay, maximize, nesterov)
#define MM_SGD_LOOP_FIRST(decay, maximize, nesterov) \
    mm_v16_sgd_loop(t, start, n, dt, daz, MM_SGD_FIRST, decay, maximize, nesterov)
#define MM_SGD_LOOP_MOMENTUM(decay, maximize, nesterov) \
    mm_v16_sgd_loop(t, start, n, dt, daz, MM_SGD_MOMENTUM, decay, maximize, nesterov)

static size_t momentum_v16_sgd(const momentum_task *t, size_t start, size_t n, uint32_t dt)
{
    const double *h = t->hyper;
    int decay = h[MOMENTUM_SGD_HYPER_WEIGHT_DECAY] != 0, maximize = h[MOMENTUM_SGD_HYPER_MAXIMIZE] != 0;
    int nesterov = h[MOMENTUM_SGD_HYPER_NESTEROV] != 0, daz;
    if (!mm_v16_serves(t, dt))
        return 0;
    daz = mm_daz();
    if (h[MOMENTUM_SGD_HYPER_MOMENTUM] == 0)   /* no nesterov (the checks refuse it) */
        return MM_BY_FLAGS(MM_SGD_LOOP_PLAIN, decay, maximize, 0);
    if (h[MOMENTUM_SGD_HYPER_FIRST_STEP] != 0)
        return MM_BY_FLAGS(MM_SGD_LOOP_FIRST, decay, maximize, nesterov);
    return MM_BY_FLAGS(MM_SGD_LOOP_MOMENTUM, decay, maximize, nesterov);
}

/* --------------------------------------------------------------- heavy_ball */

MM_INLINE size_t mm_v16_heavy_ball_loop(const momentum_task *t, size_t start, size_t n,
                                        uint32_t dt, int daz, int decay, int maximize,
                                        int nesterov)
{
    const double *h = t->hyper;
    __m512 lr = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_LR]);
    __m512 m = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_MOMENTUM]);
    __m512 wd = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_WEIGHT_DECAY]);
    mm_out16 param = MM_ARRAY(MOMENTUM_HEAVY_BALL_ARRAY_PARAM);
    mm_in16 grad = MM_ARRAY(MOMENTUM_HEAVY_BALL_ARRAY_GRAD);
    mm_out16 buf = MM_ARRAY(MOMENTUM_HEAVY_BALL_ARRAY_BUF);
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 g = mm_v16_grad(dt, grad + i, maximize), p = mm_v16_load(dt, param + i), b;
        if (decay)
            g = g + wd * p;
        b = m * mm_v16_load(dt, buf + i) + lr * g;
        mm_v16_store(dt, daz, buf + i, b);
        if (nesterov)
            mm_v16_store(dt, daz, param + i, p - (m * b + lr * g));
        else
            mm_v16_store(dt, daz, param + i, p - b);
    }
    return i;
}

#define MM_HEAVY(decay, maximize, nesterov) \
    mm_v16_heavy_ball_loop(t, start, n, dt, daz, decay, maximize, nesterov)

static size_t momentum_v16_heavy_ball(const momentum_task *t, size_t start, size_t n,
                                      uint32_t dt)
{
    const double *h = t->hyper;
    int decay = h[MOMENTUM_HEAVY_BALL_HYPER_WEIGHT_DECAY] != 0;
    int maximize = h[MOMENTUM_HEAVY_BALL_HYPER_MAXIMIZE] != 0;
    int nesterov = h[MOMENTUM_HEAVY_BALL_HYPER_NESTEROV] != 0, daz;
    if (!mm_v16_serves(t, dt))
        return 0;
    daz = mm_daz();
    return MM_BY_FLAGS(MM_HEAVY, decay, maximize, nesterov);
}

/* ------------------------------------------------------------- adam, adamw */

/* Adam and AdamW share their arrays' and hyperparameters' order (rules.py). */
MM_INLINE size_t mm_v16_adam_loop(const momentum_task *t, size_t start, size_t n, uint32_t dt,
                                  int daz, int decoupled, int decay, int maximize, int amsgrad)
{
    const double *h = t->hyper;
    double lr = h[MOMENTUM_ADAM_HYPER_LR], beta1 = h[MOMENTUM_ADAM_HYPER_BETA1];
    double beta2 = h[MOMENTUM_ADAM_HYPER_BETA2], step = h[MOMENTUM_ADAM_HYPER_STEP];
    double weight_decay = h[MOMENTUM_ADAM_HYPER_WEIGHT_DECAY];
    double bias1 = momentum_bias(beta1, step), bias2 = momentum_bias(beta2, step);
    __m512 step_size = MM_SPLAT(lr / bias1), inv_root2 = MM_SPLAT(1.0 / sqrt(bias2));
    __m512 keep1 = MM_SPLAT(1.0 - beta1), b2 = MM_SPLAT(beta2), keep2 = MM_SPLAT(1.0 - beta2);
    __m512 e = MM_SPLAT(h[MOMENTUM_ADAM_HYPER_EPS]), wd = MM_SPLAT(weight_decay);
    __m512 shrink = MM_SPLAT(1.0 - lr * weight_decay);
    mm_out16 param = MM_ARRAY(MOMENTUM_ADAM_ARRAY_PARAM);
    mm_in16 grad = MM_ARRAY(MOMENTUM_ADAM_ARRAY_GRAD);
    mm_out16 exp_avg = MM_ARRAY(MOMENTUM_ADAM_ARRAY_EXP_AVG);
    mm_out16 exp_avg_sq = MM_ARRAY(MOMENTUM_ADAM_ARRAY_EXP_AVG_SQ);
    mm_out16 max_exp_avg_sq = amsgrad ? MM_ARRAY(MOMENTUM_ADAM_ARRAY_MAX_EXP_AVG_SQ) : NULL;
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 g = mm_v16_grad(dt, grad + i, maximize), p = mm_v16_load(dt, param + i);
        __m512 m = mm_v16_load(dt, exp_avg + i), s = mm_v16_load(dt, exp_avg_sq + i);
        if (decay) {
            if (decoupled)
                p = p * shrink;
            else
                g = g + wd * p;
        }
        m = m + keep1 * (g - m);
        s = b2 * s + keep2 * g * g;
        mm_v16_store(dt, daz, exp_avg + i, m);
        mm_v16_store(dt, daz, exp_avg_sq + i, s);
        if (amsgrad) {
            s = mm_v16_max(mm_v16_load(dt, max_exp_avg_sq + i), s);
            mm_v16_store(dt, daz, max_exp_avg_sq + i, s);
        }
        mm_v16_store(dt, daz, param + i,
                     p - step_size * (m / (_mm512_sqrt_ps(s) * inv_root2 + e)));
    }
    return i;
}

#define MM_ADAM(decay, maximize, amsgrad) \
    mm_v16_adam_loop(t, start, n, dt, daz, decoupled, decay, maximize, amsgrad)

MM_INLINE size_t mm_v16_adam(const momentum_task *t, size_t start, size_t n, uint32_t dt,
                             int decoupled)
{
    const double *h = t->hyper;
    int decay = h[MOMENTUM_ADAM_HYPER_WEIGHT_DECAY] != 0, maximize = h[MOMENTUM_ADAM_HYPER_MAXIMIZE] != 0;
    int amsgrad = h[MOMENTUM_ADAM_HYPER_AMSGRAD] != 0, daz;
    if (!mm_v16_serves(t, dt))
        return 0;
    daz = mm_daz();
    return MM_BY_FLAGS(MM_ADAM, decay, maximize, amsgrad);
}

static size_t momentum_v16_adam(const momentum_task *t, size_t start, size_t n, uint32_t dt)
{
    return mm_v16_adam(t, start, n, dt, 0);
}

static size_t momentum_v16_adamw(const momentum_task *t, size_t start, size_t n, uint32_t dt)
{
    return mm_v16_adam(t, start, n, dt, 1);
}

/* --------------------------------------------------------------------- lion */

MM_INLINE size_t mm_v16_lion_loop(const momentum_task *t, size_t start, size_t n, uint32_t dt,
                                  int daz, int decay, int maximize)
{
    const double *h = t->hyper;
    double lr = h[MOMENTUM_LION_HYPER_LR], beta1 = h[MOMENTUM_LION_HYPER_BETA1];
    double beta2 = h[MOMENTUM_LION_HYPER_BETA2];
    __m512 vlr = MM_SPLAT(lr), b1 = MM_SPLAT(beta1), keep1 = MM_SPLAT(1.0 - beta1);
    __m512 b2 = MM_SPLAT(beta2), keep2 = MM_SPLAT(1.0 - beta2);
    __m512 shrink = MM_SPLAT(1.0 - lr * h[MOMENTUM_LION_HYPER_WEIGHT_DECAY]);
    mm_out16 param = MM_ARRAY(MOMENTUM_LION_ARRAY_PARAM);
    mm_in16 grad = MM_ARRAY(MOMENTUM_LION_ARRAY_GRAD);
    mm_out16 exp_avg = MM_ARRAY(MOMENTUM_LION_ARRAY_EXP_AVG);
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 g = mm_v16_grad(dt, grad + i, maximize), m = mm_v16_load(dt, exp_avg + i);
        __m512 c = b1 * m + keep1 * g, p = mm_v16_load(dt, param + i);
        if (decay)
            p = p * shrink;
        mm_v16_store(dt, daz, param + i, p - vlr * mm_v16_sign(c));
        mm_v16_store(dt, daz, exp_avg + i, b2 * m + keep2 * g);
    }
    return i;
}

#define MM_LION(decay, maximize, unused) mm_v16_lion_loop(t, start, n, dt, daz, decay, maximize)

static size_t momentum_v16_lion(const momentum_task *t, size_t start, size_t n, uint32_t dt)
{
    const double *h = t->hyper;
    int decay = h[MOMENTUM_LION_HYPER_WEIGHT_DECAY] != 0, maximize = h[MOMENTUM_LION_HYPER_MAXIMIZE] != 0;
    int daz;
    if (!mm_v16_serves(t, dt))
        return 0;
    daz = mm_daz();
    return MM_BY_FLAGS(MM_LION, decay, maximize, 0);
}

/* The generated entries call MM_V16(rule): the rule's body here. */
#define MM_V16(rule) momentum_v16_##rule

#else  /* no AVX-512 with F16C: the chunked driver does it all */

static inline size_t mm_v16_none(const momentum_task *t, size_t start, size_t n, uint32_t dt)
{
    (void)t; (void)start; (void)n; (void)dt;
    return 0;
}
#define MM_V16(rule) mm_v16_none

#endif
#endif
