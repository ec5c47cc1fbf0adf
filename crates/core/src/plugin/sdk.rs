//! The plugin SDK: implement [`Backend`] + [`PluginBackend`] and call [`export_backend!`].
//!
//! ```text
//! struct MyBackend { /* ... */ }
//! impl gptoss_core::Backend for MyBackend { /* alloc, upload, execute, ... */ }
//! impl gptoss_core::plugin::PluginBackend for MyBackend {
//!     const NAME: &'static str = "my-backend";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     fn probe_devices() -> gptoss_core::ProbeReport { /* devices + score */ }
//!     fn create(options: &gptoss_core::plugin::PluginOptions) -> gptoss_core::Result<Self> { /* ... */ }
//! }
//! gptoss_core::export_backend!(MyBackend);
//! ```
//!
//! A backend whose buffers live in host memory can skip `Backend` altogether: implement
//! [`crate::host::HostKernels`] and export `HostExecutor<MyKernels>` through a newtype.
//! Everything here runs inside the plugin; the trampolines catch panics so none cross.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use super::abi::*;
use super::codec;
use crate::host::{HostExecutor, HostKernels};
use crate::{Backend, Error, ProbeReport, Result};

/// Options the host passes to `create` (JSON object on the wire).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PluginOptions {
    /// CPU threads for host-side work; 0 = the backend's choice.
    pub threads: usize,
    /// Index of the device to use among those `probe` reported.
    pub device: usize,
    /// Set when this instance runs one shard of a model split over several backends.
    pub shard: Option<crate::collective::ShardOptions>,
    /// Expand the MXFP4 experts to bf16 at load (the CUDA backends' --dequantize): about 4x
    /// their memory, bf16 matrix products instead of in-kernel decoding.
    pub dequantize: bool,
}

/// What a plugin adds to [`Backend`]: its identity, its probe and its constructor.
pub trait PluginBackend: Backend + Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    /// Devices and scores, without creating an instance (runs for `gptoss backends`).
    fn probe_devices() -> ProbeReport;
    fn create(options: &PluginOptions) -> Result<Self>;
}

/// A plugin whose buffers live in host memory supplies only kernels: implement this for its
/// [`HostKernels`] type and export `HostExecutor<ThatType>`.
pub trait HostPlugin: HostKernels + Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    fn probe_devices() -> ProbeReport;
    fn create(options: &PluginOptions) -> Result<Self>;
}

impl<K: HostPlugin> PluginBackend for HostExecutor<K> {
    const NAME: &'static str = K::NAME;
    const VERSION: &'static str = K::VERSION;
    fn probe_devices() -> ProbeReport {
        K::probe_devices()
    }
    fn create(options: &PluginOptions) -> Result<Self> {
        let exec = HostExecutor::new(K::NAME, K::create(options)?);
        match &options.shard {
            Some(shard) => exec.with_shard(shard),
            None => Ok(exec),
        }
    }
}

fn owned(s: String) -> GOwnedStr {
    let mut s = std::mem::ManuallyDrop::new(s.into_bytes());
    GOwnedStr {
        ptr: s.as_mut_ptr(),
        len: s.len(),
        cap: s.capacity(),
    }
}

/// Frees a string this plugin allocated.
///
/// # Safety
/// `s` must come from this plugin's `owned` and be freed once.
pub unsafe extern "C" fn free_string(s: GOwnedStr) {
    if !s.ptr.is_null() {
        drop(Vec::from_raw_parts(s.ptr, s.len, s.cap));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run `f`, turning errors and panics into a status code and a message in `err`.
unsafe fn guard(name: &str, err: *mut GOwnedStr, f: impl FnOnce() -> Result<()>) -> i32 {
    let (code, msg) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return STATUS_OK,
        // The host wraps the message in an error naming this plugin: send it without the
        // backend name, or it would appear twice.
        Ok(Err(Error::Unsupported { what, .. })) => (STATUS_UNSUPPORTED, what),
        Ok(Err(Error::Backend { name: n, reason })) if n == name => (STATUS_ERROR, reason),
        Ok(Err(e)) => (STATUS_ERROR, e.to_string()),
        Err(p) => (
            STATUS_PANIC,
            format!("plugin '{name}' panicked: {}", panic_message(p.as_ref())),
        ),
    };
    if !err.is_null() {
        *err = owned(msg);
    }
    code
}

/// What a handle points at: the backend, and the graph of its last `execute`, decoded over
/// in place by the next one (decode steps repeat the same graph, so this allocates nothing).
struct Instance<B> {
    backend: B,
    graph: crate::Graph,
}

unsafe fn instance<'a, B>(h: GHandle) -> Result<&'a mut Instance<B>> {
    (h as *mut Instance<B>)
        .as_mut()
        .ok_or_else(|| Error::Input("null backend handle".into()))
}

/// The instance behind `h` with `graph` decoded into its reused graph.
unsafe fn instance_with_graph<'a, B>(
    h: GHandle,
    graph: *const GGraph,
) -> Result<&'a mut Instance<B>> {
    let inst = instance::<B>(h)?;
    codec::graph_from_c_into(
        graph
            .as_ref()
            .ok_or_else(|| Error::Input("null graph".into()))?,
        &mut inst.graph,
    )?;
    Ok(inst)
}

unsafe fn backend<'a, B>(h: GHandle) -> Result<&'a mut B> {
    Ok(&mut instance::<B>(h)?.backend)
}

unsafe fn read_desc(desc: *const GTensorDesc) -> Result<crate::TensorDesc> {
    codec::desc_from_c(
        desc.as_ref()
            .ok_or_else(|| Error::Input("null tensor description".into()))?,
    )
}

unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, len)
    }
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn probe<B: PluginBackend>(
    out_json: *mut GOwnedStr,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let json =
            serde_json::to_string(&B::probe_devices()).map_err(|e| Error::Input(e.to_string()))?;
        *out_json = owned(json);
        Ok(())
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn create<B: PluginBackend>(
    options: GStr,
    out: *mut GHandle,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let text = options
            .as_str()
            .map_err(|e| Error::Input(format!("options are not UTF-8: {e}")))?;
        let opts: PluginOptions = if text.is_empty() {
            PluginOptions::default()
        } else {
            serde_json::from_str(text)
                .map_err(|e| Error::Input(format!("bad plugin options {text}: {e}")))?
        };
        let inst = Instance {
            backend: B::create(&opts)?,
            graph: crate::Graph::new(),
        };
        *out = Box::into_raw(Box::new(inst)) as GHandle;
        Ok(())
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn destroy<B: PluginBackend>(h: GHandle) {
    if !h.is_null() {
        // A panic in Drop must not cross either.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(Box::from_raw(h as *mut Instance<B>))
        }));
    }
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn alloc<B: PluginBackend>(
    h: GHandle,
    desc: *const GTensorDesc,
    out: *mut u64,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        *out = backend::<B>(h)?.alloc(&read_desc(desc)?)?.0;
        Ok(())
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn free<B: PluginBackend>(h: GHandle, id: u64, err: *mut GOwnedStr) -> i32 {
    guard(B::NAME, err, || backend::<B>(h)?.free(crate::BufferId(id)))
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn upload<B: PluginBackend>(
    h: GHandle,
    id: u64,
    data: *const u8,
    len: usize,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        backend::<B>(h)?.upload(crate::BufferId(id), bytes(data, len))
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn download<B: PluginBackend>(
    h: GHandle,
    id: u64,
    out: *mut u8,
    len: usize,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let data = backend::<B>(h)?.download(crate::BufferId(id))?;
        if data.len() != len {
            return Err(Error::Input(format!(
                "download of buffer {id}: host expects {len} bytes, buffer holds {}",
                data.len()
            )));
        }
        if len > 0 {
            std::ptr::copy_nonoverlapping(data.as_ptr(), out, len);
        }
        Ok(())
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn load_weight<B: PluginBackend>(
    h: GHandle,
    name: GStr,
    desc: *const GTensorDesc,
    data: *const u8,
    len: usize,
    out: *mut u64,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let name = name
            .as_str()
            .map_err(|e| Error::Input(format!("weight name is not UTF-8: {e}")))?;
        *out = backend::<B>(h)?
            .load_weight(name, &read_desc(desc)?, bytes(data, len))?
            .0;
        Ok(())
    })
}

/// # Safety
/// Called by the host through the vtable only, with the arguments the ABI documents: `h` from
/// this plugin's `create`, pointers valid (and `len` bytes long) for the duration of the call.
pub unsafe extern "C" fn execute<B: PluginBackend>(
    h: GHandle,
    graph: *const GGraph,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let inst = instance_with_graph::<B>(h, graph)?;
        inst.backend.execute(&inst.graph)
    })
}

/// # Safety
/// `h` comes from `create`; `graph` is a valid C graph, `io` three buffer ids and `out` room
/// for `steps` tokens.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn decode_chain<B: PluginBackend>(
    h: GHandle,
    graph: *const GGraph,
    io: *const u64,
    first: u32,
    start: u32,
    steps: usize,
    out: *mut u32,
    err: *mut GOwnedStr,
) -> i32 {
    guard(B::NAME, err, || {
        let inst = instance_with_graph::<B>(h, graph)?;
        let [ids, positions, argmax] = *(io as *const [u64; 3]);
        let io = crate::DecodeChain {
            ids: crate::BufferId(ids),
            positions: crate::BufferId(positions),
            argmax: crate::BufferId(argmax),
            first,
            start,
        };
        let tokens = inst.backend.decode_chain(&inst.graph, io, steps)?;
        if tokens.len() != steps {
            return Err(Error::backend(
                B::NAME,
                format!(
                    "decode_chain gave {} tokens for {steps} steps",
                    tokens.len()
                ),
            ));
        }
        std::ptr::copy_nonoverlapping(tokens.as_ptr(), out, steps);
        Ok(())
    })
}

/// Export `$ty` (a [`PluginBackend`]) as this library's `gptoss_backend_entry`.
#[macro_export]
macro_rules! export_backend {
    ($ty:ty) => {
        #[no_mangle]
        pub extern "C" fn gptoss_backend_entry() -> *const $crate::plugin::abi::GptossBackendVTable
        {
            use $crate::plugin::sdk;
            static VTABLE: $crate::plugin::abi::GptossBackendVTable =
                $crate::plugin::abi::GptossBackendVTable {
                    abi_version: $crate::plugin::abi::GPTOSS_ABI_VERSION,
                    name: $crate::plugin::abi::GStr::from_static(
                        <$ty as $crate::plugin::PluginBackend>::NAME,
                    ),
                    version: $crate::plugin::abi::GStr::from_static(
                        <$ty as $crate::plugin::PluginBackend>::VERSION,
                    ),
                    probe: sdk::probe::<$ty>,
                    create: sdk::create::<$ty>,
                    destroy: sdk::destroy::<$ty>,
                    alloc: sdk::alloc::<$ty>,
                    free: sdk::free::<$ty>,
                    upload: sdk::upload::<$ty>,
                    download: sdk::download::<$ty>,
                    load_weight: sdk::load_weight::<$ty>,
                    execute: sdk::execute::<$ty>,
                    free_string: sdk::free_string,
                    decode_chain: sdk::decode_chain::<$ty>,
                };
            &VTABLE
        }
    };
}
