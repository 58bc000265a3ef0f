// @generated shape of `migrations/` (what `diesel print-schema` prints for it).

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        key_hash -> Text,
        scopes -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    channel_index (rowid) {
        rowid -> BigInt,
        channel -> Text,
        first_seq -> BigInt,
        last_seq -> BigInt,
        positions -> Binary,
    }
}

diesel::table! {
    channel_index_state (id) {
        id -> Integer,
        moved_through -> BigInt,
    }
}

diesel::table! {
    channels (name) {
        name -> Text,
        last_seq -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    dedupe_run_blocks (id) {
        id -> BigInt,
        pairs -> Binary,
    }
}

diesel::table! {
    dedupe_runs (id) {
        id -> BigInt,
        state -> Integer,
        keys -> BigInt,
        fences -> Binary,
    }
}

diesel::table! {
    dedupe_state (id) {
        id -> Integer,
        moved_through -> BigInt,
    }
}

diesel::table! {
    delivery_cursors (user_id, client_id, channel) {
        user_id -> Text,
        client_id -> Text,
        channel -> Text,
        up_to_seq -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    devices (user_id, client_id) {
        user_id -> Text,
        client_id -> Text,
        device -> Nullable<Text>,
        first_seen -> BigInt,
        last_seen -> BigInt,
    }
}

diesel::table! {
    following (user_id, follows_id) {
        user_id -> Text,
        follows_id -> Text,
    }
}

diesel::table! {
    group_members (group_id, user_id) {
        group_id -> Text,
        user_id -> Text,
        added_at -> BigInt,
    }
}

diesel::table! {
    groups (id) {
        id -> Text,
        name -> Text,
        owner_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    messages (pos) {
        pos -> BigInt,
        id -> Text,
        channel -> Text,
        seq -> BigInt,
        kind -> Text,
        sender_id -> Text,
        target_id -> Text,
        client_id -> Nullable<Text>,
        client_msg_id -> Nullable<Text>,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    read_cursors (user_id, channel) {
        user_id -> Text,
        channel -> Text,
        up_to_seq -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    revoked_tokens (jti) {
        jti -> Text,
        expires_at -> BigInt,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    state_documents (user_id, collection, doc_key) {
        user_id -> Text,
        collection -> Text,
        doc_key -> Text,
        value -> Text,
        version -> BigInt,
        updated_at -> BigInt,
        updated_by -> Nullable<Text>,
    }
}

diesel::joinable!(group_members -> groups (group_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    channel_index,
    channel_index_state,
    channels,
    dedupe_run_blocks,
    dedupe_runs,
    dedupe_state,
    delivery_cursors,
    devices,
    following,
    group_members,
    groups,
    messages,
    read_cursors,
    revoked_tokens,
    state_documents,
);
