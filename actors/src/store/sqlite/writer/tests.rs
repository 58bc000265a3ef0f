//! Unit tests of `writer`.

use super::*;
use crate::store::models::NewMessage;
use crate::store::sqlite::dedupe::DedupeSettings;
use crate::store::sqlite::dedupe_runs::{self, DedupeRuns};
use crate::store::sqlite::{open_pool, run_migrations, StoreConfig, Synchronous};

const WINDOW: i64 = 3_600_000;

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
fn a_resend_is_found_while_its_key_waits_in_memory_after_it_moved_and_after_a_restart() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 2);
    let first = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    assert_eq!(mem.keys.pending(), 1);
    assert_eq!(moved_keys(&pool), 0);
    let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    assert_eq!(again, vec![(first[0].0, true)]);

    // Two keys held: the next commit writes them as a run.
    write(&pool, &mut mem, vec![dm("bob", "b1")]);
    write(&pool, &mut mem, vec![dm("bob", "b2")]);
    assert_eq!(moved_keys(&pool), 2);
    assert_eq!(mem.keys.pending(), 1, "bob's b2 waits");
    let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    assert_eq!(again, vec![(first[0].0, true)]);

    // After a restart, from the run or from the messages stored after the marker.
    let mut mem = load(&pool, 2);
    assert_eq!(mem.keys.pending(), 1, "b2 read back");
    let again = write(&pool, &mut mem, vec![dm("alice", "m1"), dm("bob", "b2")]);
    assert!(again.iter().all(|(_, dup)| *dup), "{again:?}");
    assert_eq!(again[0].0, first[0].0);
    // Another sender's frame id is another key.
    let other = write(&pool, &mut mem, vec![dm("carol", "m1")]);
    assert!(!other[0].1);
}

#[test]
fn held_keys_move_as_one_run_once_enough_are_held_and_are_not_read_back() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 100);
    let ops = (0..200).map(|i| dm("alice", &format!("f{i}"))).collect();
    write(&pool, &mut mem, ops);
    assert_eq!(mem.keys.pending(), 200);
    assert_eq!(
        load(&pool, 100).keys.pending(),
        200,
        "read back after a restart"
    );
    write(&pool, &mut mem, vec![dm("bob", "g0")]);
    assert_eq!(moved_keys(&pool), 200, "one run of the 200 held");
    assert_eq!(mem.keys.pending(), 1);
    assert_eq!(mem.keys.runs().len(), 1);
    // A restart reads back only what came after the run.
    assert_eq!(load(&pool, 100).keys.pending(), 1);
    // Memory never holds more than the threshold and a batch.
    for i in 1..300 {
        write(&pool, &mut mem, vec![dm("bob", &format!("g{i}"))]);
        assert!(mem.keys.pending() <= 100);
    }
    assert_eq!(moved_keys(&pool) + mem.keys.pending() as i64, 500);
}

/// Writes `pairs` as a run the way a commit does (`budget` pairs of merging), and
/// applies it to `runs`.
fn commit_run(pool: &DbPool, runs: &mut DedupeRuns, pairs: &[(i64, i64)], budget: usize) {
    let mut c = pool.get().expect("conn");
    let moved = c
        .immediate_transaction(|c| {
            let written = runs.write_run(c, pairs)?;
            diesel::QueryResult::Ok(runs.step(c, written, budget))
        })
        .expect("commit");
    runs.committed(moved);
}

/// The positions of `key` in the live runs, sorted.
fn positions(pool: &DbPool, runs: &DedupeRuns, key: i64) -> Vec<i64> {
    let mut found = runs
        .positions(&mut pool.get().expect("conn"), key)
        .expect("look-up");
    found.sort_unstable();
    found
}

#[test]
fn runs_of_one_size_merge_into_one_a_budget_at_a_time_and_keep_every_pair_once() {
    let (_dir, pool) = fresh();
    let mut runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
    // Four runs of 300 keys spread over all 64 bits (negative ones too); one pair is in
    // two runs (moved twice), one key has two positions.
    let step = u64::MAX / 1200;
    let mut every = Vec::new();
    for r in 0..4i64 {
        let mut pairs: Vec<(i64, i64)> = (0..300u64)
            .map(|i| (((i * 4 + r as u64) * step) as i64, 10 * i as i64 + r))
            .collect();
        if r == 1 {
            pairs.push(every[5]);
            pairs.push((every[7].0, 99_999));
        }
        pairs.sort_unstable();
        every.extend(pairs.iter().copied());
        commit_run(&pool, &mut runs, &pairs, 100);
    }
    every.sort_unstable();
    every.dedup();
    let two = every.iter().find(|p| p.1 == 99_999).expect("pair").0;
    assert_eq!(
        positions(&pool, &runs, two).len(),
        2,
        "found before the merge"
    );
    assert!(runs.merging(), "four runs of a class: a merge began");
    assert_eq!(runs.len(), 4);

    // A commit merges about 100 pairs: the inputs stay live until the last one.
    let mut commits = 0;
    let mut crashed = false;
    while runs.merging() {
        commit_run(&pool, &mut runs, &[], 100);
        commits += 1;
        assert_eq!(positions(&pool, &runs, two).len(), 2, "found mid-merge");
        if commits == 3 && !crashed {
            // A crash mid-merge: its output is thrown away, the inputs are all there,
            // and the next commit begins the merge again.
            crashed = true;
            runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
            assert_eq!((runs.len(), runs.merging()), (4, false));
            let mut pairs = live_pairs(&pool);
            pairs.dedup();
            assert_eq!(pairs, every);
            commit_run(&pool, &mut runs, &[], 100);
            assert!(runs.merging());
            commits = 0;
        }
    }
    assert!(
        (11..=14).contains(&commits),
        "{commits} commits of 100 pairs"
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(runs.keys(), every.len() as u64);
    assert_eq!(moved_pairs(&pool), every);
    assert_eq!(positions(&pool, &runs, two).len(), 2);
    assert_eq!(positions(&pool, &runs, every[0].0), vec![every[0].1]);
    assert!(positions(&pool, &runs, every[0].0 + 1).is_empty());
    assert!(positions(&pool, &runs, i64::MIN).is_empty());

    // The merged runs' blocks go a budget per commit, then their rows.
    for _ in 0..20 {
        commit_run(&pool, &mut runs, &[], 100);
    }
    let mut c = pool.get().expect("conn");
    assert_eq!(queries::dedupe_runs(&mut c).expect("runs").len(), 1);
    let blocks = queries::dedupe_run_blocks_iter(&mut c)
        .expect("blocks")
        .count();
    assert_eq!(blocks, every.len().div_ceil(dedupe_runs::BLOCK));
    let back = DedupeRuns::load(&mut c).expect("load");
    assert_eq!((back.len(), back.keys()), (1, every.len() as u64));
}

#[test]
fn small_runs_merge_beside_a_big_merge_and_smallest_first() {
    let (_dir, pool) = fresh();
    let mut runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
    // Four runs of 512 keys (four blocks: class 1), merged 40 pairs per commit.
    let big = |r: i64| -> Vec<(i64, i64)> { (0..512).map(|i| (i * 8 + r, i)).collect() };
    for r in 0..4 {
        commit_run(&pool, &mut runs, &big(r), 40);
    }
    assert!(runs.merging());
    // Four runs of one key each (class 0) while it goes on: merged first, at once.
    for r in 0..4 {
        commit_run(&pool, &mut runs, &[(10_000 + r, r)], 40);
    }
    commit_run(&pool, &mut runs, &[], 40);
    assert_eq!(
        runs.len(),
        5,
        "the four big ones and the small ones merged into one"
    );
    assert!(runs.merging(), "the big merge is still under way");
    while runs.merging() {
        commit_run(&pool, &mut runs, &[], 40);
    }
    assert_eq!(runs.len(), 2);
    assert_eq!(runs.keys(), 4 * 512 + 4);
    assert_eq!(moved_pairs(&pool).len(), 4 * 512 + 4);
}

#[test]
fn a_merge_that_cannot_read_an_input_stops_merging_but_not_the_commit() {
    let (_dir, pool) = fresh();
    let mut runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
    for r in 0..4 {
        commit_run(&pool, &mut runs, &[(r * 1000, r)], 100);
    }
    assert!(runs.merging());
    // The block of run 2 goes missing.
    let gone = dedupe_runs::block_id(2, 0);
    queries::delete_run_blocks(&mut pool.get().expect("conn"), gone, gone).expect("delete");
    commit_run(&pool, &mut runs, &[(99, 9)], 100);
    assert!(!runs.merging());
    assert_eq!(runs.len(), 5, "the commit's own run was written");
    assert_eq!(positions(&pool, &runs, 99), vec![9]);
    assert_eq!(positions(&pool, &runs, 3000), vec![3]);
    let rows = queries::dedupe_runs(&mut pool.get().expect("conn")).expect("runs");
    assert!(
        rows.iter().all(|r| r.1 == dedupe_runs::LIVE),
        "the merge's output was rolled back: {rows:?}"
    );
    // Four runs of a class again, but no merge until a restart.
    commit_run(&pool, &mut runs, &[(98, 8)], 100);
    assert!(!runs.merging());
}

#[test]
fn runs_written_under_load_stay_few_and_every_key_is_found() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 64);
    for b in 0..60 {
        let ops = (0..50).map(|i| dm("alice", &format!("f{b}-{i}"))).collect();
        write(&pool, &mut mem, ops);
    }
    let runs = mem.keys.runs().len();
    assert!((1..=8).contains(&runs), "{runs} live runs");
    assert_eq!(moved_keys(&pool) + mem.keys.pending() as i64, 3000);
    let mut mem = load(&pool, 64);
    let again: Vec<WriteOp> = (0..60).map(|b| dm("alice", &format!("f{b}-7"))).collect();
    let out = write(&pool, &mut mem, again);
    assert!(out.iter().all(|(_, dup)| *dup), "every resend found");
}

#[test]
fn a_database_from_before_migration_3_keeps_its_messages_and_their_resend_keys() {
    use crate::store::sqlite::MIGRATIONS;
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    let (_dir, pool) = empty();
    let mut c = pool.get().expect("conn");
    for _ in 0..2 {
        c.run_next_migration(MIGRATIONS)
            .expect("migrations 1 and 2");
    }
    c.batch_execute(&format!(
        "INSERT INTO messages (id, channel, seq, kind, sender_id, target_id, client_id, \
         client_msg_id, payload, created_at) VALUES \
         ('01900000-0000-7000-8000-00000000000a', 'dm:alice:zed', 1, 'chat_message', 'alice', 'zed', NULL, 'm1', '{{}}', {0}), \
         ('01900000-0000-7000-8000-00000000000b', 'dm:alice:zed', 2, 'chat_message', 'alice', 'zed', NULL, 'm2', '{{}}', {0}); \
         INSERT INTO channels (name, last_seq, created_at) VALUES ('dm:alice:zed', 2, {0});",
        now_ms()
    ))
    .expect("rows of the old schema");
    drop(c);
    run_migrations(&pool).expect("the rest");

    let mut mem = load(&pool, 64);
    assert_eq!(mem.keys.pending(), 2, "keys read back from the old rows");
    let again = write(&pool, &mut mem, vec![dm("alice", "m2"), dm("alice", "m3")]);
    assert_eq!(
        again[0],
        (
            MessageId::parse("01900000-0000-7000-8000-00000000000b").expect("uuid"),
            true
        )
    );
    assert!(!again[1].1);
    // The new message continues the channel's seqs after the old rows.
    let stored = seqs_of(&pool, "dm:alice:zed");
    assert_eq!(stored.last(), Some(&(3, Some("m3".to_owned()))));
}

#[test]
fn a_resend_inside_one_batch_gets_the_first_copy() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 4);
    let out = write(
        &pool,
        &mut mem,
        vec![dm("alice", "m1"), dm("bob", "m1"), dm("alice", "m1")],
    );
    assert_eq!(out[2], (out[0].0, true));
    assert!(!out[0].1 && !out[1].1);
    assert_ne!(out[0].0, out[1].0, "another sender's id is another frame");
    assert_eq!(seqs_of(&pool, "dm:alice:zed").len(), 1, "stored once");
}

#[test]
fn a_key_shared_with_another_message_is_checked_against_the_message() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 1);
    let bobs = write(&pool, &mut mem, vec![dm("bob", "b1")]);
    // A pair under alice's key pointing at bob's message: what a hash collision looks like.
    let mut runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
    commit_run(&pool, &mut runs, &[(key_of("alice", "m1") as i64, 1)], 100);
    // Read back at start-up, so that the look-up does not skip the table.
    let mut mem = load(&pool, 1);
    let alices = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    assert!(!alices[0].1, "not taken for bob's message");
    assert_ne!(alices[0].0, bobs[0].0);
}

#[test]
fn keys_of_a_batch_with_resends_in_it_point_at_their_own_messages() {
    let (_dir, pool) = fresh();
    let mut mem = load_eager(&pool);
    let first = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    // A resend first, then two new messages: the new rows are not the batch's first.
    let mixed = write(
        &pool,
        &mut mem,
        vec![dm("alice", "m1"), dm("alice", "m2"), dm("bob", "b1")],
    );
    assert_eq!(mixed[0], (first[0].0, true));
    // One more commit moves every key; after a restart they come from the table alone.
    write(&pool, &mut mem, vec![dm("carol", "c1")]);
    assert!(moved_keys(&pool) >= 3);
    let mut mem = load_eager(&pool);
    let again = write(&pool, &mut mem, vec![dm("bob", "b1"), dm("alice", "m2")]);
    assert_eq!(again, vec![(mixed[2].0, true), (mixed[1].0, true)]);
}

#[test]
fn a_database_from_before_migration_4_keeps_its_moved_resend_keys() {
    use crate::store::sqlite::MIGRATIONS;
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    let (_dir, pool) = empty();
    let mut c = pool.get().expect("conn");
    for _ in 0..3 {
        c.run_next_migration(MIGRATIONS).expect("migrations 1 to 3");
    }
    // A message whose key had moved (rows of the old shape), so that nothing reads it
    // back from `messages` at start-up.
    c.batch_execute(&format!(
        "INSERT INTO messages (pos, id, channel, seq, kind, sender_id, target_id, client_id, \
         client_msg_id, payload, created_at) VALUES \
         (7, '01900000-0000-7000-8000-00000000000a', 'dm:alice:zed', 1, 'chat_message', 'alice', 'zed', NULL, 'm1', '{{}}', {0}); \
         INSERT INTO channels (name, last_seq, created_at) VALUES ('dm:alice:zed', 1, {0}); \
         INSERT INTO dedupe_keys (key, channel, seq, created_at) VALUES ({1}, 'dm:alice:zed', 1, {0}); \
         UPDATE dedupe_state SET moved_through = 7;",
        now_ms(),
        key_of("alice", "m1") as i64
    ))
    .expect("rows of the old schema");
    drop(c);
    run_migrations(&pool).expect("migration 4");
    assert_eq!(moved_keys(&pool), 1);

    let mut mem = load(&pool, 64);
    assert_eq!(
        mem.keys.pending(),
        0,
        "nothing read back: the key is in the table"
    );
    let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
    assert_eq!(
        again,
        vec![(
            MessageId::parse("01900000-0000-7000-8000-00000000000a").expect("uuid"),
            true
        )]
    );
}

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

#[test]
fn seqs_count_on_from_memory_and_from_the_store_after_a_restart() {
    let (_dir, pool) = fresh();
    let mut mem = load(&pool, 64);
    write(&pool, &mut mem, vec![dm("alice", "a1"), dm("alice", "a2")]);
    write(&pool, &mut mem, vec![dm("alice", "a3"), dm("bob", "b1")]);
    assert_eq!(mem.seqs.held(), 2);
    let mut c = pool.get().expect("conn");
    // The row is written once, when the channel is made; the counter is read past it.
    assert_eq!(
        mem.index.head_seq(&mut c, "dm:alice:zed").expect("head"),
        (3, true)
    );
    assert_eq!(
        mem.index.head_seq(&mut c, "dm:nobody:zed").expect("head"),
        (0, false)
    );
    drop(c);

    let mut mem = load(&pool, 64);
    write(&pool, &mut mem, vec![dm("alice", "a4")]);
    let got: Vec<i64> = seqs_of(&pool, "dm:alice:zed").iter().map(|r| r.0).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
}

/// Memory whose channels move their places at `move_at`, or `span` positions behind.
fn load_paced(pool: &DbPool, move_at: usize, span: i64) -> WriterMemory {
    WriterMemory::new(load_keys(pool, 64), load_index(pool).paced(move_at, span))
}

fn to(sender: &str, target: &str, cmid: &str) -> WriteOp {
    WriteOp::Message(NewMessage {
        channel: format!("dm:{sender}:{target}").into(),
        kind: "chat_message".into(),
        sender_id: sender.into(),
        target_id: target.into(),
        client_id: None,
        client_msg_id: Some(cmid.into()),
        payload: r#"{"content":"hi"}"#.into(),
    })
}

/// A page of `channel` as a reader gets it: seqs and whether more lie beyond.
fn page(
    pool: &DbPool,
    index: &ChannelIndex,
    channel: &str,
    after: Option<i64>,
    before: Option<i64>,
    limit: i64,
) -> (Vec<i64>, bool) {
    let recent = index.recent(channel);
    page_with(pool, &recent, channel, after, before, limit)
}

fn page_with(
    pool: &DbPool,
    recent: &[Place],
    channel: &str,
    after: Option<i64>,
    before: Option<i64>,
    limit: i64,
) -> (Vec<i64>, bool) {
    let mut c = pool.get().expect("conn");
    let p = crate::store::models::Page {
        after_seq: after,
        before_seq: before,
        limit,
    };
    let (rows, more) = queries::history(&mut c, channel, recent, p).expect("history");
    assert!(rows.iter().all(|m| &*m.channel == channel));
    (rows.iter().map(|m| m.seq).collect(), more)
}

/// The rows of `channel_index` for `channel`: (first seq, last seq).
fn runs_of(pool: &DbPool, channel: &str) -> Vec<(i64, i64)> {
    use crate::store::sqlite::schema::channel_index;
    use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
    channel_index::table
        .filter(channel_index::channel.eq(channel))
        .order(channel_index::first_seq.asc())
        .select((channel_index::first_seq, channel_index::last_seq))
        .load(&mut pool.get().expect("conn"))
        .expect("runs")
}

fn seqs(range: std::ops::RangeInclusive<i64>) -> Vec<i64> {
    range.collect()
}

#[test]
fn history_reads_places_in_memory_and_in_the_table_alike() {
    let (_dir, pool) = fresh();
    let mut mem = load_paced(&pool, 4, 1_000_000);
    let ch = "dm:alice:zed";
    // Eleven messages one commit each, a busy neighbour in between: a channel moves its
    // places in the commit after it holds four.
    for i in 1..=11 {
        write(
            &pool,
            &mut mem,
            vec![dm("alice", &format!("a{i}")), dm("bob", &format!("b{i}"))],
        );
    }
    assert_eq!(runs_of(&pool, ch), vec![(1, 4), (5, 8)]);
    assert_eq!(
        mem.index
            .recent(ch)
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        seqs(9..=11)
    );
    let ix = &mem.index;
    assert_eq!(
        page(&pool, ix, ch, Some(0), None, 100),
        (seqs(1..=11), false)
    );
    assert_eq!(page(&pool, ix, ch, Some(3), None, 4), (seqs(4..=7), true));
    assert_eq!(page(&pool, ix, ch, Some(6), None, 5), (seqs(7..=11), false));
    assert_eq!(
        page(&pool, ix, ch, Some(6), Some(10), 50),
        (seqs(7..=9), false)
    );
    assert_eq!(page(&pool, ix, ch, Some(11), None, 5), (vec![], false));
    assert_eq!(page(&pool, ix, ch, None, None, 3), (seqs(9..=11), true));
    assert_eq!(page(&pool, ix, ch, None, None, 5), (seqs(7..=11), true));
    assert_eq!(page(&pool, ix, ch, None, Some(9), 5), (seqs(4..=8), true));
    assert_eq!(page(&pool, ix, ch, None, Some(3), 5), (seqs(1..=2), false));
    assert_eq!(page(&pool, ix, ch, None, None, 0), (vec![], true));
    assert_eq!(
        page(&pool, ix, "dm:nobody:zed", None, None, 5),
        (vec![], false)
    );
}

#[test]
fn a_reader_whose_copy_of_memory_moved_meanwhile_sees_each_message_once() {
    let (_dir, pool) = fresh();
    let mut mem = load_paced(&pool, 3, 1_000_000);
    let ch = "dm:alice:zed";
    for i in 1..=3 {
        write(&pool, &mut mem, vec![dm("alice", &format!("a{i}"))]);
    }
    let copy = mem.index.recent(ch);
    // These commits move seqs 1..=3 (the copy's) and hold 4..=5 in memory.
    write(&pool, &mut mem, vec![dm("alice", "a4")]);
    write(&pool, &mut mem, vec![dm("alice", "a5")]);
    assert_eq!(runs_of(&pool, ch), vec![(1, 3)]);
    // The stale copy overlaps the table, and knows nothing of 4 and 5, which are newer
    // than it: no message twice, no hole.
    assert_eq!(
        page_with(&pool, &copy, ch, Some(0), None, 10),
        (seqs(1..=3), false)
    );
    assert_eq!(
        page_with(&pool, &copy, ch, None, None, 10),
        (seqs(1..=3), false)
    );
    assert_eq!(
        page_with(&pool, &copy, ch, None, None, 2),
        (seqs(2..=3), true)
    );
}

#[test]
fn places_not_moved_before_a_crash_are_read_back_and_counted_on() {
    let (_dir, pool) = fresh();
    let mut mem = load_paced(&pool, 4, 1_000_000);
    for i in 1..=6 {
        write(&pool, &mut mem, vec![dm("alice", &format!("a{i}"))]);
    }
    assert_eq!(runs_of(&pool, "dm:alice:zed"), vec![(1, 4)]);
    assert_eq!(mem.index.held(), 2);
    // A crash: memory is gone. The places of 5 and 6 come back from `messages`.
    drop(mem);
    let mut mem = load_paced(&pool, 4, 1_000_000);
    assert_eq!(mem.index.held(), 2);
    let mut c = pool.get().expect("conn");
    assert_eq!(
        mem.index.head_seq(&mut c, "dm:alice:zed").expect("head"),
        (6, true)
    );
    drop(c);
    write(&pool, &mut mem, vec![dm("alice", "a7"), dm("alice", "a8")]);
    write(&pool, &mut mem, vec![dm("alice", "a9")]);
    assert_eq!(runs_of(&pool, "dm:alice:zed"), vec![(1, 4), (5, 8)]);
    let all = page(&pool, &mem.index, "dm:alice:zed", Some(0), None, 100);
    assert_eq!(all, (seqs(1..=9), false));
}

#[test]
fn a_quiet_channel_moves_once_the_newest_message_is_far_ahead_and_the_mark_follows() {
    let (_dir, pool) = fresh();
    // Moves at 1,000 places, or once a channel's oldest is 10 positions behind.
    let mut mem = load_paced(&pool, 1000, 10);
    write(&pool, &mut mem, vec![to("quiet", "zed", "q1")]);
    // The mark is written by the commit after the one that moved it on.
    for i in 0..13 {
        write(&pool, &mut mem, vec![to("loud", "zed", &format!("l{i}"))]);
    }
    assert_eq!(runs_of(&pool, "dm:quiet:zed"), vec![(1, 1)]);
    assert!(mem.index.held() <= 11, "held {}", mem.index.held());
    let mark = queries::channel_index_moved_through(&mut pool.get().expect("conn"));
    assert!(mark.expect("mark") >= 5, "the mark moved on");
    // Positions below the quiet channel's are all in the table now: a restart reads
    // back only what is newer.
    let back = load_paced(&pool, 1000, 10);
    assert_eq!(back.index.held(), mem.index.held());
}

#[test]
fn a_run_is_cut_at_its_longest_and_read_across_the_cut() {
    use super::super::channel_index::RUN_MAX;
    let (_dir, pool) = fresh();
    let mut mem = load_paced(&pool, RUN_MAX + 10, 1_000_000);
    let ch = "dm:alice:zed";
    let ops: Vec<WriteOp> = (0..RUN_MAX + 10)
        .map(|i| dm("alice", &format!("m{i}")))
        .collect();
    write(&pool, &mut mem, ops);
    write(&pool, &mut mem, vec![dm("bob", "b1")]);
    let n = RUN_MAX as i64;
    assert_eq!(runs_of(&pool, ch), vec![(1, n), (n + 1, n + 10)]);
    assert_eq!(
        page(&pool, &mem.index, ch, Some(n - 2), None, 4),
        (seqs(n - 1..=n + 2), true)
    );
    assert_eq!(
        page(&pool, &mem.index, ch, None, Some(n + 2), 3),
        (seqs(n - 1..=n + 1), true)
    );
}

#[test]
fn a_database_from_before_migration_6_gets_its_resend_keys_in_blocks() {
    use crate::store::sqlite::MIGRATIONS;
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    let (_dir, pool) = empty();
    let mut c = pool.get().expect("conn");
    for _ in 0..5 {
        c.run_next_migration(MIGRATIONS).expect("migrations 1 to 5");
    }
    // 300 keys, negative and positive, one of them under two positions.
    let mut pairs: Vec<(i64, i64)> = (0..300i64)
        .map(|i| (i64::MIN / 150 * (150 - i), 1000 + i))
        .collect();
    pairs.push((pairs[128].0, 5));
    let values: Vec<String> = pairs.iter().map(|(k, p)| format!("({k}, {p})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO dedupe_keys (key, pos) VALUES {};",
        values.join(", ")
    ))
    .expect("rows of the old schema");
    drop(c);
    run_migrations(&pool).expect("migration 6");
    pairs.sort_unstable();
    // Migration 7 made the blocks one run.
    assert_eq!(moved_pairs(&pool), pairs);
    let runs = DedupeRuns::load(&mut pool.get().expect("conn")).expect("load");
    assert_eq!((runs.len(), runs.keys()), (1, 301));
    let two = pairs.iter().find(|p| p.1 == 5).expect("pair").0;
    assert_eq!(
        positions(&pool, &runs, two),
        vec![
            5,
            pairs
                .iter()
                .find(|p| p.0 == two && p.1 != 5)
                .expect("other")
                .1
        ]
    );
}

#[test]
fn a_database_from_before_migration_5_gets_its_channel_index_built_from_its_messages() {
    use crate::store::sqlite::MIGRATIONS;
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    let (_dir, pool) = empty();
    let mut c = pool.get().expect("conn");
    for _ in 0..4 {
        c.run_next_migration(MIGRATIONS).expect("migrations 1 to 4");
    }
    // 300 messages of one channel (three runs of at most 128), and a channel whose seqs
    // have a gap, stored interleaved.
    let mut sql = String::new();
    let mut pos = 0;
    let row = |pos: i64, ch: &str, seq: i64| {
        format!(
            "INSERT INTO messages (pos, id, channel, seq, kind, sender_id, target_id, \
             client_id, client_msg_id, payload, created_at) VALUES ({pos}, \
             '01900000-0000-7000-8000-{pos:012}', '{ch}', {seq}, 'chat_message', 'alice', \
             'zed', NULL, NULL, '{{}}', 1);"
        )
    };
    for seq in 1..=300 {
        pos += 1;
        sql.push_str(&row(pos, "dm:alice:zed", seq));
        if [1, 2, 3, 5].contains(&seq) {
            pos += 1;
            sql.push_str(&row(pos, "dm:bob:zed", seq));
        }
    }
    c.batch_execute(&sql).expect("rows of the old schema");
    drop(c);
    run_migrations(&pool).expect("migration 5");

    assert_eq!(
        runs_of(&pool, "dm:alice:zed"),
        vec![(1, 128), (129, 256), (257, 300)]
    );
    assert_eq!(runs_of(&pool, "dm:bob:zed"), vec![(1, 3), (5, 5)]);
    let mut mem = load(&pool, 64);
    assert_eq!(mem.index.held(), 0, "every message is in the table");
    let ix = mem.index.clone();
    assert_eq!(
        page(&pool, &ix, "dm:alice:zed", Some(120), None, 20),
        (seqs(121..=140), true)
    );
    assert_eq!(
        page(&pool, &ix, "dm:alice:zed", None, None, 3),
        (seqs(298..=300), true)
    );
    assert_eq!(
        page(&pool, &ix, "dm:bob:zed", Some(0), None, 10),
        (vec![1, 2, 3, 5], false)
    );
    // Positions survived the rebuild: each row is the message it was.
    let (rows, _) = queries::history(
        &mut pool.get().expect("conn"),
        "dm:bob:zed",
        &[],
        crate::store::models::Page {
            after_seq: Some(4),
            before_seq: None,
            limit: 1,
        },
    )
    .expect("history");
    assert_eq!(rows[0].id.as_str(), "01900000-0000-7000-8000-000000000009");
    // Seqs count on from the stored ones.
    write(&pool, &mut mem, vec![dm("alice", "new")]);
    assert_eq!(
        page(&pool, &mem.index, "dm:alice:zed", Some(299), None, 5),
        (vec![300, 301], false)
    );
}

#[test]
fn the_counter_cache_is_bounded() {
    let mut seqs = SeqCounters::new(2);
    seqs.committed([("a", 1), ("b", 1)].into_iter());
    assert_eq!(seqs.held(), 2);
    seqs.committed([("a", 2)].into_iter());
    assert_eq!(seqs.held(), 2, "an update takes no room");
    seqs.committed([("c", 1)].into_iter());
    assert_eq!(seqs.held(), 1, "full: starts again with the newest");
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
