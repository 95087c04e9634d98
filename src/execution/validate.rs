//! What makes a Command and a Directory safe to run and to materialise:
//! every path relative and inside the input root, every name of a
//! directory unique, sorted and a single path component. Execute checks
//! this before queueing (so the client hears INVALID_ARGUMENT at once) and
//! `kiln worker` checks it again before running (it may serve another
//! server), so no action can make a worker write or read outside its
//! action directory by naming a path.

use crate::error::{Error, Result};
use crate::proto::reapi::{Command, Directory};

/// Refuses a path that is empty (unless `empty_ok`), absolute, or has an
/// empty, `.` or `..` component: REAPI paths are relative, `/`-separated
/// and normalised.
pub fn check_relative_path(what: &str, path: &str, empty_ok: bool) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "{what} {path:?} {why}: expected a normalised path relative to the input root"
        )))
    };
    if path.is_empty() {
        return if empty_ok { Ok(()) } else { bad("is empty") };
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a . or .. component"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks every path a Command names.
pub fn check_command(command: &Command) -> Result<()> {
    check_relative_path("working_directory", &command.working_directory, true)?;
    for (what, paths) in [
        ("output file", &command.output_files),
        ("output directory", &command.output_directories),
        ("output path", &command.output_paths),
    ] {
        for path in paths {
            check_relative_path(what, path, false)?;
        }
    }
    Ok(())
}

/// Refuses a name that is not exactly one path component.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "input tree has an invalid name {name:?}: expected one path component"
        )));
    }
    Ok(())
}

/// Checks a Directory's entries: valid names, each list sorted by name (as
/// REAPI requires, so a Directory has one encoding), and no name used
/// twice across files, directories and symlinks (a file and a symlink of
/// one name would make a worker write through the link).
pub fn check_directory(dir: &Directory) -> Result<()> {
    let lists: [Vec<&str>; 3] = [
        dir.files.iter().map(|f| f.name.as_str()).collect(),
        dir.directories.iter().map(|d| d.name.as_str()).collect(),
        dir.symlinks.iter().map(|s| s.name.as_str()).collect(),
    ];
    for list in &lists {
        for pair in list.windows(2) {
            if pair[0] >= pair[1] {
                return Err(Error::InvalidArgument(format!(
                    "input directory entries are not sorted and unique: expected {:?} before {:?}",
                    pair[1], pair[0]
                )));
            }
        }
    }
    let mut all: Vec<&str> = lists.concat();
    for name in &all {
        check_name(name)?;
    }
    all.sort_unstable();
    if let Some(pair) = all.windows(2).find(|p| p[0] == p[1]) {
        return Err(Error::InvalidArgument(format!(
            "input directory uses the name {:?} twice (names must be unique across files, directories and symlinks)",
            pair[0]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{DirectoryNode, FileNode, SymlinkNode};

    #[test]
    fn relative_paths() {
        for ok in ["a", "a/b", "a.b/c..d", "..a", "a/.b"] {
            assert!(check_relative_path("p", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/hostname",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            ".",
            "a\0b",
        ] {
            assert!(check_relative_path("p", bad, false).is_err(), "{bad:?}");
        }
        assert!(check_relative_path("p", "", true).is_ok());
    }

    #[test]
    fn commands_with_escaping_paths_are_refused() {
        let ok = Command {
            output_files: vec!["out/a".into()],
            working_directory: "pkg".into(),
            ..Default::default()
        };
        assert!(check_command(&ok).is_ok());
        let cases = [
            Command {
                output_paths: vec!["/etc/hostname".into()],
                ..Default::default()
            },
            Command {
                output_files: vec!["../../x".into()],
                ..Default::default()
            },
            Command {
                output_directories: vec!["a/../..".into()],
                ..Default::default()
            },
            Command {
                working_directory: "/".into(),
                ..Default::default()
            },
            Command {
                working_directory: "..".into(),
                ..Default::default()
            },
        ];
        for c in cases {
            let err = check_command(&c).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{c:?}");
        }
    }

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn directories_need_unique_sorted_plain_names() {
        let ok = Directory {
            files: vec![file("a"), file("b")],
            directories: vec![DirectoryNode {
                name: "c".into(),
                digest: None,
            }],
            symlinks: vec![SymlinkNode {
                name: "d".into(),
                target: "a".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        assert!(check_directory(&ok).is_ok());
        let dup_link = Directory {
            files: vec![file("x")],
            symlinks: vec![SymlinkNode {
                name: "x".into(),
                target: "/etc/passwd".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        assert!(
            check_directory(&dup_link)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let unsorted = Directory {
            files: vec![file("b"), file("a")],
            ..Default::default()
        };
        assert!(check_directory(&unsorted).is_err());
        let repeated = Directory {
            files: vec![file("a"), file("a")],
            ..Default::default()
        };
        assert!(check_directory(&repeated).is_err());
        for name in ["", ".", "..", "a/b"] {
            let d = Directory {
                files: vec![file(name)],
                ..Default::default()
            };
            assert!(check_directory(&d).is_err(), "{name:?}");
        }
    }
}
