//! MXFP4 (OCP microscaling FP4): E2M1 codes in 32-value blocks sharing one E8M0 scale.
//!
//! Layout in the gpt-oss checkpoints: `blocks[.., rows, groups, 16]` u8 and
//! `scales[.., rows, groups]` u8; byte `j` of a block holds element `2j` in its low nibble
//! and element `2j+1` in its high nibble; the scale is `2^(s - 127)`.

/// Values of the 16 E2M1 codes (bit 3 sign, bits 2..1 exponent with bias 1, bit 0 mantissa).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Values per block and bytes per block.
pub const BLOCK_VALUES: usize = 32;
pub const BLOCK_BYTES: usize = 16;

/// The multiplier an E8M0 scale byte stands for: 2^(s-127), exact in f32 for s in 1..=254.
pub fn scale_value(s: u8) -> f32 {
    // ldexp without libm: build the f32 directly for the normal range, fall back otherwise.
    let e = s as i32 - 127;
    if (-126..=127).contains(&e) {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        (2.0f64).powi(e) as f32
    }
}

/// Decode one block of 16 bytes into 32 values.
pub fn decode_block(block: &[u8], scale: u8, out: &mut [f32]) {
    let m = scale_value(scale);
    for (j, b) in block.iter().enumerate().take(BLOCK_BYTES) {
        out[2 * j] = FP4_VALUES[(b & 0x0F) as usize] * m;
        out[2 * j + 1] = FP4_VALUES[(b >> 4) as usize] * m;
    }
}

/// Decode a whole row: `blocks` holds `groups * 16` bytes, `scales` `groups` bytes;
/// `out` receives `groups * 32` values.
pub fn decode_row(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    for (g, s) in scales.iter().enumerate() {
        decode_block(
            &blocks[g * BLOCK_BYTES..(g + 1) * BLOCK_BYTES],
            *s,
            &mut out[g * BLOCK_VALUES..(g + 1) * BLOCK_VALUES],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_sixteen_codes_at_unit_scale() {
        let expected = [
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
        ];
        for code in 0u8..16 {
            let mut block = [0u8; 16];
            block[0] = code; // low nibble -> element 0
            block[1] = code << 4; // high nibble -> element 3
            let mut out = [f32::NAN; 32];
            decode_block(&block, 127, &mut out);
            assert_eq!(
                out[0].to_bits(),
                (expected[code as usize] as f32).to_bits(),
                "code {code:#x}"
            );
            assert_eq!(
                out[3].to_bits(),
                (expected[code as usize] as f32).to_bits(),
                "code {code:#x} high"
            );
            assert_eq!(out[1], 0.0);
            assert_eq!(out[2], 0.0);
        }
        // negative zero keeps its sign bit
        assert!(FP4_VALUES[8].is_sign_negative());
    }

    #[test]
    fn worked_bytes_from_the_spec() {
        let mut out = [0f32; 32];
        let mut block = [0u8; 16];
        block[0] = 0x21;
        decode_block(&block, 127, &mut out);
        assert_eq!((out[0], out[1]), (0.5, 1.0));
        decode_block(&block, 128, &mut out);
        assert_eq!((out[0], out[1]), (1.0, 2.0));
        decode_block(&block, 126, &mut out);
        assert_eq!((out[0], out[1]), (0.25, 0.5));
        block[0] = 0xF8;
        decode_block(&block, 127, &mut out);
        assert!(out[0] == 0.0 && out[0].is_sign_negative());
        assert_eq!(out[1], -6.0);
    }

    #[test]
    fn scales_across_the_range() {
        assert_eq!(scale_value(127), 1.0);
        assert_eq!(scale_value(130), 8.0);
        assert_eq!(scale_value(120), 1.0 / 128.0);
        assert_eq!(scale_value(1), 2f32.powi(-126));
        assert_eq!(scale_value(0), 2f64.powi(-127) as f32); // subnormal, still exact
        assert_eq!(scale_value(254), 2f32.powi(127));
    }

    #[test]
    fn decode_row_places_groups_in_order() {
        let blocks: Vec<u8> = (0..32).map(|i| if i < 16 { 0x22 } else { 0x77 }).collect();
        let scales = [127u8, 126];
        let mut out = vec![0f32; 64];
        decode_row(&blocks, &scales, &mut out);
        assert!(out[..32].iter().all(|v| *v == 1.0));
        assert!(out[32..].iter().all(|v| *v == 3.0));
    }
}
