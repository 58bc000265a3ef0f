//! `/api/admin/connections`: the broker's connections, listed and closed by admins; in a
//! cluster, every node's (the others are asked over the bus).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard_actors::cluster::{AskCluster, ClusterAnswers, Question};
use switchboard_actors::ids::{valid_id, ConnId, UserId};
use switchboard_actors::router::{CloseConnection, ConnectionInfo, ListConnections};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::routes::caller::Principal;
use crate::session::close;
use crate::state::AppState;

/// Most connections one listing returns.
const MAX_LIST: usize = 1000;

/// Query of the listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this user's.
    user_id: Option<String>,
    /// 1 to 1000, default 100.
    limit: Option<usize>,
}

/// `GET /api/admin/connections` reply.
#[derive(Serialize, ToSchema)]
pub struct ConnectionList {
    /// Oldest first. As JSON objects (keys in name order, as always sent), so that other
    /// nodes' answers go in as they came.
    #[schema(value_type = Vec<ConnectionInfo>)]
    connections: Vec<Value>,
    /// In a cluster: how many nodes were asked and answered (this one included).
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<NodesAsked>,
    /// How many there are in all.
    total: u64,
}

/// Nodes a cluster listing asked (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct NodesAsked {
    /// Nodes that answered in time.
    answered: usize,
    /// Nodes asked.
    asked: usize,
}

/// `{connections: [{conn_id, user_id, client_id, device, transport, connected_at}], total}`,
/// oldest first; `?user_id=` keeps one user's, `?limit=` (at most 1000, default 100). In a
/// cluster each connection also names its `node_id`, and `nodes` says how many nodes were
/// asked and how many answered in time.
#[utoipa::path(get, path = "/api/admin/connections", tag = "admin",
    summary = "This broker's connections (a cluster's: every node's)",
    params(ListQuery),
    responses(
        (status = 200, description = "The connections", body = ConnectionList),
        (status = 400, description = "Bad user id or limit", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Neither admin nor scope `read`", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn list(
    caller: Principal,
    app: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    if !caller.reads_all() {
        return Err(ApiError::Forbidden(
            "admin role (or an API key with scope `read`) required".into(),
        ));
    }
    let q = q.into_inner();
    if q.user_id.as_deref().is_some_and(|u| !valid_id(u)) {
        return Err(ApiError::BadRequest("`user_id` is not a valid id".into()));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {MAX_LIST}"
        )));
    }
    let user = q.user_id.as_deref().map(UserId::new);
    let (list, total) = app
        .tree
        .router
        .send(ListConnections {
            user: user.clone(),
            limit,
        })
        .await
        .map_err(|_| ApiError::Unavailable("router unavailable; retry".into()))?;
    let Some((link, stats)) = &app.tree.cluster else {
        return Ok(HttpResponse::Ok().json(ConnectionList {
            connections: list.iter().map(|c| json!(c)).collect(),
            nodes: None,
            total: total as u64,
        }));
    };
    let mut items: Vec<Value> = list
        .iter()
        .map(|c| on_node(json!(c), &stats.node_id))
        .collect();
    let mut total = total as u64;
    let question = Question::Connections {
        user,
        limit: limit as u32,
    };
    let answers = ask(link, question).await;
    for (node, text) in &answers.answers {
        let Ok(answer) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        total += answer["total"].as_u64().unwrap_or(0);
        if let Some(list) = answer["connections"].as_array() {
            items.extend(list.iter().map(|c| on_node(c.clone(), node)));
        }
    }
    items.sort_by_key(|c| (c["connected_at"].as_i64(), c["conn_id"].to_string()));
    items.truncate(limit);
    Ok(HttpResponse::Ok().json(ConnectionList {
        connections: items,
        nodes: Some(NodesAsked {
            answered: answers.answers.len() + 1,
            asked: answers.asked + 1,
        }),
        total,
    }))
}

/// A connection's JSON with the node it is on.
fn on_node(mut c: Value, node: &str) -> Value {
    c["node_id"] = json!(node);
    c
}

/// Asks the other nodes; nothing if the link is gone.
async fn ask(
    link: &actix::Addr<switchboard_actors::cluster::ClusterLink>,
    q: Question,
) -> ClusterAnswers {
    link.send(AskCluster(q)).await.unwrap_or_default()
}

/// Closes a connection (WebSocket close 1008, "disconnected by an administrator"; an SSE
/// stream or a poll ends): 200 with what it was, 404 if it is on no node.
#[utoipa::path(delete, path = "/api/admin/connections/{conn_id}", tag = "admin",
    summary = "Close a connection (1008)",
    params(("conn_id" = String, Path, description = "Connection id, e.g. c12")),
    responses(
        (status = 200, description = "The connection", body = ConnectionInfo),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "Not on this broker (or cluster)", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn close(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let text = path.into_inner();
    let conn = text
        .strip_prefix('c')
        .and_then(|n| n.parse::<u64>().ok())
        .map(ConnId)
        .ok_or_else(|| ApiError::NotFound(format!("no connection `{text}`")))?;
    let closed = app
        .tree
        .router
        .send(CloseConnection {
            conn,
            code: close::POLICY,
            reason: "disconnected by an administrator",
        })
        .await
        .map_err(|_| ApiError::Unavailable("router unavailable; retry".into()))?;
    if let Some(info) = closed {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some((link, _)) = &app.tree.cluster {
        let answers = ask(link, Question::Close { conn }).await;
        for (node, text) in &answers.answers {
            let closed = serde_json::from_str::<Value>(text)
                .map(|a| a["closed"].clone())
                .unwrap_or(Value::Null);
            if !closed.is_null() {
                return Ok(HttpResponse::Ok().json(on_node(closed, node)));
            }
        }
    }
    Err(ApiError::NotFound(format!("no connection `{text}`")))
}
