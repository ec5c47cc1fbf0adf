//! wgpu against the CPU reference (every op, random inputs) and against transformers (the
//! committed tiny fixtures: prefill, incremental, chunked, greedy).
//!
//! These tests need a wgpu adapter and FAIL without one (no skipping): CI installs lavapipe
//! (Debian's mesa-vulkan-drivers, a software Vulkan driver) and the Vulkan loader in .ci/run, so
//! they run there on the CPU; on the GPU machine they run on the GPU through its Vulkan driver
//! (`GPTOSS_WGPU_ADAPTER=<index>` picks another adapter of `adapters()`).
//!
//! Tolerances: the fixtures use `F32_LOGIT_TOLERANCE` (1e-4 max abs on logits), the bound of
//! the CPU reference: the shaders widen bf16 weights and MXFP4 codes exactly to f32 and
//! compute activations, accumulation and softmax in f32 (no f16 arithmetic even where the
//! adapter has shader-f16), so they differ from transformers' f32 run only by summation order
//! and the device's exp/cos/sin. Per-op checks against the CPU backend use a relative max-abs
//! bound of 1e-5 (of the largest reference magnitude) and require integer outputs (ids, argmax,
//! copied cache rows) and copies (embedding rows, last row) to be equal.

use gptoss_backend_wgpu::{adapters, KernelOptions, Wgpu};
use gptoss_core::graph::Op;
use gptoss_core::plugin::{PluginBackend, PluginOptions};
use gptoss_core::{Backend, DType, TensorDesc};
use gptoss_e2e::backend_check::*;
use gptoss_e2e::{check_fixture_prompts, fixture_dir, Reference, FIXTURES};
use gptoss_models::{LogitsWanted, Model};

/// GPTOSS_WGPU_ADAPTER, or 0: the first (best) adapter.
fn adapter_index() -> usize {
    std::env::var("GPTOSS_WGPU_ADAPTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The adapter under test: GPTOSS_WGPU_ADAPTER or the first (best) one. Fails the test, with
/// the reason, when there is none.
fn gpu() -> Wgpu {
    Wgpu::open(adapter_index()).unwrap_or_else(|e| {
        panic!(
            "no usable wgpu adapter: {e}\n(install a Vulkan driver: apt-get install \
             mesa-vulkan-drivers libvulkan1; .ci/run does)"
        )
    })
}

#[test]
fn an_adapter_exists_and_the_probe_explains_its_score() {
    let list = adapters().expect("wgpu enumerates adapters");
    assert!(
        !list.is_empty(),
        "no wgpu adapter: install mesa-vulkan-drivers + libvulkan1 (.ci/run does)"
    );
    let report = Wgpu::probe_devices();
    assert_eq!(report.devices.len(), list.len());
    for d in &report.devices {
        assert!(!d.reason.is_empty(), "{d:?}");
        if d.name.contains("Cpu,") {
            // software adapter (lavapipe): never preferred to cpu unless opted in
            assert!(d.score <= 1 && d.reason.contains("software"), "{d:?}");
        } else {
            assert_eq!(d.score, gptoss_core::plugin::scoring::SCORE_WGPU, "{d:?}");
        }
        eprintln!("{} -> {} ({})", d.name, d.score, d.reason);
    }
    let be = gpu();
    assert_eq!(be.name(), "wgpu");
    eprintln!("testing on {}", be.device_name());
}

#[test]
fn a_missing_device_index_is_a_clear_error() {
    let n = adapters().expect("wgpu enumerates adapters").len();
    let e = Wgpu::create(&PluginOptions {
        device: n + 3,
        ..Default::default()
    })
    .err()
    .expect("no such device")
    .to_string();
    assert!(
        e.contains("does not exist") && e.contains(&format!("{n} adapter")),
        "{e}"
    );
}

// ---------------------------------------------------------------- helpers for op checks

// ---------------------------------------------------------------- per-op checks against the cpu backend

#[test]
fn op_embed_matches_cpu() {
    check_op_embed_matches_cpu(&mut gpu());
}

#[test]
fn op_rms_norm_matches_cpu() {
    check_op_rms_norm_matches_cpu(&mut gpu());
}

#[test]
fn op_linear_matches_cpu() {
    check_op_linear_matches_cpu(&mut gpu());
}

#[test]
fn op_rope_matches_cpu() {
    check_op_rope_matches_cpu(&mut gpu());
}

#[test]
fn op_attention_matches_cpu() {
    check_op_attention_matches_cpu(&mut gpu());
}

#[test]
fn op_topk_softmax_matches_cpu() {
    check_op_topk_softmax_matches_cpu(&mut gpu());
}

#[test]
fn op_moe_mxfp4_matches_cpu() {
    let mut be = gpu();
    eprintln!("{}: {:?}", be.device_name(), be.kernel_options());
    check_op_moe_mxfp4_matches_cpu(&mut be);
}

/// The row kernels (gemv, moe, rms_norm) with their workgroup-memory sum instead of subgroup shuffles
/// and the bit-by-bit MXFP4 decode instead of the f16 one, as on adapters without subgroups or
/// f16 subnormals (the other tests use the fast variants where the adapter has them).
#[test]
fn row_kernels_without_subgroups_match_cpu() {
    let adapter = adapters()
        .unwrap()
        .into_iter()
        .nth(adapter_index())
        .expect("an adapter");
    let off = KernelOptions {
        subgroups: false,
        fp4_f16: false,
    };
    let mut be = Wgpu::with_adapter_options(adapter, off).unwrap();
    let used = be.kernel_options();
    assert!(!used.subgroups && !used.fp4_f16, "{used:?}");
    check_op_linear_matches_cpu(&mut be);
    check_op_moe_mxfp4_matches_cpu(&mut be);
    check_op_rms_norm_matches_cpu(&mut be);
}

#[test]
fn op_add_last_row_argmax_match_cpu() {
    check_op_add_last_row_argmax_match_cpu(&mut gpu());
}

#[test]
fn weights_above_the_binding_limit_are_split_by_rows() {
    // 40 KiB per buffer: a [1000, 64] weight is stored as 4 parts of 320 rows (bf16) or 7 of
    // 160 rows (f32); outputs of up to 10 tokens stay in one buffer.
    let mut be = gpu().with_binding_limit(40 * 1024);
    assert_eq!(be.binding_limit(), 40 * 1024);
    let mut r = Rng(21);
    let (n, k) = (1000, 64);
    for wdt in [DType::BF16, DType::F32] {
        let w = float_tensor(wdt, &[n, k], &r.vec(n * k, 0.1));
        for t in [1usize, 3, 9] {
            let ins = [
                f32_t(&[t, k], &r.vec(t * k, 1.0)),
                w.clone(),
                float_tensor(DType::BF16, &[n], &r.vec(n, 1.0)),
            ];
            let (g, c) = both(
                &mut be,
                &Op::Linear,
                &ins,
                &[(TensorDesc::new(DType::F32, [t, n]), None)],
            );
            assert_close(
                &format!("split linear t{t} {wdt}"),
                &to_f32(&g[0]),
                &to_f32(&c[0]),
                1e-5,
            );
        }
        let ids: Vec<i32> = vec![0, 159, 160, 999, 319, 320];
        let (g, c) = both(
            &mut be,
            &Op::Embed,
            &[w.clone(), i32_t(&[6], &ids)],
            &[(TensorDesc::new(DType::F32, [6, k]), None)],
        );
        assert_eq!(to_f32(&g[0]), to_f32(&c[0]), "split embed {wdt}");
        // Upload/download round-trips through the parts.
        let b = be.alloc(&w.0).unwrap();
        be.upload(b, &w.1).unwrap();
        assert_eq!(be.download(b).unwrap(), w.1, "split round trip {wdt}");
        be.free(b).unwrap();
    }
    // An op that needs one binding names the limit instead of failing obscurely.
    let e = run_op(
        &mut be,
        &Op::RmsNorm { eps: 1e-5 },
        &[f32_t(&[12000, 1], &vec![1.0; 12000]), f32_t(&[1], &[1.0])],
        &[(TensorDesc::new(DType::F32, [12000, 1]), None)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_storage_buffer_binding_size"), "{e}");
}

#[test]
fn bad_input_is_an_error_and_the_backend_stays_usable() {
    let mut be = gpu();
    check_bad_input_is_an_error(&mut be);
    // Still usable, with the error word cleared.
    check_still_usable(&mut be);
}

fn load(name: &str) -> Model {
    Model::load(&fixture_dir(name), Box::new(gpu()), &mut |_, _| {}).expect("fixture loads")
}

#[test]
fn fixtures_prefill_matches_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        assert_eq!(model.backend_name(), "wgpu");
        check_fixture_prompts(&mut model, name, usize::MAX, "prefill");
    }
}

#[test]
fn fixtures_incremental_matches_transformers() {
    for name in FIXTURES {
        check_fixture_prompts(&mut load(name), name, 1, "incremental");
    }
}

#[test]
fn fixtures_chunked_prefill_and_last_row_match() {
    for name in FIXTURES {
        let mut model = load(name);
        let v = model.config.vocab_size;
        check_fixture_prompts(&mut model, name, 7, "chunked");
        let (prompt, _) = Reference::load(name).prompts().remove(0);
        let mut s2 = model.new_session(prompt.len()).unwrap();
        let last = model.forward(&mut s2, &prompt, LogitsWanted::Last).unwrap();
        let mut s3 = model.new_session(prompt.len()).unwrap();
        let all = model.forward(&mut s3, &prompt, LogitsWanted::All).unwrap();
        // Not bitwise: at T = 1 the lm_head runs the small-T GEMV (16-byte loads, another
        // summation order) while All over the prompt runs the general linear kernel; both are
        // f32 with f32 accumulation, so they agree to rounding, with the same argmax.
        let row = &all[all.len() - v..];
        let d = row
            .iter()
            .zip(&last)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d <= 1e-5,
            "{name}: Last vs last row of All: max abs diff {d}"
        );
        assert_eq!(
            gptoss_models::model::argmax(row),
            gptoss_models::model::argmax(&last),
            "{name}: argmax of Last = argmax of the last row of All"
        );
    }
}

#[test]
fn fixtures_greedy_tokens_match_transformers_and_cpu() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let want = r.tokens("greedy_tokens");
        let prompt = r.tokens("greedy_prompt");
        let got = load(name)
            .generate_greedy(&prompt, want.len(), &[], 0, &mut |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: greedy continuation vs transformers");
        let mut cpu = Model::load(
            &fixture_dir(name),
            Box::new(gptoss_backend_cpu::cpu_backend(0)),
            &mut |_, _| {},
        )
        .unwrap();
        let cpu_tokens = cpu
            .generate_greedy(&prompt, want.len(), &[], 0, &mut |_| {})
            .unwrap();
        assert_eq!(
            got, cpu_tokens,
            "{name}: greedy continuation vs the cpu backend"
        );
        eprintln!("{name} greedy: {} tokens equal", got.len());
    }
}

#[test]
fn batched_paged_steps_match_transformers() {
    // Several sequences per step over the paged KV pool (what `gptoss serve` runs).
    for name in FIXTURES {
        let mut model = load(name);
        gptoss_e2e::batch_check::check_batched_prompts(&mut model, name);
        gptoss_e2e::batch_check::check_batched_greedy(&mut model, name, 3);
    }
}

/// GPTOSS_WGPU_PROFILE's table: every dispatch timed where the adapter has timestamp queries
/// (skipped, saying so, where it has none).
#[test]
fn the_dispatch_profile_times_every_kernel() {
    let adapter = adapters()
        .unwrap()
        .into_iter()
        .nth(adapter_index())
        .expect("an adapter");
    let mut be = Wgpu::with_adapter_profiled(adapter).unwrap();
    if !be.profiling() {
        eprintln!(
            "skipped: {} has no timestamp queries (wgpu::Features::TIMESTAMP_QUERY)",
            be.device_name()
        );
        return;
    }
    // Results unchanged with one pass a dispatch.
    check_op_rms_norm_matches_cpu(&mut be);
    check_op_attention_matches_cpu(&mut be);
    let report = be.profile_report().unwrap();
    eprintln!("{report}");
    for want in [
        "rms_norm: rms_norm",
        "attention: attention",
        "kv_write: attention",
    ] {
        assert!(report.contains(want), "no '{want}' row in\n{report}");
    }
}

/// Decode-like attention over long caches: the keys split over workgroups and merged
/// (several splits, empty ones for early positions, windows across split edges), next to the
/// one-split path; q heads sharing kv heads in groups of 8, 4 and 1.
#[test]
fn long_context_attention_splits_match_cpu() {
    check_attention_cases(
        &mut gpu(),
        31,
        &[
            (64, 8, 64, 0, vec![2999], 3000),
            (64, 8, 64, 128, vec![2999], 3000),
            (8, 2, 64, 0, vec![0, 5, 700, 1500], 1600),
            (8, 2, 32, 100, vec![0, 99, 100, 1000], 1024),
            (16, 16, 16, 0, vec![1200], 1300),
            (4, 1, 128, 0, vec![63, 64, 65, 500], 520),
        ],
    );
}

/// Chunked prefill of several sequences over paged pools.
#[test]
fn paged_prefill_chunk_matches_cpu() {
    check_paged_prefill_chunk_matches_cpu(&mut gpu());
}

/// Paged attention over long page tables (split keys), rows of different sequences with
/// shuffled pages.
#[test]
fn long_context_paged_attention_matches_cpu() {
    let mut be = gpu();
    let mut r = Rng(32);
    let ps = 16usize;
    let np = 80; // pages per row: up to 1280 keys
    let pool_pages = 2 * np;
    // Row 0: sequence A at position 1100; row 1: sequence B at 37; row 2: A at 1279.
    let pos = vec![1100i32, 37, 1279];
    let a: Vec<i32> = (0..np as i32)
        .map(|i| (i * 7 + 3) % pool_pages as i32)
        .collect();
    let b: Vec<i32> = (0..np as i32)
        .map(|i| (i * 7 + 4) % pool_pages as i32)
        .collect();
    let pages: Vec<i32> = [a.clone(), b.clone(), a.clone()].concat();
    let slot = |tab: &[i32], p: i32| tab[p as usize / ps] * ps as i32 + p % ps as i32;
    let slots = vec![slot(&a, 1100), slot(&b, 37), slot(&a, 1279)];
    for window in [0u32, 128] {
        let case = PagedCase {
            shape: (64, 8, 64, ps),
            window,
            pos: &pos,
            pages: &pages,
            slots: &slots,
            pool_pages,
        };
        check_paged_case(&mut be, &mut r, &case, "paged attention");
    }
}
