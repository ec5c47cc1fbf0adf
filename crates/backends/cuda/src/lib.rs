//! gptoss-cuda: the CUDA backend shared by two plugins, generic over a [`Flavor`]:
//!
//! - [`Mxfp4`] (plugin `cuda-mxfp4`, crates/backends/cuda-mxfp4): Hopper and Blackwell (sm_90+),
//!   kernels built for the arch-specific target (sm_90a, sm_100a, sm_120a).
//! - [`Portable`] (plugin `cuda-bf16`, crates/backends/cuda-bf16): Volta to Ada (sm_70..sm_89),
//!   kernels built as PTX for the device's virtual architecture (compute_XY), so nothing newer
//!   than the device slips in; the tensor-core family takes bf16 operands from sm_80, f16
//!   operands on sm_75..sm_79 (Turing: mma m16n8k8) and on sm_70..sm_74 (Volta: mma m8n8k4).
//!   Experts stay MXFP4 and are dequantized inside the kernels (W4A16).
//!
//! This crate is an rlib only; each plugin crate exports its flavor with `export_backend!`
//! (two rlibs exporting the entry symbol would collide in one cdylib).
//!
//! - Buffers live in GPU memory with their logical dtype: BF16 weights stay bf16, MXFP4 blocks
//!   and E8M0 scales stay packed bytes (the MoE kernels decode them on the fly), F32/I32 as is.
//! - Every graph op has a CUDA C kernel (src/kernels/*.cu), compiled with NVRTC for the
//!   detected arch (sm_90a on Hopper) when the backend is created, and cached on disk as cubin
//!   keyed by source hash + arch + driver version (`$XDG_CACHE_HOME/gptoss` or
//!   `~/.cache/gptoss`; no cache when that is not writable).
//! - `execute` walks the validated graph on one stream, takes temporaries from a pool and
//!   returns them after their last use, then synchronises and checks the kernels' error word
//!   (bad token ids, positions, expert ids), so errors come back as [`gptoss_core::Error`].
//!
//! The CUDA driver is loaded with dlopen (cudarc), so this crate builds and loads on machines
//! without CUDA; there `probe` reports score 0 with the reason and `create` fails cleanly.

/// The kernel names of a comma-separated list (spaces around them and empty entries dropped).
fn kernel_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// GPTOSS_CUDA_TIMING_SKIP's kernel names, said once on stderr (the results are wrong while
/// it is set: it exists to time a step without some kernels).
fn timing_skip_from_env() -> Vec<String> {
    let names = kernel_names(&std::env::var("GPTOSS_CUDA_TIMING_SKIP").unwrap_or_default());
    if !names.is_empty() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "GPTOSS_CUDA_TIMING_SKIP: not launching {}; every result is wrong (timing only)",
                names.join(", ")
            )
        });
    }
    names
}

/// Steps launched as the captured graph without being fused and recorded again, by every
/// backend of the process so far (fast replays and decode_chain's queued steps; tests).
pub fn fast_replays() -> u64 {
    FAST_REPLAYS.load(std::sync::atomic::Ordering::Relaxed)
}

static FAST_REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Launches of the GEMV with the MoE combine inside (gemv_bf16_t1_moe) by every backend of
/// the process so far: tests see that a model's decode took that path.
pub fn gemv_combine_launches() -> u64 {
    ops::GEMV_COMBINE_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

pub mod cublas;
mod cublas_ops;
mod driver;
mod fusion;
mod kernels;
mod libpaths;
mod moe_skinny;
pub mod nccl;
pub mod nvrtc;
mod ops;
pub mod probe;

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use gptoss_core::graph::{Op, ValueKind};
use gptoss_core::plugin::{PluginBackend, PluginOptions};
use gptoss_core::rope::RopeParams;
use gptoss_core::{
    Backend, BufferId, DType, DecodeChain, Error, Graph, ProbeReport, Result, TensorDesc,
};

use driver::{CUdeviceptr, Gpu};
pub use kernels::{
    arch_for, compile_options, family, nvrtc_target_hint, portable_arch_for, portable_skip, Family,
    ModuleOrigin, ATTN_MMA, MMA_BF16, MMA_F16, MMA_F16_SM70, MOE_SKINNY, MOE_V2_BK, MOE_V2_BM,
    MOE_V2_BN, MOE_V2_SMEM, MOE_V2_STAGES,
};

/// Tokens up to which the dequantized MoE runs as cuBLAS GEMMs per expert (H100, 20b shape,
/// --dequantize, batched decode of 16 / 64 / 256 sequences: 595 / 2149 / 6653 tok/s through
/// cuBLAS against 584 / 1545 / 4997 through the grouped kernel; a 512-token prefill took 2x
/// longer through cuBLAS, a 2048-token one 13% longer).
pub const CUBLAS_MOE_MAX_T: usize = 256;

/// Which plugin the shared code runs as: its name, score rule and kernel targets.
pub trait Flavor: Send + 'static {
    /// The backend name ("cuda-mxfp4", "cuda-bf16").
    const NAME: &'static str;
    /// Portable (sm_70..sm_89, compute_XY PTX) rather than Hopper/Blackwell MXFP4.
    const PORTABLE: bool;
}

/// Hopper/Blackwell: sm_90a/sm_100a/sm_120a cubins, tensor-core paths, scored by
/// `scoring::cuda_mxfp4`.
pub struct Mxfp4;

/// Volta to Ada: compute_XY PTX of the device, scored by `scoring::cuda_bf16`.
/// `GPTOSS_CUDA_PORTABLE_ARCH=compute_80` (any compute_XY) overrides the target, e.g. to run
/// the portable kernels on a Hopper GPU as sm_80 code.
pub struct Portable;

impl Flavor for Mxfp4 {
    const NAME: &'static str = gptoss_core::plugin::scoring::CUDA_MXFP4;
    const PORTABLE: bool = false;
}

impl Flavor for Portable {
    const NAME: &'static str = gptoss_core::plugin::scoring::CUDA_BF16;
    const PORTABLE: bool = true;
}

/// The cuda-mxfp4 plugin's backend.
pub type CudaMxfp4 = Cuda<Mxfp4>;
/// The cuda-bf16 plugin's backend.
pub type CudaBf16 = Cuda<Portable>;

/// The portable target for a device of compute capability `cc`: `GPTOSS_CUDA_PORTABLE_ARCH`
/// when set (compute_XY), else compute_XY of the device. Returns (arch, the capability the
/// code is built for).
pub fn portable_target(cc: (u32, u32)) -> Result<(String, (u32, u32))> {
    match std::env::var("GPTOSS_CUDA_PORTABLE_ARCH") {
        Ok(v) if !v.is_empty() => {
            let digits = v.strip_prefix("compute_").unwrap_or("");
            let n: u32 = digits.parse().map_err(|_| {
                Error::Input(format!(
                    "GPTOSS_CUDA_PORTABLE_ARCH={v}: expected compute_XY, e.g. compute_80"
                ))
            })?;
            let target = (n / 10, n % 10);
            if target < (7, 0) || target > cc {
                return Err(Error::Input(format!(
                    "GPTOSS_CUDA_PORTABLE_ARCH={v}: needs compute_70..compute_{}{} on this \
                     device (sm_{}{})",
                    cc.0, cc.1, cc.0, cc.1
                )));
            }
            Ok((v, target))
        }
        _ => Ok((portable_arch_for(cc), cc)),
    }
}

/// Why --dequantize cannot run for `arch` (built for `target_cc`) on `device`.
fn dequantize_refusal(device: &str, arch: &str, target_cc: (u32, u32)) -> String {
    let why = if target_cc < (8, 0) {
        "its experts are expanded to bf16, and the tensor cores here take f16 operands \
         (bf16 needs sm_80; an expert value times its scale can leave f16's range)"
    } else {
        "the bf16 tensor-core kernels did not compile (see the NVRTC log above)"
    };
    format!(
        "--dequantize needs bf16 tensor cores (sm_80 or newer) on {device} ({arch} kernels): \
         {why}; the MXFP4 experts run as they are: drop --dequantize"
    )
}

struct DevBuf {
    ptr: CUdeviceptr,
    desc: TensorDesc,
}

/// The backend: one GPU, one stream, device buffers and the compiled kernels.
pub struct Cuda<F: Flavor> {
    buffers: HashMap<BufferId, DevBuf>,
    next_id: u64,
    /// Free temporaries by byte size, reused across ops and steps.
    pool: HashMap<usize, Vec<CUdeviceptr>>,
    /// Sizes taken from the pool during the current `execute`.
    pool_used: std::collections::HashSet<usize>,
    /// YaRN/RoPE inverse frequencies uploaded once per distinct parameters.
    rope_tables: Vec<(RopeParams, CUdeviceptr)>,
    /// --dequantize: expert blocks are expanded to bf16 once their scales have loaded.
    dequantize: bool,
    /// Expert block buffers waiting for their scales, by tensor name less "_blocks".
    pending_blocks: HashMap<String, BufferId>,
    /// Device pointers of expert matrices held as bf16 (their buffers keep the MXFP4 desc the
    /// graph binds; the MoE op reads them as bf16 rows [E, rows, K]).
    bf16_experts: HashSet<CUdeviceptr>,
    /// 4 ints the kernels write when they meet bad input (code, a, b, c).
    err: CUdeviceptr,
    /// ROUTER_TOKENS zeroed counters of blocks done per token (router_topk_spread: its last
    /// block sets its counter back to 0).
    done_counters: CUdeviceptr,
    /// Launches of router_topk_spread recorded so far (tests: the path ran).
    router_spread_runs: u64,
    /// Router runs that took the add + RMSNorm with them (add_norm_router_spread; tests).
    add_norm_router_runs: u64,
    /// One token's router logits when the MoE after the router takes the top-k from them
    /// (ops::TOPK_IN_MOE_MAX_E floats; `add_norm_router_logits`).
    router_logits: CUdeviceptr,
    /// A router's top-k left to the MoE node after it (set by `add_norm_router_logits`, taken
    /// by `run_moe`).
    deferred_topk: Option<ops::DeferredTopK>,
    /// One-token routers leave their top-k to the moe_t1 kernels (no last block in the
    /// router); GPTOSS_CUDA_TOPK_IN_MOE=0 turns it off.
    topk_in_moe: bool,
    /// GPTOSS_CUDA_ROUTER_EPB: the experts a block of `add_norm_router_logits` forms the
    /// logits of (1..=8), instead of `router_experts_per_block`'s choice.
    router_epb: Option<usize>,
    /// MoE runs whose kernels took the top-k from the router's logits (tests).
    topk_in_moe_runs: u64,
    /// MoE runs on the few-pairs kernels so far (moe_skinny.rs; tests).
    skinny_moe_runs: u64,
    /// MoE runs on the one-pair tensor-core kernels so far (few tokens; tests).
    moe_pair_runs: u64,
    /// Paged decode-row attention launches on the GQA-shared kernel so far (tests).
    attention_gqa_runs: u64,
    /// RoPE + one-token attention runs fused so far (fusion.rs RopeAttention; tests).
    rope_attention_runs: u64,
    /// Prefill attention launches on the bf16 tensor-core kernels so far (tests: the path ran).
    attention_mma_runs: u64,
    /// MoE nodes run through the pipelined prefill kernels so far (moe_gate_up_v2; tests).
    moe_v2_runs: u64,
    /// GPTOSS_CUDA_MOE_MMA_V1=1: prefill MoE on the 128-pair moe_mma kernels instead of the
    /// pipelined ones (differential runs).
    moe_mma_v1: bool,
    kernels: kernels::Kernels,
    /// Fast kernels (gemv, fused MoE); GPTOSS_CUDA_NO_FUSION=1 selects the simple ones.
    fast: bool,
    /// Tensor-core (bf16 operand) linear and grouped MoE from this many tokens on
    /// (GPTOSS_CUDA_MMA_MIN_T, default 16: batched decode reads each weight once per step
    /// from there; 0 turns them off); tiled attention likewise.
    mma_min_t: usize,
    /// The prefill attention's bf16 tensor-core kernels (attn_mma.cu) from `mma_min_t` tokens
    /// on: off with GPTOSS_CUDA_ATTN_F32=1 (the f32 tiled kernels, for differential runs).
    attn_mma: bool,
    /// Query heads of one KV group a block of those kernels serves (K/V tiles staged once for
    /// them): 2 where the group size is even, or 1 (GPTOSS_CUDA_ATTN_HEADS=1).
    attn_heads: u32,
    /// The MoE of dequantized experts goes through cuBLAS up to this many tokens
    /// (GPTOSS_CUDA_CUBLAS_MOE_MAX_T, default CUBLAS_MOE_MAX_T); above it the grouped
    /// tensor-core kernel runs.
    cublas_moe_max_t: usize,
    /// Linears with bf16 weights go through cuBLAS from `mma_min_t` up to this many tokens
    /// (GPTOSS_CUDA_CUBLAS_LINEAR_MAX_T, default all; 0: never): its kernels suit every shape,
    /// where gemm_bf16's 128x128 tiles leave most SMs idle for the narrow k/v/router
    /// products and the few row tiles of a batched decode step.
    cublas_linear_max_t: usize,
    /// The grouped MoE of few pairs per expert on the swapped-operand kernels (moe_skinny.rs);
    /// GPTOSS_CUDA_NO_SKINNY=1: the 64-pair tile kernels of mma.cu instead.
    skinny_moe: bool,
    /// GPTOSS_CUDA_SKINNY_WIDE=1: the few-pairs MoE always in 64-pair tiles (A/B runs).
    skinny_wide: bool,
    /// Few-token MoE (below `mma_min_t`) on one-pair tensor-core kernels (f16 activations):
    /// which ones (GPTOSS_CUDA_PAIR_MOE, moe_skinny::OnePair), or None: the f32 per-pair
    /// kernels.
    pair_moe: Option<moe_skinny::OnePair>,
    /// Paged decode rows on `attention_paged_gqa` (K/V chunks shared by a KV group's query
    /// heads); GPTOSS_CUDA_NO_GQA_DECODE=1: `attention_paged`, a block per (row, head).
    gqa_decode: bool,
    /// Rows a warp of the fast (few-token) MoE kernels takes at a time, gate_up and down: 2
    /// (held to 64 registers, 4 blocks an SM), or 4 (GPTOSS_CUDA_MOE_ROWS=4 sets both,
    /// GPTOSS_CUDA_MOE_DOWN_ROWS the down projection's alone).
    moe_rows: (usize, usize),
    /// cuBLAS for the large bf16 products (linears; the experts with --dequantize): its description when in use, else
    /// why not (see `open_cublas`).
    cublas: std::result::Result<String, String>,
    /// One-token MoE combine + add + norm inside the next linears' GEMV (fusion.rs
    /// MoeNormLinears); GPTOSS_CUDA_GEMV_COMBINE=0 turns it off.
    gemv_combine: bool,
    /// Programmatic dependent launches for the kernels that wait for their inputs
    /// (`launch_early`): kernels built for sm_90+ (griddepcontrol), GPTOSS_CUDA_PDL not 0.
    early: bool,
    /// Kernels not launched at all (GPTOSS_CUDA_TIMING_SKIP, comma-separated names): a timing
    /// ablation (what the step costs without them), whose outputs are wrong.
    timing_skip: Vec<String>,
    /// GPTOSS_CUDA_GRAPH=0 turns off replaying repeated steps as CUDA graphs.
    graphs: bool,
    /// The last step's recorded launches, and a captured graph of a repeated one.
    last_launches: Vec<driver::Launch>,
    graph: Option<(Vec<driver::Launch>, cudarc::driver::sys::CUgraphExec)>,
    /// The last executed graph when its launches were the captured graph's and no buffer has
    /// been allocated, freed or loaded since: the same graph again launches the captured one
    /// without binding, fusing and recording it (a decode step's ~150 us of host time, with
    /// the GPU idle). GPTOSS_CUDA_FAST_REPLAY=0 turns this off.
    replay_ready: Option<Graph>,
    fast_replay: bool,
    /// `decode_chain`'s tokens on the device (its own allocation, outside the pool the
    /// captured graph's temporaries come from) and how many it holds.
    chain_tokens: Option<(CUdeviceptr, usize)>,
    /// GPTOSS_CUDA_PROFILE=1: per-node device times, aggregated by op and shape.
    profile: Option<Profile>,
    /// GPTOSS_CUDA_STEP_TIMES=1: where a step's wall time goes on the host (printed at exit).
    step_times: Option<StepTimes>,
    /// The shard this instance runs of a model split over several GPUs.
    shard: Option<gptoss_core::collective::ShardOptions>,
    gpu: Gpu,
    _flavor: PhantomData<F>,
}

/// Where the wall time of `execute` calls goes, on the host's clock: between one execute's end
/// and the next one's start (the caller's work: building the step, uploads, downloads),
/// inside execute before its launches are issued (binding, fusion, recording and comparing the
/// launches), and waiting for the GPU after them. The GPU idles through the first two.
/// Medians, so that the few loads and prefills among the many decode steps do not count.
#[derive(Default)]
struct StepTimes {
    /// (between, before the launches, waiting) of each execute after the first, seconds.
    samples: Vec<[f64; 3]>,
    last_end: Option<std::time::Instant>,
}

impl StepTimes {
    fn report(&self, name: &str) -> String {
        let median_us = |i: usize| {
            let mut v: Vec<f64> = self.samples.iter().map(|s| s[i]).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).map_or(0.0, |s| 1e6 * s)
        };
        format!(
            "{name}: {} executes; medians: {:.1} us between two, {:.1} us in one before its \
             launches, {:.1} us waiting for the GPU\n",
            self.samples.len(),
            median_us(0),
            median_us(1),
            median_us(2)
        )
    }
}

/// Device time per (op, output shape), printed to stderr when the backend is dropped
/// (GPTOSS_CUDA_PROFILE=2: after every execute too).
#[derive(Default)]
struct Profile {
    events: Vec<cudarc::driver::sys::CUevent>,
    /// key -> (nodes, total ms)
    table: HashMap<String, (u64, f64)>,
    executes: u64,
    every: bool,
}

// Event and graph handles belong to the context, which `bind` makes current on whichever
// thread calls in (as for the Gpu's stream).
unsafe impl<F: Flavor> Send for Cuda<F> {}

impl Profile {
    fn report(&self, name: &str) -> String {
        let mut rows: Vec<(&String, &(u64, f64))> = self.table.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        let mut out = format!(
            "{name} profile: {} executes, {:.3} ms of node time\n{:>10} {:>8} {:>10} {:>6}  op [output shape]\n",
            self.executes, total, "total ms", "nodes", "us/node", "%"
        );
        for (k, (n, ms)) in rows {
            out += &format!(
                "{:>10.3} {:>8} {:>10.2} {:>6.1}  {k}\n",
                ms,
                n,
                1000.0 * ms / *n as f64,
                100.0 * ms / total.max(1e-12)
            );
        }
        out
    }
}

impl<F: Flavor> Cuda<F> {
    /// The device this instance runs on, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn device_name(&self) -> String {
        let (a, b) = self.gpu.info.cc;
        format!("{} (sm_{a}{b})", self.gpu.info.name)
    }

    /// The NVRTC target the kernels were built for, e.g. "sm_90a" or "compute_80".
    pub fn arch(&self) -> &str {
        &self.kernels.arch
    }

    /// How many expert matrices are held dequantized to bf16 (--dequantize).
    pub fn dequantized_experts(&self) -> usize {
        self.bf16_experts.len()
    }

    /// How many MoE runs took the swapped-operand kernels for few pairs per expert.
    pub fn skinny_moe_runs(&self) -> u64 {
        self.skinny_moe_runs
    }

    /// How many paged attentions ran their decode rows on the GQA-shared kernel.
    pub fn attention_gqa_runs(&self) -> u64 {
        self.attention_gqa_runs
    }

    /// How many MoE runs of few tokens took the one-pair tensor-core kernels.
    pub fn moe_pair_runs(&self) -> u64 {
        self.moe_pair_runs
    }

    /// How many MoE runs took their token's top-k from the router's logits themselves.
    pub fn topk_in_moe_runs(&self) -> u64 {
        self.topk_in_moe_runs
    }

    /// The experts whose logits one block of `add_norm_router_logits` forms: two for 120b's
    /// 128 (64 blocks), one for 20b's 32, at most 8 (eight warps, four units an expert).
    /// H100, `--prompt 512 --gen 256`: 120b 345.4 / 348.3 / 345.5 / 340.9 tok/s with 1 / 2 / 4 /
    /// 8 experts a block; 20b 488 (1, two runs) / 490.6 (2) / 487.6 (4).
    pub(crate) fn router_experts_per_block(&self, experts: usize) -> usize {
        self.router_epb
            .unwrap_or_else(|| experts.div_ceil(64))
            .clamp(1, 8)
    }

    /// Whether the kernels that wait for their inputs are launched early (programmatic
    /// dependent launch, sm_90+ builds; GPTOSS_CUDA_PDL=0 turns it off).
    pub fn early_launches(&self) -> bool {
        self.early
    }

    /// How many router + top-k runs took the spread kernel (one block per expert).
    pub fn router_spread_runs(&self) -> u64 {
        self.router_spread_runs
    }

    /// How many of those also formed the residual add and RMSNorm before the router
    /// (`add_norm_router_spread`).
    pub fn add_norm_router_runs(&self) -> u64 {
        self.add_norm_router_runs
    }

    /// How many MoE nodes ran through the pipelined prefill kernels (moe_gate_up_v2).
    pub fn moe_v2_runs(&self) -> u64 {
        self.moe_v2_runs
    }

    /// Prefill MoE on the older 128-pair kernels (true) or the pipelined ones (false, the
    /// default unless GPTOSS_CUDA_MOE_MMA_V1=1); for differential tests.
    pub fn set_moe_mma_v1(&mut self, on: bool) {
        self.moe_mma_v1 = on;
    }

    /// The cuBLAS this backend runs --dequantize's large products with ("cuBLAS 13.0.2
    /// (path)"), or why it runs its own kernels instead (not --dequantize, disabled, not
    /// found).
    pub fn cublas(&self) -> Result<String> {
        self.cublas
            .clone()
            .map_err(|e| Error::backend(F::NAME, format!("cuBLAS is not in use: {e}")))
    }

    /// How many RoPE + one-token attention runs were fused (no RoPE launch).
    pub fn rope_attention_runs(&self) -> u64 {
        self.rope_attention_runs
    }

    /// How many prefill attention launches ran on the bf16 tensor-core kernels.
    pub fn attention_mma_runs(&self) -> u64 {
        self.attention_mma_runs
    }

    /// Where each kernel family came from (cache or a fresh NVRTC compile).
    pub fn module_origins(&self) -> &[ModuleOrigin] {
        &self.kernels.origins
    }

    fn open(options: &PluginOptions) -> Result<Cuda<F>> {
        driver::set_flavor(F::PORTABLE);
        let needs = if F::PORTABLE {
            "sm_70+ (Volta or newer)"
        } else {
            "sm_90+ (Hopper/Blackwell)"
        };
        if !driver::driver_present() {
            return Err(Error::backend(
                F::NAME,
                format!(
                    "{}; {} needs an NVIDIA GPU ({needs}) and its driver; try --backend cpu",
                    gptoss_gpu_detect::NO_DRIVER,
                    F::NAME
                ),
            ));
        }
        let gpu = Gpu::open(options.device)?;
        let cc = gpu.info.cc;
        let min = if F::PORTABLE { (7, 0) } else { (9, 0) };
        if cc < min {
            let hint = if F::PORTABLE || cc < (7, 0) {
                "wgpu"
            } else {
                "cuda-bf16"
            };
            return Err(Error::backend(
                F::NAME,
                format!(
                    "{}: needs {needs}, found sm_{}{}; try --backend {hint}",
                    gpu.info.name, cc.0, cc.1
                ),
            ));
        }
        let (arch, skip, target_cc) = if F::PORTABLE {
            let (arch, target) = portable_target(cc)?;
            (arch, portable_skip(target), target)
        } else {
            (arch_for(cc), kernels::MXFP4_SKIP, cc)
        };
        let kernels = kernels::Kernels::load(&gpu, &arch, skip)?;
        let err = gpu
            .malloc(16)
            .map_err(|e| driver::cuda_err("allocating the error word", e))?;
        let done_counters = gpu
            .malloc(4 * ops::ROUTER_TOKENS)
            .map_err(|e| driver::cuda_err("allocating the router's counters", e))?;
        let router_logits = gpu
            .malloc(4 * ops::TOPK_IN_MOE_MAX_E)
            .map_err(|e| driver::cuda_err("allocating the router's logits", e))?;
        let env_on = |k: &str| {
            std::env::var(k)
                .map(|v| !v.is_empty() && v != "0")
                .unwrap_or(false)
        };
        // A switch that is on unless set to 0.
        let env_not_off = |k: &str| std::env::var(k).map_or(true, |v| v != "0");
        let profile = std::env::var("GPTOSS_CUDA_PROFILE")
            .ok()
            .filter(|v| !v.is_empty() && v != "0")
            .map(|v| Profile {
                every: v == "2",
                ..Default::default()
            });
        let me = Cuda {
            buffers: HashMap::new(),
            next_id: 1,
            pool: HashMap::new(),
            pool_used: Default::default(),
            rope_tables: Vec::new(),
            dequantize: options.dequantize,
            pending_blocks: HashMap::new(),
            bf16_experts: HashSet::new(),
            err,
            done_counters,
            router_spread_runs: 0,
            add_norm_router_runs: 0,
            router_logits,
            deferred_topk: None,
            topk_in_moe: env_not_off("GPTOSS_CUDA_TOPK_IN_MOE"),
            router_epb: std::env::var("GPTOSS_CUDA_ROUTER_EPB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok()),
            topk_in_moe_runs: 0,
            skinny_moe_runs: 0,
            moe_pair_runs: 0,
            attention_gqa_runs: 0,
            rope_attention_runs: 0,
            attention_mma_runs: 0,
            moe_v2_runs: 0,
            moe_mma_v1: env_on("GPTOSS_CUDA_MOE_MMA_V1"),
            kernels,
            fast: !env_on("GPTOSS_CUDA_NO_FUSION"),
            mma_min_t: std::env::var("GPTOSS_CUDA_MMA_MIN_T")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(16, |v| if v == 0 { usize::MAX } else { v }),
            attn_mma: !env_on("GPTOSS_CUDA_ATTN_F32"),
            attn_heads: if std::env::var("GPTOSS_CUDA_ATTN_HEADS").is_ok_and(|v| v == "1") {
                1
            } else {
                2
            },
            cublas_moe_max_t: std::env::var("GPTOSS_CUDA_CUBLAS_MOE_MAX_T")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(CUBLAS_MOE_MAX_T),
            cublas_linear_max_t: std::env::var("GPTOSS_CUDA_CUBLAS_LINEAR_MAX_T")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(usize::MAX),
            skinny_moe: !env_on("GPTOSS_CUDA_NO_SKINNY"),
            skinny_wide: env_on("GPTOSS_CUDA_SKINNY_WIDE"),
            pair_moe: moe_skinny::OnePair::from_env(),
            gqa_decode: !env_on("GPTOSS_CUDA_NO_GQA_DECODE"),
            moe_rows: {
                let rows = |var: &str, default: usize| match std::env::var(var).as_deref() {
                    Ok("4") => 4,
                    Ok("2") => 2,
                    _ => default,
                };
                let both = rows("GPTOSS_CUDA_MOE_ROWS", 2);
                (both, rows("GPTOSS_CUDA_MOE_DOWN_ROWS", both))
            },
            gemv_combine: env_not_off("GPTOSS_CUDA_GEMV_COMBINE"),
            early: target_cc.0 >= 9 && env_not_off("GPTOSS_CUDA_PDL"),
            timing_skip: timing_skip_from_env(),
            cublas: Err("not set up yet".into()),
            graphs: env_not_off("GPTOSS_CUDA_GRAPH")
                && profile.is_none()
                && std::env::var_os("GPTOSS_CUDA_SYNC").is_none(),
            last_launches: Vec::new(),
            graph: None,
            replay_ready: None,
            fast_replay: env_not_off("GPTOSS_CUDA_FAST_REPLAY"),
            chain_tokens: None,
            profile,
            step_times: env_on("GPTOSS_CUDA_STEP_TIMES").then(StepTimes::default),
            shard: options.shard.clone().filter(|s| s.world > 1),
            gpu,
            _flavor: PhantomData,
        };
        // Without a tensor-core family (its compile failed) the large-T linear and
        // MoE stay on the f32 kernels whatever GPTOSS_CUDA_MMA_MIN_T says.
        let mut me = me;
        if !me.kernels.has("gemm_bf16") {
            me.mma_min_t = usize::MAX;
        }
        if me.mma_min_t == usize::MAX {
            me.pair_moe = None;
        }
        if me.dequantize && !me.kernels.has("moe_dequant_bf16") {
            return Err(Error::backend(
                F::NAME,
                dequantize_refusal(&me.device_name(), &arch, target_cc),
            ));
        }
        me.cublas = me.open_cublas(env_on("GPTOSS_CUDA_NO_CUBLAS"));
        me.gpu.memset_zero(me.err, 16)?;
        me.gpu
            .memset_zero(me.done_counters, 4 * ops::ROUTER_TOKENS)?;
        me.gpu.sync()?;
        Ok(me)
    }

    /// cuBLAS for the large bf16 products: the linears from `mma_min_t` tokens and, with
    /// --dequantize, the experts (GPTOSS_CUDA_NO_CUBLAS=1: our tensor-core kernels instead). When it cannot be used the reason is printed once a process and the
    /// backend keeps its own kernels. (stderr, not tracing: a plugin library has its own copy
    /// of tracing's dispatcher, which the host's subscriber never sees.)
    fn open_cublas(&mut self, disabled: bool) -> std::result::Result<String, String> {
        if !self.dequantize && self.cublas_linear_max_t == 0 {
            return Err(
                "GPTOSS_CUDA_CUBLAS_LINEAR_MAX_T=0 and no --dequantize leave cuBLAS nothing to do"
                    .into(),
            );
        }
        if disabled {
            return Err("GPTOSS_CUDA_NO_CUBLAS is set".into());
        }
        if !self.fast {
            return Err("GPTOSS_CUDA_NO_FUSION=1 selects the exact f32 kernels".into());
        }
        if !self.kernels.has("f32_to_bf16") || self.mma_min_t == usize::MAX {
            return Err(format!(
                "the bf16 tensor-core paths are off on {} (GPTOSS_CUDA_MMA_MIN_T=0 or no mma \
                 kernels)",
                self.device_name()
            ));
        }
        let opened = cublas::describe().and_then(|d| self.gpu.enable_cublas().map(|_| d));
        opened.map_err(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "{}: the large bf16 products run on our own tensor-core kernels instead of \
                     cuBLAS: {e}",
                    F::NAME
                )
            });
            e.to_string()
        })
    }

    /// Allocate device memory, dropping pooled temporaries and retrying once when the GPU is
    /// full; a clear error names the size, the tensor and the free memory otherwise.
    fn device_alloc(&mut self, bytes: usize, name: &str) -> Result<CUdeviceptr> {
        match self.gpu.malloc(bytes) {
            Ok(p) => return Ok(p),
            Err(e) if e.0 != cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                return Err(driver::cuda_err(
                    &format!("allocating {bytes} bytes for '{name}'"),
                    e,
                ))
            }
            Err(_) => {}
        }
        self.drain_pool()?;
        self.gpu.malloc(bytes).map_err(|e| {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let (free, total) = self.gpu.mem_info();
                Error::backend(
                    F::NAME,
                    format!(
                        "out of GPU memory allocating {bytes} bytes for '{name}' (free {free} of \
                         {total} bytes on {}); use a shorter context or a smaller model",
                        self.gpu.info.name
                    ),
                )
            } else {
                driver::cuda_err(&format!("allocating {bytes} bytes for '{name}'"), e)
            }
        })
    }

    fn drain_pool(&mut self) -> Result<()> {
        self.gpu.sync()?;
        for (_, v) in self.pool.drain() {
            for p in v {
                self.gpu.free(p)?;
            }
        }
        Ok(())
    }

    /// A temporary of `bytes` bytes (from the pool when one of that size is free).
    fn take_temp(&mut self, bytes: usize, name: &str) -> Result<CUdeviceptr> {
        let bytes = bytes.max(1);
        self.pool_used.insert(bytes);
        // The lowest free address: the same step gets the same pointers whatever order
        // buffers were returned in (so repeated steps can replay as one CUDA graph).
        if let Some(v) = self.pool.get_mut(&bytes) {
            if let Some((at, _)) = v.iter().enumerate().min_by_key(|(_, p)| **p) {
                return Ok(v.swap_remove(at));
            }
        }
        self.device_alloc(bytes, name)
    }

    fn give_temp(&mut self, bytes: usize, p: CUdeviceptr) {
        self.pool.entry(bytes.max(1)).or_default().push(p);
    }

    /// Keep only the size classes the last step used, so the pool stays one step's worth.
    fn trim_pool(&mut self) -> Result<()> {
        let unused: Vec<usize> = self
            .pool
            .keys()
            .filter(|k| !self.pool_used.contains(k))
            .copied()
            .collect();
        if !unused.is_empty() {
            self.gpu.sync()?;
        }
        for k in unused {
            for p in self.pool.remove(&k).unwrap_or_default() {
                self.gpu.free(p)?;
            }
        }
        self.pool_used.clear();
        Ok(())
    }

    /// --dequantize: with `scales` of the expert blocks in buffer `blocks` loaded, expand them
    /// to bf16 on the device (exact) and free the packed copy. The buffer keeps its MXFP4
    /// desc (what the graph binds); its pointer now holds [E, rows, K] bf16.
    fn dequantize_experts(
        &mut self,
        blocks: BufferId,
        scales: CUdeviceptr,
        stem: &str,
    ) -> Result<()> {
        let b = &self.buffers[&blocks];
        let (packed, groups) = (b.ptr, b.desc.byte_size() / 16);
        let out = self
            .device_alloc(groups * 64, &format!("{stem} dequantized to bf16"))
            .map_err(|e| {
                Error::backend(
                    F::NAME,
                    format!("{e}; --dequantize holds the experts at 4x their MXFP4 size: drop it"),
                )
            })?;
        let launched = self.launch(
            "moe_dequant_bf16",
            (groups.div_ceil(256) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                driver::Arg::Ptr(packed),
                driver::Arg::Ptr(scales),
                driver::Arg::Ptr(out),
                driver::Arg::I64(groups as i64),
            ],
        );
        if let Err(e) = launched.and_then(|_| self.gpu.sync()) {
            let _ = self.gpu.free(out);
            return Err(e);
        }
        self.gpu.free(packed)?;
        self.buffers.get_mut(&blocks).expect("looked up above").ptr = out;
        self.bf16_experts.insert(out);
        Ok(())
    }

    /// Launch kernel `name` (looked up among the loaded families) on the backend's stream.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[driver::Arg],
    ) -> Result<()> {
        self.launch_as(name, grid, block, smem, args, false)
    }

    /// `launch` as a programmatic dependent launch where the kernels support it (`early`): the
    /// kernel starts while the previous one finishes, and reads nothing that earlier kernels of
    /// the step wrote before its griddepcontrol.wait (pdl_wait in common.cuh).
    pub(crate) fn launch_early(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[driver::Arg],
    ) -> Result<()> {
        self.launch_as(name, grid, block, smem, args, self.early)
    }

    /// `launch` (`early` false) or `launch_early`: kernels GPTOSS_CUDA_TIMING_SKIP names are
    /// left out.
    fn launch_as(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[driver::Arg],
        early: bool,
    ) -> Result<()> {
        if self.timing_skip.iter().any(|s| s == name) {
            return Ok(());
        }
        let f = self.kernels.get(name)?;
        self.gpu.launch(name, f, grid, block, smem, args, early)
    }

    fn rope_table(&mut self, params: &RopeParams) -> Result<CUdeviceptr> {
        if let Some((_, p)) = self.rope_tables.iter().find(|(q, _)| q == params) {
            return Ok(*p);
        }
        let inv: Vec<u8> = params
            .inv_freq()
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let p = self.device_alloc(inv.len(), "rope inv_freq")?;
        self.gpu.htod(p, &inv)?;
        self.rope_tables.push((*params, p));
        Ok(p)
    }

    /// The error a kernel reported in the error word `raw` (read after the step), if any; the
    /// word is cleared for the next step.
    fn check_kernel_errors(&mut self, raw: [u8; 16]) -> Result<()> {
        let w: Vec<i32> = raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if w[0] == 0 {
            return Ok(());
        }
        self.gpu.memset_zero(self.err, 16)?;
        self.gpu.sync()?;
        let (a, b, c) = (w[1], w[2], w[3]);
        Err(Error::Input(match w[0] {
            1 => format!(
                "token id {a} (at index {c}) is out of range for the vocabulary of {b} tokens (ids 0..{b})"
            ),
            2 => format!(
                "attention: position {a} is beyond the KV cache capacity of {b} positions (0..{b}); \
                 use a longer context"
            ),
            3 => format!(
                "moe: token {c} routed to expert {a}, but there are {b} experts (ids 0..{b})"
            ),
            4 => format!("rope: negative position {a}"),
            code => format!("a kernel reported error code {code} ({a}, {b}, {c})"),
        }))
    }

    fn run_graph(&mut self, graph: &Graph, ptrs: &mut [Option<CUdeviceptr>]) -> Result<()> {
        let mut last_use = vec![usize::MAX; graph.values.len()];
        for (n, node) in graph.nodes.iter().enumerate() {
            for id in node.inputs.iter().chain(&node.outputs) {
                last_use[id.0 as usize] = n;
            }
        }
        self.deferred_topk = None;
        // Nodes up to here ran as part of a fused run (fusion.rs) that started earlier.
        let mut fused_until = 0;
        for (n, node) in graph.nodes.iter().enumerate() {
            let pattern = if n >= fused_until {
                fusion::pattern_at(self, graph, n, &last_use)
            } else {
                None
            };
            let span = pattern.map_or(1, |p| p.len());
            for later in &graph.nodes[n..n + span] {
                for id in &later.outputs {
                    let v = &graph.values[id.0 as usize];
                    if ptrs[id.0 as usize].is_none() {
                        let p = self.take_temp(v.desc.byte_size(), &v.name)?;
                        ptrs[id.0 as usize] = Some(p);
                    }
                }
            }
            if let Some(p) = self.profile.as_mut() {
                while p.events.len() < 2 * (n + 1) {
                    p.events.push(self.gpu.event()?);
                }
                self.gpu.record(p.events[2 * n])?;
            }
            let ran = if n < fused_until {
                Ok(())
            } else if let Some(p) = pattern {
                fused_until = n + span;
                fusion::run(self, graph, n, p, ptrs)
            } else {
                ops::run_node(self, graph, node, ptrs)
            };
            if let Some(p) = self.profile.as_ref() {
                self.gpu.record(p.events[2 * n + 1])?;
            }
            ran.map_err(|e| match e {
                Error::Unsupported { .. } | Error::Input(_) => e,
                other => Error::backend(
                    F::NAME,
                    format!(
                        "{} ({}): {other}",
                        node.op.name(),
                        graph.values[node.outputs[0].0 as usize].name
                    ),
                ),
            })?;
            for id in node.inputs.iter().chain(&node.outputs) {
                let i = id.0 as usize;
                if last_use[i] == n && matches!(graph.values[i].kind, ValueKind::Temp) {
                    if let Some(p) = ptrs[i].take() {
                        self.give_temp(graph.values[i].desc.byte_size(), p);
                    }
                }
            }
        }
        if self.deferred_topk.take().is_some() {
            return Err(Error::backend(
                F::NAME,
                "internal: a router's top-k was left to an MoE node that did not run",
            ));
        }
        Ok(())
    }
}

impl<F: Flavor> Backend for Cuda<F> {
    fn name(&self) -> &str {
        F::NAME
    }

    fn probe(&self) -> ProbeReport {
        probe::probe::<F>()
    }

    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        self.replay_ready = None; // may take a pointer the captured graph uses as a temporary
        self.gpu.bind()?;
        let id = BufferId(self.next_id);
        let ptr = self.take_temp(desc.byte_size(), &format!("buffer {} {desc}", id.0))?;
        self.gpu.memset_zero(ptr, desc.byte_size())?;
        self.next_id += 1;
        self.buffers.insert(
            id,
            DevBuf {
                ptr,
                desc: desc.clone(),
            },
        );
        Ok(id)
    }

    fn free(&mut self, id: BufferId) -> Result<()> {
        self.replay_ready = None;
        self.gpu.bind()?;
        let b = self
            .buffers
            .remove(&id)
            .ok_or_else(|| Error::backend(F::NAME, format!("free of unknown buffer {}", id.0)))?;
        if self.bf16_experts.remove(&b.ptr) {
            // Not the desc's size: its own allocation.
            self.gpu.sync()?;
            return self.gpu.free(b.ptr);
        }
        // Back to the pool (stream order keeps later reuse safe); trimmed after a step that
        // did not use its size.
        self.give_temp(b.desc.byte_size(), b.ptr);
        Ok(())
    }

    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
        self.gpu.bind()?;
        let b = self
            .buffers
            .get(&id)
            .ok_or_else(|| Error::backend(F::NAME, format!("upload to unknown buffer {}", id.0)))?;
        b.desc
            .check_upload(format!("buffer {}", id.0), data.len())?;
        self.gpu.htod(b.ptr, data)
    }

    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        self.gpu.bind()?;
        let b = self.buffers.get(&id).ok_or_else(|| {
            Error::backend(F::NAME, format!("download of unknown buffer {}", id.0))
        })?;
        let mut out = vec![0u8; b.desc.byte_size()];
        self.gpu.dtoh(&mut out, b.ptr)?;
        Ok(out)
    }

    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
        self.replay_ready = None;
        self.gpu.bind()?;
        if data.len() != desc.byte_size() {
            return Err(Error::tensor(
                name,
                format!(
                    "{} bytes of data for {desc} ({} bytes)",
                    data.len(),
                    desc.byte_size()
                ),
            ));
        }
        let ptr = self.device_alloc(desc.byte_size(), name)?;
        if let Err(e) = self.gpu.htod(ptr, data) {
            let _ = self.gpu.free(ptr);
            return Err(e);
        }
        let id = BufferId(self.next_id);
        self.next_id += 1;
        self.buffers.insert(
            id,
            DevBuf {
                ptr,
                desc: desc.clone(),
            },
        );
        if self.dequantize {
            match desc.dtype {
                DType::Mxfp4Blocks => {
                    if let Some(stem) = name.strip_suffix("_blocks") {
                        self.pending_blocks.insert(stem.to_string(), id);
                    }
                }
                DType::E8m0Scales => {
                    let stem = name.strip_suffix("_scales").unwrap_or(name);
                    if let Some(blocks) = self.pending_blocks.remove(stem) {
                        self.dequantize_experts(blocks, ptr, stem)?;
                    }
                }
                _ => {}
            }
        }
        Ok(id)
    }

    fn execute(&mut self, graph: &Graph) -> Result<()> {
        let started = std::time::Instant::now();
        if self.replay_ready.as_ref() == Some(graph) {
            if let Some((_, exec)) = &self.graph {
                let exec = *exec;
                self.gpu.bind()?;
                self.gpu.graph_launch(exec)?;
                FAST_REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return self.finish_step(started, graph);
            }
        }
        self.replay_ready = None;
        self.gpu.bind()?;
        graph.validate()?;
        if self.gpu.comm.is_none() && graph.nodes.iter().any(|n| n.op == Op::AllReduceSum) {
            self.join_group()?;
        }
        let mut ptrs: Vec<Option<CUdeviceptr>> = vec![None; graph.values.len()];
        for (i, v) in graph.values.iter().enumerate() {
            if let ValueKind::Weight(b)
            | ValueKind::Input(b)
            | ValueKind::State(b)
            | ValueKind::Output(b) = v.kind
            {
                let buf = self.buffers.get(&b).ok_or_else(|| {
                    Error::backend(
                        F::NAME,
                        format!("'{}' is bound to unknown buffer {}", v.name, b.0),
                    )
                })?;
                buf.desc.check_binds(&v.name, &v.desc)?;
                ptrs[i] = Some(buf.ptr);
            }
        }
        if self.graphs {
            *self.gpu.rec.borrow_mut() = Some(Vec::new());
        }
        let mut result = self.run_graph(graph, &mut ptrs);
        let recorded = self.gpu.rec.borrow_mut().take();
        if self.graphs && recorded.is_none() {
            // The step stopped recording part way (cublas_ops::moe reads counts on the host):
            // it ran directly and is no step to compare the next one with.
            self.last_launches.clear();
        }
        // Return whatever temporaries are still out (all of them after an error).
        for (i, p) in ptrs.iter_mut().enumerate() {
            if matches!(graph.values[i].kind, ValueKind::Temp) {
                if let Some(p) = p.take() {
                    self.give_temp(graph.values[i].desc.byte_size(), p);
                }
            }
        }
        let mut replayed = false;
        if let (Ok(()), Some(launches)) = (&result, recorded) {
            result = self.issue(launches).map(|r| replayed = r);
        }
        result?;
        self.finish_step(started, graph)?;
        if replayed && self.fast_replay {
            self.replay_ready = Some(graph.clone());
        }
        self.trim_pool()
    }

    /// Step by step until the graph runs as the captured CUDA graph (its second step), then
    /// every remaining step queued at once: the captured graph, then `chain_advance` (the
    /// chosen token into the next step's input, the position on by one), with one
    /// synchronisation at the end; kernel errors of any step are reported then.
    fn decode_chain(&mut self, graph: &Graph, io: DecodeChain, steps: usize) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(steps);
        let mut token = io.first;
        while tokens.len() < steps && self.replay_ready.as_ref() != Some(graph) {
            let pos = io.start as usize + tokens.len();
            token = gptoss_core::decode_step(self, graph, &io, token, pos)?;
            tokens.push(token);
        }
        let rest = steps - tokens.len();
        if rest == 0 {
            return Ok(tokens);
        }
        // replay_ready equal to the graph means it ran as the captured one.
        let exec =
            self.graph.as_ref().map(|(_, e)| *e).ok_or_else(|| {
                Error::backend(F::NAME, "decode_chain: no captured graph to queue")
            })?;
        let (ids, pos, argmax) = (
            self.buffer_ptr(io.ids)?,
            self.buffer_ptr(io.positions)?,
            self.buffer_ptr(io.argmax)?,
        );
        let out = self.chain_tokens(rest)?;
        let started = std::time::Instant::now();
        self.gpu.bind()?;
        self.gpu.htod(ids, &(token as i32).to_le_bytes())?;
        let at = io.start as usize + tokens.len();
        self.gpu.htod(pos, &(at as i32).to_le_bytes())?;
        for j in 0..rest {
            self.gpu.graph_launch(exec)?;
            self.launch(
                "chain_advance",
                (1, 1, 1),
                (32, 1, 1),
                0,
                &[
                    driver::Arg::Ptr(argmax),
                    driver::Arg::Ptr(ids),
                    driver::Arg::Ptr(pos),
                    driver::Arg::Ptr(out),
                    driver::Arg::I32(j as i32),
                ],
            )?;
        }
        FAST_REPLAYS.fetch_add(rest as u64, std::sync::atomic::Ordering::Relaxed);
        self.finish_step(started, graph)?;
        let mut raw = vec![0u8; rest * 4];
        self.gpu.dtoh(&mut raw, out)?;
        tokens.extend(
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32),
        );
        Ok(tokens)
    }
}

impl<F: Flavor> Cuda<F> {
    /// Join the shard group's NCCL communicator (first sharded step; every rank is inside
    /// `execute` on its own thread then, as ncclCommInitRank needs).
    fn join_group(&mut self) -> Result<()> {
        let Some(shard) = self.shard.clone() else {
            return Ok(()); // not split: AllReduceSum is a copy
        };
        let id = gptoss_core::collective::exchange(&shard, nccl::unique_id)?;
        self.gpu.comm = Some(nccl::Communicator::join(&id, shard.rank, shard.world)?);
        Ok(())
    }

    /// A device buffer of at least `n` i32 for `decode_chain`'s tokens.
    fn chain_tokens(&mut self, n: usize) -> Result<CUdeviceptr> {
        if let Some((p, cap)) = self.chain_tokens {
            if cap >= n {
                return Ok(p);
            }
            self.chain_tokens = None;
            self.gpu.free(p)?;
        }
        let cap = n.next_power_of_two().max(256);
        let p = self
            .gpu
            .malloc(cap * 4)
            .map_err(|e| driver::cuda_err("allocating decode_chain's tokens", e))?;
        self.chain_tokens = Some((p, cap));
        Ok(p)
    }

    fn buffer_ptr(&self, id: BufferId) -> Result<CUdeviceptr> {
        self.buffers
            .get(&id)
            .map(|b| b.ptr)
            .ok_or_else(|| Error::backend(F::NAME, format!("unknown buffer {}", id.0)))
    }

    /// After a step's launches are issued: wait for them, note the host's times
    /// (GPTOSS_CUDA_STEP_TIMES), gather the profile and the kernels' error reports.
    fn finish_step(&mut self, started: std::time::Instant, graph: &Graph) -> Result<()> {
        let issued = std::time::Instant::now();
        // The kernels' error word comes back with the step's own synchronisation.
        let queued = self.gpu.queue_read_back(self.err, 16)?;
        self.gpu.sync()?;
        if let Some(t) = self.step_times.as_mut() {
            let end = std::time::Instant::now();
            if let Some(last) = t.last_end {
                t.samples.push([
                    (started - last).as_secs_f64(),
                    (issued - started).as_secs_f64(),
                    (end - issued).as_secs_f64(),
                ]);
            }
            t.last_end = Some(end);
        }
        self.collect_profile(graph)?;
        let mut raw = [0u8; 16];
        if queued {
            self.gpu.read_back(&mut raw);
        } else {
            self.gpu.dtoh(&mut raw, self.err)?;
        }
        self.check_kernel_errors(raw)
    }

    /// Issue a step's recorded launches: as the captured graph when the same launches ran
    /// before (decode steps repeat exactly: same kernels, pointers and sizes), captured when
    /// they repeat the previous step, else directly. True when the captured graph ran.
    fn issue(&mut self, launches: Vec<driver::Launch>) -> Result<bool> {
        if let Some((l, exec)) = &self.graph {
            if *l == launches {
                self.gpu.graph_launch(*exec)?;
                return Ok(true);
            }
        }
        if launches == self.last_launches && launches.len() > 1 {
            if let Some((_, old)) = self.graph.take() {
                self.gpu.sync()?;
                self.gpu.graph_destroy(old);
            }
            let exec = self.gpu.capture(&launches)?;
            self.gpu.graph_launch(exec)?;
            self.graph = Some((launches, exec));
            return Ok(true);
        }
        self.gpu.replay(&launches)?;
        self.last_launches = launches;
        Ok(false)
    }

    fn collect_profile(&mut self, graph: &Graph) -> Result<()> {
        let Some(p) = self.profile.as_mut() else {
            return Ok(());
        };
        p.executes += 1;
        for (n, node) in graph.nodes.iter().enumerate() {
            let ms = self.gpu.elapsed_ms(p.events[2 * n], p.events[2 * n + 1]) as f64;
            let out = &graph.values[node.outputs[0].0 as usize];
            let key = format!("{} {:?}", node.op.name(), out.desc.shape.dims());
            let e = p.table.entry(key).or_default();
            e.0 += 1;
            e.1 += ms;
        }
        if p.every {
            eprint!("{}", p.report(F::NAME));
            p.table.clear();
        }
        Ok(())
    }
}

impl<F: Flavor> Drop for Cuda<F> {
    fn drop(&mut self) {
        let _ = self.gpu.bind();
        let _ = self.gpu.sync();
        if let Some(p) = self.profile.take() {
            if !p.every && p.executes > 0 {
                eprint!("{}", p.report(F::NAME));
            }
            for ev in p.events {
                self.gpu.event_destroy(ev);
            }
        }
        if let Some(t) = self.step_times.take() {
            eprint!("{}", t.report(F::NAME));
        }
        if let Some((_, exec)) = self.graph.take() {
            self.gpu.graph_destroy(exec);
        }
        if let Some((p, _)) = self.chain_tokens.take() {
            let _ = self.gpu.free(p);
        }
        for (_, b) in self.buffers.drain() {
            let _ = self.gpu.free(b.ptr);
        }
        for (_, v) in self.pool.drain() {
            for p in v {
                let _ = self.gpu.free(p);
            }
        }
        for (_, p) in self.rope_tables.drain(..) {
            let _ = self.gpu.free(p);
        }
        let _ = self.gpu.free(self.err);
        let _ = self.gpu.free(self.done_counters);
        let _ = self.gpu.free(self.router_logits);
        self.kernels.unload(&self.gpu);
    }
}

impl<F: Flavor> PluginBackend for Cuda<F> {
    const NAME: &'static str = F::NAME;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn probe_devices() -> ProbeReport {
        probe::probe::<F>()
    }

    fn create(options: &PluginOptions) -> Result<Self> {
        // cudarc panics on a missing driver symbol: keep that inside, as an error.
        catch_unwind(AssertUnwindSafe(|| Cuda::<F>::open(options))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::backend(
                F::NAME,
                format!("the CUDA driver could not be used: {msg}"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timing_skip_lists_kernel_names() {
        assert_eq!(
            super::kernel_names(" attention_split, ,attention_merge,"),
            ["attention_split", "attention_merge"]
        );
        assert!(super::kernel_names("").is_empty());
    }

    use super::dequantize_refusal;

    #[test]
    fn dequantize_refusal_says_why_per_generation() {
        let turing = dequantize_refusal("Tesla T4 (sm_75)", "compute_75", (7, 5));
        assert!(
            turing.contains("f16 operands") && turing.contains("Tesla T4"),
            "{turing}"
        );
        let volta = dequantize_refusal("Tesla V100 (sm_70)", "compute_70", (7, 0));
        assert!(
            volta.contains("f16 operands") && volta.contains("Tesla V100"),
            "{volta}"
        );
        let failed = dequantize_refusal("A100 (sm_80)", "compute_80", (8, 0));
        assert!(failed.contains("did not compile"), "{failed}");
        for m in [turing, volta, failed] {
            assert!(m.starts_with("--dequantize needs bf16 tensor cores"), "{m}");
            assert!(m.ends_with("drop --dequantize"), "{m}");
        }
    }
}
