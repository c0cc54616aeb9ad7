//! `jieba.cut(text)` (accurate mode, HMM on; jieba 0.42.1 with its default dictionary) for text
//! without Chinese characters, which LLaMA-Factory's BLEU/ROUGE segment with it.
//!
//! jieba splits the text into runs of `[\u4E00-\u9FD5a-zA-Z0-9+#&._%-]` ("han blocks") and the
//! rest. Outside the blocks every whitespace character (`\r\n` together) and every other
//! character is a token of its own. Inside a block without Chinese characters the dictionary
//! knows only `AT&T`, `c#`, `C#`, `c++` and `C++` (its other entries hold a Chinese character),
//! so the route takes each of those where it starts and gathers the other characters into a
//! buffer, which jieba's HMM step (`finalseg.cut`) splits into `[a-zA-Z0-9]+(\.\d+)?%?` runs and
//! the text between them. Chinese text needs the dictionary's route and the HMM: it is refused.

use thiserror::Error;

/// The dictionary words that hold no Chinese character.
const ASCII_WORDS: &[&str] = &["AT&T", "c#", "C#", "c++", "C++"];

/// Text jieba would segment with its dictionary and HMM, which is not implemented.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Chinese text (`{0}`) needs jieba's dictionary segmentation, which lf-trainer does not implement")]
pub struct ChineseText(pub char);

/// Whether `c` is a Chinese character in jieba's sense (`\u4E00-\u9FD5`).
pub fn is_han(c: char) -> bool {
    ('\u{4E00}'..='\u{9FD5}').contains(&c)
}

/// Python's `str.isspace()` (and so `\s` and `str.split()`): Unicode whitespace plus the
/// separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

fn in_block(c: char) -> bool {
    is_han(c) || c.is_ascii_alphanumeric() || "+#&._%-".contains(c)
}

/// `list(jieba.cut(text))`, or an error naming the first Chinese character.
pub fn jieba_cut(text: &str) -> Result<Vec<String>, ChineseText> {
    if let Some(c) = text.chars().find(|&c| is_han(c)) {
        return Err(ChineseText(c));
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let block = in_block(chars[i]);
        let end = chars[i..]
            .iter()
            .position(|&c| in_block(c) != block)
            .map_or(chars.len(), |n| i + n);
        if block {
            cut_block(&chars[i..end], &mut out);
        } else {
            cut_other(&chars[i..end], &mut out);
        }
        i = end;
    }
    Ok(out)
}

/// Outside the blocks: `\r\n`, each other whitespace character and each other character alone.
fn cut_other(chars: &[char], out: &mut Vec<String>) {
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\r' && chars.get(i + 1) == Some(&'\n') {
            out.push("\r\n".into());
            i += 2;
        } else {
            out.push(chars[i].to_string());
            i += 1;
        }
    }
}

/// A block: dictionary words where they start, the characters between them through the HMM
/// step (a single character stays as it is).
fn cut_block(chars: &[char], out: &mut Vec<String>) {
    let mut buf: Vec<char> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match word_at(&chars[i..]) {
            Some(len) => {
                flush(&mut buf, out);
                out.push(chars[i..i + len].iter().collect());
                i += len;
            }
            None => {
                buf.push(chars[i]);
                i += 1;
            }
        }
    }
    flush(&mut buf, out);
}

/// The length of the dictionary word that starts `chars`, if any (no two share a start).
fn word_at(chars: &[char]) -> Option<usize> {
    ASCII_WORDS.iter().find_map(|w| {
        let n = w.chars().count();
        (chars.len() >= n && chars[..n].iter().copied().eq(w.chars())).then_some(n)
    })
}

fn flush(buf: &mut Vec<char>, out: &mut Vec<String>) {
    match buf.len() {
        0 => {}
        1 => out.push(buf[0].to_string()),
        _ => finalseg_cut(buf, out),
    }
    buf.clear();
}

/// `finalseg.cut` on text without Chinese characters: `re.split("([a-zA-Z0-9]+(?:\.\d+)?%?)")`
/// with the empty pieces dropped.
fn finalseg_cut(chars: &[char], out: &mut Vec<String>) {
    let mut between = String::new();
    let mut i = 0;
    while i < chars.len() {
        let Some(len) = alnum_run(&chars[i..]) else {
            between.push(chars[i]);
            i += 1;
            continue;
        };
        if !between.is_empty() {
            out.push(std::mem::take(&mut between));
        }
        out.push(chars[i..i + len].iter().collect());
        i += len;
    }
    if !between.is_empty() {
        out.push(between);
    }
}

/// The length of `[a-zA-Z0-9]+(?:\.\d+)?%?` at the start of `chars` (greedy, as `re` matches it).
fn alnum_run(chars: &[char]) -> Option<usize> {
    let mut n = chars
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    if n == 0 {
        return None;
    }
    if chars.get(n) == Some(&'.') {
        let digits = chars[n + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits > 0 {
            n += 1 + digits;
        }
    }
    if chars.get(n) == Some(&'%') {
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(s: &str) -> Vec<String> {
        jieba_cut(s).unwrap()
    }

    #[test]
    fn words_spaces_and_punctuation_are_tokens() {
        assert_eq!(cut("Hello, world!"), ["Hello", ",", " ", "world", "!"]);
        assert_eq!(
            cut("a  b\r\nc\td"),
            ["a", " ", " ", "b", "\r\n", "c", "\t", "d"]
        );
    }

    #[test]
    fn blocks_keep_numbers_and_split_symbols_from_words() {
        assert_eq!(cut("pi is 3.14%"), ["pi", " ", "is", " ", "3.14%"]);
        assert_eq!(cut("v1.2.3"), ["v1.2", ".", "3"]);
        assert_eq!(
            cut("state-of-the-art"),
            ["state", "-", "of", "-", "the", "-", "art"]
        );
        assert_eq!(cut("x_y"), ["x", "_", "y"]);
        assert_eq!(cut("--"), ["--"]);
        assert_eq!(cut("a"), ["a"]);
    }

    #[test]
    fn dictionary_words_are_kept_whole() {
        assert_eq!(cut("C++ and AT&T"), ["C++", " ", "and", " ", "AT&T"]);
        assert_eq!(cut("xc#y"), ["x", "c#", "y"]);
    }

    #[test]
    fn other_scripts_are_one_token_per_character() {
        assert_eq!(cut("café"), ["caf", "é"]);
        assert_eq!(cut("こんにちは")[0], "こ");
    }

    #[test]
    fn chinese_is_refused() {
        assert_eq!(jieba_cut("今天 ok"), Err(ChineseText('今')));
    }
}
