//! Attention: causal (optionally sliding-window) attention with per-head sinks over a KV cache.

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};
use rayon::prelude::*;

use super::{arity, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};
use crate::math::{axpy, dot};
use crate::Pool;

/// in: q [T, NQ*D], k [T, NKV*D], v [T, NKV*D], sinks [NQ], positions [T] I32;
/// out: o [T, NQ*D], k_cache [C, NKV*D] (State), v_cache [C, NKV*D] (State).
pub struct Attention {
    pool: Pool,
}

impl Attention {
    pub fn new(pool: Pool) -> Self {
        Attention { pool }
    }
}

/// First cached key position a query at `p` sees: all of them without a window, else those
/// with `j > p - window`.
pub fn first_visible(p: usize, window: usize) -> usize {
    if window == 0 {
        0
    } else {
        (p + 1).saturating_sub(window)
    }
}

/// One query head at position `p` over cached keys `lo..=p`: softmax of the scaled scores
/// with the sink logit as an extra column (dropped afterwards), then the weighted sum of
/// values. Key position j lives in cache row `row(j)` (stride `stride`); this head's kv head
/// starts `offset` floats into the row.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    stride: usize,
    offset: usize,
    lo: usize,
    p: usize,
    row: impl Fn(usize) -> usize,
    scale: f32,
    sink: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = out.len();
    scores.clear();
    scores.extend((lo..=p).map(|j| dot(q, &k_cache[row(j) * stride + offset..][..d]) * scale));
    let m = scores.iter().fold(sink, |m, &s| m.max(s));
    let mut sum = (sink - m).exp();
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, e) in (lo..=p).zip(scores.iter()) {
        axpy(out, e * inv, &v_cache[row(j) * stride + offset..][..d]);
    }
}

/// Copies each token's k and v rows (`kvw` floats) into the caches at row `dest[ti]`.
pub(crate) fn write_rows(
    (k, v): (&[f32], &[f32]),
    (k_cache, v_cache): (&mut [f32], &mut [f32]),
    kvw: usize,
    dest: impl Iterator<Item = usize>,
) {
    for (ti, r) in dest.enumerate() {
        let (src, dst) = (ti * kvw..(ti + 1) * kvw, r * kvw..(r + 1) * kvw);
        k_cache[dst.clone()].copy_from_slice(&k[src.clone()]);
        v_cache[dst].copy_from_slice(&v[src]);
    }
}

/// The query heads of an attention step over their caches (contiguous or paged).
pub(crate) struct Heads<'a> {
    pub q: &'a [f32],
    pub k_cache: &'a [f32],
    pub v_cache: &'a [f32],
    /// (query heads, kv heads, head_dim)
    pub shape: (usize, usize, usize),
    pub pos: &'a [i32],
    pub window: usize,
    pub scale: f32,
    pub sinks: &'a [f32],
}

impl Heads<'_> {
    /// Every (token, query head) of `o` [T, nq * d], in parallel on `pool`; key position j of
    /// token ti lives in cache row `row(ti, j)`.
    pub(crate) fn attend(
        &self,
        pool: &Pool,
        o: &mut [f32],
        row: impl Fn(usize, usize) -> usize + Sync,
    ) {
        let (nq, nkv, d) = self.shape;
        if o.is_empty() {
            return;
        }
        let group = nq / nkv;
        pool.install(|| {
            o.par_chunks_mut(d)
                .enumerate()
                .for_each_init(Vec::new, |scores, (idx, out)| {
                    let (ti, h) = (idx / nq, idx % nq);
                    let p = self.pos[ti] as usize;
                    attend_one(
                        &self.q[ti * nq * d + h * d..][..d],
                        self.k_cache,
                        self.v_cache,
                        nkv * d,
                        (h / group) * d,
                        first_visible(p, self.window),
                        p,
                        |j| row(ti, j),
                        self.scale,
                        self.sinks[h],
                        scores,
                        out,
                    );
                })
        });
    }
}

/// Checks q, k, v, sinks, positions, the output and both caches of an attention op (also
/// `PagedAttention`, whose caches are the pools); returns (tokens, cache rows).
pub(crate) fn check_io(
    inputs: &[&HostTensor],
    outputs: &[&mut HostTensor],
    nq: usize,
    nkv: usize,
    d: usize,
) -> Result<(usize, usize)> {
    if nkv == 0 || nq % nkv != 0 {
        return Err(Error::Graph(format!(
            "attention: heads {nq} must be a multiple of kv_heads {nkv}"
        )));
    }
    let (t, _) = dims2(inputs[0])?;
    let kvw = nkv * d;
    want_shape(inputs[0], &[t, nq * d])?;
    want_shape(inputs[1], &[t, kvw])?;
    want_shape(inputs[2], &[t, kvw])?;
    want_shape(inputs[3], &[nq])?;
    want_shape(inputs[4], &[t])?;
    want_shape(outputs[0], &[t, nq * d])?;
    let (rows, _) = dims2(outputs[1])?;
    want_shape(outputs[1], &[rows, kvw])?;
    want_shape(outputs[2], &[rows, kvw])?;
    Ok((t, rows))
}

impl HostKernel for Attention {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::Attention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
        } = *op
        else {
            return Err(wrong_op("attention", op));
        };
        arity(op, inputs, outputs, &[5], 3)?;
        let (nq, nkv, d, window) = (
            heads as usize,
            kv_heads as usize,
            head_dim as usize,
            window as usize,
        );
        let (_, cap) = check_io(inputs, outputs, nq, nkv, d)?;
        let kvw = nkv * d;
        let (q, k, v) = (f32s(inputs[0])?, f32s(inputs[1])?, f32s(inputs[2])?);
        let (sinks, pos) = (f32s(inputs[3])?, i32s(inputs[4])?);
        // Check every position before touching the caches.
        for &p in pos {
            if p < 0 || p as usize >= cap {
                return Err(Error::Input(format!(
                    "attention: position {p} is beyond the KV cache capacity of {cap} positions (0..{cap}); \
                     use a longer context"
                )));
            }
        }
        let [o, k_cache, v_cache] = outputs else {
            return Err(wrong_op("attention", op));
        };
        let (k_cache, v_cache) = (f32s_mut(k_cache)?, f32s_mut(v_cache)?);
        write_rows(
            (k, v),
            (k_cache, v_cache),
            kvw,
            pos.iter().map(|&p| p as usize),
        );
        let heads = Heads {
            q,
            k_cache,
            v_cache,
            shape: (nq, nkv, d),
            pos,
            window,
            scale,
            sinks,
        };
        heads.attend(&self.pool, f32s_mut(o)?, |_, j| j);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::host::HostTensor;
    use gptoss_core::{DType, Op};

    fn op(heads: u32, kv_heads: u32, head_dim: u32, window: u32) -> Op {
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale: 1.0,
        }
    }

    /// Run attention on fresh or given caches; returns (o, k_cache, v_cache).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        op: &Op,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        sinks: Vec<f32>,
        pos: Vec<i32>,
        caches: (HostTensor, HostTensor),
    ) -> gptoss_core::Result<(HostTensor, HostTensor, HostTensor)> {
        let Op::Attention {
            heads,
            kv_heads,
            head_dim,
            ..
        } = *op
        else {
            unreachable!()
        };
        let (nq, kvw, t) = (heads as usize, (kv_heads * head_dim) as usize, pos.len());
        let d = head_dim as usize;
        let q = f("q", &[t, nq * d], q);
        let k = f("k", &[t, kvw], k);
        let v = f("v", &[t, kvw], v);
        let s = f("sinks", &[nq], sinks);
        let p = i("pos", &[t], pos);
        let out = run(
            op.clone(),
            &[&q, &k, &v, &s, &p],
            vec![out_f32("o", &[t, nq * d]), caches.0, caches.1],
        )?;
        let mut it = out.into_iter();
        Ok((it.next().unwrap(), it.next().unwrap(), it.next().unwrap()))
    }

    fn caches(cap: usize, kvw: usize) -> (HostTensor, HostTensor) {
        (
            zeros("k_cache", DType::F32, &[cap, kvw]),
            zeros("v_cache", DType::F32, &[cap, kvw]),
        )
    }

    #[test]
    fn the_sink_takes_probability_mass() {
        // 1 head, d = 2. Keys: k0 = [0, 0], k1 = [1, 0]; values v0 = [1, 0], v1 = [0, 1].
        // q0 = q1 = [1, 0] -> scores at position 1: s0 = 0, s1 = 1; sink 0.5.
        let sink = 0.5f64;
        let (o, _, _) = attend(
            &op(1, 1, 2, 0),
            vec![1.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![sink as f32],
            vec![0, 1],
            caches(4, 2),
        )
        .unwrap();
        let e = f64::exp;
        let z1 = e(0.0) + e(1.0) + e(sink);
        let z0 = e(0.0) + e(sink);
        // position 0 sees only k0: p0 = 1 / (1 + e^0.5) ~ 0.3775, not 1.
        let want = [1.0 / z0, 0.0, 1.0 / z1, e(1.0) / z1];
        assert_close(o.f32().unwrap(), &want, 1e-6);
        let row1 = &o.f32().unwrap()[2..];
        assert!(
            row1[0] + row1[1] < 0.85,
            "the sink must lower the mass: {row1:?}"
        );
        // Without the sink's mass (a sink of -inf) the same scores sum to one.
        let (o, _, _) = attend(
            &op(1, 1, 2, 0),
            vec![1.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![f32::NEG_INFINITY],
            vec![0, 1],
            caches(4, 2),
        )
        .unwrap();
        let z = e(0.0) + e(1.0);
        assert_close(o.f32().unwrap(), &[1.0, 0.0, 1.0 / z, e(1.0) / z], 1e-6);
    }

    #[test]
    fn the_scale_multiplies_scores_but_not_the_sink() {
        // scale 0.5: scores q.k = 4 -> 2 ; sink 2 -> equal weights for key and sink.
        let op = Op::Attention {
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            window: 0,
            scale: 0.5,
        };
        let (o, _, _) = attend(
            &op,
            vec![2.0],
            vec![2.0],
            vec![10.0],
            vec![2.0],
            vec![0],
            caches(1, 1),
        )
        .unwrap();
        assert_close(o.f32().unwrap(), &[5.0], 1e-6);
    }

    #[test]
    fn window_of_three_sees_exactly_the_last_three_keys() {
        // d = 1, q = k = 0 -> equal scores; v_j = 2^j so the output names the keys it used.
        let t = 7;
        let v: Vec<f32> = (0..t).map(|j| (1u32 << j) as f32).collect();
        let (o, _, _) = attend(
            &op(1, 1, 1, 3),
            vec![0.0; t],
            vec![0.0; t],
            v,
            vec![-100.0],
            (0..t as i32).collect(),
            caches(8, 1),
        )
        .unwrap();
        let o = o.f32().unwrap();
        let seen = |p: usize| o[p] as f64 * (p.min(2) + 1) as f64;
        assert_eq!(seen(0).round(), 1.0); // key 0
        assert_eq!(seen(1).round(), 3.0); // keys 0, 1
        assert_eq!(seen(2).round(), 7.0); // keys 0, 1, 2
        assert_eq!(seen(5).round(), 56.0); // keys 3, 4, 5 = 8 + 16 + 32, not key 2
        assert_eq!(seen(6).round(), 112.0); // keys 4, 5, 6
        assert!((o[5] as f64 - 56.0 / 3.0).abs() < 1e-4, "{}", o[5]);
        // Full attention at position 5 sees all six keys.
        let v: Vec<f32> = (0..t).map(|j| (1u32 << j) as f32).collect();
        let (o, _, _) = attend(
            &op(1, 1, 1, 0),
            vec![0.0; t],
            vec![0.0; t],
            v,
            vec![-100.0],
            (0..t as i32).collect(),
            caches(8, 1),
        )
        .unwrap();
        assert!((o.f32().unwrap()[5] as f64 - 63.0 / 6.0).abs() < 1e-4);
        assert_eq!(super::first_visible(5, 3), 3);
        assert_eq!(super::first_visible(1, 3), 0);
        assert_eq!(super::first_visible(200, 128), 73);
    }

    #[test]
    fn query_heads_share_kv_heads_in_consecutive_groups() {
        // 4 query heads over 2 kv heads: heads 0, 1 -> kv 0; heads 2, 3 -> kv 1.
        let (o, kc, vc) = attend(
            &op(4, 2, 1, 0),
            vec![1.0, 1.0, 1.0, 1.0],
            vec![0.5, -0.5],
            vec![10.0, 20.0],
            vec![-100.0; 4],
            vec![0],
            caches(2, 2),
        )
        .unwrap();
        assert_close(o.f32().unwrap(), &[10.0, 10.0, 20.0, 20.0], 1e-6);
        assert_eq!(kc.f32().unwrap(), &[0.5, -0.5, 0.0, 0.0]);
        assert_eq!(vc.f32().unwrap(), &[10.0, 20.0, 0.0, 0.0]);
        // Two tokens: kv head 0 prefers key 1 (k = 2 vs 0), kv head 1 key 0 (k = 0 vs -inf-ish).
        let (o, _, _) = attend(
            &op(4, 2, 1, 0),
            vec![0.0; 4]
                .into_iter()
                .chain([1.0, 1.0, 1.0, 1.0])
                .collect(),
            vec![0.0, 0.0, 2.0, -100.0],
            vec![1.0, 3.0, 5.0, 7.0],
            vec![-100.0; 4],
            vec![0, 1],
            caches(2, 2),
        )
        .unwrap();
        let e2 = 2f64.exp();
        let kv0 = (1.0 + 5.0 * e2) / (1.0 + e2);
        assert_close(
            o.f32().unwrap(),
            &[1.0, 1.0, 3.0, 3.0, kv0, kv0, 3.0, 3.0],
            1e-5,
        );
    }

    #[test]
    fn one_token_at_a_time_equals_prefill() {
        let (nq, nkv, d, t, cap) = (4usize, 2usize, 8usize, 5usize, 8usize);
        for window in [0u32, 3] {
            let op = Op::Attention {
                heads: 4,
                kv_heads: 2,
                head_dim: 8,
                window,
                scale: 0.35,
            };
            let (q, k, v) = (
                noise(t * nq * d, 11),
                noise(t * nkv * d, 12),
                noise(t * nkv * d, 13),
            );
            let sinks = noise(nq, 14);
            let pos: Vec<i32> = (0..t as i32).collect();
            let (o_all, kc_all, vc_all) = attend(
                &op,
                q.clone(),
                k.clone(),
                v.clone(),
                sinks.clone(),
                pos,
                caches(cap, nkv * d),
            )
            .unwrap();
            let mut cs = caches(cap, nkv * d);
            let mut o_inc = Vec::new();
            for ti in 0..t {
                let (o, kc, vc) = attend(
                    &op,
                    q[ti * nq * d..(ti + 1) * nq * d].to_vec(),
                    k[ti * nkv * d..(ti + 1) * nkv * d].to_vec(),
                    v[ti * nkv * d..(ti + 1) * nkv * d].to_vec(),
                    sinks.clone(),
                    vec![ti as i32],
                    cs,
                )
                .unwrap();
                o_inc.extend_from_slice(o.f32().unwrap());
                cs = (kc, vc);
            }
            assert_eq!(o_all.f32().unwrap(), &o_inc[..], "window {window}");
            assert_eq!(kc_all, cs.0);
            assert_eq!(vc_all, cs.1);
            // A two-token continuation after a three-token prefill gives the same rows too.
            let mut cs = caches(cap, nkv * d);
            let mut o_split = Vec::new();
            for (a, b) in [(0usize, 3usize), (3, 5)] {
                let (o, kc, vc) = attend(
                    &op,
                    q[a * nq * d..b * nq * d].to_vec(),
                    k[a * nkv * d..b * nkv * d].to_vec(),
                    v[a * nkv * d..b * nkv * d].to_vec(),
                    sinks.clone(),
                    (a as i32..b as i32).collect(),
                    cs,
                )
                .unwrap();
                o_split.extend_from_slice(o.f32().unwrap());
                cs = (kc, vc);
            }
            assert_eq!(o_all.f32().unwrap(), &o_split[..], "window {window}");
        }
    }

    #[test]
    fn position_beyond_capacity_is_an_error_and_leaves_the_cache_alone() {
        let err = attend(
            &op(1, 1, 1, 0),
            vec![1.0, 1.0],
            vec![1.0, 2.0],
            vec![1.0, 2.0],
            vec![0.0],
            vec![3, 4],
            caches(4, 1),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("position 4") && msg.contains("capacity of 4"),
            "{msg}"
        );
        let kernels = crate::CpuKernels::new(1);
        let op = op(1, 1, 1, 0);
        let k = gptoss_core::host::HostKernels::kernel(&kernels, &op).unwrap();
        let (q, kk, v) = (
            f("q", &[2, 1], vec![1.0; 2]),
            f("k", &[2, 1], vec![5.0; 2]),
            f("v", &[2, 1], vec![5.0; 2]),
        );
        let (s, p) = (f("s", &[1], vec![0.0]), i("p", &[2], vec![0, 9]));
        let (mut o, (mut kc, mut vc)) = (out_f32("o", &[2, 1]), caches(4, 1));
        assert!(k
            .run(&op, &[&q, &kk, &v, &s, &p], &mut [&mut o, &mut kc, &mut vc])
            .is_err());
        assert_eq!(kc.f32().unwrap(), &[0.0; 4]);
        assert_eq!(vc.f32().unwrap(), &[0.0; 4]);
    }
}
