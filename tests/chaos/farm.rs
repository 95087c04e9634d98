//! The kiln pods: `kiln serve` processes on fixed ports (so the balancer
//! finds a restarted pod where it was), one config, one bucket and one
//! PostgreSQL, each with a data dir of its own that holds nothing durable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;
use crate::common::s3::SeaweedFs;

struct Pod {
    grpc: u16,
    http: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// How many times it was started (each start logs to its own file).
    starts: usize,
}

pub struct Farm {
    config: PathBuf,
    pods: Vec<Pod>,
    /// Random bits for the chaos (from fresh UUIDs).
    entropy: u64,
}

impl Farm {
    /// Starts `n` pods serving `instance` from `s3`'s bucket and `pg`.
    pub async fn start(tmp: &Path, s3: &SeaweedFs, pg: &str, instance: &str, n: usize) -> Farm {
        // Chunked storage, as config/s3.yaml ships: the build's 3 MB
        // outputs are stored as chunks through the kills.
        let stores = crate::common::chunking::chunked(&s3.kiln_config("chaos/"))
            .replace("  - name: \"\"", &format!("  - name: \"{instance}\""));
        let yaml = format!(
            "execution: {{ database: \"{pg}\", bot_wait: 2s, lease_timeout: 10s }}\n\
             build_events: {{ database: \"{pg}\" }}\n{stores}"
        );
        let config = tmp.join("pods.yaml");
        std::fs::write(&config, yaml).unwrap();
        let pods = (0..n)
            .map(|i| Pod {
                grpc: free_port(),
                http: free_port(),
                dir: tmp.join(format!("pod{i}")),
                child: None,
                starts: 0,
            })
            .collect();
        let mut farm = Farm {
            config,
            pods,
            entropy: u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap()),
        };
        for i in 0..n {
            farm.restart(i).await;
        }
        farm
    }

    /// Every pod's (gRPC, HTTP) ports, for the balancer.
    pub fn ports(&self) -> Vec<(u16, u16)> {
        self.pods.iter().map(|p| (p.grpc, p.http)).collect()
    }

    /// A random pod (a different one each turn is not promised).
    pub fn pick(&mut self, turn: u64) -> usize {
        (self.next(turn) % self.pods.len() as u64) as usize
    }

    /// A random number of milliseconds below `below`.
    pub fn jitter(&mut self, below: u64) -> u64 {
        self.next(0) % below
    }

    fn next(&mut self, salt: u64) -> u64 {
        // xorshift64*: enough randomness for picking victims.
        self.entropy ^= salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        self.entropy ^= self.entropy >> 12;
        self.entropy ^= self.entropy << 25;
        self.entropy ^= self.entropy >> 27;
        self.entropy.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// SIGKILL: the pod vanishes mid-request, as a lost node would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.pods[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts pod `i` (again) and waits until its `/healthz` answers.
    pub async fn restart(&mut self, i: usize) {
        let pod = &mut self.pods[i];
        std::fs::create_dir_all(&pod.dir).unwrap();
        pod.starts += 1;
        let log = std::fs::File::create(pod.dir.join(format!("log.{}", pod.starts))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg(format!("--listen=127.0.0.1:{}", pod.grpc))
            .arg(format!("--http-listen=127.0.0.1:{}", pod.http))
            .arg("--data-dir")
            .arg(&pod.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("kiln serve starts");
        pod.child = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", pod.http);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {i} did not come up:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tail of every pod log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (i, pod) in self.pods.iter().enumerate() {
            for n in 1..=pod.starts {
                let log =
                    std::fs::read_to_string(pod.dir.join(format!("log.{n}"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                text.push_str(&format!("--- pod {i}, start {n}:\n"));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for i in 0..self.pods.len() {
            self.kill(i);
        }
    }
}
