// The tiled linear (any T, f32 or bf16 weights); prelude: linear_params.wgsl.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;

fn wv(i: u32) -> f32 {
    if (p.bf16 == 1u) { return bf16_at(w[i >> 1u], i); }
    return bitcast<f32>(w[i]);
}

// General T: 64x64 output tiles, 16-wide k slices staged in workgroup memory, 4x4 per thread.
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let t0 = wg.y * 64u;
    let r0 = wg.x * 64u;
    let li = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let rr = e / 16u;
            let kk = k0 + e % 16u;
            var xv = 0.0;
            if (t0 + rr < p.t && kk < p.k) { xv = x[(t0 + rr) * p.k + kk]; }
            xs[e] = xv;
            var wvv = 0.0;
            if (r0 + rr < p.rows && kk < p.k) { wvv = wv((r0 + rr) * p.k + kk); }
            ws[e] = wvv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var a: array<f32, 4>;
            var bb: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid.y * 4u + i) * 16u + kk];
                bb[i] = ws[(lid.x * 4u + i) * 16u + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] += a[i] * bb[j]; }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + lid.x * 4u + j;
            if (t < p.t && r < p.rows) { y[t * p.n + p.n0 + r] = acc[i * 4u + j] + bias(p.n0 + r); }
        }
    }
}
