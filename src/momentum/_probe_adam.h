/* Ceiling loops for Adam: plain C loops that move the bytes of Adam in one
 * storage layout and do Adam's float32 arithmetic in its cheapest plain form
 * (one square root, one division, the bias corrections folded into two
 * scalars), so that the bench can hold the kernels to "a plain C loop moving
 * the same bytes" (momentum._probe times them).  Not bitwise the kernels':
 * those form step_size * (m / d) as the reference does, these
 * step_size * m / d, and round no 16-bit value as the kernels do.  Lion moves sgd's bytes (read p, g, m; write p, m), so its
 * ceilings are _probe16.h's sgd loops.
 *
 * Each array is float32 (F) or 16-bit (H, widened and rounded as bfloat16:
 * see _probe16.h, which must be included first).  The moments share a dtype.
 * Each loop runs on `nthreads` OpenMP threads in equal static shares.
 */
#ifndef MOMENTUM_PROBE_ADAM_H
#define MOMENTUM_PROBE_ADAM_H

#include <math.h>

#include "_probe16.h"

/* The scalars of one step, formed once per call as a C user would. */
typedef struct { float keep1, beta2, keep2, step_size, inv_root2, eps; } pb_adam_k;

static inline pb_adam_k pb_adam_scalars(void)
{
    /* Adam's defaults at step 10, lr 1e-3 */
    const double b1 = 0.9, b2 = 0.999, lr = 1e-3, step = 10;
    pb_adam_k k = {(float)(1 - b1), (float)b2, (float)(1 - b2),
                   (float)(lr / (1 - pow(b1, step))), (float)(1 / sqrt(1 - pow(b2, step))),
                   1e-8f};
    return k;
}

typedef void (*pb_adam_loop)(void *p, const void *g, void *m, void *v, size_t n, int nthreads);
typedef void (*pb_adam_master_loop)(void *w, const void *g, void *m, void *v, void *p, size_t n,
                                    int nthreads);

/* Read p, g, m, v; write p, m, v: float32 (F) or 16-bit (H) param P, grad G, moments S. */
#define PB_ADAM(P, G, S)                                                         \
static void pb_adam_##P##G##S##_part(PB_T_##P *restrict p, const PB_T_##G *restrict g, \
                                     PB_T_##S *restrict m, PB_T_##S *restrict v, \
                                     pb_adam_k k, size_t lo, size_t hi)          \
{                                                                                \
    size_t i;                                                                    \
    for (i = lo; i < hi; i++) {                                                  \
        float gv = PB_LD_##G(g[i]), mv = PB_LD_##S(m[i]);                        \
        mv = mv + k.keep1 * (gv - mv);                                           \
        float vv = k.beta2 * PB_LD_##S(v[i]) + k.keep2 * gv * gv;                \
        m[i] = PB_ST_##S(mv);                                                    \
        v[i] = PB_ST_##S(vv);                                                    \
        p[i] = PB_ST_##P(PB_LD_##P(p[i]) - k.step_size * mv / (sqrtf(vv) * k.inv_root2 + k.eps)); \
    }                                                                            \
}                                                                                \
static void pb_adam_##P##G##S(void *p, const void *g, void *m, void *v, size_t n, int nthreads) \
{                                                                                \
    pb_adam_k k = pb_adam_scalars();                                             \
    PB_PARALLEL(n, pb_adam_##P##G##S##_part((PB_T_##P *)p, (const PB_T_##G *)g,  \
                (PB_T_##S *)m, (PB_T_##S *)v, k, lo, hi))                        \
}

PB_ADAM(F, F, F) PB_ADAM(H, H, H) PB_ADAM(H, H, F)

/* ZeRO-Offload's bytes: read the float32 master w, 16-bit g, float32 m, v;
 * write w, m, v and the 16-bit copy p of w (not read): 28 bytes per element. */
static void pb_adam_master_part(float *restrict w, const uint16_t *restrict g, float *restrict m,
                                float *restrict v, uint16_t *restrict p, pb_adam_k k,
                                size_t lo, size_t hi)
{
    size_t i;
    for (i = lo; i < hi; i++) {
        float gv = pb_wide(g[i]), mv = m[i] + k.keep1 * (gv - m[i]);
        float vv = k.beta2 * v[i] + k.keep2 * gv * gv;
        float wv = w[i] - k.step_size * mv / (sqrtf(vv) * k.inv_root2 + k.eps);
        m[i] = mv;
        v[i] = vv;
        w[i] = wv;
        p[i] = pb_round(wv);
    }
}

static void pb_adam_master(void *w, const void *g, void *m, void *v, void *p, size_t n,
                           int nthreads)
{
    pb_adam_k k = pb_adam_scalars();
    PB_PARALLEL(n, pb_adam_master_part((float *)w, (const uint16_t *)g, (float *)m, (float *)v,
                                       (uint16_t *)p, k, lo, hi))
}

#if PROBE_HW_BF16
/* The same loops 16 elements at a time, 16-bit stores rounded by
 * vcvtneps2bf16 (the tail by the loops above). */
static inline __m512 pbv_adam(__m512 gv, __m512 *mv, __m512 *vv, __m512 pv, pb_adam_k k)
{
    *mv = _mm512_add_ps(*mv, _mm512_mul_ps(_mm512_set1_ps(k.keep1), _mm512_sub_ps(gv, *mv)));
    *vv = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(k.beta2), *vv),
                        _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(k.keep2), gv), gv));
    __m512 d = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(*vv), _mm512_set1_ps(k.inv_root2)),
                             _mm512_set1_ps(k.eps));
    return _mm512_sub_ps(pv, _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(k.step_size), *mv), d));
}

#define PB_ADAM_HW(P, G, S)                                                      \
static void pb_adam_hw_##P##G##S##_part(PB_T_##P *restrict p, const PB_T_##G *restrict g, \
                                        PB_T_##S *restrict m, PB_T_##S *restrict v, \
                                        pb_adam_k k, size_t lo, size_t hi)       \
{                                                                                \
    size_t i = lo;                                                               \
    for (; i + 16 <= hi; i += 16) {                                              \
        __m512 mv = pbv_ld_##S(m + i), vv = pbv_ld_##S(v + i);                   \
        __m512 pv = pbv_adam(pbv_ld_##G(g + i), &mv, &vv, pbv_ld_##P(p + i), k); \
        pbv_st_##S(m + i, mv);                                                   \
        pbv_st_##S(v + i, vv);                                                   \
        pbv_st_##P(p + i, pv);                                                   \
    }                                                                            \
    pb_adam_##P##G##S##_part(p, g, m, v, k, i, hi);                              \
}                                                                                \
static void pb_adam_hw_##P##G##S(void *p, const void *g, void *m, void *v, size_t n, \
                                 int nthreads)                                   \
{                                                                                \
    pb_adam_k k = pb_adam_scalars();                                             \
    PB_PARALLEL(n, pb_adam_hw_##P##G##S##_part((PB_T_##P *)p, (const PB_T_##G *)g, \
                (PB_T_##S *)m, (PB_T_##S *)v, k, lo, hi))                        \
}

PB_ADAM_HW(H, H, H) PB_ADAM_HW(H, H, F)

static void pb_adam_master_hw_part(float *restrict w, const uint16_t *restrict g,
                                   float *restrict m, float *restrict v, uint16_t *restrict p,
                                   pb_adam_k k, size_t lo, size_t hi)
{
    size_t i = lo;
    for (; i + 16 <= hi; i += 16) {
        __m512 mv = _mm512_loadu_ps(m + i), vv = _mm512_loadu_ps(v + i);
        __m512 wv = pbv_adam(pbv_ld_H(g + i), &mv, &vv, _mm512_loadu_ps(w + i), k);
        _mm512_storeu_ps(m + i, mv);
        _mm512_storeu_ps(v + i, vv);
        _mm512_storeu_ps(w + i, wv);
        pbv_st_H(p + i, wv);
    }
    pb_adam_master_part(w, g, m, v, p, k, i, hi);
}

static void pb_adam_master_hw(void *w, const void *g, void *m, void *v, void *p, size_t n,
                              int nthreads)
{
    pb_adam_k k = pb_adam_scalars();
    PB_PARALLEL(n, pb_adam_master_hw_part((float *)w, (const uint16_t *)g, (float *)m,
                                          (float *)v, (uint16_t *)p, k, lo, hi))
}
#endif

#endif
