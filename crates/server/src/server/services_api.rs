//! `gantry.v1.Services`: inference services' scale, load and endpoints, and their bounds.

use gantry_api::gantry::v1 as pb;
use tonic::{Request, Response, Status};

use super::{now_ms, pb_state, Server};

fn pb_service(v: crate::services::ServiceView) -> pb::Service {
    pb::Service {
        name: v.name,
        queue: v.queue,
        state: pb_state(v.state) as i32,
        min: v.min,
        max: v.max,
        desired: v.desired,
        running: v.running,
        ready: v.ready,
        metric: v.metric,
        target: v.target,
        measured: v.per_replica.is_some(),
        load_per_replica: v.per_replica.unwrap_or(0.0),
        last_decision: v.last.as_ref().map(|d| d.why.clone()).unwrap_or_default(),
        last_decision_ms: v.last.as_ref().map_or(0, |d| d.at_ms),
        endpoints: v
            .endpoints
            .into_iter()
            .map(|(index, node, host, port, ready)| pb::Endpoint {
                index,
                node,
                host,
                port: u32::from(port),
                ready,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::services_server::Services for Server {
    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let who = self.who(&req)?;
        let only = req.into_inner().name;
        let st = self.lock();
        let services = st
            .services(&only, now_ms())
            .into_iter()
            .filter(|v| who.as_ref().is_none_or(|c| c.may_use(&st.queues, &v.queue)))
            .map(pb_service)
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn scale_service(
        &self,
        req: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let who = self.who(&req)?;
        let req = req.into_inner();
        // The service's team may set its bounds, as it may submit and cancel it.
        self.visible_job(&who, &req.name)?;
        let name = req.name.clone();
        self.apply(|st| Ok(((), st.scale_service(&name, req.min, req.max, now_ms())?)))
            .await?;
        let st = self.lock();
        let view = st
            .services(&name, now_ms())
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found(format!("service {name:?} not found")))?;
        Ok(Response::new(pb_service(view)))
    }
}
