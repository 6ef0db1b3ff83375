//! Revocation lists' signatures, verified once: rustls verifies a list's signature, over the
//! whole list, in every check of a client certificate whose chain leads to its issuer
//! (webpki's own to-do: "once up front"), about 65 µs of CPU per check for a P-256 CA. The
//! lists of `client_ca`'s CAs are verified at load anyway ([`super::revocation`]); the client
//! verifier's algorithms then answer for those exact bytes from memory, and verify everything
//! else as before.
//!
//! The memory holds the whole of what was verified (algorithm, key, list, signature), and a
//! check is answered from it only for bytes equal to those: a cache of a function's results,
//! which cannot answer otherwise than the function would. Comparing a list's bytes costs a
//! fraction of hashing them for a verification.

use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// A signature verified at load.
struct Verified {
    /// The algorithm that verified it (the provider's own, not a [`Remembering`]): only it
    /// answers for it, as webpki would have asked it alone.
    algorithm: &'static dyn SignatureVerificationAlgorithm,
    key: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
}

impl PartialEq for Verified {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self.algorithm, other.algorithm)
            && self.key == other.key
            && self.signature == other.signature
            && self.message == other.message
    }
}

/// The signatures of the last [`LOADS_KEPT`] loads that verified any, newest last: the config
/// in force and those before it (a load that is then rejected must not leave the lists in
/// force checked the slow way at once; the same load built again, as a file still being
/// written is, takes no second place).
static KEPT: RwLock<Vec<Vec<Arc<Verified>>>> = RwLock::new(Vec::new());

const LOADS_KEPT: usize = 3;

/// A signature verified: by which algorithm, with which key (its bits), over which bytes:
/// `(algorithm, key, message, signature)`.
pub(super) type Proof<'a> = (
    &'static dyn SignatureVerificationAlgorithm,
    &'a [u8],
    &'a [u8],
    &'a [u8],
);

/// Remembers the signatures one load verified.
pub(super) fn remember(verified: Vec<Proof<'_>>) {
    if verified.is_empty() {
        return;
    }
    let load: Vec<Arc<Verified>> = (verified.into_iter())
        .map(|(algorithm, key, message, signature)| {
            Arc::new(Verified {
                algorithm,
                key: key.to_vec(),
                message: message.to_vec(),
                signature: signature.to_vec(),
            })
        })
        .collect();
    let mut kept = KEPT
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    kept.retain(|earlier| *earlier != load);
    kept.push(load);
    if kept.len() > LOADS_KEPT {
        kept.remove(0);
    }
}

/// `algorithms` whose signature checks answer from [`remember`]ed ones first.
pub(super) fn remembering(algorithms: &WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
    type All = &'static [&'static dyn SignatureVerificationAlgorithm];
    // Made once for each set of algorithms (one, from `provider`), for the process: rustls
    // wants them for the whole of its life.
    static MADE: Mutex<Vec<(All, All)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = made
        .iter()
        .find(|(from, _)| std::ptr::eq(*from, algorithms.all));
    let all = match found {
        Some(&(_, all)) => all,
        None => {
            let wrapped: Vec<&'static dyn SignatureVerificationAlgorithm> = (algorithms.all.iter())
                .map(|&inner| -> &'static dyn SignatureVerificationAlgorithm {
                    Box::leak(Box::new(Remembering { inner }))
                })
                .collect();
            let all: All = Box::leak(wrapped.into_boxed_slice());
            made.push((algorithms.all, all));
            all
        }
    };
    WebPkiSupportedAlgorithms {
        all,
        mapping: algorithms.mapping,
    }
}

/// An algorithm answering from [`KEPT`] first.
#[derive(Debug)]
struct Remembering {
    inner: &'static dyn SignatureVerificationAlgorithm,
}

impl SignatureVerificationAlgorithm for Remembering {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        if self.remembered(public_key, message, signature) {
            return Ok(());
        }
        self.inner.verify_signature(public_key, message, signature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

impl Remembering {
    /// Whether exactly this was verified at load, by this algorithm. The cheap fields first:
    /// a certificate's signature, checked here too, differs from every list's at once.
    fn remembered(&self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let kept = KEPT.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.iter().flatten().any(|v| {
            v.signature == signature
                && v.message.len() == message.len()
                && std::ptr::addr_eq(v.algorithm, self.inner)
                && v.key == key
                && v.message == message
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bytes_remembered_are_answered_from_memory() {
        // A "signature" no algorithm would take: only memory can answer yes to it.
        let provider = super::super::provider();
        let algorithms = remembering(&provider.signature_verification_algorithms);
        let algorithm = algorithms.all[0];
        let (inner, key) = (
            provider.signature_verification_algorithms.all[0],
            &b"key"[..],
        );
        let (message, signature) = (b"a list of this test".to_vec(), b"not a signature".to_vec());
        assert!(algorithm
            .verify_signature(key, &message, &signature)
            .is_err());
        remember(vec![(inner, key, &message, &signature)]);
        assert!(algorithm
            .verify_signature(key, &message, &signature)
            .is_ok());
        let mut changed = message.clone();
        changed[0] ^= 1;
        let others = [
            (&b"other key"[..], &message[..], &signature[..]),
            (key, &changed[..], &signature[..]),
            (key, &message[..message.len() - 1], &signature[..]),
            (key, &message[..], &signature[1..]),
        ];
        for (key, message, signature) in others {
            assert!(algorithm.verify_signature(key, message, signature).is_err());
        }
        // Another algorithm (another signature or key algorithm) never answers for it.
        let other = (algorithms.all.iter()).find(|a| {
            a.signature_alg_id() != inner.signature_alg_id()
                || a.public_key_alg_id() != inner.public_key_alg_id()
        });
        assert!(other
            .unwrap()
            .verify_signature(key, &message, &signature)
            .is_err());
    }
}
