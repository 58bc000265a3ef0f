//! Statements of synced documents (`state_documents`, `state_collections`). The SQL is the
//! same on both backends; [`state_queries!`] expands it once per connection type, in each
//! backend's `queries` module.
//!
//! Parameters are numbered in the order they first appear in each statement: SQLite reads
//! `$n` as a name and numbers parameters by first appearance, PostgreSQL by `n`, and
//! Diesel binds by position, so only that order means the same on both.

/// A state write as the statements take it.
pub struct PutState<'a> {
    /// Owner.
    pub user: &'a str,
    /// Collection.
    pub collection: &'a str,
    /// Key.
    pub key: &'a str,
    /// JSON text.
    pub value: &'a str,
    /// The version the writer saw (0: the key is new to it).
    pub base_version: i64,
    /// The writing device.
    pub client_id: Option<&'a str>,
    /// Now, ms since epoch.
    pub now: i64,
}

/// Expands `put_state` and `state_since` for connection type `$conn`.
macro_rules! state_queries {
    ($conn:ty) => {
        #[derive(diesel::QueryableByName)]
        struct LastRevision {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            last_revision: i64,
        }

        const STATE_COLUMNS: &str = "doc_key, value, version, revision, updated_at, updated_by";

        fn state_doc(
            c: &mut $conn,
            user: &str,
            collection: &str,
            key: &str,
        ) -> diesel::QueryResult<Option<$crate::store::models::StateDoc>> {
            use diesel::sql_types::Text;
            use diesel::{OptionalExtension, RunQueryDsl};
            diesel::sql_query(format!(
                "SELECT {STATE_COLUMNS} FROM state_documents \
                 WHERE user_id = $1 AND collection = $2 AND doc_key = $3"
            ))
            .bind::<Text, _>(user)
            .bind::<Text, _>(collection)
            .bind::<Text, _>(key)
            .get_result(c)
            .optional()
        }

        /// Writes a document if `base_version` is its version (a new key has version 0),
        /// taking the collection's next revision; otherwise answers the stored document.
        pub fn put_state(
            c: &mut $conn,
            p: &$crate::store::state_sql::PutState<'_>,
        ) -> diesel::QueryResult<$crate::store::models::StateOutcome> {
            use diesel::sql_types::{BigInt, Nullable, Text};
            use diesel::RunQueryDsl;
            use $crate::store::models::StateOutcome;
            let written = if p.base_version == 0 {
                diesel::sql_query(
                    "INSERT INTO state_documents (user_id, collection, doc_key, value, version, \
                                                  revision, updated_at, updated_by) \
                     VALUES ($1, $2, $3, $4, 1, 0, $5, $6) \
                     ON CONFLICT (user_id, collection, doc_key) DO NOTHING",
                )
                .bind::<Text, _>(p.user)
                .bind::<Text, _>(p.collection)
                .bind::<Text, _>(p.key)
                .bind::<Text, _>(p.value)
                .bind::<BigInt, _>(p.now)
                .bind::<Nullable<Text>, _>(p.client_id)
                .execute(c)?
            } else {
                diesel::sql_query(
                    "UPDATE state_documents SET value = $1, version = $2 + 1, updated_at = $3, \
                                                updated_by = $4 \
                     WHERE user_id = $5 AND collection = $6 AND doc_key = $7 AND version = $2",
                )
                .bind::<Text, _>(p.value)
                .bind::<BigInt, _>(p.base_version)
                .bind::<BigInt, _>(p.now)
                .bind::<Nullable<Text>, _>(p.client_id)
                .bind::<Text, _>(p.user)
                .bind::<Text, _>(p.collection)
                .bind::<Text, _>(p.key)
                .execute(c)?
            };
            if written == 0 {
                return Ok(StateOutcome::Conflict {
                    current: state_doc(c, p.user, p.collection, p.key)?,
                });
            }
            let rev: LastRevision = diesel::sql_query(
                "INSERT INTO state_collections (user_id, collection, last_revision) \
                 VALUES ($1, $2, 1) \
                 ON CONFLICT (user_id, collection) DO UPDATE \
                    SET last_revision = state_collections.last_revision + 1 \
                 RETURNING last_revision",
            )
            .bind::<Text, _>(p.user)
            .bind::<Text, _>(p.collection)
            .get_result(c)?;
            diesel::sql_query(
                "UPDATE state_documents SET revision = $1 \
                 WHERE user_id = $2 AND collection = $3 AND doc_key = $4",
            )
            .bind::<BigInt, _>(rev.last_revision)
            .bind::<Text, _>(p.user)
            .bind::<Text, _>(p.collection)
            .bind::<Text, _>(p.key)
            .execute(c)?;
            Ok(StateOutcome::Applied {
                version: p.base_version + 1,
                revision: rev.last_revision,
            })
        }

        /// The documents of a collection written after revision `since`, oldest first, at
        /// most `limit`; and the collection's revision now.
        pub fn state_since(
            c: &mut $conn,
            user: &str,
            collection: &str,
            since: i64,
            limit: i64,
        ) -> diesel::QueryResult<(Vec<$crate::store::models::StateDoc>, i64)> {
            use diesel::sql_types::{BigInt, Text};
            use diesel::{OptionalExtension, RunQueryDsl};
            let docs = diesel::sql_query(format!(
                "SELECT {STATE_COLUMNS} FROM state_documents \
                 WHERE user_id = $1 AND collection = $2 AND revision > $3 \
                 ORDER BY revision LIMIT $4"
            ))
            .bind::<Text, _>(user)
            .bind::<Text, _>(collection)
            .bind::<BigInt, _>(since)
            .bind::<BigInt, _>(limit)
            .load(c)?;
            let now: Option<LastRevision> = diesel::sql_query(
                "SELECT last_revision FROM state_collections \
                 WHERE user_id = $1 AND collection = $2",
            )
            .bind::<Text, _>(user)
            .bind::<Text, _>(collection)
            .get_result(c)
            .optional()?;
            Ok((docs, now.map_or(0, |r| r.last_revision)))
        }
    };
}

pub(crate) use state_queries;
