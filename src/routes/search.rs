//! `GET /api/messages/search`: full-text search over the messages the caller may read
//! (their DMs, their groups, their `user:` channel, broadcasts), newest first, with channel
//! and date filters and paging. The index catches up with new messages before each search
//! (messages are not indexed when stored, so storing stays as fast as without search).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::names_a_readable_channel;
use switchboard_actors::protocol::delivery_frame;
use switchboard_actors::store::models::SearchQuery;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::routes::caller::Caller;
use crate::routes::messages::{messages_body, DeliveryFrame};
use crate::state::AppState;

/// Largest page.
const MAX_LIMIT: i64 = 100;
/// Page size when none is asked for.
const DEFAULT_LIMIT: i64 = 20;
/// Most words in a query, and longest word.
const MAX_WORDS: usize = 16;
const MAX_WORD_LEN: usize = 100;
/// Steps of index catch-up one search may ask for before it searches what is indexed.
const MAX_CATCH_UP_STEPS: usize = 40;

/// `GET /api/messages/search` query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words, all required (at most 16, of at most 100 characters).
    q: String,
    /// Only this channel.
    channel: Option<String>,
    /// Only messages stored at or after this time, ms since epoch.
    from: Option<i64>,
    /// Only messages stored before this time, ms since epoch.
    to: Option<i64>,
    /// Most results (default 20, at most 100).
    limit: Option<i64>,
    /// The previous page's `next_before`.
    before: Option<String>,
}

/// `GET /api/messages/search` reply.
#[derive(Serialize, ToSchema)]
pub struct SearchPage {
    /// Delivery frames, newest first.
    messages: Vec<DeliveryFrame>,
    /// More results lie beyond the page.
    has_more: bool,
    /// While `has_more`: the next page's `before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<String>,
    /// Whether the index had caught up with every message before the search.
    complete: bool,
}

/// `before` as `<created_at>:<seq>:<channel>` (the `next_before` of the previous page).
fn parse_before(s: &str) -> Result<(i64, String, i64), ApiError> {
    let bad = || ApiError::BadRequest("`before` is not a cursor from a previous page".into());
    let mut parts = s.splitn(3, ':');
    let at = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let channel = parts.next().filter(|c| !c.is_empty()).ok_or_else(bad)?;
    Ok((at, channel.to_owned(), seq))
}

/// Searches the caller's readable messages.
#[utoipa::path(get, path = "/api/messages/search", tag = "messages",
    summary = "Full-text search over what the caller may read",
    params(SearchParams),
    responses(
        (status = 200, description = "A page of results", body = SearchPage),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "A channel the caller may not read, or an API key", body = ErrorBody),
        (status = 501, description = "Off while encryption at rest is on", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn search(
    caller: Caller,
    app: web::Data<AppState>,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    if app.tree.reads.sealer().is_some() {
        // The index would need the plain text the database must not hold.
        return Err(ApiError::NotConfigured(
            "full-text search is off while encryption at rest is on (encryption.key)".into(),
        ));
    }
    let p = params.into_inner();
    let words: Vec<String> = p.q.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err(ApiError::BadRequest("`q` must hold a word".into()));
    }
    if words.len() > MAX_WORDS || words.iter().any(|w| w.chars().count() > MAX_WORD_LEN) {
        return Err(ApiError::BadRequest(format!(
            "`q` holds at most {MAX_WORDS} words of at most {MAX_WORD_LEN} characters"
        )));
    }
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {MAX_LIMIT}"
        )));
    }
    let before = p.before.as_deref().map(parse_before).transpose()?;
    let user = caller.user.as_str();
    let mut channels: Vec<String> = app
        .tree
        .reads
        .readable_channels(user.to_owned())
        .await?
        .into_iter()
        .filter(|c| names_a_readable_channel(user, c))
        .collect();
    if let Some(only) = &p.channel {
        if !channels.contains(only) {
            return Err(ApiError::Forbidden(format!(
                "`{only}` is not a channel you may read"
            )));
        }
        channels = vec![only.clone()];
    }
    let mut complete = false;
    for _ in 0..MAX_CATCH_UP_STEPS {
        if app.tree.writes.index_search(channels.clone()).await? {
            complete = true;
            break;
        }
    }
    let q = SearchQuery {
        words,
        channels,
        from: p.from.unwrap_or(0),
        to: p.to.unwrap_or(i64::MAX),
        before,
        limit: limit + 1,
    };
    let mut rows = app.tree.reads.search(q).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);

    let next_before = match (has_more, rows.last()) {
        (true, Some(last)) => Some(format!("{}:{}:{}", last.created_at, last.seq, last.channel)),
        _ => None,
    };
    let page = SearchPage {
        messages: Vec::new(),
        has_more,
        next_before,
        complete,
    };
    messages_body(&page, rows.iter().map(delivery_frame))
}
