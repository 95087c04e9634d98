//! Micro-benchmarks of kiln's hot paths (divan): digest parsing and hashing,
//! the memory store, resource-name parsing. Run: `cargo bench --bench hot_paths`.

use bytes::Bytes;
use kiln::digest::{Digest, DigestFunction};
use kiln::resource::{parse_read, parse_write};
use kiln::store::memory::MemoryStore;
use kiln::store::{BlobStore, Range};

fn main() {
    divan::main();
}

const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[divan::bench]
fn digest_parse() -> Digest {
    Digest::parse(DigestFunction::Sha256, divan::black_box(HASH), 12345).unwrap()
}

#[divan::bench]
fn digest_display(b: divan::Bencher) {
    let d = Digest::parse(DigestFunction::Sha256, HASH, 12345).unwrap();
    b.bench(|| divan::black_box(&d).to_string());
}

#[divan::bench(args = [4 << 10, 1 << 20])]
fn sha256(b: divan::Bencher, len: usize) {
    let data = vec![7u8; len];
    b.counter(divan::counter::BytesCount::new(len))
        .bench(|| DigestFunction::Sha256.digest_of(divan::black_box(&data)));
}

#[divan::bench(args = [4 << 10, 1 << 20])]
fn blake3(b: divan::Bencher, len: usize) {
    let data = vec![7u8; len];
    b.counter(divan::counter::BytesCount::new(len))
        .bench(|| DigestFunction::Blake3.digest_of(divan::black_box(&data)));
}

#[divan::bench]
fn resource_read_name() {
    let name = format!("main/blobs/{HASH}/12345");
    divan::black_box(parse_read(divan::black_box(&name)).unwrap());
}

#[divan::bench]
fn resource_write_name() {
    let name = format!("main/uploads/0f9b2c1e-3d4a-4b5c-8d6e-7f8091a2b3c4/blobs/{HASH}/12345");
    divan::black_box(parse_write(divan::black_box(&name)).unwrap());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[divan::bench]
fn memory_store_put_4k(b: divan::Bencher) {
    let rt = runtime();
    let store = MemoryStore::new(1 << 30);
    let data = Bytes::from(vec![1u8; 4096]);
    let d = DigestFunction::Sha256.digest_of(&data);
    b.bench(|| rt.block_on(store.put(&d, data.clone().into())).unwrap());
}

#[divan::bench]
fn memory_store_get_4k(b: divan::Bencher) {
    let rt = runtime();
    let store = MemoryStore::new(1 << 30);
    let data = Bytes::from(vec![1u8; 4096]);
    let d = DigestFunction::Sha256.digest_of(&data);
    rt.block_on(store.put(&d, data.into())).unwrap();
    b.bench(|| rt.block_on(store.get(&d, Range::FULL)).unwrap());
}

#[divan::bench]
fn memory_store_find_missing_1000(b: divan::Bencher) {
    let rt = runtime();
    let store = MemoryStore::new(1 << 30);
    let digests: Vec<Digest> = (0..1000u32)
        .map(|i| DigestFunction::Sha256.digest_of(&i.to_le_bytes()))
        .collect();
    for d in digests.iter().step_by(2) {
        rt.block_on(store.put(d, Bytes::new().into())).unwrap();
    }
    b.bench(|| rt.block_on(store.find_missing(&digests)).unwrap());
}
