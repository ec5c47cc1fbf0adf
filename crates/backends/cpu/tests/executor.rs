//! The CPU kernels wired through HostExecutor: alloc, upload, execute, download.

use gptoss_backend_cpu::cpu_backend;
use gptoss_core::{Backend, DType, Graph, Op, TensorDesc, ValueKind};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn probe_reports_one_cpu_device() {
    let b = cpu_backend(1);
    assert_eq!(b.name(), "cpu");
    let p = b.probe();
    assert_eq!(p.best_score(), 1);
    assert!(p.devices[0].name.contains("cores"), "{}", p.devices[0].name);
}

#[test]
fn embed_norm_linear_argmax_through_the_executor() {
    let mut b = cpu_backend(2);
    let f32d = |s: &[usize]| TensorDesc::new(DType::F32, s);
    // BF16 table: values exactly representable, widened on upload.
    let table: Vec<f32> = vec![1.0, 1.0, -2.0, 2.0, 0.5, 0.0];
    let table_bytes: Vec<u8> = table
        .iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let t_id = b
        .load_weight("embed", &TensorDesc::new(DType::BF16, [3, 2]), &table_bytes)
        .unwrap();
    let n_id = b
        .load_weight("norm", &f32d(&[2]), &f32_bytes(&[1.0, 2.0]))
        .unwrap();
    let w_id = b
        .load_weight(
            "w",
            &f32d(&[3, 2]),
            &f32_bytes(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        )
        .unwrap();
    let bias_id = b
        .load_weight("b", &f32d(&[3]), &f32_bytes(&[0.0, 0.0, 10.0]))
        .unwrap();
    let ids_id = b.alloc(&TensorDesc::new(DType::I32, [2])).unwrap();
    let logits_id = b.alloc(&f32d(&[2, 3])).unwrap();
    let best_id = b.alloc(&TensorDesc::new(DType::I32, [2])).unwrap();

    let mut g = Graph::new();
    let table = g.add_value(
        "embed",
        TensorDesc::new(DType::BF16, [3, 2]),
        ValueKind::Weight(t_id),
    );
    let norm = g.add_value("norm", f32d(&[2]), ValueKind::Weight(n_id));
    let w = g.add_value("w", f32d(&[3, 2]), ValueKind::Weight(w_id));
    let bias = g.add_value("b", f32d(&[3]), ValueKind::Weight(bias_id));
    let ids = g.add_value(
        "ids",
        TensorDesc::new(DType::I32, [2]),
        ValueKind::Input(ids_id),
    );
    let x = g.add_value("x", f32d(&[2, 2]), ValueKind::Temp);
    let h = g.add_value("h", f32d(&[2, 2]), ValueKind::Temp);
    let logits = g.add_value("logits", f32d(&[2, 3]), ValueKind::Output(logits_id));
    let best = g.add_value(
        "best",
        TensorDesc::new(DType::I32, [2]),
        ValueKind::Output(best_id),
    );
    g.push(Op::Embed, vec![table, ids], vec![x]);
    g.push(Op::RmsNorm { eps: 0.0 }, vec![x, norm], vec![h]);
    g.push(Op::Linear, vec![h, w, bias], vec![logits]);
    g.push(Op::Argmax, vec![logits], vec![best]);

    b.upload(ids_id, &i32_bytes(&[1, 0])).unwrap();
    b.execute(&g).unwrap();
    // Row 1 of the table [-2, 2]: rms 2 -> [-1, 1] * [1, 2] = [-1, 2] -> logits [-1, 2, 11].
    // Row 0 [1, 1]: rms 1 -> [1, 2] -> logits [1, 2, 13].
    assert_eq!(
        to_f32(&b.download(logits_id).unwrap()),
        [-1.0, 2.0, 11.0, 1.0, 2.0, 13.0]
    );
    assert_eq!(b.download(best_id).unwrap(), i32_bytes(&[2, 2]));

    // A bad id fails cleanly, naming the id, and the executor stays usable.
    b.upload(ids_id, &i32_bytes(&[3, 0])).unwrap();
    let err = b.execute(&g).unwrap_err().to_string();
    assert!(
        err.contains("token id 3") && err.contains("3 tokens"),
        "{err}"
    );
    b.upload(ids_id, &i32_bytes(&[0, 1])).unwrap();
    b.execute(&g).unwrap();
    assert_eq!(
        to_f32(&b.download(logits_id).unwrap()),
        [1.0, 2.0, 13.0, -1.0, 2.0, 11.0]
    );
}

#[test]
fn the_kv_cache_persists_between_executions() {
    // 1 head, d = 1, scale 1, sink 0. Step 1 at position 0: k = 0, v = 4 -> o = 4 / (1 + 1) = 2.
    // Step 2 at position 1: q = 1, k = ln 2, v = 10 -> weights (1, 2, 1 for the sink) / 4 ->
    // o = (4 + 20) / 4 = 6; this needs the key and value written by step 1.
    let mut b = cpu_backend(2);
    let d1 = |s: &[usize]| TensorDesc::new(DType::F32, s);
    let [q_id, k_id, v_id, o_id, kc_id, vc_id] = [
        d1(&[1, 1]),
        d1(&[1, 1]),
        d1(&[1, 1]),
        d1(&[1, 1]),
        d1(&[4, 1]),
        d1(&[4, 1]),
    ]
    .map(|d| b.alloc(&d).unwrap());
    let s_id = b
        .load_weight("sinks", &d1(&[1]), &f32_bytes(&[0.0]))
        .unwrap();
    let p_id = b.alloc(&TensorDesc::new(DType::I32, [1])).unwrap();
    let mut g = Graph::new();
    let q = g.add_value("q", d1(&[1, 1]), ValueKind::Input(q_id));
    let k = g.add_value("k", d1(&[1, 1]), ValueKind::Input(k_id));
    let v = g.add_value("v", d1(&[1, 1]), ValueKind::Input(v_id));
    let s = g.add_value("sinks", d1(&[1]), ValueKind::Weight(s_id));
    let p = g.add_value(
        "pos",
        TensorDesc::new(DType::I32, [1]),
        ValueKind::Input(p_id),
    );
    let o = g.add_value("o", d1(&[1, 1]), ValueKind::Output(o_id));
    let kc = g.add_value("k_cache", d1(&[4, 1]), ValueKind::State(kc_id));
    let vc = g.add_value("v_cache", d1(&[4, 1]), ValueKind::State(vc_id));
    let op = Op::Attention {
        heads: 1,
        kv_heads: 1,
        head_dim: 1,
        window: 0,
        scale: 1.0,
    };
    g.push(op, vec![q, k, v, s, p], vec![o, kc, vc]);

    let step = |b: &mut gptoss_backend_cpu::CpuBackend, q: f32, k: f32, v: f32, pos: i32| {
        b.upload(q_id, &f32_bytes(&[q])).unwrap();
        b.upload(k_id, &f32_bytes(&[k])).unwrap();
        b.upload(v_id, &f32_bytes(&[v])).unwrap();
        b.upload(p_id, &i32_bytes(&[pos])).unwrap();
        b.execute(&g).map(|_| to_f32(&b.download(o_id).unwrap())[0])
    };
    assert_eq!(step(&mut b, 1.0, 0.0, 4.0, 0).unwrap(), 2.0);
    let o2 = step(&mut b, 1.0, 2f32.ln(), 10.0, 1).unwrap();
    assert!((o2 - 6.0).abs() < 1e-5, "{o2}");
    assert_eq!(to_f32(&b.download(vc_id).unwrap()), [4.0, 10.0, 0.0, 0.0]);
    let err = step(&mut b, 1.0, 0.0, 1.0, 4).unwrap_err().to_string();
    assert!(
        err.contains("position 4") && err.contains("capacity of 4"),
        "{err}"
    );
    // The failed step left the cache as it was.
    assert_eq!(to_f32(&b.download(vc_id).unwrap()), [4.0, 10.0, 0.0, 0.0]);
}
