//! NCCL, loaded with dlopen, for the all-reduce of a model split over several GPUs.
//!
//! Only what a sharded step needs: a unique id made by rank 0, one communicator per GPU
//! (ncclCommInitRank, every rank on its own thread) and a float sum on the backend's stream.
//! These C signatures have not changed since NCCL 2.4. The library is searched as
//! `GPTOSS_NCCL`, then `libnccl.so.2` / `libnccl.so` on the loader path, then the wheels
//! PyTorch installs (`site-packages/nvidia/nccl/lib`).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::driver::sys::CUstream;
use gptoss_core::{Error, Result};

use crate::driver::backend;

type Comm = *mut c_void;
type Status = c_int;

const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// ncclUniqueId: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    internal: [c_char; 128],
}

struct Api {
    _lib: libloading::Library,
    path: String,
    get_version: unsafe extern "C" fn(*mut c_int) -> Status,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> Status,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> Status,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        CUstream,
    ) -> Status,
    comm_destroy: unsafe extern "C" fn(Comm) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
}

// The function pointers are plain C entry points, callable from any thread.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("GPTOSS_NCCL") {
        out.push(PathBuf::from(p));
    }
    out.push("libnccl.so.2".into());
    out.push("libnccl.so".into());
    let roots = [
        Path::new("/usr/local/lib"),
        Path::new("/usr/lib"),
        Path::new("/opt/conda/lib"),
    ];
    let subs = ["nvidia/nccl/lib", "nvidia/cu13/lib", "nvidia/cu12/lib"];
    for dir in crate::libpaths::wheel_dirs(&roots, &subs) {
        out.push(dir.join("libnccl.so.2"));
    }
    out
}

fn bind(lib: libloading::Library, path: String) -> std::result::Result<Api, String> {
    // SAFETY: each symbol is looked up with the C signature NCCL declares for it.
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{path}: {}: {e}", $name))?
            };
        }
        Ok(Api {
            get_version: sym!("ncclGetVersion"),
            get_unique_id: sym!("ncclGetUniqueId"),
            comm_init_rank: sym!("ncclCommInitRank"),
            all_reduce: sym!("ncclAllReduce"),
            comm_destroy: sym!("ncclCommDestroy"),
            error_string: sym!("ncclGetErrorString"),
            path,
            _lib: lib,
        })
    }
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let tried = candidates();
        for c in &tried {
            // SAFETY: loading NCCL runs no initialisers with preconditions.
            if let Ok(lib) = unsafe { libloading::Library::new(c) } {
                if let Ok(api) = bind(lib, c.display().to_string()) {
                    return Ok(api);
                }
            }
        }
        Err(format!(
            "NCCL (libnccl.so.2) was not found; a model split over several GPUs sums through \
             it. Install NCCL (e.g. the libnccl2 package or PyTorch's nvidia-nccl wheel), put \
             its folder on LD_LIBRARY_PATH, or set GPTOSS_NCCL=/path/to/libnccl.so.2. Tried: {}",
            tried
                .iter()
                .take(4)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
    .as_ref()
    .map_err(|e| Error::backend(backend(), e.clone()))
}

fn check(api: &Api, what: &str, s: Status) -> Result<()> {
    if s == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string.
    let msg = unsafe { CStr::from_ptr((api.error_string)(s)) }.to_string_lossy();
    Err(Error::backend(
        backend(),
        format!("{what} failed: {msg} (NCCL error {s})"),
    ))
}

/// "NCCL 2.27.3 (/path)" of the library that would be used.
pub fn describe() -> Result<String> {
    let api = api()?;
    let mut v: c_int = 0;
    // SAFETY: writes one int.
    check(api, "ncclGetVersion", unsafe { (api.get_version)(&mut v) })?;
    let (major, minor, patch) = if v >= 10000 {
        (v / 10000, (v % 10000) / 100, v % 100)
    } else {
        (v / 1000, (v % 1000) / 100, v % 100)
    };
    Ok(format!("NCCL {major}.{minor}.{patch} ({})", api.path))
}

/// A new unique id (rank 0 makes it; every rank joins with it), as bytes.
pub fn unique_id() -> Result<Vec<u8>> {
    let api = api()?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: writes the 128-byte id.
    check(api, "ncclGetUniqueId", unsafe {
        (api.get_unique_id)(&mut id)
    })?;
    Ok(id.internal.iter().map(|c| *c as u8).collect())
}

/// One GPU's member of a communicator.
pub struct Communicator {
    comm: Comm,
    api: &'static Api,
}

// The communicator is used by the thread that owns the backend, one call at a time.
unsafe impl Send for Communicator {}

impl Communicator {
    /// Join communicator `id` as `rank` of `world`, on the device whose context is current.
    /// Blocks until every rank has joined.
    pub fn join(id: &[u8], rank: usize, world: usize) -> Result<Communicator> {
        let api = api()?;
        if id.len() != 128 {
            return Err(Error::backend(
                backend(),
                format!("an NCCL unique id has 128 bytes, got {}", id.len()),
            ));
        }
        let mut uid = UniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: comm receives a new communicator; uid is passed by value.
        check(api, "ncclCommInitRank", unsafe {
            (api.comm_init_rank)(&mut comm, world as c_int, uid, rank as c_int)
        })?;
        Ok(Communicator { comm, api })
    }

    /// Enqueue `recv[i] = sum over ranks of send[i]` for `count` f32 on `stream`.
    pub(crate) fn all_reduce_f32(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        stream: CUstream,
    ) -> Result<()> {
        // SAFETY: send/recv are device buffers of `count` floats of this communicator's device.
        check(self.api, "ncclAllReduce", unsafe {
            (self.api.all_reduce)(
                send as *const c_void,
                recv as *mut c_void,
                count,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                stream,
            )
        })
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: created by ncclCommInitRank and destroyed once.
        let _ = unsafe { (self.api.comm_destroy)(self.comm) };
    }
}
