//! `GET /api/openapi.json`: an OpenAPI document that covers every route of the router.

use serde_json::Value;

use crate::helpers::spawn_app;

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
}
