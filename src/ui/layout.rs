//! The frame around every page (navigation, stylesheet) and small
//! formatting helpers the pages share.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, html};

use crate::bes::summary::{Outcome, Status, TargetStatus, TestStatus, Verdict};
use crate::execution::job::Stage;

/// `/static/kiln.css`: the one stylesheet, compiled into the binary.
pub(super) async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("static/kiln.css"),
    )
}

/// A whole page. `refresh` (seconds) reloads it, for views that change
/// while one looks at them (a running invocation).
pub(super) fn page(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh {
                    meta http-equiv="refresh" content=(s);
                }
                title { (title) " · kiln" }
                link rel="stylesheet" href="/static/kiln.css";
            }
            body {
                nav.top {
                    a.brand href="/" { "kiln" }
                    a href="/" { "Invocations" }
                    a href="/tests" { "Tests" }
                    a href="/trends" { "Trends" }
                    a href="/operations" { "Operations" }
                    a href="/nondeterminism" { "Nondeterminism" }
                }
                main { (body) }
            }
        }
    }
}

/// What a badge shows: a name and how it reads. Domain types decide the
/// verdict (the one failure rule lives with them); pages only colour it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Badge {
    pub(super) name: &'static str,
    pub(super) verdict: Verdict,
}

impl Badge {
    /// A badge for something that is not a build status (a worker's state).
    pub(super) const fn new(name: &'static str, verdict: Verdict) -> Badge {
        Badge { name, verdict }
    }

    /// The CSS class of its verdict.
    pub(super) fn class(self) -> &'static str {
        match self.verdict {
            Verdict::Passed => "ok",
            Verdict::Failed => "bad",
            Verdict::Flaky => "flaky",
            Verdict::Running => "running",
            Verdict::Neutral => "other",
        }
    }
}

impl From<Status> for Badge {
    fn from(s: Status) -> Badge {
        Badge::new(s.as_str(), s.verdict())
    }
}

impl From<Outcome> for Badge {
    fn from(o: Outcome) -> Badge {
        Badge::new(o.shown(), o.verdict())
    }
}

impl From<TestStatus> for Badge {
    fn from(s: TestStatus) -> Badge {
        Badge::new(s.as_str(), s.verdict())
    }
}

impl From<TargetStatus> for Badge {
    fn from(s: TargetStatus) -> Badge {
        Badge::new(s.shown(), s.verdict())
    }
}

impl From<Stage> for Badge {
    fn from(s: Stage) -> Badge {
        let verdict = match s {
            Stage::Queued | Stage::Executing => Verdict::Running,
            Stage::Completed => Verdict::Neutral,
        };
        Badge::new(s.as_str(), verdict)
    }
}

/// The CSS class of a status (invocation, target, test or job).
pub(super) fn status_class(status: impl Into<Badge>) -> &'static str {
    status.into().class()
}

/// A status as a coloured badge.
pub(super) fn badge(status: impl Into<Badge>) -> Markup {
    let b = status.into();
    html! { span class={ "badge " (b.class()) } { (b.name) } }
}

/// Milliseconds as `850 ms`, `12.3 s` or `4m 05s`.
pub(super) fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

/// Bytes as `512 B`, `3.4 MiB` or `1.2 GiB`.
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A time since the epoch (ms) as UTC `2026-12-02 10:22:20`.
pub(super) fn when(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 as (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` as ms since the epoch (UTC midnight), for date filters.
pub(super) fn parse_date(text: &str) -> Option<i64> {
    let mut it = text.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Days from civil (the inverse of `civil`).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// A percentage of `part` in `whole`, or an empty string without a whole.
pub(super) fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return String::new();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// Percent-encodes one path segment (labels hold `/` and `:`).
pub(super) fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for ms in [0i64, 86_400_000, 951_782_400_000, 1_795_000_000_000] {
            let text = when(ms.max(1));
            let day = parse_date(&text[..10]).unwrap();
            assert_eq!(day, ms - ms.rem_euclid(86_400_000), "{text}");
        }
        assert_eq!(when(1_764_670_940_000), "2025-12-02 10:22:20");
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("x"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_340), "12.3 s");
        assert_eq!(duration(245_000), "4m 05s");
    }

    #[test]
    fn segments_encode_label_characters() {
        assert_eq!(segment("//a b:c"), "%2F%2Fa%20b%3Ac");
    }
}
