//! Health (`/healthz`), readiness (`/readyz`) and metrics (`/metrics`).

use actix_web::{web, HttpResponse};

use confab_actors::error::{Error, ErrorCode};

use super::{error_response, AppState};
use crate::cluster::Cluster;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready when the store answers. In a cluster, Redis's state is reported but does not make the
/// node unready: without Redis a node still serves its own users.
pub async fn readyz(state: web::Data<AppState>, cluster: Option<web::Data<Cluster>>) -> HttpResponse {
    // Bounded: a balancer's health check must get an answer even while the store hangs.
    let ping = tokio::time::timeout(state.ready_timeout, state.engine.store().ping()).await;
    let ping = ping.unwrap_or_else(|_| {
        Err(confab_actors::error::StoreError::Unavailable(format!(
            "the store did not answer within {} ms",
            state.ready_timeout.as_millis()
        )))
    });
    match ping {
        Ok(()) => match cluster {
            None => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
            Some(c) => HttpResponse::Ok().json(serde_json::json!({
                "status": "ready",
                "cluster": { "node_id": c.node_id(), "redis": if c.redis_up() { "up" } else { "down" } },
            })),
        },
        Err(e) => error_response(&Error::new(ErrorCode::Unavailable, e.to_string())),
    }
}

pub async fn metrics(state: web::Data<AppState>, cluster: Option<web::Data<Cluster>>) -> HttpResponse {
    let mut text = state.engine.metrics().render();
    for more in &state.more_metrics {
        text.push_str(&more());
    }
    if let Some(c) = cluster {
        text.push_str(&c.metrics().render());
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}
