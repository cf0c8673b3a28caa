//! Turns a stream of token bytes into complete UTF-8 text.
//!
//! A token may end in the middle of a multi-byte character (emoji, CJK,
//! accented letters in byte-level vocabularies). Sending such a fragment
//! would put U+FFFD in the user's reply; instead the incomplete tail is held
//! back until the next token completes it.

/// Accumulates bytes and releases the longest complete UTF-8 prefix.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and returns the text that is now complete (possibly empty).
    /// Bytes that can never become valid UTF-8 come out as U+FFFD.
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
                    // The prefix was just checked to be valid UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match err.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: whatever is still held is incomplete and comes out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn a_character_split_across_tokens_is_held_until_complete() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(b"price: "), "price: ");
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'5']), "€5");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn emoji_in_four_pieces() {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for b in "ok 👍".as_bytes() {
            out.push_str(&s.push(&[*b]));
        }
        assert_eq!(out, "ok 👍");
    }

    #[test]
    fn invalid_bytes_become_replacement_and_do_not_stall() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
