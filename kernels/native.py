"""A few plain-C loops for the fused CPU backend, compiled on first use and loaded with ctypes.

Why C: every pass here must run at memory bandwidth. In plain torch a comparison that
produces a bool tensor, a bool sum and a masked_select each cost more than reading the
inputs (measured on the project's CPU: ``ge`` + ``sum`` 2x, ``masked_select`` 6x the
time of the ``mul``), so a counting pass in torch ops is several times the streaming floor.
The loops below compute ``s = |w * g|`` (or ``|g|`` under their ``grad`` flag: the counting
loops then never read ``w``) on the fly, in float32 exactly as torch does (one IEEE multiply;
``-ffp-contract=off``, which clang does not default to, keeps ``buf += g * g`` two roundings,
like torch), and never write a score vector.

The library needs only a C compiler (``cc``/``gcc``; no Python headers, no torch headers),
builds in well under a second, and is cached under ``$SCISSORHANDS_KERNELS_CACHE`` (default
``~/.cache/scissorhands_kernels``) by a hash of the source, the flags and the CPU's feature
flags. Without a compiler :func:`load` returns None and the fused backend falls back to the
reference implementation (same results, more time and memory).
``SCISSORHANDS_NATIVE=0`` disables the library (tests use it to check that fallback).
All functions take contiguous float32 buffers; callers convert other dtypes in small chunks.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

/* 16 float lanes (one AVX-512 register; GCC splits it where the CPU is narrower). */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
#define VL 16
#define STEP 64 /* entries per unrolled step: 4 vectors */

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
/* |w*g| exactly as fabsf(w*g): one IEEE multiply, then the sign bit cleared; |g| when grad
   (then w is not read: the counting loops get NULL) */
static inline vf score(const float *w, const float *g, int grad) {
    vf x = grad ? ld(g) : ld(w) * ld(g);
    vi b;
    memcpy(&b, &x, sizeof b);
    b &= 0x7fffffff;
    memcpy(&x, &b, sizeof x);
    return x;
}
static inline float score1(const float *w, const float *g, int grad) { return fabsf(grad ? *g : *w * *g); }
static inline int any(vi m) {
    int32_t r = 0;
    for (int k = 0; k < VL; k++) r |= m[k];
    return r != 0;
}
/* bit k set where lane k of the comparison mask m is true */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline uint32_t bits16(vi m) {
    __m512i x;
    memcpy(&x, &m, sizeof x);
    return (uint32_t)_mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline uint32_t bits16(vi m) {
    __m256 lo, hi;
    memcpy(&lo, &m, sizeof lo);
    memcpy(&hi, (const char *)&m + sizeof lo, sizeof hi);
    return (uint32_t)_mm256_movemask_ps(lo) | ((uint32_t)_mm256_movemask_ps(hi) << 8);
}
#else
static inline uint32_t bits16(vi m) {
    uint32_t r = 0;
    for (int k = 0; k < VL; k++) r |= (uint32_t)(m[k] & 1) << k;
    return r;
}
#endif
static inline int64_t hsum(vi m) {
    int64_t r = 0;
    for (int k = 0; k < VL; k++) r += m[k];
    return r;
}

/* buf[i] += |g[i]| */
void sh_acc_abs(float *restrict buf, const float *restrict g, int64_t n) {
    for (int64_t i = 0; i < n; i++) buf[i] += fabsf(g[i]);
}

/* buf[i] += g[i]^2 */
void sh_acc_sq(float *restrict buf, const float *restrict g, int64_t n) {
    for (int64_t i = 0; i < n; i++) buf[i] += g[i] * g[i];
}

/* One pass of the bracket search: with s = score(w, g, grad) and lo <= hi,
   counts[0] += #(s > hi), counts[1] += #(s == hi), counts[2] += #(s == lo && lo < hi),
   counts[3] += #(lo < s < hi); the values lo < s < hi go to cand[fill..cap) in order.
   Returns the new fill (it may exceed cap; only cap values are stored).
   n must stay below 2**31 * 16 (callers pass segments). */
int64_t sh_count_collect(const float *restrict w, const float *restrict g, int64_t n, int grad,
                         float lo, float hi, int64_t *restrict counts,
                         float *restrict cand, int64_t cap, int64_t fill) {
    int64_t gt = 0, eqh = 0, eql = 0, ins = 0;
    vi above = {0};
    int64_t i = 0;
    for (; i + STEP <= n; i += STEP) {
        vf s[4];
        vi in = {0};
        for (int q = 0; q < 4; q++) {
            s[q] = score(w + i + VL * q, g + i + VL * q, grad);
            vi a = s[q] > hi;
            above -= a;
            in |= (s[q] >= lo) & ~a;
        }
        if (!any(in)) continue;
        for (int q = 0; q < 4; q++)
            for (int k = 0; k < VL; k++) {
                float v = s[q][k];
                if (v > hi || v < lo) continue;
                if (v == hi) eqh++;
                else if (v == lo) eql++;
                else { if (fill < cap) cand[fill] = v; fill++; ins++; }
            }
    }
    gt += hsum(above);
    for (; i < n; i++) {
        float v = score1(w + i, g + i, grad);
        if (v > hi) gt++;
        else if (v < lo) continue;
        else if (v == hi) eqh++;
        else if (v == lo) eql++;
        else { if (fill < cap) cand[fill] = v; fill++; ins++; }
    }
    counts[0] += gt; counts[1] += eqh; counts[2] += eql; counts[3] += ins;
    return fill;
}

/* counts[0] += #(s > tau), counts[1] += #(s == tau) */
void sh_count_sel(const float *restrict w, const float *restrict g, int64_t n, int grad, float tau,
                  int64_t *restrict counts) {
    vi gt = {0}, eq = {0};
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        vf s = score(w + i, g + i, grad);
        gt -= s > tau;
        eq -= s == tau;
    }
    int64_t g1 = hsum(gt), e1 = hsum(eq);
    for (; i < n; i++) {
        float v = score1(w + i, g + i, grad);
        g1 += v > tau;
        e1 += v == tau;
    }
    counts[0] += g1; counts[1] += e1;
}

/* w[i] <- fresh[j++] for every i with s > tau, and for the first `ties` i with s == tau,
   in index order. Returns how many were written. */
int64_t sh_write_sel(float *restrict w, const float *restrict g, int64_t n, int grad, float tau,
                     int64_t ties, const float *restrict fresh) {
    int64_t j = 0, i = 0;
    for (; i + STEP <= n; i += STEP) {
        vf s[4];
        uint64_t above = 0, tied = 0;
        for (int q = 0; q < 4; q++) {
            s[q] = score(w + i + VL * q, g + i + VL * q, grad);
            above |= (uint64_t)bits16(s[q] > tau) << (VL * q);
            tied |= (uint64_t)bits16(s[q] == tau) << (VL * q);
        }
        if (ties > 0 && tied) {  /* rare: some of this step's ties are taken, in index order */
            uint64_t take = 0;
            for (uint64_t t = tied; t && ties > 0; t &= t - 1, ties--) take |= t & -t;
            above |= take;
        }
        for (; above; above &= above - 1) w[i + __builtin_ctzll(above)] = fresh[j++];
    }
    for (; i < n; i++) {
        float v = score1(w + i, g + i, grad);
        if (v > tau) w[i] = fresh[j++];
        else if (v == tau && ties > 0) { ties--; w[i] = fresh[j++]; }
    }
    return j;
}

/* out[0] += <g, r>, out[1] += <r, r>: float32 lanes over blocks of 256, summed in double. */
void sh_dots(const float *restrict g, const float *restrict r, int64_t n, double *restrict out) {
    double gr = 0.0, rr = 0.0;
    int64_t i = 0;
    for (; i + 256 <= n; i += 256) {
        vf a = {0}, b = {0};
        for (int k = 0; k < 256; k += VL) {
            vf x = ld(g + i + k), y = ld(r + i + k);
            a += x * y;
            b += y * y;
        }
        double sa = 0.0, sb = 0.0;
        for (int k = 0; k < VL; k++) { sa += a[k]; sb += b[k]; }
        gr += sa; rr += sb;
    }
    for (; i < n; i++) { gr += (double)g[i] * r[i]; rr += (double)r[i] * r[i]; }
    out[0] += gr; out[1] += rr;
}
"""

_FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-shared", "-fPIC", "-Wno-psabi")
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_key() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("SCISSORHANDS_KERNELS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "scissorhands_kernels"
    )
    return Path(root)


def compile_to(target: Path, native: bool = True) -> bool:
    """Build the library at target (atomically); ``native`` adds -march=native when it works."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "sh_native.c"
        src.write_text(SOURCE)
        out = Path(tmp) / "lib.so"
        for extra in ((("-march=native",), ()) if native else ((),)):
            cmd = [cc, *_FLAGS, *extra, str(src), "-o", str(out), "-lm"]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders agree on the result
                return True
    return False


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures on a loaded library."""
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    for acc in (lib.sh_acc_abs, lib.sh_acc_sq):
        acc.argtypes = [p, p, i64]
        acc.restype = None
    lib.sh_count_collect.argtypes = [p, p, i64, i32, f32, f32, p, p, i64, i64]
    lib.sh_count_collect.restype = i64
    lib.sh_count_sel.argtypes = [p, p, i64, i32, f32, p]
    lib.sh_count_sel.restype = None
    lib.sh_write_sel.argtypes = [p, p, i64, i32, f32, i64, p]
    lib.sh_write_sel.restype = i64
    lib.sh_dots.argtypes = [p, p, i64, p]
    lib.sh_dots.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or no compiler is available."""
    global _lib, _tried
    if os.environ.get("SCISSORHANDS_NATIVE", "1") == "0":
        return None
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        key = hashlib.sha256("\n".join([SOURCE, " ".join(_FLAGS), _cpu_key()]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"sh_native_{key}.so"
        try:
            if target.exists() or compile_to(target):
                _lib = bind(ctypes.CDLL(str(target)))
        except OSError:
            _lib = None
        _tried = True
    return _lib
