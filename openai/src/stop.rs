//! Stop sequences applied to streamed text: text is let through as soon as it
//! can no longer be the start of a stop string, so the stop text itself is
//! never sent.

/// Filters a stream of text pieces against a set of stop strings.
#[derive(Debug, Clone)]
pub struct StopFilter {
    stops: Vec<String>,
    /// Text received but not yet let through: it could still begin a stop string.
    held: String,
    /// Bytes to hold back: one less than the longest stop string.
    hold: usize,
    stopped: bool,
}

/// What one piece of text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Text safe to send now.
    pub text: String,
    /// A stop string was found: the answer ends with `text`.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for `stops` (empty strings are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let hold = stops
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        Self {
            stops,
            held: String::new(),
            hold,
            stopped: false,
        }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of the answer.
    pub fn push(&mut self, piece: &str) -> Filtered {
        if self.stopped {
            return Filtered {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        // The earliest stop string wins, wherever it starts.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            self.held.truncate(at);
            return Filtered {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let mut cut = self.held.len().saturating_sub(self.hold);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.held.split_off(cut);
        Filtered {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The answer ended without a stop string: the held-back tail.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| (*s).to_owned()));
        let mut out = String::new();
        for p in pieces {
            let r = f.push(p);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_everything_at_once() {
        let mut f = StopFilter::new(Vec::new());
        assert_eq!(f.push("abc").text, "abc");
        assert_eq!(f.finish(), "");
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D and more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["a", "bzz"]), ("a".into(), true));
    }

    #[test]
    fn a_partial_match_that_fails_is_released() {
        assert_eq!(run(&["END"], &["EN", "x", "y"]), ("ENxy".into(), false));
    }

    #[test]
    fn held_text_is_released_only_when_it_cannot_start_a_stop() {
        let mut f = StopFilter::new(vec!["\n\n".to_owned()]);
        assert_eq!(f.push("line\n").text, "line");
        assert_eq!(f.push("next").text, "\nnex");
        assert_eq!(f.finish(), "t");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let (text, stopped) = run(&["ééé"], &["aé", "éb", "ééé"]);
        assert_eq!((text.as_str(), stopped), ("aééb", true));
        assert_eq!(run(&["xyz"], &["é", "ü"]), ("éü".into(), false));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), false));
    }
}
