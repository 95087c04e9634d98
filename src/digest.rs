//! Content digests: the key of every CAS blob and action-cache entry.
//!
//! A [`Digest`] is a small `Copy` value that carries its digest function, so no
//! code depends on ambient state to know which hash is in use. Kiln serves
//! SHA-256 (the REAPI default) and BLAKE3 (~15x faster to verify here); both
//! are 32 bytes, so the hash is stored inline.

use std::fmt;

/// A malformed digest or digest function in a request: what was wrong,
/// with the expected form. `crate::error` turns it into INVALID_ARGUMENT
/// (digest sits below the error type, so it names no error of its own
/// beyond this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDigest(pub String);

type Result<T> = std::result::Result<T, InvalidDigest>;
use crate::proto::reapi;

/// The hash functions kiln verifies content with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    /// SHA-256, what Bazel uses unless told otherwise.
    Sha256,
    /// BLAKE3 (`--digest_function=blake3` in newer Bazel).
    Blake3,
    /// REAPI 2.12's GITSHA1: git's blob object id, the SHA-1 of
    /// `blob {size}\0` and the content (20 bytes, kept in the first 20 of
    /// the hash), so a client can name files by the ids git already has.
    GitSha1,
}

impl DigestFunction {
    /// Every function kiln serves, in the order Capabilities advertises them.
    pub const ALL: [DigestFunction; 3] = [
        DigestFunction::Sha256,
        DigestFunction::Blake3,
        DigestFunction::GitSha1,
    ];

    /// The lowercase name used in resource names and storage paths.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
            DigestFunction::GitSha1 => "gitsha1",
        }
    }

    /// Bytes of its hashes (the rest of [`Digest::hash`] is zero).
    pub fn hash_len(self) -> usize {
        match self {
            DigestFunction::Sha256 | DigestFunction::Blake3 => 32,
            DigestFunction::GitSha1 => 20,
        }
    }

    /// The REAPI enum value.
    pub fn to_proto(self) -> reapi::digest_function::Value {
        match self {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256,
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3,
            DigestFunction::GitSha1 => reapi::digest_function::Value::Gitsha1,
        }
    }

    /// Maps a request's `digest_function` field; UNKNOWN (unset) means "infer",
    /// which for a 64-hex-digit hash is SHA-256 as the spec prescribes.
    pub fn from_proto(value: i32) -> Result<Self> {
        use reapi::digest_function::Value;
        match Value::try_from(value) {
            Ok(Value::Unknown | Value::Sha256) => Ok(DigestFunction::Sha256),
            Ok(Value::Blake3) => Ok(DigestFunction::Blake3),
            Ok(Value::Gitsha1) => Ok(DigestFunction::GitSha1),
            Ok(other) => Err(InvalidDigest(format!(
                "digest function {} is not supported (supported: sha256, blake3, gitsha1)",
                other.as_str_name()
            ))),
            Err(_) => Err(InvalidDigest(format!(
                "unknown digest function value {value}"
            ))),
        }
    }

    /// Parses the optional `digest_function/` segment of a resource name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestFunction::Sha256),
            "blake3" => Some(DigestFunction::Blake3),
            "gitsha1" => Some(DigestFunction::GitSha1),
            _ => None,
        }
    }

    /// Starts an incremental hash of `size` bytes arriving in pieces (the
    /// size is part of what GITSHA1 hashes, first; a different length in
    /// the end yields a digest that matches nothing expected).
    pub fn hasher(self, size: u64) -> Hasher {
        Hasher::new(self, size)
    }

    /// Whether content of a size not known in advance can be hashed
    /// (GITSHA1 hashes the size first).
    pub fn hashes_unsized(self) -> bool {
        self != DigestFunction::GitSha1
    }

    /// The digest of `data` under this function.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher(data.len() as u64);
        hasher.update(data);
        hasher.finish()
    }

    /// The digest of the empty blob, which every CAS must treat as present.
    pub fn empty(self) -> Digest {
        self.digest_of(&[])
    }
}

/// A content digest: function, 32-byte hash and size in bytes.
///
/// Its `Hash` covers the function and hash only (equality covers the size
/// too), so a map keyed by `Digest` can also be searched by [`HashKey`]:
/// protocols that name blobs by hash alone need that lookup.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest {
    /// Which function produced `hash`.
    pub function: DigestFunction,
    /// The raw hash bytes.
    pub hash: [u8; 32],
    /// The blob's size; part of its identity, as REAPI requires.
    pub size: u64,
}

/// How the stores' maps and caches hash their digest keys: keyed per
/// process (an action-cache key is any 32 bytes a client picks, so the
/// hash must not be guessable) but several times cheaper than std's
/// SipHash, which was a tenth of a small-blob batch's CPU.
pub type KeyHasher = foldhash::quality::RandomState;

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        HashKey::of(self).hash(state);
    }
}

/// A digest without its size: what Bazel's HTTP cache protocol names a
/// blob or an action by. Equivalent to every [`Digest`] with the same
/// function and hash, and hashed the same way, so maps and moka caches
/// keyed by `Digest` answer lookups by it without a second index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HashKey {
    /// Which function produced `hash`.
    pub function: DigestFunction,
    /// The raw hash bytes.
    pub hash: [u8; 32],
}

impl HashKey {
    /// The function and hash of `digest`.
    pub fn of(digest: &Digest) -> Self {
        HashKey {
            function: digest.function,
            hash: digest.hash,
        }
    }

    /// The digest of a blob of `size` bytes with this hash.
    pub fn with_size(self, size: u64) -> Digest {
        Digest {
            function: self.function,
            hash: self.hash,
            size,
        }
    }

    /// Parses a lowercase hex hash of `function`'s length.
    pub fn parse(function: DigestFunction, hex: &str) -> Result<Self> {
        let hash = decode_hash(hex.as_bytes(), function.hash_len()).ok_or_else(|| {
            InvalidDigest(format!(
                "hash {hex:?} must be {} lowercase hex digits for {}",
                2 * function.hash_len(),
                function.name()
            ))
        })?;
        Ok(HashKey { function, hash })
    }
}

impl equivalent::Equivalent<Digest> for HashKey {
    fn equivalent(&self, key: &Digest) -> bool {
        key.function == self.function && key.hash == self.hash
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX_DIGITS[i >> 4], HEX_DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// Each byte's value as a lowercase hex digit, or 0xff: digests are parsed
/// by the thousand per FindMissingBlobs call, so this is a table lookup per
/// character with one check at the end, not a branch per character.
const NIBBLES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The `len` bytes spelled by `2 * len` lowercase hex digits, zero-padded
/// to 32, or `None`.
fn decode_hash(hex: &[u8], len: usize) -> Option<[u8; 32]> {
    if hex.len() != 2 * len {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let (hi, lo) = (NIBBLES[pair[0] as usize], NIBBLES[pair[1] as usize]);
        bad |= hi | lo;
        out[i] = (hi << 4) | (lo & 0xf);
    }
    (bad & 0xf0 == 0).then_some(out)
}

impl Digest {
    /// Parses a lowercase 64-hex-digit hash and a size.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Self> {
        if size < 0 {
            return Err(InvalidDigest(format!(
                "digest {hash}/{size}: size must not be negative"
            )));
        }
        let Some(bytes) = decode_hash(hash.as_bytes(), function.hash_len()) else {
            return Err(InvalidDigest(format!(
                "digest {hash}/{size}: hash must be {} lowercase hex digits for {}",
                2 * function.hash_len(),
                function.name()
            )));
        };
        Ok(Digest {
            function,
            hash: bytes,
            size: size as u64,
        })
    }

    /// Converts a protocol digest; a missing one is INVALID_ARGUMENT naming `what`.
    pub fn from_proto(
        function: DigestFunction,
        digest: Option<&reapi::Digest>,
        what: &str,
    ) -> Result<Self> {
        let digest = digest.ok_or_else(|| InvalidDigest(format!("{what} digest is missing")))?;
        Self::parse(function, &digest.hash, digest.size_bytes)
    }

    /// The protocol form.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        self.with_hex(str::to_string)
    }

    /// Calls `f` with the hash as lowercase hex, built on the stack: two
    /// digits per byte from one table, no capacity check per digit (this
    /// runs for every digest answered or displayed).
    fn with_hex<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.hash) {
            pair.copy_from_slice(&HEX_PAIRS[b as usize]);
        }
        f(
            std::str::from_utf8(&out[..2 * self.function.hash_len()])
                .expect("hex digits are ASCII"),
        )
    }

    /// True for the empty blob, which is always present.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == self.function.empty()
    }
}

impl fmt::Display for Digest {
    /// `hash/size`, the form REAPI uses in resource names and error subjects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_hex(|hex| write!(f, "{hex}/{}", self.size))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.function.name(), self)
    }
}

/// An in-progress hash; feed it with [`Hasher::update`], then [`Hasher::finish`].
/// It counts bytes too, so the result is a complete [`Digest`].
pub struct Hasher {
    state: HashState,
    len: u64,
}

enum HashState {
    /// aws-lc's SHA-256 (~2x the sha2 crate on this machine).
    Sha256(aws_lc_rs::digest::Context),
    /// The BLAKE3 reference implementation (SIMD).
    Blake3(Box<blake3::Hasher>),
    /// aws-lc's SHA-1, fed git's blob header first.
    GitSha1(aws_lc_rs::digest::Context),
}

impl Hasher {
    fn new(function: DigestFunction, size: u64) -> Self {
        let state = match function {
            DigestFunction::Sha256 => {
                HashState::Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
            }
            DigestFunction::Blake3 => HashState::Blake3(Box::new(blake3::Hasher::new())),
            DigestFunction::GitSha1 => {
                let mut ctx =
                    aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
                ctx.update(format!("blob {size}\0").as_bytes());
                HashState::GitSha1(ctx)
            }
        };
        Hasher { state, len: 0 }
    }

    /// Adds bytes to the hash.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        match &mut self.state {
            HashState::Sha256(ctx) | HashState::GitSha1(ctx) => ctx.update(data),
            HashState::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// How many bytes have been hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (function, hash) = match self.state {
            HashState::Sha256(ctx) => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(ctx.finish().as_ref());
                (DigestFunction::Sha256, hash)
            }
            HashState::Blake3(h) => (DigestFunction::Blake3, *h.finalize().as_bytes()),
            HashState::GitSha1(ctx) => {
                let mut hash = [0u8; 32];
                hash[..20].copy_from_slice(ctx.finish().as_ref());
                (DigestFunction::GitSha1, hash)
            }
        };
        Digest {
            function,
            hash,
            size: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_is_the_lowercase_hex_of_every_byte() {
        let mut d = DigestFunction::Sha256.empty();
        assert_eq!(d.hash_hex(), hex::encode(d.hash));
        d.hash = std::array::from_fn(|i| (i * 8 + 7) as u8);
        assert_eq!(d.hash_hex(), hex::encode(d.hash));
        assert_eq!(
            Digest::parse(d.function, &d.hash_hex(), 0).unwrap().hash,
            d.hash
        );
    }

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_BLAKE3: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    /// The table-driven hex codec agrees with the hex crate on every byte
    /// value in every position, and refuses what it refuses (plus upper
    /// case, which digests never use).
    #[test]
    fn hex_codec_matches_the_hex_crate() {
        for b in 0..=255u8 {
            for pos in [0usize, 17, 31] {
                let mut hash = [0x5au8; 32];
                hash[pos] = b;
                let d = Digest {
                    function: DigestFunction::Sha256,
                    hash,
                    size: 1,
                };
                assert_eq!(d.hash_hex(), hex::encode(hash));
                assert_eq!(decode_hash(hex::encode(hash).as_bytes(), 32), Some(hash));
            }
        }
        let good = hex::encode([0xabu8; 32]);
        for c in 0..=255u8 {
            for pos in [0usize, 1, 63] {
                let mut text = good.clone().into_bytes();
                text[pos] = c;
                let valid = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
                assert_eq!(decode_hash(&text, 32).is_some(), valid, "byte {c} at {pos}");
            }
        }
        assert_eq!(decode_hash(&good.as_bytes()[..62], 32), None);
    }

    #[test]
    fn parsing() {
        let cases: &[(&str, i64, bool)] = &[
            (EMPTY_SHA256, 0, true),
            (EMPTY_SHA256, 123, true),
            (EMPTY_SHA256, -1, false),
            (&EMPTY_SHA256[..63], 0, false),
            ("", 0, false),
            (
                "zz0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                0,
                false,
            ),
            (
                "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                0,
                false,
            ),
        ];
        for (hash, size, ok) in cases {
            let parsed = Digest::parse(DigestFunction::Sha256, hash, *size);
            assert_eq!(parsed.is_ok(), *ok, "{hash}/{size}: {parsed:?}");
            if let Ok(d) = parsed {
                assert_eq!(d.to_string(), format!("{hash}/{size}"));
                assert_eq!(d.to_proto().hash, *hash);
            }
        }
    }

    #[test]
    fn known_hashes_and_the_empty_blob() {
        assert_eq!(DigestFunction::Sha256.empty().hash_hex(), EMPTY_SHA256);
        assert_eq!(DigestFunction::Blake3.empty().hash_hex(), EMPTY_BLAKE3);
        assert!(DigestFunction::Sha256.empty().is_empty_blob());
        let abc = DigestFunction::Sha256.digest_of(b"abc");
        assert_eq!(
            abc.hash_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(abc.size, 3);
        assert!(!abc.is_empty_blob());
        // Incremental hashing equals one-shot hashing.
        for f in DigestFunction::ALL {
            let mut h = f.hasher(3);
            h.update(b"a");
            h.update(b"bc");
            assert_eq!(h.finish(), f.digest_of(b"abc"));
        }
    }

    #[test]
    fn gitsha1_is_gits_blob_id() {
        // As `git hash-object` names them.
        let f = DigestFunction::GitSha1;
        assert_eq!(
            f.empty().hash_hex(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert!(f.empty().is_empty_blob());
        let hello = f.digest_of(b"hello\n");
        assert_eq!(hello.hash_hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            hello.to_string(),
            "ce013625030ba8dba906f756967f9e9ca394464a/6"
        );
        assert_eq!(Digest::parse(f, &hello.hash_hex(), 6).unwrap(), hello);
        // 40 hex digits, not 64, and each function's own length.
        let e = Digest::parse(f, EMPTY_SHA256, 0).unwrap_err().to_string();
        assert!(e.contains("40 lowercase hex digits for gitsha1"), "{e}");
        assert!(Digest::parse(DigestFunction::Sha256, &hello.hash_hex(), 6).is_err());
        assert_eq!(DigestFunction::from_name("gitsha1"), Some(f));
        assert_eq!(
            DigestFunction::from_proto(reapi::digest_function::Value::Gitsha1 as i32).unwrap(),
            f
        );
        assert!(!f.hashes_unsized() && DigestFunction::Sha256.hashes_unsized());
    }

    #[test]
    fn digest_function_fields() {
        use reapi::digest_function::Value;
        assert_eq!(
            DigestFunction::from_proto(0).unwrap(),
            DigestFunction::Sha256
        );
        assert_eq!(
            DigestFunction::from_proto(Value::Blake3 as i32).unwrap(),
            DigestFunction::Blake3
        );
        assert!(DigestFunction::from_proto(Value::Md5 as i32).is_err());
        assert!(DigestFunction::from_proto(999).is_err());
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_name(f.name()), Some(f));
            assert_eq!(DigestFunction::from_proto(f.to_proto() as i32).unwrap(), f);
        }
    }
}
