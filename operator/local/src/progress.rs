//! One progress bar on a terminal (step/total, loss, tokens/s, and the ETA the trainer computes
//! from its recent step rate, the one the CR shows); plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use lf_api::status::Progress;

/// Shows training progress as it arrives.
pub struct ProgressView {
    bar: Option<ProgressBar>,
    last_step: Option<u64>,
}

impl ProgressView {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new() -> ProgressView {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style =
                ProgressStyle::with_template("{spinner} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        ProgressView {
            bar,
            last_step: None,
        }
    }

    /// Shows `p` if it is new.
    pub fn update(&mut self, p: &Progress) {
        if self.last_step == Some(p.step) {
            return;
        }
        self.last_step = Some(p.step);
        let msg = describe(p);
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total_steps);
                bar.set_position(p.step);
                bar.set_message(msg);
            }
            None => eprintln!("step {}/{} {msg}", p.step, p.total_steps),
        }
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for ProgressView {
    fn default() -> Self {
        Self::new()
    }
}

fn describe(p: &Progress) -> String {
    let mut parts = Vec::new();
    if let Some(l) = p.loss {
        parts.push(format!("loss {l:.4}"));
    }
    if let Some(l) = p.eval_loss {
        parts.push(format!("eval {l:.4}"));
    }
    if let Some(t) = p.tokens_per_second {
        parts.push(format!("{t:.0} tok/s"));
    }
    if let Some(r) = &p.remaining {
        parts.push(format!("ETA {r}"));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_trainers_eta() {
        let p = Progress {
            step: 4,
            total_steps: 10,
            loss: Some(1.25),
            tokens_per_second: Some(812.4),
            remaining: Some("1m30s".into()),
            ..Progress::default()
        };
        assert_eq!(describe(&p), "loss 1.2500 · 812 tok/s · ETA 1m30s");
    }
}
