//! YAML output that YAML 1.1 readers read back unchanged.
//!
//! serde_yaml writes YAML 1.2, where `yes`, `on`, `off`, `y`, `1:30` or `1_000` are plain strings,
//! and leaves them unquoted. `kubectl` (through sigs.k8s.io/yaml), PyYAML and other YAML 1.1
//! readers take them for booleans and integers, so `lf-operator render | kubectl apply -f -` would
//! fail on, say, a node selector value `"on"`. Such strings are single-quoted here.

use serde::Serialize;
use serde_yaml::Value;

/// A marker no rendered string contains (checked), replaced by the quoted string afterwards.
const MARKER: &str = "lfq0x7e1a";

/// Serialises `object` as one YAML document, quoting strings YAML 1.1 reads as non-strings.
pub fn to_yaml<T: Serialize>(object: &T) -> Result<String, serde_yaml::Error> {
    let mut value = serde_yaml::to_value(object)?;
    let plain = serde_yaml::to_string(&value)?;
    if plain.contains(MARKER) {
        return Ok(plain);
    }
    let mut quoted = Vec::new();
    mark(&mut value, &mut quoted);
    if quoted.is_empty() {
        return Ok(plain);
    }
    let mut text = serde_yaml::to_string(&value)?;
    // Highest index first, so `<marker>1Q` never matches inside `<marker>12Q`.
    for (i, original) in quoted.iter().enumerate().rev() {
        text = text.replace(
            &placeholder(i),
            &format!("'{}'", original.replace('\'', "''")),
        );
    }
    Ok(text)
}

fn placeholder(i: usize) -> String {
    format!("{MARKER}{i}Q")
}

fn mark(value: &mut Value, quoted: &mut Vec<String>) {
    match value {
        Value::String(s) if yaml11_reads_as_non_string(s) => {
            quoted.push(std::mem::take(s));
            *s = placeholder(quoted.len() - 1);
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| mark(v, quoted)),
        Value::Mapping(map) => {
            let entries = std::mem::take(map);
            for (mut k, mut v) in entries {
                mark(&mut k, quoted);
                mark(&mut v, quoted);
                map.insert(k, v);
            }
        }
        Value::Tagged(tagged) => mark(&mut tagged.value, quoted),
        _ => {}
    }
}

/// Whether a YAML 1.1 reader resolves the plain scalar `s` to something other than a string (and
/// serde_yaml, following YAML 1.2, would leave it plain): the 1.1 booleans, base-60 numbers,
/// binary integers and numbers with `_` separators.
pub fn yaml11_reads_as_non_string(s: &str) -> bool {
    const BOOLEANS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF", "=",
    ];
    if BOOLEANS.contains(&s) {
        return true;
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if let Some(bin) = unsigned.strip_prefix("0b") {
        return !bin.is_empty() && bin.bytes().all(|b| matches!(b, b'0' | b'1' | b'_'));
    }
    // Base 60: 1:30, 190:20:30, 1:30.5.
    if unsigned.contains(':') {
        let (int_part, _) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let mut parts = int_part.split(':');
        let head_ok = parts
            .next()
            .is_some_and(|h| digits(h) && !h.starts_with('0'));
        return head_ok
            && parts
                .all(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()));
    }
    // 1_000, 1_000.5, _ anywhere in a number.
    if unsigned.contains('_') && unsigned.starts_with(|c: char| c.is_ascii_digit()) {
        let (int_part, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        return digits(int_part) && (frac.is_empty() || digits(frac));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn recognises_yaml11_scalars() {
        for s in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "1:30",
            "190:20:30",
            "1_000",
            "0b1010",
            "-1_0.5",
            "=",
        ] {
            assert!(yaml11_reads_as_non_string(s), "{s}");
        }
        for s in [
            "yesterday",
            "true-ish",
            "10:0a",
            "a_1",
            "0:30",
            "eth0",
            "nvidia.com/gpu",
            "1.5",
            "_1",
            "mlx5_0:1",
        ] {
            assert!(!yaml11_reads_as_non_string(s), "{s}");
        }
    }

    #[test]
    fn quotes_ambiguous_strings_keys_and_list_items() {
        let object = BTreeMap::from([
            (
                "on".to_string(),
                vec!["yes".to_string(), "it's".to_string()],
            ),
            (
                "plain".to_string(),
                vec!["1:30".to_string(), "no".to_string()],
            ),
        ]);
        let text = to_yaml(&object).expect("serialises");
        assert_eq!(text, "'on':\n- 'yes'\n- it's\nplain:\n- '1:30'\n- 'no'\n");
        let back: BTreeMap<String, Vec<String>> = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(back, object);
    }

    #[test]
    fn unambiguous_output_is_unchanged() {
        let object = BTreeMap::from([("a", "b"), ("c", "true")]);
        assert_eq!(
            to_yaml(&object).expect("serialises"),
            serde_yaml::to_string(&object).expect("serialises")
        );
    }
}
