//! The invocation page's "Why actions missed" section: each action the
//! invocation wrote fresh to the cache, with what differed from the last
//! action of the same target, mnemonic and outputs (`crate::insights::misses`),
//! and the causes counted over all of them.

use maud::{Markup, html};

use super::layout::segment;
use super::{UiState, auth};
use crate::http::caller::HttpCaller;
use crate::insights::misses::Miss;

/// Misses one page reads at most.
const LISTED: i64 = 1000;

/// The misses of `invocation` the caller may read.
pub(super) async fn readable(
    state: &UiState,
    caller: &HttpCaller,
    invocation: &str,
) -> crate::error::Result<Vec<Miss>> {
    let mut rows = crate::insights::explain::explained(
        state.events.as_ref(),
        &state.instances,
        invocation,
        LISTED,
    )
    .await?;
    rows.retain(|r| auth::may_read(caller, &r.instance));
    Ok(rows)
}

/// The causes shared by most misses first ("12 misses: input
/// app/greet.h changed"), at most `top`.
fn grouped(rows: &[Miss], top: usize) -> Vec<(usize, &str)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in rows {
        for c in &m.causes {
            *counts.entry(c.text.as_str()).or_default() += 1;
        }
    }
    let mut out: Vec<(usize, &str)> = counts.into_iter().map(|(t, n)| (n, t)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    out.truncate(top);
    out
}

/// The section, or nothing when the invocation missed nothing.
pub(super) fn section(rows: &[Miss]) -> Markup {
    if rows.is_empty() {
        return html! {};
    }
    html! {
        section.card.misses {
            h2 { "Why actions missed (" (rows.len()) ")" }
            p.muted { "Each action this invocation ran and wrote to the cache, compared with the last action of the same target, mnemonic and outputs." }
            ul.causes { @for (n, text) in grouped(rows, 5) {
                li { strong { (n) } " × " (text) }
            } }
            table.misses {
                thead { tr { th { "Target" } th { "Mnemonic" } th { "Causes" } th { "Earlier invocation" } } }
                tbody { @for m in rows {
                    tr data-miss-target=(m.target) data-miss-mnemonic=(m.mnemonic) {
                        td.mono { @if m.target.is_empty() { span.muted { "unknown" } } @else { (m.target) } }
                        td { (m.mnemonic) }
                        td { ul { @for c in &m.causes { li data-kind=(c.kind) { (c.text) } } } }
                        td.mono { @if m.previous_invocation.is_empty() { span.muted { "-" } }
                            @else { a href={ "/invocation/" (segment(&m.previous_invocation)) } { (m.previous_invocation) } } }
                    }
                } }
            }
        }
    }
}
