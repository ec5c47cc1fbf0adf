#!/usr/bin/env python3
# Host check of e2m1x8_to_bf16 (crates/backends/cuda/src/kernels/mma.cu): the prmt + mask bit
# placement and the bf16x2 fma by 2^(s - 1) (exact arithmetic, round to nearest even, bf16
# subnormals kept as PTX's fma.rn.bf16x2 does) against code x 2^(s - 127) for every E2M1 code
# pair and every scale the fast path takes (s <= 128). Prints OK or the first mismatch.
from fractions import Fraction as Fr
import sys

E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]

def bf16_value(b):  # bits -> exact value (finite only)
    s, e, m = b >> 15, (b >> 7) & 0xFF, b & 0x7F
    assert e != 0xFF
    v = Fr(m, 128) * Fr(2) ** -126 if e == 0 else (1 + Fr(m, 128)) * Fr(2) ** (e - 127)
    return -v if s else v

def bf16_round(v, neg):  # exact value -> bf16 bits, round to nearest even (no overflow here)
    a = abs(v)
    if a == 0:
        return 0x8000 if neg else 0
    e = max(a.numerator.bit_length() - a.denominator.bit_length() - 1, -126)
    while Fr(2) ** (e + 1) <= a: e += 1
    while e > -126 and Fr(2) ** e > a: e -= 1
    q = a / Fr(2) ** (e - 7)  # 7 mantissa bits below the leading one
    n = q.numerator // q.denominator
    r = q - n
    if r > Fr(1, 2) or (r == Fr(1, 2) and n & 1): n += 1
    if e == -126 and n < 128:
        bits = n  # subnormal
    else:
        if n == 256: n, e = 128, e + 1
        bits = ((e + 127) << 7) | (n - 128)
    return bits | (0x8000 if v < 0 else 0)

def fma_neg0(x, f):  # fma.rn.bf16(x, f, -0)
    p = bf16_value(x) * bf16_value(f)
    sign = (x ^ f) & 0x8000
    if p == 0:
        return 0x8000 if sign else 0  # x*f = -0 or +0; (+0) + (-0) = +0, (-0) + (-0) = -0
    return bf16_round(p, p < 0)

def prmt(a, b, sel):
    src = a | (b << 32)
    return sum(((src >> (8 * ((sel >> (4 * k)) & 7))) & 0xFF) << (8 * k) for k in range(4))

def decode_word(w, s):
    w4 = (w << 4) & 0xFFFFFFFF
    f = (s + 126) << 7
    out = []
    for j in range(4):
        x = prmt(w, w4, (j << 12) | ((4 + j) << 4))
        v = (x & 0x80008000) | ((x >> 6) & 0x01C001C0)
        out += [fma_neg0(v & 0xFFFF, f), fma_neg0(v >> 16, f)]
    return out

def want(code, s):
    v = Fr(E2M1[code & 7]).limit_denominator() * Fr(2) ** (s - 127)
    return bf16_round(v if not code & 8 else -v, bool(code & 8))

bad = 0
for s in range(0, 129):
    for lo in range(16):
        for hi in range(16):
            w = ((hi << 4) | lo) * 0x01010101  # the byte pair in every position
            got = decode_word(w, s)
            exp = [want(lo, s), want(hi, s)] * 4
            if got != exp:
                print(f"s {s} codes {lo},{hi}: got {[hex(g) for g in got]} want {[hex(e) for e in exp]}")
                bad += 1
                if bad > 5: sys.exit(1)
# Distinct codes in every byte position (ordering of the outputs).
for s in (0, 1, 2, 3, 100, 127, 128):
    w = 0x76543210 ^ 0x88000088
    codes = [(w >> (4 * i)) & 15 for i in range(8)]
    assert decode_word(w, s) == [want(c, s) for c in codes], s
print("FAILED" if bad else "OK: 16 x 16 code pairs x scales 0..128, all byte positions")
sys.exit(1 if bad else 0)
