//! Splitting an answer into Discord messages: under the length limit, at a
//! line or word boundary, with code fences closed and reopened across a split.
//!
//! The split of a growing text is stable: once the text runs past a chunk's
//! end, that chunk never changes again, so earlier messages of a streamed
//! answer can be finished while later ones still grow.

/// Discord's limit on message content, in characters.
pub const DISCORD_LIMIT: usize = 2000;

/// Room kept free at the end of every chunk for the status and footer lines.
pub const TAIL_RESERVE: usize = 200;

/// Longest opening fence line carried over to the next chunk.
const MAX_FENCE_LINE: usize = 24;

/// Characters of the closing fence a chunk may need (`"\n```"`).
const CLOSE_RESERVE: usize = 4;

/// One message's worth of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// What the message shows: a reopened fence, the body, a closing fence.
    pub content: String,
    /// The part of the answer this chunk carries; the bodies of all chunks
    /// concatenated give the answer back exactly.
    pub body: String,
}

/// Splits `text` into chunks of at most `limit` characters each.
///
/// A chunk ends at the last line break in its window, else at the last
/// space, else (one unbroken run of characters) at the limit. A chunk that
/// ends inside a code fence gets a closing fence, and the next one reopens it
/// with the same opening line (language tag kept).
///
/// `limit` must leave room for a fence: at least 64.
pub fn split(text: &str, limit: usize) -> Vec<Chunk> {
    let limit = limit.max(64);
    let mut chunks = Vec::new();
    let mut rest = text;
    let mut fence: Option<String> = None;
    while !rest.is_empty() {
        let prefix = fence.as_ref().map(|f| format!("{f}\n")).unwrap_or_default();
        let budget = limit - prefix.chars().count() - CLOSE_RESERVE;
        let cut = cut_point(rest, budget);
        let (body, tail) = rest.split_at(cut);
        rest = tail;
        fence = fence_after(fence, body);
        let mut content = prefix;
        content.push_str(body);
        if fence.is_some() {
            if !body.ends_with('\n') {
                content.push('\n');
            }
            content.push_str("```");
        }
        chunks.push(Chunk {
            content,
            body: body.to_owned(),
        });
    }
    chunks
}

/// Byte index where the chunk starting at `text` ends, given `budget` characters.
fn cut_point(text: &str, budget: usize) -> usize {
    let Some((window_end, _)) = text.char_indices().nth(budget) else {
        return text.len();
    };
    let window = &text[..window_end];
    // Only accept a boundary in the second half of the window: a break near
    // the start would make a uselessly short message.
    let half = window.len() / 2;
    if let Some(pos) = window.rfind('\n').filter(|&p| p >= half) {
        return pos + 1;
    }
    if let Some(pos) = window.rfind(' ').filter(|&p| p >= half) {
        return pos + 1;
    }
    window_end
}

/// The fence open at the end of `body`, given the one open at its start.
fn fence_after(mut fence: Option<String>, body: &str) -> Option<String> {
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(trimmed.chars().take(MAX_FENCE_LINE).collect()),
            };
        }
    }
    fence
}

/// Counts fence lines in `text`; balanced text has an even count.
pub fn fence_lines(text: &str) -> usize {
    text.lines()
        .filter(|line| line.trim().starts_with("```"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(chunks: &[Chunk]) -> String {
        chunks.iter().map(|c| c.body.as_str()).collect()
    }

    #[test]
    fn short_text_is_one_chunk() {
        let chunks = split("hello world", 2000);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].content, "hello world");
        assert!(split("", 2000).is_empty());
    }

    #[test]
    fn splits_at_line_then_word_then_hard() {
        let line = "word ".repeat(30); // 150 chars
        let text = format!("{line}\n{line}\n{line}\n");
        let chunks = split(&text, 400);
        assert!(chunks.len() >= 2);
        assert!(chunks[0].body.ends_with('\n'), "{:?}", chunks[0].body);
        assert_eq!(joined(&chunks), text);

        let words = "abcdefghi ".repeat(100);
        let chunks = split(&words, 300);
        assert!(chunks[0].body.ends_with(' '));
        assert!(chunks.iter().all(|c| c.content.chars().count() <= 300));
        assert_eq!(joined(&chunks), words);

        let run = "x".repeat(1000);
        let chunks = split(&run, 300);
        assert_eq!(joined(&chunks), run);
        assert!(chunks.iter().all(|c| c.content.chars().count() <= 300));
    }

    #[test]
    fn multibyte_text_counts_characters() {
        let text = "é".repeat(5000);
        let chunks = split(&text, 2000);
        assert!(chunks.iter().all(|c| c.content.chars().count() <= 2000));
        assert_eq!(joined(&chunks), text);
    }

    #[test]
    fn code_fences_are_closed_and_reopened() {
        let code: String = (0..200)
            .map(|i| format!("let x{i} = {i};\n"))
            .collect::<Vec<_>>()
            .concat();
        let text = format!("Here:\n```rust\n{code}```\nDone.\n");
        let chunks = split(&text, 500);
        assert!(chunks.len() > 3);
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(chunk.content.chars().count() <= 500);
            assert_eq!(
                fence_lines(&chunk.content) % 2,
                0,
                "chunk {i}: {}",
                chunk.content
            );
            if i > 0 && i + 1 < chunks.len() {
                assert!(chunk.content.starts_with("```rust\n"), "chunk {i}");
            }
        }
        assert_eq!(joined(&chunks), text);
    }

    #[test]
    fn split_of_growing_text_is_stable() {
        let text: String = (0..400)
            .map(|i| format!("line {i} of the answer\n"))
            .collect::<Vec<_>>()
            .concat();
        let full = split(&text, 700);
        for end in (0..text.len()).step_by(97) {
            let partial = split(&text[..end], 700);
            // Every chunk but the last of a prefix is final.
            for (i, chunk) in partial
                .iter()
                .enumerate()
                .take(partial.len().saturating_sub(1))
            {
                assert_eq!(chunk, &full[i], "prefix {end}, chunk {i}");
            }
        }
    }
}
