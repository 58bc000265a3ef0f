//! Resend keys: found in memory, in runs and after restarts; runs merged; older databases' keys kept.

use super::*;

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
