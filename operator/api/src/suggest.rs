//! "Did you mean" suggestions for misspelt keys.

/// The candidate closest to `key` by Jaro-Winkler similarity, when it is close enough to be a
/// plausible typo.
pub(crate) fn closest<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(key, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_transposed_letters() {
        assert_eq!(
            super::closest("lora_rnak", ["lora_rank", "lora_alpha", "seed"]),
            Some("lora_rank")
        );
        assert_eq!(super::closest("zzz", ["lora_rank", "seed"]), None);
    }
}
