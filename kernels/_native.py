"""A few plain-C loops for the fused CPU backend, compiled on first use and loaded with ctypes.

Why C: every pass here must run at memory bandwidth. In plain torch a comparison that
produces a bool tensor, a bool sum and a masked_select each cost more than reading the
inputs (measured on the project's CPU: ``ge`` + ``sum`` 2x, ``masked_select`` 6x the
time of the ``mul``), so a counting pass in torch ops is several times the streaming floor.
The loops below compute ``s = |w * g|`` on the fly, in float32 exactly as torch does (one
IEEE multiply, no contraction is possible), and never write a score vector.

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
#include <math.h>

#define BLK 16

/* buf[i] += |g[i]| */
void sh_acc_abs(float *restrict buf, const float *restrict g, int64_t n) {
    for (int64_t i = 0; i < n; i++) buf[i] += fabsf(g[i]);
}

/* One pass of the bracket search: with s = |w*g| and lo <= hi,
   counts[0] += #(s > hi), counts[1] += #(s == hi), counts[2] += #(s == lo && lo < hi),
   counts[3] += #(lo < s < hi); the values lo < s < hi go to cand[fill..cap) in any order.
   Returns the new fill (it may exceed cap; only cap values are stored). */
int64_t sh_count_collect(const float *restrict w, const float *restrict g, int64_t n,
                         float lo, float hi, int64_t *restrict counts,
                         float *restrict cand, int64_t cap, int64_t fill) {
    int64_t gt = 0, eqh = 0, eql = 0, ins = 0;
    int64_t i = 0;
    float s[BLK];
    for (; i + BLK <= n; i += BLK) {
        int in_bracket = 0, above = 0;
        for (int j = 0; j < BLK; j++) {
            s[j] = fabsf(w[i + j] * g[i + j]);
            above += s[j] > hi;
            in_bracket += s[j] >= lo;
        }
        gt += above;
        if (in_bracket > above) {
            for (int j = 0; j < BLK; j++) {
                float v = s[j];
                if (v > hi || v < lo) continue;
                if (v == hi) eqh++;
                else if (v == lo) eql++;
                else { if (fill < cap) cand[fill] = v; fill++; ins++; }
            }
        }
    }
    for (; i < n; i++) {
        float v = fabsf(w[i] * g[i]);
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
void sh_count_sel(const float *restrict w, const float *restrict g, int64_t n, float tau,
                  int64_t *restrict counts) {
    int64_t gt = 0, eq = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = fabsf(w[i] * g[i]);
        gt += v > tau;
        eq += v == tau;
    }
    counts[0] += gt; counts[1] += eq;
}

/* w[i] <- fresh[j++] for every i with s > tau, and for the first `ties` i with s == tau.
   Returns how many were written. */
int64_t sh_write_sel(float *restrict w, const float *restrict g, int64_t n, float tau,
                     int64_t ties, const float *restrict fresh) {
    int64_t j = 0, i = 0;
    float s[BLK];
    for (; i + BLK <= n; i += BLK) {
        int hit = 0;
        for (int k = 0; k < BLK; k++) {
            s[k] = fabsf(w[i + k] * g[i + k]);
            hit += s[k] >= tau;
        }
        if (!hit) continue;
        for (int k = 0; k < BLK; k++) {
            if (s[k] > tau) w[i + k] = fresh[j++];
            else if (s[k] == tau && ties > 0) { ties--; w[i + k] = fresh[j++]; }
        }
    }
    for (; i < n; i++) {
        float v = fabsf(w[i] * g[i]);
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
        float a[BLK] = {0}, b[BLK] = {0};
        for (int k = 0; k < 256; k += BLK)
            for (int j = 0; j < BLK; j++) {
                float x = g[i + k + j], y = r[i + k + j];
                a[j] += x * y;
                b[j] += y * y;
            }
        float sa = 0.0f, sb = 0.0f;
        for (int j = 0; j < BLK; j++) { sa += a[j]; sb += b[j]; }
        gr += sa; rr += sb;
    }
    for (; i < n; i++) { gr += (double)g[i] * r[i]; rr += (double)r[i] * r[i]; }
    out[0] += gr; out[1] += rr;
}
"""

_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC")
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


def _compile(target: Path) -> bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "sh_native.c"
        src.write_text(SOURCE)
        out = Path(tmp) / "lib.so"
        for extra in (("-march=native",), ()):
            cmd = [cc, *_FLAGS, *extra, str(src), "-o", str(out), "-lm"]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders agree on the result
                return True
    return False


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.sh_acc_abs.argtypes = [p, p, i64]
    lib.sh_acc_abs.restype = None
    lib.sh_count_collect.argtypes = [p, p, i64, f32, f32, p, p, i64, i64]
    lib.sh_count_collect.restype = i64
    lib.sh_count_sel.argtypes = [p, p, i64, f32, p]
    lib.sh_count_sel.restype = None
    lib.sh_write_sel.argtypes = [p, p, i64, f32, i64, p]
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
            if target.exists() or _compile(target):
                _lib = _bind(ctypes.CDLL(str(target)))
        except OSError:
            _lib = None
        _tried = True
    return _lib
