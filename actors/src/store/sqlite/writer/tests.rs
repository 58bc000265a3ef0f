//! Unit tests of `writer`.

use super::*;
use crate::store::models::NewMessage;
use crate::store::sqlite::dedupe::DedupeSettings;
use crate::store::sqlite::dedupe_runs::{self, DedupeRuns};
use crate::store::sqlite::{open_pool, run_migrations, StoreConfig, Synchronous};

const WINDOW: i64 = 3_600_000;

mod places;
mod resend_keys;

/// The seq each message of `channel` is stored as, in seq order.
fn seqs_of(pool: &DbPool, channel: &str) -> Vec<(i64, Option<String>)> {
    use crate::store::sqlite::schema::messages;
    use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
    let mut c = pool.get().expect("conn");
    messages::table
        .filter(messages::channel.eq(channel))
        .order(messages::seq.asc())
        .select((messages::seq, messages::client_msg_id))
        .load(&mut c)
        .expect("read")
}

/// A database without migrations in a directory of its own (removed with the `TempDir`).
fn empty() -> (tempfile::TempDir, DbPool) {
    crate::store::sqlite::temp_pool(1000, 16384)
}

/// The page size of the database behind `pool`.
fn page_size(pool: &DbPool) -> i64 {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        page_size: i64,
    }
    let size: Size = diesel::sql_query("PRAGMA page_size")
        .get_result(&mut pool.get().expect("conn"))
        .expect("page size");
    size.page_size
}

#[test]
fn a_new_database_takes_the_configured_page_size_and_an_old_one_keeps_its_own() {
    let (dir, pool) = fresh();
    assert_eq!(page_size(&pool), 16384);
    let old = dir.path().join("old.db").display().to_string();
    let open = |page_size| {
        open_pool(
            &StoreConfig {
                url: old.clone(),
                pool_size: 2,
                synchronous: Synchronous::Normal,
                wal_autocheckpoint: 1000,
                page_size,
            },
            Default::default(),
        )
        .expect("pool")
    };
    let four = open(4096);
    run_migrations(&four).expect("migrations");
    assert_eq!(page_size(&four), 4096);
    drop(four);
    assert_eq!(page_size(&open(16384)), 4096);
}

/// A migrated database.
fn fresh() -> (tempfile::TempDir, DbPool) {
    let (dir, pool) = empty();
    run_migrations(&pool).expect("migrations");
    (dir, pool)
}

fn load_keys(pool: &DbPool, run_keys: usize) -> DedupeKeys {
    let mut c = pool.get().expect("conn");
    let settings = DedupeSettings {
        run_keys,
        window_ms: WINDOW,
        filter_bytes: 1 << 20,
    };
    DedupeKeys::load(&mut c, settings, now_ms()).expect("load")
}

fn load_index(pool: &DbPool) -> ChannelIndex {
    ChannelIndex::load(&mut pool.get().expect("conn")).expect("load places")
}

/// Writer memory as at start-up, writing a run of keys once `run_keys` are held.
fn load(pool: &DbPool, run_keys: usize) -> WriterMemory {
    WriterMemory::new(load_keys(pool, run_keys), load_index(pool))
}

/// Memory whose pending keys move on every commit, however few they are.
fn load_eager(pool: &DbPool) -> WriterMemory {
    WriterMemory::new(load_keys(pool, 1).paced(1), load_index(pool))
}

fn dm(sender: &str, cmid: &str) -> WriteOp {
    WriteOp::Message(NewMessage {
        channel: format!("dm:{sender}:zed").into(),
        kind: "chat_message".into(),
        sender_id: sender.into(),
        target_id: "zed".into(),
        client_id: None,
        client_msg_id: Some(cmid.into()),
        payload: r#"{"content":"hi"}"#.into(),
    })
}

/// Commits `ops` as one batch; answers (message id, duplicate) per write.
fn write(pool: &DbPool, mem: &mut WriterMemory, ops: Vec<WriteOp>) -> Vec<(MessageId, bool)> {
    let mut c = pool.get().expect("conn");
    let batch = WriteBatch {
        ops,
        dedupe_window_ms: WINDOW,
    };
    commit(
        &mut c,
        mem,
        batch,
        &ActorHealth::new("test"),
        &DatabaseHealth::default(),
    )
    .into_iter()
    .map(|r| match r {
        Ok(WriteOutcome::Stored { msg, duplicate }) => (msg.id, duplicate),
        other => panic!("not stored: {other:?}"),
    })
    .collect()
}

/// Every (key, position) pair in the live runs, sorted, checking that no pair is in two
/// runs (what the writer writes; a test may write others itself).
fn moved_pairs(pool: &DbPool) -> Vec<(i64, i64)> {
    let all = live_pairs(pool);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "no pair in two runs");
    all
}

/// Every (key, position) pair in the live runs, sorted, checking that each run's blocks
/// are sorted, in order, and begin at their fences.
fn live_pairs(pool: &DbPool) -> Vec<(i64, i64)> {
    let mut c = pool.get().expect("conn");
    let runs = queries::dedupe_runs(&mut c).expect("runs");
    let blocks: Vec<(i64, Vec<u8>)> = queries::dedupe_run_blocks_iter(&mut c)
        .expect("blocks")
        .map(|b| b.expect("block"))
        .collect();
    let mut all = Vec::new();
    for (run, state, keys, fences) in runs {
        if state != dedupe_runs::LIVE {
            continue;
        }
        let fences = dedupe_runs::decode_fences(run, &fences).expect("fences");
        let (lo, hi) = dedupe_runs::block_ids(run);
        let mine: Vec<&(i64, Vec<u8>)> = blocks
            .iter()
            .filter(|(id, _)| (lo..=hi).contains(id))
            .collect();
        assert_eq!(mine.len(), fences.len(), "a fence per block of run {run}");
        let mut pairs = Vec::new();
        for ((id, bytes), fence) in mine.iter().zip(&fences) {
            let block = dedupe_runs::decode(*id, bytes).expect("pairs");
            assert_eq!(block.first().map(|p| p.0), Some(*fence));
            pairs.extend(block);
        }
        assert!(pairs.windows(2).all(|w| w[0] < w[1]), "run {run} sorted");
        assert_eq!(pairs.len() as i64, keys, "run {run} counts its pairs");
        all.extend(pairs);
    }
    all.sort_unstable();
    all
}

fn moved_keys(pool: &DbPool) -> i64 {
    moved_pairs(pool).len() as i64
}

/// Rows of every statement shape (32, 16, 4 and 1 rows), as `insert_messages` is
/// given them: one time for all, or (never from the writer) times that differ.
#[test]
fn multi_row_inserts_store_each_rows_own_values() {
    use crate::store::sqlite::schema::messages;
    use diesel::{QueryDsl, RunQueryDsl, SelectableHelper};
    let (_dir, pool) = fresh();
    let mut c = pool.get().expect("conn");
    let row = |n: i64, at: i64| {
        let WriteOp::Message(m) = dm(&format!("u{n}"), &format!("c{n}")) else {
            unreachable!()
        };
        m.stored(MessageId::of(uuid::Uuid::from_u128(n as u128)), n, at)
    };
    // 53 rows at one time, of one kind: a statement of each shape, sharing those values
    // (and a device's name, which is not shared).
    let same: Vec<StoredMessage> = (1..=53)
        .map(|n| StoredMessage {
            client_id: Some("phone".into()),
            ..row(n, 1_000)
        })
        .collect();
    // Rows whose time or kind differ from the first of their statement: they may not
    // share the first row's.
    let differ: Vec<StoredMessage> = (54..=117)
        .map(|n| {
            let mut m = row(n, if n < 86 { 1_000 + n } else { 2_000 });
            if n % 3 == 0 {
                m.kind = "group_message".into();
            }
            if n % 4 == 0 {
                m.client_id = Some(format!("d{n}").into());
            }
            m
        })
        .collect();
    let first = queries::insert_messages(&mut c, &same).expect("shared values");
    let next = queries::insert_messages(&mut c, &differ).expect("values differ");
    assert_eq!(next, first.map(|p| p + 53));
    let stored: Vec<StoredMessage> = messages::table
        .order(messages::pos)
        .select(StoredMessage::as_select())
        .load(&mut c)
        .expect("read back");
    let written: Vec<StoredMessage> = same.into_iter().chain(differ).collect();
    assert_eq!(stored, written);
}

#[test]
fn the_search_index_catches_up_a_step_at_a_time_and_finds_every_message_once() {
    use crate::store::models::SearchQuery;
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 8192);
    let ops: Vec<WriteOp> = (0..7).map(|i| dm("alice", &format!("f{i}"))).collect();
    write(&pool, &mut mem, ops);
    let mut c = pool.get().expect("conn");
    let steps: Vec<bool> = (0..4)
        .map(|_| queries::search_catch_up(&mut c, 3).expect("catch up"))
        .collect();
    // 3 + 3 + 1: the third step reaches the newest message; then there is nothing to do.
    assert_eq!(steps, [false, false, true, true]);
    let found = queries::search(
        &mut c,
        &SearchQuery {
            words: vec!["hi".into()],
            channels: vec!["dm:alice:zed".into()],
            from: 0,
            to: i64::MAX,
            before: None,
            limit: 100,
        },
    )
    .expect("search");
    let mut seqs: Vec<i64> = found.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [7, 6, 5, 4, 3, 2, 1], "newest first, each once");
    seqs.dedup();
    assert_eq!(seqs.len(), 7);
}
