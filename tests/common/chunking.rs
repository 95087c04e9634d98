//! REAPI 2.12's SplitBlob and SpliceBlob driven by a generated client, the
//! same checks on whatever backend a test boots kiln on: the chunks a
//! chunk-aware client computes itself are the server's, a second version
//! of a large blob travels as the chunks it changed, and every refusal is
//! the status the protocol lists.

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};
use kiln::digest::Digest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchUpdateBlobsRequest, SpliceBlobRequest, SplitBlobRequest, batch_update_blobs_request,
    chunking_function,
};
use tonic::Code;
use tonic::transport::Channel;

use super::{Kiln, blob, missing, sha};

/// `yaml` (one instance) with chunked storage switched on.
pub fn chunked(yaml: &str) -> String {
    let marker = "    action_cache:";
    assert!(yaml.contains(marker), "{yaml}");
    yaml.replacen(
        marker,
        &format!("    chunking: {{ store: true }}\n{marker}"),
        1,
    )
}

/// Writes `data` through ByteStream in 64 KiB messages.
pub async fn write(kiln: &Kiln, data: &Bytes) -> Digest {
    let d = sha(data);
    let name = format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4());
    let msgs: Vec<WriteRequest> = (0..data.len())
        .step_by(64 << 10)
        .map(|at| {
            let end = (at + (64 << 10)).min(data.len());
            WriteRequest {
                resource_name: if at == 0 { name.clone() } else { String::new() },
                write_offset: at as i64,
                finish_write: end == data.len(),
                data: data.slice(at..end),
            }
        })
        .collect();
    let mut bs = ByteStreamClient::new(kiln.channel().await);
    bs.write(tokio_stream::iter(msgs)).await.unwrap();
    d
}

/// Reads a whole blob through ByteStream.
pub async fn read(kiln: &Kiln, d: &Digest) -> Vec<u8> {
    let mut bs = ByteStreamClient::new(kiln.channel().await);
    let mut stream = bs
        .read(ReadRequest {
            resource_name: format!("blobs/{d}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.extend_from_slice(&msg.data);
    }
    out
}

/// The chunks a client cuts with FAST_CDC_2020 at `avg`, straight from the
/// fastcdc crate (the protocol's reference), not from kiln's code.
pub fn fastcdc_chunks(data: &[u8], avg: usize, seed: u32) -> Vec<Bytes> {
    FastCDC::with_level_and_seed(
        data,
        avg / 4,
        avg,
        avg * 4,
        Normalization::Level2,
        u64::from(seed),
    )
    .map(|c| Bytes::copy_from_slice(&data[c.offset..c.offset + c.length]))
    .collect()
}

/// SplitBlob of `d` with `function`: the chunks' digests, or the status.
pub async fn split(
    cas: &mut ContentAddressableStorageClient<Channel>,
    d: &Digest,
    function: chunking_function::Value,
) -> Result<Vec<Digest>, tonic::Status> {
    let r = cas
        .split_blob(SplitBlobRequest {
            blob_digest: Some(d.to_proto()),
            chunking_function: function as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    if function != chunking_function::Value::Unknown {
        assert_eq!(r.chunking_function, function as i32);
    }
    Ok(r.chunk_digests
        .iter()
        .map(|c| kiln::digest::Digest::parse(d.function, &c.hash, c.size_bytes).unwrap())
        .collect())
}

async fn splice(
    cas: &mut ContentAddressableStorageClient<Channel>,
    d: &Digest,
    chunks: &[Digest],
) -> Result<(), tonic::Status> {
    let r = cas
        .splice_blob(SpliceBlobRequest {
            blob_digest: Some(d.to_proto()),
            chunk_digests: chunks.iter().map(Digest::to_proto).collect(),
            chunking_function: chunking_function::Value::FastCdc2020 as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.blob_digest, Some(d.to_proto()));
    Ok(())
}

async fn upload(cas: &mut ContentAddressableStorageClient<Channel>, blobs: &[&Bytes]) {
    for group in blobs.chunks(1) {
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: group
                    .iter()
                    .map(|b| batch_update_blobs_request::Request {
                        digest: Some(sha(b).to_proto()),
                        data: (*b).clone(),
                        compressor: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for response in r.responses {
            assert_eq!(response.status.unwrap().code, 0);
        }
    }
}

/// Everything SplitBlob and SpliceBlob promise, on the default instance
/// with the default chunking settings.
pub async fn split_and_splice(kiln: &Kiln) {
    let caps = kiln.server_capabilities().await.cache_capabilities.unwrap();
    assert!(caps.split_blob_support && caps.splice_blob_support);
    let fast = caps.fast_cdc_2020_params.expect("FastCDC advertised");
    assert_eq!((fast.avg_chunk_size_bytes, fast.seed), (512 << 10, 0));
    let rep = caps.rep_max_cdc_params.expect("RepMaxCDC advertised");
    assert_eq!(
        (rep.min_chunk_size_bytes, rep.horizon_size_bytes),
        (256 << 10, 2 << 20)
    );
    let avg = fast.avg_chunk_size_bytes as usize;
    let mut cas = kiln.cas().await;

    // A plain client's upload; a chunk-aware one asks how it splits.
    let v1 = blob(29, 12 << 20);
    let d1 = write(kiln, &v1).await;
    let expected: Vec<Digest> = fastcdc_chunks(&v1, avg, 0).iter().map(|c| sha(c)).collect();
    assert!(expected.len() > 8, "{} chunks", expected.len());
    for function in [
        chunking_function::Value::FastCdc2020,
        chunking_function::Value::Unknown,
    ] {
        let chunks = split(&mut cas, &d1, function).await.unwrap();
        assert_eq!(chunks, expected, "{function:?}: the reference's cut points");
    }
    assert!(missing(&mut cas, &expected).await.is_empty());
    let mut joined = Vec::new();
    for c in &expected {
        joined.extend_from_slice(&super::read_one(&mut cas, c).await.data);
    }
    assert!(joined == v1[..], "the chunks concatenate to the blob");

    let rep_chunks = split(&mut cas, &d1, chunking_function::Value::RepMaxCdc)
        .await
        .unwrap();
    assert_eq!(rep_chunks.iter().map(|c| c.size).sum::<u64>(), d1.size);
    for c in &rep_chunks {
        let min = rep.min_chunk_size_bytes;
        assert!((min..2 * min).contains(&c.size), "RepMaxCDC chunk of {c}");
    }
    assert!(missing(&mut cas, &rep_chunks).await.is_empty());

    // Version 2: 1 KiB changed in the middle. The client uploads only the
    // chunks the server lacks, then splices.
    let mut v2 = v1.to_vec();
    v2[6 << 20..(6 << 20) + 1024].copy_from_slice(&blob(31, 1024));
    let v2 = Bytes::from(v2);
    let d2 = sha(&v2);
    let chunks2 = fastcdc_chunks(&v2, avg, 0);
    let digests2: Vec<Digest> = chunks2.iter().map(|c| sha(c)).collect();
    let lacking = missing(&mut cas, &digests2).await;
    assert!(
        (1..=3).contains(&lacking.len()),
        "{} of {} chunks to upload",
        lacking.len(),
        digests2.len()
    );
    let to_send: Vec<&Bytes> = chunks2
        .iter()
        .filter(|c| lacking.contains(&sha(c).to_proto()))
        .collect();
    upload(&mut cas, &to_send).await;
    splice(&mut cas, &d2, &digests2).await.unwrap();
    assert!(
        read(kiln, &d2).await == v2[..],
        "the spliced blob reads back"
    );
    // Again: the blob is there, nothing to do.
    splice(&mut cas, &d2, &digests2).await.unwrap();

    // Refusals.
    let absent = sha(b"never stored");
    let e = split(&mut cas, &absent, chunking_function::Value::FastCdc2020)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = cas
        .split_blob(SplitBlobRequest {
            blob_digest: Some(d1.to_proto()),
            chunking_function: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let v3 = blob(37, 3 << 20);
    let d3 = sha(&v3);
    let chunks3 = fastcdc_chunks(&v3, avg, 0);
    let digests3: Vec<Digest> = chunks3.iter().map(|c| sha(c)).collect();
    // A chunk not uploaded: NOT_FOUND naming it, nothing stored.
    upload(&mut cas, &chunks3.iter().skip(1).collect::<Vec<_>>()).await;
    let e = splice(&mut cas, &d3, &digests3).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&digests3[0].to_string()), "{e:?}");
    // Sizes that do not add up to the blob's.
    let e = splice(&mut cas, &d3, &digests3[1..]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("expected"), "{e:?}");
    // Stored chunks whose bytes are not the blob's: verified, refused.
    upload(&mut cas, &[&chunks3[0]]).await;
    let mut swapped = digests3.clone();
    swapped.swap(0, 1);
    let e = splice(&mut cas, &d3, &swapped).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(missing(&mut cas, &[d3]).await.len(), 1, "nothing stored");
    splice(&mut cas, &d3, &digests3).await.unwrap();
    assert!(read(kiln, &d3).await == v3[..]);
}

/// Three versions of a large artifact, each 1 KiB different from the last
/// in the middle, uploaded plainly through ByteStream: the second and third
/// add only the chunks their edit touched, and all three read back whole.
pub async fn plain_versions_share_chunks(kiln: &Kiln) {
    const SIZE: usize = 32 << 20;
    let stored =
        |text: &str| super::metric_sum(text, "kiln_chunked_bytes_total", &[("kind", "stored")]);
    let logical =
        |text: &str| super::metric_sum(text, "kiln_chunked_bytes_total", &[("kind", "logical")]);
    let mut version = blob(41, SIZE).to_vec();
    let mut digests = Vec::new();
    let mut added = Vec::new();
    for v in 0..3u64 {
        if v > 0 {
            let at = SIZE / 2 + (v as usize) * 4096;
            version[at..at + 1024].copy_from_slice(&blob(43 + v, 1024));
        }
        let before = stored(&super::scrape(kiln.server.http_addr).await);
        let data = Bytes::from(version.clone());
        digests.push((write(kiln, &data).await, data));
        added.push(stored(&super::scrape(kiln.server.http_addr).await) - before);
    }
    let text = super::scrape(kiln.server.http_addr).await;
    assert_eq!(logical(&text), 3.0 * SIZE as f64, "{text}");
    assert!(
        added[0] >= SIZE as f64,
        "the first version is stored: {added:?}"
    );
    for a in &added[1..] {
        assert!(
            *a <= 0.15 * SIZE as f64,
            "a 1 KiB edit added {a} bytes of a {SIZE}-byte blob: {added:?}"
        );
    }
    for (d, data) in &digests {
        assert!(read(kiln, d).await == data[..], "version {d} reads back");
    }
}
