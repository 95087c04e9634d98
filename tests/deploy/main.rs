//! Deployment artefacts, checked offline: the Helm chart renders and lints
//! (strict) with its default, MinIO and S3 values; every rendered object and
//! every plain manifest validates against the Kubernetes 1.29 schemas; the
//! kiln config the chart and the manifests ship passes `kiln check-config`;
//! the Dockerfile is multi-stage and runs as a non-root user. README's test
//! command installs helm-python-sdk and kubernetes-validate; without them
//! these tests fail rather than skip.

use std::path::{Path, PathBuf};
use std::process::Command;

mod keda;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: README's test command installs helm-python-sdk and kubernetes-validate")
    });
    assert!(Path::new(&path).exists(), "{var}={path} does not exist");
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn validate(files: &[PathBuf]) {
    let out = run(Command::new(tool("KILN_KUBERNETES_VALIDATE"))
        .args(["--strict", "-k", "1.29.0"])
        .args(files));
    assert!(!out.contains("ERROR"), "{out}");
}

fn check_config(file: &Path) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("check-config")
        .arg(file));
    assert!(out.contains(": ok"), "{out}");
}

/// Renders the chart into `out` once per values argument (see render.py:
/// "-" is the defaults, "A,B" layers B on A); one summary each.
fn render(out: &Path, values: &[&str]) -> Vec<serde_json::Value> {
    let stdout = run(Command::new(tool("KILN_K8S_PYTHON"))
        .arg(root().join("deploy/test/render.py"))
        .arg(root().join("deploy/helm/kiln"))
        .arg(out)
        .args(values));
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_chart_renders_lints_validates_and_ships_a_valid_kiln_config() {
    let chart = root().join("deploy/helm/kiln");
    let out = tempfile::tempdir().unwrap();
    let (minio, s3) = (
        chart.join("values-minio.yaml"),
        chart.join("values-s3.yaml"),
    );
    let summaries = render(
        out.path(),
        &["-", minio.to_str().unwrap(), s3.to_str().unwrap()],
    );
    assert_eq!(summaries.len(), 3);
    for s in &summaries {
        let name = s["values"].as_str().unwrap();
        let server = &s["deployments"]["kiln"][0];
        assert_eq!(server["readiness"], serde_json::json!(["grpc"]), "{name}");
        assert_eq!(server["liveness"], serde_json::json!(["grpc"]), "{name}");
        assert_eq!(server["startup"], serde_json::json!(["httpGet"]), "{name}");
        for fact in ["requests", "limits", "run_as_non_root", "read_only_root"] {
            assert_eq!(server[fact], true, "{name}: {fact}");
        }
        assert!(
            s["notes"]
                .as_str()
                .unwrap()
                .contains("--remote_cache=grpc://kiln.build.svc:50051"),
            "{name}: NOTES.txt gives the Bazel flags"
        );
        let kinds = s["kinds"].as_array().unwrap();
        let has = |k: &str| kinds.iter().filter(|x| *x == k).count();
        assert_eq!(has("ConfigMap"), 1);
        assert_eq!(has("Service"), 1);
        validate(&[out.path().join(format!("{name}.yaml"))]);
        check_config(&out.path().join(format!("{name}.kiln.yaml")));
        let notes = s["notes"].as_str().unwrap();
        let rendered =
            std::fs::read_to_string(out.path().join(format!("{name}.kiln.yaml"))).unwrap();
        let parsed = kiln::config::Config::parse(&rendered).unwrap();
        if name == "default" {
            // No workers, no auth: execution stays off and NOTES warn.
            assert!(
                !parsed.execution.enabled,
                "{name}: execution on without workers"
            );
            assert!(notes.contains("WARNING: authentication is off"), "{notes}");
            continue;
        }
        assert!(parsed.execution.enabled, "{name}: workers need execution");
        // The scaled-out installs: HPAs for server and workers, a PDB, workers.
        assert_eq!(has("HorizontalPodAutoscaler"), 2, "{name}");
        assert_eq!(has("PodDisruptionBudget"), 1, "{name}");
        let worker = &s["deployments"]["kiln-worker"][0];
        let args: Vec<&str> = worker["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "worker");
        assert!(args.contains(&"--server=grpc://kiln:50051"), "{args:?}");
        assert_eq!(worker["run_as_non_root"], true);
        // Every action in a bubblewrap sandbox: the pod allows user
        // namespaces and a /proc of the sandbox's own.
        assert!(args.contains(&"--sandbox=bwrap"), "{args:?}");
        assert_eq!(worker["seccomp"], "Unconfined", "{worker}");
        assert_eq!(worker["proc_mount"], "Unmasked", "{worker}");
        assert_eq!(worker["host_users"], false, "{worker}");
        assert!(s["notes"].as_str().unwrap().contains("--remote_executor="));
        let config = std::fs::read_to_string(out.path().join(format!("{name}.kiln.yaml"))).unwrap();
        assert!(
            config.contains("s3:") && config.contains("database_env: KILN_DATABASE_URL"),
            "{config}"
        );
    }
    let s3 = &summaries[2];
    assert!(
        !s3["notes"]
            .as_str()
            .unwrap()
            .contains("authentication is off"),
        "values-s3 turns JWT auth on"
    );
    assert!(
        s3["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "ServiceMonitor")
    );
    assert!(
        s3["annotations"]["eks.amazonaws.com/role-arn"].is_string(),
        "values-s3 uses IRSA: {}",
        s3["annotations"]
    );
}

#[test]
fn the_plain_manifests_validate_and_their_kiln_config_is_valid() {
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    validate(&files);
    // The ConfigMap's kiln.yaml, pulled out with the same YAML library.
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("kiln.yaml");
    run(Command::new(tool("KILN_K8S_PYTHON")).args([
        "-c",
        "import sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'ConfigMap']\n\
         open(sys.argv[2], 'w').write(docs[0]['data']['kiln.yaml'])",
        dir.join("kiln.yaml").to_str().unwrap(),
        config.to_str().unwrap(),
    ]));
    check_config(&config);
    let kiln = std::fs::read_to_string(dir.join("kiln.yaml")).unwrap();
    assert!(kiln.contains("replicas: 2"), "two kiln replicas");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    // No Docker engine here: the checks are static.
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    assert!(
        text.contains("COPY --from=build"),
        "the runtime copies the binary"
    );
    // Workers measure actions with kiln-measure, which must sit beside kiln.
    let runtime_copy = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=build"))
        .unwrap();
    assert!(
        runtime_copy.contains("/usr/local/bin/kiln ")
            && runtime_copy.contains("/usr/local/bin/kiln-measure"),
        "the image ships kiln and kiln-measure side by side: {runtime_copy}"
    );
    // The dependency layer comes before the sources are copied.
    let manifest = text
        .find("COPY Cargo.toml Cargo.lock")
        .expect("manifest copied");
    let sources = text.find("COPY src ").expect("sources copied");
    let first_build = text.find("cargo build --release").expect("release build");
    assert!(
        manifest < first_build && first_build < sources,
        "a cached dependency layer"
    );
    let runtime = text.rfind("FROM ").unwrap();
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    let who = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(who != "root" && who != "0", "runs as {who}");
    assert!(
        text.rfind("USER ").unwrap() > runtime,
        "USER is set in the runtime stage"
    );
    assert!(text[runtime..].contains("ca-certificates"));
    // Workers sandbox every action with bubblewrap.
    assert!(
        text[runtime..].contains("bubblewrap"),
        "the image installs bwrap"
    );
    let expose = lines
        .iter()
        .find(|l| l.starts_with("EXPOSE"))
        .expect("EXPOSE");
    assert!(
        expose.contains("50051") && expose.contains("8080"),
        "{expose}"
    );
    assert!(
        text.contains(r#"ENTRYPOINT ["kiln"]"#)
            && text.contains(r#""serve", "--config", "/etc/kiln/kiln.yaml""#),
        "kiln serve --config /etc/kiln/kiln.yaml is the entry"
    );
}
