//! The CUDA C kernel families: sources (src/kernels/*.cu), run-time compilation with NVRTC for
//! the detected arch, and the on-disk cubin cache.

use std::collections::HashMap;
use std::path::PathBuf;

use gptoss_core::{Error, Result};

use crate::driver::{backend, CUfunction, Gpu};
use crate::nvrtc::{cache_dir, cache_store, fnv64, Nvrtc};

const COMMON: &str = include_str!("kernels/common.cuh");

/// One .cu file and the kernels it defines.
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
    /// A fast path with a fallback: when it does not compile, the error (the full NVRTC log)
    /// goes to stderr and the ops use their other kernels.
    pub optional: bool,
    /// NVRTC options of this family besides the target ("-DMMA_F16").
    pub defines: &'static [&'static str],
}

/// The tensor-core family with bf16 operands (sm_80+).
pub const MMA_BF16: &str = "mma";
/// The same source with f16 operands (`-DMMA_F16`), for Turing (sm_75..sm_79): f16 tensor
/// cores (mma.sync m16n8k8) but no bf16 ones. Holds the bf16 family's kernels except the
/// --dequantize and cuBLAS ones, under the same names.
pub const MMA_F16: &str = "mma_f16";
/// The f16 family for Volta (sm_70..sm_74: `-DMMA_F16 -DMMA_SM70`): f16 tensor cores through
/// mma.sync m8n8k4 (neither m16n8k8 nor ldmatrix exist before sm_75), fragments read from
/// shared memory with plain loads. The same kernels as [`MMA_F16`], under the same names.
pub const MMA_F16_SM70: &str = "mma_f16_sm70";
/// The few-pairs-per-expert MoE (moe_skinny.cu): mma.sync m16n8k16 with f16 operands and
/// cp.async, both sm_80+.
pub const MOE_SKINNY: &str = "moe_skinny";
/// Prefill attention on bf16 tensor cores (attn_mma.cu: mma.sync m16n8k16 .bf16, ldmatrix),
/// so sm_80+ only; elsewhere the f32 `attention_tiled` kernels run.
pub const ATTN_MMA: &str = "attn_mma";
/// The kernels both f16 builds of mma.cu provide (the bf16-row MoE and dequantization stay in
/// the bf16 build).
const MMA_F16_FUNCTIONS: &[&str] = &[
    "gemm_bf16",
    "moe_route",
    "moe_gate_up_mma",
    "moe_down_mma",
    "moe_gate_up_mma128",
    "moe_down_mma128",
];

/// Tile of the prefill MoE kernels (`moe_gate_up_v2`/`moe_down_v2`, V2_* in mma.cu): pairs,
/// output columns, k per stage, pipeline stages.
pub const MOE_V2_BM: usize = 128;
pub const MOE_V2_BN: usize = 192;
pub const MOE_V2_BK: usize = 64;
pub const MOE_V2_STAGES: usize = 4;
/// Their dynamic shared memory (`V2_SMEM`): per stage a BM x (BK + 8) bf16 A tile, BN rows of
/// BK / 2 code bytes and BN scale words; two BN x (BK + 8) bf16 decode buffers.
pub const MOE_V2_SMEM: u32 = {
    let ld = MOE_V2_BK + 8;
    let stage = MOE_V2_BM * ld * 2 + MOE_V2_BN * MOE_V2_BK / 2 + MOE_V2_BN * 4;
    (MOE_V2_STAGES * stage + 2 * MOE_V2_BN * ld * 2) as u32
};

// Within what a block may have on sm_80 (163 KiB) and sm_90 (227 KiB).
const _: () = assert!(MOE_V2_SMEM <= 163 << 10);

/// Kernels that need more than the default 48 KiB of dynamic shared memory. Where the device
/// cannot grant it (sm_86/sm_89: 99 KiB a block), they are left out and `Kernels::has` says
/// so, which sends the ops to their other kernels.
const LARGE_SMEM: &[(&str, u32)] = &[
    ("moe_gate_up_v2", MOE_V2_SMEM),
    ("moe_down_v2", MOE_V2_SMEM),
    ("moe_t1_gate_up", crate::moe_skinny::T1_SMEM_MAX as u32),
    ("moe_t1_down", crate::moe_skinny::T1_SMEM_MAX as u32),
    ("moe_t1_gate_up_w4", crate::moe_skinny::T1_SMEM_MAX as u32),
    ("moe_t1_down_w4", crate::moe_skinny::T1_SMEM_MAX as u32),
];

pub const FAMILIES: &[Family] = &[
    Family {
        name: "embed",
        source: include_str!("kernels/embed.cu"),
        functions: &["embed"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "rms_norm",
        source: include_str!("kernels/rms_norm.cu"),
        functions: &["rms_norm"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "linear",
        source: include_str!("kernels/linear.cu"),
        functions: &["linear_f32", "linear_bf16", "linear_f16"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "gemv",
        source: include_str!("kernels/gemv.cu"),
        functions: &["gemv_bf16", "gemv_bf16_t1", "gemv_bf16_t1_moe"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "rope",
        source: include_str!("kernels/rope.cu"),
        functions: &["rope"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "attention",
        source: include_str!("kernels/attention.cu"),
        functions: &["kv_write", "attention", "attention_paged"],
        optional: false,
        defines: &[],
    },
    Family {
        name: "topk_softmax",
        source: include_str!("kernels/topk_softmax.cu"),
        functions: &[
            "topk_softmax",
            "topk_softmax_warp",
            "router_topk",
            "router_topk_spread",
            "add_norm_router_spread",
            "add_norm_router_logits",
        ],
        optional: false,
        defines: &[],
    },
    Family {
        name: "moe",
        source: include_str!("kernels/moe.cu"),
        functions: &[
            "moe_gate_up",
            "moe_down",
            "moe_combine",
            "moe_gate_up_fast",
            "moe_down_fast",
            "moe_gate_up_fast2",
            "moe_down_fast2",
            "moe_gate_up_bf16",
            "moe_down_bf16",
        ],
        optional: false,
        defines: &[],
    },
    Family {
        name: "elementwise",
        source: include_str!("kernels/elementwise.cu"),
        functions: &[
            "add_f32",
            "add_i32",
            "last_row",
            "copy_f32",
            "local_experts",
            "gather_rows",
        ],
        optional: false,
        defines: &[],
    },
    Family {
        name: "argmax",
        source: include_str!("kernels/argmax.cu"),
        functions: &["argmax_rows", "chain_advance"],
        optional: false,
        defines: &[],
    },
    Family {
        name: MMA_BF16,
        source: include_str!("kernels/mma.cu"),
        functions: &[
            "gemm_bf16",
            "moe_route",
            "moe_gate_up_mma",
            "moe_down_mma",
            "moe_gate_up_mma128",
            "moe_down_mma128",
            "moe_gate_up_mma_bf16",
            "moe_down_mma_bf16",
            "moe_gate_up_mma128_bf16",
            "moe_down_mma128_bf16",
            "moe_dequant_bf16",
            "f32_to_bf16",
            "add_bias_rows",
            "moe_gather_bf16",
            "moe_swiglu_bf16",
            "moe_scatter_bias",
            "moe_gate_up_v2",
            "moe_down_v2",
            "moe_gather_tiles",
        ],
        optional: true,
        defines: &[],
    },
    Family {
        name: MMA_F16,
        source: include_str!("kernels/mma.cu"),
        functions: MMA_F16_FUNCTIONS,
        optional: true,
        defines: &["-DMMA_F16"],
    },
    Family {
        name: MMA_F16_SM70,
        source: include_str!("kernels/mma.cu"),
        functions: MMA_F16_FUNCTIONS,
        optional: true,
        defines: &["-DMMA_F16", "-DMMA_SM70"],
    },
    Family {
        name: MOE_SKINNY,
        source: include_str!("kernels/moe_skinny.cu"),
        functions: &[
            "moe_skinny_stage",
            "moe_skinny_gate_up",
            "moe_skinny_down",
            "moe_skinny4_gate_up",
            "moe_skinny4_down",
            "moe_pair_gate_up",
            "moe_pair_down",
            "moe_t1_gate_up",
            "moe_t1_down",
            "moe_t1_gate_up_w4",
            "moe_t1_down_w4",
        ],
        optional: true,
        defines: &[],
    },
    Family {
        name: "argmax_fast",
        source: include_str!("kernels/argmax_fast.cu"),
        functions: &["argmax_partial", "argmax_final"],
        optional: true,
        defines: &[],
    },
    Family {
        name: "attn_tiled",
        source: include_str!("kernels/attn_tiled.cu"),
        functions: &[
            "attention_tiled",
            "attention_split",
            "attention_merge",
            "paged_tiles_uniform",
            "attention_tiled_paged",
            "attention_paged_gqa",
        ],
        optional: true,
        defines: &[],
    },
    Family {
        name: ATTN_MMA,
        source: include_str!("kernels/attn_mma.cu"),
        functions: &[
            "attention_mma",
            "attention_mma2",
            "attention_mma_paged",
            "attention_mma_paged2",
        ],
        optional: true,
        defines: &[],
    },
    Family {
        name: "decode",
        source: include_str!("kernels/decode.cu"),
        functions: &["add_rms_norm", "moe_combine_add_norm", "rope_pairs"],
        optional: true,
        defines: &[],
    },
];

/// The cuda-mxfp4 NVRTC target for a compute capability: the arch-specific variant from Hopper
/// on (sm_90a, sm_100a, sm_120a), so later kernels may use wgmma and friends.
pub fn arch_for(cc: (u32, u32)) -> String {
    let suffix = if cc.0 >= 9 { "a" } else { "" };
    format!("sm_{}{}{suffix}", cc.0, cc.1)
}

/// The portable (cuda-bf16) NVRTC target: the virtual architecture of the device, "compute_86"
/// (PTX that the driver JIT-compiles), so nothing past that generation is emitted.
pub fn portable_arch_for(cc: (u32, u32)) -> String {
    format!("compute_{}{}", cc.0, cc.1)
}

/// The kernel families the portable flavor leaves out on a target: one tensor-core family is
/// built, with bf16 operands (mma.sync m16n8k16 .bf16) from sm_80, with f16 operands
/// (m16n8k8 .f16, ldmatrix) on sm_75..sm_79, and with f16 operands through Volta's
/// mma.sync m8n8k4 (plain shared-memory loads) on sm_70..sm_74. The bf16 attention
/// ([`ATTN_MMA`]) goes with the bf16 family.
pub fn portable_skip(cc: (u32, u32)) -> &'static [&'static str] {
    if cc >= (8, 0) {
        &[MMA_F16, MMA_F16_SM70]
    } else if cc >= (7, 5) {
        &[MMA_BF16, MMA_F16_SM70, MOE_SKINNY, ATTN_MMA]
    } else {
        &[MMA_BF16, MMA_F16, MOE_SKINNY, ATTN_MMA]
    }
}

/// The families the cuda-mxfp4 flavor (sm_90+) leaves out: the f16 tensor-core builds.
pub const MXFP4_SKIP: &[&str] = &[MMA_F16, MMA_F16_SM70];

/// What to do when NVRTC refused `arch` for being too old: NVRTC 13 (CUDA 13) no longer
/// compiles for targets before sm_75 (Volta: "invalid value for --gpu-architecture"); CUDA
/// 12.x's NVRTC still does, and driver 580 (the last branch for Volta) runs its PTX.
pub fn nvrtc_target_hint(arch: &str, nvrtc: (i32, i32)) -> String {
    let cc: u32 = arch
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    if nvrtc.0 >= 13 && cc > 0 && cc < 75 {
        format!(
            "\nNVRTC {}.{} no longer compiles for {arch} (CUDA 13 dropped targets before \
             sm_75): point GPTOSS_NVRTC at a CUDA 12 libnvrtc.so.12 (CUDA 12.x toolkit, or pip's \
             nvidia-cuda-nvrtc-cu12 wheel: nvidia/cuda_nvrtc/lib/libnvrtc.so.12)",
            nvrtc.0, nvrtc.1
        )
    } else {
        String::new()
    }
}

/// NVRTC options for `family` on `arch`.
pub fn compile_options(arch: &str, family: &Family) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "-lineinfo".to_string(),
    ];
    options.extend(family.defines.iter().map(|d| d.to_string()));
    options
}

/// Raises the dynamic shared memory limit of `func` when `name` needs more than the default
/// (LARGE_SMEM); false when the device refuses (the kernel is then not used).
fn grant_smem(func: CUfunction, name: &str) -> bool {
    let Some(&(_, bytes)) = LARGE_SMEM.iter().find(|(n, _)| *n == name) else {
        return true;
    };
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
    // SAFETY: func was just obtained from a loaded module.
    unsafe { cudarc::driver::result::function::set_function_attribute(func, MAX_DYN, bytes as i32) }
        .is_ok()
}

/// The family named `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// How one family's module was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleOrigin {
    pub family: &'static str,
    pub from_cache: bool,
    pub cache_path: Option<PathBuf>,
}

pub struct Kernels {
    modules: Vec<cudarc::driver::sys::CUmodule>,
    functions: HashMap<&'static str, CUfunction>,
    pub origins: Vec<ModuleOrigin>,
    pub arch: String,
}

// Module and function handles belong to the context, usable from any thread it is current on.
unsafe impl Send for Kernels {}

impl Kernels {
    /// Compile (or load from the cache) every family for `arch` ("sm_90a": a cubin;
    /// "compute_80": PTX the driver JIT-compiles), leaving out the families in `skip`.
    pub fn load(gpu: &Gpu, arch: &str, skip: &[&str]) -> Result<Kernels> {
        let arch = arch.to_string();
        let ext = if arch.starts_with("compute_") {
            "ptx"
        } else {
            "cubin"
        };
        let families: Vec<&'static Family> = FAMILIES
            .iter()
            .filter(|f| !skip.contains(&f.name))
            .collect();
        let dir = cache_dir().map(|d| d.join(backend()));
        let key = |f: &Family| {
            fnv64(&[
                COMMON.as_bytes(),
                f.source.as_bytes(),
                compile_options(&arch, f).join(" ").as_bytes(),
            ])
        };
        let path_of = |f: &Family| {
            dir.as_ref().map(|d| {
                d.join(format!(
                    "{}-{arch}-cuda{}.{}-{:016x}.{ext}",
                    f.name,
                    gpu.driver.0,
                    gpu.driver.1,
                    key(f)
                ))
            })
        };
        let mut k = Kernels {
            modules: Vec::new(),
            functions: HashMap::new(),
            origins: Vec::new(),
            arch: arch.clone(),
        };
        // Cache hits first; whatever misses is compiled (in parallel) below.
        let mut missing: Vec<&Family> = Vec::new();
        for f in families {
            let path = path_of(f);
            let cached = path.as_ref().and_then(|p| std::fs::read(p).ok());
            match cached.map(|img| gpu.load_module(&img)) {
                Some(Ok(m)) => {
                    k.add(gpu, f, m)?;
                    k.origins.push(ModuleOrigin {
                        family: f.name,
                        from_cache: true,
                        cache_path: path,
                    });
                }
                _ => missing.push(f),
            }
        }
        if missing.is_empty() {
            return Ok(k);
        }
        let nvrtc = Nvrtc::load()?;
        let results: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = missing
                .iter()
                .map(|f| {
                    let (nvrtc, options) = (&nvrtc, compile_options(&arch, f));
                    s.spawn(move || {
                        let src = format!("{COMMON}\n{}", f.source);
                        nvrtc.compile(&format!("{}.cu", f.name), &src, &options)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::backend(backend(), "NVRTC compile thread panicked"))
                    })
                })
                .collect()
        });
        // Report every family's compile error at once; optional families only warn.
        let mut errors: Vec<String> = Vec::new();
        for (f, r) in missing.iter().zip(&results) {
            if let Err(e) = r {
                if f.optional {
                    eprintln!(
                        "{}: optional kernels/{}.cu did not compile for {arch} \
                         (using the fallback kernels):\n{e}",
                        backend(),
                        f.name
                    );
                } else {
                    errors.push(e.to_string());
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::backend(
                backend(),
                format!(
                    "compiling kernels with NVRTC {:?} ({}) for {arch} failed:\n{}{}",
                    nvrtc.version(),
                    nvrtc.path(),
                    errors.join("\n"),
                    nvrtc_target_hint(&arch, nvrtc.version())
                ),
            ));
        }
        for (f, img) in missing.into_iter().zip(results) {
            let img = match img {
                Ok(img) => img,
                Err(_) => continue, // optional, reported above
            };
            let m = gpu.load_module(&img).map_err(|e| {
                Error::backend(
                    backend(),
                    format!("loading kernels/{}.cu for {arch}: {e}", f.name),
                )
            })?;
            k.add(gpu, f, m)?;
            let path = path_of(f);
            if let Some(p) = &path {
                cache_store(p, &img);
            }
            k.origins.push(ModuleOrigin {
                family: f.name,
                from_cache: false,
                cache_path: path,
            });
        }
        Ok(k)
    }

    fn add(&mut self, gpu: &Gpu, f: &Family, m: cudarc::driver::sys::CUmodule) -> Result<()> {
        self.modules.push(m);
        for name in f.functions {
            let func = gpu.function(m, name)?;
            if grant_smem(func, name) {
                self.functions.insert(name, func);
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<CUfunction> {
        self.functions
            .get(name)
            .copied()
            .ok_or_else(|| Error::backend(backend(), format!("kernel {name} is not loaded")))
    }

    /// Whether kernel `name` is loaded (optional families may be missing).
    pub fn has(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    pub fn unload(&mut self, gpu: &Gpu) {
        for m in self.modules.drain(..) {
            gpu.unload(m);
        }
        self.functions.clear();
    }
}
