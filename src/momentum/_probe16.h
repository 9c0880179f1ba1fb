/* Ceiling loops for 16-bit storage: plain C loops that move the bytes of a
 * storage layout of sgd with the least arithmetic that keeps every load, store
 * and rounding (momentum._probe times them; the bench holds each layout's
 * kernel to them).
 *
 * A 16-bit array is widened to float32 by a shift and every stored 16-bit
 * value is rounded once to nearest even, as bfloat16: a bfloat16 and a
 * float16 array move the same bytes, and bfloat16's software rounding is the
 * cheaper of the two, so these are the ceilings of both.  Built with
 * AVX512-BF16 (the _probe_avx512bf16 module), the rounding is
 * vcvtneps2bf16's: the ceiling with the hardware conversion.  These loops
 * are not bitwise the kernels' (no fix-ups for subnormals or NaN payloads):
 * they only price the bytes.
 *
 * Each loop runs on `nthreads` OpenMP threads in equal static shares.
 */
#ifndef MOMENTUM_PROBE16_H
#define MOMENTUM_PROBE16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define PROBE_HW_BF16 1
#else
#define PROBE_HW_BF16 0
#endif

static inline float pb_wide(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t pb_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    /* nearest even; a NaN stays a quiet NaN */
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u)
                                           : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The share [lo, hi) of thread `id` of `nt`: equal, 64-element aligned. */
static inline void pb_share(size_t n, int id, int nt, size_t *lo, size_t *hi)
{
    size_t per = ((n + (size_t)nt - 1) / (size_t)nt + 63) & ~(size_t)63;
    *lo = per * (size_t)id < n ? per * (size_t)id : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* Run `body` on [lo, hi) shares of n elements over the caller's `nthreads`
 * (a variable every caller has: _Pragma cannot take a macro argument). */
#ifdef _OPENMP
#include <omp.h>
#define PB_PARALLEL(n, body)                                                     \
    if (nthreads <= 1) { size_t lo = 0, hi = (n); body; } else {                \
        _Pragma("omp parallel num_threads(nthreads)")                            \
        { size_t lo, hi;                                                          \
          pb_share((n), omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);  \
          body; } }
#else
#define PB_PARALLEL(n, body) { size_t lo = 0, hi = (n); (void)nthreads; body; }
#endif

/* Widen / round one element of an array stored as float (F) or 16-bit (H). */
#define PB_LD_F(x) (x)
#define PB_LD_H(x) pb_wide(x)
#define PB_ST_F(x) (x)
#define PB_ST_H(x) pb_round(x)
#define PB_T_F float
#define PB_T_H uint16_t

/* The signature of every sgd-shaped loop below. */
typedef void (*pb_sgd_loop)(void *p, const void *g, void *b, float a, size_t n, int nthreads);

/* sgd's bytes: read p, g, b; write p = p - a*b and b = g + b (as _probe's
 * fused loop), p, g, b each float32 (F) or 16-bit (H). */
#define PB_SGD(P, G, B)                                                          \
static void pb_sgd_##P##G##B##_part(PB_T_##P *restrict p, const PB_T_##G *restrict g, \
                                    PB_T_##B *restrict b, float a, size_t lo, size_t hi) \
{                                                                                \
    size_t i;                                                                    \
    for (i = lo; i < hi; i++) {                                                  \
        float bv = PB_LD_##B(b[i]);                                              \
        p[i] = PB_ST_##P(PB_LD_##P(p[i]) - a * bv);                              \
        b[i] = PB_ST_##B(PB_LD_##G(g[i]) + bv);                                  \
    }                                                                            \
}                                                                                \
static void pb_sgd_##P##G##B(void *p, const void *g, void *b, float a, size_t n, \
                             int nthreads)                                       \
{                                                                                \
    PB_PARALLEL(n, pb_sgd_##P##G##B##_part((PB_T_##P *)p,              \
                (const PB_T_##G *)g, (PB_T_##B *)b, a, lo, hi))                  \
}

PB_SGD(F, F, H) PB_SGD(F, H, F) PB_SGD(F, H, H)
PB_SGD(H, F, F) PB_SGD(H, F, H) PB_SGD(H, H, F) PB_SGD(H, H, H)

/* Kahan's bytes: read p, g, b, c (16-bit); write b = g + b, p = p - a*b and
 * c = c + a*b, each rounded once. */
static void pb_kahan_part(uint16_t *restrict p, const uint16_t *restrict g, uint16_t *restrict b,
                          uint16_t *restrict c, float a, size_t lo, size_t hi)
{
    size_t i;
    for (i = lo; i < hi; i++) {
        float bv = pb_wide(b[i]), step = a * bv;
        p[i] = pb_round(pb_wide(p[i]) - step);
        c[i] = pb_round(pb_wide(c[i]) + step);
        b[i] = pb_round(pb_wide(g[i]) + bv);
    }
}

static void pb_kahan(void *p, const void *g, void *b, void *c, float a, size_t n, int nthreads)
{
    PB_PARALLEL(n, pb_kahan_part((uint16_t *)p, (const uint16_t *)g, (uint16_t *)b,
                                           (uint16_t *)c, a, lo, hi))
}

/* The master layout's bytes: read m (float32), g (16-bit), b (float32);
 * write b = g + b, m = m - a*b, and p = round(m) (16-bit, not read). */
static void pb_master_part(float *restrict m, const uint16_t *restrict g, float *restrict b,
                           uint16_t *restrict p, float a, size_t lo, size_t hi)
{
    size_t i;
    for (i = lo; i < hi; i++) {
        float bv = b[i], mv = m[i] - a * bv;
        m[i] = mv;
        p[i] = pb_round(mv);
        b[i] = pb_wide(g[i]) + bv;
    }
}

static void pb_master(void *m, const void *g, void *b, void *p, float a, size_t n, int nthreads)
{
    PB_PARALLEL(n, pb_master_part((float *)m, (const uint16_t *)g, (float *)b,
                                            (uint16_t *)p, a, lo, hi))
}

/* The signature of the Kahan and master loops. */
typedef void (*pb_four_loop)(void *x, const void *g, void *b, void *y, float a, size_t n,
                             int nthreads);

#if PROBE_HW_BF16
/* The same loops 16 elements at a time with vcvtneps2bf16 for the rounding
 * (the tail by the software loops above). */
static inline __m512 pbv_ld_H(const uint16_t *s)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s)), 16));
}
static inline __m512 pbv_ld_F(const float *s) { return _mm512_loadu_ps(s); }
static inline void pbv_st_H(uint16_t *d, __m512 x)
{
    _mm256_storeu_si256((__m256i *)d, (__m256i)_mm512_cvtneps_pbh(x));
}
static inline void pbv_st_F(float *d, __m512 x) { _mm512_storeu_ps(d, x); }

#define PB_SGD_HW(P, G, B)                                                       \
static void pb_sgd_hw_##P##G##B##_part(PB_T_##P *restrict p, const PB_T_##G *restrict g, \
                                       PB_T_##B *restrict b, float a, size_t lo, size_t hi) \
{                                                                                \
    size_t i = lo;                                                               \
    __m512 va = _mm512_set1_ps(a);                                               \
    for (; i + 16 <= hi; i += 16) {                                              \
        __m512 bv = pbv_ld_##B(b + i);                                           \
        pbv_st_##P(p + i, _mm512_sub_ps(pbv_ld_##P(p + i), _mm512_mul_ps(va, bv))); \
        pbv_st_##B(b + i, _mm512_add_ps(pbv_ld_##G(g + i), bv));                 \
    }                                                                            \
    pb_sgd_##P##G##B##_part(p, g, b, a, i, hi);                                  \
}                                                                                \
static void pb_sgd_hw_##P##G##B(void *p, const void *g, void *b, float a, size_t n, \
                                int nthreads)                                    \
{                                                                                \
    PB_PARALLEL(n, pb_sgd_hw_##P##G##B##_part((PB_T_##P *)p,                     \
                (const PB_T_##G *)g, (PB_T_##B *)b, a, lo, hi))                  \
}

PB_SGD_HW(F, F, H) PB_SGD_HW(F, H, F) PB_SGD_HW(F, H, H)
PB_SGD_HW(H, F, F) PB_SGD_HW(H, F, H) PB_SGD_HW(H, H, F) PB_SGD_HW(H, H, H)

static void pb_kahan_hw_part(uint16_t *restrict p, const uint16_t *restrict g,
                             uint16_t *restrict b, uint16_t *restrict c, float a,
                             size_t lo, size_t hi)
{
    size_t i = lo;
    __m512 va = _mm512_set1_ps(a);
    for (; i + 16 <= hi; i += 16) {
        __m512 bv = pbv_ld_H(b + i), step = _mm512_mul_ps(va, bv);
        pbv_st_H(p + i, _mm512_sub_ps(pbv_ld_H(p + i), step));
        pbv_st_H(c + i, _mm512_add_ps(pbv_ld_H(c + i), step));
        pbv_st_H(b + i, _mm512_add_ps(pbv_ld_H(g + i), bv));
    }
    pb_kahan_part(p, g, b, c, a, i, hi);
}

static void pb_kahan_hw(void *p, const void *g, void *b, void *c, float a, size_t n, int nthreads)
{
    PB_PARALLEL(n, pb_kahan_hw_part((uint16_t *)p, (const uint16_t *)g, (uint16_t *)b,
                                    (uint16_t *)c, a, lo, hi))
}

static void pb_master_hw_part(float *restrict m, const uint16_t *restrict g, float *restrict b,
                              uint16_t *restrict p, float a, size_t lo, size_t hi)
{
    size_t i = lo;
    __m512 va = _mm512_set1_ps(a);
    for (; i + 16 <= hi; i += 16) {
        __m512 bv = _mm512_loadu_ps(b + i);
        __m512 mv = _mm512_sub_ps(_mm512_loadu_ps(m + i), _mm512_mul_ps(va, bv));
        _mm512_storeu_ps(m + i, mv);
        pbv_st_H(p + i, mv);
        _mm512_storeu_ps(b + i, _mm512_add_ps(pbv_ld_H(g + i), bv));
    }
    pb_master_part(m, g, b, p, a, i, hi);
}

static void pb_master_hw(void *m, const void *g, void *b, void *p, float a, size_t n, int nthreads)
{
    PB_PARALLEL(n, pb_master_hw_part((float *)m, (const uint16_t *)g, (float *)b,
                                     (uint16_t *)p, a, lo, hi))
}
#endif

#endif
