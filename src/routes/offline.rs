//! What a user's devices have not received or read: `GET /api/messages/undelivered` (for one
//! device, like a `sync` over HTTP) and `GET /api/messages/unread` (counts per channel).

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::valid_id;
use switchboard_actors::offline_queue::PlanSync;
use switchboard_actors::protocol::delivery_frame;
use switchboard_actors::store::Page;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::routes::caller::Caller;
use crate::routes::messages::{messages_body, DeliveryFrame};
use crate::session::offline::sync_points;
use crate::state::AppState;

/// Most messages one reply holds, and how many when the query does not say.
const MAX_LIMIT: i64 = 500;
const DEFAULT_LIMIT: i64 = 100;

/// `GET /api/messages/undelivered` query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Undelivered {
    /// The device.
    client_id: String,
    /// Most messages (default 100, at most 500).
    limit: Option<i64>,
}

/// `GET /api/messages/undelivered` reply.
#[derive(Serialize, ToSchema)]
pub struct UndeliveredPage {
    /// Delivery frames, per channel (by name) in seq order.
    messages: Vec<DeliveryFrame>,
    /// More messages wait beyond these.
    has_more: bool,
    /// Per channel: the seq up to which `messages` goes.
    cursors: BTreeMap<String, i64>,
}

/// Messages device `client_id` has not marked delivered, per channel in seq order (channels
/// by name), as its next `sync` would send them; `cursors` says where each channel stops.
#[utoipa::path(get, path = "/api/messages/undelivered", tag = "messages",
    summary = "What a device has not marked delivered",
    params(Undelivered),
    responses(
        (status = 200, description = "The messages", body = UndeliveredPage),
        (status = 400, description = "Bad device id or limit", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    let page = UndeliveredPage {
        messages: Vec::new(),
        has_more,
        cursors,
    };
    messages_body(&page, frames.iter())
}

/// One channel's unread count.
#[derive(Serialize, ToSchema)]
pub struct Unread {
    /// The channel.
    channel: String,
    /// Its last message's seq.
    last_seq: i64,
    /// The caller's read cursor.
    read_up_to: i64,
    /// Messages after it.
    unread: i64,
}

/// `GET /api/messages/unread` reply.
#[derive(Serialize, ToSchema)]
pub struct UnreadList {
    /// Sorted by channel name.
    channels: Vec<Unread>,
}

/// Per channel of the caller's (DMs, groups, `user:` channel) with messages: its last seq,
/// how far the caller has read (`read_receipt` / `POST /api/messages/read`), and the
/// difference. Sorted by channel name.
#[utoipa::path(get, path = "/api/messages/unread", tag = "messages",
    summary = "Per channel: last seq and read cursor",
    responses(
        (status = 200, description = "The channels", body = UnreadList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    Ok(HttpResponse::Ok().json(UnreadList { channels }))
}
