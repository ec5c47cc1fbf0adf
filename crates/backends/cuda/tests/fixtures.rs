//! The CUDA backend (cuda-mxfp4 flavor, or the portable cuda-bf16 flavor with
//! `GPTOSS_CUDA_FLAVOR=portable`) against the CPU reference (every op, random inputs) and
//! against transformers (the committed tiny fixtures: prefill, incremental, chunked, greedy).
//!
//! The portable flavor targets compute_80 unless `GPTOSS_CUDA_PORTABLE_ARCH` says otherwise, so
//! on a Hopper GPU it runs sm_80 PTX (nothing Hopper-only) through the same tests.
//!
//! GPU tests are `#[ignore]`d with the reason, so CI (no GPU) lists them as ignored. On the GPU
//! machine run the test binary with `--ignored --test-threads=1` and `GPTOSS_FIXTURES=<dir>`
//! when it runs away from this checkout.
//!
//! Tolerances: the fixtures use `F32_LOGIT_TOLERANCE` (1e-4 max abs on logits), the same bound
//! as the CPU backend: this backend keeps bf16 weights bf16 on the GPU but widens each element
//! exactly to f32 and computes activations, accumulation and softmax in f32, so it differs from
//! transformers' f32 run only by summation order and the device's expf/cosf/sinf (a few ulp),
//! as the CPU backend does. Per-op checks against the CPU use a relative max-abs bound of 1e-5
//! (of the largest reference magnitude) and require integer outputs (ids, argmax, copied cache
//! rows) to be equal.
//!
//! bf16 paths (large T, `GPTOSS_CUDA_MMA_MIN_T`, default 16 tokens, pinned to 64 here): the tensor-core linear and
//! the grouped MoE GEMMs round activations to bf16 (8 significant bits, relative error <= 2^-9)
//! when staging them; weights are bf16 already (MXFP4 decodes to bf16 exactly) and
//! accumulation stays f32. A dot product of K terms then carries a relative error of about
//! 2^-9 / sqrt(3) per term, uncorrelated, so the output NMSE is ~1e-6 per rounded operand
//! (the MoE rounds twice: x, then the SwiGLU activations). The prefill attention (head_dim 64)
//! rounds q, k, v and the softmax probabilities to bf16 (attn_mma.cu) at the same threshold.
//! Per-op checks at T >= 64 use
//! `assert_close_bf16`: NMSE <= 1e-4 and max abs <= 3e-2 of the largest reference magnitude.
//! Under compute_70..79 (`GPTOSS_CUDA_PORTABLE_ARCH=compute_75`: Turing's f16 tensor cores;
//! `compute_70`: Volta's, mma m8n8k4) the same kernels round to f16 instead (11 significant
//! bits, relative error <= 2^-12; bf16 weights are exact in f16 within 2^-17..65504, MXFP4 is
//! exact after the scale split of mma.cu), so the same bounds hold with room to spare.
//! The tiny fixtures (T <= 56) run the f32 paths by default (same bounds as before); one test
//! forces the bf16 paths at every T (`GPTOSS_CUDA_MMA_MIN_T=1`) and requires equal argmax
//! wherever the reference is not a near-tie (its top logit within 6% of the largest logit of
//! ours: tiny-b flips at 3 such positions of 100), logits within the sanity bound
//! `BF16_LOGIT_TOLERANCE`, and reports how many greedy tokens agree. The exact f32 path stays available through
//! `GPTOSS_CUDA_MMA_MIN_T=0` or `GPTOSS_CUDA_NO_FUSION=1`.

use gptoss_core::graph::{Graph, Op, ValueId, ValueKind};
use gptoss_core::plugin::{PluginBackend, PluginOptions};
use gptoss_core::{Backend, BufferId, DType, ProbeReport, Result, TensorDesc};
use gptoss_cuda::{
    arch_for, compile_options, family, nvrtc::fnv64, CudaBf16, CudaMxfp4, ModuleOrigin, ATTN_MMA,
    MMA_BF16, MMA_F16, MMA_F16_SM70, MOE_SKINNY, MOE_V2_BK, MOE_V2_BM, MOE_V2_BN, MOE_V2_SMEM,
    MOE_V2_STAGES,
};
use gptoss_e2e::backend_check::*;
use gptoss_e2e::{check_fixture_prompts, fixture_dir, Reference, FIXTURES};
use gptoss_models::{LogitsWanted, Model};

/// GPTOSS_CUDA_FLAVOR=portable: the tests run the cuda-bf16 flavor (forced to compute_80 code
/// unless GPTOSS_CUDA_PORTABLE_ARCH is set); otherwise cuda-mxfp4.
fn portable() -> bool {
    std::env::var("GPTOSS_CUDA_FLAVOR").is_ok_and(|v| v == "portable")
}

/// The flavor under test.
enum AnyCuda {
    Mxfp4(CudaMxfp4),
    Portable(CudaBf16),
}

macro_rules! each {
    ($s:expr, $b:ident => $e:expr) => {
        match $s {
            AnyCuda::Mxfp4($b) => $e,
            AnyCuda::Portable($b) => $e,
        }
    };
}

impl AnyCuda {
    fn create(options: &PluginOptions) -> Result<AnyCuda> {
        if portable() {
            if std::env::var_os("GPTOSS_CUDA_PORTABLE_ARCH").is_none() {
                std::env::set_var("GPTOSS_CUDA_PORTABLE_ARCH", "compute_80");
            }
            CudaBf16::create(options).map(AnyCuda::Portable)
        } else {
            CudaMxfp4::create(options).map(AnyCuda::Mxfp4)
        }
    }
    fn name() -> &'static str {
        if portable() {
            "cuda-bf16"
        } else {
            "cuda-mxfp4"
        }
    }
    fn device_name(&self) -> String {
        each!(self, b => b.device_name())
    }
    fn arch(&self) -> &str {
        each!(self, b => b.arch())
    }
    fn module_origins(&self) -> &[ModuleOrigin] {
        each!(self, b => b.module_origins())
    }
    fn dequantized_experts(&self) -> usize {
        each!(self, b => b.dequantized_experts())
    }
    fn router_spread_runs(&self) -> u64 {
        each!(self, b => b.router_spread_runs())
    }
    fn early_launches(&self) -> bool {
        each!(self, b => b.early_launches())
    }
    fn add_norm_router_runs(&self) -> u64 {
        each!(self, b => b.add_norm_router_runs())
    }
    fn rope_attention_runs(&self) -> u64 {
        each!(self, b => b.rope_attention_runs())
    }
    fn skinny_moe_runs(&self) -> u64 {
        each!(self, b => b.skinny_moe_runs())
    }
    fn moe_pair_runs(&self) -> u64 {
        each!(self, b => b.moe_pair_runs())
    }
    fn topk_in_moe_runs(&self) -> u64 {
        each!(self, b => b.topk_in_moe_runs())
    }
    fn attention_mma_runs(&self) -> u64 {
        each!(self, b => b.attention_mma_runs())
    }
    fn attention_gqa_runs(&self) -> u64 {
        each!(self, b => b.attention_gqa_runs())
    }
    fn moe_v2_runs(&self) -> u64 {
        each!(self, b => b.moe_v2_runs())
    }
    fn set_moe_mma_v1(&mut self, on: bool) {
        each!(self, b => b.set_moe_mma_v1(on))
    }
    fn cublas(&self) -> Result<String> {
        each!(self, b => b.cublas())
    }
}

impl Backend for AnyCuda {
    fn name(&self) -> &str {
        each!(self, b => b.name())
    }
    fn probe(&self) -> ProbeReport {
        each!(self, b => b.probe())
    }
    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        each!(self, b => b.alloc(desc))
    }
    fn free(&mut self, id: BufferId) -> Result<()> {
        each!(self, b => b.free(id))
    }
    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
        each!(self, b => b.upload(id, data))
    }
    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        each!(self, b => b.download(id))
    }
    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
        each!(self, b => b.load_weight(name, desc, data))
    }
    fn execute(&mut self, graph: &Graph) -> Result<()> {
        each!(self, b => b.execute(graph))
    }
    fn decode_chain(
        &mut self,
        graph: &Graph,
        io: gptoss_core::DecodeChain,
        steps: usize,
    ) -> Result<Vec<u32>> {
        each!(self, b => b.decode_chain(graph, io, steps))
    }
}

fn gpu() -> AnyCuda {
    exact_paths_for_fixtures();
    let a = AnyCuda::create(&PluginOptions::default()).expect("the CUDA backend on device 0");
    if portable() {
        assert!(a.arch().starts_with("compute_"), "{}", a.arch());
    }
    a
}

/// The fixtures (up to 56 tokens) and the per-op checks compare f32 paths against f32
/// references: keep the bf16 tensor-core paths (default from 16 tokens) for 64 tokens and up
/// unless a test asks otherwise (see the module comment).
fn exact_paths_for_fixtures() {
    if std::env::var_os("GPTOSS_CUDA_MMA_MIN_T").is_none() {
        std::env::set_var("GPTOSS_CUDA_MMA_MIN_T", "64");
    }
    // Below 64 tokens the MoE would take the one-pair tensor-core kernels (f16 activations).
    if std::env::var_os("GPTOSS_CUDA_PAIR_MOE").is_none() {
        std::env::set_var("GPTOSS_CUDA_PAIR_MOE", "0");
    }
}

/// `gpu()` created with the variables `vars` set (they are read when the backend is created;
/// the GPU tests run one at a time), removed again right after.
fn gpu_with_env(vars: &[(&str, &str)]) -> AnyCuda {
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let be = gpu();
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    be
}

fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

// ---------------------------------------------------------------- tests that run everywhere

#[test]
fn probe_never_panics_and_explains_its_score() {
    let report = if portable() {
        CudaBf16::probe_devices()
    } else {
        CudaMxfp4::probe_devices()
    };
    assert!(
        !report.devices.is_empty(),
        "probe must report at least one entry"
    );
    for d in &report.devices {
        assert!(!d.reason.is_empty(), "{d:?} has no reason");
    }
    if !driver_present() && std::env::var_os(gptoss_gpu_detect::FAKE_ENV).is_none() {
        assert_eq!(report.devices.len(), 1);
        let d = &report.devices[0];
        assert_eq!(d.score, 0);
        assert!(
            d.reason.contains("no NVIDIA driver") && d.reason.contains("libcuda.so.1"),
            "{}",
            d.reason
        );
    } else {
        for d in &report.devices {
            let sm90 = d.compute_capability.is_some_and(|cc| cc >= (9, 0));
            let sm70 = d.compute_capability.is_some_and(|cc| cc >= (7, 0));
            if portable() {
                assert_eq!(
                    d.score,
                    if sm90 {
                        50
                    } else if sm70 {
                        90
                    } else {
                        0
                    },
                    "{d:?}"
                );
            } else {
                assert_eq!(d.score, if sm90 { 100 } else { 0 }, "{d:?}");
                if !sm90 && d.compute_capability.is_some() {
                    assert!(d.reason.contains("needs sm_90+"), "{}", d.reason);
                }
            }
        }
    }
}

#[test]
fn create_without_a_driver_is_a_clear_error() {
    let r = AnyCuda::create(&PluginOptions::default());
    if driver_present() {
        // On a GPU machine the same call must succeed (sm_90+, portable: sm_70+) or say why not.
        if let Err(e) = r {
            let needs = if portable() { "sm_70" } else { "sm_90" };
            assert!(e.to_string().contains(needs), "{e}");
        }
    } else {
        let e = r
            .err()
            .expect("create must fail without a driver")
            .to_string();
        assert!(
            e.contains("libcuda.so.1") && e.contains(AnyCuda::name()),
            "{e}"
        );
    }
}

#[test]
fn arch_targets_and_cache_keys() {
    assert_eq!(arch_for((9, 0)), "sm_90a");
    assert_eq!(arch_for((10, 0)), "sm_100a");
    assert_eq!(arch_for((12, 0)), "sm_120a");
    assert_eq!(arch_for((8, 6)), "sm_86");
    assert_eq!(gptoss_cuda::portable_arch_for((8, 6)), "compute_86");
    assert_eq!(gptoss_cuda::portable_arch_for((7, 0)), "compute_70");
    // One tensor-core family a target: bf16 operands from sm_80, f16 on Turing (m16n8k8), f16
    // on Volta (m8n8k4).
    assert_eq!(gptoss_cuda::portable_skip((8, 0)), &[MMA_F16, MMA_F16_SM70]);
    assert_eq!(gptoss_cuda::portable_skip((8, 9)), &[MMA_F16, MMA_F16_SM70]);
    // The few-pairs MoE (m16n8k16 .f16, cp.async) and the bf16 attention (attn_mma.cu) need
    // sm_80 too.
    assert_eq!(
        gptoss_cuda::portable_skip((7, 5)),
        &[MMA_BF16, MMA_F16_SM70, MOE_SKINNY, ATTN_MMA]
    );
    assert_eq!(
        gptoss_cuda::portable_skip((7, 0)),
        &[MMA_BF16, MMA_F16, MOE_SKINNY, ATTN_MMA]
    );
    assert_eq!(
        gptoss_cuda::portable_skip((7, 2)),
        &[MMA_BF16, MMA_F16, MOE_SKINNY, ATTN_MMA]
    );
    // Exactly one tensor-core family is left in for every portable target.
    for cc in [(7, 0), (7, 2), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0)] {
        let kept: Vec<&str> = [MMA_BF16, MMA_F16, MMA_F16_SM70]
            .into_iter()
            .filter(|f| !gptoss_cuda::portable_skip(cc).contains(f))
            .collect();
        assert_eq!(kept.len(), 1, "{cc:?}: {kept:?}");
    }
    // FNV-1a must not change between builds: cached kernels are found by it.
    assert_eq!(fnv64(&[b"abc"]), fnv64(&[b"abc"]));
    assert_ne!(fnv64(&[b"ab", b"c"]), fnv64(&[b"a", b"bc"]));
    assert_eq!(fnv64(&[]), 0xcbf29ce484222325);
}

#[test]
fn the_f16_tensor_core_family_is_mma_cu_built_with_f16_operands() {
    let f16 = family(MMA_F16).expect("the f16 family");
    let bf16 = family(MMA_BF16).expect("the bf16 family");
    assert_eq!(f16.source, bf16.source, "one source, two operand types");
    let opts = compile_options("compute_75", f16);
    assert!(opts.contains(&"-DMMA_F16".to_string()), "{opts:?}");
    assert!(
        opts.contains(&"--gpu-architecture=compute_75".to_string()),
        "{opts:?}"
    );
    let opts = compile_options("compute_80", bf16);
    assert!(!opts.iter().any(|o| o.contains("MMA_F16")), "{opts:?}");
    // The ops look kernels up by name: the f16 build offers the bf16 family's large-T kernels
    // under the same names, but none of --dequantize's bf16-only ones.
    for name in [
        "gemm_bf16",
        "moe_route",
        "moe_gate_up_mma128",
        "moe_down_mma128",
    ] {
        assert!(
            f16.functions.contains(&name) && bf16.functions.contains(&name),
            "{name}"
        );
    }
    for name in ["moe_dequant_bf16", "f32_to_bf16", "moe_gate_up_mma_bf16"] {
        assert!(!f16.functions.contains(&name), "{name}");
    }
}

#[test]
fn nvrtc_13_refusing_volta_names_the_way_out() {
    // NVRTC 13 answers "invalid value for --gpu-architecture" for compute_70: the error adds
    // what to do; other targets and NVRTC 12 add nothing.
    let hint = gptoss_cuda::nvrtc_target_hint("compute_70", (13, 0));
    assert!(
        hint.contains("GPTOSS_NVRTC") && hint.contains("libnvrtc.so.12"),
        "{hint}"
    );
    assert!(gptoss_cuda::nvrtc_target_hint("compute_72", (13, 2)).contains("compute_72"));
    assert_eq!(gptoss_cuda::nvrtc_target_hint("compute_70", (12, 9)), "");
    assert_eq!(gptoss_cuda::nvrtc_target_hint("compute_75", (13, 0)), "");
    assert_eq!(gptoss_cuda::nvrtc_target_hint("sm_90a", (13, 0)), "");
}

#[test]
fn the_volta_family_is_the_f16_build_with_m8n8k4() {
    let f16 = family(MMA_F16).expect("the f16 family");
    let volta = family(MMA_F16_SM70).expect("the Volta f16 family");
    assert_eq!(volta.source, f16.source, "one source");
    assert_eq!(
        volta.functions, f16.functions,
        "the same kernels under the same names"
    );
    let opts = compile_options("compute_70", volta);
    for want in ["-DMMA_F16", "-DMMA_SM70", "--gpu-architecture=compute_70"] {
        assert!(opts.contains(&want.to_string()), "{want}: {opts:?}");
    }
    for other in [f16, family(MMA_BF16).unwrap()] {
        let opts = compile_options("compute_75", other);
        assert!(!opts.iter().any(|o| o.contains("MMA_SM70")), "{opts:?}");
    }
    // Its inner step is Volta's mma (sm_70+), and none of the PTX it compiles needs sm_75
    // (ldmatrix, m16n8k8) or sm_80 (bf16); the other builds do not see the m8n8k4 step.
    let volta_ptx = active_asm(volta.source, &["MMA_F16", "MMA_SM70"]);
    assert!(volta_ptx.contains("mma.sync.aligned.m8n8k4.row.col.f32.f16.f16.f32"));
    for newer in ["ldmatrix", "m16n8k8", "m16n8k16", "bf16"] {
        assert!(!volta_ptx.contains(newer), "{newer} in the Volta build");
    }
    let turing_ptx = active_asm(volta.source, &["MMA_F16"]);
    assert!(turing_ptx.contains("m16n8k8") && !turing_ptx.contains("m8n8k4"));
    let ampere_ptx = active_asm(volta.source, &[]);
    assert!(ampere_ptx.contains("m16n8k16") && !ampere_ptx.contains("m8n8k4"));
}

#[test]
fn the_prefill_moe_tile_constants_match_mma_cu() {
    // ops.rs sizes the grid, the route's tiles and the dynamic shared memory from these.
    let src = family(MMA_BF16).unwrap().source;
    let define = |name: &str| -> String {
        let line = src
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("#define {name} in mma.cu"));
        line[8 + name.len() + 1..].trim().to_string()
    };
    for (name, want) in [
        ("V2_BM", MOE_V2_BM),
        ("V2_BN", MOE_V2_BN),
        ("V2_BK", MOE_V2_BK),
        ("V2_STAGES", MOE_V2_STAGES),
    ] {
        assert_eq!(define(name), want.to_string(), "{name}");
    }
    assert_eq!(define("V2_LD"), "(V2_BK + 8)");
    assert_eq!(define("V2_MT"), (MOE_V2_BM / 32).to_string(), "2 x 4 warps");
    assert_eq!(define("V2_NT"), (MOE_V2_BN / 32).to_string(), "2 x 4 warps");
    assert_eq!(define("V2_B_BYTES"), "(V2_BN * V2_BK / 2)");
    assert_eq!(define("V2_S_BYTES"), "(V2_BN * 4)");
    assert_eq!(
        define("V2_SMEM"),
        "(V2_STAGES * V2_STAGE_BYTES + 2 * V2_DEC_BYTES)"
    );
    // 4 x (128 x 72 x 2 + 192 x 32 + 192 x 4) + 2 x 192 x 72 x 2.
    assert_eq!(MOE_V2_SMEM, 156_672);
}

/// The lines of `src` holding inline PTX (`asm` statements and their string continuations)
/// that the preprocessor keeps with `defined` set: `#ifdef`/`#ifndef`/`#else`/`#endif` are
/// followed; any other `#if` counts as true.
fn active_asm(src: &str, defined: &[&str]) -> String {
    let mut stack: Vec<bool> = Vec::new();
    let mut out = String::new();
    for line in src.lines() {
        let l = line.trim_start();
        if let Some(name) = l.strip_prefix("#ifdef ") {
            stack.push(defined.contains(&name.trim()));
        } else if let Some(name) = l.strip_prefix("#ifndef ") {
            stack.push(!defined.contains(&name.trim()));
        } else if l.starts_with("#if") {
            stack.push(true);
        } else if l.starts_with("#else") {
            let top = stack.last_mut().expect("#else without #if");
            *top = !*top;
        } else if l.starts_with("#endif") {
            stack.pop().expect("#endif without #if");
        } else if stack.iter().all(|&on| on) && (l.contains("asm") || l.starts_with('"')) {
            out.push_str(l);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unbalanced #if");
    out
}

/// The compute capability a kernel target is for, as digits: "compute_75" -> 75, "sm_90a" ->
/// 90.
fn target_cc(arch: &str) -> u32 {
    let digits: String = arch.chars().filter(|c| c.is_ascii_digit()).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no capability in {arch}"))
}

// ---------------------------------------------------------------- helpers for op checks

/// The bound for paths with bf16 operands (see the module comment).
fn assert_close_bf16(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close_within(&format!("{what} (bf16 operands)"), gpu, cpu, 3e-2, 1e-4);
}

// ---------------------------------------------------------------- per-op checks on the GPU

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_embed_matches_cpu() {
    check_op_embed_matches_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_rms_norm_matches_cpu() {
    check_op_rms_norm_matches_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_linear_matches_cpu() {
    check_op_linear_matches_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_rope_matches_cpu() {
    check_op_rope_matches_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_attention_matches_cpu() {
    check_op_attention_matches_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_topk_softmax_matches_cpu() {
    check_op_topk_softmax_matches_cpu(&mut gpu());
}

/// Chunked prefill over paged pools: tiles of one sequence on the tiled kernel, the rest on the
/// per-row one.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_paged_prefill_chunk_matches_cpu() {
    // The decode rows of the step run on the GQA-shared kernel, then (the second backend) on
    // the per-(row, head) one.
    let mut be = gpu_f32_attention();
    check_paged_prefill_chunk_matches_cpu(&mut be);
    assert_eq!(be.attention_mma_runs(), 0, "GPTOSS_CUDA_ATTN_F32=1");
    assert!(
        be.attention_gqa_runs() > 0,
        "decode rows on attention_paged_gqa"
    );
    let mut be = gpu_with_env(&[
        ("GPTOSS_CUDA_ATTN_F32", "1"),
        ("GPTOSS_CUDA_NO_GQA_DECODE", "1"),
    ]);
    check_paged_prefill_chunk_matches_cpu(&mut be);
    assert_eq!(be.attention_gqa_runs(), 0, "GPTOSS_CUDA_NO_GQA_DECODE=1");
}

/// One decode token on the split attention kernel, which writes the k/v cache row itself: a
/// position past the cache is still an error naming both, and the backend stays usable.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn one_token_attention_reports_a_position_beyond_the_cache() {
    let mut be = gpu();
    check_position_beyond_the_cache(&mut be, (8, 2, 64));
    check_still_usable(&mut be);
}

/// Rope(q), Rope(k), Attention of one token as a graph (the rotated q and k temporaries), on
/// `be`: returns the attention output and both caches after the step.
fn rope_attention_graph(
    be: &mut dyn Backend,
    ins: &[(TensorDesc, Vec<u8>)],
    caches: &[Vec<u8>; 2],
    (nq, nkv, window): (u32, u32, u32),
) -> gptoss_core::Result<Vec<Vec<u8>>> {
    let d = 64u32;
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let ids = bind_inputs(be, &mut g, ins, &mut bufs)?;
    let (q, k, v, sinks, pos) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    let rope = |heads| Op::Rope {
        params: gpt_oss_rope(),
        heads,
    };
    let qr = g.add_value("q_rot", ins[0].0.clone(), ValueKind::Temp);
    let kr = g.add_value("k_rot", ins[1].0.clone(), ValueKind::Temp);
    let o_desc = ins[0].0.clone();
    let ob = be.alloc(&o_desc)?;
    bufs.push(ob);
    let o = g.add_value("o", o_desc, ValueKind::Output(ob));
    let cache_desc = TensorDesc::new(
        DType::F32,
        [
            caches[0].len() / (4 * 64 * nkv as usize),
            (nkv * d) as usize,
        ],
    );
    let mut cache_ids = Vec::new();
    for (i, c) in caches.iter().enumerate() {
        let b = be.alloc(&cache_desc)?;
        be.upload(b, c)?;
        bufs.push(b);
        cache_ids.push(g.add_value(format!("cache{i}"), cache_desc.clone(), ValueKind::State(b)));
    }
    g.push(rope(nq), vec![q, pos], vec![qr]);
    g.push(rope(nkv), vec![k, pos], vec![kr]);
    g.push(
        Op::Attention {
            heads: nq,
            kv_heads: nkv,
            head_dim: d,
            window,
            scale: 0.125,
        },
        vec![qr, kr, v, sinks, pos],
        vec![o, cache_ids[0], cache_ids[1]],
    );
    let r = be.execute(&g);
    let mut got = Vec::new();
    if r.is_ok() {
        for b in &bufs[5..] {
            got.push(be.download(*b)?);
        }
    }
    for b in bufs {
        be.free(b)?;
    }
    r.map(|_| got)
}

/// One decode token's RoPE inside the split attention (no RoPE launch, the rotated k written
/// to the cache by the attention) against the cpu's separate Rope and Attention; a negative
/// position is still the RoPE error.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn rope_inside_one_token_attention_matches_cpu() {
    let mut be = gpu();
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let mut r = Rng(27);
    let before = be.rope_attention_runs();
    for (nq, nkv, window, p, cap) in [
        (64u32, 8u32, 0u32, 300i32, 512usize),
        (64, 8, 128, 511, 512),
        (8, 2, 0, 0, 16),
    ] {
        let ins = attention_inputs(&mut r, (nq, nkv, 64), &[p]);
        let caches = [0, 1].map(|_| f32_bytes(&r.vec(cap * (nkv * 64) as usize, 1.0)));
        let g = rope_attention_graph(&mut be, &ins, &caches, (nq, nkv, window)).unwrap();
        let c = rope_attention_graph(&mut cpu, &ins, &caches, (nq, nkv, window)).unwrap();
        let what = format!("rope + attention nq{nq} nkv{nkv} window {window} position {p}");
        assert_close(&what, &to_f32(&g[0]), &to_f32(&c[0]), 1e-5);
        assert_close(
            &format!("{what}: k cache"),
            &to_f32(&g[1]),
            &to_f32(&c[1]),
            1e-6,
        );
        assert_eq!(g[2], c[2], "{what}: v cache");
    }
    assert!(
        be.rope_attention_runs() > before,
        "the RoPE ran as its own launch, not inside the attention"
    );
    let ins = attention_inputs(&mut r, (8, 2, 64), &[-1]);
    let caches = [0, 1].map(|_| f32_bytes(&r.vec(16 * 128, 1.0)));
    let e = rope_attention_graph(&mut be, &ins, &caches, (8, 2, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope: negative position -1"), "{e}");
    check_still_usable(&mut be);
}

/// Router Linear (bf16 weights, bias) then TopKSoftmax as one graph, the logits a temporary:
/// returns (ids, weights) after `runs` executes of the same graph.
fn router_graph(
    be: &mut dyn Backend,
    x: &(TensorDesc, Vec<u8>),
    w: &(TensorDesc, Vec<u8>),
    b: &(TensorDesc, Vec<u8>),
    k: usize,
    runs: usize,
) -> (Vec<i32>, Vec<f32>) {
    let (t, e) = (x.0.shape.dims()[0], w.0.shape.dims()[0]);
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let ins = bind_inputs(be, &mut g, [x, w, b], &mut bufs).unwrap();
    let logits = g.add_value(
        "logits",
        TensorDesc::new(DType::F32, [t, e]),
        ValueKind::Temp,
    );
    let outs: Vec<_> = [DType::I32, DType::F32]
        .into_iter()
        .map(|dt| {
            let d = TensorDesc::new(dt, [t, k]);
            let id = be.alloc(&d).unwrap();
            bufs.push(id);
            g.add_value(format!("out{dt:?}"), d, ValueKind::Output(id))
        })
        .collect();
    g.push(Op::Linear, ins, vec![logits]);
    g.push(Op::TopKSoftmax { k: k as u32 }, vec![logits], outs);
    let mut got = (Vec::new(), Vec::new());
    for run in 0..runs {
        let out_ids = &bufs[3..];
        for id in out_ids {
            be.upload(*id, &vec![0xFF; t * k * 4]).unwrap();
        }
        be.execute(&g)
            .unwrap_or_else(|e| panic!("router run {run}: {e}"));
        let ids = to_i32(&be.download(out_ids[0]).unwrap());
        let wts = to_f32(&be.download(out_ids[1]).unwrap());
        if run > 0 {
            assert_eq!(
                (&ids, &wts),
                (&got.0, &got.1),
                "run {run} differs from run 0"
            );
        }
        got = (ids, wts);
    }
    for id in bufs {
        be.free(id).unwrap();
    }
    got
}

/// The fused router (a block per expert, the last block of a token picking its top-k) against
/// the CPU, run several times over (its per-token counters must reset), gpt-oss's shapes.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fused_router_topk_matches_cpu() {
    let mut be = gpu();
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let mut r = Rng(23);
    let before = be.router_spread_runs();
    for (t, h, e, k, bdt) in [
        (1, 2880, 32, 4, DType::BF16),
        (5, 2880, 128, 4, DType::F32),
        (63, 256, 8, 2, DType::BF16),
    ] {
        let x = f32_t(&[t, h], &r.vec(t * h, 1.0));
        let w = float_tensor(DType::BF16, &[e, h], &r.vec(e * h, 0.05));
        let b = float_tensor(bdt, &[e], &r.vec(e, 0.1));
        let (gi, gw) = router_graph(&mut be, &x, &w, &b, k, 3);
        let (ci, cw) = router_graph(&mut cpu, &x, &w, &b, k, 1);
        assert_eq!(gi, ci, "t {t}, top-{k} of {e}: ids");
        assert_close(&format!("t {t}, top-{k} of {e}: weights"), &gw, &cw, 1e-5);
    }
    assert!(
        be.router_spread_runs() > before,
        "the router ran without router_topk_spread"
    );
}

/// Add, RmsNorm of the sum, the router Linear of the normed row and TopKSoftmax as one graph
/// (the decode layer's run between attention and MoE): returns the sum, the normed row, the
/// ids and the weights.
/// A decode layer's residual add, RMSNorm, router linear and top-k (inputs `v`: a, b, the norm
/// weight, the router's weight and bias) into the values `[sum, normed, logits, ids, wts]`.
fn push_add_norm_router(g: &mut Graph, v: &[ValueId], out: [ValueId; 5], k: usize) {
    let [sum, normed, logits, ids, wts] = out;
    g.push(Op::Add, vec![v[0], v[1]], vec![sum]);
    g.push(Op::RmsNorm { eps: 1e-5 }, vec![sum, v[2]], vec![normed]);
    g.push(Op::Linear, vec![normed, v[3], v[4]], vec![logits]);
    g.push(
        Op::TopKSoftmax { k: k as u32 },
        vec![logits],
        vec![ids, wts],
    );
}

fn add_norm_router_graph(
    be: &mut dyn Backend,
    ins: [&(TensorDesc, Vec<u8>); 5],
    k: usize,
) -> (Vec<f32>, Vec<f32>, Vec<i32>, Vec<f32>) {
    let [a, _, _, w, _] = ins;
    let (t, h, e) = (
        a.0.shape.dims()[0],
        a.0.shape.dims()[1],
        w.0.shape.dims()[0],
    );
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let v = bind_inputs(be, &mut g, ins, &mut bufs).unwrap();
    let mut output = |g: &mut Graph, name: &str, d: TensorDesc| {
        let id = be.alloc(&d).unwrap();
        be.upload(id, &vec![0xFF; d.byte_size()]).unwrap();
        bufs.push(id);
        (id, g.add_value(name, d, ValueKind::Output(id)))
    };
    let (sum_b, sum) = output(&mut g, "sum", TensorDesc::new(DType::F32, [t, h]));
    let (norm_b, normed) = output(&mut g, "normed", TensorDesc::new(DType::F32, [t, h]));
    let (ids_b, ids) = output(&mut g, "ids", TensorDesc::new(DType::I32, [t, k]));
    let (wts_b, wts) = output(&mut g, "wts", TensorDesc::new(DType::F32, [t, k]));
    let logits = g.add_value(
        "logits",
        TensorDesc::new(DType::F32, [t, e]),
        ValueKind::Temp,
    );
    push_add_norm_router(&mut g, &v, [sum, normed, logits, ids, wts], k);
    be.execute(&g).unwrap();
    let got = (
        to_f32(&be.download(sum_b).unwrap()),
        to_f32(&be.download(norm_b).unwrap()),
        to_i32(&be.download(ids_b).unwrap()),
        to_f32(&be.download(wts_b).unwrap()),
    );
    for id in bufs {
        be.free(id).unwrap();
    }
    got
}

/// The residual add and RMSNorm inside the spread router's blocks (add_norm_router_spread):
/// the sum, the normed row, the ids and weights against the CPU, gpt-oss's shapes and a small
/// one, each twice (the per-token counters reset).
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fused_add_norm_router_matches_cpu() {
    let mut be = gpu();
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let mut r = Rng(29);
    let before = be.add_norm_router_runs();
    for (t, h, e, k) in [(1, 2880, 32, 4), (1, 2880, 128, 4), (3, 256, 8, 2)] {
        let a = f32_t(&[t, h], &r.vec(t * h, 4.0));
        let b = f32_t(&[t, h], &r.vec(t * h, 1.0));
        let nw = float_tensor(DType::BF16, &[h], &r.vec(h, 1.0));
        let w = float_tensor(DType::BF16, &[e, h], &r.vec(e * h, 0.05));
        let bias = float_tensor(DType::BF16, &[e], &r.vec(e, 0.1));
        let ins = [&a, &b, &nw, &w, &bias];
        let c = add_norm_router_graph(&mut cpu, ins, k);
        for run in 0..2 {
            let g = add_norm_router_graph(&mut be, ins, k);
            let what = format!("t {t} h {h}, top-{k} of {e}, run {run}");
            assert_close(&format!("{what}: sum"), &g.0, &c.0, 1e-6);
            assert_close(&format!("{what}: normed"), &g.1, &c.1, 1e-5);
            assert_eq!(g.2, c.2, "{what}: ids");
            assert_close(&format!("{what}: weights"), &g.3, &c.3, 1e-5);
        }
    }
    assert_eq!(
        be.add_norm_router_runs() - before,
        6,
        "the add and norm ran apart from the router"
    );
}

/// One token's add, RMSNorm, router, top-k and MoE as a decode layer has them (the ids and
/// weights temporaries read by the MoE alone), then the next layer's residual add, RMSNorm and
/// a linear (the MoE's combine inside its GEMV): the residual sum and the linear's output.
/// `ins`: a, b, the norm weight, the router's weight and bias, the MoE's six expert tensors
/// (moe_inputs' order from its fourth), the second norm weight and the linear's weight.
fn router_moe_graph(
    be: &mut dyn Backend,
    ins: &[(TensorDesc, Vec<u8>)],
    k: usize,
) -> Vec<Vec<f32>> {
    let (h, e, n) = (
        ins[0].0.shape.dims()[1],
        ins[3].0.shape.dims()[0],
        ins[12].0.shape.dims()[0],
    );
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let v = bind_inputs(be, &mut g, ins, &mut bufs).unwrap();
    let mut output = |g: &mut Graph, name: &str, cols: usize| {
        let d = TensorDesc::new(DType::F32, [1, cols]);
        let id = be.alloc(&d).unwrap();
        be.upload(id, &vec![0xFF; d.byte_size()]).unwrap();
        bufs.push(id);
        (id, g.add_value(name, d, ValueKind::Output(id)))
    };
    let (sum2_b, sum2) = output(&mut g, "sum2", h);
    let (out_b, out) = output(&mut g, "out", n);
    let temp = |g: &mut Graph, name: &str, dt: DType, cols: usize| {
        g.add_value(name, TensorDesc::new(dt, [1, cols]), ValueKind::Temp)
    };
    let sum = temp(&mut g, "sum", DType::F32, h);
    let normed = temp(&mut g, "normed", DType::F32, h);
    let logits = temp(&mut g, "logits", DType::F32, e);
    let ids = temp(&mut g, "ids", DType::I32, k);
    let wts = temp(&mut g, "wts", DType::F32, k);
    let m = temp(&mut g, "m", DType::F32, h);
    let normed2 = temp(&mut g, "normed2", DType::F32, h);
    push_add_norm_router(&mut g, &v, [sum, normed, logits, ids, wts], k);
    let mut moe_ins = vec![normed, ids, wts];
    moe_ins.extend(&v[5..11]);
    g.push(MOE_OP, moe_ins, vec![m]);
    g.push(Op::Add, vec![sum, m], vec![sum2]);
    g.push(Op::RmsNorm { eps: 1e-5 }, vec![sum2, v[11]], vec![normed2]);
    g.push(Op::Linear, vec![normed2, v[12]], vec![out]);
    be.execute(&g).unwrap();
    let got = vec![
        to_f32(&be.download(sum2_b).unwrap()),
        to_f32(&be.download(out_b).unwrap()),
    ];
    for id in bufs {
        be.free(id).unwrap();
    }
    got
}

/// A one-token router whose MoE takes the top-k from its logits (`add_norm_router_logits`,
/// moe_t1 picking its pair's expert, the next GEMV's combine forming the top-k before its
/// wait): the residual sum and the next linear's output equal, bit for bit, to the spread
/// router's (GPTOSS_CUDA_TOPK_IN_MOE=0) whatever experts a router block forms
/// (GPTOSS_CUDA_ROUTER_EPB), and within the bf16 bound of the CPU's; on the f32 per-pair MoE
/// kernels (GPTOSS_CUDA_PAIR_MOE=0) the top-k runs as a kernel of its own, within 1e-5.
/// (hidden, intermediate, experts, k): gpt-oss-120b's router (128 experts) and 20b's (32) over
/// a shorter intermediate, experts not a multiple of 32, and a small one.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn router_topk_inside_the_moe_matches_the_router() {
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let mut r = Rng(41);
    for (h, i, e, k) in [
        (256, 256, 128, 4),
        (2880, 256, 32, 4),
        (512, 256, 100, 4),
        (64, 96, 4, 2),
    ] {
        let n = 96;
        let mut ins = vec![
            f32_t(&[1, h], &r.vec(h, 4.0)),
            f32_t(&[1, h], &r.vec(h, 1.0)),
            float_tensor(DType::BF16, &[h], &r.vec(h, 1.0)),
            float_tensor(DType::BF16, &[e, h], &r.vec(e * h, 0.05)),
            float_tensor(DType::BF16, &[e], &r.vec(e, 0.1)),
        ];
        ins.extend(
            moe_inputs(&mut r, (1, h, i, e, k), false)
                .into_iter()
                .skip(3),
        );
        ins.push(float_tensor(DType::BF16, &[h], &r.vec(h, 1.0)));
        ins.push(float_tensor(DType::BF16, &[n, h], &r.vec(n * h, 0.05)));
        let what = format!("h {h} i {i}, top-{k} of {e}");
        let want = router_moe_graph(&mut cpu, &ins, k);
        let mut outs = Vec::new();
        for vars in [
            &[("GPTOSS_CUDA_TOPK_IN_MOE", "0")][..],
            &[],
            &[("GPTOSS_CUDA_ROUTER_EPB", "1")],
            &[("GPTOSS_CUDA_ROUTER_EPB", "8")],
        ] {
            let mut be = gpu_with_env(&[&[("GPTOSS_CUDA_PAIR_MOE", "rows")][..], vars].concat());
            let inside = target_cc(be.arch()) >= 80 && vars.first().map(|v| v.1) != Some("0");
            let before = be.topk_in_moe_runs();
            let got = router_moe_graph(&mut be, &ins, k);
            let ran = be.topk_in_moe_runs() - before;
            assert_eq!(
                ran,
                u64::from(inside),
                "{what} {vars:?}: top-k inside the MoE"
            );
            assert_close_bf16(&format!("{what} {vars:?}: sum"), &got[0], &want[0]);
            assert_close_bf16(&format!("{what} {vars:?}: out"), &got[1], &want[1]);
            outs.push((vars, got));
        }
        for (vars, got) in &outs[1..] {
            assert!(
                *got == outs[0].1,
                "{what} {vars:?}: not the spread router's output"
            );
        }
        let mut be = gpu_with_env(&[("GPTOSS_CUDA_PAIR_MOE", "0")]);
        let got = router_moe_graph(&mut be, &ins, k);
        assert_eq!(be.topk_in_moe_runs(), 0, "{what}: f32 MoE kernels");
        assert_close(
            &format!("{what}, f32 MoE kernels: sum"),
            &got[0],
            &want[0],
            1e-5,
        );
        assert_close(
            &format!("{what}, f32 MoE kernels: out"),
            &got[1],
            &want[1],
            1e-5,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_add_last_row_argmax_match_cpu() {
    check_op_add_last_row_argmax_match_cpu(&mut gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn bad_input_and_out_of_memory_are_errors_and_the_backend_stays_usable() {
    let mut be = gpu();
    eprintln!("device: {}, kernels for {}", be.device_name(), be.arch());
    check_bad_input_is_an_error(&mut be);
    // 4 TiB cannot fit any GPU.
    let huge = TensorDesc::new(DType::F32, [1usize << 40]);
    let e = be.alloc(&huge).unwrap_err().to_string();
    assert!(
        e.contains("out of GPU memory allocating 4398046511104 bytes") && e.contains("free "),
        "{e}"
    );
    // Still usable.
    check_still_usable(&mut be);
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn kernels_are_cached_on_disk() {
    let first = gpu();
    let origins = first.module_origins().to_vec();
    assert!(!origins.is_empty());
    drop(first);
    let second = gpu();
    for o in second.module_origins() {
        if let Some(p) = &o.cache_path {
            assert!(
                o.from_cache,
                "{} was compiled again although {} should hold it",
                o.family,
                p.display()
            );
            assert!(p.exists());
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.contains(second.arch()) && name.contains("cuda"),
                "{name}"
            );
        }
    }
}

// ---------------------------------------------------------------- large-T (prefill) paths

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_linear_large_t_tensor_cores_match_cpu() {
    let mut be = gpu();
    let mut r = Rng(21);
    // (T, N, K): tiles with M, N and K tails; 512 x 2880 is the o projection's shape class.
    for (t, n, k, bias) in [
        (512, 640, 2880, true),
        (100, 201, 200, true),
        (64, 128, 64, false),
        (300, 2880, 512, true),
    ] {
        let mut ins = vec![
            f32_t(&[t, k], &r.vec(t * k, 1.0)),
            float_tensor(DType::BF16, &[n, k], &r.vec(n * k, 0.05)),
        ];
        if bias {
            ins.push(float_tensor(DType::BF16, &[n], &r.vec(n, 1.0)));
        }
        let (g, c) = both(
            &mut be,
            &Op::Linear,
            &ins,
            &[(TensorDesc::new(DType::F32, [t, n]), None)],
        );
        assert_close_bf16(
            &format!("gemm t{t} n{n} k{k}"),
            &to_f32(&g[0]),
            &to_f32(&c[0]),
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_moe_large_t_grouped_matches_cpu() {
    let mut be = gpu();
    let mut r = Rng(22);
    // (tokens, hidden, intermediate, experts, k): many pairs per expert (several tiles), an
    // expert with few pairs, N tails (576 = 4.5 x 128).
    // From 64 pairs per expert with H, I multiples of 64, the pipelined kernels
    // (moe_gate_up_v2): 512 x 4 of 32 experts (20b's expert count), N tails of their 192
    // columns (1024, 320, 896), a crowded expert (skew) with partial tiles elsewhere.
    for (t, h, i, e, k, skew) in [
        (512, 256, 256, 8, 4, false),
        (64, 576, 640, 4, 2, false),
        (200, 128, 96, 16, 4, true),
        (512, 1024, 512, 32, 4, false),
        (1024, 320, 448, 8, 2, true),
    ] {
        let ins = moe_inputs(&mut r, (t, h, i, e, k), skew);
        let what = format!("grouped moe t{t} h{h} i{i} e{e} k{k}");
        let g = moe_v2_against_v1(&mut be, &ins, (t, h, i, e, k), &what);
        let c = run_op(&mut cpu(), &MOE_OP, &ins, &moe_out(t, h)).unwrap();
        assert_close_bf16(&what, &g, &to_f32(&c[0]));
    }
}

fn moe_out(t: usize, h: usize) -> Vec<(TensorDesc, Option<Vec<u8>>)> {
    vec![(TensorDesc::new(DType::F32, [t, h]), None)]
}

fn cpu() -> impl Backend {
    gptoss_backend_cpu::cpu_backend(2)
}

/// `MOE_OP` on the GPU. Where the pipelined prefill kernels take the shape (from 64 pairs per
/// expert, H and I multiples of 64, bf16 tensor cores), asserts that they ran and that the
/// 128-pair moe_mma kernels (GPTOSS_CUDA_MOE_MMA_V1's path) give the same bits: same
/// operands, rounding points and k order. Returns the output.
fn moe_v2_against_v1(
    be: &mut AnyCuda,
    ins: &[(TensorDesc, Vec<u8>)],
    (t, h, i, e, k): (usize, usize, usize, usize, usize),
    what: &str,
) -> Vec<f32> {
    let before = be.moe_v2_runs();
    let got = run_op(be, &MOE_OP, ins, &moe_out(t, h)).unwrap();
    let bf16_cores = target_cc(be.arch()) >= 80;
    let v2 = bf16_cores && t * k >= 64 * e && h % 64 == 0 && i % 64 == 0;
    assert_eq!(be.moe_v2_runs() > before, v2, "{what}: moe_gate_up_v2 ran");
    if v2 {
        be.set_moe_mma_v1(true);
        let old = run_op(be, &MOE_OP, ins, &moe_out(t, h));
        be.set_moe_mma_v1(false);
        assert_eq!(be.moe_v2_runs(), before + 1, "{what}: the v1 switch");
        assert!(got[0] == old.unwrap()[0], "{what}: v2 and v1 differ");
    }
    to_f32(&got[0])
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_moe_few_pairs_per_expert_matches_cpu() {
    // Fewer pairs than a 64-pair tile per expert on average: the swapped-operand kernels
    // (moe_skinny.cu) on sm_80+, which must have compiled there. (tokens, hidden,
    // intermediate, experts, k, skew): a decode-like step (32 experts, ~32 pairs each), 2 pairs
    // an expert on average (some empty; gpu() keeps the f32 paths below 64 tokens), one expert
    // over several tiles (skew), row counts that end inside a block (576, 2 x 640) and groups
    // fewer than the ring.
    let mut be = gpu();
    let skinny = target_cc(be.arch()) >= 80;
    let loaded = be.module_origins().iter().any(|o| o.family == MOE_SKINNY);
    assert_eq!(loaded, skinny, "the {MOE_SKINNY} family on {}", be.arch());
    // By default every case runs the 32-pair tile kernels (the skew cases over several tiles);
    // then the 64-pair ones (GPTOSS_CUDA_SKINNY_WIDE=1).
    let cases = [
        (256, 128, 64, 32, 4, false),
        (64, 64, 32, 32, 1, false),
        (200, 128, 96, 16, 4, true),
        (64, 576, 640, 4, 2, false),
        (100, 128, 96, 16, 4, true),
    ];
    check_moe_path(
        &mut be,
        26,
        &cases,
        ("few-pairs", AnyCuda::skinny_moe_runs),
        skinny,
    );
    let mut be = gpu_with_env(&[("GPTOSS_CUDA_SKINNY_WIDE", "1")]);
    check_moe_path(
        &mut be,
        26,
        &cases,
        ("few-pairs, 64-pair tiles", AnyCuda::skinny_moe_runs),
        skinny,
    );
}

/// Each MoE case `(tokens, hidden, intermediate, experts, k, skew)` on the GPU against the CPU
/// at the bf16 bound; `runs` counts the runs of the path under test, which must take every case
/// when `on` (and none otherwise).
fn check_moe_path(
    be: &mut AnyCuda,
    seed: u64,
    cases: &[(usize, usize, usize, usize, usize, bool)],
    (path, runs): (&str, fn(&AnyCuda) -> u64),
    on: bool,
) {
    let mut r = Rng(seed);
    for &(t, h, i, e, k, skew) in cases {
        let ins = moe_inputs(&mut r, (t, h, i, e, k), skew);
        let before = runs(be);
        let (g, c) = both(
            be,
            &MOE_OP,
            &ins,
            &[(TensorDesc::new(DType::F32, [t, h]), None)],
        );
        let what = format!("{path} moe t{t} h{h} i{i} e{e} k{k} skew {skew}");
        assert_eq!(runs(be) - before, u64::from(on), "{what}");
        assert_close_bf16(&what, &to_f32(&g[0]), &to_f32(&c[0]));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_moe_few_tokens_one_pair_kernels_match_cpu() {
    // Below the grouped paths (batch-1 decode), on sm_80+, every kind of one-pair kernels:
    // `1`, K split over a block's warps; `rows` (6-warp blocks) and `rows4` (4-warp blocks),
    // 16-row tiles shared by a few warps, streamed in stages of 4 groups. (tokens, hidden, intermediate, experts, k): one token of 32 experts, a few
    // tokens sharing experts, rows ending inside a block, groups fewer than the warps or than
    // a stage, a last stage part full, and (hidden 1440: 45 groups) more stages than the ring.
    let cases = [
        (1, 256, 256, 32, 4, false),
        (3, 128, 96, 8, 4, false),
        (8, 576, 640, 4, 2, false),
        (2, 64, 32, 4, 1, false),
        (1, 96, 96, 4, 2, false),
        (2, 1440, 96, 4, 2, false),
    ];
    for (kind, seed) in [("1", 27), ("rows", 28), ("rows4", 29)] {
        let mut be = gpu_with_env(&[("GPTOSS_CUDA_PAIR_MOE", kind)]);
        let on = target_cc(be.arch()) >= 80;
        let path = format!("one-pair ({kind})");
        check_moe_path(&mut be, seed, &cases, (&path, AnyCuda::moe_pair_runs), on);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fixtures_with_tensor_core_few_token_moe_match_transformers() {
    // The fixtures' prefills (up to 56 tokens) and one-token steps with the MoE on the one-pair
    // kernels (both kinds): logits within the bf16 bound, greedy tokens reported.
    for kind in ["1", "rows", "rows4"] {
        std::env::set_var("GPTOSS_CUDA_PAIR_MOE", kind);
        let models: Vec<(&str, Model)> = FIXTURES.iter().map(|n| (*n, load(n))).collect();
        std::env::remove_var("GPTOSS_CUDA_PAIR_MOE");
        for (name, mut model) in models {
            check_bf16_prefill_and_greedy(&mut model, name, &format!("the one-pair moe ({kind})"));
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn tensor_core_family_matches_the_target() {
    // compute_75..79 (GPTOSS_CUDA_PORTABLE_ARCH=compute_75 on any newer GPU): f16 operands
    // (m16n8k8); compute_70..74 (compute_70: Volta's PTX, which newer GPUs run too): f16
    // operands through m8n8k4; compute_80+ and sm_90a: bf16. A family that failed to compile
    // (its NVRTC log is on stderr) fails here rather than silently running the f32 kernels.
    let be = gpu();
    let cc = target_cc(be.arch());
    let loaded: Vec<&str> = be.module_origins().iter().map(|o| o.family).collect();
    let want = match cc {
        80.. => Some(MMA_BF16),
        75..=79 => Some(MMA_F16),
        70..=74 => Some(MMA_F16_SM70),
        _ => None,
    };
    assert!(want.is_some(), "no tensor-core family for {}", be.arch());
    for fam in [MMA_BF16, MMA_F16, MMA_F16_SM70] {
        assert_eq!(
            loaded.contains(&fam),
            want == Some(fam),
            "family {fam} for {}: loaded {loaded:?}",
            be.arch()
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_moe_large_t_extreme_scales_match_cpu() {
    // MXFP4 scales outside f16's range (2^-19..2^-15 for gate_up, 2^14..2^19 for down): the f16
    // build decodes them clamped and applies the rest to the partial sums; the bf16 build
    // holds them exactly. x is scaled up so the gate/up products stay O(1) (SwiGLU does not
    // clamp them away) while staying inside f16's range.
    let mut be = gpu();
    let mut r = Rng(26);
    // 512 x 4 of 8 experts: the pipelined kernels (gate_up's scales take its bf16x2 multiply,
    // down's mx_to_bf16); 128 x 4: exactly 64 pairs per expert, also pipelined; 576 / 640:
    // N tails on the 64-pair kernels.
    for (t, h, i, e, k) in [
        (512, 256, 256, 8, 4),
        (128, 256, 256, 8, 4),
        (64, 576, 640, 4, 2),
    ] {
        let mut ins = moe_inputs(&mut r, (t, h, i, e, k), false);
        ins[0] = f32_t(&[t, h], &r.vec(t * h, 4096.0));
        for s in ins[4].1.iter_mut() {
            *s = 108 + r.below(5) as u8;
        }
        for s in ins[7].1.iter_mut() {
            *s = 141 + r.below(6) as u8;
        }
        let what = format!("grouped moe, extreme scales, t{t} h{h} i{i} e{e} k{k}");
        let g = moe_v2_against_v1(&mut be, &ins, (t, h, i, e, k), &what);
        let c = run_op(&mut cpu(), &MOE_OP, &ins, &moe_out(t, h)).unwrap();
        assert_close_bf16(&what, &g, &to_f32(&c[0]));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn dequantize_is_refused_without_bf16_tensor_cores() {
    let cc = target_cc(gpu().arch());
    let made = AnyCuda::create(&PluginOptions {
        dequantize: true,
        ..Default::default()
    });
    match (cc, made) {
        (80.., Ok(b)) => assert!(b.arch().contains(&cc.to_string())),
        (80.., Err(e)) => panic!("--dequantize on {cc}: {e}"),
        (_, Ok(_)) => panic!("--dequantize was accepted for target {cc}"),
        (_, Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("--dequantize needs bf16 tensor cores")
                    && msg.contains("drop --dequantize"),
                "{msg}"
            );
            // Below sm_80 the tensor cores take f16 operands (Turing: m16n8k8, Volta: m8n8k4).
            assert!(msg.contains("f16 operands"), "{msg}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_attention_large_t_tiled_matches_cpu() {
    let mut be = gpu_f32_attention();
    let mut r = Rng(23);
    // Tiled attention (f32, exact up to order): a prefill from 0, a chunk after cached keys,
    // sliding window, a T that is not a multiple of the 32-query tile.
    for case in [
        (16u32, 2u32, 0u32, 0usize, 512usize, 512usize),
        (16, 2, 128, 0, 512, 512),
        (8, 1, 0, 40, 300, 400),
        (8, 8, 7, 3, 45, 64),
    ] {
        let (what, g, c) = prefill_attention_case(&mut be, &mut r, case);
        assert_close(&what, &g, &c, 1e-5);
    }
    assert_eq!(be.attention_mma_runs(), 0, "GPTOSS_CUDA_ATTN_F32=1");
}

/// One prefill case (heads, kv_heads, window, first position, T, cache capacity), head_dim
/// 64, on `be` and the CPU (see `attention_case_outputs`).
fn prefill_attention_case(
    be: &mut AnyCuda,
    r: &mut Rng,
    (nq, nkv, window, start, t, cap): (u32, u32, u32, usize, usize, usize),
) -> (String, Vec<f32>, Vec<f32>) {
    let pos: Vec<i32> = (start..start + t).map(|p| p as i32).collect();
    attention_case_outputs(be, r, &(nq, nkv, 64, window, pos, cap))
}

/// The backend with the prefill attention on its f32 tiled kernels (GPTOSS_CUDA_ATTN_F32=1),
/// for the per-op checks at the exact bound.
fn gpu_f32_attention() -> AnyCuda {
    gpu_with_env(&[("GPTOSS_CUDA_ATTN_F32", "1")])
}

/// Whether the target has the bf16 tensor-core attention (attn_mma.cu: sm_80+); it must have
/// compiled there (a failed optional family would otherwise hide behind the f32 kernels).
fn expects_mma_attention(be: &AnyCuda) -> bool {
    let bf16 = target_cc(be.arch()) >= 80;
    let loaded = be.module_origins().iter().any(|o| o.family == ATTN_MMA);
    assert_eq!(loaded, bf16, "{ATTN_MMA} for {}", be.arch());
    bf16
}

/// Prefill attention on bf16 tensor cores (T >= the pinned tensor-core threshold of 64) against
/// the CPU at the bf16 bounds: sinks, sliding windows, GQA groups of 8 (two heads a block), 1
/// (one head a block) and 4, chunks after cached keys, tails of the 64-query tile, up to 2048
/// queries; with GPTOSS_CUDA_ATTN_HEADS=1 too (one head a block everywhere).
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_attention_large_t_mma_matches_cpu() {
    for heads_per_block in ["2", "1"] {
        let mut be = gpu_with_env(&[("GPTOSS_CUDA_ATTN_HEADS", heads_per_block)]);
        let mut r = Rng(27);
        let cases = [
            (64u32, 8u32, 0u32, 0usize, 512usize, 512usize),
            (64, 8, 128, 0, 512, 512),
            (16, 2, 0, 0, 2048, 2048),
            (16, 2, 128, 0, 2048, 2048),
            (8, 8, 0, 100, 300, 400),
            (8, 2, 37, 5, 64, 69),
            (16, 4, 0, 1000, 100, 1100),
        ];
        for case in cases {
            let (what, g, c) = prefill_attention_case(&mut be, &mut r, case);
            assert_close_bf16(&format!("{what}, {heads_per_block} heads a block"), &g, &c);
        }
        // Peaky softmax (scores 8x larger: a few keys take nearly all the weight), where
        // bf16 scores were several percent off: the scores' operands are split hi + lo.
        let peaky: AttentionCase = (64, 8, 64, 0, (0..200).collect(), 200);
        let (what, g, c) = attention_case_outputs_sharpened(&mut be, &mut r, &peaky, 8.0);
        assert_close_bf16(&format!("{what}, {heads_per_block} heads a block"), &g, &c);
        let want = if expects_mma_attention(&be) {
            cases.len() as u64 + 1
        } else {
            0
        };
        assert_eq!(
            be.attention_mma_runs(),
            want,
            "launches on the bf16 kernels"
        );
    }
}

/// The paged prefill on bf16 tensor cores: the chunked step of several sequences (two of its
/// 64-row tiles are one sequence's) and one sequence's 1024-row chunk after 100 cached
/// positions over a shuffled page table (GQA 64 / 8, windows 0 and 128), at the bf16 bounds.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_paged_prefill_mma_matches_cpu() {
    let mut be = gpu();
    check_paged_prefill_chunk_within(&mut be, (3e-2, 1e-4));
    let (ps, np) = (16usize, 72usize);
    let table: Vec<i32> = (0..np).map(|i| (i * 5 % np) as i32).collect();
    let pos: Vec<i32> = (100..1124).collect();
    let pages: Vec<i32> = pos.iter().flat_map(|_| table.iter().copied()).collect();
    let slots: Vec<i32> = pos
        .iter()
        .map(|&p| table[p as usize / ps] * ps as i32 + p % ps as i32)
        .collect();
    let mut r = Rng(28);
    for window in [0u32, 128] {
        let case = PagedCase {
            shape: (64, 8, 64, ps),
            window,
            pos: &pos,
            pages: &pages,
            slots: &slots,
            pool_pages: np,
        };
        check_paged_case_within(&mut be, &mut r, &case, "paged 1024-row chunk", (3e-2, 1e-4));
    }
    let want = if expects_mma_attention(&be) { 4 } else { 0 };
    assert_eq!(
        be.attention_mma_runs(),
        want,
        "launches on the bf16 kernels"
    );
}

// ---------------------------------------------------------------- --dequantize

/// The backend with `PluginOptions::dequantize` (experts expanded to bf16 as they load).
fn gpu_dequantized() -> AnyCuda {
    exact_paths_for_fixtures();
    AnyCuda::create(&PluginOptions {
        dequantize: true,
        ..Default::default()
    })
    .expect("the CUDA backend with --dequantize")
}

/// `MOE_OP` on `be` with the experts (inputs 3, 4 and 6, 7 of `ins`) loaded as weights under
/// checkpoint names, so that a --dequantize backend expands them; returns the output.
fn moe_with_loaded_experts(
    be: &mut AnyCuda,
    ins: &[(TensorDesc, Vec<u8>)],
    t: usize,
    h: usize,
) -> Vec<f32> {
    let names = [
        "model.layers.0.mlp.experts.gate_up_proj_blocks",
        "model.layers.0.mlp.experts.gate_up_proj_scales",
        "model.layers.0.mlp.experts.down_proj_blocks",
        "model.layers.0.mlp.experts.down_proj_scales",
    ];
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let mut ids = Vec::new();
    for (n, (d, data)) in ins.iter().enumerate() {
        let (b, kind) = match [3, 4, 6, 7].iter().position(|w| *w == n) {
            Some(j) => {
                let b = be
                    .load_weight(names[j], d, data)
                    .expect("expert weights load");
                (b, ValueKind::Weight(b))
            }
            None => {
                let b = be.alloc(d).unwrap();
                be.upload(b, data).unwrap();
                (b, ValueKind::Input(b))
            }
        };
        bufs.push(b);
        ids.push(g.add_value(format!("in{n}"), d.clone(), kind));
    }
    let out_desc = TensorDesc::new(DType::F32, [t, h]);
    let out = be.alloc(&out_desc).unwrap();
    let o = g.add_value("out", out_desc, ValueKind::Output(out));
    g.push(MOE_OP, ids, vec![o]);
    be.execute(&g).expect("moe with loaded experts");
    assert!(
        be.dequantized_experts() >= 2,
        "both projections expanded to bf16"
    );
    let got = to_f32(&be.download(out).unwrap());
    for b in bufs.into_iter().chain([out]) {
        be.free(b).unwrap();
    }
    got
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_80+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn op_moe_dequantized_matches_cpu() {
    let mut be = gpu_dequantized();
    let mut r = Rng(23);
    // (tokens, hidden, intermediate, experts, k): the per-pair bf16 GEMV below 64 tokens (f32
    // products of exact bf16 weights), bf16 GEMMs on bf16 rows from 64 (cuBLAS when it loads,
    // else the grouped tensor-core kernels: op_moe_dequantized_cublas_matches_cpu runs both).
    for (t, h, i, e, k) in [
        (6, 128, 64, 8, 3),
        (1, 2880, 2880, 4, 4),
        (33, 64, 96, 4, 2),
        (200, 128, 96, 16, 4),
    ] {
        let ins = moe_inputs(&mut r, (t, h, i, e, k), false);
        let before = be.dequantized_experts();
        let got = moe_with_loaded_experts(&mut be, &ins, t, h);
        assert_eq!(be.dequantized_experts(), before, "freed with their buffers");
        let mut cpu = gptoss_backend_cpu::cpu_backend(2);
        let out = [(TensorDesc::new(DType::F32, [t, h]), None)];
        let want = to_f32(&run_op(&mut cpu, &MOE_OP, &ins, &out).unwrap()[0]);
        let what = format!("dequantized moe t{t} h{h} i{i} e{e} k{k}");
        if t >= 64 {
            assert_close_bf16(&what, &got, &want);
        } else {
            assert_close(&what, &got, &want, 1e-5);
        }
    }
    // The expansion happened: a blocks tensor followed by its scales leaves one bf16 copy.
    let ins = moe_inputs(&mut r, (2, 64, 64, 2, 1), false);
    let b = be
        .load_weight("x.gate_up_proj_blocks", &ins[3].0, &ins[3].1)
        .unwrap();
    assert_eq!(be.dequantized_experts(), 0, "blocks wait for their scales");
    let s = be
        .load_weight("x.gate_up_proj_scales", &ins[4].0, &ins[4].1)
        .unwrap();
    assert_eq!(be.dequantized_experts(), 1);
    be.free(b).unwrap();
    be.free(s).unwrap();
    assert_eq!(be.dequantized_experts(), 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_80+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fixtures_dequantized_match_transformers() {
    // The f32 paths (the fixtures' T <= 56 stay below the pinned 64): exact bounds.
    for name in FIXTURES {
        let load = || {
            Model::load(
                &fixture_dir(name),
                Box::new(gpu_dequantized()),
                &mut |_, _| {},
            )
            .expect("fixture loads with --dequantize")
        };
        let mut model = load();
        check_fixture_prompts(&mut model, name, usize::MAX, "dequantized prefill");
        check_fixture_prompts(&mut load(), name, 1, "dequantized incremental");
        let r = Reference::load(name);
        let want = r.tokens("greedy_tokens");
        let got = model
            .generate_greedy(&r.tokens("greedy_prompt"), want.len(), &[], 0, &mut |_| {})
            .unwrap();
        assert_eq!(
            got, want,
            "{name}: dequantized greedy continuation vs transformers"
        );
    }
    // The bf16 paths at every T: through cuBLAS (which must be in use), and through our own
    // tensor-core kernels (GPTOSS_CUDA_NO_CUBLAS=1). Both round the same operands to bf16 and
    // accumulate in f32, so they differ by summation order only: the same greedy tokens.
    for name in FIXTURES {
        let before = gptoss_cuda::cublas::gemm_calls();
        let mut blas = load_dequantized_bf16_paths(name, true);
        let got = check_bf16_prefill(&mut blas, name, "dequantized, cuBLAS");
        let calls = gptoss_cuda::cublas::gemm_calls() - before;
        assert!(calls > 0, "{name}: no GEMM went through cuBLAS");
        let mut own = load_dequantized_bf16_paths(name, false);
        let ours = check_bf16_prefill(&mut own, name, "dequantized, own kernels");
        let diff = got
            .iter()
            .flatten()
            .zip(ours.iter().flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let r = Reference::load(name);
        let (prompt, n) = (r.tokens("greedy_prompt"), r.tokens("greedy_tokens").len());
        let greedy = |m: &mut Model| m.generate_greedy(&prompt, n, &[], 0, &mut |_| {}).unwrap();
        let (a, b) = (greedy(&mut blas), greedy(&mut own));
        eprintln!(
            "{name} dequantized bf16 paths: {calls} cuBLAS GEMMs, logits cuBLAS vs own kernels \
             max abs diff {diff:.3e}, greedy {} tokens",
            a.len()
        );
        assert_eq!(
            a, b,
            "{name}: greedy tokens through cuBLAS vs our own kernels"
        );
    }
}

/// A --dequantize model of fixture `name` with the bf16 paths at every T
/// (`GPTOSS_CUDA_MMA_MIN_T=1`), through cuBLAS or (`cublas` false) our own kernels. Fails,
/// with the reason, when cuBLAS is wanted but cannot be used.
fn load_dequantized_bf16_paths(name: &str, cublas: bool) -> Model {
    // Tests run one at a time on the GPU machine (--test-threads=1); the variables are read
    // when the backend is created and removed again right after.
    std::env::set_var("GPTOSS_CUDA_MMA_MIN_T", "1");
    if !cublas {
        std::env::set_var("GPTOSS_CUDA_NO_CUBLAS", "1");
    }
    let be = gpu_dequantized();
    std::env::remove_var("GPTOSS_CUDA_MMA_MIN_T");
    std::env::remove_var("GPTOSS_CUDA_NO_CUBLAS");
    match (cublas, be.cublas()) {
        (true, Ok(d)) => eprintln!("{d}"),
        (true, Err(e)) => panic!("{e}"),
        (false, r) => assert!(r.is_err(), "GPTOSS_CUDA_NO_CUBLAS=1 must turn cuBLAS off"),
    }
    Model::load(&fixture_dir(name), Box::new(be), &mut |_, _| {}).expect("fixture loads")
}

/// The backend with --dequantize and cuBLAS in use (fails with the reason otherwise).
fn gpu_with_cublas() -> AnyCuda {
    let be = gpu_dequantized();
    match be.cublas() {
        Ok(d) => eprintln!("{d}"),
        Err(e) => panic!("{e}"),
    }
    be
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_80+ with GPTOSS_CUDA_FLAVOR=portable) and cuBLAS: run on the GPU machine with --ignored"]
fn op_linear_cublas_matches_cpu() {
    let mut be = gpu_with_cublas();
    let mut r = Rng(24);
    // (T, N, K, bias dtype): the o projection's shape class, bf16 and f32 biases, none, odd
    // N, and an odd K (and odd T x K: the conversion's last element alone).
    let cases = [
        (512, 640, 2880, Some(DType::BF16)),
        (100, 201, 200, Some(DType::F32)),
        (64, 128, 64, None),
        (300, 2880, 512, Some(DType::BF16)),
        (67, 45, 37, Some(DType::F32)),
    ];
    for (t, n, k, bias) in cases {
        let mut ins = vec![
            f32_t(&[t, k], &r.vec(t * k, 1.0)),
            float_tensor(DType::BF16, &[n, k], &r.vec(n * k, 0.05)),
        ];
        if let Some(d) = bias {
            ins.push(float_tensor(d, &[n], &r.vec(n, 1.0)));
        }
        let before = gptoss_cuda::cublas::gemm_calls();
        let (g, c) = both(
            &mut be,
            &Op::Linear,
            &ins,
            &[(TensorDesc::new(DType::F32, [t, n]), None)],
        );
        let what = format!("cuBLAS linear t{t} n{n} k{k} bias {bias:?}");
        assert_eq!(
            gptoss_cuda::cublas::gemm_calls() - before,
            1,
            "{what}: one cuBLAS GEMM"
        );
        assert_close_bf16(&what, &to_f32(&g[0]), &to_f32(&c[0]));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_80+ with GPTOSS_CUDA_FLAVOR=portable) and cuBLAS: run on the GPU machine with --ignored"]
fn op_moe_dequantized_cublas_matches_cpu() {
    let mut r = Rng(25);
    // (tokens, hidden, intermediate, experts, k, skew): many pairs per expert, an expert with
    // few (skew: expert 0 takes most), experts with none (4 tokens x 1 of 16 experts at T 64
    // leaves some empty), hidden != intermediate both ways; 512 tokens, above
    // CUBLAS_MOE_MAX_T, take the grouped kernel.
    let cases = [
        (256, 256, 256, 8, 4, false),
        (512, 256, 256, 8, 4, false),
        (64, 576, 640, 4, 2, false),
        (200, 128, 96, 16, 4, true),
        (64, 64, 128, 32, 1, false),
    ];
    let inputs: Vec<_> = cases
        .iter()
        .map(|&(t, h, i, e, k, skew)| moe_inputs(&mut r, (t, h, i, e, k), skew))
        .collect();
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    // cuBLAS, then our own grouped kernels on the same dequantized experts.
    for cublas in [true, false] {
        if !cublas {
            std::env::set_var("GPTOSS_CUDA_NO_CUBLAS", "1");
        }
        let mut be = if cublas {
            gpu_with_cublas()
        } else {
            gpu_dequantized()
        };
        std::env::remove_var("GPTOSS_CUDA_NO_CUBLAS");
        assert_eq!(be.cublas().is_ok(), cublas, "{:?}", be.cublas());
        for (&(t, h, i, e, k, _), ins) in cases.iter().zip(&inputs) {
            let before = gptoss_cuda::cublas::gemm_calls();
            let got = moe_with_loaded_experts(&mut be, ins, t, h);
            let calls = gptoss_cuda::cublas::gemm_calls() - before;
            let what = format!("dequantized moe t{t} h{h} i{i} e{e} k{k}, cuBLAS {cublas}");
            // One GEMM per projection and expert with pairs.
            if cublas && t <= gptoss_cuda::CUBLAS_MOE_MAX_T {
                assert!(calls >= 2 && calls <= 2 * e as u64, "{what}: {calls} GEMMs");
            } else {
                assert_eq!(
                    calls, 0,
                    "{what}: cuBLAS is off or the MoE above its tokens"
                );
            }
            let out = [(TensorDesc::new(DType::F32, [t, h]), None)];
            let want = to_f32(&run_op(&mut cpu, &MOE_OP, ins, &out).unwrap()[0]);
            assert_close_bf16(&what, &got, &want);
        }
    }
}

// ---------------------------------------------------------------- transformers fixtures

/// Sanity bound for the fixtures run with the bf16 tensor-core paths forced on at every T,
/// relative to the largest reference logit (8-9 on the tiny fixtures). Every linear and MoE
/// input is rounded to bf16 in every layer, and the random tiny models amplify it far more
/// than the per-op checks (NMSE <= 1e-5 there): measured on the H100, tiny-a prompts 0/1 0.144
/// and 0.121 max abs (1.7%, 1.5%), tiny-b prompts 0/1 0.372 and 1.70 (4.1%, 20%). This bound
/// catches broken kernels (garbage, NaN, wrong rows), not bf16 rounding; the argmax check
/// below is the meaningful one.
const BF16_LOGIT_TOLERANCE: f32 = 0.25;

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fixtures_with_bf16_paths_forced_match_transformers() {
    // Tests run one at a time on the GPU machine (--test-threads=1); the variable is read when
    // the backend is created and removed again right after.
    std::env::set_var("GPTOSS_CUDA_MMA_MIN_T", "1");
    let models: Vec<(&str, Model)> = FIXTURES.iter().map(|n| (*n, load(n))).collect();
    std::env::remove_var("GPTOSS_CUDA_MMA_MIN_T");
    for (name, mut model) in models {
        check_bf16_prefill_and_greedy(&mut model, name, "bf16 paths");
    }
}

/// `check_bf16_prefill`, then the greedy tokens against the reference's, reported rather than
/// required equal: one near-tie flip changes the rest.
fn check_bf16_prefill_and_greedy(model: &mut Model, name: &str, what: &str) {
    check_bf16_prefill(model, name, what);
    let r = Reference::load(name);
    let want = r.tokens("greedy_tokens");
    let got = model
        .generate_greedy(&r.tokens("greedy_prompt"), want.len(), &[], 0, &mut |_| {})
        .unwrap();
    let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!(
        "{name} greedy with {what}: first {same} of {} tokens equal",
        want.len()
    );
}

/// Prefill logits of every prompt of fixture `name` on the bf16 paths: equal argmax except at
/// the reference's near-ties, logits within `BF16_LOGIT_TOLERANCE`. Returns the logits.
fn check_bf16_prefill(model: &mut Model, name: &str, what: &str) -> Vec<Vec<f32>> {
    let v = model.config.vocab_size;
    let r = Reference::load(name);
    let mut all = Vec::new();
    for (i, (prompt, want)) in r.prompts().into_iter().enumerate() {
        let mut s = model.new_session(prompt.len()).unwrap();
        let got = model.forward(&mut s, &prompt, LogitsWanted::All).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let bound = BF16_LOGIT_TOLERANCE * scale;
        // A position counts as a near-tie when the reference's top logit is within this
        // of the logit of the token we picked (tiny-b: 1 of 56 and 2 of 44 positions).
        let tie = 0.06 * scale;
        let mut diff = 0f32;
        let mut flips = 0;
        for (row, (a, b)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    x.is_finite(),
                    "{name} prompt {i} ({what}): non-finite logit at {row}"
                );
                diff = diff.max((x - y).abs());
            }
            // The argmax must agree unless the reference itself is a near-tie: its top
            // logit within the bf16 bound of the one we picked.
            let (ga, wa) = (
                gptoss_models::model::argmax(a),
                gptoss_models::model::argmax(b),
            );
            if ga != wa {
                flips += 1;
                assert!(
                    b[wa] - b[ga] <= tie,
                    "{name} prompt {i} ({what}): argmax {ga} vs {wa} at position {row}, \
                         reference margin {} > {tie}",
                    b[wa] - b[ga]
                );
            }
        }
        eprintln!(
            "{name} prompt {i} prefill, {what}: max abs diff {diff:.3e} (max |logit| \
                 {scale:.2}), argmax differs at {flips} near-tie positions of {}",
            prompt.len()
        );
        assert!(
            diff < bound,
            "{name} prompt {i} ({what}): {diff} vs {bound}"
        );
        all.push(got);
    }
    all
}

fn load(name: &str) -> Model {
    Model::load(&fixture_dir(name), Box::new(gpu()), &mut |_, _| {}).expect("fixture loads")
}

/// A prompt's prefill then `steps` greedy one-token steps: every step's logits.
fn decode_logits(model: &mut Model, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut s = model.new_session(prompt.len() + steps).unwrap();
    let mut logits = vec![model.forward(&mut s, prompt, LogitsWanted::Last).unwrap()];
    for _ in 0..steps {
        let last = logits.last().unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        logits.push(model.forward(&mut s, &[next], LogitsWanted::Last).unwrap());
    }
    logits
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn early_launches_change_no_logit() {
    // Programmatic dependent launches start a GEMV or the MoE down projection while the kernel
    // before it runs; they wait for their inputs, so one-token decoding gives the same logits,
    // bit for bit, with them off (GPTOSS_CUDA_PDL=0). sm_90+ builds only (the portable
    // flavour compares two runs without).
    let name = FIXTURES[0];
    let prompt = &Reference::load(name).prompts()[0].0;
    let mut runs = Vec::new();
    for pdl in ["1", "0"] {
        let be = gpu_with_env(&[("GPTOSS_CUDA_PDL", pdl)]);
        let early = be.early_launches();
        let expect = pdl == "1" && target_cc(be.arch()) >= 90;
        assert_eq!(early, expect, "GPTOSS_CUDA_PDL={pdl} on {}", be.arch());
        let mut model = Model::load(&fixture_dir(name), Box::new(be), &mut |_, _| {}).unwrap();
        runs.push(decode_logits(&mut model, prompt, 12));
    }
    assert_eq!(runs[0].len(), 13);
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert!(a == b, "step {i}: logits differ with early launches");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fast_replay_changes_no_logit() {
    // A step whose graph equals the last one, whose launches were the captured CUDA graph's,
    // with no buffer allocated, freed or loaded since, launches that graph without being fused
    // and recorded again: the same logits, bit for bit, as with that off
    // (GPTOSS_CUDA_FAST_REPLAY=0), also in a second session after the first (new caches,
    // whose pointers must not be replayed stale), which decodes what the first did.
    let name = FIXTURES[0];
    let prompt = &Reference::load(name).prompts()[0].0;
    let mut runs = Vec::new();
    for on in ["1", "0"] {
        let be = gpu_with_env(&[("GPTOSS_CUDA_FAST_REPLAY", on)]);
        let mut model = Model::load(&fixture_dir(name), Box::new(be), &mut |_, _| {}).unwrap();
        let before = gptoss_cuda::fast_replays();
        let first = decode_logits(&mut model, prompt, 10);
        let second = decode_logits(&mut model, prompt, 10);
        let fast = gptoss_cuda::fast_replays() - before;
        assert_eq!(
            fast > 0,
            on == "1",
            "GPTOSS_CUDA_FAST_REPLAY={on}: {fast} fast replays"
        );
        assert!(
            first == second,
            "FAST_REPLAY={on}: the second session decoded differently"
        );
        runs.push(first);
    }
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert!(a == b, "step {i}: logits differ with the fast replay");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn decode_chain_matches_step_by_step() {
    // decode_chain queues its steps after the second (the captured graph, then chain_advance
    // moving the chosen token and the position on, on the device): the same tokens as one
    // forward_argmax a step, in chains of several lengths one after another in one session
    // (the tokens and position carried across them), and the queued steps counted.
    let name = FIXTURES[0];
    let prompt = &Reference::load(name).prompts()[0].0;
    let mut model = Model::load(&fixture_dir(name), Box::new(gpu()), &mut |_, _| {}).unwrap();
    let steps = 24;
    let mut s = model.new_session(prompt.len() + steps + 1).unwrap();
    let mut tok = model.forward_argmax(&mut s, prompt).unwrap();
    let mut expect = Vec::new();
    for _ in 0..steps {
        tok = model.forward_argmax(&mut s, &[tok]).unwrap();
        expect.push(tok);
    }
    let mut s = model.new_session(prompt.len() + steps + 1).unwrap();
    let first = model.forward_argmax(&mut s, prompt).unwrap();
    let before = gptoss_cuda::fast_replays();
    let mut got = Vec::new();
    let mut last = first;
    for n in [1, 3, 12, 8] {
        let chunk = model.decode_greedy(&mut s, last, n).unwrap();
        assert_eq!(chunk.len(), n);
        last = *chunk.last().unwrap();
        got.extend(chunk);
    }
    assert_eq!(got, expect, "chained tokens against step by step");
    assert!(gptoss_cuda::fast_replays() > before, "no step was queued");
    let e = model
        .decode_greedy(&mut s, last, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn combine_inside_the_gemv_changes_no_logit() {
    // One-token steps form the MoE's combine, residual add and RMSNorm inside the next layer's
    // q/k/v GEMV (and lm_head's) with moe_combine_add_norm's arithmetic: the same logits, bit
    // for bit, as with the separate kernel (GPTOSS_CUDA_GEMV_COMBINE=0).
    let name = FIXTURES[0];
    let prompt = &Reference::load(name).prompts()[0].0;
    let mut runs = Vec::new();
    for on in ["1", "0"] {
        let be = gpu_with_env(&[("GPTOSS_CUDA_GEMV_COMBINE", on)]);
        let mut model = Model::load(&fixture_dir(name), Box::new(be), &mut |_, _| {}).unwrap();
        let before = gptoss_cuda::gemv_combine_launches();
        runs.push(decode_logits(&mut model, prompt, 12));
        let fused = gptoss_cuda::gemv_combine_launches() - before;
        assert_eq!(
            fused > 0,
            on == "1",
            "GPTOSS_CUDA_GEMV_COMBINE={on}: {fused} fused launches"
        );
    }
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert!(
            a == b,
            "step {i}: logits differ with the combine inside the GEMV"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fixtures_prefill_matches_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        assert_eq!(model.backend_name(), AnyCuda::name());
        check_fixture_prompts(&mut model, name, usize::MAX, "prefill");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn fixtures_incremental_matches_transformers() {
    for name in FIXTURES {
        check_fixture_prompts(&mut load(name), name, 1, "incremental");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
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
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
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

// ---------------------------------------------------------------- split over two GPUs

/// One backend per GPU, each told its shard of a two-way split; NCCL sums between them.
fn gpu_shards(world: usize) -> Vec<Box<dyn Backend>> {
    let usable = if portable() {
        CudaBf16::probe_devices()
    } else {
        CudaMxfp4::probe_devices()
    }
    .devices
    .iter()
    .filter(|d| d.score > 0)
    .count();
    assert!(
        usable >= world,
        "a {world}-way split needs {world} GPUs, this machine has {usable} usable"
    );
    let group = gptoss_core::collective::new_group_name();
    (0..world)
        .map(|rank| {
            exact_paths_for_fixtures();
            let options = PluginOptions {
                device: rank,
                shard: Some(gptoss_core::collective::ShardOptions {
                    rank,
                    world,
                    group: group.clone(),
                }),
                ..Default::default()
            };
            Box::new(AnyCuda::create(&options).expect("a CUDA backend per GPU")) as Box<dyn Backend>
        })
        .collect()
}

fn load_split(name: &str, expert_parallel: bool) -> Model {
    let sharding = gptoss_models::Sharding {
        world: 2,
        expert_parallel,
    };
    Model::load_sharded(&fixture_dir(name), gpu_shards(2), sharding, &mut |_, _| {})
        .expect("fixture loads split over two GPUs")
}

#[test]
#[ignore = "needs two NVIDIA GPUs and NCCL: run on a multi-GPU machine with --ignored split_"]
fn split_tp2_and_ep2_match_transformers() {
    eprintln!("{}", gptoss_cuda::nccl::describe().expect("NCCL"));
    for name in FIXTURES {
        for ep in [false, true] {
            let what = if ep { "ep2" } else { "tp2" };
            let mut model = load_split(name, ep);
            assert_eq!(model.world(), 2);
            check_fixture_prompts(&mut model, name, usize::MAX, &format!("{what} prefill"));
            check_fixture_prompts(&mut model, name, 1, &format!("{what} incremental"));
            check_fixture_prompts(&mut model, name, 7, &format!("{what} chunked"));
        }
    }
}

#[test]
#[ignore = "needs two NVIDIA GPUs and NCCL: run on a multi-GPU machine with --ignored split_"]
fn split_greedy_tokens_match_one_gpu() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let want = r.tokens("greedy_tokens");
        let prompt = r.tokens("greedy_prompt");
        for ep in [false, true] {
            let got = load_split(name, ep)
                .generate_greedy(&prompt, want.len(), &[], 0, &mut |_| {})
                .unwrap();
            assert_eq!(got, want, "{name} ep={ep}: greedy tokens split over 2 GPUs");
        }
    }
}

// ---------------------------------------------------------------- many sequences per step

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90+; sm_70+ with GPTOSS_CUDA_FLAVOR=portable): run on the GPU machine with --ignored"]
fn batched_paged_steps_match_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        gptoss_e2e::batch_check::check_batched_prompts(&mut model, name);
        gptoss_e2e::batch_check::check_batched_greedy(&mut model, name, 4);
    }
}

#[test]
#[ignore = "needs two NVIDIA GPUs and NCCL: run on a multi-GPU machine with --ignored split_"]
fn split_and_batched_match_transformers() {
    for name in FIXTURES {
        let mut model = load_split(name, true);
        gptoss_e2e::batch_check::check_batched_prompts(&mut model, name);
    }
}
