//! The build the chaos runs under: 25 genrules in four layers, each a few
//! seconds long, with multi-megabyte outputs (so ByteStream uploads and
//! downloads are cut by the kills too). Each action appends one line to its
//! own marker file when it completes, which is how the test counts runs.

use std::path::{Path, PathBuf};

/// Targets per layer.
const WIDTH: usize = 8;
/// The size of each first-layer output (the layers above concatenate them).
pub const OUTPUT_SIZE: usize = 3_000_000;

pub struct Workspace {
    pub dir: PathBuf,
    /// Every genrule's name (also its marker file's name).
    pub targets: Vec<String>,
}

/// Writes the workspace under `dir`; markers go to `marks`.
pub fn write(dir: &Path, marks: &Path) -> Workspace {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("WORKSPACE"), "workspace(name = \"chaos\")\n").unwrap();
    let mark = |name: &str| format!("echo ran >> {}/{name}", marks.display());
    let mut build = String::new();
    let mut targets = Vec::new();
    let mut rule = |name: String, srcs: Vec<String>, work: &str| {
        let srcs: Vec<String> = srcs.iter().map(|s| format!("\":{s}\"")).collect();
        build.push_str(&format!(
            "genrule(\n    name = \"{name}\",\n    srcs = [{}],\n    outs = [\"{name}.out\"],\n    cmd = \"{work}; {}\",\n)\n\n",
            srcs.join(", "),
            mark(&name)
        ));
        targets.push(name);
    };
    for i in 0..WIDTH {
        rule(
            format!("gen_0_{i}"),
            vec![],
            &format!("sleep 3; head -c {OUTPUT_SIZE} /dev/urandom > $@"),
        );
    }
    for i in 0..WIDTH {
        rule(
            format!("gen_1_{i}"),
            vec![format!("gen_0_{i}"), format!("gen_0_{}", (i + 1) % WIDTH)],
            "sleep 3; cat $(SRCS) > $@",
        );
    }
    for i in 0..WIDTH {
        rule(
            format!("gen_2_{i}"),
            vec![format!("gen_1_{i}"), format!("gen_1_{}", (i + 3) % WIDTH)],
            "sleep 3; cat $(SRCS) | sha256sum > $@",
        );
    }
    rule(
        "gen_3".into(),
        (0..WIDTH).map(|i| format!("gen_2_{i}")).collect(),
        "cat $(SRCS) > $@",
    );
    std::fs::write(dir.join("BUILD"), build).unwrap();
    Workspace {
        dir: dir.to_path_buf(),
        targets,
    }
}
