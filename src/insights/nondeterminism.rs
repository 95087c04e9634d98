//! Which outputs two results of one action disagree on: the action is not
//! deterministic (a timestamp, a random temporary name, an unordered map in
//! its output), which silently costs every later build its cache hits.

use std::collections::BTreeMap;

use crate::proto::reapi::{ActionResult, Digest as ProtoDigest};

/// Outputs compared per pair of results at most: an action with thousands of
/// differing outputs is flagged by its first few just as well, and a
/// record's size stays bounded whatever a client uploads.
pub(crate) const MAX_DIFFERING: usize = 32;

/// One output whose value differs between an earlier and a later result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Differing {
    /// The output's path, relative to the working directory.
    pub path: String,
    /// What the earlier result held: `hash/size` of a file or a directory's
    /// tree, `-> target` of a symlink, or empty when it had no such output.
    pub before: String,
    /// What the later result holds, in the same form.
    pub after: String,
}

fn digest(d: Option<&ProtoDigest>) -> String {
    d.map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_default()
}

/// Every output of `result` by path, in one form for files, directories and
/// symlinks.
fn outputs(result: &ActionResult) -> BTreeMap<&str, String> {
    let mut all = BTreeMap::new();
    for f in &result.output_files {
        all.insert(f.path.as_str(), digest(f.digest.as_ref()));
    }
    for d in &result.output_directories {
        // A DIRECTORY_ONLY result has no Tree: its root Directory stands
        // for the contents (the same Command always asks the same format).
        let id = d.tree_digest.as_ref().or(d.root_directory_digest.as_ref());
        all.insert(d.path.as_str(), digest(id));
    }
    for s in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        all.insert(s.path.as_str(), format!("-> {}", s.target));
    }
    all
}

/// The outputs on which two successful results of one action disagree
/// (at most [`MAX_DIFFERING`], by path). Failed results are not compared:
/// a failure is not a cacheable outcome, and a flaky failure is not a
/// nondeterministic output.
pub(crate) fn differing(before: &ActionResult, after: &ActionResult) -> Vec<Differing> {
    if before.exit_code != 0 || after.exit_code != 0 {
        return Vec::new();
    }
    let (old, new) = (outputs(before), outputs(after));
    let mut paths: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| {
            let (b, a) = (old.get(path), new.get(path));
            (b != a).then(|| Differing {
                path: path.to_string(),
                before: b.cloned().unwrap_or_default(),
                after: a.cloned().unwrap_or_default(),
            })
        })
        .take(MAX_DIFFERING)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{OutputDirectory, OutputFile, OutputSymlink};

    fn file(path: &str, hash: &str) -> OutputFile {
        OutputFile {
            path: path.into(),
            digest: Some(ProtoDigest {
                hash: hash.into(),
                size_bytes: 3,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_outputs_whose_values_differ_are_named() {
        let before = ActionResult {
            output_files: vec![file("out/stamp", "aa"), file("out/same", "cc")],
            output_directories: vec![OutputDirectory {
                path: "out/dir".into(),
                tree_digest: Some(ProtoDigest {
                    hash: "t1".into(),
                    size_bytes: 9,
                }),
                ..Default::default()
            }],
            output_symlinks: vec![OutputSymlink {
                path: "out/link".into(),
                target: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut after = before.clone();
        after.output_files[0] = file("out/stamp", "bb");
        after.output_symlinks[0].target = "b".into();
        after.output_files.push(file("out/new", "dd"));
        let got = differing(&before, &after);
        let named: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|d| (d.path.as_str(), d.before.as_str(), d.after.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("out/link", "-> a", "-> b"),
                ("out/new", "", "dd/3"),
                ("out/stamp", "aa/3", "bb/3"),
            ]
        );
        assert!(differing(&before, &before.clone()).is_empty());
    }

    #[test]
    fn failed_results_are_not_compared_and_records_stay_bounded() {
        let before = ActionResult {
            output_files: (0..100).map(|i| file(&format!("o{i}"), "aa")).collect(),
            ..Default::default()
        };
        let mut after = before.clone();
        for f in &mut after.output_files {
            f.digest.as_mut().unwrap().hash = "bb".into();
        }
        assert_eq!(differing(&before, &after).len(), MAX_DIFFERING);
        after.exit_code = 1;
        assert!(differing(&before, &after).is_empty());
    }
}
