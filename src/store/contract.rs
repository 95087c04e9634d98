//! The contract every [`BlobStore`] must honour, as one suite that each
//! backend's and layer's tests call: not-found semantics, ranged reads at the
//! edges, the empty blob, idempotent puts, duplicates in find_missing, large
//! streamed bodies, aborted uploads and concurrent writers of one blob.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{BlobStore, Body, Range, get_bytes};
use crate::digest::{Digest, DigestFunction, HashKey};
use crate::error::Error;

/// Deterministic, non-repeating content of `len` bytes, distinct per `seed`.
pub fn blob(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn digest(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// A body that delivers `data` in `chunk`-sized pieces.
pub fn streamed(data: Bytes, chunk: usize) -> Body {
    let chunks: Vec<_> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Body::Stream(futures::stream::iter(chunks).boxed())
}

/// Runs the whole suite against `store`. Each run uses fresh content, so it can
/// be called on a store that already holds data.
pub async fn run(store: &dyn BlobStore) {
    let seed = rand_seed();
    not_found(store, seed).await;
    round_trip_and_ranges(store, seed + 1).await;
    empty_blob(store).await;
    idempotent_put(store, seed + 2).await;
    find_missing_keeps_order_and_duplicates(store, seed + 3).await;
    large_streamed(store, seed + 4).await;
    aborted_stream_leaves_nothing(store, seed + 5).await;
    resolve_by_hash(store, seed + 6).await;
    put_if_absent_stores_once(store, seed + 7).await;
}

/// `put_if_absent` stores a new blob (true) and leaves a present one
/// (false), readable either way.
async fn put_if_absent_stores_once(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 3000);
    let d = digest(&data);
    assert!(store.put_if_absent(&d, data.clone().into()).await.unwrap());
    assert!(!store.put_if_absent(&d, data.clone().into()).await.unwrap());
    assert_eq!(get_bytes(store, &d).await.unwrap(), data);
}

/// A key is found by its hash alone, with its size; an absent hash is None.
async fn resolve_by_hash(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 3000);
    let d = digest(&data);
    let key = HashKey::of(&d);
    assert_eq!(
        store.resolve(&key).await.unwrap(),
        None,
        "resolved before put"
    );
    store.put(&d, data.into()).await.unwrap();
    assert_eq!(store.resolve(&key).await.unwrap(), Some(d));
    let other = HashKey::of(&digest(&blob(seed, 3001)));
    assert_eq!(store.resolve(&other).await.unwrap(), None);
}

/// Many writers of one blob at once must all succeed and leave it intact.
/// The whole contract: [`run`], then [`concurrent_writers`] (which needs a
/// multi-threaded runtime to mean anything).
pub async fn run_all(store: Arc<dyn BlobStore>) {
    run(store.as_ref()).await;
    concurrent_writers(store).await;
}

/// An action-cache store's swap: the value replaced comes back (None for
/// a fresh key, and for one larger than asked), and the new one is stored.
pub async fn swap_returns_the_replaced_value(store: &dyn BlobStore) {
    let seed = rand_seed();
    let key = digest(&blob(seed, 64));
    let (first, second) = (blob(seed + 1, 100), blob(seed + 2, 200));
    assert_eq!(
        store.swap(&key, first.clone(), 1 << 20).await.unwrap(),
        None
    );
    assert_eq!(get_bytes(store, &key).await.unwrap(), first);
    let old = store.swap(&key, second.clone(), 1 << 20).await.unwrap();
    assert_eq!(old, Some(first));
    assert_eq!(get_bytes(store, &key).await.unwrap(), second);
    let too_large = store.swap(&key, blob(seed + 3, 10), 199).await.unwrap();
    assert_eq!(too_large, None, "an old value over max_old is not returned");
}

pub async fn concurrent_writers(store: Arc<dyn BlobStore>) {
    let data = blob(rand_seed(), 300_000);
    let d = digest(&data);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let body = if i % 2 == 0 {
                    streamed(data, 7_000)
                } else {
                    data.into()
                };
                store.put(&d, body).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every concurrent writer succeeds");
    }
    assert_eq!(get_bytes(store.as_ref(), &d).await.unwrap(), data);
}

fn rand_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

async fn not_found(store: &dyn BlobStore, seed: u64) {
    let d = digest(&blob(seed, 10));
    match store.get(&d, Range::FULL).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("absent blob: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
}

async fn round_trip_and_ranges(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 1000);
    let d = digest(&data);
    store.put(&d, data.clone().into()).await.unwrap();
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    assert_eq!(get_bytes(store, &d).await.unwrap(), data);

    let read = |offset, limit| async move {
        store
            .get(&d, Range { offset, limit })
            .await?
            .collect()
            .await
    };
    assert_eq!(read(0, Some(1)).await.unwrap(), data.slice(0..1));
    assert_eq!(read(999, None).await.unwrap(), data.slice(999..));
    assert_eq!(read(500, Some(10_000)).await.unwrap(), data.slice(500..));
    assert_eq!(read(10, Some(0)).await.unwrap(), data.slice(10..10));
    assert!(read(1000, None).await.unwrap().is_empty(), "offset == len");
    match read(1001, None).await {
        Err(Error::OutOfRange(_)) => {}
        other => panic!("offset past the end: expected OutOfRange, got {other:?}"),
    }
}

async fn empty_blob(store: &dyn BlobStore) {
    let d = digest(b"");
    store.put(&d, Bytes::new().into()).await.unwrap();
    assert!(get_bytes(store, &d).await.unwrap().is_empty());
}

async fn idempotent_put(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 4096);
    let d = digest(&data);
    store.put(&d, data.clone().into()).await.unwrap();
    store.put(&d, streamed(data.clone(), 100)).await.unwrap();
    assert_eq!(get_bytes(store, &d).await.unwrap(), data);
}

async fn find_missing_keeps_order_and_duplicates(store: &dyn BlobStore, seed: u64) {
    let present = blob(seed, 64);
    let dp = digest(&present);
    store.put(&dp, present.into()).await.unwrap();
    let a = digest(&blob(seed + 100, 64));
    let b = digest(&blob(seed + 101, 64));
    let missing = store.find_missing(&[a, dp, b, a, dp]).await.unwrap();
    assert_eq!(missing, vec![a, b, a]);
    assert!(store.find_missing(&[]).await.unwrap().is_empty());
}

async fn large_streamed(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 6 << 20);
    let d = digest(&data);
    store
        .put(&d, streamed(data.clone(), 64 << 10))
        .await
        .unwrap();
    assert_eq!(get_bytes(store, &d).await.unwrap(), data);
    let tail = store
        .get(
            &d,
            Range {
                offset: (5 << 20) + 3,
                limit: Some(1 << 19),
            },
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(tail, data.slice((5 << 20) + 3..(5 << 20) + 3 + (1 << 19)));
}

async fn aborted_stream_leaves_nothing(store: &dyn BlobStore, seed: u64) {
    let data = blob(seed, 200_000);
    let d = digest(&data);
    let chunks = vec![
        Ok(data.slice(0..100_000)),
        Err(Error::Cancelled("client went away".into())),
    ];
    let body = Body::Stream(futures::stream::iter(chunks).boxed());
    assert!(store.put(&d, body).await.is_err(), "aborted put must fail");
    assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
}
