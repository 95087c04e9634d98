//! A real HTTP origin for Remote Asset tests: serves fixed files, redirects
//! on `/redirect?to=URL`, answers `/partial` with a 206 (as a server does
//! to a Range request), trickles an endless body on `/trickle`, counts the
//! requests it answered, and can be stopped (its port then refuses
//! connections), so a test can show that a second fetch needed no network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Files {
    files: Arc<HashMap<String, Bytes>>,
    hits: Arc<AtomicUsize>,
}

async fn serve(
    State(files): State<Files>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    files.hits.fetch_add(1, Ordering::SeqCst);
    if uri.path() == "/redirect" {
        let to = query.get("to").cloned().unwrap_or_default();
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    if uri.path() == "/partial" {
        return (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_RANGE, "bytes 0-3/100")],
            "part",
        )
            .into_response();
    }
    if uri.path() == "/trickle" {
        // 64 KiB every 20 ms, for ever (until the client goes away).
        let chunks = futures::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b't'; 64 << 10])),
                (),
            ))
        });
        return axum::body::Body::from_stream(chunks).into_response();
    }
    match files.files.get(uri.path()) {
        Some(data) => data.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Origin {
    /// Serves `files` (path → content) on 127.0.0.1.
    pub async fn start(files: HashMap<String, Bytes>) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let state = Files {
            files: Arc::new(files),
            hits: hits.clone(),
        };
        let app = axum::Router::new().fallback(serve).with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Origin {
            addr,
            hits,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops serving; returns once the listener is closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}
