//! Pods that start together on a fresh database (a Deployment's replicas on
//! first install) all come up: migrations run under a lock.

use crate::common::Kiln;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_start_at_once_on_a_fresh_postgresql_database() {
    let url = std::env::var("KILN_TEST_POSTGRES_URL")
        .expect("KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests");
    let (admin_url, _) = url.rsplit_once('/').unwrap();
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    for round in 0..10 {
        let db = format!("kiln_startup_{}_{round}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .unwrap();
        let db_url = format!("{admin_url}/{db}");
        let yaml = format!(
            "build_events: {{ database: \"{db_url}\" }}\nexecution: {{ database: \"{db_url}\" }}\n{}",
            crate::common::MEMORY
        );
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let pods = futures::future::join_all(dirs.iter().map(|d| {
            let yaml = yaml.clone();
            async move { Kiln::try_start_in(&yaml, d.path()).await }
        }))
        .await;
        for (i, pod) in pods.iter().enumerate() {
            if let Err(e) = pod {
                panic!("round {round}: pod {i} did not start: {e}");
            }
        }
        for pod in pods.into_iter().flatten() {
            pod.cas()
                .await
                .find_missing_blobs(kiln::proto::reapi::FindMissingBlobsRequest::default())
                .await
                .unwrap();
            drop(pod);
        }
    }
    admin.close().await;
}

/// One named store as a CAS and as an action cache would get the CAS's
/// create-if-absent writes for action results (on S3, overwrites that
/// silently do nothing): refused at start.
#[tokio::test]
async fn a_store_cannot_serve_as_cas_and_action_cache() {
    let yaml = r#"
stores:
  shared: { memory: { max_size: 8MiB } }
instances:
  - name: a
    cas: { ref: shared }
    action_cache: { memory: { max_size: 8MiB } }
  - name: b
    cas: { memory: { max_size: 8MiB } }
    action_cache: { ref: shared }
"#;
    let dir = tempfile::tempdir().unwrap();
    let err = Kiln::try_start_in(yaml, dir.path())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("both as a CAS and as an action cache"),
        "{err}"
    );
}
