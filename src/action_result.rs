//! Domain logic around cached ActionResults: the completeness check (every
//! blob a result points at must still be in the CAS, or the result is as good
//! as absent) and inlining of small outputs on request.

use bytes::Bytes;
use prost::Message;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi::{ActionResult, Directory, Tree};
use crate::store::{BlobStore, Range, get_bytes, get_parsed_blob};
use crate::tree;

/// Total bytes inlined into one GetActionResult response: far enough below
/// the 4 MiB gRPC message limit most clients keep.
pub const INLINE_BUDGET: u64 = 1 << 20;

/// Every CAS blob `result` refers to, reading output directory trees from
/// `cas`. `None` when a tree blob itself is gone (the result is incomplete).
pub async fn referenced_blobs(
    cas: &dyn BlobStore,
    function: DigestFunction,
    result: &ActionResult,
    limits: tree::WalkLimits,
) -> Result<Option<Vec<Digest>>> {
    let parse =
        |d: Option<&crate::proto::reapi::Digest>, what: &str| Digest::from_proto(function, d, what);
    let mut blobs = Vec::new();
    for f in &result.output_files {
        blobs.push(parse(f.digest.as_ref(), "output file")?);
    }
    for d in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        blobs.push(parse(Some(d), "stdout/stderr")?);
    }
    for dir in &result.output_directories {
        let directories = if let Some(td) = &dir.tree_digest {
            let tree_digest = parse(Some(td), "tree")?;
            let bytes = match get_parsed_blob(cas, &tree_digest, limits.max_total).await {
                Ok(b) => b,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            blobs.push(tree_digest);
            let tree = Tree::decode(bytes)?;
            tree.root
                .into_iter()
                .chain(tree.children)
                .collect::<Vec<Directory>>()
        } else if let Some(rd) = &dir.root_directory_digest {
            let root = parse(Some(rd), "root directory")?;
            match tree::complete_directories(cas, root, limits).await? {
                Some(directories) => directories,
                None => return Ok(None),
            }
        } else {
            return Err(Error::InvalidArgument(format!(
                "output directory {:?} has no tree digest",
                dir.path
            )));
        };
        for d in &directories {
            for f in &d.files {
                blobs.push(parse(f.digest.as_ref(), "file in output directory")?);
            }
        }
    }
    Ok(Some(blobs))
}

/// Checks that every digest in `result` is well-formed, so a broken result
/// is refused on upload rather than failing every later read.
pub fn validate(function: DigestFunction, result: &ActionResult) -> Result<()> {
    let check = |d: &crate::proto::reapi::Digest, what: &str| {
        Digest::from_proto(function, Some(d), what).map(|_| ())
    };
    for f in &result.output_files {
        let d = f.digest.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("output file {:?} has no digest", f.path))
        })?;
        check(d, "output file")?;
    }
    for d in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        check(d, "stdout/stderr")?;
    }
    for dir in &result.output_directories {
        if dir.tree_digest.is_none() && dir.root_directory_digest.is_none() {
            return Err(Error::InvalidArgument(format!(
                "output directory {:?} has no tree digest",
                dir.path
            )));
        }
        for d in [&dir.tree_digest, &dir.root_directory_digest]
            .into_iter()
            .flatten()
        {
            check(d, "output directory")?;
        }
    }
    Ok(())
}

/// True when every blob `result` refers to is in `cas`.
pub async fn is_complete(
    cas: &dyn BlobStore,
    function: DigestFunction,
    result: &ActionResult,
    limits: tree::WalkLimits,
) -> Result<bool> {
    match referenced_blobs(cas, function, result, limits).await? {
        None => Ok(false),
        Some(blobs) => Ok(cas.find_missing(&blobs).await?.is_empty()),
    }
}

/// Stores `result` as `action`'s result: the one way every writer (the
/// action cache, the HTTP cache, a finished execution) puts a result, so
/// the insights see each one beside the result it replaces.
pub async fn store(
    instance: &crate::instance::Instance,
    action: &Digest,
    result: &ActionResult,
    writer: crate::insights::Writer,
) -> Result<()> {
    let encoded = Bytes::from(result.encode_to_vec());
    let Some(insights) = &instance.insights else {
        return instance.action_cache.put(action, encoded.into()).await;
    };
    // The result it replaces, in the same call: an entry that cannot be
    // read is only an entry not compared.
    let before = instance
        .action_cache
        .swap(action, encoded, instance.settings.max_parsed_blob)
        .await?
        .and_then(|bytes| ActionResult::decode(bytes).ok());
    insights.note(&writer, crate::insights::scorecard::Seen::Upload);
    if before.is_none() {
        insights.result_missed(&instance.name, *action, result, writer.clone());
    }
    insights
        .result_written(&instance.name, action, before.as_ref(), result, writer)
        .await;
    Ok(())
}

/// The cached result of `action` in `instance`, or None: absent, undecodable
/// or (with the completeness check on) pointing at blobs no longer stored.
/// GetActionResult and Execute's cache lookup share this.
pub async fn lookup(
    instance: &crate::instance::Instance,
    action: &Digest,
) -> Result<Option<ActionResult>> {
    let max = instance.settings.max_parsed_blob;
    let stored = async {
        let body = instance.action_cache.get(action, Range::FULL).await?;
        body.collect_max(max).await
    };
    let bytes = match stored.await {
        Err(Error::NotFound(_)) => return Ok(None),
        other => other?,
    };
    let Ok(result) = ActionResult::decode(bytes) else {
        tracing::warn!(%action, "undecodable action cache entry; treating as a miss");
        return Ok(None);
    };
    if instance.settings.completeness_check
        && !is_complete(
            instance.cas.as_ref(),
            action.function,
            &result,
            instance.settings.walk,
        )
        .await?
    {
        tracing::debug!(%action, "action result refers to blobs no longer in the CAS");
        return Ok(None);
    }
    if let Some(insights) = &instance.insights {
        insights.result_hit(&instance.name, *action, &result);
    }
    Ok(Some(result))
}

/// What a client asked to have inlined.
#[derive(Debug, Default)]
pub struct Inline<'a> {
    /// Inline stdout.
    pub stdout: bool,
    /// Inline stderr.
    pub stderr: bool,
    /// Output file paths to inline.
    pub files: &'a [String],
}

/// Fills in the requested raw contents, smallest-first within
/// [`INLINE_BUDGET`]; what does not fit stays a digest, as REAPI allows.
pub async fn inline(
    cas: &dyn BlobStore,
    function: DigestFunction,
    result: &mut ActionResult,
    want: Inline<'_>,
) -> Result<()> {
    let mut budget = INLINE_BUDGET;
    let mut fetch = async |d: &Option<crate::proto::reapi::Digest>| -> Result<Option<Bytes>> {
        let Some(d) = d else { return Ok(None) };
        let digest = Digest::from_proto(function, Some(d), "output")?;
        if digest.size > budget {
            return Ok(None);
        }
        budget -= digest.size;
        Ok(Some(get_bytes(cas, &digest).await?))
    };
    if want.stdout
        && let Some(b) = fetch(&result.stdout_digest).await?
    {
        result.stdout_raw = b;
    }
    if want.stderr
        && let Some(b) = fetch(&result.stderr_digest).await?
    {
        result.stderr_raw = b;
    }
    let mut files: Vec<&mut crate::proto::reapi::OutputFile> = result
        .output_files
        .iter_mut()
        .filter(|f| want.files.contains(&f.path))
        .collect();
    files.sort_by_key(|f| f.digest.as_ref().map_or(0, |d| d.size_bytes));
    for f in files {
        if let Some(b) = fetch(&f.digest).await? {
            f.contents = b;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{FileNode, OutputDirectory, OutputFile};
    use crate::store::memory::MemoryStore;

    async fn put(store: &MemoryStore, data: &[u8]) -> Digest {
        let d = DigestFunction::Sha256.digest_of(data);
        store
            .put(&d, Bytes::copy_from_slice(data).into())
            .await
            .unwrap();
        d
    }

    fn file_node(d: &Digest) -> FileNode {
        FileNode {
            name: "f".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn completeness_follows_files_logs_and_trees() {
        let f = DigestFunction::Sha256;
        let cas = MemoryStore::new(1 << 20);
        let out = put(&cas, b"output").await;
        let log = put(&cas, b"stdout").await;
        let in_tree = put(&cas, b"in tree").await;
        let tree = Tree {
            root: Some(Directory {
                files: vec![file_node(&in_tree)],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree_d = put(&cas, &tree.encode_to_vec()).await;
        let mut result = ActionResult {
            output_files: vec![OutputFile {
                path: "o".into(),
                digest: Some(out.to_proto()),
                ..Default::default()
            }],
            stdout_digest: Some(log.to_proto()),
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(tree_d.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            is_complete(&cas, f, &result, tree::WalkLimits::default())
                .await
                .unwrap()
        );

        // A file inside the tree goes missing.
        let gone = f.digest_of(b"never uploaded");
        let tree2 = Tree {
            root: Some(Directory {
                files: vec![file_node(&gone)],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree2_d = put(&cas, &tree2.encode_to_vec()).await;
        result.output_directories[0].tree_digest = Some(tree2_d.to_proto());
        assert!(
            !is_complete(&cas, f, &result, tree::WalkLimits::default())
                .await
                .unwrap()
        );

        // The tree blob itself goes missing.
        result.output_directories[0].tree_digest = Some(gone.to_proto());
        assert!(
            !is_complete(&cas, f, &result, tree::WalkLimits::default())
                .await
                .unwrap()
        );

        // A plain output file goes missing.
        result.output_directories.clear();
        result.output_files[0].digest = Some(gone.to_proto());
        assert!(
            !is_complete(&cas, f, &result, tree::WalkLimits::default())
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn inlines_what_was_asked_within_budget() {
        let f = DigestFunction::Sha256;
        let cas = MemoryStore::new(8 << 20);
        let small = put(&cas, b"small file").await;
        let big_data = vec![1u8; (INLINE_BUDGET + 1) as usize];
        let big = put(&cas, &big_data).await;
        let log = put(&cas, b"hello").await;
        let mut result = ActionResult {
            output_files: vec![
                OutputFile {
                    path: "small".into(),
                    digest: Some(small.to_proto()),
                    ..Default::default()
                },
                OutputFile {
                    path: "big".into(),
                    digest: Some(big.to_proto()),
                    ..Default::default()
                },
                OutputFile {
                    path: "unasked".into(),
                    digest: Some(small.to_proto()),
                    ..Default::default()
                },
            ],
            stdout_digest: Some(log.to_proto()),
            stderr_digest: Some(log.to_proto()),
            ..Default::default()
        };
        let files = vec!["small".to_string(), "big".to_string()];
        inline(
            &cas,
            f,
            &mut result,
            Inline {
                stdout: true,
                stderr: false,
                files: &files,
            },
        )
        .await
        .unwrap();
        assert_eq!(result.stdout_raw, "hello");
        assert!(result.stderr_raw.is_empty());
        assert_eq!(result.output_files[0].contents, "small file");
        assert!(
            result.output_files[1].contents.is_empty(),
            "over budget stays a digest"
        );
        assert!(result.output_files[2].contents.is_empty());
    }
}
