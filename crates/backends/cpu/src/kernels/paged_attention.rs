//! PagedAttention: attention for rows of several sequences over one paged KV pool.

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::attention::{check_io, write_rows, Heads};
use super::{arity, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};
use crate::Pool;

/// in: q [T, NQ*D], k [T, NKV*D], v [T, NKV*D], sinks [NQ], positions [T], slots [T],
/// pages [T, P]; out: o [T, NQ*D], k_pool [R, NKV*D] (State), v_pool [R, NKV*D] (State).
pub struct PagedAttention {
    pool: Pool,
}

impl PagedAttention {
    pub fn new(pool: Pool) -> Self {
        PagedAttention { pool }
    }
}

impl HostKernel for PagedAttention {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::PagedAttention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
            page_size,
        } = *op
        else {
            return Err(wrong_op("paged_attention", op));
        };
        arity(op, inputs, outputs, &[7], 3)?;
        let (nq, nkv, d, window, ps) = (
            heads as usize,
            kv_heads as usize,
            head_dim as usize,
            window as usize,
            page_size as usize,
        );
        if ps == 0 {
            return Err(Error::Graph(
                "paged_attention: page_size must be > 0".into(),
            ));
        }
        let (t, rows) = check_io(inputs, outputs, nq, nkv, d)?;
        let kvw = nkv * d;
        want_shape(inputs[5], &[t])?;
        let (_, np) = dims2(inputs[6])?;
        let (q, k, v) = (f32s(inputs[0])?, f32s(inputs[1])?, f32s(inputs[2])?);
        let (sinks, pos, slots, pages) = (
            f32s(inputs[3])?,
            i32s(inputs[4])?,
            i32s(inputs[5])?,
            i32s(inputs[6])?,
        );
        // Every pool row a step touches must exist: check them all before writing.
        let pool_pages = rows / ps;
        let page_of = |ti: usize, j: usize| -> Result<usize> {
            let pg = pages.get(ti * np + j / ps).copied().unwrap_or(-1);
            if pg < 0 || pg as usize >= pool_pages {
                return Err(Error::Input(format!(
                    "paged_attention: row {ti} needs key {j} on page {pg}, the pool holds pages 0..{pool_pages}"
                )));
            }
            Ok(pg as usize)
        };
        for ti in 0..t {
            let (p, s) = (pos[ti], slots[ti]);
            if p < 0 || s < 0 || s as usize >= rows {
                return Err(Error::Input(format!(
                    "paged_attention: row {ti} has position {p} and slot {s}; the pool has {rows} rows"
                )));
            }
            page_of(ti, p as usize)?;
        }
        let [o, k_pool, v_pool] = outputs else {
            return Err(wrong_op("paged_attention", op));
        };
        let (k_pool, v_pool) = (f32s_mut(k_pool)?, f32s_mut(v_pool)?);
        write_rows(
            (k, v),
            (k_pool, v_pool),
            kvw,
            slots.iter().map(|&s| s as usize),
        );
        let heads = Heads {
            q,
            k_cache: k_pool,
            v_cache: v_pool,
            shape: (nq, nkv, d),
            pos,
            window,
            scale,
            sinks,
        };
        heads.attend(&self.pool, f32s_mut(o)?, |ti, j| {
            pages[ti * np + j / ps] as usize * ps + j % ps
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::{DType, Op};

    /// Two sequences written through pages in scrambled order give the same outputs as
    /// each one alone through the contiguous Attention op.
    #[test]
    fn paged_rows_equal_contiguous_attention() {
        let (nq, nkv, d, ps) = (4usize, 2usize, 4usize, 2usize);
        let kvw = nkv * d;
        for window in [0u32, 3] {
            let lens = [5usize, 3];
            // seq 0 on pages [3, 0, 5], seq 1 on pages [1, 4]
            let tables = [vec![3, 0, 5], vec![1, 4]];
            let np = 3;
            let mut want_o = Vec::new();
            let (mut q_all, mut k_all, mut v_all, mut pos, mut slots, mut pages) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for (s, &n) in lens.iter().enumerate() {
                let (q, k, v) = (
                    noise(n * nq * d, 1 + s as u64),
                    noise(n * kvw, 11 + s as u64),
                    noise(n * kvw, 21 + s as u64),
                );
                let op = Op::Attention {
                    heads: nq as u32,
                    kv_heads: nkv as u32,
                    head_dim: d as u32,
                    window,
                    scale: 0.5,
                };
                let out = run(
                    op,
                    &[
                        &f("q", &[n, nq * d], q.clone()),
                        &f("k", &[n, kvw], k.clone()),
                        &f("v", &[n, kvw], v.clone()),
                        &f("s", &[nq], vec![0.1, -0.2, 0.3, 0.0]),
                        &i("p", &[n], (0..n as i32).collect()),
                    ],
                    vec![
                        out_f32("o", &[n, nq * d]),
                        zeros("kc", DType::F32, &[8, kvw]),
                        zeros("vc", DType::F32, &[8, kvw]),
                    ],
                )
                .unwrap();
                want_o.extend_from_slice(out[0].f32().unwrap());
                q_all.extend(q);
                k_all.extend(k);
                v_all.extend(v);
                for j in 0..n {
                    pos.push(j as i32);
                    slots.push((tables[s][j / ps] * ps + j % ps) as i32);
                    let mut row: Vec<i32> = tables[s].iter().map(|p| *p as i32).collect();
                    row.resize(np, -1);
                    pages.extend(row);
                }
            }
            let t = pos.len();
            let op = Op::PagedAttention {
                heads: nq as u32,
                kv_heads: nkv as u32,
                head_dim: d as u32,
                window,
                scale: 0.5,
                page_size: ps as u32,
            };
            let pool = |n: &str| zeros(n, DType::F32, &[6 * ps, kvw]);
            let out = run(
                op,
                &[
                    &f("q", &[t, nq * d], q_all),
                    &f("k", &[t, kvw], k_all),
                    &f("v", &[t, kvw], v_all),
                    &f("s", &[nq], vec![0.1, -0.2, 0.3, 0.0]),
                    &i("p", &[t], pos),
                    &i("slots", &[t], slots),
                    &i("pages", &[t, np], pages.clone()),
                ],
                vec![out_f32("o", &[t, nq * d]), pool("kp"), pool("vp")],
            )
            .unwrap();
            assert_close(
                out[0].f32().unwrap(),
                &want_o.iter().map(|x| *x as f64).collect::<Vec<_>>(),
                1e-6,
            );
        }
    }

    /// A key on a page the row's table does not hold is an error, not a read.
    #[test]
    fn missing_page_is_an_error() {
        let op = Op::PagedAttention {
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
            window: 0,
            scale: 1.0,
            page_size: 2,
        };
        let err = run(
            op,
            &[
                &f("q", &[1, 2], vec![1.0, 0.0]),
                &f("k", &[1, 2], vec![1.0, 0.0]),
                &f("v", &[1, 2], vec![1.0, 0.0]),
                &f("s", &[1], vec![0.0]),
                &i("p", &[1], vec![2]),
                &i("slots", &[1], vec![0]),
                &i("pages", &[1, 1], vec![0]),
            ],
            vec![
                out_f32("o", &[1, 2]),
                zeros("kp", DType::F32, &[4, 2]),
                zeros("vp", DType::F32, &[4, 2]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("page -1"), "{err}");
    }
}
