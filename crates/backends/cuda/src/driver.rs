//! Thin wrappers over the CUDA driver API (cudarc's `result` layer, loaded with dlopen).
//!
//! Every call returns a [`gptoss_core::Error`]; nothing here panics on a CUDA failure.

use std::ffi::{c_void, CString};

use cudarc::driver::{result, sys};
use gptoss_core::{Error, Result};

pub use sys::{CUdeviceptr, CUfunction};

/// Whether this process runs the portable flavor (set when a backend is probed or created; a
/// plugin library holds one flavor, so its errors carry that flavor's backend name).
static PORTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_flavor(portable: bool) {
    PORTABLE.store(portable, std::sync::atomic::Ordering::Relaxed);
}

/// The backend name for errors: "cuda-mxfp4" or "cuda-bf16".
pub fn backend() -> &'static str {
    if PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        gptoss_core::plugin::scoring::CUDA_BF16
    } else {
        gptoss_core::plugin::scoring::CUDA_MXFP4
    }
}

/// The driver's name and description of a failure, e.g. `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
pub fn describe(e: &result::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

pub fn cuda_err(what: &str, e: result::DriverError) -> Error {
    Error::backend(backend(), format!("{what}: {}", describe(&e)))
}

/// Whether libcuda can be opened at all (checked before any cudarc call, which would panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0).
pub fn driver_version() -> Result<(u32, u32)> {
    let mut v = 0i32;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| cuda_err("cuDriverGetVersion", e))?;
    Ok(((v / 1000) as u32, ((v % 1000) / 10) as u32))
}

/// Facts about one device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub cc: (u32, u32),
    /// Streaming multiprocessors (sizes persistent grids).
    pub sms: u32,
}

pub fn init() -> Result<()> {
    result::init().map_err(|e| cuda_err("cuInit", e))
}

pub fn devices() -> Result<Vec<DeviceInfo>> {
    init()?;
    let n = result::device::get_count().map_err(|e| cuda_err("cuDeviceGetCount", e))?;
    (0..n)
        .map(|i| {
            let dev = result::device::get(i).map_err(|e| cuda_err("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| cuda_err("cuDeviceGetName", e))?;
            let attr = |a| {
                // SAFETY: dev comes from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }
                    .map_err(|e| cuda_err("cuDeviceGetAttribute", e))
            };
            let major =
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor =
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            Ok(DeviceInfo {
                name,
                cc: (major as u32, minor as u32),
                sms: sms.max(1) as u32,
            })
        })
        .collect()
}

/// A primary context made current plus one stream; released on drop.
pub struct Gpu {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    pub stream: sys::CUstream,
    pub info: DeviceInfo,
    pub driver: (u32, u32),
    /// While `Some`, `launch` records instead of launching (see `Launch`).
    pub rec: std::cell::RefCell<Option<Vec<Launch>>>,
    /// This GPU's member of the shard group's communicator (split models only).
    pub comm: Option<crate::nccl::Communicator>,
    /// cuBLAS on this stream and its workspace (--dequantize with cuBLAS found; see
    /// `enable_cublas`).
    blas: Option<(crate::cublas::Blas, CUdeviceptr)>,
    /// GPTOSS_CUDA_SYNC: synchronise after every launch (read once).
    sync_each: bool,
    /// Page-locked host memory for small copies (None where it could not be had): they are
    /// then queued on the stream without the host waiting for them (see `htod`).
    pinned: Option<Pinned>,
}

/// A page-locked host buffer: `STAGING` bytes handed out to queued small uploads (`used`,
/// back to 0 whenever the stream is synchronised, which completes them), then `READBACK`
/// bytes for small reads queued ahead of a synchronisation (`queue_read_back`, `read_back`).
struct Pinned {
    ptr: *mut u8,
    used: std::cell::Cell<usize>,
}

/// Uploads of at most this many bytes are queued through the pinned staging (a decode
/// step's token and position: the host then does not wait a round trip for each).
const SMALL_COPY: usize = 4096;
const STAGING: usize = 64 * SMALL_COPY;
const READBACK: usize = 256;

impl Pinned {
    fn new() -> Option<Pinned> {
        // SAFETY: plain allocation, freed in Gpu's Drop.
        let ptr = unsafe { result::malloc_host(STAGING + READBACK, 0) }.ok()?;
        Some(Pinned {
            ptr: ptr as *mut u8,
            used: std::cell::Cell::new(0),
        })
    }
}

/// `Launch::f` of a recorded NCCL all-reduce (args: send, recv, count); a kernel's function
/// handle is never null.
pub const ALL_REDUCE: usize = 0;

/// `Launch::f` of a recorded cuBLAS GEMM (args: `cublas::Gemm::to_slots`); a kernel's function
/// handle is a pointer, never 1.
pub const CUBLAS_GEMM: usize = 1;

/// One recorded kernel launch (or all-reduce, `f == ALL_REDUCE`, or cuBLAS GEMM,
/// `f == CUBLAS_GEMM`): replayed directly, or captured into a CUDA graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub f: usize,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
    pub args: Vec<u64>,
    /// Programmatic dependent launch (sm_90+): the kernel may start while the previous one
    /// of the stream runs, and waits for it (griddepcontrol.wait) before reading its results.
    pub early: bool,
}

// The context and stream are plain handles; CUDA allows using them from any thread once the
// context is made current there, which `bind` does at the start of every entry point.
unsafe impl Send for Gpu {}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let info = devices()?
            .into_iter()
            .nth(ordinal)
            .ok_or_else(|| Error::backend(backend(), format!("no CUDA device {ordinal}")))?;
        let driver = driver_version()?;
        let dev = result::device::get(ordinal as i32).map_err(|e| cuda_err("cuDeviceGet", e))?;
        // SAFETY: dev comes from cuDeviceGet; the context is released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }
            .map_err(|e| cuda_err("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: ctx was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| cuda_err("cuCtxSetCurrent", e))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| cuda_err("cuStreamCreate", e))?;
        Ok(Gpu {
            dev,
            ctx,
            stream,
            info,
            driver,
            rec: std::cell::RefCell::new(None),
            comm: None,
            blas: None,
            sync_each: std::env::var_os("GPTOSS_CUDA_SYNC").is_some(),
            pinned: Pinned::new(),
        })
    }

    /// Make this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: ctx stays retained for the life of self.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| cuda_err("cuCtxSetCurrent", e))
    }

    pub fn mem_info(&self) -> (usize, usize) {
        result::mem_get_info().unwrap_or((0, 0))
    }

    /// Allocate `bytes` (at least 1) of device memory.
    pub fn malloc(&self, bytes: usize) -> std::result::Result<CUdeviceptr, result::DriverError> {
        // SAFETY: plain allocation; freed with `free`.
        unsafe { result::malloc_sync(bytes.max(1)) }
    }

    pub fn free(&self, p: CUdeviceptr) -> Result<()> {
        self.sync()?;
        // SAFETY: p came from malloc and is freed once; work using it is complete or ordered
        // before (cuMemFree synchronizes).
        unsafe { result::free_sync(p) }.map_err(|e| cuda_err("cuMemFree", e))
    }

    pub fn memset_zero(&self, p: CUdeviceptr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: p holds at least `bytes` bytes.
        unsafe { result::memset_d8_async(p, 0, bytes, self.stream) }
            .map_err(|e| cuda_err("cuMemsetD8Async", e))
    }

    /// Copy host bytes to the device, ordered on this backend's stream: a small copy is
    /// queued from pinned memory (done before any later work on the stream, which is all
    /// that reads device memory); a larger one returns when done.
    pub fn htod(&self, dst: CUdeviceptr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if let Some(p) = self.pinned.as_ref().filter(|_| src.len() <= SMALL_COPY) {
            if p.used.get() + src.len() > STAGING {
                self.sync()?; // completes the queued copies, freeing the staging
            }
            let at = p.used.get();
            // SAFETY: [at, at + len) lies inside the staging, which no queued copy still
            // reads (`used` only returns to 0 once the stream is synchronised).
            let staged = unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), p.ptr.add(at), src.len());
                std::slice::from_raw_parts(p.ptr.add(at), src.len())
            };
            p.used.set(at + src.len().next_multiple_of(16));
            // SAFETY: dst holds at least src.len() bytes; the staged bytes stay untouched until
            // the next synchronisation, after which the copy is complete.
            return unsafe { result::memcpy_htod_async(dst, staged, self.stream) }
                .map_err(|e| cuda_err("cuMemcpyHtoDAsync", e));
        }
        // SAFETY: dst holds at least src.len() bytes; src outlives the copy (synced below).
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))?;
        self.sync()
    }

    /// Copy device bytes to the host after all queued work; returns when done.
    pub fn dtoh(&self, dst: &mut [u8], src: CUdeviceptr) -> Result<()> {
        if !dst.is_empty() {
            // SAFETY: src holds at least dst.len() bytes; dst outlives the copy (synced below).
            unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
                .map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))?;
        }
        self.sync()
    }

    pub fn sync(&self) -> Result<()> {
        // SAFETY: the stream lives as long as self.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(|e| cuda_err("cuStreamSynchronize (a kernel failed)", e))?;
        if let Some(p) = &self.pinned {
            p.used.set(0); // every queued upload is complete
        }
        Ok(())
    }

    /// Queue a copy of `n` (at most READBACK) device bytes at `src` into pinned memory, to be
    /// read with `read_back` after the next `sync`; false where there is no pinned memory
    /// (read with `dtoh` then).
    pub fn queue_read_back(&self, src: CUdeviceptr, n: usize) -> Result<bool> {
        let Some(p) = self.pinned.as_ref().filter(|_| n <= READBACK) else {
            return Ok(false);
        };
        // SAFETY: the read-back area lies after the staging and holds READBACK bytes; src
        // holds n bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(p.ptr.add(STAGING), n) };
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))?;
        Ok(true)
    }

    /// The bytes `queue_read_back` asked for (call after a `sync`).
    pub fn read_back(&self, out: &mut [u8]) {
        if let Some(p) = &self.pinned {
            let n = out.len().min(READBACK);
            // SAFETY: the read-back area holds READBACK bytes, written by a completed copy.
            unsafe { std::ptr::copy_nonoverlapping(p.ptr.add(STAGING), out.as_mut_ptr(), n) };
        }
    }

    /// Load a cubin (or NUL-terminated PTX) image.
    pub fn load_module(&self, image: &[u8]) -> Result<sys::CUmodule> {
        // SAFETY: image is a complete module image that outlives the call.
        unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
            .map_err(|e| cuda_err("cuModuleLoadData", e))
    }

    pub fn function(&self, module: sys::CUmodule, name: &str) -> Result<CUfunction> {
        let c = CString::new(name).expect("kernel names have no NUL");
        // SAFETY: module is loaded.
        unsafe { result::module::get_function(module, c) }
            .map_err(|e| cuda_err(&format!("cuModuleGetFunction({name})"), e))
    }

    /// Launch `f` on the stream. Arguments are 8-byte slots: pointers, or 4-byte scalars in
    /// the low half (little-endian), which is what the driver reads for an int/float param.
    /// `early`: a programmatic dependent launch (see `Launch::early`).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        name: &str,
        f: CUfunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
        early: bool,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let launch = Launch {
            f: f as usize,
            grid,
            block,
            smem,
            args: args.iter().map(Arg::bits).collect(),
            early,
        };
        let Some(l) = self.record_launch(launch) else {
            return Ok(());
        };
        self.launch_raw(name, &l)?;
        if self.sync_each {
            self.sync()
                .map_err(|e| Error::backend(backend(), format!("kernel {name}: {e}")))?;
        }
        Ok(())
    }

    /// Keeps `l` for the step being recorded (see `rec`); hands it back when nothing records,
    /// to be issued now.
    fn record_launch(&self, l: Launch) -> Option<Launch> {
        match self.rec.borrow_mut().as_mut() {
            Some(rec) => {
                rec.push(l);
                None
            }
            None => Some(l),
        }
    }

    fn launch_raw(&self, name: &str, l: &Launch) -> Result<()> {
        let mut slots = l.args.clone();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let f = l.f as CUfunction;
        let err = |e| cuda_err(&format!("launching kernel {name}"), e);
        if !l.early {
            // SAFETY: f is a loaded kernel whose parameters match the slots (checked by the op
            // code that builds them); device pointers are live allocations of this context.
            return unsafe {
                result::launch_kernel(f, l.grid, l.block, l.smem, self.stream, &mut params)
            }
            .map_err(err);
        }
        // SAFETY: an all-zero attribute value is valid (a plain union of integers).
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: l.grid.0,
            gridDimY: l.grid.1,
            gridDimZ: l.grid.2,
            blockDimX: l.block.0,
            blockDimY: l.block.1,
            blockDimZ: l.block.2,
            sharedMemBytes: l.smem,
            hStream: self.stream,
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as above; config and attr outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()).result()
        }
        .map_err(err)
    }

    /// Sum `count` floats at `send` over every GPU of the communicator into `recv`, on the
    /// stream (recorded like a kernel while recording).
    pub fn all_reduce(&self, send: CUdeviceptr, recv: CUdeviceptr, count: usize) -> Result<()> {
        let launch = Launch {
            f: ALL_REDUCE,
            grid: (1, 1, 1),
            block: (1, 1, 1),
            smem: 0,
            args: vec![send, recv, count as u64],
            early: false,
        };
        match self.record_launch(launch) {
            Some(l) => self.all_reduce_raw(&l.args),
            None => Ok(()),
        }
    }

    fn all_reduce_raw(&self, args: &[u64]) -> Result<()> {
        let comm = self.comm.as_ref().ok_or_else(|| {
            Error::backend(backend(), "all-reduce without a communicator".to_string())
        })?;
        comm.all_reduce_f32(args[0], args[1], args[2] as usize, self.stream)
    }

    /// Make cuBLAS usable on this stream (`gemm`): a handle bound to the stream with a
    /// workspace of its own, so a GEMM captured into a CUDA graph allocates nothing.
    pub fn enable_cublas(&mut self) -> Result<()> {
        if self.blas.is_some() {
            return Ok(());
        }
        let ws = self
            .malloc(crate::cublas::WORKSPACE_BYTES)
            .map_err(|e| cuda_err("allocating the cuBLAS workspace", e))?;
        match crate::cublas::Blas::new(self.stream, ws) {
            Ok(b) => {
                self.blas = Some((b, ws));
                Ok(())
            }
            Err(e) => {
                let _ = self.free(ws);
                Err(e)
            }
        }
    }

    /// Whether `enable_cublas` succeeded.
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// Enqueue a cuBLAS GEMM on the stream (recorded like a kernel while recording).
    pub fn gemm(&self, g: crate::cublas::Gemm) -> Result<()> {
        let launch = Launch {
            f: CUBLAS_GEMM,
            grid: (1, 1, 1),
            block: (1, 1, 1),
            smem: 0,
            args: g.to_slots(),
            early: false,
        };
        match self.record_launch(launch) {
            Some(l) => self.gemm_raw(&l.args),
            None => Ok(()),
        }
    }

    fn gemm_raw(&self, args: &[u64]) -> Result<()> {
        let (blas, _) = self
            .blas
            .as_ref()
            .ok_or_else(|| Error::backend(backend(), "a cuBLAS GEMM without cuBLAS".to_string()))?;
        let g = crate::cublas::Gemm::from_slots(args).ok_or_else(|| {
            Error::backend(
                backend(),
                "a recorded cuBLAS GEMM with bad arguments".to_string(),
            )
        })?;
        blas.gemm(&g)?;
        if self.sync_each {
            self.sync()
                .map_err(|e| Error::backend(backend(), format!("cublasGemmEx: {e}")))?;
        }
        Ok(())
    }

    /// Issue what was recorded so far and launch directly from here on (the rest of the step
    /// needs results on the host). Returns whether anything was being recorded.
    pub fn stop_recording(&self) -> Result<bool> {
        let taken = self.rec.borrow_mut().take();
        match taken {
            Some(launches) => self.replay(&launches).map(|_| true),
            None => Ok(false),
        }
    }

    /// Launch recorded kernels in order on the stream.
    pub fn replay(&self, launches: &[Launch]) -> Result<()> {
        for l in launches {
            if l.f == ALL_REDUCE {
                self.all_reduce_raw(&l.args)?;
                continue;
            }
            if l.f == CUBLAS_GEMM {
                self.gemm_raw(&l.args)?;
                continue;
            }
            self.launch_raw("(recorded)", l)?;
        }
        Ok(())
    }

    /// Capture `launches` into a CUDA graph and instantiate it.
    pub fn capture(&self, launches: &[Launch]) -> Result<sys::CUgraphExec> {
        // SAFETY: the stream is ours; nothing else is issued on it while capturing.
        unsafe {
            result::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(|e| cuda_err("cuStreamBeginCapture", e))?;
        let issued = self.replay(launches);
        // SAFETY: capture was begun above on this stream.
        let graph = unsafe { result::stream::end_capture(self.stream) }
            .map_err(|e| cuda_err("cuStreamEndCapture", e));
        issued?;
        let graph = graph?;
        // SAFETY: graph comes from end_capture; destroyed after instantiation.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
            .map_err(|e| cuda_err("cuGraphInstantiate", e));
        // SAFETY: graph is valid and no longer needed once instantiated.
        let _ = unsafe { result::graph::destroy(graph) };
        exec
    }

    pub fn graph_launch(&self, exec: sys::CUgraphExec) -> Result<()> {
        // SAFETY: exec comes from `capture` on this context.
        unsafe { result::graph::launch(exec, self.stream) }
            .map_err(|e| cuda_err("cuGraphLaunch", e))
    }

    pub fn graph_destroy(&self, exec: sys::CUgraphExec) {
        // SAFETY: exec comes from `capture` and is destroyed once.
        let _ = unsafe { result::graph::exec_destroy(exec) };
    }

    pub fn event(&self) -> Result<sys::CUevent> {
        result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|e| cuda_err("cuEventCreate", e))
    }

    pub fn record(&self, ev: sys::CUevent) -> Result<()> {
        // SAFETY: ev was created by `event` in this context.
        unsafe { result::event::record(ev, self.stream) }.map_err(|e| cuda_err("cuEventRecord", e))
    }

    /// Milliseconds between two recorded, completed events.
    pub fn elapsed_ms(&self, a: sys::CUevent, b: sys::CUevent) -> f32 {
        // SAFETY: both events were recorded on this stream and the stream was synchronised.
        unsafe { result::event::elapsed(a, b) }.unwrap_or(0.0)
    }

    pub fn event_destroy(&self, ev: sys::CUevent) {
        // SAFETY: destroyed once.
        let _ = unsafe { result::event::destroy(ev) };
    }

    pub fn unload(&self, m: sys::CUmodule) {
        // SAFETY: module loaded by this context and unloaded once.
        let _ = unsafe { result::module::unload(m) };
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.bind();
        // cuBLAS before the context it lives in.
        if let Some((blas, ws)) = self.blas.take() {
            let _ = self.sync();
            drop(blas);
            let _ = self.free(ws);
        }
        // SAFETY: handles created in open() and released once.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            if let Some(p) = self.pinned.take() {
                let _ = result::free_host(p.ptr as *mut c_void);
            }
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

/// One kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(CUdeviceptr),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    fn bits(&self) -> u64 {
        match *self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::I64(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}
