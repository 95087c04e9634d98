//! Webhooks: when an invocation ends, its JSON summary is POSTed to every
//! configured URL, with retries and exponential backoff, from a background
//! task, so a slow or broken receiver never holds up event ingestion. Other
//! events (an action found not deterministic) go the same way, as JSON
//! objects with an `event` field.

use std::time::Duration;

use tokio::sync::mpsc;

use super::summary::Invocation;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;

/// Deliveries by outcome: delivered, retried, failed, dropped.
type Deliveries = Family<Vec<(&'static str, &'static str)>, Counter>;

/// Attempts per delivery.
const ATTEMPTS: u32 = 6;
/// Invocations waiting for delivery; beyond this, new ones are dropped (and
/// counted) rather than blocking ingestion.
const QUEUE: usize = 1024;

/// The handle ingestion uses to announce finished invocations.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    metrics: Option<Deliveries>,
}

impl Webhooks {
    /// Starts delivering to `urls` (nothing to do when empty).
    pub fn start(urls: Vec<String>, registry: &Metrics, first_backoff: Duration) -> Webhooks {
        let metrics = Deliveries::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome",
            metrics.clone(),
        );
        if urls.is_empty() {
            return Webhooks::default();
        }
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                for url in &urls {
                    tokio::spawn(deliver(
                        client.clone(),
                        url.clone(),
                        body.clone(),
                        m.clone(),
                        first_backoff,
                    ));
                }
            }
        });
        Webhooks {
            tx: Some(tx),
            metrics: Some(metrics),
        }
    }

    /// Queues `invocation` for delivery; never waits.
    pub fn notify(&self, invocation: &Invocation) {
        self.queue(invocation, &invocation.invocation_id);
    }

    /// Queues any other event for delivery (a JSON object whose `event`
    /// field names it); never waits.
    pub fn notify_event(&self, event: &impl serde::Serialize, about: &str) {
        self.queue(event, about);
    }

    fn queue(&self, value: &impl serde::Serialize, about: &str) {
        let Some(tx) = &self.tx else { return };
        let Ok(body) = serde_json::to_vec(value) else {
            return;
        };
        if tx.try_send(body).is_err() {
            tracing::warn!(about, "webhook queue full; event not delivered");
            if let Some(m) = &self.metrics {
                m.get_or_create(&vec![("outcome", "dropped")]).inc();
            }
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    metrics: Deliveries,
    first_backoff: Duration,
) {
    let mut backoff = first_backoff;
    for attempt in 1..=ATTEMPTS {
        let result = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                metrics.get_or_create(&vec![("outcome", "delivered")]).inc();
                return;
            }
            Ok(r) => {
                tracing::warn!(%url, attempt, status = %r.status(), "webhook delivery refused")
            }
            Err(e) => tracing::warn!(%url, attempt, error = %e, "webhook delivery failed"),
        }
        metrics.get_or_create(&vec![("outcome", "retried")]).inc();
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
    metrics.get_or_create(&vec![("outcome", "failed")]).inc();
    tracing::error!(%url, "webhook delivery gave up after {ATTEMPTS} attempts");
}
