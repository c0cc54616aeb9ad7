//! `profile_steps` (an lf-operator extension): the optimiser steps libtorch's profiler records,
//! `"N"` or `"FIRST-LAST"` (1-based, inclusive, at most [`MAX_PROFILED_STEPS`]).

use super::config::TrainingConfig;
use super::error::ConfigError;

/// A trace grows with every step it holds; a handful of steps shows the pattern.
pub const MAX_PROFILED_STEPS: u64 = 20;

/// The steps to profile, `(first, last)`.
pub fn parse(text: &str) -> Result<(u64, u64), ConfigError> {
    let invalid = |why: &str| ConfigError::invalid("profile_steps", format!("`{text}`: {why}"));
    let number = |s: &str| -> Result<u64, ConfigError> {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid("write a step (1, 2, ...) or a range FIRST-LAST, e.g. \"10-13\"")
            })
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    if last < first {
        return Err(invalid("the range ends before it starts"));
    }
    if last - first + 1 > MAX_PROFILED_STEPS {
        return Err(invalid(&format!(
            "at most {MAX_PROFILED_STEPS} steps (a trace grows with each; a few steps show the pattern)"
        )));
    }
    Ok((first, last))
}

impl TrainingConfig {
    /// The profiled steps, if `profile_steps` is set.
    pub fn profile_window(&self) -> Result<Option<(u64, u64)>, ConfigError> {
        self.profile_steps.as_deref().map(parse).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_ranges() {
        assert_eq!(parse("10-13").unwrap(), (10, 13));
        assert_eq!(parse(" 5 ").unwrap(), (5, 5));
        for bad in ["0", "x", "3-2", "1-21", "-3", "2-"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("1-21")
            .unwrap_err()
            .to_string()
            .contains("at most 20 steps"));
    }
}
