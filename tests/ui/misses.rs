//! Why did this action miss, with a real Bazel: scripted single changes to
//! a workspace built remotely on a kiln worker (a header, a source file,
//! an `--action_env`, a `--copt`, a tool's content), each build's misses
//! read from the JSON API, `kiln invocations misses` and the invocation's
//! page in Chromium; a rebuild that hits everything records nothing. The
//! first and the last build's cache scorecards: all misses and uploads,
//! then all hits with the time they saved.

use super::common::bazel::{Bazel, ShutdownOnDrop};
use super::common::exec::WorkerProc;
use super::common::{Kiln, disk};
use super::{dom, screenshot};

const BUILD: &str = r#"
cc_library(name = "util", srcs = ["util.cc"], hdrs = ["util.h"])
cc_binary(name = "app", srcs = ["main.cc"], deps = [":util"])
genrule(name = "tooled", outs = ["tooled.txt"], tools = ["tool.sh"], cmd = "$(location tool.sh) > $@")
"#;

fn write(ws: &std::path::Path, path: &str, content: &str) {
    let p = ws.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
}

/// The package the changes are made in: a library, a binary, a genrule
/// with a tool.
fn workspace(ws: &std::path::Path) {
    write(ws, "lib/BUILD", BUILD);
    write(ws, "lib/util.h", "int twice(int x);\n");
    write(
        ws,
        "lib/util.cc",
        "#include \"lib/util.h\"\nint twice(int x) { return 2 * x; }\n",
    );
    write(
        ws,
        "lib/main.cc",
        "#include \"lib/util.h\"\nint main() { return twice(0); }\n",
    );
    write(ws, "lib/tool.sh", "#!/bin/sh\necho one\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        ws.join("lib/tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// Waits until every miss analysis kiln started has been recorded (the
/// build is over, so no more start).
async fn analyses_done(kiln: &Kiln) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = super::common::scrape(kiln.server.http_addr).await;
        let running = m
            .lines()
            .find_map(|l| l.strip_prefix("kiln_miss_analyses_running "))
            .unwrap_or_else(|| panic!("no kiln_miss_analyses_running:\n{m}"));
        if running.trim() == "0" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "analyses still running:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The invocation's cache scorecard once `done` holds for it (it is
/// stored every second), or a failure naming the last one read.
async fn scorecard(
    kiln: &Kiln,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = format!(
        "http://{}/api/v1/invocations/{id}/cache",
        kiln.server.http_addr
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let card: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if done(&card) {
            return card;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scorecard of {id} never got there: {card}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn misses(kiln: &Kiln, id: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "http://{}/api/v1/invocations/{id}/misses",
        kiln.server.http_addr
    );
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["misses"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no misses list: {v}"))
}

/// Builds everything remotely with `extra` flags; returns the invocation id
/// once its misses are all recorded.
async fn build(kiln: &Kiln, bazel: &Bazel, n: usize, extra: &[&str]) -> String {
    let grpc = kiln.url.replace("http://", "grpc://");
    let events = bazel.output_root.with_extension(format!("{n}.json"));
    let mut args: Vec<String> = vec!["build".into(), "//lib:all".into()];
    args.extend([
        format!("--bes_backend={grpc}"),
        format!("--remote_executor={grpc}"),
        "--remote_timeout=120".into(),
        "--spawn_strategy=remote".into(),
        "--genrule_strategy=remote".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let id = super::bazel_invocation(kiln, bazel, args, &events).await;
    analyses_done(kiln).await;
    id
}

/// Whether a miss's causes name `want` (kind and subject), for the actions
/// the change touched directly; other actions missed because an input
/// built in this invocation changed, which is named right when their
/// causes are all changed inputs under bazel-out.
fn named_right(m: &serde_json::Value, direct: &[&str], want: (&str, &str)) -> bool {
    let causes = m["causes"].as_array().unwrap();
    let is = |c: &serde_json::Value, kind: &str, subject: &str| {
        c["kind"] == kind && c["subject"].as_str().unwrap_or("") == subject
    };
    if direct.contains(&m["mnemonic"].as_str().unwrap_or("")) {
        causes.iter().any(|c| is(c, want.0, want.1))
    } else {
        !causes.is_empty()
            && causes.iter().all(|c| {
                c["kind"] == "input"
                    && c["subject"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("bazel-out/")
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scripted_change_is_named_as_the_cause_of_its_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = disk().replace("instances:", "execution: { bot_wait: 2s }\ninstances:");
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let _worker = WorkerProc::start(&kiln.url, "", "misses-worker", &["--concurrency=2"]);
    // The test workspace (its WORKSPACE has the offline stand-ins for the
    // rules Bazel would download) with a package of this test's own.
    let bazel = Bazel::new(tmp.path());
    let ws = bazel.workspace.clone();
    workspace(&ws);
    let _shutdown = ShutdownOnDrop(bazel.clone());

    let first = build(&kiln, &bazel, 0, &[]).await;
    let rows = misses(&kiln, &first).await;
    assert!(
        rows.len() >= 4,
        "compiles, archive, link, genrule: {rows:?}"
    );
    for m in &rows {
        assert_eq!(m["causes"][0]["kind"], "new", "{m}");
        assert_eq!(m["invocation"], first.as_str(), "{m}");
    }
    // Its scorecard: every executed action a miss and an upload; inputs
    // went up.
    let n = rows.len() as u64;
    let card = scorecard(&kiln, &first, |c| {
        c["totals"]["uploads"].as_u64() >= Some(n)
    })
    .await;
    assert_eq!(card["totals"]["hits"], 0, "{card}");
    // Bazel looks each action up, then executes it: one miss each.
    assert_eq!(card["totals"]["misses"].as_u64(), Some(n), "{card}");
    assert_eq!(card["totals"]["executions"].as_u64(), Some(n), "{card}");
    assert!(card["bytes_up"].as_u64().unwrap() > 0, "{card}");
    assert!(
        card["by_mnemonic"]["CppCompile"]["misses"]
            .as_u64()
            .unwrap()
            >= 2,
        "{card}"
    );

    // (what changes, the mnemonics it touches directly, the cause they
    // must name, flags from here on)
    type Step = (
        &'static str,
        Box<dyn Fn()>,
        &'static [&'static str],
        (&'static str, &'static str),
        &'static [&'static str],
    );
    let w = ws.clone();
    let w2 = ws.clone();
    let w3 = ws.clone();
    let steps: Vec<Step> = vec![
        (
            "a header",
            Box::new(move || write(&w, "lib/util.h", "int twice(int x);\nint thrice(int x);\n")),
            &["CppCompile"],
            ("input", "lib/util.h"),
            &[],
        ),
        (
            "a source file",
            Box::new(move || {
                write(
                    &w2,
                    "lib/util.cc",
                    "#include \"lib/util.h\"\nint twice(int x) { return x + x; }\n",
                )
            }),
            &["CppCompile"],
            ("input", "lib/util.cc"),
            &[],
        ),
        (
            "an --action_env",
            Box::new(|| {}),
            &["CppCompile", "CppArchive", "CppLink", "Genrule"],
            ("env", "KILN_MISS"),
            &["--action_env=KILN_MISS=1"],
        ),
        (
            "a --copt",
            Box::new(|| {}),
            &["CppCompile"],
            ("argv", "-DKILN_COPT"),
            &["--action_env=KILN_MISS=1", "--copt=-DKILN_COPT"],
        ),
        (
            "a tool's content",
            Box::new(move || write(&w3, "lib/tool.sh", "#!/bin/sh\necho two\n")),
            &["Genrule"],
            ("input", "lib/tool.sh"),
            &["--action_env=KILN_MISS=1", "--copt=-DKILN_COPT"],
        ),
    ];
    let (mut right, mut total) = (0, 0);
    let mut report = String::new();
    let mut header_invocation = String::new();
    for (n, (what, change, direct, want, flags)) in steps.into_iter().enumerate() {
        change();
        let id = build(&kiln, &bazel, n + 1, flags).await;
        if n == 0 {
            header_invocation = id.clone();
        }
        let rows = misses(&kiln, &id).await;
        assert!(!rows.is_empty(), "changing {what} missed nothing");
        assert!(
            rows.iter()
                .any(|m| direct.contains(&m["mnemonic"].as_str().unwrap())),
            "changing {what}: no {direct:?} action missed: {rows:?}"
        );
        for m in &rows {
            assert_eq!(m["invocation"], id.as_str(), "{m}");
            total += 1;
            if named_right(m, direct, want) {
                right += 1;
            } else {
                report.push_str(&format!("changing {what}: {m}\n"));
            }
        }
    }
    assert!(
        right * 100 >= total * 95,
        "{right} of {total} misses named right; the others:\n{report}"
    );
    // The header change's build found most of its inputs stored already
    // (Bazel asks FindMissingBlobs before it uploads them): on its
    // scorecard and its page.
    let card = scorecard(&kiln, &header_invocation, |c| {
        c["savings"]["present_blobs"].as_u64() > Some(0)
    })
    .await;
    assert!(
        card["savings"]["present_bytes"].as_u64() > Some(0),
        "{card}"
    );
    let page = dom(&kiln, &format!("/invocation/{header_invocation}")).await;
    assert!(page.contains("id=\"cache-savings\""), "{page}");

    // A rebuild from a clean output tree. Bazel 4.2.3 did not run the links
    // again when only --action_env changed (its local action key leaves
    // their environment out), but the Commands it sends do carry it: the
    // links miss now, and the cause named is that variable.
    let flags = ["--action_env=KILN_MISS=1", "--copt=-DKILN_COPT"];
    let clean = || {
        let (ok, out) = bazel.run(&["clean"]);
        assert!(ok, "{out}");
    };
    clean();
    let catch_up = build(&kiln, &bazel, 8, &flags).await;
    for m in misses(&kiln, &catch_up).await {
        assert_eq!(m["mnemonic"], "CppLink", "{m}");
        assert!(named_right(&m, &["CppLink"], ("env", "KILN_MISS")), "{m}");
    }
    // Then every action hits: nothing is recorded as missed.
    // This build names where its sources came from, as CI systems do.
    clean();
    let hit = build(
        &kiln,
        &bazel,
        9,
        &[
            flags[0],
            flags[1],
            "--build_metadata=REPO_URL=https://git.example/lib.git",
            "--build_metadata=BRANCH_NAME=main",
            "--build_metadata=PIPELINE=nightly",
        ],
    )
    .await;
    assert_eq!(misses(&kiln, &hit).await, Vec::<serde_json::Value>::new());
    // Its scorecard: all hits, each with the execution time its result
    // recorded on the worker; the outputs came down.
    let card = scorecard(&kiln, &hit, |c| c["totals"]["hits"].as_u64() >= Some(n)).await;
    assert_eq!(card["totals"]["misses"], 0, "{card}");
    assert_eq!(card["totals"]["uploads"], 0, "{card}");
    assert!(card["totals"]["saved_ms"].as_u64().unwrap() > 0, "{card}");
    assert!(card["bytes_down"].as_u64().unwrap() > 0, "{card}");
    assert!(
        card["by_target"]["//lib:app"]["hits"].as_u64().unwrap() >= 1,
        "{card}"
    );
    let page = dom(&kiln, &format!("/invocation/{hit}")).await;
    assert!(page.contains("id=\"cache-totals\""), "{page}");
    assert!(page.contains("100% hit rate"), "{page}");

    // The trends page counts the builds (eight, none failed; summed over
    // the day rows, as a run may cross midnight UTC) and filters by what
    // Bazel said about them.
    let trends = dom(&kiln, "/trends?command=build").await;
    let days: Vec<Vec<&str>> = trends
        .split("<tr data-day=")
        .skip(1)
        .map(|row| {
            row.split("<td class=\"num\">")
                .skip(1)
                .map(|c| c.split(['<', ' ']).next().unwrap_or(""))
                .collect()
        })
        .collect();
    assert!(!days.is_empty(), "no day rows: {trends}");
    let sum = |i: usize| -> u64 { days.iter().map(|d| d[i].parse::<u64>().unwrap()).sum() };
    assert_eq!(sum(0), 8, "invocations: {trends}");
    assert_eq!(sum(1), 0, "failed: {trends}");
    // kiln's hit rate counts the last build's hits (Bazel 4 reports none).
    assert!(
        days.iter().any(|d| !d[3].is_empty() && d[3] != "0%"),
        "kiln's hit rate: {trends}"
    );
    // The first build and the last, compared: the options only the last
    // set, and their cache scorecards.
    let compared = dom(&kiln, &format!("/compare?a={first}&b={hit}")).await;
    let only_b = compared
        .split("id=\"only-b\"")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_else(|| panic!("no options only in B: {compared}"));
    assert!(only_b.contains("KILN_MISS=1"), "{compared}");
    assert!(only_b.contains("-DKILN_COPT"), "{compared}");
    assert!(compared.contains("id=\"compare-cache\""), "{compared}");
    assert!(compared.contains("0 hits, "), "{compared}");
    let nobody = dom(&kiln, "/trends?user=nobody-at-all").await;
    assert!(nobody.contains("No invocations in this window"), "{nobody}");
    // Filtered by repository, branch and a --build_metadata pair: only the
    // build that named them.
    for filter in [
        "repository=https%3A%2F%2Fgit.example%2Flib.git",
        "branch=main",
        "metadata=PIPELINE%3Dnightly",
    ] {
        let page = dom(&kiln, &format!("/trends?{filter}")).await;
        let count: u64 = page
            .split("<tr data-day=")
            .skip(1)
            .map(|row| {
                let cell = row.split("<td class=\"num\">").nth(1).unwrap_or("");
                cell.split('<').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(count, 1, "{filter}: {page}");
    }
    let page = dom(&kiln, &format!("/invocation/{hit}")).await;
    assert!(page.contains("https://git.example/lib.git"), "{page}");
    assert!(page.contains("PIPELINE=nightly"), "{page}");
    screenshot(&kiln, "/trends", "trends", 400).await;

    // The CLI prints the same causes.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["invocations", "misses", &header_invocation, "--server"])
        .arg(format!("http://{}", kiln.server.http_addr))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{text}");
    assert!(text.contains("input lib/util.h changed"), "{text}");
    assert!(text.contains("//lib:util (CppCompile)"), "{text}");

    // The invocation's page, in a real browser.
    let page = dom(&kiln, &format!("/invocation/{header_invocation}")).await;
    assert!(page.contains("Why actions missed"), "{page}");
    assert!(page.contains("data-miss-target=\"//lib:util\""), "{page}");
    assert!(page.contains("input lib/util.h changed"), "{page}");
    screenshot(
        &kiln,
        &format!("/invocation/{header_invocation}"),
        "misses",
        900,
    )
    .await;
}
