//! Reassembles the runtime's token pieces into complete UTF-8 text.
//!
//! A token may end inside a multi-byte character (the runtime flags such
//! pieces `RKLLM_RUN_WAITING`); the protocol only carries whole characters.
//! The decision is made from the bytes themselves, so a runtime that flags
//! pieces wrongly still produces correct text; bytes that can never become
//! valid UTF-8 come out as U+FFFD rather than being dropped silently.

/// Longest incomplete UTF-8 sequence: a 4-byte character missing its last byte.
const MAX_PENDING: usize = 3;

/// Buffers bytes until they form complete characters.
#[derive(Debug, Default)]
pub struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// A new, empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a piece and returns the text that is now complete, if any.
    pub fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    break;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // Valid by the decoder's own account.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    // An incomplete sequence at the end: keep it for the next piece.
                    let Some(bad) = err.error_len() else {
                        self.pending.drain(..valid);
                        debug_assert!(self.pending.len() <= MAX_PENDING);
                        break;
                    };
                    // Invalid bytes: replace them and go on after them.
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + bad);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Whether bytes are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: whatever is held back can no longer complete.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pieces: &[&[u8]]) -> Vec<String> {
        let mut a = Utf8Assembler::new();
        let mut out: Vec<String> = pieces.iter().filter_map(|p| a.push(p)).collect();
        out.extend(a.finish());
        out
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        let emoji = "🎉".as_bytes();
        let out = feed(&[b"ok ", &emoji[..1], &emoji[1..3], &emoji[3..], b"!"]);
        assert_eq!(out, vec!["ok ".to_owned(), "🎉".to_owned(), "!".to_owned()]);
    }

    #[test]
    fn every_split_of_a_text_reassembles_exactly() {
        let text = "Naïve café: ☕ and 🎉 done.";
        let bytes = text.as_bytes();
        for chunk in 1..=5 {
            let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
            let out = feed(&pieces);
            assert_eq!(out.concat(), text, "chunk size {chunk}");
            assert!(out.iter().all(|s| !s.is_empty()));
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let out = feed(&[b"a\xffb", b"\xc3"]);
        assert_eq!(out.concat(), "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn an_incomplete_sequence_is_pending() {
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(&[0xe2, 0x98]), None);
        assert!(a.has_pending());
        assert_eq!(a.push(&[0x95]).as_deref(), Some("☕"));
        assert!(!a.has_pending());
    }
}
