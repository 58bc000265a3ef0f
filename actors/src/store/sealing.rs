//! Encryption at rest: [`Sealer`] seals text (message payloads, state documents) with
//! AES-256-GCM before it is stored, and opens it when it is read.
//!
//! A sealed value is `sb1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`, so each row names
//! the key it was sealed with and keys can rotate: new rows take the current key, old rows
//! open with any key still listed. Stored JSON never starts with `sb1:`, so rows written
//! before sealing was turned on are read as they are. The nonce is 96 random bits per
//! value; the tag makes a changed row fail to open rather than read as something else.

use std::borrow::Cow;
use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;

use super::models::{StateDoc, StateOutcome, StoredMessage};

/// The prefix of a sealed value.
const PREFIX: &str = "sb1:";
/// Nonce bytes.
const NONCE: usize = 12;

/// Why sealing is set up wrong, or a value does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A key is not 32 bytes of base64, or its id is not usable.
    #[error("encryption key `{0}`: {1}")]
    BadKey(String, &'static str),
    /// The row names a key that is not configured.
    #[error(
        "a stored value is sealed with key `{0}`, which is not configured (encryption.old_keys)"
    )]
    UnknownKey(String),
    /// The row is not what sealing writes, or it was changed.
    #[error("a stored value does not open: {0}")]
    Corrupt(&'static str),
}

/// Seals with the current key, opens with any configured key.
pub struct Sealer {
    current_id: String,
    current: Aes256Gcm,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Sealer")
            .field("current_id", &self.current_id)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn cipher(id: &str, base64_key: &str) -> Result<Aes256Gcm, SealError> {
    let bad = |why| SealError::BadKey(id.to_owned(), why);
    if id.is_empty()
        || id.len() > 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("the id must be 1 to 32 of [A-Za-z0-9_-]"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_key.trim())
        .map_err(|_| bad("not base64"))?;
    if bytes.len() != 32 {
        return Err(bad("not 32 bytes (openssl rand -base64 32 makes one)"));
    }
    Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad("not 32 bytes"))
}

impl Sealer {
    /// A sealer writing with key `current` (id, base64 key) and also reading `old` ones.
    pub fn new(current: (&str, &str), old: &[(&str, &str)]) -> Result<Sealer, SealError> {
        let mut keys = HashMap::new();
        for (id, key) in old {
            keys.insert((*id).to_owned(), cipher(id, key)?);
        }
        let c = cipher(current.0, current.1)?;
        keys.insert(current.0.to_owned(), c.clone());
        Ok(Sealer {
            current_id: current.0.to_owned(),
            current: c,
            keys,
        })
    }

    /// `plain`, sealed with the current key.
    pub fn seal(&self, plain: &str) -> String {
        use rand::RngCore;
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        // Encrypting into memory cannot fail for inputs under 64 GiB.
        let ct = self
            .current
            .encrypt(&Nonce::from(nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        let mut out =
            String::with_capacity(PREFIX.len() + self.current_id.len() + 1 + raw.len() * 4 / 3 + 4);
        out.push_str(PREFIX);
        out.push_str(&self.current_id);
        out.push(':');
        B64.encode_string(&raw, &mut out);
        out
    }

    /// The text of a stored value: opened if sealed, as it is otherwise.
    pub fn open<'a>(&self, stored: &'a str) -> Result<Cow<'a, str>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(Cow::Borrowed(stored));
        };
        let (id, body) = rest
            .split_once(':')
            .ok_or(SealError::Corrupt("no key id"))?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let raw = B64
            .decode(body)
            .map_err(|_| SealError::Corrupt("not base64"))?;
        if raw.len() < NONCE + 16 {
            return Err(SealError::Corrupt("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce
            .try_into()
            .map_err(|_| SealError::Corrupt("too short"))?;
        let plain = key
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| SealError::Corrupt("the tag does not match (wrong key or changed row)"))?;
        String::from_utf8(plain)
            .map(Cow::Owned)
            .map_err(|_| SealError::Corrupt("not UTF-8"))
    }

    /// Whether `stored` is a sealed value.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

/// Sealing as the store applies it: to message payloads and state document values.
impl Sealer {
    /// Copies of `rows` with their payloads sealed.
    pub fn seal_rows(&self, rows: &[StoredMessage]) -> Vec<StoredMessage> {
        rows.iter()
            .map(|m| StoredMessage {
                payload: self.seal(&m.payload),
                ..m.clone()
            })
            .collect()
    }

    /// Opens the payload of each of `rows` in place.
    pub fn open_rows(&self, rows: &mut [StoredMessage]) -> Result<(), SealError> {
        for m in rows {
            if Sealer::is_sealed(&m.payload) {
                m.payload = self.open(&m.payload)?.into_owned();
            }
        }
        Ok(())
    }

    /// Opens the values of `docs` in place.
    pub fn open_docs<'a>(
        &self,
        docs: impl IntoIterator<Item = &'a mut StateDoc>,
    ) -> Result<(), SealError> {
        for d in docs {
            if Sealer::is_sealed(&d.value) {
                d.value = self.open(&d.value)?.into_owned();
            }
        }
        Ok(())
    }

    /// A state write's outcome with the stored document (a conflict's) opened.
    pub fn open_outcome(&self, mut outcome: StateOutcome) -> Result<StateOutcome, SealError> {
        if let StateOutcome::Conflict { current: Some(doc) } = &mut outcome {
            self.open_docs([doc])?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn sealed_text_opens_and_shows_nothing_of_the_plain_text() {
        let s = Sealer::new(("k1", K1), &[]).expect("sealer");
        let plain = r#"{"content":"the launch code is 0000"}"#;
        let sealed = s.seal(plain);
        assert!(sealed.starts_with("sb1:k1:"), "{sealed}");
        assert!(!sealed.contains("launch"));
        assert_ne!(s.seal(plain), sealed, "a fresh nonce each time");
        assert_eq!(s.open(&sealed).expect("opens"), plain);
        // Rows from before sealing was on are read as they are.
        assert_eq!(s.open(plain).expect("plain"), plain);
    }

    #[test]
    fn keys_rotate_and_wrong_or_changed_rows_fail_loudly() {
        let old = Sealer::new(("k1", K1), &[]).expect("sealer");
        let sealed_by_k1 = old.seal("{}");
        let rotated = Sealer::new(("k2", K2), &[("k1", K1)]).expect("sealer");
        assert_eq!(rotated.open(&sealed_by_k1).expect("old key"), "{}");
        assert!(rotated.seal("{}").starts_with("sb1:k2:"));
        let forgot = Sealer::new(("k2", K2), &[]).expect("sealer");
        assert_eq!(
            forgot.open(&sealed_by_k1),
            Err(SealError::UnknownKey("k1".into()))
        );
        let mut changed = sealed_by_k1.clone();
        let last = changed.pop().expect("char");
        changed.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(old.open(&changed), Err(SealError::Corrupt(_))));
        assert!(matches!(
            Sealer::new(("k1", "c2hvcnQ="), &[]),
            Err(SealError::BadKey(..))
        ));
        assert!(matches!(
            Sealer::new(("bad id!", K1), &[]),
            Err(SealError::BadKey(..))
        ));
    }
}
