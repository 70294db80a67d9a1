"""The OpenAPI document is generated from the routes and browsable."""

from __future__ import annotations


def test_openapi_document_describes_the_token_endpoint(client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    token = document["paths"]["/api/v1/auth/token"]["post"]
    assert "username" in token["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(token["responses"]) >= {"200", "401"}
    assert "security" not in token
    assert document["paths"]["/api/v1/me"]["get"]["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_api_route_is_documented(app, client):
    documented = set(client.get("/api/v1/openapi.json").get_json()["paths"])
    undocumented = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        and rule.rule not in {"/api/v1/openapi.json", "/api/v1/docs"}
        and not rule.endpoint.startswith("vetinh_events_testing")
        and rule.rule.replace("<", "{").replace(">", "}").split(":")[-1] not in documented
        and not any(p.startswith(rule.rule.split("<")[0]) for p in documented)
    }
    assert not undocumented


def test_the_api_page_loads_the_browser(client):
    page = client.get("/api/v1/docs").get_data(as_text=True)
    assert "/vendor/swagger-ui-dist/swagger-ui-bundle.js" in page
    with client.get("/vendor/swagger-ui-dist/swagger-ui-bundle.js") as script:
        assert script.status_code == 200
    assert client.get("/vendor/../setup.cfg").status_code == 404
    assert client.get("/vendor/left-pad/index.js").status_code == 404
