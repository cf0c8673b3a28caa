//! Token bytes reassembled into whole UTF-8 characters.
//!
//! A token may end in the middle of a multi-byte character (emoji, CJK,
//! accented letters in byte-level vocabularies; the RKLLM runtime flags such
//! pieces `RKLLM_RUN_WAITING`). The protocol carries only whole characters,
//! so the incomplete tail is held back until the next token completes it.
//! The decision is made from the bytes alone, so an engine that flags pieces
//! wrongly still produces correct text; bytes that can never become valid
//! UTF-8 come out as U+FFFD rather than being dropped silently.

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

    /// Adds a piece and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // Valid by the decoder's own account.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    // An incomplete sequence at the end: keep it for the next piece.
                    let Some(bad) = err.error_len() else {
                        self.pending.drain(..valid);
                        debug_assert!(self.pending.len() <= MAX_PENDING);
                        return out;
                    };
                    // Invalid bytes: replace them and go on after them.
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + bad);
                }
            }
        }
    }

    /// Whether bytes are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends a stream that ran its course: whatever is held back can no
    /// longer complete and comes out as U+FFFD (empty when nothing is held).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Ends a stream that was cut off (cancel, token cap): the bytes of a
    /// character cut in half are dropped, not shown as U+FFFD.
    pub fn discard(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pieces: &[&[u8]]) -> Vec<String> {
        let mut a = Utf8Assembler::new();
        let mut out: Vec<String> = pieces
            .iter()
            .map(|p| a.push(p))
            .filter(|s| !s.is_empty())
            .collect();
        out.push(a.finish());
        out.retain(|s| !s.is_empty());
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
        let text = "Naïve café: ☕ and 🎉 done, €5.";
        let bytes = text.as_bytes();
        for chunk in 1..=5 {
            let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
            assert_eq!(feed(&pieces).concat(), text, "chunk size {chunk}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_do_not_stall() {
        assert_eq!(feed(&[b"a\xffb", b"\xc3"]).concat(), "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn an_incomplete_sequence_is_pending_and_discard_drops_it() {
        let mut a = Utf8Assembler::new();
        assert_eq!(a.push(&[0xe2, 0x98]), "");
        assert!(a.has_pending());
        assert_eq!(a.push(&[0x95]), "☕");
        assert!(!a.has_pending());
        assert_eq!(a.push(&[0xe2]), "");
        a.discard();
        assert!(!a.has_pending());
        assert_eq!(a.finish(), "");
    }
}
