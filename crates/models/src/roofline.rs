//! How many bytes a decode step must read: the denominator of "fraction of the roofline".

use gptoss_core::DType;

use crate::config::GptOssConfig;
use crate::weights::needs;

/// Weight bytes read to decode one token at batch 1: every non-expert tensor of every layer,
/// `num_experts_per_tok` experts per layer (MXFP4 blocks + scales + biases; with
/// `dequantized`, the blocks as bf16: 4 bytes for each byte of two codes), one embedding row,
/// the final norm and the whole lm_head. KV cache reads are counted separately.
pub fn weight_bytes_per_token(cfg: &GptOssConfig, float: DType, dequantized: bool) -> u64 {
    let e = cfg.num_local_experts as u64;
    let k = cfg.num_experts_per_tok as u64;
    needs(cfg, float)
        .iter()
        .map(|n| {
            let held = match n.dtype {
                DType::Mxfp4Blocks if dequantized => 4,
                _ => 1,
            };
            let bytes = (n.shape.iter().product::<usize>() * n.dtype.size()) as u64 * held;
            if n.name == "model.embed_tokens.weight" {
                bytes / cfg.vocab_size as u64
            } else if n.name.contains(".mlp.experts.") {
                bytes / e * k
            } else {
                bytes
            }
        })
        .sum()
}

/// KV cache bytes one decode step reads at `context` positions (sliding layers read at most
/// `sliding_window`), with cache elements of `kv_dtype`.
pub fn kv_bytes_per_token(cfg: &GptOssConfig, context: usize, kv_dtype: DType) -> u64 {
    let row = (2 * cfg.num_key_value_heads * cfg.head_dim * kv_dtype.size()) as u64;
    (0..cfg.num_hidden_layers)
        .map(|l| {
            let w = cfg.layer_window(l) as usize;
            let seen = if w == 0 { context } else { context.min(w) };
            seen as u64 * row
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::Preset;

    #[test]
    fn matches_the_spec_reference_numbers() {
        // GPTOSS-SPEC.md section 8: bytes read per decoded token, batch 1, MXFP4 experts, BF16 rest.
        assert_eq!(
            weight_bytes_per_token(&Preset::Gpt20b.config(None), DType::BF16, false),
            3_708_089_088
        );
        // --dequantize: the 4 experts' blocks of each of 24 layers, 4 bytes each instead of 1.
        let blocks = 24 * 4 * (2 * 2880 * 2880 + 2880 * 2880) / 2;
        assert_eq!(
            weight_bytes_per_token(&Preset::Gpt20b.config(None), DType::BF16, true),
            3_708_089_088 + 3 * blocks
        );
        assert_eq!(
            weight_bytes_per_token(&Preset::Gpt120b.config(None), DType::BF16, false),
            5_002_907_904
        );
    }

    #[test]
    fn kv_reads_are_bounded_by_the_window_on_sliding_layers() {
        let c = Preset::Gpt20b.config(None);
        // 12 full layers read all 1000 positions, 12 sliding layers 128; 2*8*64*2 bytes per row.
        assert_eq!(
            kv_bytes_per_token(&c, 1000, DType::BF16),
            (12 * 1000 + 12 * 128) * 2048
        );
        assert_eq!(kv_bytes_per_token(&c, 10, DType::BF16), 24 * 10 * 2048);
    }
}
