//! wgpu: the gptoss backend for any GPU with Vulkan (Linux), Metal (macOS) or DX12 (Windows),
//! headless (no window, no surface), with WGSL compute shaders (src/shaders/*.wgsl).
//!
//! - Buffers live in GPU memory in their logical layout: BF16 weights stay packed bf16 pairs
//!   (decoded in the shaders), MXFP4 blocks and E8M0 scales stay packed bytes (the MoE shaders
//!   decode them in registers: no dequantized copy of the experts), F32/I32 as is. F16 tensors
//!   are widened to f32 on upload (narrowed back on download).
//! - Arithmetic is f32 everywhere (accumulation included); shader-f16 is reported by the probe
//!   but not used.
//! - A buffer above the adapter's `max_storage_buffer_binding_size` (or `max_buffer_size`) is
//!   stored split by rows into several buffers; the embedding and linear kernels (the only ops
//!   whose operands reach that size in gpt-oss: embedding and lm_head) run one dispatch per
//!   part. Any other op given a split buffer reports a clear error naming the limit.
//! - `execute` records every node into one compute pass of one command buffer (parameters in
//!   persistent uniform slots, bind groups cached across steps), submits it, waits, and checks
//!   the shaders' error word (bad token ids, positions, expert ids), so bad input comes back as
//!   a [`gptoss_core::Error`]; wgpu validation errors are captured, never panicked.
//! - Decode (few tokens) runs the row kernels: gemv.wgsl and moe_rows.wgsl, 16-byte weight
//!   loads, x staged in workgroup memory, subgroup sums where the adapter has them (NOTES.md).
//! - Attention reads keys coalesced (4 lanes a key row) and, for few query rows (decode),
//!   splits the keys over workgroups and merges them (flash-decoding; attention_merge.wgsl).
//! - GPTOSS_WGPU_PROFILE=1: GPU time per dispatch by timestamp queries (src/profile.rs).

mod f16_probe;
mod probe;
mod profile;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gptoss_core::graph::ValueKind;
use gptoss_core::plugin::{PluginBackend, PluginOptions};
use gptoss_core::rope::RopeParams;
use gptoss_core::{Backend, BufferId, DType, Error, Graph, Node, Op, ProbeReport, Result};
use gptoss_core::{TensorDesc, ValueId};

pub use probe::{adapters, software_allowed, AdapterSummary};

pub const BACKEND: &str = "wgpu";

const COMMON: &str = include_str!("shaders/common.wgsl");
const ERRORS: &str = include_str!("shaders/errors.wgsl");
const ATTENTION_BODY: &str = include_str!("shaders/attention_body.wgsl");
const MOE: &str = include_str!("shaders/moe.wgsl");
const MOE_ROWS: &str = include_str!("shaders/moe_rows.wgsl");
const LINEAR_PARAMS: &str = include_str!("shaders/linear_params.wgsl");
const XSTAGE: &str = include_str!("shaders/xstage.wgsl");
const ARGMAX_COMMON: &str = include_str!("shaders/argmax_common.wgsl");
const LANES_SUBGROUP: &str = include_str!("shaders/lanes_subgroup.wgsl");
const LANES_WORKGROUP: &str = include_str!("shaders/lanes_workgroup.wgsl");

/// Workgroups of a gemv dispatch at most: rows beyond are walked in a grid-stride loop, so
/// each workgroup stages x once for several passes (lm_head: ~3), while ~10 waves of them
/// keep the last wave's imbalance small on a ~132-SM GPU.
const GEMV_WORKGROUPS: usize = 8192;
/// Workgroups of a MoE projection at most, shared among its (token, slot) pairs: decode's 4
/// pairs get 256 each (gate_up: ~1.4 passes of 8 units; down: 180, one pass). 1024 of 256
/// invocations stay resident at once on an H100/H200; 4096 (gate_up 360 a pair, one pass
/// each) measured 14% slower a decode step on the H200: a second wave of workgroups.
const MOE_WORKGROUPS: usize = 1024;
/// Bytes of one dispatch's parameters (the largest P struct is 48); each sits at an offset
/// aligned to the adapter's min_uniform_buffer_offset_alignment in a persistent buffer.
const PARAM_BYTES: u64 = 64;
/// Entries of a row one argmax workgroup reads (pass 1): 16 an invocation.
const ARGMAX_CHUNK: usize = 4096;
/// Dispatch parameter slots per uniform buffer (more buffers are added as graphs need).
const SLOTS_PER_UNIFORM: u64 = 512;
/// Cached bind groups at most (cleared beyond, and whenever a buffer is freed).
const MAX_BIND_GROUPS: usize = 16384;

/// Limits the kernels rely on (all within WebGPU's defaults).
const NEED_STORAGE_BUFFERS: u32 = 7;
const NEED_INVOCATIONS: u32 = 256;
const NEED_WORKGROUP_STORAGE: u32 = 8192;

fn err(reason: impl Into<String>) -> Error {
    Error::backend(BACKEND, reason)
}

struct Kernels {
    embed: wgpu::ComputePipeline,
    rms_norm: wgpu::ComputePipeline,
    /// bf16 GEMV for one token and for up to 8 (TOKENS = 1 or 8: accumulators in registers).
    gemv1: wgpu::ComputePipeline,
    gemv8: wgpu::ComputePipeline,
    gemm: wgpu::ComputePipeline,
    rope: wgpu::ComputePipeline,
    kv_write: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
    attention_paged: wgpu::ComputePipeline,
    attention_merge: wgpu::ComputePipeline,
    gather_rows: wgpu::ComputePipeline,
    topk: wgpu::ComputePipeline,
    moe_gate_up: wgpu::ComputePipeline,
    moe_down: wgpu::ComputePipeline,
    moe_combine: wgpu::ComputePipeline,
    add: wgpu::ComputePipeline,
    argmax_part: wgpu::ComputePipeline,
    argmax: wgpu::ComputePipeline,
    /// Each pipeline's name (the profile's rows).
    names: HashMap<wgpu::ComputePipeline, &'static str>,
}

/// How the row kernels (gemv, moe) split a row over a lane group and sum it.
#[derive(Clone, Copy, Debug)]
struct RowConfig {
    /// Subgroup shuffles (lanes_subgroup.wgsl), else a tree in workgroup memory.
    subgroups: bool,
    /// Invocations a row (32, or the smallest subgroup size when below: a lane group must lie
    /// inside one subgroup).
    lanes: u32,
    /// vec4s of x a workgroup can stage (xstage.wgsl): 1024 (4096 values), less where the
    /// adapter's workgroup storage is small.
    xs_quads: u32,
    /// MXFP4 codes decoded as f16 pairs (f16_probe.rs), else bit by bit.
    fp4_f16: bool,
}

/// Kernel variants a caller may turn off where the adapter has them (tests: the fallbacks).
#[derive(Clone, Copy, Debug)]
pub struct KernelOptions {
    /// Subgroup shuffles for the row kernels' sums (else a tree in workgroup memory).
    pub subgroups: bool,
    /// The MXFP4 decode through f16 subnormals, where the device keeps them (f16_probe.rs).
    pub fp4_f16: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            subgroups: true,
            fp4_f16: true,
        }
    }
}

impl RowConfig {
    fn new(adapter: &wgpu::Adapter, allow_subgroups: bool) -> RowConfig {
        let info = adapter.get_info();
        let min_sg = info.subgroup_min_size;
        let subgroups = allow_subgroups
            && adapter.features().contains(wgpu::Features::SUBGROUP)
            && min_sg.is_power_of_two()
            && min_sg >= 4;
        let storage = adapter.limits().max_compute_workgroup_storage_size;
        RowConfig {
            subgroups,
            lanes: if subgroups { min_sg.min(32) } else { 32 },
            // Room for the fallback's 1 KiB tree and a few words besides.
            xs_quads: (storage.saturating_sub(2048) / 16).min(1024),
            fp4_f16: false,
        }
    }

    /// Rows one workgroup (256 invocations) handles a pass.
    fn rows(&self) -> usize {
        (256 / self.lanes) as usize
    }

    /// The constants a row kernel starts with. (Naga takes the subgroup builtins without
    /// WGSL's `enable subgroups;`, which it refuses as not yet implemented.)
    fn prelude(&self, tokens: u32) -> String {
        format!(
            "const LANES: u32 = {}u;\nconst XS_QUADS: u32 = {}u;\n\
             const TOKENS: u32 = {tokens}u;\nconst FP4_F16: bool = {};\n",
            self.lanes, self.xs_quads, self.fp4_f16
        )
    }

    fn lane_sum(&self) -> &'static str {
        if self.subgroups {
            LANES_SUBGROUP
        } else {
            LANES_WORKGROUP
        }
    }
}

/// The commands of one execute: every dispatch in one compute pass (ended only for a copy),
/// every dispatch's parameters gathered for one upload at the end.
struct Recorder {
    enc: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Parameter slots, `slot_bytes` each, in dispatch order.
    params: Vec<u8>,
    /// The node being recorded, as the profile names it: "op -> output shape".
    node: String,
}

impl Recorder {
    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let enc = &mut self.enc;
        self.pass.get_or_insert_with(|| {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime()
        })
    }

    /// The encoder, for a copy: ends the pass.
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.enc
    }
}

/// A cached bind group: the pipeline, the parameter slot and the storage buffers.
type BindKey = (wgpu::ComputePipeline, u64, Vec<wgpu::Buffer>);

/// Query rows (tokens x heads) from which attention runs one workgroup per row: enough to
/// fill a GPU (prefill); below, the keys are split over workgroups too (decode).
const ATTENTION_ROWS_ALONE: usize = 1024;
/// Splits of a row's keys at most, and keys per split at least (the kernel's chunk).
const ATTENTION_SPLITS: usize = 32;
const ATTENTION_CHUNK: usize = 64;

/// How attention spreads over workgroups: (split, head) x token.
#[derive(Clone, Copy, Debug)]
struct AttentionSplit {
    t: u32,
    heads: u32,
    d: u32,
    /// Workgroups per row, each taking `ks` consecutive keys of the row's range.
    splits: u32,
    ks: u32,
    /// log2 of the row's vec4s rounded up to a power of 2 (the value lanes of a key group).
    qlog: u32,
}

impl AttentionSplit {
    /// `keys`: the most keys a row can attend to (cache capacity, or less by the window).
    fn new(t: usize, heads: u32, d: u32, window: u32, keys: usize) -> AttentionSplit {
        let keys = if window > 0 {
            keys.min(window as usize)
        } else {
            keys
        }
        .max(1);
        let (splits, ks) = if t * heads as usize >= ATTENTION_ROWS_ALONE || keys <= ATTENTION_CHUNK
        {
            (1, keys as u32)
        } else {
            let ks = keys
                .div_ceil(ATTENTION_SPLITS)
                .next_multiple_of(ATTENTION_CHUNK);
            (keys.div_ceil(ks), ks as u32)
        };
        AttentionSplit {
            t: t as u32,
            heads,
            d,
            splits: splits as u32,
            ks,
            qlog: (d / 4).max(1).next_power_of_two().trailing_zeros(),
        }
    }

    /// Floats of the splits' partial results: (max, sum, acc[d]) per split of every row.
    fn partial_floats(&self) -> usize {
        (self.t * self.heads * self.splits) as usize * (self.d as usize + 2)
    }
}

/// A buffer: one or more parts (split by rows when above the binding limit).
struct DevBuf {
    parts: Vec<wgpu::Buffer>,
    /// Rows of the first dimension in each part but the last.
    rows_per_part: usize,
    desc: TensorDesc,
}

/// How a graph value is bound during one execute.
#[derive(Clone)]
struct Bound {
    parts: Vec<wgpu::Buffer>,
    rows_per_part: usize,
    /// Stored as packed bf16 pairs.
    bf16: bool,
}

/// Bytes per element as stored on the device.
fn stored_size(d: DType) -> usize {
    match d {
        DType::F16 => 4,
        d => d.size(),
    }
}

fn pad4(n: usize) -> u64 {
    (n.max(4).div_ceil(4) * 4) as u64
}

pub struct Wgpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: AdapterSummary,
    kernels: Kernels,
    buffers: HashMap<BufferId, DevBuf>,
    next_id: u64,
    pool: RefCell<HashMap<u64, Vec<wgpu::Buffer>>>,
    rope_tables: RefCell<Vec<(RopeParams, wgpu::Buffer)>>,
    err_buf: wgpu::Buffer,
    /// The error word's copy, read back after each execute.
    err_read: wgpu::Buffer,
    dummy: wgpu::Buffer,
    rows: RowConfig,
    /// Persistent uniform buffers of SLOTS_PER_UNIFORM parameter slots each.
    uniforms: RefCell<Vec<wgpu::Buffer>>,
    /// Bytes a parameter slot takes (PARAM_BYTES rounded up to the offset alignment).
    slot_bytes: u64,
    /// Bind groups by pipeline, slot and buffers: a decode step repeats the last step's.
    bind_groups: RefCell<HashMap<BindKey, wgpu::BindGroup>>,
    /// Largest single buffer a shader may bind (and that may be created).
    max_part: u64,
    max_groups: u32,
    errors: Arc<Mutex<Vec<String>>>,
    /// GPTOSS_WGPU_PROFILE=1 on an adapter with timestamp queries: one pass per dispatch.
    profile: Option<RefCell<profile::Profiler>>,
}

impl Wgpu {
    /// The adapter this instance runs on, e.g. "NVIDIA H100 80GB HBM3 (Vulkan)".
    pub fn device_name(&self) -> String {
        format!("{} ({})", self.info.name, self.info.backend)
    }

    /// The kernel variants in use (after the adapter's features and the f16 probe).
    pub fn kernel_options(&self) -> KernelOptions {
        KernelOptions {
            subgroups: self.rows.subgroups,
            fp4_f16: self.rows.fp4_f16,
        }
    }

    /// Lower the largest single buffer this instance creates (tests: exercise the row split of
    /// large weights on any adapter). Applies to buffers allocated afterwards.
    pub fn with_binding_limit(mut self, bytes: u64) -> Self {
        self.max_part = self.max_part.min(bytes.max(4) / 4 * 4);
        self
    }

    /// The largest single buffer (binding) this instance creates, in bytes.
    pub fn binding_limit(&self) -> u64 {
        self.max_part
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.info
    }

    /// Open adapter `index` of [`adapters`] (the probe's order).
    pub fn open(index: usize) -> Result<Wgpu> {
        let list = adapters().map_err(err)?;
        if list.is_empty() {
            return Err(err(
                "no GPU adapter found (no Vulkan/Metal/DX12 driver, or no GPU); on Linux install \
                 the Vulkan loader and a driver (e.g. libvulkan1 + mesa-vulkan-drivers), or use \
                 --backend cpu",
            ));
        }
        let n = list.len();
        let adapter = list.into_iter().nth(index).ok_or_else(|| {
            err(format!(
                "device {index} does not exist: {n} adapter(s) found (0..{n})"
            ))
        })?;
        Self::with_adapter(adapter)
    }

    pub fn with_adapter(adapter: wgpu::Adapter) -> Result<Wgpu> {
        Self::with_adapter_options(adapter, KernelOptions::default())
    }

    /// [`Wgpu::with_adapter`] with kernel variants turned off even where the adapter has them
    /// (tests: the fallbacks).
    pub fn with_adapter_options(adapter: wgpu::Adapter, options: KernelOptions) -> Result<Wgpu> {
        Self::build(adapter, options, profile::wanted())
    }

    /// [`Wgpu::with_adapter`] with the dispatch profile on (as GPTOSS_WGPU_PROFILE=1 does)
    /// where the adapter has timestamp queries; see [`Wgpu::profiling`].
    pub fn with_adapter_profiled(adapter: wgpu::Adapter) -> Result<Wgpu> {
        Self::build(adapter, KernelOptions::default(), true)
    }

    /// Whether dispatches are being timed (the profile was asked for and the adapter has
    /// timestamp queries).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// The profile so far (what is printed when the backend is dropped), if profiling.
    pub fn profile_report(&self) -> Option<String> {
        let p = self.profile.as_ref()?;
        Some(p.borrow().report(&self.device_name()))
    }

    fn build(adapter: wgpu::Adapter, options: KernelOptions, profile: bool) -> Result<Wgpu> {
        let info = AdapterSummary::of(&adapter);
        let mut rows = RowConfig::new(&adapter, options.subgroups);
        let limits = adapter.limits();
        check_limits(&info.name, &limits)?;
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(err(format!(
                "adapter {} lacks a needed feature: compute shaders",
                info.name
            )));
        }
        let mut features = wgpu::Features::empty();
        if rows.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        if profile && timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        } else if profile {
            eprintln!(
                "{}: adapter {} has no timestamp queries; profiling unavailable",
                profile::ENV,
                info.name
            );
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("gptoss"),
            required_features: features,
            // Everything the adapter offers: the largest bindings and buffers.
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| err(format!("{}: could not open the device: {e}", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let max_part = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / 4
            * 4;
        rows.fp4_f16 = options.fp4_f16 && f16_probe::keeps_f16_subnormals(&device, &queue);
        let kernels = Self::compile(&device, &rows)?;
        let err_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("error word"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let err_read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("error word readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no bias"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let profile = (profile && timestamps)
            .then(|| RefCell::new(profile::Profiler::new(queue.get_timestamp_period())));
        let me = Wgpu {
            profile,
            device,
            queue,
            info,
            kernels,
            buffers: HashMap::new(),
            next_id: 1,
            pool: RefCell::default(),
            rope_tables: RefCell::default(),
            err_buf,
            err_read,
            dummy,
            rows,
            uniforms: RefCell::default(),
            slot_bytes: PARAM_BYTES
                .next_multiple_of(limits.min_uniform_buffer_offset_alignment as u64),
            bind_groups: RefCell::default(),
            max_part,
            max_groups: limits.max_compute_workgroups_per_dimension,
            errors,
        };
        me.check_device_errors("compiling the WGSL kernels")?;
        Ok(me)
    }

    fn compile(device: &wgpu::Device, rows: &RowConfig) -> Result<Kernels> {
        // Bounds checks stay; the loop bounding wgpu injects by default (a counter in every
        // loop, which also keeps the compiler from unrolling the small constant loops that
        // hold accumulators in registers) is off.
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = false;
        let names = RefCell::new(HashMap::new());
        let make = |name: &'static str, parts: &[&str], entry: &str| -> wgpu::ComputePipeline {
            let src: String = parts.concat();
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            };
            // SAFETY: every loop in src/shaders ends (counters stepping towards fixed bounds);
            // that is all disabling force_loop_bounding asks.
            let module = unsafe { device.create_shader_module_trusted(desc, checks) };
            let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            names.borrow_mut().insert(pipe.clone(), name);
            pipe
        };
        let linear = include_str!("shaders/linear.wgsl");
        let gemv = include_str!("shaders/gemv.wgsl");
        let (one, eight) = (rows.prelude(1), rows.prelude(8));
        // The row kernels: constants, the lane-group sum of this adapter, staged x.
        let make_rows = |name: &'static str, prelude: &str, parts: &[&str]| {
            let mut all = vec![prelude, COMMON, rows.lane_sum(), XSTAGE];
            all.extend_from_slice(parts);
            make(name, &all, "main")
        };
        let mut kernels = Kernels {
            names: HashMap::new(),
            embed: make(
                "embed",
                &[COMMON, ERRORS, include_str!("shaders/embed.wgsl")],
                "main",
            ),
            rms_norm: make(
                "rms_norm",
                &[
                    &one,
                    COMMON,
                    rows.lane_sum(),
                    include_str!("shaders/rms_norm.wgsl"),
                ],
                "main",
            ),
            gemv1: make_rows("linear gemv t1", &one, &[LINEAR_PARAMS, gemv]),
            gemv8: make_rows("linear gemv t8", &eight, &[LINEAR_PARAMS, gemv]),
            gemm: make("linear gemm", &[COMMON, LINEAR_PARAMS, linear], "gemm"),
            rope: make(
                "rope",
                &[COMMON, ERRORS, include_str!("shaders/rope.wgsl")],
                "main",
            ),
            kv_write: make(
                "kv_write",
                &[COMMON, ERRORS, include_str!("shaders/kv_write.wgsl")],
                "main",
            ),
            attention: make(
                "attention",
                &[
                    COMMON,
                    include_str!("shaders/attention.wgsl"),
                    ATTENTION_BODY,
                ],
                "main",
            ),
            attention_paged: make(
                "attention_paged",
                &[
                    COMMON,
                    include_str!("shaders/attention_paged.wgsl"),
                    ATTENTION_BODY,
                ],
                "main",
            ),
            attention_merge: make(
                "attention_merge",
                &[COMMON, include_str!("shaders/attention_merge.wgsl")],
                "main",
            ),
            gather_rows: make(
                "gather_rows",
                &[COMMON, ERRORS, include_str!("shaders/gather_rows.wgsl")],
                "main",
            ),
            topk: make(
                "topk_softmax",
                &[COMMON, include_str!("shaders/topk_softmax.wgsl")],
                "main",
            ),
            moe_gate_up: make_rows(
                "moe gate_up",
                &one,
                &[
                    ERRORS,
                    MOE,
                    MOE_ROWS,
                    include_str!("shaders/moe_gate_up.wgsl"),
                ],
            ),
            moe_down: make_rows(
                "moe down",
                &one,
                &[MOE, MOE_ROWS, include_str!("shaders/moe_down.wgsl")],
            ),
            moe_combine: make(
                "moe combine",
                &[COMMON, MOE, include_str!("shaders/moe_combine.wgsl")],
                "main",
            ),
            add: make("add", &[COMMON, include_str!("shaders/add.wgsl")], "main"),
            argmax_part: make(
                "argmax part",
                &[
                    COMMON,
                    ARGMAX_COMMON,
                    include_str!("shaders/argmax_part.wgsl"),
                ],
                "main",
            ),
            argmax: make(
                "argmax",
                &[COMMON, ARGMAX_COMMON, include_str!("shaders/argmax.wgsl")],
                "main",
            ),
        };
        kernels.names = names.into_inner();
        Ok(kernels)
    }

    fn check_device_errors(&self, what: &str) -> Result<()> {
        let mut v = self.errors.lock().map_err(|_| err("error list poisoned"))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(err(format!("{what}: {msg}")))
    }

    fn new_buffer(&self, bytes: u64, label: &str) -> Result<wgpu::Buffer> {
        if bytes > self.max_part {
            return Err(err(format!(
                "'{label}' needs one buffer of {bytes} bytes, above this adapter's \
                 max_storage_buffer_binding_size/max_buffer_size ({} bytes)",
                self.max_part
            )));
        }
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.check_device_errors(&format!("allocating {bytes} bytes for '{label}'"))?;
        Ok(b)
    }

    /// A device buffer for `desc`, split by rows when above the binding limit.
    fn make_buf(&self, desc: &TensorDesc, name: &str) -> Result<DevBuf> {
        let es = stored_size(desc.dtype);
        let total = desc.numel() * es;
        let dims = desc.shape.dims();
        if pad4(total) <= self.max_part || dims.is_empty() {
            return Ok(DevBuf {
                parts: vec![self.new_buffer(pad4(total), name)?],
                rows_per_part: dims.first().copied().unwrap_or(1).max(1),
                desc: desc.clone(),
            });
        }
        let rows = dims[0];
        let row_bytes = (total / rows.max(1)).max(1);
        // Whole rows per part, a multiple of 4 so every part starts 4-byte aligned.
        let per = (self.max_part as usize / row_bytes) / 4 * 4;
        if per == 0 {
            return Err(err(format!(
                "'{name}' ({desc}): one row of {row_bytes} bytes is above this adapter's \
                 max_storage_buffer_binding_size ({} bytes)",
                self.max_part
            )));
        }
        let mut parts = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = per.min(rows - r);
            parts.push(self.new_buffer(pad4(n * row_bytes), &format!("{name} rows {r}.."))?);
            r += n;
        }
        Ok(DevBuf {
            parts,
            rows_per_part: per,
            desc: desc.clone(),
        })
    }

    /// Device bytes of `data` (logical bytes of `dtype`).
    fn to_stored(dtype: DType, data: &[u8]) -> Vec<u8> {
        if dtype == DType::F16 {
            return data
                .chunks_exact(2)
                .flat_map(|b| {
                    half::f16::from_le_bytes([b[0], b[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
        }
        data.to_vec()
    }

    fn write(&self, b: &DevBuf, data: &[u8]) {
        let stored = Self::to_stored(b.desc.dtype, data);
        let rows = b.desc.shape.dims().first().copied().unwrap_or(1).max(1);
        let part_bytes = if b.parts.len() == 1 {
            stored.len()
        } else {
            b.rows_per_part * (stored.len() / rows)
        };
        for (i, part) in b.parts.iter().enumerate() {
            let lo = (i * part_bytes).min(stored.len());
            let hi = ((i + 1) * part_bytes).min(stored.len());
            let mut chunk = stored[lo..hi].to_vec();
            chunk.resize(pad4(chunk.len()) as usize, 0);
            self.queue.write_buffer(part, 0, &chunk);
        }
    }

    /// Read `bytes` bytes of each of `srcs` back to the host.
    fn read_back(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        let mut staging = Vec::new();
        for (src, bytes) in srcs {
            let size = pad4(*bytes as usize);
            let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(src, 0, &s, 0, size);
            staging.push((s, *bytes));
        }
        self.queue.submit([enc.finish()]);
        let refs: Vec<(&wgpu::Buffer, u64)> = staging.iter().map(|(s, n)| (s, *n)).collect();
        self.map_read(&refs)
    }

    /// Wait for the GPU and read the first `bytes` bytes of each mappable buffer of `bufs`.
    fn map_read(&self, bufs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        let done: Arc<Mutex<Vec<std::result::Result<(), String>>>> = Arc::default();
        for (s, _) in bufs {
            let d = done.clone();
            s.map_async(wgpu::MapMode::Read, .., move |r| {
                if let Ok(mut v) = d.lock() {
                    v.push(r.map_err(|e| e.to_string()));
                }
            });
        }
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| err(format!("waiting for the GPU: {e}")))?;
        self.check_device_errors("reading back")?;
        let results = done.lock().map_err(|_| err("map state poisoned"))?.clone();
        if results.len() != bufs.len() {
            return Err(err("a readback did not complete"));
        }
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(err(format!("mapping a readback buffer: {e}")));
        }
        let mut out = Vec::new();
        for (s, bytes) in bufs {
            let view = s
                .get_mapped_range(..)
                .map_err(|e| err(format!("mapping a readback buffer: {e}")))?;
            out.push(view[..*bytes as usize].to_vec());
            drop(view);
            s.unmap();
        }
        Ok(out)
    }

    fn rope_table(&self, params: &RopeParams) -> Result<wgpu::Buffer> {
        if let Some((_, b)) = self.rope_tables.borrow().iter().find(|(q, _)| q == params) {
            return Ok(b.clone());
        }
        let inv: Vec<u8> = params
            .inv_freq()
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let b = self.new_buffer(pad4(inv.len()), "rope inv_freq")?;
        let mut data = inv;
        data.resize(pad4(data.len()) as usize, 0);
        self.queue.write_buffer(&b, 0, &data);
        self.rope_tables.borrow_mut().push((*params, b.clone()));
        Ok(b)
    }

    fn take_temp(&self, bytes: u64, name: &str) -> Result<wgpu::Buffer> {
        let pooled = self.pool.borrow_mut().get_mut(&bytes).and_then(|v| v.pop());
        if let Some(b) = pooled {
            return Ok(b);
        }
        self.new_buffer(bytes, name)
    }

    fn give_temp(&self, b: wgpu::Buffer) {
        self.pool.borrow_mut().entry(b.size()).or_default().push(b);
    }

    fn dispatch(
        &self,
        rec: &mut Recorder,
        pipe: &wgpu::ComputePipeline,
        params: &[u32],
        bufs: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 {
            return Ok(());
        }
        if groups.0 > self.max_groups || groups.1 > self.max_groups {
            return Err(err(format!(
                "a dispatch of {groups:?} workgroups is above this adapter's \
                 max_compute_workgroups_per_dimension ({})",
                self.max_groups
            )));
        }
        let slot = rec.params.len() as u64 / self.slot_bytes;
        rec.params
            .extend(params.iter().flat_map(|w| w.to_le_bytes()));
        rec.params
            .resize(((slot + 1) * self.slot_bytes) as usize, 0);
        let bg = self.bind_group(pipe, slot, bufs)?;
        if let Some(prof) = &self.profile {
            // A pass of its own, timed at its start and end.
            let name = self.kernels.names.get(pipe).copied().unwrap_or("?");
            let key = format!("{name}: {}, {}x{}", rec.node, groups.0, groups.1);
            let mut prof = prof.borrow_mut();
            let (set, i) = prof.timestamps(&self.device, key);
            rec.pass = None;
            rec.pass = Some(
                rec.enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(i),
                            end_of_pass_write_index: Some(i + 1),
                        }),
                    })
                    .forget_lifetime(),
            );
        }
        let pass = rec.pass();
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        Ok(())
    }

    /// The uniform buffer holding parameter slot `slot`, and the slot's offset in it.
    fn uniform_slot(&self, slot: u64) -> (wgpu::Buffer, u64) {
        let i = (slot / SLOTS_PER_UNIFORM) as usize;
        let mut u = self.uniforms.borrow_mut();
        while u.len() <= i {
            u.push(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("dispatch params"),
                size: SLOTS_PER_UNIFORM * self.slot_bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        (u[i].clone(), (slot % SLOTS_PER_UNIFORM) * self.slot_bytes)
    }

    /// The bind group of `pipe` with parameter slot `slot` and `bufs`, from the cache when
    /// an earlier step made it.
    fn bind_group(
        &self,
        pipe: &wgpu::ComputePipeline,
        slot: u64,
        bufs: &[&wgpu::Buffer],
    ) -> Result<wgpu::BindGroup> {
        let key: BindKey = (
            pipe.clone(),
            slot,
            bufs.iter().map(|b| (*b).clone()).collect(),
        );
        if let Some(bg) = self.bind_groups.borrow().get(&key) {
            return Ok(bg.clone());
        }
        let (uniform, offset) = self.uniform_slot(slot);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &uniform,
                offset,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut cache = self.bind_groups.borrow_mut();
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        Ok(bg)
    }

    /// Upload the recorded parameters (before the commands that read them: write_buffer
    /// lands ahead of the next submit) and close the pass.
    fn finish(&self, mut rec: Recorder) -> wgpu::CommandEncoder {
        rec.pass = None;
        let chunk = (SLOTS_PER_UNIFORM * self.slot_bytes) as usize;
        for (i, data) in rec.params.chunks(chunk).enumerate() {
            let (buf, _) = self.uniform_slot(i as u64 * SLOTS_PER_UNIFORM);
            self.queue.write_buffer(&buf, 0, data);
        }
        rec.enc
    }

    /// `n` workgroups as (x, y) within the per-dimension limit (kernels fold y back in).
    fn fold(&self, n: u32) -> (u32, u32) {
        let m = self.max_groups.max(1);
        if n <= m {
            (n, 1)
        } else {
            (m, n.div_ceil(m))
        }
    }

    fn run_node(
        &self,
        enc: &mut Recorder,
        graph: &Graph,
        node: &Node,
        bound: &[Option<Bound>],
    ) -> Result<()> {
        let vdesc = |id: ValueId| &graph.values[id.0 as usize].desc;
        let dims = |id: ValueId| vdesc(id).shape.dims().to_vec();
        let b = |id: ValueId| -> Result<&Bound> {
            bound[id.0 as usize].as_ref().ok_or_else(|| {
                err(format!(
                    "'{}' has no buffer",
                    graph.values[id.0 as usize].name
                ))
            })
        };
        // One binding; a split buffer is refused with the limit named.
        let one = |id: ValueId| -> Result<&wgpu::Buffer> {
            let bb = b(id)?;
            if bb.parts.len() != 1 {
                return Err(err(format!(
                    "'{}' is split over {} buffers (above this adapter's \
                     max_storage_buffer_binding_size of {} bytes); {} needs it in one binding",
                    graph.values[id.0 as usize].name,
                    bb.parts.len(),
                    self.max_part,
                    node.op.name()
                )));
            }
            Ok(&bb.parts[0])
        };
        // Activations must be f32 on the device.
        let f32_in = |id: ValueId| -> Result<&wgpu::Buffer> {
            let d = vdesc(id).dtype;
            if !matches!(d, DType::F32 | DType::F16) {
                return Err(Error::Unsupported {
                    backend: BACKEND.into(),
                    what: format!(
                        "{} with '{}' in {d} (activations must be F32)",
                        node.op.name(),
                        graph.values[id.0 as usize].name
                    ),
                });
            }
            one(id)
        };
        let flag = |id: ValueId| -> Result<u32> { Ok(b(id)?.bf16 as u32) };
        let (ins, outs) = (&node.inputs, &node.outputs);
        let k = &self.kernels;
        let u = |v: usize| v as u32;
        let fbits = |v: f32| v.to_bits();
        match &node.op {
            // Split models run on the CUDA and cpu backends only.
            Op::LocalExperts { .. } | Op::AllReduceSum => {
                return Err(Error::Unsupported {
                    backend: BACKEND.into(),
                    what: format!("op '{}'", node.op.name()),
                })
            }
            Op::Embed => {
                let (vocab, hidden) = (dims(ins[0])[0], dims(ins[0])[1]);
                let t = dims(ins[1])[0];
                let table = b(ins[0])?;
                let (ids, out) = (one(ins[1])?, one(outs[0])?);
                for (pi, part) in table.parts.iter().enumerate() {
                    let row0 = pi * table.rows_per_part;
                    let rows = table.rows_per_part.min(vocab - row0);
                    let p = [
                        u(t),
                        u(hidden),
                        u(vocab),
                        table.bf16 as u32,
                        u(row0),
                        u(rows),
                        (pi == 0) as u32,
                        0,
                    ];
                    self.dispatch(
                        enc,
                        &k.embed,
                        &p,
                        &[part, ids, out, &self.err_buf],
                        (u(hidden.div_ceil(64)), u(t)),
                    )?;
                }
            }
            Op::RmsNorm { eps } => {
                let (t, h) = (dims(ins[0])[0], dims(ins[0])[1]);
                let p = [u(t), u(h), flag(ins[1])?, fbits(*eps)];
                let (x, w, out) = (f32_in(ins[0])?, one(ins[1])?, one(outs[0])?);
                self.dispatch(enc, &k.rms_norm, &p, &[x, w, out], (u(t), 1))?;
            }
            Op::Linear => {
                let (t, kk) = (dims(ins[0])[0], dims(ins[0])[1]);
                let n = dims(ins[1])[0];
                let x = f32_in(ins[0])?;
                let w = b(ins[1])?;
                let (bias, has_bias, bias_bf16) = match ins.get(2) {
                    Some(id) => (one(*id)?, 1, flag(*id)?),
                    None => (&self.dummy, 0, 0),
                };
                let y = one(outs[0])?;
                if t == 0 || n == 0 {
                    return Ok(());
                }
                for (pi, part) in w.parts.iter().enumerate() {
                    let n0 = pi * w.rows_per_part;
                    let rows = w.rows_per_part.min(n - n0);
                    let p = [
                        u(t),
                        u(n),
                        u(kk),
                        w.bf16 as u32,
                        has_bias,
                        bias_bf16,
                        u(n0),
                        u(rows),
                    ];
                    // gemv: bf16 rows of whole 16-byte loads.
                    if t <= 8 && w.bf16 && kk % 8 == 0 {
                        let pipe = if t == 1 { &k.gemv1 } else { &k.gemv8 };
                        let g = rows.div_ceil(self.rows.rows()).min(GEMV_WORKGROUPS);
                        self.dispatch(enc, pipe, &p, &[x, part, bias, y], (u(g), 1))?;
                    } else {
                        let g = (u(rows.div_ceil(64)), u(t.div_ceil(64)));
                        self.dispatch(enc, &k.gemm, &p, &[x, part, bias, y], g)?;
                    }
                }
            }
            Op::Rope { params, heads } => {
                let t = dims(ins[0])[0];
                let d = params.head_dim;
                let table = self.rope_table(params)?;
                let p = [u(t), *heads, d, fbits(params.attention_scaling())];
                let (x, pos, out) = (f32_in(ins[0])?, one(ins[1])?, one(outs[0])?);
                self.dispatch(
                    enc,
                    &k.rope,
                    &p,
                    &[x, pos, &table, out, &self.err_buf],
                    ((*heads * d / 2).div_ceil(64), u(t)),
                )?;
            }
            Op::Attention {
                heads,
                kv_heads,
                head_dim,
                window,
                scale,
            } => {
                let t = dims(ins[0])[0];
                let cap = dims(outs[1])[0];
                if *head_dim > 256 || head_dim % 4 != 0 {
                    return Err(Error::Unsupported {
                        backend: BACKEND.into(),
                        what: format!(
                            "attention with head_dim {head_dim} (a multiple of 4, at most 256)"
                        ),
                    });
                }
                let kvw = kv_heads * head_dim;
                let (q, kx, vx) = (f32_in(ins[0])?, f32_in(ins[1])?, f32_in(ins[2])?);
                let (sinks, pos) = (one(ins[3])?, one(ins[4])?);
                let (o, kc, vc) = (one(outs[0])?, f32_in(outs[1])?, f32_in(outs[2])?);
                self.dispatch(
                    enc,
                    &k.kv_write,
                    &[u(t), kvw, u(cap), 0],
                    &[kx, vx, pos, kc, vc, &self.err_buf],
                    (kvw.div_ceil(64), u(t)),
                )?;
                let split = AttentionSplit::new(t, *heads, *head_dim, *window, cap);
                let p = [
                    u(t),
                    *heads,
                    *kv_heads,
                    *head_dim,
                    *window,
                    u(cap),
                    flag(ins[3])?,
                    fbits(*scale),
                    split.splits,
                    split.ks,
                    split.qlog,
                    0,
                ];
                self.attention(
                    enc,
                    (&k.attention, &p),
                    &[q, kc, vc, sinks, pos],
                    None,
                    o,
                    split,
                )?;
            }
            Op::PagedAttention {
                heads,
                kv_heads,
                head_dim,
                window,
                scale,
                page_size,
            } => {
                let t = dims(ins[0])[0];
                let (rows, np) = (dims(outs[1])[0], dims(ins[6])[1]);
                if *head_dim > 256 || head_dim % 4 != 0 || !page_size.is_power_of_two() {
                    return Err(Error::Unsupported {
                        backend: BACKEND.into(),
                        what: format!(
                            "paged attention with head_dim {head_dim} (a multiple of 4, at most \
                             256) or page size {page_size} (a power of 2)"
                        ),
                    });
                }
                let kvw = kv_heads * head_dim;
                let (q, kx, vx) = (f32_in(ins[0])?, f32_in(ins[1])?, f32_in(ins[2])?);
                let (sinks, pos, slots, pages) =
                    (one(ins[3])?, one(ins[4])?, one(ins[5])?, one(ins[6])?);
                let (o, kc, vc) = (one(outs[0])?, f32_in(outs[1])?, f32_in(outs[2])?);
                // Step 1 writes each row at its pool slot (kv_write indexes by the given row).
                self.dispatch(
                    enc,
                    &k.kv_write,
                    &[u(t), kvw, u(rows), 0],
                    &[kx, vx, slots, kc, vc, &self.err_buf],
                    (kvw.div_ceil(64), u(t)),
                )?;
                // A row attends to at most its page table's keys.
                let keys = np * *page_size as usize;
                let split = AttentionSplit::new(t, *heads, *head_dim, *window, keys);
                let p = [
                    u(t),
                    *heads,
                    *kv_heads,
                    *head_dim,
                    *window,
                    u(rows),
                    flag(ins[3])?,
                    fbits(*scale),
                    split.splits,
                    split.ks,
                    split.qlog,
                    u(np),
                    page_size.trailing_zeros(),
                    0,
                ];
                self.attention(
                    enc,
                    (&k.attention_paged, &p),
                    &[q, kc, vc, sinks, pos],
                    Some(pages),
                    o,
                    split,
                )?;
            }
            Op::GatherRows => {
                let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
                let b = dims(ins[1])[0];
                let (x, rows, out) = (f32_in(ins[0])?, one(ins[1])?, one(outs[0])?);
                self.dispatch(
                    enc,
                    &k.gather_rows,
                    &[u(b), u(n), u(t), 0],
                    &[x, rows, out, &self.err_buf],
                    (u(n.div_ceil(64)), u(b)),
                )?;
            }
            Op::TopKSoftmax { k: topk } => {
                let (t, e) = (dims(ins[0])[0], dims(ins[0])[1]);
                if *topk > 64 || e > 1024 {
                    return Err(Error::Unsupported {
                        backend: BACKEND.into(),
                        what: format!("top-{topk} routing over {e} experts (at most 64 of 1024)"),
                    });
                }
                let (x, ids, w) = (f32_in(ins[0])?, one(outs[0])?, one(outs[1])?);
                // One workgroup per token, rows of the grid past its x limit.
                let wide = t.min(self.max_groups as usize).max(1);
                self.dispatch(
                    enc,
                    &k.topk,
                    &[u(t), u(e), *topk, 0],
                    &[x, ids, w],
                    (u(wide), u(t.div_ceil(wide))),
                )?;
            }
            Op::MoeMxfp4 {
                swiglu_limit,
                alpha,
            } => {
                let (t, h) = (dims(ins[0])[0], dims(ins[0])[1]);
                let topk = dims(ins[1])[1];
                let gu = dims(ins[3]);
                let (e, two_i) = (gu[0], gu[1]);
                let inter = two_i / 2;
                if h % 32 != 0 || inter % 32 != 0 || gu[2] * 32 != h {
                    return Err(err(format!(
                        "moe: hidden {h} and intermediate {inter} must be multiples of 32 \
                         matching the blocks {gu:?}"
                    )));
                }
                let dn = dims(ins[6]);
                if dn != [e, h, inter / 32, 16] {
                    return Err(err(format!(
                        "moe: down blocks {dn:?} do not fit [{e}, {h}, {}, 16]",
                        inter / 32
                    )));
                }
                let pairs = t * topk;
                let p = [
                    u(t),
                    u(topk),
                    u(h),
                    u(inter),
                    u(e),
                    flag(ins[5])?,
                    flag(ins[8])?,
                    0,
                    fbits(*swiglu_limit),
                    fbits(*alpha),
                    0,
                    0,
                ];
                let x = f32_in(ins[0])?;
                let (ids, w) = (one(ins[1])?, f32_in(ins[2])?);
                let (gub, gus, gubias) = (one(ins[3])?, one(ins[4])?, one(ins[5])?);
                let (dnb, dns, dnbias) = (one(ins[6])?, one(ins[7])?, one(ins[8])?);
                let out = one(outs[0])?;
                if pairs == 0 || h == 0 {
                    return Ok(());
                }
                let act = self.take_temp(pad4(pairs * inter * 4), "moe activations")?;
                let ys = self.take_temp(pad4(pairs * h * 4), "moe expert outputs")?;
                // Workgroups along a pair's units (two rows each), the pairs sharing the cap.
                let spread = |units: usize| {
                    let passes = units.div_ceil(self.rows.rows());
                    (u(passes.min((MOE_WORKGROUPS / pairs).max(1))), u(pairs))
                };
                let r = self
                    .dispatch(
                        enc,
                        &k.moe_gate_up,
                        &p,
                        &[x, ids, gub, gus, gubias, &act, &self.err_buf],
                        spread(inter),
                    )
                    .and_then(|_| {
                        self.dispatch(
                            enc,
                            &k.moe_down,
                            &p,
                            &[&act, ids, dnb, dns, dnbias, &ys],
                            spread(h / 2),
                        )
                    })
                    .and_then(|_| {
                        self.dispatch(
                            enc,
                            &k.moe_combine,
                            &p,
                            &[&ys, w, out, ids],
                            (u(h.div_ceil(64)), u(t)),
                        )
                    });
                self.give_temp(act);
                self.give_temp(ys);
                r?;
            }
            Op::Add => {
                let n = vdesc(ins[0]).numel();
                let int = vdesc(ins[0]).dtype == DType::I32 && vdesc(ins[1]).dtype == DType::I32;
                let (a, bb) = if int {
                    (one(ins[0])?, one(ins[1])?)
                } else {
                    (f32_in(ins[0])?, f32_in(ins[1])?)
                };
                let out = one(outs[0])?;
                let g = self.fold(u(n.div_ceil(256)));
                self.dispatch(enc, &k.add, &[u(n), int as u32, 0, 0], &[a, bb, out], g)?;
            }
            Op::LastRow => {
                let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
                let (x, out) = (f32_in(ins[0])?, one(outs[0])?);
                if t == 0 {
                    return Err(Error::tensor(
                        &graph.values[ins[0].0 as usize].name,
                        "last_row of an empty tensor",
                    ));
                }
                if n > 0 {
                    let at = ((t - 1) * n * 4) as u64;
                    enc.encoder()
                        .copy_buffer_to_buffer(x, at, out, 0, (n * 4) as u64);
                }
            }
            Op::Argmax => {
                let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
                if n == 0 && t > 0 {
                    return Err(Error::tensor(
                        &graph.values[ins[0].0 as usize].name,
                        "argmax over rows of length 0",
                    ));
                }
                let (x, out) = (f32_in(ins[0])?, one(outs[0])?);
                // Pass 1 spreads each row over workgroups of ARGMAX_CHUNK entries; pass 2
                // picks among their picks.
                let parts = n.div_ceil(ARGMAX_CHUNK).max(1);
                let p = [u(t), u(n), u(parts), u(ARGMAX_CHUNK)];
                let best = self.take_temp(pad4(t * parts * 8), "argmax chunk picks")?;
                let r = self
                    .dispatch(enc, &k.argmax_part, &p, &[x, &best], (u(parts), u(t)))
                    .and_then(|_| self.dispatch(enc, &k.argmax, &p, &[&best, out], (u(t), 1)));
                self.give_temp(best);
                r?;
            }
        }
        Ok(())
    }

    /// Attention's step 2 (`kernel` with its parameters `p`): straight
    /// into `o` with one split, else into a temporary of the splits' partial results that
    /// attention_merge combines into `o`.
    fn attention(
        &self,
        enc: &mut Recorder,
        (kernel, p): (&wgpu::ComputePipeline, &[u32]),
        ins: &[&wgpu::Buffer; 5],
        pages: Option<&wgpu::Buffer>,
        o: &wgpu::Buffer,
        split: AttentionSplit,
    ) -> Result<()> {
        let groups = (split.splits * split.heads, split.t);
        let mut bufs = ins.to_vec();
        if split.splits == 1 {
            bufs.push(o);
            bufs.extend(pages);
            return self.dispatch(enc, kernel, p, &bufs, groups);
        }
        // Both attention preludes start their parameters with t, heads, kv_heads, head_dim,
        // window, cache rows, the sinks' dtype flag: the merge takes its own from those.
        let merge = [p[0], p[1], p[3], split.splits, p[6], 0, 0, 0];
        let part = self.take_temp(pad4(split.partial_floats() * 4), "attention partials")?;
        bufs.push(&part);
        bufs.extend(pages);
        let r = self.dispatch(enc, kernel, p, &bufs, groups).and_then(|_| {
            self.dispatch(
                enc,
                &self.kernels.attention_merge,
                &merge,
                &[&part, ins[3], o],
                (split.heads, split.t),
            )
        });
        self.give_temp(part);
        r
    }

    /// Wait for the step and read the shaders' error word (copied to `err_read` and cleared
    /// by the step itself); a reported problem becomes an error.
    fn check_kernel_errors(&self) -> Result<()> {
        let raw = self.map_read(&[(&self.err_read, 16)])?.remove(0);
        let w: Vec<i32> = raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if w[0] == 0 {
            return Ok(());
        }
        let (a, b, c) = (w[1], w[2], w[3]);
        Err(Error::Input(match w[0] {
            1 => format!(
                "token id {a} (at index {c}) is out of range for the vocabulary of {b} tokens (ids 0..{b})"
            ),
            2 => format!(
                "attention: position {a} is beyond the KV cache capacity of {b} positions (0..{b}); \
                 use a longer context"
            ),
            3 => format!("moe: token {c} routed to expert {a}, but there are {b} experts (ids 0..{b})"),
            4 => format!("rope: negative position {a}"),
            5 => format!("gather_rows: row {a} of a tensor with {b} rows"),
            code => format!("a kernel reported error code {code} ({a}, {b}, {c})"),
        }))
    }
}

/// The limits the kernels rely on, each checked against `limits` of adapter `name`: the first
/// one short is an error naming it, what the adapter has and what the kernels need.
fn check_limits(name: &str, limits: &wgpu::Limits) -> Result<()> {
    let need = [
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
            NEED_STORAGE_BUFFERS,
        ),
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
            NEED_INVOCATIONS,
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x,
            NEED_INVOCATIONS,
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size,
            NEED_WORKGROUP_STORAGE,
        ),
    ];
    for (limit, have, want) in need {
        if have < want {
            return Err(err(format!(
                "adapter {name} lacks a needed limit: {limit} is {have}, the kernels need {want}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn webgpu_default_limits_are_enough() {
        check_limits("any", &wgpu::Limits::default()).unwrap();
    }

    #[test]
    fn a_short_limit_is_named_with_both_values() {
        let mut l = wgpu::Limits::default();
        l.max_storage_buffers_per_shader_stage = 4;
        let e = check_limits("Tiny GPU", &l).unwrap_err().to_string();
        assert!(
            e.contains("Tiny GPU")
                && e.contains("max_storage_buffers_per_shader_stage is 4")
                && e.contains(&format!("need {NEED_STORAGE_BUFFERS}")),
            "{e}"
        );
        let mut l = wgpu::Limits::default();
        l.max_compute_workgroup_storage_size = 4096;
        let e = check_limits("Tiny GPU", &l).unwrap_err().to_string();
        assert!(
            e.contains("max_compute_workgroup_storage_size is 4096"),
            "{e}"
        );
    }
}

impl Backend for Wgpu {
    fn name(&self) -> &str {
        BACKEND
    }

    fn probe(&self) -> ProbeReport {
        probe::probe()
    }

    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        let id = BufferId(self.next_id);
        let b = self.make_buf(desc, &format!("buffer {} {desc}", id.0))?;
        // Zeroed, like the other backends.
        let mut enc = self.device.create_command_encoder(&Default::default());
        for p in &b.parts {
            enc.clear_buffer(p, 0, None);
        }
        self.queue.submit([enc.finish()]);
        self.next_id += 1;
        self.buffers.insert(id, b);
        Ok(id)
    }

    fn free(&mut self, id: BufferId) -> Result<()> {
        // Cached bind groups would keep the memory alive.
        self.bind_groups.borrow_mut().clear();
        self.buffers
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| err(format!("free of unknown buffer {}", id.0)))
    }

    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
        let b = self
            .buffers
            .get(&id)
            .ok_or_else(|| err(format!("upload to unknown buffer {}", id.0)))?;
        b.desc
            .check_upload(format!("buffer {}", id.0), data.len())?;
        self.write(b, data);
        self.check_device_errors("uploading")
    }

    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        let b = self
            .buffers
            .get(&id)
            .ok_or_else(|| err(format!("download of unknown buffer {}", id.0)))?;
        let es = stored_size(b.desc.dtype);
        let total = b.desc.numel() * es;
        let rows = b.desc.shape.dims().first().copied().unwrap_or(1).max(1);
        let per = if b.parts.len() == 1 {
            total
        } else {
            b.rows_per_part * (total / rows)
        };
        let srcs: Vec<(&wgpu::Buffer, u64)> = b
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p, (per.min(total - i * per)) as u64))
            .collect();
        let stored: Vec<u8> = self.read_back(&srcs)?.concat();
        Ok(if b.desc.dtype == DType::F16 {
            stored
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect()
        } else {
            stored
        })
    }

    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
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
        let b = self.make_buf(desc, name)?;
        self.write(&b, data);
        self.check_device_errors(&format!("uploading '{name}'"))?;
        let id = BufferId(self.next_id);
        self.next_id += 1;
        self.buffers.insert(id, b);
        Ok(id)
    }

    fn execute(&mut self, graph: &Graph) -> Result<()> {
        graph.validate()?;
        let mut bound: Vec<Option<Bound>> = vec![None; graph.values.len()];
        for (i, v) in graph.values.iter().enumerate() {
            match v.kind {
                ValueKind::Weight(b)
                | ValueKind::Input(b)
                | ValueKind::State(b)
                | ValueKind::Output(b) => {
                    let buf = self.buffers.get(&b).ok_or_else(|| {
                        err(format!("'{}' is bound to unknown buffer {}", v.name, b.0))
                    })?;
                    buf.desc.check_binds(&v.name, &v.desc)?;
                    bound[i] = Some(Bound {
                        parts: buf.parts.clone(),
                        rows_per_part: buf.rows_per_part,
                        bf16: buf.desc.dtype == DType::BF16,
                    });
                }
                ValueKind::Temp => {
                    if !matches!(v.desc.dtype, DType::F32 | DType::I32) {
                        return Err(Error::Unsupported {
                            backend: BACKEND.into(),
                            what: format!("temporary '{}' in {}", v.name, v.desc.dtype),
                        });
                    }
                }
            }
        }
        let mut last_use = vec![usize::MAX; graph.values.len()];
        for (n, node) in graph.nodes.iter().enumerate() {
            for id in node.inputs.iter().chain(&node.outputs) {
                last_use[id.0 as usize] = n;
            }
        }
        let start = std::time::Instant::now();
        let mut enc = Recorder {
            enc: self.device.create_command_encoder(&Default::default()),
            pass: None,
            params: Vec::new(),
            node: String::new(),
        };
        let mut result = Ok(());
        for (n, node) in graph.nodes.iter().enumerate() {
            for id in &node.outputs {
                let i = id.0 as usize;
                if bound[i].is_none() {
                    let v = &graph.values[i];
                    match self.take_temp(pad4(v.desc.byte_size()), &v.name) {
                        Ok(b) => {
                            bound[i] = Some(Bound {
                                parts: vec![b],
                                rows_per_part: v.desc.shape.dims().first().copied().unwrap_or(1),
                                bf16: false,
                            })
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            if result.is_err() {
                break;
            }
            if self.profile.is_some() {
                let out = &graph.values[node.outputs[0].0 as usize].desc;
                enc.node = format!("{} -> {:?}", node.op.name(), out.shape.dims());
            }
            if let Err(e) = self.run_node(&mut enc, graph, node, &bound) {
                result = Err(match e {
                    Error::Unsupported { .. } | Error::Input(_) => e,
                    other => {
                        let why = match other {
                            Error::Backend { reason, .. } => reason,
                            o => o.to_string(),
                        };
                        err(format!(
                            "{} ({}): {why}",
                            node.op.name(),
                            graph.values[node.outputs[0].0 as usize].name
                        ))
                    }
                });
                break;
            }
            for id in node.inputs.iter().chain(&node.outputs) {
                let i = id.0 as usize;
                if last_use[i] == n && matches!(graph.values[i].kind, ValueKind::Temp) {
                    if let Some(b) = bound[i].take() {
                        for p in b.parts {
                            self.give_temp(p);
                        }
                    }
                }
            }
        }
        for (i, b) in bound.iter_mut().enumerate() {
            if matches!(graph.values[i].kind, ValueKind::Temp) {
                if let Some(b) = b.take() {
                    for p in b.parts {
                        self.give_temp(p);
                    }
                }
            }
        }
        if let Err(e) = result {
            self.profile_step(graph, start, start.elapsed(), false);
            return Err(e);
        }
        let mut enc = self.finish(enc);
        enc.copy_buffer_to_buffer(&self.err_buf, 0, &self.err_read, 0, 16);
        enc.clear_buffer(&self.err_buf, 0, None);
        if let Some(p) = &self.profile {
            p.borrow().resolve(&mut enc);
        }
        let record = start.elapsed();
        self.queue.submit([enc.finish()]);
        self.check_device_errors("executing the graph")?;
        // Waits for the step (the error word is read after it) and reports bad input.
        let r = self.check_kernel_errors();
        self.profile_step(graph, start, record, r.is_ok());
        r?;
        self.check_device_errors("executing the graph")
    }
}

impl Wgpu {
    /// Account a finished execute in the profile (its timestamps when `done`).
    fn profile_step(&self, graph: &Graph, start: std::time::Instant, record: Duration, done: bool) {
        let Some(p) = &self.profile else { return };
        let raw = if done {
            let p = p.borrow();
            self.map_read(&p.readbacks()).unwrap_or_default()
        } else {
            Vec::new()
        };
        let first = graph
            .nodes
            .first()
            .map(|n| {
                let d = &graph.values[n.outputs[0].0 as usize].desc;
                format!("{} -> {:?}", n.op.name(), d.shape.dims())
            })
            .unwrap_or_default();
        let class = format!("{} nodes, first {first}", graph.nodes.len());
        p.borrow_mut().finish(class, start, record, &raw);
    }
}

impl Drop for Wgpu {
    fn drop(&mut self) {
        if let Some(r) = self.profile_report() {
            eprint!("{r}");
        }
    }
}

impl PluginBackend for Wgpu {
    const NAME: &'static str = BACKEND;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn probe_devices() -> ProbeReport {
        probe::probe()
    }

    fn create(options: &PluginOptions) -> Result<Self> {
        std::panic::catch_unwind(|| Wgpu::open(options.device)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(err(format!("wgpu could not open the adapter: {msg}")))
        })
    }
}

// In a module of its own (its own codegen unit), so that test binaries linking this crate
// and the cpu backend as rlibs do not pull two `gptoss_backend_entry` symbols.
mod entry {
    gptoss_core::export_backend!(super::Wgpu);
}
