//! bf16 <-> f32 with PyTorch's semantics (round to nearest even, NaN -> 0x7FC0).

/// f32 -> bf16 bits, c10 `round_to_nearest_even`.
pub fn from_f32(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// bf16 bits -> f32 (exact).
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Little-endian bf16 bytes -> f32 values (exact).
pub fn bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| to_f32(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

/// f32 values -> little-endian bf16 bytes (rounded to nearest even).
pub fn f32_to_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| from_f32(*v).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_like_pytorch() {
        // 1.0 + 2^-8 lies exactly between two bf16 values; ties go to the even mantissa (1.0).
        assert_eq!(from_f32(1.0 + 1.0 / 256.0), 0x3F80);
        // 1.0 + 3*2^-8 is a tie between 1.0078125 (odd) and 1.015625 (even): goes up.
        assert_eq!(from_f32(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(to_f32(0x3F80), 1.0);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert_eq!(to_f32(from_f32(-2.5)), -2.5);
    }
}
