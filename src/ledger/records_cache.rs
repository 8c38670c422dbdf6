//! The records cache: the note blobs at the tip whose every line passed its own checks (format,
//! payload, signature, signer) against the allowed_signers of the trust ref, so that the next read
//! of the records (status, the sweep, the hooks' index, the broker's pass) verifies no signature
//! twice. It lives in the state dir (`tpa/records-cache`) beside the verify cache and holds no
//! secret: blob ids only.
//!
//! Keyed by content, as the verify cache is: a blob id names the exact bytes of a note, so a
//! record that is edited, re-signed or moved is in another blob, which is checked in full. The
//! whole file is bound to the tpa build that wrote it and to a digest of the signers as parsed;
//! another build or other signers make it unused. It checks its own integrity (a sha256 over
//! everything before it); a truncated, damaged or reordered file is refused whole, which costs a
//! read in full, never a skipped finding. Like the witness it is as trustworthy as the clone's
//! `.git` directory: whoever can rewrite it can equally rewrite `refs/notes/tpa` or the hooks.
//! That is why `tpa verify` and `tpa audit`, the checks an organisation relies on, never use it.

use git2::Oid;

use super::verify_cache::{Key, Refused, put_header, seal, unseal};

/// The file's name in the state dir.
pub const FILE: &str = "records-cache";
const MAGIC: &[u8] = b"tpa records cache\n";
/// Bumped whenever what a listed blob means changes. The key is the verify cache's ([`Key`]:
/// this build, and the digest of the signers, with no policy).
const FORMAT: u32 = 1;

/// The cache listing `clean` (the blobs whose lines all passed their own checks), for `key`.
pub fn encode(key: &Key, clean: &[Oid]) -> Vec<u8> {
    let mut blobs = clean.to_vec();
    blobs.sort();
    blobs.dedup();
    let mut out = Vec::with_capacity(MAGIC.len() + 128 + blobs.len() * 20);
    put_header(&mut out, MAGIC, FORMAT, key);
    out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for blob in &blobs {
        out.extend_from_slice(blob.as_bytes());
    }
    seal(out)
}

/// The blobs a cache written for `key` lists, in increasing order. Everything is checked before
/// anything is used.
pub fn decode(bytes: &[u8], key: &Key) -> Result<Vec<Oid>, Refused> {
    let damaged = Refused::Damaged;
    let mut r = unseal(bytes, MAGIC, FORMAT, key)?;
    let count = r.u32()? as usize;
    if r.rest.len() != count.saturating_mul(20) {
        return Err(damaged("its count does not match its length"));
    }
    let mut blobs = Vec::with_capacity(count);
    for id in r.rest.chunks_exact(20) {
        let blob = Oid::from_bytes(id).map_err(|_| damaged("an object id is invalid"))?;
        if blobs.last().is_some_and(|last| *last >= blob) {
            return Err(damaged("its blobs are out of order"));
        }
        blobs.push(blob);
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn oid(byte: u8) -> Oid {
        Oid::from_bytes(&[byte; 20]).unwrap()
    }

    fn key() -> Key {
        Key::this_build([7; 32])
    }

    #[test]
    fn round_trips_sorted_and_without_duplicates() {
        let bytes = encode(&key(), &[oid(3), oid(1), oid(3), oid(2)]);
        assert_eq!(decode(&bytes, &key()).unwrap(), vec![oid(1), oid(2), oid(3)]);
        assert_eq!(decode(&encode(&key(), &[]), &key()).unwrap(), Vec::<Oid>::new());
    }

    #[test]
    fn another_build_or_trust_is_not_used() {
        let bytes = encode(&key(), &[oid(1)]);
        let other_trust = Key::this_build([8; 32]);
        assert_eq!(decode(&bytes, &other_trust), Err(Refused::OtherTrust));
        let other_build = Key { build: "another".into(), ..key() };
        assert_eq!(decode(&bytes, &other_build), Err(Refused::OtherBuild));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&key(), &[oid(1), oid(2)]);
        crate::ledger::verify_cache::assert_every_damage_refused(&bytes, |bytes| decode(bytes, &key()));
    }

    #[test]
    fn a_body_with_a_recomputed_digest_must_still_be_in_order_and_whole() {
        let reseal = |mut body: Vec<u8>| {
            body.truncate(body.len() - 32);
            let digest = Sha256::digest(&body);
            body.extend_from_slice(&digest);
            body
        };
        let bytes = encode(&key(), &[oid(1), oid(2)]);
        let first = bytes.len() - 32 - 40;
        let mut swapped = bytes.clone();
        swapped[first..first + 20].copy_from_slice(oid(2).as_bytes());
        swapped[first + 20..first + 40].copy_from_slice(oid(1).as_bytes());
        assert_eq!(decode(&reseal(swapped), &key()), Err(Refused::Damaged("its blobs are out of order")));

        let mut longer = bytes.clone();
        longer.truncate(longer.len() - 32);
        longer.push(0);
        longer.extend_from_slice(&[0; 32]);
        assert!(decode(&reseal(longer), &key()).is_err());

        let mut huge_count = bytes;
        let count_at = huge_count.len() - 32 - 40 - 4;
        huge_count[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&reseal(huge_count), &key()).is_err());
    }
}
