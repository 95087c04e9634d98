//! Debian's Chromium, headless: the DOM of a page after it rendered
//! (`--dump-dom`) and screenshots, each run with its own profile dir.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Chromium binary; README's test command installs Debian's package.
fn binary() -> &'static str {
    for b in ["chromium", "chromium-browser"] {
        if Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return b;
        }
    }
    panic!("chromium is not installed: README's test command installs Debian's chromium");
}

fn run(args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's DOM once loaded, serialized.
pub fn dom(url: &str) -> String {
    let out = run(&["--dump-dom".into(), url.into()]);
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// Where screenshots go: the test's output dir, and also
/// `KILN_UI_SCREENSHOTS` when set (README's pictures: docs/screenshots).
pub fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")];
    if let Ok(extra) = std::env::var("KILN_UI_SCREENSHOTS") {
        dirs.push(PathBuf::from(extra));
    }
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    dirs
}

/// Screenshots `url` as `name.png` (full height up to `height` pixels)
/// and checks the picture is not blank: returns its path in the output dir.
pub fn screenshot(url: &str, name: &str, height: u32) -> PathBuf {
    let dirs = screenshot_dirs();
    let path = dirs[0].join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    run(&[
        format!("--window-size=1280,{height}"),
        format!("--screenshot={}", path.display()),
        url.into(),
    ]);
    assert_not_blank(&path);
    for d in &dirs[1..] {
        std::fs::copy(&path, d.join(format!("{name}.png"))).unwrap();
    }
    path
}

/// A blank (or single-colour) picture has almost no distinct colours; a
/// rendered page has text, badges and rules.
pub fn assert_not_blank(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let pixel = info.color_type.samples();
    let bytes = &buf[..info.buffer_size()];
    let mut colours = std::collections::HashSet::new();
    let mut counts = std::collections::HashMap::new();
    for p in bytes.chunks(pixel) {
        colours.insert(p.to_vec());
        *counts.entry(p.to_vec()).or_insert(0usize) += 1;
    }
    let pixels = bytes.len() / pixel;
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(
        colours.len() > 20 && top < pixels * 99 / 100,
        "{} looks blank: {} colours, the commonest covers {top} of {pixels} pixels",
        path.display(),
        colours.len()
    );
}

/// The elements of `dom` whose opening tag contains `attr` (e.g.
/// `data-label="//ui:flaky"`): each opening tag.
pub fn tags_with<'a>(dom: &'a str, attr: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(attr) {
        let start = rest[..at].rfind('<').unwrap_or(0);
        let end = at + rest[at..].find('>').unwrap_or(0);
        out.push(&rest[start..=end]);
        rest = &rest[end + 1..];
    }
    out
}

/// The text of the element that starts at `tag` (up to its closing tag of
/// the same name, no nesting of that name assumed).
pub fn element_after<'a>(dom: &'a str, opening: &str) -> &'a str {
    let at = dom
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening} in the DOM"));
    let name: String = opening[1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let close = format!("</{name}>");
    let end = dom[at..].find(&close).map(|e| at + e).unwrap_or(dom.len());
    &dom[at..end]
}
