//! cuBLAS, loaded with dlopen, for the large bf16 matrix products of `--dequantize`.
//!
//! cudarc's own cuBLAS loader looks for the library names of the CUDA version its bindings
//! were generated for; a CUDA 13 machine ships `libcublas.so.13`, so this module searches for
//! any cuBLAS itself and binds only the C entry points whose signatures are the same in
//! cuBLAS 11, 12 and 13 (create/destroy, stream, workspace, GemmEx). The library is searched as
//! `GPTOSS_CUBLAS`, then `libcublas.so.13/.12/.11/.so` on the loader path, then the CUDA
//! toolkit's folders and the wheels PyTorch installs (`site-packages/nvidia/cublas/lib`). A
//! library that loads but cannot make a handle (e.g. cuBLAS 13 under a CUDA 12 driver) is
//! skipped for the next candidate.

use std::ffi::{c_char, c_int, c_void, CStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use cudarc::driver::sys::CUstream;
use gptoss_core::{Error, Result};

use crate::driver::backend;

type Handle = *mut c_void;
type Status = c_int;

/// cublasOperation_t.
pub const OP_N: c_int = 0;
pub const OP_T: c_int = 1;
/// cudaDataType_t.
const R_32F: c_int = 0;
const R_16BF: c_int = 14;
/// cublasComputeType_t: f32 accumulation, no reduced-precision shortcuts.
const COMPUTE_32F: c_int = 68;
/// cublasGemmAlgo_t: cuBLAS's heuristic choice.
const GEMM_DEFAULT: c_int = -1;
/// libraryPropertyType.
const MAJOR_VERSION: c_int = 0;
const MINOR_VERSION: c_int = 1;
const PATCH_LEVEL: c_int = 2;

/// Workspace handed to cuBLAS so that it never allocates while a stream is captured into a
/// CUDA graph (32 MiB is what NVIDIA recommends for Hopper; older GPUs need less).
pub const WORKSPACE_BYTES: usize = 32 << 20;

struct Api {
    _lt: Option<libloading::Library>,
    _lib: libloading::Library,
    path: String,
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, CUstream) -> Status,
    /// cublasSetWorkspace_v2 (cuBLAS 11.2+; older ones allocate their own).
    set_workspace: Option<unsafe extern "C" fn(Handle, *mut c_void, usize) -> Status>,
    /// cublasGetProperty (for the version in `describe`; optional, nothing depends on it).
    get_property: Option<unsafe extern "C" fn(c_int, *mut c_int) -> Status>,
    #[allow(clippy::type_complexity)]
    gemm_ex: unsafe extern "C" fn(
        Handle,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *const c_void,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        *mut c_void,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> Status,
    /// cublasGetStatusString (cuBLAS 11.4+).
    status_string: Option<unsafe extern "C" fn(Status) -> *const c_char>,
}

// The function pointers are plain C entry points, callable from any thread.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// The sonames tried, newest first.
const SONAMES: [&str; 4] = [
    "libcublas.so.13",
    "libcublas.so.12",
    "libcublas.so.11",
    "libcublas.so",
];

/// Where cuBLAS may live: `env` (GPTOSS_CUBLAS), the sonames on the loader path, the CUDA
/// toolkit's folders (`cuda_homes`: CUDA_HOME and friends), then PyTorch's wheels under the
/// python folders of `py_roots`.
fn candidates_from(
    env: Option<OsString>,
    cuda_homes: &[PathBuf],
    py_roots: &[&Path],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    out.extend(SONAMES.iter().map(PathBuf::from));
    let mut dirs = crate::libpaths::toolkit_dirs(cuda_homes);
    // nvidia-cublas-cu12 / -cu11 wheels, and the CUDA 13 wheels' shared folder.
    let subs = ["nvidia/cublas/lib", "nvidia/cu13/lib", "nvidia/cu12/lib"];
    dirs.extend(crate::libpaths::wheel_dirs(py_roots, &subs));
    for d in dirs {
        for n in &SONAMES[..3] {
            out.push(d.join(n));
        }
    }
    out
}

fn candidates() -> Vec<PathBuf> {
    let homes = crate::libpaths::cuda_homes();
    let roots = [
        Path::new("/usr/local/lib"),
        Path::new("/usr/lib"),
        Path::new("/opt/conda/lib"),
    ];
    candidates_from(std::env::var_os("GPTOSS_CUBLAS"), &homes, &roots)
}

/// The error when no candidate gave a working cuBLAS: what it is for, how to fix it, and what
/// was tried (`failures`: candidates that loaded but failed, with why).
fn not_found_message(tried: &[PathBuf], failures: &[String]) -> String {
    let mut msg = format!(
        "cuBLAS (libcublas.so.13, .12 or .11) was not found; --dequantize uses it for the large \
         bf16 matrix products and runs its own tensor-core kernels without it. Install cuBLAS \
         (the CUDA toolkit's libcublas, or PyTorch's nvidia-cublas wheel), put its folder on \
         LD_LIBRARY_PATH, or set GPTOSS_CUBLAS=/path/to/libcublas.so. Tried: {}",
        crate::libpaths::first_tried(tried)
    );
    if tried.len() > 6 {
        msg += &format!(" and {} more", tried.len() - 6);
    }
    if !failures.is_empty() {
        msg += &format!("; found but unusable: {}", failures.join("; "));
    }
    msg
}

/// The folder's libcublasLt of the same major version, loaded first so that a libcublas found
/// by full path (a wheel folder not on the loader path) resolves its dependency.
fn preload_lt(path: &Path) -> Option<libloading::Library> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let name = path.file_name()?.to_str()?;
    let lt = dir.join(name.replacen("libcublas", "libcublasLt", 1));
    // SAFETY: loading cuBLASLt runs no initialisers with preconditions.
    unsafe { libloading::Library::new(lt) }.ok()
}

fn bind(
    lib: libloading::Library,
    lt: Option<libloading::Library>,
    path: String,
) -> std::result::Result<Api, String> {
    // SAFETY: each symbol is looked up with the C signature cuBLAS declares for it.
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{path}: {}: {e}", $name))?
            };
        }
        macro_rules! opt {
            ($name:literal) => {
                lib.get(concat!($name, "\0").as_bytes()).ok().map(|s| *s)
            };
        }
        Ok(Api {
            create: sym!("cublasCreate_v2"),
            destroy: sym!("cublasDestroy_v2"),
            set_stream: sym!("cublasSetStream_v2"),
            set_workspace: opt!("cublasSetWorkspace_v2"),
            get_property: opt!("cublasGetProperty"),
            gemm_ex: sym!("cublasGemmEx"),
            status_string: opt!("cublasGetStatusString"),
            path,
            _lt: lt,
            _lib: lib,
        })
    }
}

/// A status code as cuBLAS names it.
fn status_text(api: &Api, s: Status) -> String {
    if let Some(f) = api.status_string {
        // SAFETY: cublasGetStatusString returns a static NUL-terminated string.
        let p = unsafe { f(s) };
        if !p.is_null() {
            // SAFETY: non-null, static, NUL-terminated.
            return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        }
    }
    match s {
        1 => "CUBLAS_STATUS_NOT_INITIALIZED".into(),
        3 => "CUBLAS_STATUS_ALLOC_FAILED".into(),
        7 => "CUBLAS_STATUS_INVALID_VALUE".into(),
        8 => "CUBLAS_STATUS_ARCH_MISMATCH".into(),
        13 => "CUBLAS_STATUS_EXECUTION_FAILED".into(),
        14 => "CUBLAS_STATUS_INTERNAL_ERROR".into(),
        15 => "CUBLAS_STATUS_NOT_SUPPORTED".into(),
        _ => format!("cuBLAS status {s}"),
    }
}

/// Open the first candidate that binds and can make a handle on the current context.
fn load_from(tried: &[PathBuf]) -> std::result::Result<Api, String> {
    let mut failures = Vec::new();
    for c in tried {
        let lt = preload_lt(c);
        // SAFETY: loading cuBLAS runs no initialisers with preconditions.
        let Ok(lib) = (unsafe { libloading::Library::new(c) }) else {
            continue;
        };
        let api = match bind(lib, lt, c.display().to_string()) {
            Ok(api) => api,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        // A handle proves that this cuBLAS runs under this driver.
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: h receives a new handle, destroyed right away.
        let s = unsafe { (api.create)(&mut h) };
        if s != 0 {
            failures.push(format!(
                "{}: cublasCreate failed: {} (a cuBLAS newer than the driver?)",
                c.display(),
                status_text(&api, s)
            ));
            continue;
        }
        // SAFETY: created above, destroyed once.
        unsafe { (api.destroy)(h) };
        return Ok(api);
    }
    Err(not_found_message(tried, &failures))
}

/// The process's cuBLAS (found once, on the first call, which needs a current CUDA context).
fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load_from(&candidates()))
        .as_ref()
        .map_err(|e| Error::backend(backend(), e.clone()))
}

/// GEMMs issued through cuBLAS in this process (tests check that the path was taken).
static GEMMS: AtomicU64 = AtomicU64::new(0);

/// How many GEMMs this process has issued through cuBLAS (graph replays not counted).
pub fn gemm_calls() -> u64 {
    GEMMS.load(Ordering::Relaxed)
}

/// "cuBLAS 13.0.2 (/path/libcublas.so.13)", or why cuBLAS cannot be used. Needs a current CUDA
/// context on the first call of the process.
pub fn describe() -> Result<String> {
    let api = api()?;
    let Some(get) = api.get_property else {
        return Ok(format!("cuBLAS ({})", api.path));
    };
    let prop = |p: c_int| {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        let s = unsafe { get(p, &mut v) };
        if s == 0 {
            v
        } else {
            -1
        }
    };
    Ok(format!(
        "cuBLAS {}.{}.{} ({})",
        prop(MAJOR_VERSION),
        prop(MINOR_VERSION),
        prop(PATCH_LEVEL),
        api.path
    ))
}

fn check(api: &Api, what: &str, s: Status) -> Result<()> {
    if s == 0 {
        return Ok(());
    }
    Err(Error::backend(
        backend(),
        format!("{what} failed: {} ({})", status_text(api, s), api.path),
    ))
}

/// `C = A' B'` with bf16 A and B, f32 C and f32 accumulation, column-major as cuBLAS sees it:
/// C is m x n (leading dimension ldc), op(A) m x k, op(B) k x n. Pointers are device addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemm {
    pub trans_a: c_int,
    pub trans_b: c_int,
    pub m: c_int,
    pub n: c_int,
    pub k: c_int,
    pub a: u64,
    pub lda: c_int,
    pub b: u64,
    pub ldb: c_int,
    pub c: u64,
    pub ldc: c_int,
}

impl Gemm {
    /// As 8-byte slots (a recorded launch's arguments, see driver::Launch).
    pub fn to_slots(self) -> Vec<u64> {
        let i = |v: c_int| v as u32 as u64;
        vec![
            i(self.trans_a),
            i(self.trans_b),
            i(self.m),
            i(self.n),
            i(self.k),
            self.a,
            i(self.lda),
            self.b,
            i(self.ldb),
            self.c,
            i(self.ldc),
        ]
    }

    /// Inverse of `to_slots`.
    pub fn from_slots(s: &[u64]) -> Option<Gemm> {
        let i = |v: u64| v as u32 as c_int;
        let [ta, tb, m, n, k, a, lda, b, ldb, c, ldc] = s.try_into().ok()?;
        Some(Gemm {
            trans_a: i(ta),
            trans_b: i(tb),
            m: i(m),
            n: i(n),
            k: i(k),
            a,
            lda: i(lda),
            b,
            ldb: i(ldb),
            c,
            ldc: i(ldc),
        })
    }
}

/// One GPU's cuBLAS handle, bound to the backend's stream with a workspace of its own.
pub struct Blas {
    api: &'static Api,
    handle: Handle,
}

// The handle is used by the thread that owns the backend, one call at a time, with the
// backend's context current (cuBLAS allows a handle on any thread of its device).
unsafe impl Send for Blas {}

impl Blas {
    /// A handle on the current context whose work goes to `stream`, using `workspace`
    /// (`WORKSPACE_BYTES` of device memory the caller keeps alive longer than the handle).
    pub(crate) fn new(stream: CUstream, workspace: u64) -> Result<Blas> {
        let api = api()?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: handle receives a new cuBLAS handle, destroyed in Drop.
        check(api, "cublasCreate", unsafe { (api.create)(&mut handle) })?;
        let blas = Blas { api, handle };
        // SAFETY: the stream belongs to the current context and outlives the handle.
        check(api, "cublasSetStream", unsafe {
            (api.set_stream)(handle, stream)
        })?;
        // After SetStream, which resets the workspace to cuBLAS's own pool.
        if let Some(set) = api.set_workspace {
            // SAFETY: workspace holds WORKSPACE_BYTES of device memory of this context.
            check(api, "cublasSetWorkspace", unsafe {
                set(handle, workspace as *mut c_void, WORKSPACE_BYTES)
            })?;
        }
        Ok(blas)
    }

    /// Enqueue `g` on the handle's stream (alpha 1, beta 0: C is overwritten).
    pub(crate) fn gemm(&self, g: &Gemm) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the pointers are device buffers of this context holding the matrices the
        // dimensions describe (checked by the op code that builds `g`); alpha and beta are
        // host scalars read during the call (captured by value in a CUDA graph).
        let s = unsafe {
            (self.api.gemm_ex)(
                self.handle,
                g.trans_a,
                g.trans_b,
                g.m,
                g.n,
                g.k,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                R_16BF,
                g.lda,
                g.b as *const c_void,
                R_16BF,
                g.ldb,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                R_32F,
                g.ldc,
                COMPUTE_32F,
                GEMM_DEFAULT,
            )
        };
        GEMMS.fetch_add(1, Ordering::Relaxed);
        check(
            self.api,
            &format!("cublasGemmEx (m {} n {} k {})", g.m, g.n, g.k),
            s,
        )
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, with its context still alive (Gpu drops
        // it before releasing the context).
        let _ = unsafe { (self.api.destroy)(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_the_override_then_newest_sonames() {
        let homes = [PathBuf::from("/opt/cuda-x")];
        let c = candidates_from(Some("/my/libcublas.so.12".into()), &homes, &[]);
        assert_eq!(c[0], PathBuf::from("/my/libcublas.so.12"));
        let names: Vec<PathBuf> = SONAMES.iter().map(PathBuf::from).collect();
        assert_eq!(&c[1..5], &names[..]);
        assert!(c.contains(&PathBuf::from("/opt/cuda-x/lib64/libcublas.so.13")));
        assert!(c.contains(&PathBuf::from("/usr/local/cuda/lib64/libcublas.so.12")));
        // No override, or an empty one: the sonames come first.
        assert_eq!(candidates_from(None, &[], &[])[0], names[0]);
        assert_eq!(candidates_from(Some("".into()), &[], &[])[0], names[0]);
    }

    #[test]
    fn candidates_include_pytorch_wheels() {
        let root = std::env::temp_dir().join(format!("gptoss-cublas-{}", std::process::id()));
        let py = root.join("python3.11");
        std::fs::create_dir_all(&py).unwrap();
        let c = candidates_from(None, &[], &[root.as_path()]);
        let wheel = py.join("site-packages/nvidia/cublas/lib/libcublas.so.12");
        let cu13 = py.join("dist-packages/nvidia/cu13/lib/libcublas.so.13");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(c.contains(&wheel), "{c:?}");
        assert!(c.contains(&cu13), "{c:?}");
    }

    #[test]
    fn nothing_loadable_is_a_clear_error() {
        let tried = vec![
            PathBuf::from("/nonexistent/libcublas.so.13"),
            PathBuf::from("/nonexistent/libcublas.so.12"),
        ];
        let e = load_from(&tried).err().expect("nothing to load");
        for want in [
            "cuBLAS",
            "libcublas.so.13",
            "--dequantize",
            "GPTOSS_CUBLAS=",
            "LD_LIBRARY_PATH",
            "/nonexistent/libcublas.so.12",
        ] {
            assert!(e.contains(want), "{want} missing from: {e}");
        }
        let many: Vec<PathBuf> = (0..9).map(|i| PathBuf::from(format!("/x{i}"))).collect();
        let m = not_found_message(&many, &["/x1: cublasCreate failed: X".into()]);
        assert!(
            m.contains("and 3 more") && m.contains("found but unusable: /x1"),
            "{m}"
        );
    }

    #[test]
    fn lt_is_looked_up_beside_a_full_path_only() {
        // A bare soname leaves the loader to find cuBLASLt itself.
        assert!(preload_lt(Path::new("libcublas.so.13")).is_none());
    }

    #[test]
    fn gemm_round_trips_through_launch_slots() {
        let g = Gemm {
            trans_a: OP_T,
            trans_b: OP_N,
            m: 2880,
            n: 512,
            k: 4096,
            a: 0x7f00_0000_1000,
            lda: 4096,
            b: 0x7f00_0000_2000,
            ldb: 4096,
            c: 0x7f00_0000_3000,
            ldc: 2880,
        };
        assert_eq!(Gemm::from_slots(&g.to_slots()), Some(g));
        assert_eq!(Gemm::from_slots(&[1, 2, 3]), None);
    }
}
