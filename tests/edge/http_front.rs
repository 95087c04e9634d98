//! The HTTP listener and the logs against what an attacker sends, over
//! real sockets: a sign-in redirect smuggled past the same-origin check
//! with a tab, a cross-site sign-out, and client strings (a bot id,
//! RequestMetadata) that try to start lines of their own in kiln's log.

use std::time::Duration;

use kiln::proto::remoteworkers::bots_client::BotsClient;
use kiln::proto::remoteworkers::{BotSession, CreateBotSessionRequest};
use prost::Message;

use crate::common::{Kiln, MEMORY, free_port};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_redirects_only_to_this_site_as_a_browser_reads_it() {
    let kiln = Kiln::start(MEMORY).await;
    let url = format!("http://{}/login", kiln.server.http_addr);
    for next in [
        "/\t/evil.example/",
        "/\n/evil.example",
        "/\\evil.example",
        "//evil.example",
    ] {
        let r = no_redirects()
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(crate::common::form(&[("token", "t"), ("next", next)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{next:?}");
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            "/",
            "{next:?} is not followed"
        );
    }
    let r = no_redirects()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::common::form(&[
            ("token", "t"),
            ("next", "/invocation/abc"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/invocation/abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_site_cannot_sign_a_user_out() {
    let kiln = Kiln::start(MEMORY).await;
    let url = format!("http://{}/logout", kiln.server.http_addr);
    let forged = no_redirects()
        .post(&url)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    let own = no_redirects()
        .post(&url)
        .header("origin", format!("http://{}", kiln.server.http_addr))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 303);
    assert!(own.headers().get("set-cookie").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_string_starts_a_line_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kiln.yaml");
    std::fs::write(&cfg, MEMORY).unwrap();
    let (port, http) = (free_port(), free_port());
    let log = dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--http-listen=127.0.0.1:{http}"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let channel = loop {
        if let Ok(c) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "kiln did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let metadata = kiln::proto::reapi::RequestMetadata {
        tool_invocation_id: "inv\nFORGED-BY-METADATA level=ERROR".into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(CreateBotSessionRequest {
        parent: String::new(),
        bot_session: Some(BotSession {
            bot_id: "bot\r\nFORGED-BY-BOT-ID level=ERROR\u{1b}[2J".into(),
            ..Default::default()
        }),
    });
    request.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    BotsClient::new(channel)
        .create_bot_session(request)
        .await
        .unwrap();
    // The event is logged before the answer is sent: poll the log for it.
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("bot session created") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    for line in text.lines() {
        assert!(!line.starts_with("FORGED"), "a forged log line: {line:?}");
        assert!(!line.contains('\u{1b}'), "a raw escape sequence: {line:?}");
    }
    let logged = text
        .lines()
        .find(|l| l.contains("bot session created"))
        .unwrap();
    assert!(
        logged.contains("FORGED-BY-BOT-ID"),
        "still there, escaped: {logged}"
    );
    assert!(logged.contains("\\r\\nFORGED"), "{logged}");
}

/// Reads from `stream` until the server closes it (or the deadline, which
/// fails the test); returns what it sent.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open past {within:?}"),
        }
    }
}

const TIGHT: &str = "http: { header_read_timeout: 1s, idle_timeout: 2s, max_connections: 16 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let kiln = Kiln::start(&format!("{TIGHT}{MEMORY}")).await;
    let addr = kiln.server.http_addr;
    // A request whose headers never end.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
        .await
        .unwrap();
    until_closed(&mut slow, Duration::from_secs(20)).await;
    // A connection that never says anything.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    until_closed(&mut idle, Duration::from_secs(20)).await;
    // A keep-alive connection left idle after a request.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    let answered = until_closed(&mut kept, Duration::from_secs(20)).await;
    assert!(
        answered.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_cannot_starve_grpc() {
    let kiln = Kiln::start(&format!("{TIGHT}{MEMORY}")).await;
    let addr = kiln.server.http_addr;
    // Fill every slot, then some: the extra ones are closed at once.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The listener counts a connection once it has accepted it: poll until
    // an extra one is turned away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), extra.read(&mut b)).await
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an extra connection was kept"
        );
    }
    // gRPC is unaffected.
    let mut caps = kiln.capabilities().await;
    caps.get_capabilities(kiln::proto::reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    // Once they are gone, HTTP serves again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/healthz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HTTP never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_count_against_the_same_rate_limit_as_grpc() {
    let kiln = Kiln::start(&format!("limits: {{ requests_per_second: 5 }}\n{MEMORY}")).await;
    let url = format!("http://{}/cas/{}", kiln.server.http_addr, "0".repeat(64));
    let client = reqwest::Client::new();
    let mut refused = 0;
    for _ in 0..40 {
        let r = client.get(&url).send().await.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            refused += 1;
        }
    }
    assert!(
        refused >= 30,
        "only {refused} of 40 rapid calls were limited"
    );
    // /healthz is never limited.
    let r = client
        .get(format!("http://{}/healthz", kiln.server.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
