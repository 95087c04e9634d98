//! TLS and mTLS with certificates made in the test (rcgen).

use kiln::proto::reapi::GetCapabilitiesRequest;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{Kiln, MEMORY};

struct Pki {
    ca_pem: String,
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kiln test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca_pem: issuer.pem(),
            dir: tempfile::tempdir().unwrap(),
            issuer,
        }
    }

    /// A certificate for `names`, signed by the CA: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, pem: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn server_config(&self, mtls: bool) -> String {
        let (cert, key) = self.leaf(&["localhost", "127.0.0.1"]);
        let cert = self.write("server.pem", &cert);
        let key = self.write("server.key", &key);
        let ca = self.write("ca.pem", &self.ca_pem);
        let client_ca = if mtls {
            format!("\n  client_ca: {}", ca.display())
        } else {
            String::new()
        };
        format!(
            "tls:\n  cert: {}\n  key: {}{client_ca}\n{MEMORY}",
            cert.display(),
            key.display()
        )
    }
}

async fn caps(kiln: &Kiln, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let url = kiln.url.replace(
        "http://",
        if tls.is_some() { "https://" } else { "http://" },
    );
    let mut endpoint = Channel::from_shared(url).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca() {
    kiln::tls::install_crypto_provider();
    let pki = Pki::new();
    let kiln = Kiln::start(&pki.server_config(false)).await;
    let trusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    caps(&kiln, Some(trusting)).await.unwrap();
    assert!(
        caps(&kiln, None).await.is_err(),
        "plaintext is refused on a TLS listener"
    );
    let other = Pki::new();
    let distrusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&other.ca_pem))
        .domain_name("localhost");
    assert!(
        caps(&kiln, Some(distrusting)).await.is_err(),
        "a certificate from another CA is refused by the client"
    );
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate() {
    kiln::tls::install_crypto_provider();
    let pki = Pki::new();
    let kiln = Kiln::start(&pki.server_config(true)).await;
    let base = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost")
    };
    let err = caps(&kiln, Some(base())).await.unwrap_err();
    assert!(!err.is_empty(), "a client without a certificate is refused");
    let (cert, key) = pki.leaf(&["client"]);
    caps(&kiln, Some(base().identity(Identity::from_pem(cert, key))))
        .await
        .unwrap();
    let stranger = Pki::new();
    let (cert, key) = stranger.leaf(&["client"]);
    assert!(
        caps(&kiln, Some(base().identity(Identity::from_pem(cert, key))))
            .await
            .is_err(),
        "a certificate from another CA is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildgrids_bgd_client_works_over_tls_and_mtls() {
    kiln::tls::install_crypto_provider();
    let bgd = crate::common::bgd();
    for mtls in [false, true] {
        let pki = Pki::new();
        let kiln = Kiln::start(&pki.server_config(mtls)).await;
        let port = kiln.server.addr.port();
        let ca = pki.dir.path().join("ca.pem");
        let mut args = vec![
            "capabilities".to_string(),
            "--remote".into(),
            format!("https://localhost:{port}"),
            "--server-cert".into(),
            ca.display().to_string(),
        ];
        if mtls {
            let (cert, key) = pki.leaf(&["bgd-client"]);
            args.extend([
                "--client-cert".into(),
                pki.write("client.pem", &cert).display().to_string(),
            ]);
            args.extend([
                "--client-key".into(),
                pki.write("client.key", &key).display().to_string(),
            ]);
        }
        let out = tokio::task::spawn_blocking({
            let bgd = bgd.clone();
            move || {
                std::process::Command::new(bgd)
                    .args(&args)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let text = crate::common::output_text(&out);
        assert!(
            out.status.success(),
            "bgd over {}: {text}",
            if mtls { "mTLS" } else { "TLS" }
        );
        assert!(
            text.contains("cacheCapabilities") && text.contains("SHA256"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_speaks_tls_and_marks_the_cookie_secure() {
    let pki = Pki::new();
    let kiln = Kiln::start(&pki.server_config(false)).await;
    let port = kiln.server.http_addr.port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let health = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let login = client
        .post(format!("https://localhost:{port}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::common::form(&[("token", "t"), ("next", "/")]))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP to the TLS listener gets no page.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP must not be served on the TLS listener"
    );
}
