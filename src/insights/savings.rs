//! What clients did not move because it was stored already: per
//! invocation on its scorecard (`Savings`), per instance on /metrics
//! (`SavingsMetrics`). Blobs FindMissingBlobs found present are uploads
//! skipped (a chunk-aware client's present chunks among them); blobs
//! spliced and split are those moved by chunks (REAPI 2.12).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::scorecard::Seen;
use crate::metrics::Metrics;

/// What an invocation's clients did not move because it was stored
/// already: blobs FindMissingBlobs found present (uploads skipped, the
/// chunks of a chunk-aware client's upload among them), and the blobs
/// moved by chunks (REAPI 2.12's SpliceBlob and SplitBlob).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savings {
    /// Blobs asked about that were stored: not uploaded.
    pub present_blobs: u64,
    /// Their bytes.
    pub present_bytes: u64,
    /// Blobs assembled from chunks the client named (SpliceBlob).
    pub spliced_blobs: u64,
    /// Their bytes.
    pub spliced_bytes: u64,
    /// The chunks they were assembled from.
    pub spliced_chunks: u64,
    /// Blobs the client asked to fetch by chunks (SplitBlob).
    pub split_blobs: u64,
    /// Their bytes.
    pub split_bytes: u64,
    /// The chunks they were listed as.
    pub split_chunks: u64,
}

impl Savings {
    pub(crate) fn add(&mut self, o: &Savings) {
        self.present_blobs += o.present_blobs;
        self.present_bytes += o.present_bytes;
        self.spliced_blobs += o.spliced_blobs;
        self.spliced_bytes += o.spliced_bytes;
        self.spliced_chunks += o.spliced_chunks;
        self.split_blobs += o.split_blobs;
        self.split_bytes += o.split_bytes;
        self.split_chunks += o.split_chunks;
    }

    /// Counts `seen` if it is a saving; false if it is not one.
    pub(crate) fn note(&mut self, seen: Seen<'_>) -> bool {
        match seen {
            Seen::Present { blobs, bytes } => {
                self.present_blobs += blobs;
                self.present_bytes += bytes;
            }
            Seen::Spliced { bytes, chunks } => {
                self.spliced_blobs += 1;
                self.spliced_bytes += bytes;
                self.spliced_chunks += chunks;
            }
            Seen::Split { bytes, chunks } => {
                self.split_blobs += 1;
                self.split_bytes += bytes;
                self.split_chunks += chunks;
            }
            _ => return false,
        }
        true
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    instance: String,
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

/// An instance's counters of what clients did not move (see
/// `crate::insights::scorecard::Savings`).
#[derive(Debug, Clone, Default)]
pub struct SavingsMetrics {
    present_bytes: Counter,
    /// Blobs, bytes and chunks moved by SpliceBlob, then by SplitBlob.
    by_chunks: [[Counter; 3]; 2],
}

impl SavingsMetrics {
    /// Counts `seen` if it is a saving.
    pub fn count(&self, seen: &Seen<'_>) {
        let (op, bytes, chunks) = match *seen {
            Seen::Present { bytes, .. } => {
                self.present_bytes.inc_by(bytes);
                return;
            }
            Seen::Spliced { bytes, chunks } => (0, bytes, chunks),
            Seen::Split { bytes, chunks } => (1, bytes, chunks),
            _ => return,
        };
        let [blobs, b, c] = &self.by_chunks[op];
        blobs.inc();
        b.inc_by(bytes);
        c.inc_by(chunks);
    }
}

/// The savings metrics of every instance.
#[derive(Debug, Default)]
pub(crate) struct Families {
    present_bytes: Family<InstanceLabels, Counter>,
    transfers: Family<TransferLabels, Counter>,
    transfer_bytes: Family<TransferLabels, Counter>,
    transfer_chunks: Family<TransferLabels, Counter>,
}

impl Families {
    pub(crate) fn register(registry: &Metrics) -> Families {
        let f = Families::default();
        registry.register(
            "present_blob_bytes",
            "Bytes of the blobs FindMissingBlobs found stored already: uploads clients skipped, by instance",
            f.present_bytes.clone(),
        );
        registry.register(
            "chunked_transfers",
            "Blobs clients moved by chunks, by instance and op (splice: uploaded, split: downloaded)",
            f.transfers.clone(),
        );
        registry.register(
            "chunked_transfer_bytes",
            "Bytes of the blobs clients moved by chunks, by instance and op",
            f.transfer_bytes.clone(),
        );
        registry.register(
            "chunked_transfer_chunks",
            "Chunks of the blobs clients moved by chunks, by instance and op",
            f.transfer_chunks.clone(),
        );
        f
    }

    /// Instance `instance`'s counters.
    pub(crate) fn of(&self, instance: &str) -> SavingsMetrics {
        let present_bytes = self
            .present_bytes
            .get_or_create(&InstanceLabels {
                instance: instance.to_string(),
            })
            .clone();
        let op = |op| {
            let label = TransferLabels {
                instance: instance.to_string(),
                op,
            };
            // One statement each (see `capacity`).
            let blobs = self.transfers.get_or_create(&label).clone();
            let bytes = self.transfer_bytes.get_or_create(&label).clone();
            let chunks = self.transfer_chunks.get_or_create(&label).clone();
            [blobs, bytes, chunks]
        };
        SavingsMetrics {
            present_bytes,
            by_chunks: [op("splice"), op("split")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use super::super::scorecard::{Counts, Scorecard};
    use super::*;

    #[test]
    fn savings_are_counted_apart_from_actions_and_summed_across_pods() {
        let w = Writer {
            invocation: "inv".into(),
            target: "//a:b".into(),
            mnemonic: "CppLink".into(),
        };
        let mut one = Scorecard::default();
        one.note(
            &w,
            Seen::Present {
                blobs: 3,
                bytes: 300,
            },
            false,
        );
        one.note(
            &w,
            Seen::Spliced {
                bytes: 5 << 20,
                chunks: 10,
            },
            false,
        );
        one.note(
            &w,
            Seen::Split {
                bytes: 4 << 20,
                chunks: 8,
            },
            false,
        );
        assert_eq!(one.totals, Counts::default(), "no action was counted");
        assert!(one.by_target.is_empty());
        let mut sum = one.clone();
        sum.add(&one);
        assert_eq!(sum.savings.present_bytes, 600);
        assert_eq!(sum.savings.spliced_blobs, 2);
        assert_eq!(sum.savings.split_chunks, 16);
    }
}
