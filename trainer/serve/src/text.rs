//! Generated ids to text as they come: the whole answer is decoded again at each token (so
//! characters made of several tokens stay whole) and only what cannot still change is emitted —
//! not an incomplete character, not the start of a stop string. Stop strings end the text
//! before them, as OpenAI's `stop` does.

use crate::codec::Codec;

/// How far `full` may be emitted, and whether a stop string ends it there. `shown` bytes were
/// emitted already; with `last`, nothing more will come, so only stop strings hold text back.
pub fn emit_until(full: &str, shown: usize, stops: &[String], last: bool) -> (usize, bool) {
    let from = floor_boundary(full, shown.min(full.len()));
    let earliest = stops
        .iter()
        .filter_map(|s| full[from..].find(s.as_str()).map(|p| from + p))
        .min();
    if let Some(p) = earliest {
        return (p.max(shown), true);
    }
    if last {
        return (full.len(), false);
    }
    let mut end = full.len();
    // An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
    while full[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    // The longest tail that could grow into a stop string waits.
    let held = full[..end]
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| {
            let tail = &full[i..end];
            stops
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
        })
        .unwrap_or(end);
    (held.max(shown), false)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The text of one answer, fed token by token.
pub struct TextStream {
    ids: Vec<u32>,
    shown: usize,
    stops: Vec<String>,
}

/// What a token added: text to send, and whether a stop string ended the answer.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    pub text: String,
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            ids: Vec::new(),
            shown: 0,
            stops,
        }
    }

    /// Adds a generated token (`None`: the answer ended) and returns the text it releases.
    pub fn push(&mut self, codec: &dyn Codec, id: Option<u32>) -> Result<Piece, String> {
        self.ids.extend(id);
        let full = codec.decode(&self.ids)?;
        let (end, stopped) = emit_until(&full, self.shown, &self.stops, id.is_none());
        let text = full
            .get(self.shown.min(end)..end)
            .unwrap_or_default()
            .to_string();
        self.shown = end;
        Ok(Piece { text, stopped })
    }

    /// Tokens fed so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_what_cannot_change() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (full, shown, stops, last) -> (end, stopped)
        let cases = [
            ("hello", 0, s(&[]), false, (5, false)),
            ("hello wor", 5, s(&["world"]), false, (6, false)),
            ("hello world", 6, s(&["world"]), false, (6, true)),
            ("hello world!", 0, s(&["o w", "d"]), false, (4, true)),
            ("ab\u{FFFD}", 0, s(&[]), false, (2, false)),
            ("ab\u{FFFD}", 0, s(&[]), true, (5, false)),
            ("abc", 0, s(&["cd"]), false, (2, false)),
            ("abc", 0, s(&["cd"]), true, (3, false)),
            ("héé", 1, s(&["é!"]), false, (3, false)),
            ("xyz", 3, s(&["q"]), false, (3, false)),
        ];
        for (full, shown, stops, last, want) in cases {
            assert_eq!(
                emit_until(full, shown, &stops, last),
                want,
                "{full:?} from {shown} {stops:?}"
            );
        }
    }

    struct Words;
    impl Codec for Words {
        fn chat_prompt(&self, _: &crate::codec::ChatPrompt) -> Result<Vec<u32>, String> {
            Ok(vec![])
        }
        fn text_prompt(&self, _: &str) -> Result<Vec<u32>, String> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            let w = ["the", "cat", "sat", "down"];
            Ok(ids
                .iter()
                .map(|&i| w[i as usize])
                .collect::<Vec<_>>()
                .join(" "))
        }
    }

    #[test]
    fn stream_concatenates_to_the_decoded_answer_and_stops() {
        let mut t = TextStream::new(vec![]);
        let mut out = String::new();
        for id in [0, 1, 2, 3] {
            out += &t.push(&Words, Some(id)).unwrap().text;
        }
        out += &t.push(&Words, None).unwrap().text;
        assert_eq!(out, "the cat sat down");
        let mut t = TextStream::new(vec!["t s".into()]);
        let pieces: Vec<Piece> = [0, 1, 2]
            .iter()
            .map(|&i| t.push(&Words, Some(i)).unwrap())
            .collect();
        assert_eq!(
            pieces.iter().map(|p| p.text.as_str()).collect::<String>(),
            "the ca"
        );
        assert_eq!(
            pieces.iter().map(|p| p.stopped).collect::<Vec<_>>(),
            [false, false, true]
        );
    }
}
