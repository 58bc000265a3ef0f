//! Statements of a user's channels and cursors: the channels they may read, how far each
//! of their devices has marked each channel delivered (`delivery_cursors`), how far they
//! have read (`read_cursors`). The SQL is the same on both backends; [`cursor_queries!`]
//! expands it once per connection type. Parameters are numbered in order of first
//! appearance (see `store::state_sql`).

/// Expands `readable_channels`, `delivery_cursors`, `read_cursors`, `max_delivered` and
/// `advance_delivery_cursors` for connection type `$conn`.
macro_rules! cursor_queries {
    ($conn:ty) => {
        #[derive(diesel::QueryableByName)]
        struct ChannelCursor {
            #[diesel(sql_type = diesel::sql_types::Text)]
            channel: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            up_to_seq: i64,
        }

        /// Names of the channels `user` may read that hold messages: DMs with them (more
        /// may be returned, as `LIKE` takes `_` for any character and SQLite ignores case;
        /// the caller keeps those whose name has `user` as a party), their groups, their
        /// `user:` channel and every `broadcast:` channel.
        pub fn readable_channels(c: &mut $conn, user: &str) -> diesel::QueryResult<Vec<String>> {
            use diesel::sql_types::Text;
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Name {
                #[diesel(sql_type = Text)]
                name: String,
            }
            let rows: Vec<Name> = diesel::sql_query(
                "SELECT name FROM channels WHERE name LIKE 'dm:' || $1 || ':%' \
                                              OR name LIKE 'dm:%:' || $1 \
                                              OR name LIKE 'broadcast:%' \
                                              OR name = 'user:' || $1 \
                 UNION SELECT 'group:' || group_id FROM group_members WHERE user_id = $1",
            )
            .bind::<Text, _>(user)
            .load(c)?;
            Ok(rows.into_iter().map(|r| r.name).collect())
        }

        /// The delivery cursors of one device: (channel, last seq marked delivered).
        pub fn delivery_cursors(
            c: &mut $conn,
            user: &str,
            client_id: &str,
        ) -> diesel::QueryResult<Vec<(String, i64)>> {
            use diesel::sql_types::Text;
            use diesel::RunQueryDsl;
            let rows: Vec<ChannelCursor> = diesel::sql_query(
                "SELECT channel, up_to_seq FROM delivery_cursors \
                 WHERE user_id = $1 AND client_id = $2",
            )
            .bind::<Text, _>(user)
            .bind::<Text, _>(client_id)
            .load(c)?;
            Ok(rows.into_iter().map(|r| (r.channel, r.up_to_seq)).collect())
        }

        /// A user's read cursors: (channel, last seq read).
        pub fn read_cursors(c: &mut $conn, user: &str) -> diesel::QueryResult<Vec<(String, i64)>> {
            use diesel::sql_types::Text;
            use diesel::RunQueryDsl;
            let rows: Vec<ChannelCursor> =
                diesel::sql_query("SELECT channel, up_to_seq FROM read_cursors WHERE user_id = $1")
                    .bind::<Text, _>(user)
                    .load(c)?;
            Ok(rows.into_iter().map(|r| (r.channel, r.up_to_seq)).collect())
        }

        /// The furthest any device of `user` has marked `channel` delivered (0: none).
        pub fn max_delivered(c: &mut $conn, user: &str, channel: &str) -> diesel::QueryResult<i64> {
            use diesel::sql_types::{BigInt, Nullable, Text};
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Max {
                #[diesel(sql_type = Nullable<BigInt>)]
                up_to_seq: Option<i64>,
            }
            let max: Max = diesel::sql_query(
                "SELECT max(up_to_seq) AS up_to_seq FROM delivery_cursors \
                 WHERE user_id = $1 AND channel = $2",
            )
            .bind::<Text, _>(user)
            .bind::<Text, _>(channel)
            .get_result(c)?;
            Ok(max.up_to_seq.unwrap_or(0))
        }

        /// Moves a device's cursors forward (never back).
        pub fn advance_delivery_cursors(
            c: &mut $conn,
            user: &str,
            client_id: &str,
            cursors: &[(String, i64)],
            now: i64,
        ) -> diesel::QueryResult<()> {
            use diesel::sql_types::{BigInt, Text};
            use diesel::RunQueryDsl;
            for (channel, up_to_seq) in cursors {
                diesel::sql_query(
                    "INSERT INTO delivery_cursors (user_id, client_id, channel, up_to_seq, \
                                                   updated_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (user_id, client_id, channel) DO UPDATE \
                        SET up_to_seq = excluded.up_to_seq, updated_at = excluded.updated_at \
                        WHERE excluded.up_to_seq > delivery_cursors.up_to_seq",
                )
                .bind::<Text, _>(user)
                .bind::<Text, _>(client_id)
                .bind::<Text, _>(channel)
                .bind::<BigInt, _>(up_to_seq)
                .bind::<BigInt, _>(now)
                .execute(c)?;
            }
            Ok(())
        }
    };
}

pub(crate) use cursor_queries;
