//! A streamed request body as a blocking reader: bounded in size, and fingerprinted on the
//! way through for `Idempotency-Key`.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// The body went past its limit; carried inside the `io::Error` the reader returns.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: usize,
}

/// SHA-256 over everything that identifies a streamed submission: its query and its body
/// as they pass.
#[derive(Clone)]
pub struct Fingerprint(Arc<Mutex<Sha256>>);

impl Fingerprint {
    pub fn new(query: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(query.as_bytes());
        hasher.update(b"\n");
        Self(Arc::new(Mutex::new(hasher)))
    }

    /// SHA-256 of the body's bytes alone (a JSON body, whose settings are in it).
    pub fn of_body() -> Self {
        Self(Arc::new(Mutex::new(Sha256::new())))
    }

    fn update(&self, bytes: &[u8]) {
        if let Ok(mut hasher) = self.0.lock() {
            hasher.update(bytes);
        }
    }

    /// Hex digest of what has passed so far.
    pub fn hex(&self) -> String {
        let digest = self
            .0
            .lock()
            .map(|hasher| hasher.clone().finalize())
            .unwrap_or_default();
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// A blocking reader of `body` that fails with `BodyTooLarge` past `limit` bytes. Only for
/// a blocking thread: each read waits for the next chunk from the client.
pub fn body_reader(
    body: Body,
    limit: usize,
    fingerprint: Option<Fingerprint>,
) -> impl Read + Send + 'static {
    let mut received = 0usize;
    let chunks = body
        .into_data_stream()
        .map_err(io::Error::other)
        .and_then(move |chunk| {
            received = received.saturating_add(chunk.len());
            let verdict = if received > limit {
                Err(io::Error::other(BodyTooLarge { limit }))
            } else {
                if let Some(fingerprint) = &fingerprint {
                    fingerprint.update(&chunk);
                }
                Ok(chunk)
            };
            std::future::ready(verdict)
        });
    SyncIoBridge::new(StreamReader::new(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_fingerprint_is_the_sha256_of_its_bytes_however_they_arrive() {
        // What keys reserved before bodies were streamed hold: hex SHA-256 of the body.
        let fingerprint = Fingerprint::of_body();
        fingerprint.update(b"ab");
        fingerprint.update(b"c");
        assert_eq!(
            fingerprint.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
