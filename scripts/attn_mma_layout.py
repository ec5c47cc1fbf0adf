#!/usr/bin/env python3
# Host check of kernels/attn_mma.cu: the block emulated warp by warp, lane by lane, with the
# kernel's own index formulas (load_q, stage_kv, qk_tile, mask_scores, softmax_rows,
# p_fragments, pv_tile, store_rows: keep in step with it), against the PTX fragment layouts of
# mma.m16n8k16 .bf16 and ldmatrix (.trans) written out independently below, and against
# attention in float64 (causal by position, sliding window, sink in the denominator, GQA).
# Also checks that every ldmatrix phase (8 row addresses) hits 8 distinct 16-byte bank groups.
# Run: python3 scripts/attn_mma_layout.py
import numpy as np

AM_Q, AM_K, AM_D, AM_LD = 64, 64, 64, 72
LOG2E = np.float32(1.44269504088896341)
rng = np.random.default_rng(7)


def bf16(x):
    # Round to nearest even, as cvt.rn.bf16x2.f32 (finite inputs).
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


# ---- PTX layouts (PTX ISA: "Matrix Fragments for mma.m16n8k16 with floating point type",
# "ldmatrix"). Registers hold two 16-bit values, the lower column / k index in the low half.
def ldmatrix(smem, addrs, trans):
    # addrs[lane]: element offset of the row lane % 8 of matrix lane / 8. Returns regs[lane][4]
    # of (lo, hi) pairs. Non-trans: lane gets row lane/4, cols 2(lane%4), +1; trans: the
    # transposed matrix's, i.e. rows 2(lane%4), +1 of column lane/4.
    regs = [[None] * 4 for _ in range(32)]
    for m in range(4):
        rows = [smem[addrs[8 * m + i]: addrs[8 * m + i] + 8] for i in range(8)]
        phase = [addrs[8 * m + i] * 2 // 16 % 8 for i in range(8)]  # 16-byte groups of 128 B
        assert len(set(phase)) == 8, f"ldmatrix bank conflict: {phase}"
        for lane in range(32):
            g, t = lane // 4, lane % 4
            if trans:
                regs[lane][m] = (rows[2 * t][g], rows[2 * t + 1][g])
            else:
                regs[lane][m] = (rows[g][2 * t], rows[g][2 * t + 1])
    return regs


def mma(c, a, b0, b1):
    # c[lane][4] += A B; a[lane] = 4 regs, b0/b1[lane] = 1 reg each (pairs of values).
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i, (r, k) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[r, k], A[r, k + 1] = a[lane][i]
        for i, bb in enumerate([b0, b1]):
            B[2 * t + 8 * i, g], B[2 * t + 8 * i + 1, g] = bb[lane]
    C = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for e in range(4):
            c[lane][e] = np.float32(c[lane][e] + C[g + 8 * (e >> 1), 2 * t + (e & 1)])


# ---- the kernel, one warp at a time (formulas as in attn_mma.cu)
def query_row(tile, warp, lane, r):
    return tile * AM_Q + 16 * (warp & 3) + (lane >> 2) + 8 * r


def visible_keys(p, valid, window):
    if not valid:
        return (0x7FFFFFFF, -1)
    return (0 if window == 0 or p + 1 - window < 0 else p + 1 - window, p)


def pack(lo, hi):
    return (bf16(lo), bf16(hi))


def block(q, kc, vc, sinks, pos, o, tile, hgroup, HB, T, NQ, NKV, window, scale, cap):
    W = NKV * AM_D
    off = (HB * hgroup // (NQ // NKV)) * AM_D
    warps = 4 * HB
    vis = {}
    for w in range(warps):
        for lane in range(32):
            for r in range(2):
                t = query_row(tile, w, lane, r)
                p = pos[t] if t < T else -1
                vis[(w, lane, r)] = visible_keys(p, 0 <= p < cap, window)
    ok = [v for (w, _, _), v in vis.items() if w < 4 and v[0] <= v[1]]
    klo, khi = (min(v[0] for v in ok), max(v[1] for v in ok)) if ok else (0x7FFFFFFF, -1)
    state = {}
    for w in range(warps):
        h = HB * hgroup + (w >> 2)
        qf = [[[None] * 4 for _ in range(4)] for _ in range(32)]  # [lane][kk][i]
        for lane in range(32):
            c = 2 * (lane & 3)
            for i in range(4):
                r = i & 1
                base = (query_row(tile, w, lane, r) * NQ + h) * AM_D + 8 * (i >> 1) + c
                for kk in range(4):
                    v = vis[(w, lane, r)]
                    x = q[base + 16 * kk: base + 16 * kk + 2] if v[0] <= v[1] else np.zeros(2, np.float32)
                    qf[lane][kk][i] = pack(x[0], x[1])
        lanes = [(min(vis[(w, l, 0)][0], vis[(w, l, 1)][0]), max(vis[(w, l, 0)][1], vis[(w, l, 1)][1])) for l in range(32)]
        wspan = (min(x for x, _ in lanes), max(y for _, y in lanes))
        state[w] = dict(h=h, qf=qf, wspan=wspan, acc=np.zeros((32, 8, 4), np.float32),
                        m=np.full((32, 2), -np.inf, np.float32), l=np.zeros((32, 2), np.float32))
    sl2 = np.float32(scale) * LOG2E
    k0 = klo
    while k0 <= khi:
        Ks = np.zeros(AM_K * AM_LD, np.float32); Vs = np.zeros(AM_K * AM_LD, np.float32)
        for i in range(AM_K * 16):
            r, c = i >> 4, (i & 15) * 4
            j = k0 + r
            if j <= khi:
                row = j * W + off + c
                Ks[r * AM_LD + c: r * AM_LD + c + 4] = bf16(kc[row: row + 4])
                Vs[r * AM_LD + c: r * AM_LD + c + 4] = bf16(vc[row: row + 4])
        for w in range(warps):
            st = state[w]
            if k0 > st["wspan"][1] or k0 + AM_K - 1 < st["wspan"][0]:
                continue
            # qk_tile
            s = [[[np.float32(0)] * 4 for _ in range(8)] for _ in range(32)]
            for j in range(8):
                for kp in range(2):
                    b = ldmatrix(Ks, [(8 * j + (l & 7)) * AM_LD + 32 * kp + 8 * (l >> 3) for l in range(32)], False)
                    sj = [s[l][j] for l in range(32)]
                    mma(sj, [st["qf"][l][2 * kp] for l in range(32)], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                    mma(sj, [st["qf"][l][2 * kp + 1] for l in range(32)], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
            s = np.array(s, np.float32)  # [lane][j][e]
            # mask_scores
            for lane in range(32):
                v = [vis[(w, lane, 0)], vis[(w, lane, 1)]]
                whole = k0 >= max(v[0][0], v[1][0]) and k0 + AM_K - 1 <= min(v[0][1], v[1][1])
                for j in range(8):
                    for e in range(4):
                        key = k0 + 8 * j + 2 * (lane & 3) + (e & 1)
                        vv = v[e >> 1]
                        seen = whole or (vv[0] <= key <= vv[1])
                        s[lane, j, e] = s[lane, j, e] * sl2 if seen else -np.inf
            # softmax_rows (quad max over lanes 4g..4g+3)
            for r in range(2):
                mx = np.maximum(st["m"][:, r], s[:, :, 2 * r: 2 * r + 2].max(axis=(1, 2)))
                mx = np.maximum(mx, mx[np.arange(32) ^ 1]); mx = np.maximum(mx, mx[np.arange(32) ^ 2])
                ref = np.where(mx == -np.inf, np.float32(0), mx)
                corr = np.exp2(st["m"][:, r] - ref)
                p = np.exp2(s[:, :, 2 * r: 2 * r + 2] - ref[:, None, None])
                s[:, :, 2 * r: 2 * r + 2] = p
                st["l"][:, r] = st["l"][:, r] * corr + p.sum(axis=(1, 2))
                st["acc"][:, :, 2 * r: 2 * r + 2] *= corr[:, None, None]
                st["m"][:, r] = mx
            # p_fragments + pv_tile
            for kk in range(4):
                pf = [[pack(*s[l, 2 * kk + (i >> 1), 2 * (i & 1): 2 * (i & 1) + 2]) for i in range(4)] for l in range(32)]
                for j in range(0, 8, 2):
                    b = ldmatrix(Vs, [(16 * kk + (l & 7) + 8 * ((l >> 3) & 1)) * AM_LD + 8 * (l >> 4) + 8 * j for l in range(32)], True)
                    for jj, (x, y) in [(j, (0, 1)), (j + 1, (2, 3))]:
                        cj = [list(st["acc"][l, jj]) for l in range(32)]
                        mma(cj, pf, [b[l][x] for l in range(32)], [b[l][y] for l in range(32)])
                        st["acc"][:, jj] = np.array(cj, np.float32)
        k0 += AM_K
    # store_rows
    for w in range(warps):
        st = state[w]; h = st["h"]
        sink2 = np.float32(sinks[h]) * LOG2E
        l = st["l"].copy()
        l += l[np.arange(32) ^ 1]; l += l[np.arange(32) ^ 2]
        for lane in range(32):
            for r in range(2):
                t = query_row(tile, w, lane, r)
                if t >= T:
                    continue
                m = st["m"][lane, r]
                f = np.float32(0)
                if m != -np.inf:
                    M = max(sink2, m)
                    f = np.exp2(m - M) / (np.exp2(sink2 - M) + l[lane, r] * np.exp2(m - M))
                for j in range(8):
                    at = (t * NQ + h) * AM_D + 8 * j + 2 * (lane & 3)
                    o[at: at + 2] = st["acc"][lane, j, 2 * r: 2 * r + 2] * f


def reference(q, kc, vc, sinks, pos, T, NQ, NKV, window, scale, cap):
    out = np.zeros((T, NQ, AM_D))
    G = NQ // NKV
    for t in range(T):
        p = pos[t]
        if not 0 <= p < cap:
            continue
        lo = 0 if window == 0 else max(0, p + 1 - window)
        for h in range(NQ):
            kv = h // G
            qv = q[(t * NQ + h) * AM_D:(t * NQ + h + 1) * AM_D].astype(np.float64)
            K = kc.reshape(cap, NKV, AM_D)[lo:p + 1, kv].astype(np.float64)
            V = vc.reshape(cap, NKV, AM_D)[lo:p + 1, kv].astype(np.float64)
            sc = K @ qv * scale
            M = max(sc.max(), sinks[h])
            e = np.exp(sc - M)
            out[t, h] = e @ V / (e.sum() + np.exp(sinks[h] - M))
    return out.reshape(-1)


def case(T, start, NQ, NKV, window, HB, cap, bad=()):
    q = rng.uniform(-2, 2, T * NQ * AM_D).astype(np.float32)
    kc = rng.uniform(-2, 2, cap * NKV * AM_D).astype(np.float32)
    vc = rng.uniform(-1, 1, cap * NKV * AM_D).astype(np.float32)
    sinks = rng.uniform(-1, 1, NQ).astype(np.float32)
    pos = [start + t for t in range(T)]
    for t in bad:
        pos[t] = cap + 3  # not a valid position: the row's output is 0
    o = np.full(T * NQ * AM_D, np.nan, np.float32)
    tiles = (T + AM_Q - 1) // AM_Q
    for tile in range(tiles):
        for hg in range(NQ // HB):
            block(q, kc, vc, sinks, pos, o, tile, hg, HB, T, NQ, NKV, window, 0.125, cap)
    want = reference(q, kc, vc, sinks, pos, T, NQ, NKV, window, 0.125, cap)
    assert not np.isnan(o).any(), "an output was not written"
    nmse = ((o - want) ** 2).sum() / (want ** 2).sum()
    mx = np.abs(o - want).max() / np.abs(want).max()
    print(f"T {T} start {start} NQ {NQ} NKV {NKV} window {window} HB {HB}: nmse {nmse:.2e}, max rel {mx:.2e}")
    assert nmse < 1e-4 and mx < 3e-2, "mismatch"


case(T=20, start=0, NQ=2, NKV=1, window=0, HB=2, cap=20)
case(T=70, start=5, NQ=2, NKV=2, window=0, HB=1, cap=80, bad=(3,))
case(T=64, start=100, NQ=4, NKV=1, window=37, HB=2, cap=170)
case(T=130, start=0, NQ=1, NKV=1, window=0, HB=1, cap=130)
print("ok")
