//! Per-layer key/value caches held by the backend, so decoding reuses earlier positions.

use gptoss_core::{Backend, BufferId, DType, Result, TensorDesc};

use crate::config::GptOssConfig;

/// Keys and values of every layer, one row per position: `[capacity, kv_heads * head_dim]`.
#[derive(Debug)]
pub struct KvCache {
    pub layers: Vec<(BufferId, BufferId)>,
    pub capacity: usize,
    pub dtype: DType,
    /// Key/value heads held (all of them unless the model is split over shards).
    pub kv_heads: usize,
}

impl KvCache {
    pub fn desc(cfg: &GptOssConfig, capacity: usize, dtype: DType) -> TensorDesc {
        Self::desc_for(cfg, cfg.num_key_value_heads, capacity, dtype)
    }

    /// One layer's buffer for `kv_heads` heads.
    pub fn desc_for(
        cfg: &GptOssConfig,
        kv_heads: usize,
        capacity: usize,
        dtype: DType,
    ) -> TensorDesc {
        TensorDesc::new(dtype, [capacity, kv_heads * cfg.head_dim])
    }

    /// Caches of every layer for `kv_heads` heads. On an error (out of memory) the buffers
    /// already allocated are freed again.
    pub fn alloc(
        backend: &mut dyn Backend,
        cfg: &GptOssConfig,
        kv_heads: usize,
        capacity: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        let desc = Self::desc_for(cfg, kv_heads, capacity, dtype);
        let mut ids = Vec::with_capacity(2 * cfg.num_hidden_layers);
        for _ in 0..2 * cfg.num_hidden_layers {
            match backend.alloc(&desc) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        let _ = backend.free(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(KvCache {
            layers: ids.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect(),
            capacity,
            dtype,
            kv_heads,
        })
    }

    pub fn free(self, backend: &mut dyn Backend) -> Result<()> {
        for (k, v) in self.layers {
            backend.free(k)?;
            backend.free(v)?;
        }
        Ok(())
    }

    /// Bytes this cache occupies (for memory estimates and messages).
    pub fn bytes(cfg: &GptOssConfig, capacity: usize, dtype: DType) -> u64 {
        Self::bytes_for(cfg, cfg.num_key_value_heads, capacity, dtype)
    }

    /// Bytes of a cache for `kv_heads` heads (one shard's part).
    pub fn bytes_for(cfg: &GptOssConfig, kv_heads: usize, capacity: usize, dtype: DType) -> u64 {
        2 * cfg.num_hidden_layers as u64
            * Self::desc_for(cfg, kv_heads, capacity, dtype).byte_size() as u64
    }
}
