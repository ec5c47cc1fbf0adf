//! Element types of tensors, as stored in checkpoints and in backend buffers.

use std::fmt;

/// `#[repr(u32)]` so the value can cross the plugin C ABI unchanged.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    BF16 = 1,
    F16 = 2,
    U8 = 3,
    I32 = 4,
    /// MXFP4 blocks: one byte holds two FP4 (E2M1) codes, low nibble first; last axis is 16
    /// bytes = one block of 32 values.
    Mxfp4Blocks = 5,
    /// E8M0 scales of MXFP4 blocks: one byte per block, value 2^(s-127).
    E8m0Scales = 6,
}

impl DType {
    /// Bytes per element (an MXFP4 "element" is one packed byte).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 | DType::Mxfp4Blocks | DType::E8m0Scales => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::U8 => "U8",
            DType::I32 => "I32",
            DType::Mxfp4Blocks => "MXFP4 blocks (U8)",
            DType::E8m0Scales => "E8M0 scales (U8)",
        }
    }

    /// Whether values of this dtype are stored as raw bytes (no arithmetic meaning per byte).
    pub fn is_byte_packed(self) -> bool {
        matches!(self, DType::U8 | DType::Mxfp4Blocks | DType::E8m0Scales)
    }

    pub fn from_u32(v: u32) -> Option<DType> {
        Some(match v {
            0 => DType::F32,
            1 => DType::BF16,
            2 => DType::F16,
            3 => DType::U8,
            4 => DType::I32,
            5 => DType::Mxfp4Blocks,
            6 => DType::E8m0Scales,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
