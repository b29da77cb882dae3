//! Incremental detokenization: text deltas from a growing list of token ids, never splitting a
//! multi-byte character and keeping the spacing that depends on the previous tokens.

/// Decodes token ids to text (the tokenizer behind it).
pub trait Decode: Send + Sync {
    fn decode(&self, tokens: &[u32]) -> String;
}

/// Tracks how much of a sequence's text was already released.
#[derive(Debug, Clone, Default)]
pub struct IncrementalText {
    tokens: Vec<u32>,
    /// Start of the window that is re-decoded for context.
    prefix_offset: usize,
    /// End of the tokens whose text was released.
    read_offset: usize,
}

impl IncrementalText {
    /// Adds one token and returns the text it completes (empty while a character is pending).
    pub fn push(&mut self, decoder: &dyn Decode, token: u32) -> String {
        self.tokens.push(token);
        let prefix = decoder.decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let full = decoder.decode(&self.tokens[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            delta
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each token is one byte of UTF-8; invalid sequences decode lossily, like a byte-level BPE.
    struct Bytes;
    impl Decode for Bytes {
        fn decode(&self, tokens: &[u32]) -> String {
            let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    #[test]
    fn multibyte_characters_are_released_whole() {
        let mut text = IncrementalText::default();
        let mut out = Vec::new();
        for b in "a🎉é".bytes() {
            out.push(text.push(&Bytes, u32::from(b)));
        }
        assert_eq!(out.concat(), "a🎉é");
        assert_eq!(out[0], "a");
        assert_eq!(out[1..4], ["", "", ""]);
        assert_eq!(out[4], "🎉");
    }
}
