//! Before loading: does each shard of the model fit its device's memory? A clear refusal now
//! beats an out-of-memory error halfway through a long load.

use gptoss_core::{DType, DeviceReport, Error, Result};
use gptoss_models::kv_cache::KvCache;
use gptoss_models::weights::shard_needs;
use gptoss_models::{GptOssConfig, Sharding};

/// Room for temporaries (a prefill chunk's activations, logits, kernel pools) and the
/// runtime's own allocations.
pub const WORKSPACE_MARGIN: u64 = 1 << 30;

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// How the weights sit on the devices: the split, and whether the experts are expanded to
/// bf16 at load (`--dequantize`: each MXFP4 byte, two codes, becomes 4 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub sharding: Sharding,
    pub dequantize: bool,
}

impl From<Sharding> for Layout {
    fn from(sharding: Sharding) -> Layout {
        Layout {
            sharding,
            dequantize: false,
        }
    }
}

/// Bytes shard `rank` needs on its device: its weights as held (BF16 floats, MXFP4 experts or
/// bf16 ones with --dequantize), an f32 KV cache of `context` positions for its kv heads, and
/// the margin.
pub fn shard_need(
    cfg: &GptOssConfig,
    layout: impl Into<Layout>,
    rank: usize,
    context: usize,
) -> Result<(u64, u64, u64)> {
    let layout = layout.into();
    let plan = gptoss_models::ShardPlan::new(cfg, layout.sharding, rank)?;
    let held = |dtype: DType| match dtype {
        DType::Mxfp4Blocks if layout.dequantize => 4,
        _ => 1,
    };
    let weights: u64 = shard_needs(cfg, &plan, DType::BF16)
        .iter()
        .map(|n| n.bytes() * held(n.dtype))
        .sum();
    let kv = KvCache::bytes_for(cfg, plan.kv_heads.len(), context, DType::F32);
    Ok((weights, kv, WORKSPACE_MARGIN))
}

/// Refuses when a shard's need exceeds its device's memory (devices that report none, like
/// the cpu, are not checked). `devices[r]` runs shard r.
pub fn check(
    backend: &str,
    cfg: &GptOssConfig,
    layout: impl Into<Layout>,
    context: usize,
    devices: &[(usize, &DeviceReport)],
) -> Result<()> {
    let layout = layout.into();
    let sharding = layout.sharding;
    for (rank, (index, dev)) in devices.iter().enumerate() {
        let Some(have) = dev.memory_bytes else {
            continue;
        };
        let (w, kv, margin) = shard_need(cfg, layout, rank, context)?;
        let need = w + kv + margin;
        if need > have {
            let split = if sharding.world > 1 {
                format!("this shard (of {})", sharding.world)
            } else {
                "the model".to_string()
            };
            let (held, fix) = if layout.dequantize {
                (
                    "with the experts as bf16 (--dequantize)",
                    "drop --dequantize, ",
                )
            } else {
                ("as stored", "")
            };
            return Err(Error::Input(format!(
                "not enough memory on {backend} device {index} ({}, {}): {split} needs {} \
                 (weights {} {held} + KV cache for {context} positions {} + {} workspace); \
                 {fix}lower max_context (config or --max-context), split the model with \
                 --tensor-parallel N, or use a device with more memory",
                dev.name,
                gib(have),
                gib(need),
                gib(w),
                gib(kv),
                gib(margin)
            )));
        }
    }
    Ok(())
}

/// KV-cache positions (f32) that fit beside every shard's weights and the margin on its
/// device: the most a server's shared cache may take. None when a device reports no memory.
pub fn kv_room(
    cfg: &GptOssConfig,
    layout: impl Into<Layout>,
    devices: &[(usize, &DeviceReport)],
) -> Result<Option<usize>> {
    let layout = layout.into();
    let mut room = usize::MAX;
    for (rank, (_, dev)) in devices.iter().enumerate() {
        let Some(have) = dev.memory_bytes else {
            return Ok(None);
        };
        let (w, per_position, margin) = shard_need(cfg, layout, rank, 1)?;
        let left = have.saturating_sub(w + margin);
        room = room.min((left / per_position.max(1)) as usize);
    }
    Ok((room != usize::MAX).then_some(room))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_models::synthetic::Preset;

    fn gpu(name: &str, gb: u64) -> DeviceReport {
        DeviceReport {
            name: name.into(),
            memory_bytes: Some(gb << 30),
            score: 90,
            ..Default::default()
        }
    }

    const ONE: Sharding = Sharding::NONE;

    #[test]
    fn whole_model_weights_match_the_published_checkpoints() {
        // The published safetensors are 13.8 GB (20b) and 65.3 GB (120b), with a few small
        // tensors stored in other dtypes: the estimate must land within 5% of them.
        const GB: u64 = 1_000_000_000;
        let (w20, _, _) = shard_need(&Preset::Gpt20b.config(None), ONE, 0, 0).unwrap();
        let (w120, _, _) = shard_need(&Preset::Gpt120b.config(None), ONE, 0, 0).unwrap();
        assert!((13 * GB..14 * GB).contains(&w20), "{w20}");
        assert!((62 * GB..66 * GB).contains(&w120), "{w120}");
        // Experts dominate: 120b has 4x the experts per layer and 1.5x the layers.
        assert!(w120 > 4 * w20, "{w120} vs {w20}");
    }

    #[test]
    fn twenty_b_fits_16_gb_at_4k_not_at_128k() {
        let cfg = Preset::Gpt20b.config(None);
        let t4 = gpu("Tesla T4", 15);
        assert!(check("cuda-bf16", &cfg, ONE, 4096, &[(0, &t4)]).is_ok());
        let e = check("cuda-bf16", &cfg, ONE, 131_072, &[(0, &t4)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cuda-bf16 device 0 (Tesla T4, 15.00 GiB)")
                && e.contains("KV cache for 131072 positions 12.00 GiB")
                && e.contains("--tensor-parallel"),
            "{e}"
        );
    }

    #[test]
    fn one_twenty_b_needs_80_gb_or_a_split() {
        let cfg = Preset::Gpt120b.config(None);
        let (h100, a6000) = (gpu("H100", 79), gpu("RTX A6000", 47));
        assert!(check("cuda-mxfp4", &cfg, ONE, 8192, &[(0, &h100)]).is_ok());
        let e = check("cuda-bf16", &cfg, ONE, 8192, &[(0, &a6000)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the model needs"), "{e}");
        // Split over two: each holds half the experts and heads.
        let two = Sharding {
            world: 2,
            expert_parallel: true,
        };
        assert!(check("cuda-bf16", &cfg, two, 8192, &[(0, &a6000), (1, &a6000)]).is_ok());
        let (w0, _, _) = shard_need(&cfg, two, 0, 8192).unwrap();
        let (w, _, _) = shard_need(&cfg, ONE, 0, 8192).unwrap();
        assert!(w0 < w * 6 / 10 && w0 > w * 4 / 10, "{w0} of {w}");
    }

    #[test]
    fn kv_room_is_what_the_weights_leave() {
        let cfg = Preset::Gpt20b.config(None);
        let h100 = gpu("H100", 79);
        let room = kv_room(&cfg, ONE, &[(0, &h100)]).unwrap().unwrap();
        let (w, per_position, margin) = shard_need(&cfg, ONE, 0, 1).unwrap();
        assert_eq!(per_position, 98_304); // 24 layers x k,v x 8 heads x 64 x f32
        assert_eq!(room as u64, ((79u64 << 30) - w - margin) / per_position);
        // Split in two, each GPU holds half the heads: more than twice the positions per GPU.
        let two = Sharding {
            world: 2,
            expert_parallel: false,
        };
        let split = kv_room(&cfg, two, &[(0, &h100), (1, &h100)])
            .unwrap()
            .unwrap();
        assert!(split > 2 * room, "{split} vs {room}");
        let cpu = DeviceReport::default();
        assert_eq!(kv_room(&cfg, ONE, &[(0, &cpu)]).unwrap(), None);
    }

    #[test]
    fn dequantized_experts_take_four_times_their_bytes() {
        let cfg = Preset::Gpt20b.config(None);
        let bf16 = Layout {
            sharding: ONE,
            dequantize: true,
        };
        let (packed, _, _) = shard_need(&cfg, ONE, 0, 0).unwrap();
        let (expanded, _, _) = shard_need(&cfg, bf16, 0, 0).unwrap();
        // Blocks hold two codes a byte: gate_up [E, 2I, H/2 bytes], down [E, H, I/2 bytes];
        // as bf16 each byte becomes 4 (the scales stay as they are). 20b: 9.6 GB -> 38.2 GB.
        let (l, e, h, i) = (24u64, 32u64, 2880u64, 2880u64);
        let blocks = l * e * (2 * i * h + h * i) / 2;
        assert_eq!(expanded - packed, 3 * blocks);
        let h100 = gpu("H100", 79);
        assert!(check("cuda-bf16", &cfg, bf16, 4096, &[(0, &h100)]).is_ok());
        let a100 = gpu("A100-SXM4-40GB", 39);
        let e = check("cuda-bf16", &cfg, bf16, 4096, &[(0, &a100)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("with the experts as bf16 (--dequantize)")
                && e.contains("drop --dequantize"),
            "{e}"
        );
        assert!(check("cuda-bf16", &cfg, ONE, 4096, &[(0, &a100)]).is_ok());
    }

    #[test]
    fn devices_without_a_memory_size_are_not_checked() {
        let cfg = Preset::Gpt120b.config(None);
        let cpu = DeviceReport {
            name: "cpu".into(),
            score: 1,
            ..Default::default()
        };
        assert!(check("cpu", &cfg, ONE, 131_072, &[(0, &cpu)]).is_ok());
    }
}
