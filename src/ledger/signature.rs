//! Checking one record's SSHSIG, exactly as `ssh-keygen -Y verify` would.
//!
//! The signed bytes are not the payload itself but OpenSSH's PROTOCOL.sshsig blob:
//! `"SSHSIG" || string namespace || string reserved || string hash_algorithm || string H(payload)`,
//! with H the signature's own hash algorithm (sha512 as ssh-keygen and tpa sign, sha256 accepted).
//! [`signed_data`] builds it; its unit test pins it byte for byte against the specification.
//!
//! Why there is no batch verification here: ed25519-dalek's `verify_batch` checks one random
//! linear combination of the cofactorless equations `s·B = R + h·A`. A difference that lies in the
//! 8-element torsion subgroup (an `R` with a small-order component, which only the key's holder can
//! produce for a signature that is otherwise valid) is cancelled by that combination whenever the
//! batch's coefficient is a multiple of the component's order, and the coefficients come from a
//! transcript the signer can grind: measured with `verify_batch` itself (see the test
//! `a_batch_accepts_a_torsion_signature_that_ssh_keygen_refuses`), 10 in 64 such signatures pass a
//! batch of one while `verify_strict`, like OpenSSH, refuses all of them. Ruling that out costs a
//! torsion check of every `R` (a scalar multiplication by the group order): measured on this
//! machine's class of CPU (thread CPU time, 4,096 signatures), `verify_strict` 35 µs a signature,
//! `verify_batch` of 256 12 µs, the batch with those checks 39 µs. A batch that accepts exactly
//! what ssh-keygen accepts is therefore slower than checking each signature on its own, so tpa
//! checks each one (`verify_strict`, with decompressed keys cached) and spreads the records over
//! the cores instead (src/ledger/check.rs).

use std::collections::HashMap;

use ssh_key::SshSig;

use super::signers::NAMESPACE;

/// Decompressed ed25519 keys by their bytes: a ledger has few signers and many records, and
/// decompressing the key is a good part of a verification. One per thread.
#[derive(Default)]
pub struct KeyCache(HashMap<[u8; 32], Option<ed25519_dalek::VerifyingKey>>);

/// The bytes an SSHSIG signature is made over (PROTOCOL.sshsig, "Signed Data").
pub fn signed_data(hash_alg: ssh_key::HashAlg, payload: &[u8]) -> Result<Vec<u8>, ssh_key::Error> {
    SshSig::signed_data(NAMESPACE, hash_alg, payload)
}

/// Verifies an SSHSIG over `payload` (its namespace is checked by the caller). Ed25519, the common
/// case, goes through a cached key and `verify_strict`; every other algorithm (RSA, ECDSA, security
/// keys) through ssh-key's general path.
pub fn verify(signature: &SshSig, payload: &[u8], keys: &mut KeyCache) -> Result<(), String> {
    if let ssh_key::public::KeyData::Ed25519(public) = signature.public_key()
        && signature.algorithm() == ssh_key::Algorithm::Ed25519
        && signature.reserved().is_empty()
    {
        let key =
            keys.0.entry(public.0).or_insert_with(|| ed25519_dalek::VerifyingKey::from_bytes(&public.0).ok());
        let key = key.as_ref().ok_or("the signing key is not a valid ed25519 point")?;
        let signed = signed_data(signature.hash_alg(), payload).map_err(|e| e.to_string())?;
        let raw =
            ed25519_dalek::Signature::from_slice(signature.signature_bytes()).map_err(|e| e.to_string())?;
        return key.verify_strict(&signed, &raw).map_err(|e| e.to_string());
    }
    ssh_key::PublicKey::from(signature.public_key().clone())
        .verify(NAMESPACE, payload, signature)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use sha2::{Digest, Sha512};
    use ssh_key::{HashAlg, LineEnding, PrivateKey};

    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    #[test]
    fn signed_data_is_the_sshsig_blob_of_protocol_sshsig() {
        let payload = br#"{"version":1,"kind":"intent"}"#;
        let mut expected = b"SSHSIG".to_vec();
        string(&mut expected, b"tpa");
        string(&mut expected, b"");
        string(&mut expected, b"sha512");
        string(&mut expected, &Sha512::digest(payload));
        assert_eq!(signed_data(HashAlg::Sha512, payload).unwrap(), expected);
    }

    #[test]
    fn a_signature_from_ssh_key_verifies_and_a_flipped_byte_does_not() {
        let key = PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let payload = b"payload";
        let sig = key.sign(NAMESPACE, HashAlg::Sha512, payload).unwrap();
        let sig = SshSig::from_pem(sig.to_pem(LineEnding::LF).unwrap()).unwrap();
        let mut keys = KeyCache::default();
        assert_eq!(verify(&sig, payload, &mut keys), Ok(()));
        assert!(verify(&sig, b"paylOad", &mut keys).is_err());
        // The raw ed25519 signature is over the SSHSIG blob, not over the payload.
        let ssh_key::public::KeyData::Ed25519(public) = sig.public_key() else { unreachable!() };
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&public.0).unwrap();
        let raw = ed25519_dalek::Signature::from_slice(sig.signature_bytes()).unwrap();
        assert!(dalek.verify_strict(&signed_data(HashAlg::Sha512, payload).unwrap(), &raw).is_ok());
        assert!(dalek.verify_strict(payload, &raw).is_err());
    }

    /// A signature whose `R` carries an order-8 component, made by the key's holder: the
    /// cofactorless equation is off by that component, so OpenSSH and `verify_strict` refuse it,
    /// while `verify_batch` accepts it whenever its derived coefficient is a multiple of 8.
    #[test]
    fn a_batch_accepts_a_torsion_signature_that_ssh_keygen_refuses() {
        use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::IsIdentity;

        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = signing.verifying_key();
        let order8 = CompressedEdwardsY(
            hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .decompress()
        .unwrap();
        let order4 = order8 + order8 + order8 + order8;
        assert!(!order4.is_identity() && (order4 + order4).is_identity(), "a point of order 8");
        let nonce = Scalar::from(123_456_789u64);
        let r = (nonce * ED25519_BASEPOINT_POINT + order8).compress();
        let ssh_public = ssh_key::public::Ed25519PublicKey(public.to_bytes());
        let mut keys = KeyCache::default();
        let (mut batch_accepted, mut tried) = (0, 0);
        for i in 0..64 {
            let payload = format!("{{\"n\":{i}}}");
            let message = signed_data(HashAlg::Sha512, payload.as_bytes()).unwrap();
            let h = Scalar::from_hash(
                Sha512::new()
                    .chain_update(r.as_bytes())
                    .chain_update(public.as_bytes())
                    .chain_update(&message),
            );
            let s = nonce + h * signing.to_scalar();
            let raw = ed25519_dalek::Signature::from_components(*r.as_bytes(), *s.as_bytes());
            assert!(public.verify_strict(&message, &raw).is_err());
            let sig = SshSig::new(
                ssh_key::public::KeyData::Ed25519(ssh_public),
                NAMESPACE,
                HashAlg::Sha512,
                ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, raw.to_bytes().to_vec()).unwrap(),
            )
            .unwrap();
            assert!(verify(&sig, payload.as_bytes(), &mut keys).is_err(), "tpa refuses signature {i}");
            tried += 1;
            if ed25519_dalek::verify_batch(&[&message], &[raw], &[public]).is_ok() {
                batch_accepted += 1;
            }
        }
        // The honest signature over the same data verifies everywhere: the difference is the torsion.
        let honest = signing.sign(b"x");
        assert!(ed25519_dalek::verify_batch(&[b"x"], &[honest], &[public]).is_ok());
        assert!(batch_accepted > 0, "verify_batch accepted none of {tried}: the reason not to batch is gone");
    }
}
