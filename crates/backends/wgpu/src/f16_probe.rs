//! Whether this device keeps f16 subnormals when `unpack2x16float` widens them to f32.
//!
//! The MoE row kernels can decode MXFP4 codes by placing their bits in f16 halves (the
//! e = 0 codes land on f16 subnormals) and widening pairs with one `unpack2x16float`, about a
//! quarter of the instructions of the exact bit-by-bit decode. WGSL lets an implementation
//! flush subnormals, so the fast decode is used only where a one-dispatch test shows it is
//! exact on this device.

/// f16 bits of +2^-15 (the code 0.5 times 2^-14, a subnormal) low and -2^-15 high, and the
/// f32 bits the widening must give.
const INPUT: u32 = 0x8200_0200;
const WANT: [u32; 2] = [0x3800_0000, 0xb800_0000];

const SHADER: &str = "
@group(0) @binding(0) var<storage, read_write> io: array<u32, 4>;
@compute @workgroup_size(1)
fn main() {
    let v = unpack2x16float(io[0]);
    io[1] = bitcast<u32>(v.x);
    io[2] = bitcast<u32>(v.y);
}
";

/// Runs the test on `device`; false (use the exact decode) on any failure to run it.
pub fn keeps_f16_subnormals(device: &wgpu::Device, queue: &wgpu::Queue) -> bool {
    run(device, queue).is_some_and(|got| got == WANT)
}

fn run(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<[u32; 2]> {
    use wgpu::BufferUsages as U;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("f16 subnormal probe"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("f16 subnormal probe"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let io = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("f16 subnormal probe"),
        size: 16,
        usage: U::STORAGE | U::COPY_SRC | U::COPY_DST,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("f16 subnormal probe readback"),
        size: 16,
        usage: U::MAP_READ | U::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&io, 0, &[INPUT, 0, 0, 0].map(u32::to_le_bytes).concat());
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: io.as_entire_binding(),
        }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    enc.copy_buffer_to_buffer(&io, 0, &read, 0, 16);
    queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r.is_ok());
    });
    device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .ok()?;
    if !rx.recv().ok()? {
        return None;
    }
    let bytes = read.slice(..).get_mapped_range().ok()?;
    let word = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[4 * i..4 * i + 4]);
        u32::from_le_bytes(b)
    };
    Some([word(1), word(2)])
}
