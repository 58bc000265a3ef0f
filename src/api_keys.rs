//! API keys (contract section 1): credentials for backends and headless tools, sent as
//! `X-Api-Key`.
//!
//! A key reads `sbk_<id>_<secret>`: the id finds its row, the secret proves it. The store
//! keeps only an Argon2id hash of the whole key, so a copy of the database gives no key.
//! Argon2 is slow on purpose (tens of ms), so a key that verified is remembered by its
//! SHA-256 for [`REMEMBER`]; revoking it forgets it here at once, and on other nodes
//! within `auth.revocation_poll` (`revocation_watch`).

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_actors::store::credentials_sql::ApiKeyRow;
use switchboard_actors::store::reader::Reads;

use crate::error::ApiError;

/// The prefix of every key.
const PREFIX: &str = "sbk_";
/// How long a verified key is remembered without asking the store again.
pub const REMEMBER: Duration = Duration::from_secs(300);
/// Verified keys remembered at most (each one a key an admin made).
const REMEMBERED_MAX: usize = 10_000;

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Everything the admin API offers (implies the other two).
    pub admin: bool,
    /// Publish (`POST /api/admin/publish`) and send frames as any user
    /// (`POST /api/messages?user_id=`).
    pub publish: bool,
    /// Read what an admin may read (groups, group history, presence, connections).
    pub read: bool,
}

impl Scopes {
    /// Parses scope names; an unknown or repeated name, or none, is an error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut s = Scopes::default();
        let mut any = false;
        for name in names {
            let flag = match name {
                "admin" => &mut s.admin,
                "publish" => &mut s.publish,
                "read" => &mut s.read,
                other => return Err(format!("unknown scope `{other}` (admin, publish, read)")),
            };
            if *flag {
                return Err(format!("scope `{name}` given twice"));
            }
            *flag = true;
            any = true;
        }
        if !any {
            return Err("give at least one scope (admin, publish, read)".into());
        }
        Ok(s)
    }

    /// The scope names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.admin, "admin"),
            (self.publish, "publish"),
            (self.read, "read"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect()
    }

    /// May use the admin API.
    pub fn admin(&self) -> bool {
        self.admin
    }

    /// May publish and send as users.
    pub fn publish(&self) -> bool {
        self.admin || self.publish
    }

    /// May read as an admin does.
    pub fn read(&self) -> bool {
        self.admin || self.read
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

/// The key a request authenticated with.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    /// The key's id.
    pub id: String,
    /// What it may do.
    pub scopes: Scopes,
}

struct Remembered {
    digest: [u8; 32],
    scopes: Scopes,
    until: Instant,
}

/// Makes and checks API keys.
#[derive(Default)]
pub struct ApiKeys {
    remembered: RwLock<HashMap<String, Remembered>>,
}

/// A new key: the row to store, and the key itself (shown once).
pub struct NewKey {
    /// What the store keeps.
    pub row: ApiKeyRow,
    /// The key, for the one who asked for it.
    pub key: String,
}

impl ApiKeys {
    /// A new key named `name` with `scopes`.
    pub fn generate(name: String, scopes: Scopes, now_ms: i64) -> Result<NewKey, ApiError> {
        use rand::Rng;
        let mut rng = rand::rng();
        let id: String = hex(&rng.random::<[u8; 8]>());
        let secret: String = hex(&rng.random::<[u8; 32]>());
        let key = format!("{PREFIX}{id}_{secret}");
        let salt = SaltString::generate(&mut OsRng);
        let key_hash = Argon2::default()
            .hash_password(key.as_bytes(), &salt)
            .map_err(|e| ApiError::Internal(format!("hashing the key: {e}")))?
            .to_string();
        Ok(NewKey {
            row: ApiKeyRow {
                id,
                name,
                key_hash,
                scopes: scopes.to_string(),
                created_at: now_ms,
                revoked_at: None,
            },
            key,
        })
    }

    /// The key `key` if it is one that works: from memory, or from the store and checked
    /// against its hash (off the async threads).
    pub async fn check(&self, reads: &Reads, key: &str) -> Result<KeyHolder, ApiError> {
        let invalid = || ApiError::Unauthorized("invalid API key".into());
        let id = parse_id(key).ok_or_else(invalid)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(scopes) = self.recall(id, &digest) {
            return Ok(KeyHolder {
                id: id.to_owned(),
                scopes,
            });
        }
        let row = reads.api_key(id.to_owned()).await?.ok_or_else(invalid)?;
        if row.revoked_at.is_some() {
            return Err(ApiError::Unauthorized("API key revoked".into()));
        }
        let scopes = Scopes::parse(row.scopes.split(',').filter(|s| !s.is_empty()))
            .map_err(|e| ApiError::Internal(format!("stored key {}: {e}", row.id)))?;
        let presented = key.to_owned();
        let hash = row.key_hash.clone();
        let verified = actix_web::web::block(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(presented.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("key check: {e}")))?;
        if !verified {
            return Err(invalid());
        }
        self.remember(&row.id, digest, scopes);
        Ok(KeyHolder { id: row.id, scopes })
    }

    fn recall(&self, id: &str, digest: &[u8; 32]) -> Option<Scopes> {
        let r = self.remembered.read().ok()?;
        let m = r.get(id)?;
        (m.until > Instant::now() && bool::from(m.digest.ct_eq(digest))).then_some(m.scopes)
    }

    fn remember(&self, id: &str, digest: [u8; 32], scopes: Scopes) {
        if let Ok(mut r) = self.remembered.write() {
            if r.len() >= REMEMBERED_MAX {
                let now = Instant::now();
                r.retain(|_, m| m.until > now);
                if r.len() >= REMEMBERED_MAX {
                    r.clear();
                }
            }
            r.insert(
                id.to_owned(),
                Remembered {
                    digest,
                    scopes,
                    until: Instant::now() + REMEMBER,
                },
            );
        }
    }

    /// Forgets key `id` (revoked): the next use asks the store.
    pub fn forget(&self, id: &str) {
        if let Ok(mut r) = self.remembered.write() {
            r.remove(id);
        }
    }
}

/// The id part of a well-formed key.
fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, 16) && hexy(secret, 64)).then_some(id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_imply() {
        let s = Scopes::parse(["publish", "read"]).expect("scopes");
        assert!(s.publish() && s.read() && !s.admin());
        assert_eq!(s.to_string(), "publish,read");
        let a = Scopes::parse(["admin"]).expect("scopes");
        assert!(a.publish() && a.read() && a.admin());
        assert!(Scopes::parse(["root"]).is_err());
        assert!(Scopes::parse(["read", "read"]).is_err());
        assert!(Scopes::parse([]).is_err());
    }

    #[test]
    fn a_generated_key_has_the_shape_parse_expects_and_verifies() {
        let k = ApiKeys::generate("backend".into(), Scopes::parse(["read"]).expect("s"), 1)
            .expect("key");
        assert_eq!(parse_id(&k.key), Some(k.row.id.as_str()));
        assert!(!k.row.key_hash.contains(&k.key[4..]));
        let h = PasswordHash::new(&k.row.key_hash).expect("phc");
        assert!(Argon2::default()
            .verify_password(k.key.as_bytes(), &h)
            .is_ok());
        assert!(Argon2::default().verify_password(b"sbk_x", &h).is_err());
        assert_eq!(parse_id("sbk_zz_00"), None);
        assert_eq!(parse_id("Bearer x"), None);
    }
}
