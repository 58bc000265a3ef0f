//! Statements of credentials: revoked token ids (`revoked_tokens`) and API keys
//! (`api_keys`). The SQL is the same on both backends; [`credential_queries!`] expands it
//! once per connection type, in each backend's `queries` module. Parameters are numbered
//! in order of first appearance (see `store::state_sql`).
//!
//! [`WriteOp::RevokeToken`]: crate::store::write::WriteOp::RevokeToken
//! [`WriteOp::CreateApiKey`]: crate::store::write::WriteOp::CreateApiKey
//! [`WriteOp::RevokeApiKey`]: crate::store::write::WriteOp::RevokeApiKey

/// An API key as stored: its secret only as a hash.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct ApiKeyRow {
    /// Key id (the public part of the key).
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
    /// What the operator called it.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    /// The secret's hash (a PHC string).
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub key_hash: String,
    /// Scopes, comma-separated.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub scopes: String,
    /// Creation time, ms.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub created_at: i64,
    /// Revocation time, ms; `None` while it works.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub revoked_at: Option<i64>,
}

/// Expands the credential statements for connection type `$conn`.
macro_rules! credential_queries {
    ($conn:ty) => {
        #[derive(diesel::QueryableByName)]
        struct RevokedJti {
            #[diesel(sql_type = diesel::sql_types::Text)]
            jti: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            expires_at: i64,
        }

        const API_KEY_COLUMNS: &str = "id, name, key_hash, scopes, created_at, revoked_at";

        /// Applies a credential write ([`WriteOp::RevokeToken`], [`WriteOp::CreateApiKey`],
        /// [`WriteOp::RevokeApiKey`]).
        pub fn apply_credential(
            c: &mut $conn,
            op: &$crate::store::write::WriteOp,
            now: i64,
        ) -> diesel::QueryResult<$crate::store::write::WriteOutcome> {
            use $crate::store::write::{WriteOp, WriteOutcome};
            Ok(match op {
                WriteOp::RevokeToken { jti, expires_at } => {
                    purge_revoked(c, now)?;
                    WriteOutcome::Revoked(revoke_token(c, jti, *expires_at, now)?)
                }
                WriteOp::CreateApiKey(key) => {
                    insert_api_key(c, key)?;
                    WriteOutcome::Done
                }
                WriteOp::RevokeApiKey { id } => WriteOutcome::Revoked(revoke_api_key(c, id, now)?),
                _ => {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "not a credential write".into(),
                    ))
                }
            })
        }

        /// Revokes token id `jti` (kept until `expires_at`, ms); `false` if it already was.
        pub fn revoke_token(
            c: &mut $conn,
            jti: &str,
            expires_at: i64,
            now: i64,
        ) -> diesel::QueryResult<bool> {
            use diesel::sql_types::{BigInt, Text};
            use diesel::RunQueryDsl;
            let n = diesel::sql_query(
                "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (jti) DO NOTHING",
            )
            .bind::<Text, _>(jti)
            .bind::<BigInt, _>(expires_at)
            .bind::<BigInt, _>(now)
            .execute(c)?;
            Ok(n == 1)
        }

        /// Token ids revoked at or after `since` (ms) that have not expired by `now`, with
        /// their tokens' expiry (ms).
        pub fn revoked_since(
            c: &mut $conn,
            since: i64,
            now: i64,
        ) -> diesel::QueryResult<Vec<(String, i64)>> {
            use diesel::sql_types::BigInt;
            use diesel::RunQueryDsl;
            let rows: Vec<RevokedJti> = diesel::sql_query(
                "SELECT jti, expires_at FROM revoked_tokens \
                 WHERE revoked_at >= $1 AND expires_at > $2",
            )
            .bind::<BigInt, _>(since)
            .bind::<BigInt, _>(now)
            .load(c)?;
            Ok(rows.into_iter().map(|r| (r.jti, r.expires_at)).collect())
        }

        /// Forgets revoked ids that expired before `now` (a token past `exp` is refused
        /// anyway).
        pub fn purge_revoked(c: &mut $conn, now: i64) -> diesel::QueryResult<usize> {
            use diesel::sql_types::BigInt;
            use diesel::RunQueryDsl;
            diesel::sql_query("DELETE FROM revoked_tokens WHERE expires_at <= $1")
                .bind::<BigInt, _>(now)
                .execute(c)
        }

        /// Stores a new API key.
        pub fn insert_api_key(
            c: &mut $conn,
            k: &$crate::store::credentials_sql::ApiKeyRow,
        ) -> diesel::QueryResult<()> {
            use diesel::sql_types::{BigInt, Text};
            use diesel::RunQueryDsl;
            diesel::sql_query(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind::<Text, _>(&k.id)
            .bind::<Text, _>(&k.name)
            .bind::<Text, _>(&k.key_hash)
            .bind::<Text, _>(&k.scopes)
            .bind::<BigInt, _>(k.created_at)
            .execute(c)
            .map(drop)
        }

        /// Revokes API key `id`; `false` if there is none or it already was.
        pub fn revoke_api_key(c: &mut $conn, id: &str, now: i64) -> diesel::QueryResult<bool> {
            use diesel::sql_types::{BigInt, Text};
            use diesel::RunQueryDsl;
            let n = diesel::sql_query(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(id)
            .execute(c)?;
            Ok(n == 1)
        }

        /// API key `id`, revoked or not.
        pub fn api_key(
            c: &mut $conn,
            id: &str,
        ) -> diesel::QueryResult<Option<$crate::store::credentials_sql::ApiKeyRow>> {
            use diesel::sql_types::Text;
            use diesel::{OptionalExtension, RunQueryDsl};
            diesel::sql_query(format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"
            ))
            .bind::<Text, _>(id)
            .get_result(c)
            .optional()
        }

        /// Every API key, newest first.
        pub fn api_keys(
            c: &mut $conn,
        ) -> diesel::QueryResult<Vec<$crate::store::credentials_sql::ApiKeyRow>> {
            use diesel::RunQueryDsl;
            diesel::sql_query(format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
            ))
            .load(c)
        }

        /// Ids of API keys revoked at or after `since` (ms).
        pub fn api_keys_revoked_since(
            c: &mut $conn,
            since: i64,
        ) -> diesel::QueryResult<Vec<String>> {
            use diesel::sql_types::BigInt;
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = diesel::sql_types::Text)]
                id: String,
            }
            let rows: Vec<Id> = diesel::sql_query("SELECT id FROM api_keys WHERE revoked_at >= $1")
                .bind::<BigInt, _>(since)
                .load(c)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }
    };
}

pub(crate) use credential_queries;
