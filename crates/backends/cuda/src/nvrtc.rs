//! NVRTC, loaded with dlopen, and the on-disk cache of compiled kernels.
//!
//! cudarc's own NVRTC loader looks for the library of the CUDA version its bindings were
//! generated for; a CUDA 13 machine ships `libnvrtc.so.13`, so this module searches for any
//! NVRTC itself (`GPTOSS_NVRTC`, then versioned names, then the usual install folders) and
//! uses the handful of functions whose C signatures have not changed since CUDA 11.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use gptoss_core::{Error, Result};

use crate::driver::backend;

type Prog = *mut c_void;
type Status = c_int;

struct Api {
    _lib: libloading::Library,
    path: String,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    create: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    ptx_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    ptx: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Prog) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
}

/// Where NVRTC may live: the override, versioned sonames, then install folders.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("GPTOSS_NVRTC") {
        out.push(PathBuf::from(p));
    }
    let names = [
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so",
        "libnvrtc.so.11.2",
    ];
    out.extend(names.iter().map(PathBuf::from));
    let mut dirs = crate::libpaths::toolkit_dirs(&crate::libpaths::cuda_homes());
    // pip's nvidia-cuda-nvrtc wheels (PyTorch installs), e.g. .../site-packages/nvidia/cu13/lib.
    for root in ["/usr/lib/python3/dist-packages", "/usr/local/lib"] {
        dirs.push(Path::new(root).join("nvidia/cuda_nvrtc/lib"));
    }
    let roots = [Path::new("/usr/local/lib"), Path::new("/usr/lib")];
    let subs = [
        "nvidia/cuda_nvrtc/lib",
        "nvidia/cu13/lib",
        "nvidia/cu12/lib",
    ];
    dirs.extend(crate::libpaths::wheel_dirs(&roots, &subs));
    for d in dirs {
        for n in names {
            out.push(d.join(n));
        }
    }
    out
}

/// Loaded NVRTC.
pub struct Nvrtc {
    api: Api,
}

impl Nvrtc {
    /// Find and open NVRTC, or say clearly that it is missing and how to fix it.
    pub fn load() -> Result<Nvrtc> {
        let tried = candidates();
        for c in &tried {
            // SAFETY: loading NVRTC runs no initialisers with preconditions.
            let Ok(lib) = (unsafe { libloading::Library::new(c) }) else {
                continue;
            };
            match Self::bind(lib, c.display().to_string()) {
                Ok(api) => return Ok(Nvrtc { api }),
                Err(_) => continue,
            }
        }
        Err(Error::backend(
            backend(),
            format!(
                "NVRTC (the CUDA runtime compiler, libnvrtc.so.13 or .12) was not found, and the \
                 the CUDA kernels are compiled with it when first used on a GPU. Install the \
                 CUDA toolkit's NVRTC (e.g. the cuda-nvrtc package), put its folder on \
                 LD_LIBRARY_PATH, or set GPTOSS_NVRTC=/path/to/libnvrtc.so. Tried: {}",
                crate::libpaths::first_tried(&tried)
            ),
        ))
    }

    fn bind(lib: libloading::Library, path: String) -> std::result::Result<Api, String> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol has the signature of the field it is stored in (NVRTC's
                // documented C API).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path}: {}: {e}", $name))?
            };
        }
        Ok(Api {
            version: sym!("nvrtcVersion"),
            create: sym!("nvrtcCreateProgram"),
            compile: sym!("nvrtcCompileProgram"),
            log_size: sym!("nvrtcGetProgramLogSize"),
            log: sym!("nvrtcGetProgramLog"),
            cubin_size: sym!("nvrtcGetCUBINSize"),
            cubin: sym!("nvrtcGetCUBIN"),
            ptx_size: sym!("nvrtcGetPTXSize"),
            ptx: sym!("nvrtcGetPTX"),
            destroy: sym!("nvrtcDestroyProgram"),
            error_string: sym!("nvrtcGetErrorString"),
            path,
            _lib: lib,
        })
    }

    pub fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: writes two ints.
        unsafe { (self.api.version)(&mut a, &mut b) };
        (a, b)
    }

    pub fn path(&self) -> &str {
        &self.api.path
    }

    fn status(&self, what: &str, s: Status) -> Result<()> {
        if s == 0 {
            return Ok(());
        }
        // SAFETY: NVRTC returns a static NUL-terminated string.
        let msg = unsafe { CStr::from_ptr((self.api.error_string)(s)) }.to_string_lossy();
        Err(Error::backend(backend(), format!("NVRTC {what}: {msg}")))
    }

    /// Compile `source` to a cubin with `options`; a compile error carries the full log.
    pub fn compile(&self, name: &str, source: &str, options: &[String]) -> Result<Vec<u8>> {
        let src = CString::new(source).map_err(|_| Error::Input("NUL in kernel source".into()))?;
        let cname = CString::new(name).expect("no NUL");
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: valid C strings; no headers.
        let s = unsafe {
            (self.api.create)(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.status("nvrtcCreateProgram", s)?;
        let out = (|| {
            let opts: Vec<CString> = options
                .iter()
                .map(|o| CString::new(o.as_str()).expect("no NUL"))
                .collect();
            let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
            // SAFETY: prog is live; ptrs point to live C strings.
            let s = unsafe { (self.api.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
            if s != 0 {
                let log = self.log(prog);
                // SAFETY: static string from NVRTC.
                let msg = unsafe { CStr::from_ptr((self.api.error_string)(s)) }.to_string_lossy();
                return Err(Error::backend(
                    backend(),
                    format!(
                        "NVRTC could not compile kernels/{name} ({msg}) with {}:\n{log}",
                        options.join(" ")
                    ),
                ));
            }
            // A virtual target (compute_XY) yields PTX (NUL-terminated, JIT-compiled by the
            // driver when loaded); a real one (sm_XY) a cubin.
            let ptx = options.iter().any(|o| o.contains("=compute_"));
            let (size_fn, get_fn, what) = if ptx {
                (self.api.ptx_size, self.api.ptx, "nvrtcGetPTX")
            } else {
                (self.api.cubin_size, self.api.cubin, "nvrtcGetCUBIN")
            };
            let mut n = 0usize;
            // SAFETY: prog compiled.
            self.status(what, unsafe { size_fn(prog, &mut n) })?;
            let mut buf = vec![0u8; n];
            // SAFETY: buf holds n bytes.
            self.status(what, unsafe {
                get_fn(prog, buf.as_mut_ptr() as *mut c_char)
            })?;
            if buf.is_empty() {
                return Err(Error::backend(
                    backend(),
                    format!(
                        "NVRTC produced no cubin for kernels/{name} with {} (is the arch a real \
                         sm_XY or a compute_XY target?)",
                        options.join(" ")
                    ),
                ));
            }
            Ok(buf)
        })();
        // SAFETY: prog created above, destroyed once.
        unsafe { (self.api.destroy)(&mut prog) };
        out
    }

    fn log(&self, prog: Prog) -> String {
        let mut n = 0usize;
        // SAFETY: prog is live.
        if unsafe { (self.api.log_size)(prog, &mut n) } != 0 || n == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; n];
        // SAFETY: buf holds n bytes.
        unsafe { (self.api.log)(prog, buf.as_mut_ptr() as *mut c_char) };
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .to_string()
    }
}

/// FNV-1a, 64 bit: a hash that stays the same across Rust versions (cache keys on disk).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `$XDG_CACHE_HOME/gptoss`, else `~/.cache/gptoss`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("gptoss"));
    }
    std::env::var_os("HOME")
        .filter(|x| !x.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("gptoss"))
}

/// Best-effort write: a temp file renamed into place, so readers never see half a file.
pub fn cache_store(path: &Path, data: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, data).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
