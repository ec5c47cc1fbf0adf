#!/usr/bin/env python3
# Host check of mma.cu's Volta build (MMA_SM70): one warp of warp_mma_tile emulated lane by lane,
# with the thread-to-row formulas of mma.cu (Aw, Bw, acc_row, acc_col: keep in step with it),
# against the PTX fragment layout of mma.m8n8k4 written out independently below. Checks that
# every output of the warp tile is produced once and equals the reference product (SCALED too)
# and that the 16-byte shared loads have no bank conflicts. Run: python3 scripts/mma_sm70_layout.py
# Emulates mma.cu's MMA_SM70 warp_mma_tile for one warp against the PTX m8n8k4 fragment layout
# (PTX ISA "Matrix Fragments for mma.m8n8k4 with .f16": A .row row = lane%4 (+4 if lane>=16),
# col = i; B .col row = i, col = lane%4 (+4 if lane>=16); C .f32 row = X (+4 if lane>=16),
# X = (lane&1) + (i&2), col = (i&4) + (lane&2) + (i&1)).
import random
BK, LDS = 32, 40

def qp_lanes(q): return [4*q + t for t in range(4)] + [16 + 4*q + t for t in range(4)]
def a_row(l): return l % 4 + (4 if l >= 16 else 0)
def b_col(l): return l % 4 + (4 if l >= 16 else 0)
def c_pos(l, e): return ((l & 1) + (e & 2) + (4 if l >= 16 else 0), (e & 4) + (l & 2) + (e & 1))

def acc_row(i, h, lane): return 16*i + 4*((lane >> 2) & 1) + (lane & 1) + 2*h + 8*(lane >> 4)
def acc_col(NT, j, lane): return ((lane >> 3) & 1)*4*NT + 8*(j >> 1) + 4*(j & 1) + (lane & 2)

def mma_884(frA, frB, C):
    # frA[lane] = 4 values (k 0..3), frB[lane] = 4 values, C[lane] = 8 values (modified)
    for q in range(4):
        lanes = qp_lanes(q)
        A = [[None]*4 for _ in range(8)]
        B = [[None]*8 for _ in range(4)]
        for l in lanes:
            for k in range(4):
                A[a_row(l)][k] = frA[l][k]
                B[k][b_col(l)] = frB[l][k]
        D = {}
        for l in lanes:
            for e in range(8):
                r, c = c_pos(l, e)
                D[(l, e)] = C[l][e] + sum(A[r][k]*B[k][c] for k in range(4))
        for (l, e), v in D.items(): C[l][e] = v

def run(MT, NT, wm, wn, scaled):
    rowsA, rowsB = 2*16*MT, 4*8*NT
    As = [[random.randint(-4, 4) for _ in range(LDS)] for _ in range(rowsA)]
    Bs = [[random.randint(-4, 4) for _ in range(LDS)] for _ in range(rowsB)]
    bscale = [random.choice([1, 2, 4, 8, 16]) for _ in range(rowsB)]
    acc = [[[[0]*4 for _ in range(NT)] for _ in range(MT)] for _ in range(32)]
    loads = []  # (instr id, lane, row, halfoffset)
    for kk in range(0, BK, 16):
        a = {}; b = {}
        for lane in range(32):
            Aw = wm*16*MT + 4*((lane >> 2) & 1) + (lane & 3) + 8*(lane >> 4)
            Bw = wn*8*NT + ((lane >> 3) & 1)*4*NT + (lane & 3) + 4*(lane >> 4)
            for i in range(MT):
                for hf in range(2):
                    r = Aw + 16*i; off = kk + 8*hf
                    a[(lane, i, hf)] = As[r][off:off+8]
                    loads.append((('A', kk, i, hf), lane, r*LDS + off))
            for jt in range(NT//2):
                for hf in range(2):
                    r = Bw + 8*jt; off = kk + 8*hf
                    b[(lane, jt, hf)] = Bs[r][off:off+8]
                    loads.append((('B', kk, jt, hf), lane, r*LDS + off))
        for i in range(MT):
            for jt in range(NT//2):
                C = [[0]*8 for _ in range(32)] if scaled else \
                    [acc[l][i][2*jt] + acc[l][i][2*jt+1] for l in range(32)]
                for s in range(4):
                    hf, q4 = s // 2, (s % 2)*4
                    frA = [a[(l, i, hf)][q4:q4+4] for l in range(32)]
                    frB = [b[(l, jt, hf)][q4:q4+4] for l in range(32)]
                    mma_884(frA, frB, C)
                for l in range(32):
                    if scaled:
                        n = wn*8*NT + acc_col(NT, 2*jt, l)
                        r0, r1, r4, r5 = bscale[n], bscale[n+1], bscale[n+4], bscale[n+5]
                        t = C[l]
                        lo, hi = acc[l][i][2*jt], acc[l][i][2*jt+1]
                        lo[0] += t[0]*r0; lo[1] += t[1]*r1; lo[2] += t[2]*r0; lo[3] += t[3]*r1
                        hi[0] += t[4]*r4; hi[1] += t[5]*r5; hi[2] += t[6]*r4; hi[3] += t[7]*r5
                    else:
                        acc[l][i][2*jt] = C[l][:4]; acc[l][i][2*jt+1] = C[l][4:]
    # check
    seen = set()
    for l in range(32):
        for i in range(MT):
            for j in range(NT):
                for h in range(2):
                    for c in range(2):
                        row = wm*16*MT + acc_row(i, h, l)
                        col = wn*8*NT + acc_col(NT, j, l) + c
                        assert (row, col) not in seen; seen.add((row, col))
                        ref = sum(As[row][k]*Bs[col][k] for k in range(BK))
                        if scaled: ref *= bscale[col]
                        got = acc[l][i][j][2*h + c]
                        assert got == ref, (MT, NT, l, i, j, h, c, got, ref)
    want = {(wm*16*MT + r, wn*8*NT + c) for r in range(16*MT) for c in range(8*NT)}
    assert seen == want
    # bank conflicts: 16-byte loads, phases of 8 lanes; distinct addresses must use distinct
    # 4-bank groups.
    by = {}
    for ins, lane, addr in loads:
        by.setdefault(ins, {})[lane] = addr*2  # bytes
    worst = 1
    for ins, m in by.items():
        for p in range(4):
            addrs = {m[l] for l in range(8*p, 8*p+8)}
            banks = {}
            for a_ in addrs:
                assert a_ % 16 == 0
                banks.setdefault((a_ // 4) % 32, set()).add(a_)
            worst = max(worst, max(len(v) for v in banks.values()))
    return worst

random.seed(1)
for MT, NT in [(4, 4), (2, 4)]:
    for wm in range(2):
        for wn in range(4):
            for scaled in (False, True):
                w = run(MT, NT, wm, wn, scaled)
                assert w == 1, ("bank conflict", MT, NT, wm, wn, w)
print("ok: m8n8k4 mapping matches, every output once, no bank conflicts")
