//! What changed between two versions of an action, field by field, as
//! short causes a person reads: argv positions, environment variables,
//! platform properties and the Action's own fields. The input trees are
//! compared in `inputs`. Pure functions: the caller fetched both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::reapi::{Action, Command, Platform};

/// Causes kept per miss: enough to name a single change and its
/// neighbours; the rest is counted in one last cause.
pub(crate) const MAX_CAUSES: usize = 8;

/// Bytes of one value shown in a cause (a long flag or path is cut).
const MAX_VALUE: usize = 120;

/// One reason an action missed: `kind` groups them (`input`, `argv`, `env`,
/// `platform`, `action`, `new`, `evicted`, `unknown`), `subject` is what
/// changed (a path, a variable's name, an argv position), `text` says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// The kind of change.
    pub kind: String,
    /// What changed, for grouping misses by cause.
    pub subject: String,
    /// The cause as the page and the CLI show it.
    pub text: String,
}

impl Cause {
    pub(crate) fn new(kind: &str, subject: &str, text: String) -> Cause {
        Cause {
            kind: kind.into(),
            subject: cut(subject),
            text,
        }
    }
}

/// `s`, at most [`MAX_VALUE`] bytes (on a char boundary, marked when cut).
pub(crate) fn cut(s: &str) -> String {
    crate::text::cut(s, MAX_VALUE)
}

/// The argv difference: the differing middle once the common prefix and
/// suffix are set aside; equal lengths are shown position by position
/// (`argv[5]: -O2 → -O3`), others as the arguments removed and added.
pub(crate) fn argv(before: &[String], after: &[String]) -> Vec<Cause> {
    let prefix = before.iter().zip(after).take_while(|(a, b)| a == b).count();
    let suffix = before[prefix..]
        .iter()
        .rev()
        .zip(after[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let old = &before[prefix..before.len() - suffix];
    let new = &after[prefix..after.len() - suffix];
    let mut causes = Vec::new();
    if old.len() == new.len() {
        for (i, (a, b)) in old.iter().zip(new).enumerate() {
            let at = prefix + i;
            causes.push(Cause::new(
                "argv",
                &format!("argv[{at}]"),
                format!("argv[{at}]: {} → {}", cut(a), cut(b)),
            ));
        }
        return causes;
    }
    for a in old {
        causes.push(Cause::new("argv", a, format!("argv: removed {}", cut(a))));
    }
    for b in new {
        causes.push(Cause::new("argv", b, format!("argv: added {}", cut(b))));
    }
    causes
}

/// Environment variables added, removed or changed, by name. Values are
/// not shown: an environment may carry secrets, and the page is readable
/// by everyone who may read the instance.
pub(crate) fn env(before: &Command, after: &Command) -> Vec<Cause> {
    let map = |c: &Command| -> BTreeMap<String, String> {
        c.environment_variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    };
    let (old, new) = (map(before), map(after));
    changed_keys(&old, &new)
        .into_iter()
        .map(|(name, change)| Cause::new("env", &name, format!("env {} {change}", cut(&name))))
        .collect()
}

/// Keys whose values differ, with how: `changed`, `added` or `removed`.
fn changed_keys(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for (k, v) in old {
        match new.get(k) {
            None => out.push((k.clone(), "removed")),
            Some(w) if w != v => out.push((k.clone(), "changed")),
            Some(_) => {}
        }
    }
    for k in new.keys() {
        if !old.contains_key(k) {
            out.push((k.clone(), "added"));
        }
    }
    out
}

/// Platform properties (the Action's, else the Command's deprecated one),
/// with both values: they name machine kinds, not secrets.
pub(crate) fn platform(before: Option<&Platform>, after: Option<&Platform>) -> Vec<Cause> {
    let map = |p: Option<&Platform>| -> BTreeMap<String, String> {
        p.map(|p| {
            p.properties
                .iter()
                .map(|q| (q.name.clone(), q.value.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    let (old, new) = (map(before), map(after));
    changed_keys(&old, &new)
        .into_iter()
        .map(|(name, change)| {
            let value = |m: &BTreeMap<String, String>| m.get(&name).map_or("-", |v| v).to_string();
            Cause::new(
                "platform",
                &name,
                format!(
                    "platform {} {change}: {} → {}",
                    cut(&name),
                    cut(&value(&old)),
                    cut(&value(&new))
                ),
            )
        })
        .collect()
}

/// The Command's other fields (working directory, outputs) and the
/// Action's own (timeout, salt, do_not_cache).
pub(crate) fn fields(before: (&Action, &Command), after: (&Action, &Command)) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut field = |name: &str, differs: bool| {
        if differs {
            causes.push(Cause::new("action", name, format!("{name} changed")));
        }
    };
    field(
        "working directory",
        before.1.working_directory != after.1.working_directory,
    );
    field(
        "outputs",
        before.1.output_files != after.1.output_files
            || before.1.output_directories != after.1.output_directories
            || before.1.output_paths != after.1.output_paths,
    );
    field("timeout", before.0.timeout != after.0.timeout);
    field("salt", before.0.salt != after.0.salt);
    field(
        "do_not_cache",
        before.0.do_not_cache != after.0.do_not_cache,
    );
    causes
}

/// Keeps at most [`MAX_CAUSES`]; the rest become one "and N more" cause.
pub(crate) fn bounded(mut causes: Vec<Cause>) -> Vec<Cause> {
    if causes.len() > MAX_CAUSES {
        let more = causes.len() - (MAX_CAUSES - 1);
        causes.truncate(MAX_CAUSES - 1);
        causes.push(Cause::new("more", "", format!("and {more} more changes")));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::command::EnvironmentVariable;
    use crate::proto::reapi::platform::Property;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    fn texts(c: Vec<Cause>) -> Vec<String> {
        c.into_iter().map(|c| c.text).collect()
    }

    #[test]
    fn argv_names_a_replaced_flag_by_position() {
        assert_eq!(
            texts(argv(&args("gcc -O2 -c a.c"), &args("gcc -O3 -c a.c"))),
            ["argv[1]: -O2 → -O3"]
        );
    }

    #[test]
    fn argv_names_added_and_removed_flags() {
        assert_eq!(
            texts(argv(&args("gcc -c a.c"), &args("gcc -DX -c a.c"))),
            ["argv: added -DX"]
        );
        assert_eq!(
            texts(argv(&args("gcc -DX -DY -c a.c"), &args("gcc -c a.c"))),
            ["argv: removed -DX", "argv: removed -DY"]
        );
        assert!(argv(&args("a b"), &args("a b")).is_empty());
        // Repeated arguments: the shortest differing middle.
        assert_eq!(
            texts(argv(&args("x x x"), &args("x x x x"))),
            ["argv: added x"]
        );
    }

    #[test]
    fn env_names_variables_without_their_values() {
        let cmd = |vars: &[(&str, &str)]| Command {
            environment_variables: vars
                .iter()
                .map(|(n, v)| EnvironmentVariable {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        };
        let got = texts(env(
            &cmd(&[("PATH", "/bin"), ("OLD", "1"), ("TOKEN", "secret-a")]),
            &cmd(&[("PATH", "/usr/bin"), ("NEW", "2"), ("TOKEN", "secret-b")]),
        ));
        assert_eq!(
            got,
            [
                "env OLD removed",
                "env PATH changed",
                "env TOKEN changed",
                "env NEW added"
            ]
        );
        assert!(!got.concat().contains("secret"));
    }

    #[test]
    fn platform_shows_both_values() {
        let p = |v: &str| Platform {
            properties: vec![Property {
                name: "OSFamily".into(),
                value: v.into(),
            }],
        };
        assert_eq!(
            texts(platform(Some(&p("linux")), Some(&p("windows")))),
            ["platform OSFamily changed: linux → windows"]
        );
        assert_eq!(
            texts(platform(None, Some(&p("linux")))),
            ["platform OSFamily added: - → linux"]
        );
    }

    #[test]
    fn causes_are_bounded_with_a_count_of_the_rest() {
        let many: Vec<Cause> = (0..20)
            .map(|i| Cause::new("input", &i.to_string(), i.to_string()))
            .collect();
        let kept = bounded(many);
        assert_eq!(kept.len(), MAX_CAUSES);
        assert_eq!(kept.last().unwrap().text, "and 13 more changes");
        let long = "x".repeat(1000);
        assert!(cut(&long).len() <= MAX_VALUE + "…".len());
    }
}
