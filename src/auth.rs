//! Tokens: minting and checking JWTs (contract section 1).

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{now_ms, valid_id};

pub use crate::config::MAX_TOKEN_LIFE_S;
use crate::config::{Environment, Settings};
use crate::error::ApiError;

/// Device kinds a token or connection may name.
pub const DEVICES: [&str; 6] = ["web", "desktop", "mobile", "extension", "cli", "server"];

/// JWT claims (contract section 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Token id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `admin` grants the admin API.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Device kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `refresh` for refresh tokens; absent for access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

impl Claims {
    /// Whether the token grants the admin API.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, malformed, expired, not yet valid.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Revoked by `jti`.
    #[error("token revoked")]
    Revoked,
    /// A refresh token used as an access token.
    #[error("refresh tokens cannot be used for access")]
    WrongKind,
    /// An access token where a refresh token belongs.
    #[error("not a refresh token")]
    NotRefresh,
    /// The broker has no signing secret (RS256/ES256 verification only).
    #[error("this broker verifies tokens but cannot mint them (no HS256 secret)")]
    CannotMint,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::CannotMint => ApiError::NotConfigured(e.to_string()),
            _ => ApiError::Unauthorized(e.to_string()),
        }
    }
}

/// Why the signing setup failed at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Production without a secret.
    #[error("auth.jwt_secret is required when environment = \"production\" (set SWITCHBOARD__AUTH__JWT_SECRET)")]
    MissingSecret,
    /// A key file could not be read or parsed.
    #[error("{0}")]
    Key(String),
}

/// Mints and verifies tokens.
pub struct Authority {
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    /// Revoked token ids, with the expiry (s) after which they can be forgotten.
    revoked: RwLock<HashMap<String, u64>>,
}

/// A freshly minted token.
pub struct Minted {
    /// The JWT.
    pub token: String,
    /// Its expiry, seconds since epoch.
    pub exp: u64,
}

impl Authority {
    /// Builds the authority from settings, generating the dev secret when needed.
    pub fn from_settings(s: &Settings) -> Result<Authority, KeyError> {
        let leeway = s.auth.leeway.as_secs();
        match s.auth.jwt_algorithm.as_str() {
            "RS256" | "ES256" => {
                let pem = std::fs::read(&s.auth.jwt_public_key_file).map_err(|e| {
                    KeyError::Key(format!(
                        "auth.jwt_public_key_file `{}`: {e}",
                        s.auth.jwt_public_key_file
                    ))
                })?;
                let (alg, key) = if s.auth.jwt_algorithm == "RS256" {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem))
                } else {
                    (Algorithm::ES256, DecodingKey::from_ec_pem(&pem))
                };
                let key = key.map_err(|e| KeyError::Key(format!("public key: {e}")))?;
                Ok(Authority::new(None, key, alg, leeway))
            }
            _ => {
                let secret = resolve_secret(s)?;
                Ok(Authority::new(
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                    leeway,
                ))
            }
        }
    }

    fn new(
        encoding: Option<EncodingKey>,
        decoding: DecodingKey,
        alg: Algorithm,
        leeway: u64,
    ) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authority {
            encoding,
            decoding,
            validation,
            revoked: RwLock::new(HashMap::new()),
        }
    }

    /// Marks token ids as revoked, each until its token's expiry (ms), as the store keeps
    /// them; returns those that were not already.
    pub fn revoke_all(&self, jtis: impl IntoIterator<Item = (String, i64)>) -> Vec<String> {
        let Ok(mut r) = self.revoked.write() else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for (jti, exp_ms) in jtis {
            let exp = (exp_ms.max(0) / 1000) as u64;
            if r.insert(jti.clone(), exp).is_none() {
                new.push(jti);
            }
        }
        new
    }

    /// Marks one token id as revoked until `exp` (s).
    pub fn revoke(&self, jti: &str, exp: u64) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(jti.to_owned(), exp);
        }
    }

    /// Forgets revoked ids whose tokens have expired (leeway included); how many are left.
    pub fn forget_expired(&self) -> usize {
        let now = (now_ms() / 1000) as u64;
        let leeway = self.validation.leeway;
        match self.revoked.write() {
            Ok(mut r) => {
                r.retain(|_, exp| exp.saturating_add(leeway) >= now);
                r.len()
            }
            Err(_) => 0,
        }
    }

    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains_key(jti))
            .unwrap_or(false)
    }

    /// Checks a token's signature and time claims, of either kind.
    fn signed_claims(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if !valid_id(&c.sub) {
            return Err(AuthError::Invalid("`sub` is not a valid user id".into()));
        }
        Ok(c)
    }

    /// Checks a token's signature, time claims and revocation, of either kind.
    fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let c = self.signed_claims(token)?;
        if c.jti.as_deref().is_some_and(|j| self.is_revoked(j)) {
            return Err(AuthError::Revoked);
        }
        Ok(c)
    }

    /// Checks an access token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let c = self.decode(token)?;
        if c.typ.as_deref() == Some("refresh") {
            return Err(AuthError::WrongKind);
        }
        Ok(c)
    }

    /// Checks a refresh token (it must carry a `jti`, which its use revokes).
    pub fn verify_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        let c = self.decode(token)?;
        if c.typ.as_deref() != Some("refresh") || c.jti.is_none() {
            return Err(AuthError::NotRefresh);
        }
        Ok(c)
    }

    /// Checks a token of either kind, revoked or not, for its revocation.
    pub fn verify_any(&self, token: &str) -> Result<Claims, AuthError> {
        self.signed_claims(token)
    }

    /// Mints a token for `user`.
    pub fn mint(
        &self,
        user: &str,
        roles: Vec<String>,
        ttl: Duration,
        device: Option<String>,
        refresh: bool,
    ) -> Result<Minted, AuthError> {
        let key = self.encoding.as_ref().ok_or(AuthError::CannotMint)?;
        let now = (now_ms() / 1000) as u64;
        let exp = now + ttl.as_secs().max(1);
        let claims = Claims {
            sub: user.to_owned(),
            exp,
            iat: Some(now),
            nbf: None,
            jti: Some(uuid::Uuid::new_v4().to_string()),
            roles,
            device,
            typ: refresh.then(|| "refresh".to_owned()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Minted { token, exp })
    }
}

/// The HS256 secret: configured, or (in development) read from or generated into the data dir.
fn resolve_secret(s: &Settings) -> Result<String, KeyError> {
    if !s.auth.jwt_secret.is_empty() {
        return Ok(s.auth.jwt_secret.clone());
    }
    if s.environment == Environment::Production {
        return Err(KeyError::MissingSecret);
    }
    let path = s.server.data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_secret(&path, &secret)
        .map_err(|e| KeyError::Key(format!("cannot write {}: {e}", path.display())))?;
    log::warn!(
        "development mode: generated a JWT secret in {} (set auth.jwt_secret for production)",
        path.display()
    );
    Ok(secret)
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(path)?.write_all(secret.as_bytes())
}

/// The bearer token of a request's `Authorization` header, if any.
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    // The scheme is case-insensitive (RFC 7235 section 2.1).
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}
