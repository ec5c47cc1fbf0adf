//! Flags shared by the commands that take text: sampling settings and the harmony system
//! message (reasoning effort, current date).

use clap::Args as ClapArgs;
use gptoss_core::Result;
use gptoss_models::harmony::{ReasoningEffort, RenderOptions};
use gptoss_models::sampler::SamplingParams;

/// Sampling flags. Unset flags take the defaults of `SamplingParams` (temperature 1, all
/// filters and penalties off); `--temperature 0` is greedy.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy. [default: 1 for text prompts, 0 for --tokens]
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Lower a token's logit by this times the number of times it was generated.
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Lower a token's logit by this once it has been generated.
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Divide generated tokens' positive logits by this (multiply negative ones); 1 = off.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler: the same seed, prompt and model give the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the answer contains this text (not printed); repeat for several.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The sampling settings, `default_temperature` when `--temperature` is not given.
    pub fn params(&self, default_temperature: f32) -> Result<SamplingParams> {
        let d = SamplingParams::default();
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(default_temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: self.seed,
            max_tokens: None,
            stop: self.stop.clone(),
        };
        p.validate()?;
        Ok(p)
    }
}

/// What goes into the harmony system message.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct PromptArgs {
    /// How much the model reasons before answering: low, medium or high [default: medium].
    #[arg(long, value_name = "low|medium|high", value_parser = parse_effort)]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// The "Current date" of the system message, YYYY-MM-DD [default: today, UTC].
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, conflicts_with = "no_date")]
    pub date: Option<String>,
    /// Leave the "Current date" line out of the system message.
    #[arg(long)]
    pub no_date: bool,
}

impl PromptArgs {
    pub fn render_options(&self) -> RenderOptions {
        RenderOptions {
            reasoning_effort: self.reasoning_effort.unwrap_or_default(),
            current_date: if self.no_date {
                None
            } else {
                Some(self.date.clone().unwrap_or_else(today))
            },
            ..Default::default()
        }
    }
}

fn parse_effort(s: &str) -> std::result::Result<ReasoningEffort, String> {
    s.parse::<ReasoningEffort>().map_err(|e| e.to_string())
}

/// Checks a YYYY-MM-DD date (a real calendar day).
pub fn parse_date(s: &str) -> std::result::Result<String, String> {
    let bad = || format!("'{s}' is not a date of the form YYYY-MM-DD (e.g. 2025-06-28)");
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let num = |t: &str| {
        t.parse::<u32>()
            .ok()
            .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
    };
    let (Some(y), Some(m), Some(d)) = (num(y), num(m), num(d)) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(bad());
    }
    Ok(s.to_string())
}

#[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than rust-version 1.80
fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_267), (2025, 6, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn dates_are_checked() {
        assert!(parse_date("2025-06-28").is_ok());
        assert!(parse_date("2024-02-29").is_ok());
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-6-28",
            "25-06-28",
            "2025-06-2x",
            "",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
