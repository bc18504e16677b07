//! What `pgtenant migrate apply` prints while it runs and when it ends: an indicatif bar on
//! a terminal or one line per tenant otherwise, then a table of the waves, the failures and
//! the longest pause.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::control::migrate::fleet::{Outcome, Progress, Report, Wave};

pub(super) fn terminal_progress() -> Box<dyn Progress> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Box::new(BarProgress::default())
    } else {
        Box::new(LineProgress)
    }
}

/// Plain lines, for logs and pipes.
struct LineProgress;

impl Progress for LineProgress {
    fn start(&mut self, total: usize, waves: &[Wave]) {
        println!("rolling out to {total} tenants in {} waves", waves.len());
    }

    fn wave(&mut self, wave: &Wave) {
        println!("wave {}: {} tenants", wave.label, wave.tenants.len());
    }

    fn tenant(&mut self, tenant: &str, outcome: &Outcome, took: Duration) {
        println!("  {tenant}: {} ({})", outcome_text(outcome), ms(took));
    }

    fn stopped(&mut self, reason: &str) {
        println!("stopping: {reason}");
    }
}

/// An indicatif bar over all tenants, with failures printed above it.
#[derive(Default)]
struct BarProgress {
    bar: Option<ProgressBar>,
}

impl Progress for BarProgress {
    fn start(&mut self, total: usize, _waves: &[Wave]) {
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        self.bar = Some(bar);
    }

    fn wave(&mut self, wave: &Wave) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("wave {}", wave.label));
        }
    }

    fn tenant(&mut self, tenant: &str, outcome: &Outcome, took: Duration) {
        let Some(bar) = &self.bar else { return };
        bar.inc(1);
        if !matches!(outcome, Outcome::Applied { .. } | Outcome::UpToDate) {
            bar.println(format!(
                "  {tenant}: {} ({})",
                outcome_text(outcome),
                ms(took)
            ));
        }
    }

    fn stopped(&mut self, reason: &str) {
        if let Some(bar) = &self.bar {
            bar.println(format!("stopping: {reason}"));
        }
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied { versions, paused } => {
            format!("applied {} (paused {})", versions.join(", "), ms(*paused))
        }
        Outcome::UpToDate => "up to date".into(),
        Outcome::Skipped(reason) => format!("skipped: {reason}"),
        Outcome::Failed(error) => format!("FAILED: {error}"),
    }
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The final table: per wave, counts and time; then every failure with its error.
pub(super) fn print_report(report: &Report) {
    println!("\n| wave | applied | up to date | skipped | failed | time |");
    println!("|---|--:|--:|--:|--:|--:|");
    for wave in &report.waves {
        let count = |f: fn(&Outcome) -> bool| wave.results.iter().filter(|r| f(&r.outcome)).count();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            wave.label,
            count(|o| matches!(o, Outcome::Applied { .. })),
            count(|o| matches!(o, Outcome::UpToDate)),
            count(|o| matches!(o, Outcome::Skipped(_))),
            count(|o| matches!(o, Outcome::Failed(_))),
            ms(wave.took)
        );
    }
    if !report.not_started.is_empty() {
        println!("not started: {} tenants", report.not_started.len());
    }
    for result in report.results() {
        if let Outcome::Failed(error) = &result.outcome {
            println!("failed {}: {error}", result.tenant);
        }
    }
    let longest = report.results().filter_map(|r| match r.outcome {
        Outcome::Applied { paused, .. } => Some(paused),
        _ => None,
    });
    let longest = longest.max().unwrap_or_default();
    println!("total {}, longest pause {}", ms(report.took), ms(longest));
}
