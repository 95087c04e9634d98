//! With authentication on, the pages ask for a token once: no token gets
//! the sign-in form, a valid token (as a header, or entered in the form,
//! which sets an HttpOnly, SameSite=Strict cookie) gets the page, and a
//! token that may read another instance only gets 403.

use super::common::Kiln;

fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let lines: String = [("reader", "main:read"), ("other-reader", "other:read")]
        .iter()
        .map(|(token, roles)| {
            let hash = kiln::digest::DigestFunction::Sha256
                .digest_of(token.as_bytes())
                .hash_hex();
            format!("{hash} {roles} {token}\n")
        })
        .collect();
    let path = dir.join("tokens");
    std::fs::write(&path, lines).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A urlencoded sign-in form body.
fn form(token: &str, next: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("next", next)
        .finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_ask_for_a_token_and_check_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "auth:\n  tokens_file: {}\n  build_events_instance: main\ninstances:\n  - name: main\n    cas: {{ memory: {{ max_size: 8MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n  - name: other\n    cas: {{ memory: {{ max_size: 8MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n",
        tokens_file(dir.path()).display()
    );
    let kiln = Kiln::start(&yaml).await;
    let base = format!("http://{}", kiln.server.http_addr);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // In the browser: no token, the sign-in form.
    let page = super::dom(&kiln, "/").await;
    assert!(page.contains("Sign in to kiln"), "{page}");
    assert!(page.contains("name=\"token\""), "{page}");
    super::screenshot(&kiln, "/tests", "login", 600).await;

    for path in ["/", "/tests", "/operations", "/invocation/x"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
        assert!(r.text().await.unwrap().contains("Sign in"), "{path}");
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth("reader")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 401, "{path} with a bearer token");
        assert_ne!(r.status().as_u16(), 403, "{path} with a bearer token");
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth("other-reader")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            403,
            "{path}: a token of another instance"
        );
    }

    // The form: a wrong token is refused, a right one sets the cookie.
    let r = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("wrong", "/tests"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("reader", "/tests"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/tests");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let r = client
        .get(format!("{base}/tests"))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the cookie signs the browser in");
    // Never a redirect off this server.
    let r = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("reader", "//evil.example/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/");

    // A blob of the other instance needs a token for it.
    let blob = format!(
        "{base}/blob/other/{}/0/x",
        kiln::digest::DigestFunction::Sha256.empty().hash_hex()
    );
    let r = client
        .get(&blob)
        .bearer_auth("reader")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a reader of main cannot read other's blobs"
    );
    let r = client
        .get(&blob)
        .bearer_auth("other-reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
