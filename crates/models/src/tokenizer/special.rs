//! The o200k_harmony special tokens (spec 6.1): fixed ids shared by tokenizer.json and the
//! built-in encoding.

/// `<|startoftext|>` (HF bos).
pub const STARTOFTEXT: u32 = 199998;
/// `<|endoftext|>` (HF pad; a stop token for generation).
pub const ENDOFTEXT: u32 = 199999;
/// `<|return|>`: the model finished its turn (stop token).
pub const RETURN: u32 = 200002;
/// `<|constrain|>`: starts a constrained content type in a header (`<|constrain|>json`).
pub const CONSTRAIN: u32 = 200003;
/// `<|channel|>`: starts the channel name in a header.
pub const CHANNEL: u32 = 200005;
/// `<|start|>`: starts a message.
pub const START: u32 = 200006;
/// `<|end|>`: ends one message, not the turn.
pub const END: u32 = 200007;
/// `<|message|>`: ends a header, starts the content.
pub const MESSAGE: u32 = 200008;
/// `<|call|>`: ends an assistant message addressed to a tool (stop token).
pub const CALL: u32 = 200012;

/// First id of the special range; every id from here to [`HARMONY_VOCAB_SIZE`] is special.
pub const FIRST_SPECIAL: u32 = STARTOFTEXT;
/// Number of ids of o200k_harmony (= gpt-oss `vocab_size`).
pub const HARMONY_VOCAB_SIZE: u32 = 201088;

/// Ids that end sampling of an assistant turn: `<|return|>`, `<|call|>` (harmony
/// `stop_tokens_for_assistant_actions`) and `<|endoftext|>` (HF generation_config).
pub const STOP_TOKENS: [u32; 3] = [RETURN, CALL, ENDOFTEXT];

/// The text of the special token `id` in o200k_harmony, or None for an ordinary id.
pub fn harmony_special_name(id: u32) -> Option<String> {
    let name = match id {
        STARTOFTEXT => "<|startoftext|>",
        ENDOFTEXT => "<|endoftext|>",
        RETURN => "<|return|>",
        CONSTRAIN => "<|constrain|>",
        CHANNEL => "<|channel|>",
        START => "<|start|>",
        END => "<|end|>",
        MESSAGE => "<|message|>",
        CALL => "<|call|>",
        id if (FIRST_SPECIAL..HARMONY_VOCAB_SIZE).contains(&id) => {
            return Some(format!("<|reserved_{id}|>"))
        }
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_names_cover_the_table_of_the_spec() {
        assert_eq!(harmony_special_name(200006).as_deref(), Some("<|start|>"));
        assert_eq!(harmony_special_name(200012).as_deref(), Some("<|call|>"));
        assert_eq!(
            harmony_special_name(200004).as_deref(),
            Some("<|reserved_200004|>")
        );
        assert_eq!(
            harmony_special_name(201087).as_deref(),
            Some("<|reserved_201087|>")
        );
        assert_eq!(harmony_special_name(201088), None);
        assert_eq!(harmony_special_name(199997), None);
    }
}
