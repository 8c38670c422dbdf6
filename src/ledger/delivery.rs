//! A broker's delivery: the minted secret, encrypted with age (X25519) to the one-time key a
//! request carries (`delivery_key`), as one blob under `refs/tpa/deliveries/<grant id>` on the
//! remote. The identity never leaves the requester's keyring; the ciphertext never enters the
//! notes. Anyone can read the ref; only the requester can open it.

use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::grant::GrantId;

/// Where a grant's delivery lives on the remote.
pub fn delivery_ref(grant_id: &GrantId) -> String {
    format!("refs/tpa/deliveries/{grant_id}")
}

/// The lock brokers take before minting: pushed only if it does not exist yet.
pub fn claim_ref(grant_id: &GrantId) -> String {
    format!("refs/tpa/claims/{grant_id}")
}

/// The largest delivery a requester opens (credentials are a few KiB).
pub const MAX_DELIVERY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("`{0}` is not an age X25519 recipient (age1...)")]
    BadRecipient(String),
    #[error("the one-time delivery key is damaged: {0}")]
    BadIdentity(String),
    #[error("cannot encrypt the delivery: {0}")]
    Encrypt(String),
    #[error("the delivery does not open with this request's key (not made for it, or altered): {0}")]
    Decrypt(String),
    #[error("the delivery is {0} bytes: no credentials are that large")]
    TooLarge(usize),
}

/// The requester's one-time key pair for one request.
pub struct DeliveryKey(age::x25519::Identity);

impl DeliveryKey {
    pub fn generate() -> Self {
        DeliveryKey(age::x25519::Identity::generate())
    }

    /// The public half, for the request record.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// The secret half, for the keyring only.
    pub fn to_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.to_string().expose_secret().to_owned())
    }

    pub fn from_secret(text: &str) -> Result<Self, DeliveryError> {
        age::x25519::Identity::from_str(text)
            .map(DeliveryKey)
            .map_err(|e| DeliveryError::BadIdentity(e.to_owned()))
    }

    /// Opens a delivery made for this key.
    pub fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, DeliveryError> {
        if ciphertext.len() > MAX_DELIVERY {
            return Err(DeliveryError::TooLarge(ciphertext.len()));
        }
        age::decrypt(&self.0, ciphertext)
            .map(Zeroizing::new)
            .map_err(|e| DeliveryError::Decrypt(e.to_string()))
    }
}

/// Encrypts `plaintext` to a request's `delivery_key`.
pub fn seal(recipient: &str, plaintext: &[u8]) -> Result<Vec<u8>, DeliveryError> {
    let recipient = age::x25519::Recipient::from_str(recipient)
        .map_err(|_| DeliveryError::BadRecipient(crate::escape::excerpt(recipient)))?;
    age::encrypt(&recipient, plaintext).map_err(|e| DeliveryError::Encrypt(e.to_string()))
}

/// Whether text is an age X25519 recipient (for validating request records).
pub fn is_recipient(text: &str) -> bool {
    text.len() < 100 && age::x25519::Recipient::from_str(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_request_key_opens_its_delivery() {
        let key = DeliveryKey::generate();
        let other = DeliveryKey::generate();
        let sealed = seal(&key.recipient(), b"the credentials").unwrap();
        assert_eq!(key.open(&sealed).unwrap().as_slice(), b"the credentials");
        assert!(other.open(&sealed).is_err());
        let again = DeliveryKey::from_secret(&key.to_secret()).unwrap();
        assert_eq!(again.open(&sealed).unwrap().as_slice(), b"the credentials");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open(&altered).is_err());
        assert!(is_recipient(&key.recipient()) && !is_recipient("age1nope"));
        assert!(seal("not a key", b"x").is_err());
    }
}
