//! Generated ids to text as they come: each token is decoded in the context of the piece before
//! it (so a word keeps its leading space and a character made of several tokens stays whole),
//! which costs the same at every token however long the answer, and only what cannot still
//! change is emitted — not an incomplete character, not the start of a stop string. Stop strings
//! end the text before them, as OpenAI's `stop` does.

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
    // The longest tail that could grow into a stop string waits; only a tail shorter than the
    // longest stop string can (so the scan costs the same however long the answer).
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let scan_from = floor_boundary(full, end.saturating_sub(longest));
    let held = full[scan_from..end]
        .char_indices()
        .map(|(i, _)| scan_from + i)
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
    /// `ids[..read]` are settled into `text`; `ids[prefix..read]`, the last settled piece, is the
    /// context the next tokens are decoded in.
    prefix: usize,
    read: usize,
    /// The settled text (complete characters only, until the answer ends).
    text: String,
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
            prefix: 0,
            read: 0,
            text: String::new(),
            shown: 0,
            stops,
        }
    }

    /// Adds a generated token (`None`: the answer ended) and returns the text it releases.
    pub fn push(&mut self, codec: &dyn Codec, id: Option<u32>) -> Result<Piece, String> {
        self.ids.extend(id);
        let last = id.is_none();
        let before = codec.decode(&self.ids[self.prefix..self.read])?;
        let now = codec.decode(&self.ids[self.prefix..])?;
        match now.strip_prefix(before.as_str()) {
            // The new tokens add to the context's text: settle them once their characters are
            // complete (or nothing more will come).
            Some(added) => {
                if !added.is_empty() && (last || !added.ends_with('\u{FFFD}')) {
                    self.text.push_str(added);
                    self.prefix = self.read;
                    self.read = self.ids.len();
                }
            }
            // A tokenizer that spells the context differently once more follows: the whole
            // answer, decoded again, is the text.
            None => {
                self.text = codec.decode(&self.ids)?;
                self.prefix = self.ids.len().saturating_sub(1);
                self.read = self.ids.len();
            }
        }
        let (end, stopped) = emit_until(&self.text, self.shown, &self.stops, last);
        let text = self
            .text
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

    /// A codec that only decodes, with `decode`.
    struct Decoder(fn(&[u32]) -> String);
    impl Codec for Decoder {
        fn chat_prompt(&self, _: &crate::codec::ChatPrompt) -> Result<Vec<u32>, String> {
            Ok(vec![])
        }
        fn text_prompt(&self, _: &str) -> Result<Vec<u32>, String> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            Ok((self.0)(ids))
        }
    }

    /// Four words, joined by spaces.
    const WORDS: Decoder = Decoder(|ids| {
        let w = ["the", "cat", "sat", "down"];
        ids.iter()
            .map(|&i| w[i as usize])
            .collect::<Vec<_>>()
            .join(" ")
    });

    /// Bytes as tokens (a UTF-8 character spans several), decoded lossily.
    const BYTES: Decoder = Decoder(|ids| {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });

    #[test]
    fn characters_across_tokens_come_whole_and_each_step_decodes_a_short_window() {
        let answer = "héllo wörld ✓ done";
        let mut t = TextStream::new(vec![]);
        let mut out = String::new();
        for b in answer.bytes() {
            let piece = t.push(&BYTES, Some(u32::from(b))).unwrap();
            assert!(!piece.text.contains('\u{FFFD}'), "{:?}", piece.text);
            out += &piece.text;
            assert!(t.read - t.prefix <= 3, "the context stays one piece");
        }
        out += &t.push(&BYTES, None).unwrap().text;
        assert_eq!(out, answer);
        // An answer that ends inside a character shows the replacement, as a full decode would.
        let mut t = TextStream::new(vec![]);
        let mut out = String::new();
        for b in [b'a', 0xE2, 0x9C] {
            out += &t.push(&BYTES, Some(u32::from(b))).unwrap().text;
        }
        out += &t.push(&BYTES, None).unwrap().text;
        assert_eq!(out, BYTES.decode(&[u32::from(b'a'), 0xE2, 0x9C]).unwrap());
    }

    #[test]
    fn stream_concatenates_to_the_decoded_answer_and_stops() {
        let mut t = TextStream::new(vec![]);
        let mut out = String::new();
        for id in [0, 1, 2, 3] {
            out += &t.push(&WORDS, Some(id)).unwrap().text;
        }
        out += &t.push(&WORDS, None).unwrap().text;
        assert_eq!(out, "the cat sat down");
        let mut t = TextStream::new(vec!["t s".into()]);
        let pieces: Vec<Piece> = [0, 1, 2]
            .iter()
            .map(|&i| t.push(&WORDS, Some(i)).unwrap())
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
