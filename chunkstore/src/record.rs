//! Versioned stored values: one version byte, then postcard.
//!
//! Every value the store writes to RocksDB goes through [`encode`] and [`decode`], so a
//! later build can tell old records from new ones and migrate them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Encodes `value` behind version byte `version`.
pub(crate) fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    postcard::to_io(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a value of `table` written by [`encode`] with `version`.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn std::fmt::Display,
    version: u8,
    bytes: &[u8],
) -> Result<T, Error> {
    let bad = |reason: String| Error::BadRecord { table, key: key.to_string(), reason };
    match bytes.split_first() {
        None => Err(bad("empty value".into())),
        Some((&v, _)) if v != version => {
            Err(bad(format!("record version {v}, this build reads {version}")))
        }
        Some((_, body)) => match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(bad(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(bad(e.to_string())),
        },
    }
}
