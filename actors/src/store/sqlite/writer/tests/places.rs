//! Seqs and places: counters from memory and the store, history across memory and `channel_index`, older databases' index built.

use super::*;

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
    use crate::store::sqlite::channel_index::RUN_MAX;
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
