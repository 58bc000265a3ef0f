//! What a user's devices have not received or read: `GET /api/messages/undelivered` (for one
//! device, like a `sync` over HTTP) and `GET /api/messages/unread` (counts per channel).

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::valid_id;
use switchboard_actors::offline_queue::PlanSync;
use switchboard_actors::protocol::delivery_frame;
use switchboard_actors::store::Page;

use crate::error::ApiError;
use crate::routes::caller::Caller;
use crate::routes::messages::messages_body;
use crate::session::offline::sync_points;
use crate::state::AppState;

/// Most messages one reply holds, and how many when the query does not say.
const MAX_LIMIT: i64 = 500;
const DEFAULT_LIMIT: i64 = 100;

/// `GET /api/messages/undelivered` query.
#[derive(Deserialize)]
pub struct Undelivered {
    client_id: String,
    limit: Option<i64>,
}

/// Messages device `client_id` has not marked delivered, per channel in seq order (channels
/// by name), as its next `sync` would send them; `cursors` says where each channel stops.
pub async fn undelivered(
    caller: Caller,
    app: web::Data<AppState>,
    q: web::Query<Undelivered>,
) -> Result<HttpResponse, ApiError> {
    if !valid_id(&q.client_id) {
        return Err(ApiError::BadRequest("`client_id` is not a valid id".into()));
    }
    let mut budget = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&budget) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {MAX_LIMIT}"
        )));
    }
    let plan = app
        .tree
        .offline
        .send(PlanSync {
            user: caller.user.clone(),
            client_id: q.client_id.as_str().into(),
        })
        .await??;
    let cfg = &app.settings.sync;
    let not_before = if plan.known_device {
        0
    } else {
        switchboard_actors::ids::now_ms().saturating_sub(cfg.new_device_max_age.as_millis() as i64)
    };
    let mut cursors = BTreeMap::new();
    let mut frames = Vec::new();
    let mut has_more = false;
    for (name, mut after, head) in sync_points(plan, &HashMap::new(), cfg) {
        while after < head {
            if budget == 0 {
                has_more = true;
                break;
            }
            let page = Page {
                after_seq: Some(after),
                before_seq: None,
                limit: budget.min(200),
            };
            let (rows, _) = app.tree.reads.history(name.clone(), page).await?;
            if rows.is_empty() {
                break;
            }
            for m in &rows {
                after = m.seq;
                if m.created_at >= not_before {
                    frames.push(delivery_frame(m));
                    budget -= 1;
                }
            }
        }
        cursors.insert(name, after);
    }
    let cursors = serde_json::to_string(&cursors).unwrap_or_else(|_| "{}".into());
    Ok(messages_body(
        frames.iter(),
        has_more,
        &[("cursors", cursors)],
    ))
}

/// One channel's unread count.
#[derive(Serialize)]
struct Unread {
    channel: String,
    last_seq: i64,
    read_up_to: i64,
    unread: i64,
}

/// Per channel of the caller's (DMs, groups, `user:` channel) with messages: its last seq,
/// how far the caller has read (`read_receipt` / `POST /api/messages/read`), and the
/// difference. Sorted by channel name.
pub async fn unread(caller: Caller, app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user = caller.user.to_string();
    let plan = app
        .tree
        .reads
        .sync_plan(user.clone(), String::new())
        .await?;
    let read: HashMap<String, i64> = app
        .tree
        .reads
        .read_cursors(user)
        .await?
        .into_iter()
        .collect();
    let channels: Vec<Unread> = plan
        .channels
        .into_iter()
        .map(|(channel, last_seq, _)| {
            let read_up_to = read.get(&channel).copied().unwrap_or(0).min(last_seq);
            Unread {
                unread: last_seq - read_up_to,
                channel,
                last_seq,
                read_up_to,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "channels": channels })))
}
