//! Content-defined chunking: REAPI 2.12's two chunking functions, which cut
//! a blob where its content says so, so that an edit in the middle of a
//! large artifact changes one or two chunks instead of every byte after it.
//!
//! Cut points are a property of the bytes and the function's parameters
//! alone; a client and kiln that agree on both cut the same blob into the
//! same chunks, which is what lets either skip the chunks the other has.
//! This module knows nothing of gRPC or stores: [`blobs`] applies it to an
//! instance's CAS, [`splitter`] to a stream.

pub(crate) mod blobs;
mod fastcdc2020;
pub(crate) mod lanes;
mod repmax;
pub(crate) mod splitter;
mod window;

use crate::error::{Error, Result};
use crate::proto::reapi::chunking_function;

pub(crate) use fastcdc2020::FastCdc;
pub(crate) use repmax::RepMax;

/// The chunking functions REAPI 2.12 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// FastCDC as published in 2020 (the `fastcdc` crate's v2020), with
    /// normalization level 2, min = avg / 4 and max = avg * 4.
    FastCdc2020,
    /// RepMaxCDC (buildbarn/go-cdc): every chunk in [min, 2 * min).
    RepMaxCdc,
}

impl Function {
    /// The function a request names; `None` for UNKNOWN (unset), which
    /// leaves the choice to the server.
    pub fn from_proto(value: i32) -> Result<Option<Function>> {
        match chunking_function::Value::try_from(value) {
            Ok(chunking_function::Value::Unknown) => Ok(None),
            Ok(chunking_function::Value::FastCdc2020) => Ok(Some(Function::FastCdc2020)),
            Ok(chunking_function::Value::RepMaxCdc) => Ok(Some(Function::RepMaxCdc)),
            Err(_) => Err(Error::InvalidArgument(format!(
                "unknown chunking function value {value}: expected FAST_CDC_2020 (1) or REP_MAX_CDC (2)"
            ))),
        }
    }

    /// The REAPI enum value.
    pub fn to_proto(self) -> chunking_function::Value {
        match self {
            Function::FastCdc2020 => chunking_function::Value::FastCdc2020,
            Function::RepMaxCdc => chunking_function::Value::RepMaxCdc,
        }
    }
}

/// A chunking function with its parameters: what cuts a blob.
#[derive(Debug, Clone)]
pub enum Chunker {
    /// FAST_CDC_2020.
    FastCdc(FastCdc),
    /// REP_MAX_CDC.
    RepMax(RepMax),
}

impl Chunker {
    /// Which function this is.
    pub fn function(&self) -> Function {
        match self {
            Chunker::FastCdc(_) => Function::FastCdc2020,
            Chunker::RepMax(_) => Function::RepMaxCdc,
        }
    }

    /// The function and its two parameters (FastCDC: average and seed;
    /// RepMaxCDC: minimum and horizon): what decides every cut point, so
    /// two chunkers with equal parameters cut any blob alike.
    pub fn params(&self) -> (Function, u64, u64) {
        match self {
            Chunker::FastCdc(c) => (Function::FastCdc2020, c.avg() as u64, u64::from(c.seed())),
            Chunker::RepMax(c) => (Function::RepMaxCdc, c.min() as u64, c.horizon() as u64),
        }
    }

    /// How many bytes [`Chunker::cut`] must see to place a cut exactly as
    /// it would with the whole rest of the blob in view.
    pub fn window(&self) -> usize {
        match self {
            Chunker::FastCdc(c) => c.max(),
            Chunker::RepMax(c) => c.window(),
        }
    }

    /// Blobs of at most this many bytes are one chunk, whatever their
    /// content: they are not read to be split.
    pub fn single_chunk_max(&self) -> u64 {
        match self {
            Chunker::FastCdc(c) => c.min() as u64,
            Chunker::RepMax(c) => 2 * c.min() as u64 - 1,
        }
    }

    /// The length of the chunk that starts `data`, which holds at least
    /// [`Chunker::window`] bytes or everything left of the blob. Never 0
    /// for non-empty data.
    pub fn cut(&self, data: &[u8]) -> usize {
        match self {
            Chunker::FastCdc(c) => c.cut(data),
            Chunker::RepMax(c) => c.cut(data),
        }
    }
}

/// The GEAR table both functions roll their hash with: the constants the
/// FastCDC implementations share (fastcdc-rs, destor, buildbuddy's
/// fastcdc2020) and go-cdc's RepMaxCDC reuses, taken from the crate so
/// there is one copy.
fn gear() -> &'static [u64] {
    static GEAR: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    GEAR.get_or_init(|| fastcdc::v2020::get_gear_with_seed(0).0.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gear_table_is_the_published_one() {
        // Entries as go-cdc's gear_table.go and Bazel's GearTable.java list
        // them: a different crate version with another table would cut
        // elsewhere than every client.
        let table = gear();
        assert_eq!(table.len(), 256);
        assert_eq!(table[0], 0x3b5d3c7d207e37dc);
        assert_eq!(table[1], 0x784d68ba91123086);
        assert_eq!(table[128], 0xc0ce47f889336346);
        assert_eq!(table[255], 0xaabd2b2a451504e1);
    }

    #[test]
    fn functions_round_trip_and_unknown_values_are_refused() {
        for f in [Function::FastCdc2020, Function::RepMaxCdc] {
            assert_eq!(Function::from_proto(f.to_proto() as i32).unwrap(), Some(f));
        }
        assert_eq!(Function::from_proto(0).unwrap(), None);
        let err = Function::from_proto(7).unwrap_err().to_string();
        assert!(err.contains("7") && err.contains("FAST_CDC_2020"), "{err}");
    }
}
