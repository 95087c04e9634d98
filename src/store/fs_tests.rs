//! Tests of the fs store: the contract, damaged and truncated files, dropped
//! puts, and the bounded store (eviction, leases, the rebuilt index).

use std::sync::Arc;

use super::*;
use crate::store::contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract() {
    let dir = tempfile::tempdir().unwrap();
    contract::run_all(Arc::new(FsStore::open(dir.path(), 64 << 10, true).unwrap())).await;
    let ac = tempfile::tempdir().unwrap();
    contract::swap_returns_the_replaced_value(&FsStore::open(ac.path(), 64 << 10, false).unwrap())
        .await;
}

#[tokio::test]
async fn survives_reopen_and_clears_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = contract::blob(7, 5000);
    let d = DigestFunction::Sha256.digest_of(&data);
    {
        let store = FsStore::open(dir.path(), 4096, true).unwrap();
        store.put(&d, data.clone().into()).await.unwrap();
        std::fs::write(store.tmp.join("leftover"), b"partial").unwrap();
    }
    let store = FsStore::open(dir.path(), 4096, true).unwrap();
    assert_eq!(crate::store::get_bytes(&store, &d).await.unwrap(), data);
    assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
}

#[tokio::test]
async fn a_dropped_put_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), 4096, true).unwrap();
    // Large enough to be streamed into its temp file (smaller ones are
    // gathered in memory and written whole).
    let d = Digest {
        size: 8 << 20,
        ..DigestFunction::Sha256.digest_of(b"never finished")
    };
    let first = futures::stream::iter([Ok(Bytes::from_static(b"never"))]);
    let body = Body::Stream(first.chain(futures::stream::pending()).boxed());
    {
        let put = store.put(&d, body);
        futures::pin_mut!(put);
        // Drive the put until its temp file exists, as a client reset
        // would find it (polled with a deadline, never a fixed wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(&store.tmp).unwrap().count() == 0 {
            assert!(futures::poll!(put.as_mut()).is_pending());
            assert!(
                std::time::Instant::now() < deadline,
                "no temp file appeared"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 1);
    }
    assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
}

#[tokio::test]
async fn a_file_cut_short_while_streaming_ends_in_an_error() {
    let d = DigestFunction::Sha256.digest_of(b"0123456789");
    let short = futures::stream::iter([Ok(Bytes::from_static(b"01234"))]).boxed();
    let got: Vec<Result<Bytes>> = exactly(short, 10, d).collect().await;
    assert!(got[0].is_ok());
    assert!(
        matches!(got.last(), Some(Err(_))),
        "a short file must not end cleanly"
    );
    let whole = futures::stream::iter([Ok(Bytes::from_static(b"0123456789"))]).boxed();
    let got: Vec<Result<Bytes>> = exactly(whole, 10, d).collect().await;
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn action_cache_values_keep_their_own_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), 4096, false).unwrap();
    let key = DigestFunction::Sha256.digest_of(b"an action");
    store
        .put(
            &key,
            Bytes::from_static(b"a result of another length").into(),
        )
        .await
        .unwrap();
    assert_eq!(
        crate::store::get_bytes(&store, &key).await.unwrap(),
        "a result of another length"
    );
}

fn bounded(
    dir: &Path,
    max: u64,
    hard: u64,
    retention: std::time::Duration,
    segments: bool,
) -> FsStore {
    let limits = Limits {
        max_size: max,
        low_watermark: max / 10 * 9,
        hard_limit: hard,
        min_retention: retention,
    };
    FsStore::open_with(
        dir,
        FsOptions {
            read_chunk: 4096,
            content_addressed: true,
            limits: Some(limits),
            capacity: None,
            segments,
        },
    )
    .unwrap()
}

/// Bytes of blob files and segments on disk (temp files excluded), and
/// the number of segments.
fn disk_usage(root: &Path) -> (u64, u64) {
    let mut total = 0;
    for f in DigestFunction::ALL {
        for shard in std::fs::read_dir(root.join(f.name())).unwrap().flatten() {
            for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
                total += file.metadata().unwrap().len();
            }
        }
    }
    let mut segments = 0;
    if let Ok(entries) = std::fs::read_dir(root.join("segments")) {
        for file in entries.flatten() {
            if file.file_name().to_string_lossy().ends_with(".seg") {
                total += file.metadata().unwrap().len();
                segments += 1;
            }
        }
    }
    (total, segments)
}

/// What the store's records and segment headers add on disk to `blobs`
/// blobs' bytes.
fn overhead(blobs: u64, segments: u64) -> u64 {
    blobs * crate::store::fs_segments::RECORD_HEADER + segments * 8
}

async fn settle(store: &FsStore, max: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.index.totals().0 > max || store.index.is_evicting() {
        assert!(
            std::time::Instant::now() < deadline,
            "eviction never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_store_keeps_to_its_size_and_its_hot_set() {
    keeps_to_its_size_and_its_hot_set(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_store_with_segments_keeps_to_its_size_and_its_hot_set() {
    keeps_to_its_size_and_its_hot_set(true).await;
}

async fn keeps_to_its_size_and_its_hot_set(segments: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (max, blob_size) = (100_000u64, 5_000usize);
    let store = bounded(dir.path(), max, max, std::time::Duration::ZERO, segments);
    let hot: Vec<Bytes> = (0..3)
        .map(|i| contract::blob(1000 + i, blob_size))
        .collect();
    for b in &hot {
        let d = DigestFunction::Sha256.digest_of(b);
        store.put(&d, b.clone().into()).await.unwrap();
    }
    for i in 0..100u64 {
        let b = contract::blob(i, blob_size);
        store
            .put(&DigestFunction::Sha256.digest_of(&b), b.into())
            .await
            .unwrap();
        for h in &hot {
            let d = DigestFunction::Sha256.digest_of(h);
            assert_eq!(crate::store::get_bytes(&store, &d).await.unwrap(), *h);
        }
        settle(&store, max).await;
        // Segments add their records' headers.
        let slack = if segments {
            blob_size as u64 + overhead(100, 20)
        } else {
            blob_size as u64
        };
        let (usage, _) = disk_usage(dir.path());
        assert!(usage <= max + slack, "after put {i}: {usage} on disk");
    }
    let hot_digests: Vec<Digest> = hot
        .iter()
        .map(|h| DigestFunction::Sha256.digest_of(h))
        .collect();
    assert!(
        store.find_missing(&hot_digests).await.unwrap().is_empty(),
        "the hot set stays"
    );
    let (usage, count) = disk_usage(dir.path());
    let (bytes, blobs) = store.index.totals();
    let headers = if segments {
        overhead(blobs as u64, count)
    } else {
        0
    };
    assert_eq!(bytes + headers, usage, "the index matches the disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_blobs_are_leased_until_the_hard_limit() {
    leased_until_the_hard_limit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_blobs_in_segments_are_leased_until_the_hard_limit() {
    leased_until_the_hard_limit(true).await;
}

async fn leased_until_the_hard_limit(segments: bool) {
    let dir = tempfile::tempdir().unwrap();
    let blob_size = 10_000usize;
    // Ten old blobs, written before the store opens (their mtime is
    // their last access): five will be confirmed, five not.
    let old: Vec<Bytes> = (0..10).map(|i| contract::blob(i, blob_size)).collect();
    {
        let store = bounded(dir.path(), 1 << 30, 1 << 30, Default::default(), segments);
        for b in &old {
            store
                .put(&DigestFunction::Sha256.digest_of(b), b.clone().into())
                .await
                .unwrap();
        }
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let mut paths: Vec<PathBuf> = old
            .iter()
            .map(|b| store.path(&DigestFunction::Sha256.digest_of(b)))
            .collect();
        if segments {
            paths = std::fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect();
        }
        for path in paths {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
    }
    let retention = std::time::Duration::from_secs(3600);
    let store = bounded(dir.path(), 100_000, 200_000, retention, segments);
    let digests: Vec<Digest> = old
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    assert!(store.find_missing(&digests[..5]).await.unwrap().is_empty());
    // Fill past max_size: the unconfirmed old ones go, the confirmed stay.
    for i in 0..6u64 {
        let b = contract::blob(100 + i, blob_size);
        store
            .put(&DigestFunction::Sha256.digest_of(&b), b.into())
            .await
            .unwrap();
    }
    // Over max_size but under the hard limit: the pass removes what is
    // not leased and keeps the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.index.absent(&digests[5..]).len() < 5 || store.index.is_evicting() {
        assert!(
            std::time::Instant::now() < deadline,
            "the unconfirmed blobs stayed: {} of 5 gone, totals {:?}, evicting {}",
            store.index.absent(&digests[5..]).len(),
            store.index.totals(),
            store.index.is_evicting()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let gone = store.index.absent(&digests);
    assert!(
        gone.iter().all(|d| digests[5..].contains(d)),
        "only unconfirmed blobs went: {gone:?}"
    );
    assert!(
        store.index.totals().0 > 100_000,
        "leased blobs kept above max_size"
    );
    assert!(!gone.is_empty());
    // Past the hard limit, leased blobs go too (counted as forced).
    for i in 0..20u64 {
        let b = contract::blob(200 + i, blob_size);
        store
            .put(&DigestFunction::Sha256.digest_of(&b), b.into())
            .await
            .unwrap();
    }
    settle(&store, 200_000).await;
    assert!(
        !store.index.absent(&digests[..5]).is_empty(),
        "past the hard limit the oldest go"
    );
}

#[tokio::test]
async fn a_reopened_store_rebuilds_its_index_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000u32;
    // Blob files laid out as the store lays them out (sizes only matter
    // to the index; content is not re-hashed at start).
    let started = std::time::Instant::now();
    let mut digests = Vec::new();
    {
        let store = FsStore::open(dir.path(), 4096, true).unwrap();
        for i in 0..n {
            let mut d = DigestFunction::Sha256.digest_of(&i.to_le_bytes());
            d.size = u64::from(i % 7);
            let path = store.path(&d);
            if let Err(e) = std::fs::write(&path, vec![0u8; d.size as usize]) {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, vec![0u8; d.size as usize]).unwrap();
            }
            digests.push(d);
        }
    }
    let written = started.elapsed();
    let opened = std::time::Instant::now();
    let store = FsStore::open(dir.path(), 4096, true).unwrap();
    let took = opened.elapsed();
    println!("fs index: {n} blobs rebuilt in {took:?} (files written in {written:?})");
    let expected: u64 = digests.iter().map(|d| d.size).sum();
    assert_eq!(store.index.totals(), (expected, n as usize));
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
}

/// A verified file on the store's disk is adopted by a rename (the one
/// write of a large upload); the content-addressed root refuses a file
/// whose hash is not the digest it is stored under.
#[tokio::test]
async fn put_file_adopts_a_file_on_the_same_disk() {
    use crate::store::VerifiedFile;
    use crate::store::content_addressed::ContentAddressed;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path().join("cas"), 4096, true).unwrap());
    let any = crate::digest::DigestFunction::Sha256.digest_of(b"x");
    assert_eq!(store.staging(&any), crate::store::Staging::AdoptedFile);
    let data = contract::blob(11, 300_000);
    let d = DigestFunction::Sha256.digest_of(&data);
    let spool = dir.path().join("spooled");
    std::fs::write(&spool, &data).unwrap();
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&spool).unwrap().ino()
    };
    let cas = ContentAddressed::new(store.clone(), 0);
    let other = DigestFunction::Sha256.digest_of(b"other");
    let err = cas
        .put_file(&other, VerifiedFile::hashed(spool.clone(), d))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(spool.exists(), "a refused file is left to its owner");

    cas.put_file(&d, VerifiedFile::hashed(spool.clone(), d))
        .await
        .unwrap();
    assert!(!spool.exists(), "the file was moved, not copied");
    let stored = blob_path(&store.root, &d);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&stored).unwrap().ino(), inode);
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    assert_eq!(crate::store::get_bytes(&cas, &d).await.unwrap(), data);
}

/// Many puts at once share durability rounds and all land, each readable
/// and indexed, with nothing left in the temp directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_rounds_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path(), 4096, true).unwrap());
    let blobs: Vec<Bytes> = (0..500).map(|i| contract::blob(100 + i, 4096)).collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    futures::future::try_join_all(
        blobs
            .iter()
            .zip(&digests)
            .map(|(b, d)| store.put(d, b.clone().into())),
    )
    .await
    .unwrap();
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    for (b, d) in blobs.iter().zip(&digests) {
        assert_eq!(&crate::store::get_bytes(&*store, d).await.unwrap(), b);
    }
    assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
}

/// Small blobs of a store with segments land in segment files, not files
/// of their own; large ones still get files; both read back after a
/// reopen, and ranges of a small blob are served from its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blobs_go_to_segments_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let open = || bounded(dir.path(), 1 << 30, 1 << 30, Default::default(), true);
    let small: Vec<Bytes> = (0..300).map(|i| contract::blob(i, 4096)).collect();
    let large = contract::blob(999, 300_000);
    let digests: Vec<Digest> = small
        .iter()
        .chain([&large])
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    {
        let store = Arc::new(open());
        futures::future::try_join_all(
            small
                .iter()
                .chain([&large])
                .zip(&digests)
                .map(|(b, d)| store.put(d, b.clone().into())),
        )
        .await
        .unwrap();
        let files = digests.iter().filter(|d| store.path(d).exists()).count();
        assert_eq!(files, 1, "only the large blob has a file of its own");
        let (usage, segments) = disk_usage(dir.path());
        assert_eq!(
            usage,
            300 * 4096 + 300_000 + overhead(300, segments),
            "each small blob stored once"
        );
        // Stored again: nothing new is written.
        store
            .put(&digests[0], small[0].clone().into())
            .await
            .unwrap();
        assert_eq!(disk_usage(dir.path()).0, usage);
    }
    let store = open();
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    for (b, d) in small.iter().chain([&large]).zip(&digests) {
        assert_eq!(&crate::store::get_bytes(&store, d).await.unwrap(), b);
    }
    let range = Range {
        offset: 100,
        limit: Some(50),
    };
    let Body::Bytes(part) = store.get(&digests[5], range).await.unwrap() else {
        panic!("a small blob is read whole");
    };
    assert_eq!(part, small[5].slice(100..150));
}

/// A segment whose tail was torn (a crash while appending): at the next
/// start the whole records stay, the torn one is gone (never reported
/// present), and the store appends after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_segment_keeps_every_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let open = || bounded(dir.path(), 1 << 30, 1 << 30, Default::default(), true);
    let blobs: Vec<Bytes> = (0..10).map(|i| contract::blob(50 + i, 2000)).collect();
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    {
        let store = open();
        for (b, d) in blobs.iter().zip(&digests) {
            store.put(d, b.clone().into()).await.unwrap();
        }
    }
    let segment = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let store = open();
    assert_eq!(
        store.find_missing(&digests).await.unwrap(),
        vec![digests[9]]
    );
    for (b, d) in blobs.iter().zip(&digests).take(9) {
        assert_eq!(&crate::store::get_bytes(&store, d).await.unwrap(), b);
    }
    store
        .put(&digests[9], blobs[9].clone().into())
        .await
        .unwrap();
    drop(store);
    let store = open();
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    assert_eq!(
        crate::store::get_bytes(&store, &digests[9]).await.unwrap(),
        blobs[9]
    );
}

/// The store contract holds with segments too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = bounded(dir.path(), 1 << 30, 1 << 30, Default::default(), true);
    contract::run_all(Arc::new(store)).await;
}

/// A small blob streamed in pieces (a chunk cut from an upload) is written
/// from its pieces; more bytes than its digest says are refused and leave
/// nothing.
#[tokio::test]
async fn a_streamed_small_blob_is_written_from_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path(), 4096, true).unwrap();
    let data = contract::blob(9, 600_000);
    let d = DigestFunction::Sha256.digest_of(&data);
    let pieces = |data: &Bytes| {
        let pieces: Vec<_> = data
            .chunks(100_000)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        Body::Stream(futures::stream::iter(pieces).boxed())
    };
    store.put(&d, pieces(&data)).await.unwrap();
    assert_eq!(crate::store::get_bytes(&store, &d).await.unwrap(), data);
    let other = contract::blob(10, 600_000);
    let short = Digest {
        size: 500_000,
        ..DigestFunction::Sha256.digest_of(&other[..500_000])
    };
    let err = store.put(&short, pieces(&other)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(store.find_missing(&[short]).await.unwrap(), vec![short]);
    assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
}
