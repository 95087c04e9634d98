//! A chunk of misses as stored: JSON with one-letter keys, empty fields
//! left out and the invocation (the chunk's own key) not repeated: about
//! half the bytes of the API's form, and every fresh action-cache write
//! stores one. Chunks written before (the API's field names, each with
//! its invocation) still read.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::insights::misses::{Cause, Miss, MissKind, Recorded, function_name};

/// A field that holds a digest: the API's text, or a recorded digest
/// written as `hash/size` straight into the chunk.
enum Text<'a> {
    Str(&'a str),
    Digest(Option<&'a Digest>),
}

impl Text<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Text::Str(s) => s.is_empty(),
            Text::Digest(d) => d.is_none(),
        }
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Text::Str(t) => s.serialize_str(t),
            Text::Digest(Some(d)) => s.collect_str(d),
            Text::Digest(None) => s.serialize_str(""),
        }
    }
}

/// The kinds whose causes a stored miss's `"k"` stands for, and their codes
/// (a changed miss has none until it is compared).
const KIND_CODES: [(MissKind, &str); 2] = [(MissKind::New, "n"), (MissKind::Evicted, "e")];

#[derive(Serialize)]
pub(super) struct Out<'a> {
    #[serde(rename = "i", skip_serializing_if = "str::is_empty")]
    instance: &'a str,
    #[serde(rename = "d")]
    action_digest: Text<'a>,
    #[serde(rename = "t", skip_serializing_if = "str::is_empty")]
    target: &'a str,
    #[serde(rename = "m", skip_serializing_if = "str::is_empty")]
    mnemonic: &'a str,
    #[serde(rename = "p", skip_serializing_if = "Text::is_empty")]
    previous_digest: Text<'a>,
    #[serde(rename = "v", skip_serializing_if = "str::is_empty")]
    previous_invocation: &'a str,
    #[serde(rename = "c", skip_serializing_if = "<[Cause]>::is_empty")]
    causes: &'a [Cause],
    /// A recorded miss's kind, which stands for its causes until they are
    /// compared: `n` new, `e` evicted (a changed one has none yet).
    #[serde(rename = "k", skip_serializing_if = "str::is_empty")]
    kind: &'static str,
    #[serde(rename = "f", skip_serializing_if = "str::is_empty")]
    digest_function: &'a str,
    #[serde(rename = "s")]
    seen_at: i64,
}

impl<'a> From<&'a Miss> for Out<'a> {
    fn from(m: &'a Miss) -> Self {
        Out {
            instance: &m.instance,
            action_digest: Text::Str(&m.action_digest),
            target: &m.target,
            mnemonic: &m.mnemonic,
            previous_digest: Text::Str(&m.previous_digest),
            previous_invocation: &m.previous_invocation,
            causes: &m.causes,
            kind: "",
            digest_function: &m.digest_function,
            seen_at: m.seen_at,
        }
    }
}

impl<'a> From<&'a Recorded> for Out<'a> {
    fn from(r: &'a Recorded) -> Self {
        Out {
            instance: &r.instance,
            action_digest: Text::Digest(Some(&r.action)),
            target: &r.writer.target,
            mnemonic: &r.writer.mnemonic,
            previous_digest: Text::Digest(r.previous.as_ref().map(|p| &p.0)),
            previous_invocation: r.previous.as_ref().map_or("", |p| &p.1),
            causes: &[],
            kind: KIND_CODES
                .iter()
                .find(|(k, _)| *k == r.kind)
                .map_or("", |(_, code)| code),
            digest_function: function_name(r.action.function),
            seen_at: r.seen_at,
        }
    }
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
    #[serde(default, rename = "k")]
    kind: String,
    #[serde(default, rename = "f", alias = "digest_function")]
    digest_function: String,
    #[serde(rename = "s", alias = "seen_at")]
    seen_at: i64,
}

/// A chunk's stored JSON, of misses as the API has them (`Miss`, their
/// causes compared) or as recorded (`Recorded`), written into one buffer
/// sized up front (a round's chunk can be hundreds of KiB: growing it by
/// doubling copied it several times).
pub(super) fn encode<'a, T: 'a>(misses: impl ExactSizeIterator<Item = &'a T>) -> Result<String>
where
    Out<'a>: From<&'a T>,
{
    let mut out = Vec::with_capacity(misses.len() * 256 + 2);
    let rows: Vec<Out<'_>> = misses.map(Out::from).collect();
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
                causes: match KIND_CODES.iter().find(|(_, code)| *code == r.kind) {
                    Some((kind, _)) if r.causes.is_empty() => kind.causes(),
                    _ => r.causes,
                },
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
    fn recorded_misses_read_back_with_their_kinds_causes() {
        use crate::digest::DigestFunction;
        let writer = crate::insights::Writer {
            invocation: "inv".into(),
            target: "//a:b".into(),
            mnemonic: "CppCompile".into(),
        };
        let (a, b) = (
            DigestFunction::Blake3.digest_of(b"a"),
            DigestFunction::Blake3.digest_of(b"b"),
        );
        let recorded = |kind, previous: Option<(Digest, &str)>| Recorded {
            instance: "i".into(),
            action: a,
            writer: writer.clone(),
            kind,
            previous: previous.map(|(d, i)| (d, i.into())),
            seen_at: 9,
        };
        let rows = [
            recorded(MissKind::New, None),
            recorded(MissKind::Evicted, Some((a, "earlier"))),
            recorded(MissKind::Changed, Some((b, ""))),
        ];
        let read = decode("inv", &encode(rows.iter()).unwrap()).unwrap();
        let causes: Vec<Vec<Cause>> = read.iter().map(|m| m.causes.clone()).collect();
        assert_eq!(
            causes,
            [
                MissKind::New.causes(),
                MissKind::Evicted.causes(),
                Vec::new()
            ]
        );
        assert_eq!(read[1].previous_digest, a.to_string());
        assert_eq!(read[1].previous_invocation, "earlier");
        assert_eq!(read[2].previous_digest, b.to_string());
        for m in &read {
            assert_eq!(
                (
                    m.invocation.as_str(),
                    m.instance.as_str(),
                    m.action_digest.as_str()
                ),
                ("inv", "i", a.to_string().as_str())
            );
            assert_eq!(
                (m.target.as_str(), m.mnemonic.as_str()),
                ("//a:b", "CppCompile")
            );
            assert_eq!((m.digest_function.as_str(), m.seen_at), ("blake3", 9));
        }
        assert_eq!(read[0].previous_digest, "");
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
