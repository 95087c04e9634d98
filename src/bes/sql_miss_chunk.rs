//! A chunk of misses as stored: JSON with one-letter keys, empty fields
//! left out and the invocation (the chunk's own key) not repeated: about
//! half the bytes of the API's form, and every fresh action-cache write
//! stores one. Chunks written before (the API's field names, each with
//! its invocation) still read.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::insights::misses::{Cause, Miss};

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "i", skip_serializing_if = "str::is_empty")]
    instance: &'a str,
    #[serde(rename = "d")]
    action_digest: &'a str,
    #[serde(rename = "t", skip_serializing_if = "str::is_empty")]
    target: &'a str,
    #[serde(rename = "m", skip_serializing_if = "str::is_empty")]
    mnemonic: &'a str,
    #[serde(rename = "p", skip_serializing_if = "str::is_empty")]
    previous_digest: &'a str,
    #[serde(rename = "v", skip_serializing_if = "str::is_empty")]
    previous_invocation: &'a str,
    #[serde(rename = "c", skip_serializing_if = "<[Cause]>::is_empty")]
    causes: &'a [Cause],
    #[serde(rename = "f", skip_serializing_if = "str::is_empty")]
    digest_function: &'a str,
    #[serde(rename = "s")]
    seen_at: i64,
}

#[derive(Deserialize)]
struct In {
    #[serde(default)]
    invocation: String,
    #[serde(default, rename = "i", alias = "instance")]
    instance: String,
    #[serde(rename = "d", alias = "action_digest")]
    action_digest: String,
    #[serde(default, rename = "t", alias = "target")]
    target: String,
    #[serde(default, rename = "m", alias = "mnemonic")]
    mnemonic: String,
    #[serde(default, rename = "p", alias = "previous_digest")]
    previous_digest: String,
    #[serde(default, rename = "v", alias = "previous_invocation")]
    previous_invocation: String,
    #[serde(default, rename = "c", alias = "causes")]
    causes: Vec<Cause>,
    #[serde(default, rename = "f", alias = "digest_function")]
    digest_function: String,
    #[serde(rename = "s", alias = "seen_at")]
    seen_at: i64,
}

/// `misses`' stored JSON, written into one buffer sized up front (a
/// round's chunk can be hundreds of KiB: growing it by doubling copied it
/// several times).
pub(super) fn encode<'a>(misses: impl ExactSizeIterator<Item = &'a Miss>) -> Result<String> {
    let mut out = Vec::with_capacity(misses.len() * 256 + 2);
    let rows: Vec<Out<'_>> = misses
        .map(|m| Out {
            instance: &m.instance,
            action_digest: &m.action_digest,
            target: &m.target,
            mnemonic: &m.mnemonic,
            previous_digest: &m.previous_digest,
            previous_invocation: &m.previous_invocation,
            causes: &m.causes,
            digest_function: &m.digest_function,
            seen_at: m.seen_at,
        })
        .collect();
    serde_json::to_writer(&mut out, &rows)
        .map_err(|e| Error::internal_from("encoding misses", e))?;
    String::from_utf8(out).map_err(|e| Error::internal_from("encoding misses", e))
}

/// The misses of a chunk of `invocation`, either form; None if it is not
/// one.
pub(super) fn decode(invocation: &str, json: &str) -> Option<Vec<Miss>> {
    let rows: Vec<In> = serde_json::from_str(json).ok()?;
    Some(
        rows.into_iter()
            .map(|r| Miss {
                invocation: if r.invocation.is_empty() {
                    invocation.to_string()
                } else {
                    r.invocation
                },
                instance: r.instance,
                action_digest: r.action_digest,
                target: r.target,
                mnemonic: r.mnemonic,
                previous_digest: r.previous_digest,
                previous_invocation: r.previous_invocation,
                causes: r.causes,
                digest_function: r.digest_function,
                seen_at: r.seen_at,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss(causes: Vec<Cause>) -> Miss {
        Miss {
            invocation: "inv".into(),
            instance: String::new(),
            action_digest: "ab/3".into(),
            target: "//a:\"b\"".into(),
            mnemonic: "Genrule".into(),
            previous_digest: String::new(),
            previous_invocation: String::new(),
            causes,
            digest_function: String::new(),
            seen_at: 7,
        }
    }

    #[test]
    fn a_chunk_reads_back_and_is_smaller_than_the_api_form() {
        let misses = vec![
            miss(Vec::new()),
            miss(vec![Cause::new("env", "PATH", "env PATH changed".into())]),
        ];
        let stored = encode(misses.iter()).unwrap();
        assert_eq!(decode("inv", &stored), Some(misses.clone()));
        let api = serde_json::to_string(&misses).unwrap();
        assert!(stored.len() * 2 < api.len(), "{stored} against {api}");
    }

    #[test]
    fn chunks_stored_in_the_api_form_still_read() {
        let mut old = miss(vec![Cause::new("new", "", "new action".into())]);
        old.invocation = "stored with it".into();
        let json = serde_json::to_string(&[&old]).unwrap();
        assert_eq!(decode("inv", &json), Some(vec![old]));
        assert_eq!(decode("inv", "not json"), None);
    }
}
