//! The invocation page's "Cache" section: its scorecard
//! (`crate::insights::scorecard`) as totals, a table by mnemonic and the
//! targets that missed most.

use maud::{Markup, html};

use super::layout::{duration, percent, size};
use crate::insights::scorecard::{Counts, Savings, Scorecard};

/// Targets listed, those with the most misses first.
const TOP_TARGETS: usize = 10;

fn ratio(c: &Counts) -> String {
    percent(c.hits as i64, (c.hits + c.misses) as i64)
}

fn row(name: &str, c: &Counts) -> Markup {
    html! {
        tr data-key=(name) {
            td.mono { (name) }
            td.num { (c.hits) }
            td.num { (c.misses) }
            td.num { (c.executions) }
            td.num { (c.uploads) }
            td.num { (ratio(c)) }
            td.num { (duration(c.saved_ms as i64)) }
        }
    }
}

fn table(class: &str, first: &str, rows: &[(&String, &Counts)]) -> Markup {
    html! {
        table class=(class) {
            thead { tr { th { (first) } th.num { "Hits" } th.num { "Misses" } th.num { "Executed" } th.num { "Uploads" } th.num { "Hit rate" } th.num { "Time saved" } } }
            tbody { @for (name, c) in rows { (row(name, c)) } }
        }
    }
}

/// What the invocation's clients did not move, or nothing when nothing
/// was saved.
fn savings(s: &Savings) -> Markup {
    if *s == Savings::default() {
        return html! {};
    }
    html! {
        p #cache-savings {
            "Already stored: " strong { (s.present_blobs) } " blobs (" (size(s.present_bytes)) ") the clients did not upload."
            @if s.spliced_blobs > 0 {
                " Uploaded by chunks: " strong { (s.spliced_blobs) } " blobs (" (size(s.spliced_bytes)) ") from "
                (s.spliced_chunks) " chunks."
            }
            @if s.split_blobs > 0 {
                " Downloaded by chunks: " strong { (s.split_blobs) } " blobs (" (size(s.split_bytes)) ") as "
                (s.split_chunks) " chunks."
            }
        }
    }
}

/// The section, or nothing when no call named the invocation.
pub(super) fn section(card: Option<&Scorecard>) -> Markup {
    let Some(card) = card else {
        return html! {};
    };
    let t = &card.totals;
    let mut mnemonics: Vec<_> = card.by_mnemonic.iter().collect();
    mnemonics.sort_by(|a, b| a.0.cmp(b.0));
    let mut targets: Vec<_> = card
        .by_target
        .iter()
        .filter(|(_, c)| c.misses > 0)
        .collect();
    targets.sort_by(|a, b| b.1.misses.cmp(&a.1.misses).then(a.0.cmp(b.0)));
    targets.truncate(TOP_TARGETS);
    html! {
        section.card.scorecard {
            h2 { "Cache" }
            p #cache-totals {
                strong { (t.hits) } " hits, " strong { (t.misses) } " misses (" (ratio(t)) " hit rate), "
                strong { (t.executions) } " executed remotely, " strong { (t.uploads) } " results uploaded; "
                (size(card.bytes_down)) " down, " (size(card.bytes_up)) " up; "
                "the hits saved " strong { (duration(t.saved_ms as i64)) } " of execution."
            }
            (savings(&card.savings))
            @if !mnemonics.is_empty() { (table("by-mnemonic", "Mnemonic", &mnemonics)) }
            @if !targets.is_empty() {
                h3 { "Targets that missed most" }
                (table("by-target", "Target", &targets))
            }
        }
    }
}
