//! Tensors as the engine sees them: a description plus a handle to a backend-owned buffer.

use crate::{DType, Shape};

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
}

impl std::fmt::Display for TensorDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.dtype, self.shape)
    }
}
