//! `GET /api/openapi.json`: an OpenAPI document that covers every route of the router, and
//! whose schemas describe what the routes really take and answer.

use serde_json::{json, Value};

use crate::helpers::{redis_url, spawn_app, spawn_cluster_on, Credential, TestApp};

#[actix_web::test]
async fn the_openapi_document_lists_every_route_of_the_router_and_no_other() {
    let app = spawn_app().await;
    let (code, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");

    let routes = switchboard::routes::ROOT_ROUTES
        .iter()
        .chain(switchboard::routes::API_ROUTES);
    let mut listed = 0;
    for (method, path) in routes {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the document"))[*method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        listed += 1;
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(
        documented, listed,
        "the document lists routes the router does not have"
    );

    // Both ways to authenticate are described, and used where they apply.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
    let publish = &paths["/api/admin/publish"]["post"]["security"];
    assert!(publish.to_string().contains("api_key"), "{publish}");
    let unread: &Value = &paths["/api/messages/unread"]["get"]["security"];
    assert!(!unread.to_string().contains("api_key"), "{unread}");
    // The fallback transports take tokens only.
    for path in ["/sse", "/poll"] {
        let security = &paths[path]["get"]["security"];
        assert!(
            security.to_string().contains("bearer"),
            "{path}: {security}"
        );
        assert!(
            !security.to_string().contains("api_key"),
            "{path}: {security}"
        );
    }
}

/// The component a `$ref` names, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("not a component: {r}"));
            let found = &doc["components"]["schemas"][name];
            assert!(found.is_object(), "no component schema {name}");
            found
        }
        None => schema,
    }
}

/// Whether `value` is of JSON type `ty`.
fn is_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// Checks `value` against `schema`: its type, every key of an object is a property and
/// every required property is there, recursively through properties, items and
/// `oneOf`/`anyOf`/`allOf`.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for alternatives in ["oneOf", "anyOf"] {
        if let Some(list) = schema[alternatives].as_array() {
            let errors: Vec<String> = list
                .iter()
                .filter_map(|s| check(doc, s, value, at).err())
                .collect();
            if errors.len() == list.len() {
                return Err(format!("{at}: matches no alternative: {errors:?}"));
            }
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| is_type(value, t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        for (key, v) in object {
            let property = properties
                .get(key)
                .ok_or_else(|| format!("{at}: `{key}` is sent but not in the schema"))?;
            check(doc, property, v, &format!("{at}.{key}"))?;
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: required `{name}` is not sent"));
            }
        }
    }
    if let (Some(items), Some(list)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check(doc, list, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The JSON schema the document gives `method path` for `status`: a component.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        schema["$ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("#/components/schemas/")),
        "{method} {path} {status}: not a component schema: {schema}"
    );
    schema
}

/// Calls `method url` (documented as `path`) and checks the answer against the document.
async fn answer_matches(
    app: &TestApp,
    doc: &Value,
    (method, path, url): (&str, &str, &str),
    auth: Credential<'_>,
    body: Option<Value>,
    status: u16,
) -> Value {
    let (code, answer) = app.call_as(method, url, auth, body).await;
    assert_eq!(code, status, "{method} {url}: {answer}");
    let schema = response_schema(doc, &method.to_lowercase(), path, status);
    if let Err(e) = check(doc, schema, &answer, &format!("{method} {url}")) {
        panic!("{e}\nanswer: {answer}\nschema: {}", resolve(doc, schema));
    }
    answer
}

#[actix_web::test]
async fn the_documented_schemas_describe_what_the_routes_take_and_answer() {
    let app = spawn_app().await;
    let (_, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    let admin = app.admin_token();

    // POST /api/auth/token: the body is a component with the fields the route takes, and
    // a body with every one of them is accepted (the route refuses unknown fields).
    let op = &doc["paths"]["/api/auth/token"]["post"];
    let body_schema = &op["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body_schema["$ref"], "#/components/schemas/TokenRequest",
        "{op}"
    );
    let properties = resolve(&doc, body_schema)["properties"]
        .as_object()
        .expect("TokenRequest properties");
    let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["device", "roles", "ttl_s", "user_id"]);
    let full = json!({"user_id": "alice", "roles": ["member"], "ttl_s": 600, "device": "web"});
    let route = ("POST", "/api/auth/token", "/api/auth/token");
    let pair = answer_matches(
        &app,
        &doc,
        route,
        Credential::Bearer(&admin),
        Some(full),
        200,
    )
    .await;
    assert!(pair["access_token"].is_string(), "{pair}");
    let route = ("POST", "/api/auth/refresh", "/api/auth/refresh");
    let refresh = json!({"refresh_token": pair["refresh_token"]});
    answer_matches(&app, &doc, route, Credential::None, Some(refresh), 200).await;

    // History: every key of the page, and of each message and its meta, is documented.
    let mut alice = app.ws("alice").await;
    alice.dm("bob", "m1", "hello").await;
    alice.dm("bob", "m2", "again").await;
    let bob = app.token("bob");
    let route = (
        "GET",
        "/api/messages/user/{user_id}",
        "/api/messages/user/alice?limit=1",
    );
    let page = answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["has_more"], true);
    let history = resolve(&doc, response_schema(&doc, "get", route.1, 200));
    for key in page.as_object().expect("page").keys() {
        assert!(history["properties"].get(key).is_some(), "{key}");
    }

    // Groups, group history and a documented error body.
    let create = json!({"id": "g1", "name": "Team", "members": ["bob"]});
    let route = ("POST", "/api/groups", "/api/groups");
    answer_matches(
        &app,
        &doc,
        route,
        Credential::Bearer(&app.token("alice")),
        Some(create),
        201,
    )
    .await;
    alice
        .request(crate::helpers::group_msg("g1", "g-m1", "hi team"))
        .await;
    let route = ("GET", "/api/groups/{id}", "/api/groups/g1");
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let route = (
        "GET",
        "/api/messages/group/{group_id}",
        "/api/messages/group/g1",
    );
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let route = ("GET", "/api/groups/{id}", "/api/groups/nope");
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 404).await;
    let route = (
        "PUT",
        "/api/groups/{id}/members/{user_id}",
        "/api/groups/g1/members/carol",
    );
    answer_matches(
        &app,
        &doc,
        route,
        Credential::Bearer(&app.token("alice")),
        None,
        200,
    )
    .await;

    // Search, unread, undelivered, read cursors.
    let route = (
        "GET",
        "/api/messages/search",
        "/api/messages/search?q=hello",
    );
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let route = ("GET", "/api/messages/unread", "/api/messages/unread");
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let route = (
        "GET",
        "/api/messages/undelivered",
        "/api/messages/undelivered?client_id=phone",
    );
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let read = json!({"channel": "dm:alice:bob", "up_to_seq": 1});
    let route = ("POST", "/api/messages/read", "/api/messages/read");
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), Some(read), 200).await;

    // State documents: a write, a conflict and the changes.
    let put = json!({"value": {"theme": "dark"}, "base_version": 0});
    let route = (
        "PUT",
        "/api/state/{collection}/{key}",
        "/api/state/settings/ui",
    );
    answer_matches(
        &app,
        &doc,
        route,
        Credential::Bearer(&bob),
        Some(put.clone()),
        200,
    )
    .await;
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), Some(put), 409).await;
    let route = ("GET", "/api/state/{collection}", "/api/state/settings");
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;

    // Admin: API keys, a publish with one, what a key validates as, connections.
    let new_key = json!({"name": "backend", "scopes": ["admin", "publish", "read"]});
    let route = ("POST", "/api/admin/api-keys", "/api/admin/api-keys");
    let made = answer_matches(
        &app,
        &doc,
        route,
        Credential::Bearer(&admin),
        Some(new_key),
        201,
    )
    .await;
    let key = made["key"].as_str().expect("key").to_owned();
    let route = ("GET", "/api/admin/api-keys", "/api/admin/api-keys");
    answer_matches(&app, &doc, route, Credential::ApiKey(&key), None, 200).await;
    let route = ("GET", "/api/auth/validate", "/api/auth/validate");
    answer_matches(&app, &doc, route, Credential::ApiKey(&key), None, 200).await;
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let publish = json!({"channel": "user:bob", "payload": {"n": 1}});
    let route = ("POST", "/api/admin/publish", "/api/admin/publish");
    answer_matches(
        &app,
        &doc,
        route,
        Credential::ApiKey(&key),
        Some(publish),
        200,
    )
    .await;
    let route = ("GET", "/api/admin/connections", "/api/admin/connections");
    let listed = answer_matches(&app, &doc, route, Credential::Bearer(&admin), None, 200).await;
    assert!(listed["total"].as_u64() >= Some(1), "{listed}");
    let route = (
        "GET",
        "/api/users/{user_id}/status",
        "/api/users/alice/status",
    );
    answer_matches(&app, &doc, route, Credential::Bearer(&bob), None, 200).await;
    let route = ("GET", "/health", "/health");
    answer_matches(&app, &doc, route, Credential::None, None, 200).await;
    let route = ("GET", "/status", "/status");
    let status = answer_matches(&app, &doc, route, Credential::None, None, 200).await;
    assert!(status["database"]["pool"]["in_use"].is_u64(), "{status}");
}

#[actix_web::test]
async fn the_status_of_a_cluster_node_with_a_command_backend_matches_its_schema() {
    // The cluster and command parts of `/status` have a second form when configured.
    let nodes = spawn_cluster_on(&redis_url(), 1, |s| {
        s.command.backend_url = "http://127.0.0.1:9/commands".into();
    })
    .await;
    let node = &nodes[0];
    let (_, doc) = node.call("GET", "/api/openapi.json", None, None).await;
    let route = ("GET", "/status", "/status");
    let status = answer_matches(node, &doc, route, Credential::None, None, 200).await;
    assert_eq!(status["cluster"]["configured"], true, "{status}");
    assert_eq!(status["cluster"]["nodes"][0]["id"], "node-0", "{status}");
    assert_eq!(status["command"]["breaker"], "closed", "{status}");
}
