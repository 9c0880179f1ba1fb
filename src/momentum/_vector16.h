/* Hand-vectorised bodies for the common 16-bit layouts, in the AVX-512
 * builds: for each 16-bit dtype h (bfloat16 where the build has AVX512-BF16,
 * float16 in both AVX-512 builds), every array h; the param and grad h with
 * float32 state; a float32 param (or master) and state with an h grad
 * (momentum.rules.vector16_combos), rounded to nearest, and with master
 * rounding (its 16-bit copy written in the same pass).  Stochastic and
 * Kahan rounding go to the chunked driver: on 16 lanes (the hash's
 * multiplies, Kahan's second rounding) they ran no faster than there.
 *
 * Why: _storage.h's chunked driver widens each 16-bit array into float32
 * scratch, runs the rule's float loop there and rounds the results back, so
 * every element passes through L1 three times; GCC 12 cannot vectorise a
 * float -> bfloat16 conversion inside the rule's own loop.  Here a rule's
 * arithmetic runs on 16 elements in registers: widen (a shift for bfloat16,
 * vcvtph2ps for float16), the rule's float32 arithmetic, one rounding per
 * stored vector (vcvtneps2bf16, vcvtps2ph).
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
 * A rule's function (momentum_v16_<rule>, called as MM_V16(rule) by the
 * generated entry of each combination above, with the arrays' dtype codes
 * as a constant, so each entry has its own loops) steps the whole vectors of
 * [start, start + n) and returns how many elements it stepped: a multiple
 * of 16; 0 where a 16-bit store rounds stochastically or with Kahan's
 * compensation, where this build lacks one of the task's dtypes (bfloat16
 * without AVX512-BF16, master's copy included), or below 16 elements.  The
 * entry hands the rest (the tail) to the chunked driver.  Whether a bfloat16 array is only read
 * (a shift) or also stored, the body needs AVX512-BF16: the avx512 build
 * leaves every bfloat16 layout to the driver.  The flags that change which
 * operations run are constants of an always-inlined loop (one loop per
 * combination, master among them); maximize is a sign mask. */
#ifndef MOMENTUM_VECTOR16_H
#define MOMENTUM_VECTOR16_H

#include "_storage.h"

#if defined(__AVX512F__) && defined(__F16C__)
#define MM_INLINE static inline __attribute__((always_inline))
#define MM_CODE(codes, i) (((codes) >> (4 * (i))) & 15u)

/* One call's view of its task: each array at the range's first element,
 * and the call-wide settings. */
typedef struct {
    char *at[MOMENTUM_MAX_ARRAYS];     /* at[narrays]: master's 16-bit copy */
    uint32_t extra_code;               /* its dtype */
    int narrays, daz, master;
    __m512i flip;                      /* the gradient's sign mask (maximize) */
} mm_v16_task;

/* Whether this build has bodies for 16-bit dtype `code` (and float32). */
MM_INLINE int mm_v16_built(uint32_t code)
{
#if defined(__AVX512BF16__)
    if (code == MOMENTUM_BFLOAT16)
        return 1;
#endif
    return code == MOMENTUM_FLOAT32 || code == MOMENTUM_FLOAT16;
}

/* Fill v for elements [start, start + n) of t; the number of elements the
 * body may step (whole vectors), or 0 where it takes none. */
MM_INLINE size_t mm_v16_begin(mm_v16_task *v, const momentum_task *t, size_t start, size_t n,
                              uint32_t codes, int narrays, double maximize)
{
    int i;
    uint32_t half = 0;   /* a bit per 16-bit array: the stores that can round stochastically */
    v->master = t->rounding == MOMENTUM_ROUND_MASTER;
    if (t->rounding == MOMENTUM_ROUND_KAHAN || (v->master && !mm_v16_built(t->extra_dtype)))
        return 0;
    for (i = 0; i < narrays; i++) {
        if (!mm_v16_built(MM_CODE(codes, i)))
            return 0;
        half |= (uint32_t)(MM_CODE(codes, i) != MOMENTUM_FLOAT32) << i;
    }
    if (t->stochastic & (half | (uint32_t)v->master << narrays))
        return 0;
    v->narrays = narrays;
    v->extra_code = t->extra_dtype;
    for (i = 0; i < narrays + v->master; i++) {
        uint32_t code = i < narrays ? MM_CODE(codes, i) : t->extra_dtype;
        v->at[i] = t->arrays[i] == NULL ? NULL
                 : t->arrays[i] + start * (code == MOMENTUM_FLOAT32 ? 4 : 2);
    }
    v->daz = (_mm_getcsr() >> 6) & 1u;    /* MXCSR.DAZ (torch.set_flush_denormal) */
    v->flip = _mm512_set1_epi32(maximize != 0 ? (int)0x80000000u : 0);
    return n & ~(size_t)15;
}

/* ---------------------------------------------------------------- loads */

/* A float16 vector holding a NaN: the portable widening (its payload kept). */
static __attribute__((noinline)) __m512 mm_v16_load_f16_nan(const uint16_t *src)
{
    float wide[16];
    mm_load_f16(wide, src, 16);
    return _mm512_loadu_ps(wide);
}

/* Elements i..i+15 of array a, widened exactly (as mm_load16). */
MM_INLINE __m512 mm_v16_load(const mm_v16_task *v, uint32_t code, int a, size_t i)
{
    __m256i h;
    if (code == MOMENTUM_FLOAT32)
        return _mm512_loadu_ps((const float *)v->at[a] + i);
    h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)v->at[a] + i));
    if (code == MOMENTUM_BFLOAT16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    if (mm_f16_any_nan(h))
        return mm_v16_load_f16_nan((const uint16_t *)v->at[a] + i);
    return _mm512_cvtph_ps(h);
}

/* The gradient, negated (its sign flipped, as the loops' -grad[i]) for maximize. */
MM_INLINE __m512 mm_v16_grad(const mm_v16_task *v, uint32_t code, int a, size_t i)
{
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mm_v16_load(v, code, a, i)),
                                                v->flip));
}

/* --------------------------------------------------------------- stores */

/* A vector the hardware rounds otherwise than NumPy: the portable rounding. */
static __attribute__((noinline)) void mm_v16_store_odd(uint32_t code, uint16_t *dst, __m512 x)
{
    float v[16];
    _mm512_storeu_ps(v, x);
    mm_store_nearest(code, dst, v, 16);
}

MM_INLINE void mm_v16_nearest(uint32_t code, int daz, uint16_t *dst, __m512 x)
{
    __mmask16 odd;
    if (code == MOMENTUM_BFLOAT16) {
#if defined(__AVX512BF16__)
        /* vfpclassps is the cheaper test, but calls a subnormal zero under DAZ */
        odd = daz ? mm_bf16_odd(x) : _mm512_fpclass_ps_mask(x, 0x01 | 0x20 | 0x80);
        if (__builtin_expect(!odd, 1)) {
            _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(x));
            return;
        }
#endif
    } else {
        odd = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        if (__builtin_expect(!odd, 1)) {
            _mm256_storeu_si256((__m256i *)dst,
                                _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            return;
        }
    }
    mm_v16_store_odd(code, dst, x);
}

/* x into elements i..i+15 of array a (dtype `code`). */
MM_INLINE void mm_v16_store(const mm_v16_task *v, uint32_t code, int a, size_t i, __m512 x)
{
    if (code == MOMENTUM_FLOAT32)
        _mm512_storeu_ps((float *)v->at[a] + i, x);
    else
        mm_v16_nearest(code, v->daz, (uint16_t *)v->at[a] + i, x);
}

/* The new param: stored, and with master rounding (a constant) also its
 * 16-bit copy, by constant dtype so that the store inlines as the others. */
MM_INLINE void mm_v16_store_param(const mm_v16_task *v, uint32_t code, int a, size_t i, __m512 x,
                                  int master)
{
    mm_v16_store(v, code, a, i, x);
    if (!master)
        return;
    if (v->extra_code == MOMENTUM_BFLOAT16)
        mm_v16_store(v, MOMENTUM_BFLOAT16, v->narrays, i, x);
    else
        mm_v16_store(v, MOMENTUM_FLOAT16, v->narrays, i, x);
}

/* ------------------------------------------------------------- helpers */

#define MM_SPLAT(x) _mm512_set1_ps((float)(x))

/* CALL with each flag a constant 0 or 1: one loop per combination.  The
 * first flag of every body with a param is `master` (v->master). */
#define MM_BY_FLAGS(CALL, f1, f2) \
    ((f1) ? ((f2) ? CALL(1, 1) : CALL(1, 0)) : ((f2) ? CALL(0, 1) : CALL(0, 0)))
#define MM_BY_FLAGS3(CALL, f1, f2, f3) \
    ((f1) ? MM_BY_FLAGS3_(CALL, 1, f2, f3) : MM_BY_FLAGS3_(CALL, 0, f2, f3))
#define MM_BY_FLAGS3_(CALL, a, f2, f3) \
    ((f2) ? ((f3) ? CALL(a, 1, 1) : CALL(a, 1, 0)) : ((f3) ? CALL(a, 0, 1) : CALL(a, 0, 0)))

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

/* A body's loads and stores of its rule's arrays by name, from its locals
 * `v` (the mm_v16_task), `codes` (the constant dtype codes) and `master`. */
#define MM_LOAD(RULE, name, i) \
    mm_v16_load(v, MM_CODE(codes, MOMENTUM_##RULE##_ARRAY_##name), MOMENTUM_##RULE##_ARRAY_##name, i)
#define MM_GRAD(RULE, i) \
    mm_v16_grad(v, MM_CODE(codes, MOMENTUM_##RULE##_ARRAY_GRAD), MOMENTUM_##RULE##_ARRAY_GRAD, i)
#define MM_STORE(RULE, name, i, x) \
    mm_v16_store(v, MM_CODE(codes, MOMENTUM_##RULE##_ARRAY_##name), MOMENTUM_##RULE##_ARRAY_##name, \
                 i, x)
#define MM_STORE_PARAM(RULE, i, x) \
    mm_v16_store_param(v, MM_CODE(codes, MOMENTUM_##RULE##_ARRAY_PARAM), \
                       MOMENTUM_##RULE##_ARRAY_PARAM, i, x, master)

/* ------------------------------------------------------------ update_buffer */

MM_INLINE size_t momentum_v16_update_buffer(const momentum_task *t, size_t start, size_t n,
                                            uint32_t codes)
{
    const double *h = t->hyper;
    mm_v16_task vt, *v = &vt;
    __m512 m = MM_SPLAT(h[MOMENTUM_UPDATE_BUFFER_HYPER_MOMENTUM]);
    __m512 c = MM_SPLAT(1.0 - h[MOMENTUM_UPDATE_BUFFER_HYPER_DAMPENING]);
    size_t i;
    n = mm_v16_begin(v, t, start, n, codes, 2, 0);
    for (i = 0; i < n; i += 16)
        MM_STORE(UPDATE_BUFFER, BUF, i, m * MM_LOAD(UPDATE_BUFFER, BUF, i)
                                        + c * MM_LOAD(UPDATE_BUFFER, GRAD, i));
    return n;
}

/* ---------------------------------------------------------------------- sgd */

enum { MM_SGD_PLAIN, MM_SGD_FIRST, MM_SGD_MOMENTUM };

MM_INLINE void mm_v16_sgd_loop(const mm_v16_task *v, const double *h, size_t n, uint32_t codes,
                               int master, int mode, int decay, int nesterov)
{
    __m512 lr = MM_SPLAT(h[MOMENTUM_SGD_HYPER_LR]), m = MM_SPLAT(h[MOMENTUM_SGD_HYPER_MOMENTUM]);
    __m512 c = MM_SPLAT(1.0 - h[MOMENTUM_SGD_HYPER_DAMPENING]);
    __m512 wd = MM_SPLAT(h[MOMENTUM_SGD_HYPER_WEIGHT_DECAY]);
    size_t i;
    for (i = 0; i < n; i += 16) {
        __m512 g = MM_GRAD(SGD, i), p = MM_LOAD(SGD, PARAM, i), b;
        if (decay)
            g = g + wd * p;
        if (mode == MM_SGD_FIRST) {
            MM_STORE(SGD, BUF, i, g);
            if (nesterov)
                g = g + m * g;
        } else if (mode == MM_SGD_MOMENTUM) {
            b = m * MM_LOAD(SGD, BUF, i) + c * g;
            MM_STORE(SGD, BUF, i, b);
            if (nesterov)
                g = g + m * b;
            else
                g = b;
        }
        MM_STORE_PARAM(SGD, i, p - lr * g);
    }
}

#define MM_SGD_PLAIN_LOOP(master, decay) \
    mm_v16_sgd_loop(v, h, n, codes, master, MM_SGD_PLAIN, decay, 0)
#define MM_SGD_FIRST_LOOP(master, decay, nesterov) \
    mm_v16_sgd_loop(v, h, n, codes, master, MM_SGD_FIRST, decay, nesterov)
#define MM_SGD_MOMENTUM_LOOP(master, decay, nesterov) \
    mm_v16_sgd_loop(v, h, n, codes, master, MM_SGD_MOMENTUM, decay, nesterov)

MM_INLINE size_t momentum_v16_sgd(const momentum_task *t, size_t start, size_t n, uint32_t codes)
{
    const double *h = t->hyper;
    mm_v16_task vt, *v = &vt;
    int decay = h[MOMENTUM_SGD_HYPER_WEIGHT_DECAY] != 0, nesterov = h[MOMENTUM_SGD_HYPER_NESTEROV] != 0;
    n = mm_v16_begin(v, t, start, n, codes, 3, h[MOMENTUM_SGD_HYPER_MAXIMIZE]);
    if (n == 0)
        return 0;
    if (h[MOMENTUM_SGD_HYPER_MOMENTUM] == 0)   /* no nesterov (the checks refuse it) */
        MM_BY_FLAGS(MM_SGD_PLAIN_LOOP, v->master, decay);
    else if (h[MOMENTUM_SGD_HYPER_FIRST_STEP] != 0)
        MM_BY_FLAGS3(MM_SGD_FIRST_LOOP, v->master, decay, nesterov);
    else
        MM_BY_FLAGS3(MM_SGD_MOMENTUM_LOOP, v->master, decay, nesterov);
    return n;
}

/* --------------------------------------------------------------- heavy_ball */

MM_INLINE void mm_v16_heavy_ball_loop(const mm_v16_task *v, const double *h, size_t n,
                                      uint32_t codes, int master, int decay, int nesterov)
{
    __m512 lr = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_LR]);
    __m512 m = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_MOMENTUM]);
    __m512 wd = MM_SPLAT(h[MOMENTUM_HEAVY_BALL_HYPER_WEIGHT_DECAY]);
    size_t i;
    for (i = 0; i < n; i += 16) {
        __m512 g = MM_GRAD(HEAVY_BALL, i), p = MM_LOAD(HEAVY_BALL, PARAM, i), b;
        if (decay)
            g = g + wd * p;
        b = m * MM_LOAD(HEAVY_BALL, BUF, i) + lr * g;
        MM_STORE(HEAVY_BALL, BUF, i, b);
        if (nesterov)
            MM_STORE_PARAM(HEAVY_BALL, i, p - (m * b + lr * g));
        else
            MM_STORE_PARAM(HEAVY_BALL, i, p - b);
    }
}

#define MM_HEAVY_BALL_LOOP(master, decay, nesterov) \
    mm_v16_heavy_ball_loop(v, h, n, codes, master, decay, nesterov)

MM_INLINE size_t momentum_v16_heavy_ball(const momentum_task *t, size_t start, size_t n,
                                         uint32_t codes)
{
    const double *h = t->hyper;
    mm_v16_task vt, *v = &vt;
    n = mm_v16_begin(v, t, start, n, codes, 3, h[MOMENTUM_HEAVY_BALL_HYPER_MAXIMIZE]);
    if (n == 0)
        return 0;
    MM_BY_FLAGS3(MM_HEAVY_BALL_LOOP, v->master, h[MOMENTUM_HEAVY_BALL_HYPER_WEIGHT_DECAY] != 0,
                 h[MOMENTUM_HEAVY_BALL_HYPER_NESTEROV] != 0);
    return n;
}

/* ------------------------------------------------------------- adam, adamw */

/* Adam's indices serve AdamW: rules.py builds both from _ADAM_ARRAYS and _ADAM_HYPERS. */
MM_INLINE void mm_v16_adam_loop(const mm_v16_task *v, const double *h, size_t n, uint32_t codes,
                                int decoupled, int master, int decay, int amsgrad)
{
    double lr = h[MOMENTUM_ADAM_HYPER_LR], beta1 = h[MOMENTUM_ADAM_HYPER_BETA1];
    double beta2 = h[MOMENTUM_ADAM_HYPER_BETA2], step = h[MOMENTUM_ADAM_HYPER_STEP];
    double weight_decay = h[MOMENTUM_ADAM_HYPER_WEIGHT_DECAY];
    double bias1 = momentum_bias(beta1, step), bias2 = momentum_bias(beta2, step);
    __m512 step_size = MM_SPLAT(lr / bias1), inv_root2 = MM_SPLAT(1.0 / sqrt(bias2));
    __m512 keep1 = MM_SPLAT(1.0 - beta1), b2 = MM_SPLAT(beta2), keep2 = MM_SPLAT(1.0 - beta2);
    __m512 e = MM_SPLAT(h[MOMENTUM_ADAM_HYPER_EPS]), wd = MM_SPLAT(weight_decay);
    __m512 shrink = MM_SPLAT(1.0 - lr * weight_decay);
    size_t i;
    for (i = 0; i < n; i += 16) {
        __m512 g = MM_GRAD(ADAM, i), p = MM_LOAD(ADAM, PARAM, i);
        __m512 m = MM_LOAD(ADAM, EXP_AVG, i), s = MM_LOAD(ADAM, EXP_AVG_SQ, i);
        if (decay) {
            if (decoupled)
                p = p * shrink;
            else
                g = g + wd * p;
        }
        m = m + keep1 * (g - m);
        s = b2 * s + keep2 * g * g;
        MM_STORE(ADAM, EXP_AVG, i, m);
        MM_STORE(ADAM, EXP_AVG_SQ, i, s);
        if (amsgrad) {
            s = mm_v16_max(MM_LOAD(ADAM, MAX_EXP_AVG_SQ, i), s);
            MM_STORE(ADAM, MAX_EXP_AVG_SQ, i, s);
        }
        MM_STORE_PARAM(ADAM, i, p - step_size * (m / (_mm512_sqrt_ps(s) * inv_root2 + e)));
    }
}

#define MM_ADAM_LOOP(master, decay, amsgrad) \
    mm_v16_adam_loop(v, h, n, codes, decoupled, master, decay, amsgrad)

MM_INLINE size_t mm_v16_adam(const momentum_task *t, size_t start, size_t n, uint32_t codes,
                             int decoupled)
{
    const double *h = t->hyper;
    mm_v16_task vt, *v = &vt;
    n = mm_v16_begin(v, t, start, n, codes, 5, h[MOMENTUM_ADAM_HYPER_MAXIMIZE]);
    if (n == 0)
        return 0;
    MM_BY_FLAGS3(MM_ADAM_LOOP, v->master, h[MOMENTUM_ADAM_HYPER_WEIGHT_DECAY] != 0,
                 h[MOMENTUM_ADAM_HYPER_AMSGRAD] != 0);
    return n;
}

MM_INLINE size_t momentum_v16_adam(const momentum_task *t, size_t start, size_t n, uint32_t codes)
{
    return mm_v16_adam(t, start, n, codes, 0);
}

MM_INLINE size_t momentum_v16_adamw(const momentum_task *t, size_t start, size_t n, uint32_t codes)
{
    return mm_v16_adam(t, start, n, codes, 1);
}

/* --------------------------------------------------------------------- lion */

MM_INLINE void mm_v16_lion_loop(const mm_v16_task *v, const double *h, size_t n, uint32_t codes,
                                int master, int decay)
{
    double lr = h[MOMENTUM_LION_HYPER_LR], beta1 = h[MOMENTUM_LION_HYPER_BETA1];
    double beta2 = h[MOMENTUM_LION_HYPER_BETA2];
    __m512 vlr = MM_SPLAT(lr), b1 = MM_SPLAT(beta1), keep1 = MM_SPLAT(1.0 - beta1);
    __m512 b2 = MM_SPLAT(beta2), keep2 = MM_SPLAT(1.0 - beta2);
    __m512 shrink = MM_SPLAT(1.0 - lr * h[MOMENTUM_LION_HYPER_WEIGHT_DECAY]);
    size_t i;
    for (i = 0; i < n; i += 16) {
        __m512 g = MM_GRAD(LION, i), m = MM_LOAD(LION, EXP_AVG, i);
        __m512 c = b1 * m + keep1 * g, p = MM_LOAD(LION, PARAM, i);
        if (decay)
            p = p * shrink;
        MM_STORE_PARAM(LION, i, p - vlr * mm_v16_sign(c));
        MM_STORE(LION, EXP_AVG, i, b2 * m + keep2 * g);
    }
}

#define MM_LION_LOOP(master, decay) mm_v16_lion_loop(v, h, n, codes, master, decay)

MM_INLINE size_t momentum_v16_lion(const momentum_task *t, size_t start, size_t n, uint32_t codes)
{
    const double *h = t->hyper;
    mm_v16_task vt, *v = &vt;
    n = mm_v16_begin(v, t, start, n, codes, 3, h[MOMENTUM_LION_HYPER_MAXIMIZE]);
    if (n == 0)
        return 0;
    MM_BY_FLAGS(MM_LION_LOOP, v->master, h[MOMENTUM_LION_HYPER_WEIGHT_DECAY] != 0);
    return n;
}

/* The generated entries call MM_V16(rule): the rule's body here. */
#define MM_V16(rule) momentum_v16_##rule

#else  /* no AVX-512 with F16C: the chunked driver does it all */

static inline size_t mm_v16_none(const momentum_task *t, size_t start, size_t n, uint32_t codes)
{
    (void)t; (void)start; (void)n; (void)codes;
    return 0;
}
#define MM_V16(rule) mm_v16_none

#endif
#endif
