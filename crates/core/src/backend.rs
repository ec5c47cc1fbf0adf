//! The Backend contract: what every backend (linked in, or a plugin behind the C ABI) does.

use crate::{BufferId, Graph, Result, TensorDesc};

/// One device a backend can run on, as its probe sees it. Crosses the plugin ABI as JSON:
/// `{"name":..,"compute_capability":[9,0]|null,"memory_bytes":..|null,"driver":..|null,"score":N,"reason":".."}`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DeviceReport {
    pub name: String,
    /// e.g. (9, 0) for sm_90; None where the notion does not apply.
    pub compute_capability: Option<(u32, u32)>,
    pub memory_bytes: Option<u64>,
    pub driver: Option<String>,
    /// 0 = unusable here; higher wins auto-selection.
    pub score: u32,
    /// Why this score, in words a user can act on ("needs sm_90+, found sm_86").
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub devices: Vec<DeviceReport>,
}

impl ProbeReport {
    pub fn best_score(&self) -> u32 {
        self.devices.iter().map(|d| d.score).max().unwrap_or(0)
    }
}

/// A backend owns buffers and executes graphs over them.
///
/// Contract:
/// - buffers hold `desc.byte_size()` bytes of `desc.dtype` as seen by `upload`/`download`
///   (little-endian); a backend may store them differently inside (the CPU backend keeps
///   BF16 weights as f32, a GPU backend may repack MXFP4);
/// - `execute` receives a graph that passed [`Graph::validate`]; it reads Weight/Input values,
///   writes Output values, updates State values in place and manages Temp values itself;
///   it returns once its outputs are complete (a GPU backend synchronises its stream), so
///   the host may time it and download at once;
/// - errors are returned, never panicked.
pub trait Backend: Send {
    fn name(&self) -> &str;

    /// Devices this backend sees and how well it would run on them.
    fn probe(&self) -> ProbeReport;

    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId>;

    fn free(&mut self, id: BufferId) -> Result<()>;

    /// Copy `data` (exactly `desc.byte_size()` bytes) into the buffer.
    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()>;

    /// The buffer's contents as `desc.byte_size()` bytes of its dtype.
    fn download(&mut self, id: BufferId) -> Result<Vec<u8>>;

    /// Load one named weight. The default allocates and uploads; a backend may instead
    /// repack, keep MXFP4 packed, or dequantize here.
    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
        let _ = name;
        let id = self.alloc(desc)?;
        self.upload(id, data)?;
        Ok(id)
    }

    fn execute(&mut self, graph: &Graph) -> Result<()>;

    /// Greedy decoding of `steps` tokens by a one-token `graph` whose token (`io.ids`, I32
    /// [1]) and position (`io.positions`, I32 [1]) are inputs and whose Argmax is `io.argmax`
    /// (I32 [1]): step i runs at position `io.start + i` on the token step i - 1 chose
    /// (`io.first` for step 0), and the chosen tokens are returned. The default runs the steps
    /// one by one through the host; a GPU backend may queue them all, feeding each choice to
    /// the next step on the device, so that the GPU never waits for the host between steps.
    fn decode_chain(&mut self, graph: &Graph, io: DecodeChain, steps: usize) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(steps);
        let mut token = io.first;
        for i in 0..steps {
            token = decode_step(self, graph, &io, token, io.start as usize + i)?;
            tokens.push(token);
        }
        Ok(tokens)
    }
}

/// One step of a decode chain through the host: `token` and `position` uploaded, the graph
/// run, the argmax it chose read back.
pub fn decode_step<B: Backend + ?Sized>(
    be: &mut B,
    graph: &Graph,
    io: &DecodeChain,
    token: u32,
    position: usize,
) -> Result<u32> {
    be.upload(io.ids, &(token as i32).to_le_bytes())?;
    be.upload(io.positions, &(position as i32).to_le_bytes())?;
    be.execute(graph)?;
    let out = be.download(io.argmax)?;
    Ok(i32::from_le_bytes([out[0], out[1], out[2], out[3]]) as u32)
}

/// The buffers and first inputs of [`Backend::decode_chain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeChain {
    pub ids: BufferId,
    pub positions: BufferId,
    pub argmax: BufferId,
    /// The token the first step runs on.
    pub first: u32,
    /// The first step's position.
    pub start: u32,
}
