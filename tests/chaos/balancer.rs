//! haproxy in front of the pods: HTTP/2 (cleartext gRPC) on both sides,
//! health checks on each pod's `/healthz`, and a failed connection retried
//! on another pod, as a production balancer is set up.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian installs it in /usr/sbin, which a user's PATH may lack.
fn binary() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

pub struct Haproxy {
    pub port: u16,
    child: Child,
}

impl Haproxy {
    /// Starts haproxy over the pods' (gRPC, HTTP) ports.
    pub async fn start(tmp: &Path, pods: &[(u16, u16)]) -> Haproxy {
        let found = Command::new(binary()).arg("-v").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "haproxy is not installed: README's test command installs Debian's haproxy"
        );
        let port = crate::common::free_port();
        let servers: String = pods
            .iter()
            .enumerate()
            .map(|(i, (grpc, http))| {
                format!(
                    "    server pod{i} 127.0.0.1:{grpc} proto h2 check port {http} inter 250ms fall 1 rise 1\n"
                )
            })
            .collect();
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 300s\n    timeout server 300s\n    retries 3\n    option redispatch\n    retry-on conn-failure empty-response\n\
             frontend grpc\n    bind 127.0.0.1:{port} proto h2\n    default_backend pods\n\
             backend pods\n    balance roundrobin\n    option httpchk GET /healthz\n{servers}"
        );
        let path = tmp.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(tmp.join("haproxy.log")).unwrap();
        let child = Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Haproxy { port, child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
