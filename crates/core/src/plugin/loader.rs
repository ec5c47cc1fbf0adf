//! Host side of the plugin ABI: load a shared library, check it, and use it as a [`Backend`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::abi::*;
use super::codec;
use super::sdk::PluginOptions;
use crate::{Backend, BufferId, DecodeChain, Error, Graph, ProbeReport, Result, TensorDesc};

/// A loaded plugin library. The library is never unloaded (its code may still run on
/// threads it started), so this handle is cheap to copy around.
#[derive(Clone)]
pub struct Plugin {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    vtable: &'static GptossBackendVTable,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plugin({} {} at {})",
            self.name,
            self.version,
            self.path.display()
        )
    }
}

fn refuse(path: &Path, reason: impl Into<String>) -> Error {
    Error::backend(path.display().to_string(), reason)
}

impl Plugin {
    /// Load and check a plugin: a loadable library, exporting `gptoss_backend_entry`, speaking
    /// this host's ABI version.
    pub fn load(path: &Path) -> Result<Plugin> {
        // SAFETY: loading a library runs its initialisers; plugins are trusted code the user
        // placed in a plugin folder, as with any dynamically loaded extension.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| refuse(path, format!("not a loadable plugin library: {e}")))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        let entry: libloading::Symbol<'static, EntryFn> = unsafe { lib.get(ENTRY_SYMBOL) }.map_err(|_| {
            refuse(path, "does not export gptoss_backend_entry: not a gptoss backend plugin (a plugin calls export_backend!)")
        })?;
        // SAFETY: the symbol has the documented signature; the ABI version is checked before
        // any other field is read.
        let vt = unsafe { entry() };
        if vt.is_null() {
            return Err(refuse(path, "gptoss_backend_entry returned no vtable"));
        }
        let abi_version = unsafe { std::ptr::read(vt as *const u32) };
        if abi_version != GPTOSS_ABI_VERSION {
            return Err(refuse(
                path,
                format!(
                    "built for plugin ABI version {abi_version}, this gptoss speaks version {GPTOSS_ABI_VERSION}; \
                     rebuild the plugin against this gptoss-core"
                ),
            ));
        }
        let vtable: &'static GptossBackendVTable = unsafe { &*vt };
        let text = |s: GStr, what: &str| {
            unsafe { s.as_str() }
                .map(str::to_owned)
                .map_err(|_| refuse(path, format!("plugin {what} is not UTF-8")))
        };
        let name = text(vtable.name, "name")?;
        let version = text(vtable.version, "version")?;
        if name.is_empty() {
            return Err(refuse(path, "plugin reports an empty name"));
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            name,
            version,
            abi_version,
            vtable,
        })
    }

    fn call(&self, f: impl FnOnce(*mut GOwnedStr) -> i32) -> Result<()> {
        call(self.vtable, &self.name, f)
    }

    /// The plugin's devices and scores.
    pub fn probe(&self) -> Result<ProbeReport> {
        let mut out = GOwnedStr::empty();
        self.call(|err| unsafe { (self.vtable.probe)(&mut out, err) })?;
        let json = take_string(self.vtable, out);
        let parsed: ProbeReport = serde_json::from_str(&json).map_err(|e| {
            Error::backend(
                &self.name,
                format!("probe returned malformed JSON ({e}): {json}"),
            )
        })?;
        Ok(parsed)
    }

    /// A new backend instance from this plugin.
    pub fn create(&self, options: &PluginOptions) -> Result<PluginBackendHandle> {
        let json = serde_json::to_string(options).expect("options serialise");
        let mut handle: GHandle = std::ptr::null_mut();
        self.call(|err| unsafe { (self.vtable.create)(GStr::new(&json), &mut handle, err) })?;
        if handle.is_null() {
            return Err(Error::backend(
                &self.name,
                "create succeeded but returned no instance",
            ));
        }
        Ok(PluginBackendHandle {
            vtable: self.vtable,
            handle,
            name: self.name.clone(),
            sizes: HashMap::new(),
            encoder: codec::GraphEncoder::new(),
            sent: None,
        })
    }
}

fn take_string(vt: &GptossBackendVTable, s: GOwnedStr) -> String {
    if s.ptr.is_null() {
        return String::new();
    }
    let text =
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }).into_owned();
    unsafe { (vt.free_string)(s) };
    text
}

fn call(vt: &GptossBackendVTable, name: &str, f: impl FnOnce(*mut GOwnedStr) -> i32) -> Result<()> {
    let mut err = GOwnedStr::empty();
    let code = f(&mut err);
    if code == STATUS_OK {
        return Ok(());
    }
    let msg = take_string(vt, err);
    Err(match code {
        STATUS_UNSUPPORTED => Error::Unsupported {
            backend: name.to_string(),
            what: msg,
        },
        STATUS_PANIC => Error::backend(name, msg),
        _ if msg.is_empty() => {
            Error::backend(name, format!("failed with status {code} and no message"))
        }
        _ => Error::backend(name, msg),
    })
}

/// A backend instance living inside a plugin.
pub struct PluginBackendHandle {
    vtable: &'static GptossBackendVTable,
    handle: GHandle,
    name: String,
    /// Byte size of every live buffer, so `download` can hand the plugin a buffer to fill.
    sizes: HashMap<BufferId, usize>,
    /// The C form of the graphs `execute` passes, its storage reused step after step.
    encoder: codec::GraphEncoder,
    /// The last graph passed (a copy, which the encoder's C form points into) and that C form:
    /// a decode step repeats its graph, which then goes again without being checked and laid
    /// out anew (~50 us of host time a step for gpt-oss-20b, with the GPU idle).
    sent: Option<(Graph, GGraph)>,
}

// The plugin contract: an instance may move between threads and is used by one at a time
// (`&mut self` on every call guarantees the latter).
unsafe impl Send for PluginBackendHandle {}

impl Drop for PluginBackendHandle {
    fn drop(&mut self) {
        unsafe { (self.vtable.destroy)(self.handle) };
    }
}

impl PluginBackendHandle {
    fn call(&self, f: impl FnOnce(*mut GOwnedStr) -> i32) -> Result<()> {
        call(self.vtable, &self.name, f)
    }
}

impl Backend for PluginBackendHandle {
    fn name(&self) -> &str {
        &self.name
    }

    fn probe(&self) -> ProbeReport {
        let mut out = GOwnedStr::empty();
        match self.call(|err| unsafe { (self.vtable.probe)(&mut out, err) }) {
            Ok(()) => serde_json::from_str::<ProbeReport>(&take_string(self.vtable, out))
                .unwrap_or_default(),
            Err(_) => ProbeReport::default(),
        }
    }

    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        let d = codec::desc_to_c(desc)?;
        let mut id = 0u64;
        self.call(|err| unsafe { (self.vtable.alloc)(self.handle, &d, &mut id, err) })?;
        self.sizes.insert(BufferId(id), desc.byte_size());
        Ok(BufferId(id))
    }

    fn free(&mut self, id: BufferId) -> Result<()> {
        self.call(|err| unsafe { (self.vtable.free)(self.handle, id.0, err) })?;
        self.sizes.remove(&id);
        Ok(())
    }

    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
        self.call(|err| unsafe {
            (self.vtable.upload)(self.handle, id.0, data.as_ptr(), data.len(), err)
        })
    }

    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        let len = *self.sizes.get(&id).ok_or_else(|| {
            Error::backend(&self.name, format!("download of unknown buffer {}", id.0))
        })?;
        let mut out = vec![0u8; len];
        self.call(|err| unsafe {
            (self.vtable.download)(self.handle, id.0, out.as_mut_ptr(), len, err)
        })?;
        Ok(out)
    }

    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
        let d = codec::desc_to_c(desc)?;
        let mut id = 0u64;
        self.call(|err| unsafe {
            (self.vtable.load_weight)(
                self.handle,
                GStr::new(name),
                &d,
                data.as_ptr(),
                data.len(),
                &mut id,
                err,
            )
        })?;
        self.sizes.insert(BufferId(id), desc.byte_size());
        Ok(BufferId(id))
    }

    fn execute(&mut self, graph: &Graph) -> Result<()> {
        let g = self.encoded(graph)?;
        self.call(|err| unsafe { (self.vtable.execute)(self.handle, &g, err) })
    }

    fn decode_chain(&mut self, graph: &Graph, io: DecodeChain, steps: usize) -> Result<Vec<u32>> {
        let g = self.encoded(graph)?;
        let ids = [io.ids.0, io.positions.0, io.argmax.0];
        let mut tokens = vec![0u32; steps];
        self.call(|err| unsafe {
            (self.vtable.decode_chain)(
                self.handle,
                &g,
                ids.as_ptr(),
                io.first,
                io.start,
                steps,
                tokens.as_mut_ptr(),
                err,
            )
        })?;
        Ok(tokens)
    }
}

impl PluginBackendHandle {
    /// `graph` laid out as C arrays: the last one's when it equals the last graph passed.
    fn encoded(&mut self, graph: &Graph) -> Result<GGraph> {
        if let Some((last, c)) = &self.sent {
            if last == graph {
                return Ok(*c);
            }
        }
        self.sent = None;
        graph.validate()?;
        let copy = graph.clone();
        // The C form points into `copy`'s names, which stay put while it is kept.
        let c = self.encoder.encode(&copy)?.as_c();
        self.sent = Some((copy, c));
        Ok(c)
    }
}
