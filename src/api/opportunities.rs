//! `GET /api/opportunities`: synced opportunities, newest first, optionally of one customer.
use super::sync::{page_body, page_params};
use super::{json_response, method_not_allowed, Req, Resp};
use crate::error::Result;
use crate::store::{Opportunity, OpportunityQuery};
use crate::App;
use http::{Method, StatusCode};

pub async fn handle(app: &App, req: &Req) -> Result<Resp> {
    if req.method != Method::GET {
        return Err(method_not_allowed("GET"));
    }
    req.require(&["customer.read"])?;
    let mut customer_external_id = None;
    let (page, size) = page_params(req, &mut |k, v, errors| {
        if k == "customerExternalId" {
            match crate::domain::validate::text(k, v, 1, 128) {
                Ok(s) => customer_external_id = Some(s),
                Err(e) => errors.push(e),
            }
        }
    })?;
    let q = OpportunityQuery { customer_external_id, offset: (page - 1) * size as u64, limit: size };
    let (items, total) = app.store.list_opportunities(&q).await?;
    Ok(json_response(StatusCode::OK, &page_body(page, size, total, items.iter().map(Opportunity::to_api).collect())))
}
