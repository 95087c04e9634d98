//! Queue-driven worker autoscaling: the chart's KEDA overlay renders one
//! worker Deployment and one ScaledObject per pool, scaling from zero on
//! the demand for the platform labels kiln gives those pools' actions. The
//! ScaledObjects validate strictly against the CRD schema in `fixtures/`.

use std::path::Path;
use std::process::Command;

use crate::{root, run, tool, validate};

/// kiln's label of a platform (pinned, with the same values, by
/// `execution::job`'s unit test `platform_labels_are_pinned`).
fn label(props: &[(&str, &str)]) -> &'static str {
    match props {
        [("OSFamily", "linux")] => "p0b6735303307",
        [("OSFamily", "linux"), ("size", "large")] => "p527655ea5298",
        [("size", "large")] => "p05e67cd33bbe",
        other => panic!("no pinned label for {other:?}"),
    }
}

fn render(out: &Path, values: &str) -> serde_json::Value {
    let mut one = crate::render(out, &[values]);
    assert_eq!(one.len(), 1);
    one.remove(0)
}

fn validate_crs(file: &Path) -> String {
    let crds = [
        root().join("tests/deploy/fixtures/keda-scaledobject-crd.yaml"),
        root().join("tests/deploy/fixtures/keda-triggerauthentication-crd.yaml"),
    ];
    // The fixtures are themselves valid CustomResourceDefinitions...
    validate(&crds);
    // ...and every rendered ScaledObject and TriggerAuthentication fits
    // its schema.
    let list: Vec<String> = crds.iter().map(|c| c.display().to_string()).collect();
    let out = run(Command::new(tool("KILN_K8S_PYTHON"))
        .arg(root().join("deploy/test/validate_crs.py"))
        .arg(list.join(","))
        .arg(file));
    assert!(out.contains("custom resources valid"), "{out}");
    out
}

#[test]
fn with_auth_on_the_metrics_api_trigger_sends_a_token() {
    let chart = root().join("deploy/helm/kiln");
    let out = tempfile::tempdir().unwrap();
    // values-s3 turns JWT auth on and names the workers' token Secret.
    let layered = format!(
        "{},{}",
        chart.join("values-s3.yaml").display(),
        chart.join("values-keda.yaml").display()
    );
    let s = render(out.path(), &layered);
    let checked = validate_crs(&out.path().join("values-keda.crs.yaml"));
    assert!(
        !checked.contains("skipped TriggerAuthentication")
            && !checked.contains("skipped ScaledObject"),
        "every KEDA resource checked: {checked}"
    );
    let kinds = s["kinds"].as_array().unwrap();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "TriggerAuthentication")
            .count(),
        1
    );
    let crs = std::fs::read_to_string(out.path().join("values-keda.crs.yaml")).unwrap();
    assert!(crs.contains("name: kiln-worker-token"), "{crs}");
    for (name, so) in s["scaled_objects"].as_object().unwrap() {
        let trigger = &so["triggers"][0];
        assert_eq!(trigger["metadata"]["authMode"], "bearer", "{name}");
        assert_eq!(trigger["authenticationRef"]["name"], "kiln-keda", "{name}");
    }
}

#[test]
fn keda_pools_scale_from_zero_on_their_platforms_queue() {
    let chart = root().join("deploy/helm/kiln");
    let out = tempfile::tempdir().unwrap();
    let layered = format!(
        "{},{}",
        chart.join("values-minio.yaml").display(),
        chart.join("values-keda.yaml").display()
    );
    let s = render(out.path(), &layered);
    validate(&[out.path().join("values-keda.yaml")]);
    validate_crs(&out.path().join("values-keda.crs.yaml"));

    let kinds = s["kinds"].as_array().unwrap();
    let has = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(has("ScaledObject"), 2, "one per pool");
    assert_eq!(
        has("HorizontalPodAutoscaler"),
        1,
        "the server's only: KEDA owns the workers'"
    );
    let deployments = s["deployments"].as_object().unwrap();
    for pool in ["kiln-worker-small", "kiln-worker-large"] {
        assert!(deployments.contains_key(pool), "{deployments:?}");
    }
    let large: Vec<&str> = s["deployments"]["kiln-worker-large"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(large.contains(&"--property=size=large"), "{large:?}");
    assert!(large.contains(&"--concurrency=2"), "{large:?}");

    // The labels are the ones kiln's demand metrics use for those platforms.
    let small = &s["scaled_objects"]["kiln-worker-small"];
    assert_eq!(small["target"], "kiln-worker-small");
    assert_eq!(small["min"], 0, "scales to zero");
    assert_eq!(
        small["labels"],
        format!("{},none", label(&[("OSFamily", "linux")]))
    );
    let large = &s["scaled_objects"]["kiln-worker-large"];
    assert_eq!(
        large["labels"],
        format!(
            "{},{}",
            label(&[("OSFamily", "linux"), ("size", "large")]),
            label(&[("size", "large")])
        )
    );
    let trigger = &large["triggers"][0];
    assert_eq!(trigger["type"], "metrics-api");
    let url = trigger["metadata"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://kiln.build.svc:8080/api/v1/platforms?labels="),
        "{url}"
    );
    assert_eq!(trigger["metadata"]["valueLocation"], "demand");
    assert_eq!(
        trigger["metadata"]["targetValue"], "2",
        "the pool's concurrency"
    );

    // The Prometheus trigger: max over pods (each reports the whole farm).
    let prometheus = out.path().join("prometheus.yaml");
    std::fs::write(
        &prometheus,
        "worker:\n  autoscaling:\n    keda:\n      trigger: prometheus\n      prometheusAddress: http://prometheus.monitoring.svc:9090\n      jobsPerReplica: 3\n",
    )
    .unwrap();
    let s = render(out.path(), &format!("{layered},{}", prometheus.display()));
    validate_crs(&out.path().join("prometheus.crs.yaml"));
    let trigger = &s["scaled_objects"]["kiln-worker-small"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    let small_label = label(&[("OSFamily", "linux")]);
    assert!(
        query.contains(&format!(
            "max by (platform) (kiln_exec_queued{{platform=~\"{small_label}|none\"}})"
        )),
        "{query}"
    );
    assert!(query.contains("kiln_exec_executing"), "{query}");
    assert_eq!(trigger["metadata"]["threshold"], "3");
}
