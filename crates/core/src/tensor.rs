//! Tensors as the engine sees them: a description plus a handle to a backend-owned buffer.

use crate::{DType, Error, Result, Shape};

/// Opaque handle to a buffer owned by a backend (host memory, GPU memory, ...).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorDesc {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> Self {
        TensorDesc {
            dtype,
            shape: shape.into(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn byte_size(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// A buffer of this description may stand for the graph value `value` (named `name`):
    /// same shape, and the same dtype or two byte-packed dtypes of one size (MXFP4 blocks
    /// and E8M0 scales are bytes, as U8 is). Every backend checks its bindings with this.
    pub fn check_binds(&self, name: &str, value: &TensorDesc) -> Result<()> {
        let same_bytes = self.dtype.size() == value.dtype.size()
            && self.dtype.is_byte_packed()
            && value.dtype.is_byte_packed();
        if self.shape != value.shape || (self.dtype != value.dtype && !same_bytes) {
            return Err(Error::tensor(
                name,
                format!("graph says {value}, its buffer holds {self}"),
            ));
        }
        Ok(())
    }

    /// `len` bytes fill a buffer of this description (named `name`) exactly.
    pub fn check_upload(&self, name: impl Into<String>, len: usize) -> Result<()> {
        if len != self.byte_size() {
            return Err(Error::tensor(
                name,
                format!(
                    "upload of {len} bytes into a {self} buffer of {} bytes",
                    self.byte_size()
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for TensorDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.dtype, self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_need_the_shape_and_a_compatible_dtype() {
        let u8s = TensorDesc::new(DType::U8, [4, 16]);
        assert!(u8s
            .check_binds("w", &TensorDesc::new(DType::Mxfp4Blocks, [4, 16]))
            .is_ok());
        let e = u8s
            .check_binds("w", &TensorDesc::new(DType::U8, [4, 8]))
            .unwrap_err()
            .to_string();
        let (graph, buffer) = (
            TensorDesc::new(DType::U8, [4, 8]),
            TensorDesc::new(DType::U8, [4, 16]),
        );
        assert!(
            e.contains(&format!("graph says {graph}, its buffer holds {buffer}")),
            "{e}"
        );
        let f32s = TensorDesc::new(DType::F32, [2]);
        assert!(f32s
            .check_binds("x", &TensorDesc::new(DType::I32, [2]))
            .is_err());
        assert!(f32s.check_upload("x", 8).is_ok());
        let e = f32s.check_upload("buffer 3", 6).unwrap_err().to_string();
        assert!(
            e.contains("upload of 6 bytes into a") && e.contains("of 8 bytes"),
            "{e}"
        );
    }
}
