//! The plugin C ABI: what crosses between the `gptoss` host and a backend shared library.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`] (`gptoss_backend_entry`), an
//! `extern "C" fn() -> *const GptossBackendVTable`. The vtable starts with `abi_version`; the
//! host reads that field first and refuses a plugin whose version differs from
//! [`GPTOSS_ABI_VERSION`] before touching anything else.
//!
//! Rules of the boundary:
//! - every function returns a status code ([`STATUS_OK`] = 0) and, on failure, fills `err`
//!   with a message string the plugin allocated; the host copies it and hands it back to the
//!   plugin's `free_string` (memory is always freed by the side that allocated it);
//! - strings are UTF-8 pointer + length, never NUL-terminated;
//! - buffers are opaque `u64` handles owned by the plugin;
//! - the graph crosses as `#[repr(C)]` arrays ([`GGraph`]), valid only during the call;
//! - panics never cross: the SDK wraps every entry point in `catch_unwind` and reports
//!   [`STATUS_PANIC`] with the panic message;
//! - a plugin library is never unloaded while the process runs.
//!
//! Changing any type in this file is an ABI change: bump [`GPTOSS_ABI_VERSION`].

use std::ffi::c_void;

/// Version of this ABI. A plugin built against another version is refused with both numbers.
pub const GPTOSS_ABI_VERSION: u32 = 2;

/// The one symbol a plugin exports (NUL-terminated for the dynamic loader).
pub const ENTRY_SYMBOL: &[u8] = b"gptoss_backend_entry\0";

pub const STATUS_OK: i32 = 0;
/// An ordinary failure with a message (bad input, out of memory, ...).
pub const STATUS_ERROR: i32 = 1;
/// The plugin does not implement what was asked (an op, a dtype).
pub const STATUS_UNSUPPORTED: i32 = 2;
/// The plugin panicked; the message says where. The plugin stays loaded and usable.
pub const STATUS_PANIC: i32 = 3;

/// Borrowed UTF-8 string: pointer + length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl GStr {
    pub const fn from_static(s: &'static str) -> GStr {
        GStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
    pub fn new(s: &str) -> GStr {
        GStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive the returned reference.
    pub unsafe fn as_str<'a>(self) -> Result<&'a str, std::str::Utf8Error> {
        if self.len == 0 {
            return Ok("");
        }
        std::str::from_utf8(std::slice::from_raw_parts(self.ptr, self.len))
    }
}

/// A string allocated by the plugin, returned to its `free_string` after reading.
#[repr(C)]
#[derive(Debug)]
pub struct GOwnedStr {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl GOwnedStr {
    pub const fn empty() -> GOwnedStr {
        GOwnedStr {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

/// Tensor description: dtype is [`crate::DType`] as u32; up to 8 dims, outermost first.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GTensorDesc {
    pub dtype: u32,
    pub rank: u32,
    pub dims: [u64; 8],
}

pub const VALUE_WEIGHT: u32 = 0;
pub const VALUE_INPUT: u32 = 1;
pub const VALUE_STATE: u32 = 2;
pub const VALUE_OUTPUT: u32 = 3;
pub const VALUE_TEMP: u32 = 4;

/// One value of the graph; `buffer` is meaningful for all kinds but `VALUE_TEMP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GValue {
    pub name: GStr,
    pub desc: GTensorDesc,
    pub kind: u32,
    pub buffer: u64,
}

/// Scalar parameters of an op; which slot means what is fixed per op code (see `codec.rs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GOpParams {
    pub f: [f32; 8],
    pub u: [u32; 8],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GNode {
    pub op: u32,
    pub params: GOpParams,
    pub inputs: *const u32,
    pub n_inputs: usize,
    pub outputs: *const u32,
    pub n_outputs: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GGraph {
    pub values: *const GValue,
    pub n_values: usize,
    pub nodes: *const GNode,
    pub n_nodes: usize,
}

/// Opaque backend instance created by the plugin.
pub type GHandle = *mut c_void;

/// The plugin's table of functions. Field order is part of the ABI.
#[repr(C)]
pub struct GptossBackendVTable {
    /// Must be first: read before anything else.
    pub abi_version: u32,
    /// Backend name used by `--backend` ("cpu", "cuda-mxfp4", ...); static.
    pub name: GStr,
    /// Plugin version string; static.
    pub version: GStr,
    /// Devices as JSON: `{"devices":[{"name":..,"compute_capability":[9,0]|null,
    /// "memory_bytes":..|null,"driver":..|null,"score":N,"reason":".."}]}`.
    pub probe: unsafe extern "C" fn(out_json: *mut GOwnedStr, err: *mut GOwnedStr) -> i32,
    /// Create an instance; `options_json` is an object (e.g. `{"threads":4}`).
    pub create:
        unsafe extern "C" fn(options_json: GStr, out: *mut GHandle, err: *mut GOwnedStr) -> i32,
    pub destroy: unsafe extern "C" fn(h: GHandle),
    pub alloc: unsafe extern "C" fn(
        h: GHandle,
        desc: *const GTensorDesc,
        out: *mut u64,
        err: *mut GOwnedStr,
    ) -> i32,
    pub free: unsafe extern "C" fn(h: GHandle, id: u64, err: *mut GOwnedStr) -> i32,
    pub upload: unsafe extern "C" fn(
        h: GHandle,
        id: u64,
        data: *const u8,
        len: usize,
        err: *mut GOwnedStr,
    ) -> i32,
    /// Fills exactly `len` bytes (the buffer's byte size) at `out`.
    pub download: unsafe extern "C" fn(
        h: GHandle,
        id: u64,
        out: *mut u8,
        len: usize,
        err: *mut GOwnedStr,
    ) -> i32,
    pub load_weight: unsafe extern "C" fn(
        h: GHandle,
        name: GStr,
        desc: *const GTensorDesc,
        data: *const u8,
        len: usize,
        out: *mut u64,
        err: *mut GOwnedStr,
    ) -> i32,
    pub execute: unsafe extern "C" fn(h: GHandle, graph: *const GGraph, err: *mut GOwnedStr) -> i32,
    pub free_string: unsafe extern "C" fn(s: GOwnedStr),
    /// `Backend::decode_chain` (version 2): `steps` greedy one-token steps of `graph` over the
    /// token, position and argmax buffers `io` [ids, positions, argmax], the first on token
    /// `first` at position `start`; writes the `steps` chosen tokens to `out`.
    pub decode_chain: unsafe extern "C" fn(
        h: GHandle,
        graph: *const GGraph,
        io: *const u64,
        first: u32,
        start: u32,
        steps: usize,
        out: *mut u32,
        err: *mut GOwnedStr,
    ) -> i32,
}

// The vtable is immutable static data holding pointers to static strings and functions.
unsafe impl Sync for GptossBackendVTable {}
unsafe impl Send for GptossBackendVTable {}

/// Signature of the exported entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const GptossBackendVTable;
