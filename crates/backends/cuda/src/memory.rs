//! How much GPU memory a gpt-oss model needs on the CUDA backends (both flavors keep the
//! weights as stored: bf16 tensors bf16, MXFP4 expert blocks and E8M0 scales packed), and the
//! refusal when it does not fit.

/// The shape numbers of a gpt-oss checkpoint that decide its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub experts: u64,
    pub intermediate: u64,
    pub vocab: u64,
}

/// gpt-oss-20b (config.json of openai/gpt-oss-20b).
pub const GPT_OSS_20B: ModelShape = ModelShape {
    layers: 24,
    hidden: 2880,
    heads: 64,
    kv_heads: 8,
    head_dim: 64,
    experts: 32,
    intermediate: 2880,
    vocab: 201088,
};

/// gpt-oss-120b (config.json of openai/gpt-oss-120b).
pub const GPT_OSS_120B: ModelShape = ModelShape {
    layers: 36,
    experts: 128,
    ..GPT_OSS_20B
};

/// Room for temporaries (activations of a prefill chunk, logits, the kernel pool) and the
/// CUDA context's own allocations.
pub const WORKSPACE_MARGIN: u64 = 1 << 30;

/// Bytes of the weights as stored: bf16 embedding, unembedding, attention and router; experts
/// as MXFP4 (4 bits a value) plus one E8M0 scale byte per 32 values and bf16 biases.
pub fn weight_bytes(m: &ModelShape) -> u64 {
    let bf16 = 2;
    let (h, e, i) = (m.hidden, m.experts, m.intermediate);
    let q = m.heads * m.head_dim;
    let kv = m.kv_heads * m.head_dim;
    let attn = (q + 2 * kv) * h * bf16 // qkv
        + (q + 2 * kv) * bf16 // qkv bias
        + h * q * bf16 // o
        + h * bf16 // o bias
        + m.heads * bf16; // sinks
    let router = e * h * bf16 + e * bf16;
    let mxfp4 = |rows: u64, cols: u64| rows * cols / 2 + rows * cols / 32;
    let experts = e * (mxfp4(2 * i, h) + 2 * i * bf16 + mxfp4(h, i) + h * bf16);
    let norms = 2 * h * bf16;
    let per_layer = attn + router + experts + norms;
    m.layers * per_layer + 2 * m.vocab * h * bf16 + h * bf16
}

/// Bytes of the KV cache: keys and values of every layer, `context` positions, `elem` bytes
/// an element.
pub fn kv_bytes(m: &ModelShape, context: u64, elem: u64) -> u64 {
    2 * m.layers * context * m.kv_heads * m.head_dim * elem
}

/// Weights + KV cache + [`WORKSPACE_MARGIN`].
pub fn estimate(m: &ModelShape, context: u64, kv_elem: u64) -> u64 {
    weight_bytes(m) + kv_bytes(m, context, kv_elem) + WORKSPACE_MARGIN
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `Ok` when `need` bytes fit in `free`, else the message to refuse with: need vs free on
/// `device`, and what to do about it.
pub fn check_fits(need: u64, free: u64, device: &str) -> Result<(), String> {
    if need <= free {
        return Ok(());
    }
    Err(format!(
        "not enough GPU memory on {device}: needs {} (weights as stored + KV cache + {} \
         workspace), {} free; use a smaller --max-context, a smaller model, or another GPU \
         (--device)",
        gib(need),
        gib(WORKSPACE_MARGIN),
        gib(free)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn gpt_oss_weights_match_the_checkpoints() {
        // The published safetensors are 13.8 GB (20b) and 65.3 GB (120b), with a few small
        // tensors stored in other dtypes: the estimate must land within 5% of them.
        let w20 = weight_bytes(&GPT_OSS_20B);
        let w120 = weight_bytes(&GPT_OSS_120B);
        assert!((13 * GB..14 * GB).contains(&w20), "{w20}");
        assert!((62 * GB..66 * GB).contains(&w120), "{w120}");
        // Experts dominate: 120b has 4x the experts per layer and 1.5x the layers.
        assert!(w120 > 4 * w20, "{w120} vs {w20}");
    }

    #[test]
    fn kv_cache_and_estimate_add_up() {
        // 24 layers * 2 (k, v) * 8 kv heads * 64 * 4 bytes = 98304 bytes a position (f32).
        assert_eq!(kv_bytes(&GPT_OSS_20B, 1, 4), 98_304);
        assert_eq!(kv_bytes(&GPT_OSS_20B, 4096, 4), 98_304 * 4096);
        assert_eq!(kv_bytes(&GPT_OSS_120B, 1, 2), 36 * 2 * 8 * 64 * 2);
        assert_eq!(
            estimate(&GPT_OSS_20B, 8192, 4),
            weight_bytes(&GPT_OSS_20B) + 98_304 * 8192 + WORKSPACE_MARGIN
        );
    }

    #[test]
    fn twenty_b_fits_a_16_gb_card_at_4k_but_not_at_128k() {
        let card16 = 16 * (1u64 << 30) - (600 << 20); // what a 16 GB card has free
        assert!(check_fits(estimate(&GPT_OSS_20B, 4096, 4), card16, "T4").is_ok());
        let e = check_fits(estimate(&GPT_OSS_20B, 131_072, 4), card16, "Tesla T4").unwrap_err();
        assert!(e.contains("Tesla T4") && e.contains("--max-context"), "{e}");
        assert!(
            e.contains("needs 25.82 GiB") && e.contains("15.41 GiB free"),
            "{e}"
        );
        // 120b needs an 80 GB card.
        let h100 = 79 * (1u64 << 30);
        assert!(check_fits(estimate(&GPT_OSS_120B, 8192, 4), h100, "H100").is_ok());
        assert!(check_fits(estimate(&GPT_OSS_120B, 8192, 4), 48 << 30, "A6000").is_err());
    }
}
