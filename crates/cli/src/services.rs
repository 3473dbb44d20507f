//! Inference services: `gantry services` (scale, load against target, last decision),
//! `gantry endpoints SVC` (the ready replicas' host:port, for a router to follow) and
//! `gantry scale SVC --min/--max`.

use gantry_api::gantry::v1 as pb;
use serde::Serialize;

use crate::output::{print_doc, table, Format};
use crate::remote::{connect_target, state_name, status, Conn};

/// `gantry services`.
#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    conn: Conn,
}

/// `gantry endpoints`.
#[derive(Debug, clap::Args)]
pub struct EndpointsArgs {
    /// The service's name.
    service: String,
    /// Every replica placed, ready or not (with a `ready` column).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `gantry scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The service's name.
    service: String,
    /// Fewest replicas (at least 1).
    #[arg(long)]
    min: Option<u32>,
    /// Most replicas.
    #[arg(long)]
    max: Option<u32>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Serialize)]
struct ServiceOut {
    name: String,
    queue: String,
    state: &'static str,
    min: u32,
    desired: u32,
    running: u32,
    ready: u32,
    max: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    metric: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<f64>,
    /// Load per ready replica, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_per_replica: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_decision_ms: Option<u64>,
    endpoints: Vec<EndpointOut>,
}

#[derive(Debug, Serialize)]
struct EndpointOut {
    index: u32,
    node: String,
    host: String,
    port: u32,
    ready: bool,
}

fn out(s: pb::Service) -> ServiceOut {
    ServiceOut {
        name: s.name,
        queue: s.queue,
        state: state_name(s.state),
        min: s.min,
        desired: s.desired,
        running: s.running,
        ready: s.ready,
        max: s.max,
        metric: s.metric,
        target: (s.target > 0.0).then_some(s.target),
        load_per_replica: s.measured.then_some(s.load_per_replica),
        last_decision: s.last_decision,
        last_decision_ms: (s.last_decision_ms > 0).then_some(s.last_decision_ms),
        endpoints: s
            .endpoints
            .into_iter()
            .map(|e| EndpointOut {
                index: e.index,
                node: e.node,
                host: e.host,
                port: e.port,
                ready: e.ready,
            })
            .collect(),
    }
}

async fn client(
    conn: &Conn,
) -> anyhow::Result<
    pb::services_client::ServicesClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            gantry_server::auth::BearerToken,
        >,
    >,
> {
    let (ch, b) = connect_target(&conn.target).await?;
    Ok(pb::services_client::ServicesClient::with_interceptor(ch, b))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn print_services(format: Format, rows: Vec<ServiceOut>) -> anyhow::Result<()> {
    if format != Format::Table {
        return print_doc(format, &rows);
    }
    let mut t = table(&[
        "service",
        "queue",
        "state",
        "min/desired/running/ready/max",
        "load/target",
        "last decision",
    ]);
    for r in rows {
        let load = match (&r.load_per_replica, r.target) {
            (Some(l), Some(t)) => format!("{l:.2}/{t} {}", r.metric),
            (None, Some(t)) => format!("-/{t} {}", r.metric),
            _ => String::new(),
        };
        t.add_row(vec![
            r.name,
            r.queue,
            r.state.to_string(),
            format!(
                "{}/{}/{}/{}/{}",
                r.min, r.desired, r.running, r.ready, r.max
            ),
            load,
            r.last_decision,
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `gantry services`.
pub fn services(args: ServicesArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let list = client(&args.conn)
            .await?
            .list_services(pb::ListServicesRequest::default())
            .await
            .map_err(status)?
            .into_inner();
        print_services(
            args.conn.output,
            list.services.into_iter().map(out).collect(),
        )
    })
}

/// `gantry endpoints SVC`.
pub fn endpoints(args: EndpointsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let list = client(&args.conn)
            .await?
            .list_services(pb::ListServicesRequest {
                name: args.service.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let Some(s) = list.services.into_iter().next() else {
            anyhow::bail!(
                "no inference service {:?} (or not one of your teams')",
                args.service
            );
        };
        let rows: Vec<EndpointOut> = out(s)
            .endpoints
            .into_iter()
            .filter(|e| args.all || e.ready)
            .collect();
        if args.conn.output != Format::Table {
            return print_doc(args.conn.output, &rows);
        }
        let mut t = table(&["replica", "node", "endpoint", "ready"]);
        for e in rows {
            t.add_row(vec![
                e.index.to_string(),
                e.node,
                format!("{}:{}", e.host, e.port),
                e.ready.to_string(),
            ]);
        }
        println!("{t}");
        Ok(())
    })
}

/// `gantry scale SVC --min N --max M`.
pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.min.is_some() || args.max.is_some(),
        "give --min, --max or both"
    );
    runtime()?.block_on(async {
        let s = client(&args.conn)
            .await?
            .scale_service(pb::ScaleServiceRequest {
                name: args.service.clone(),
                min: args.min,
                max: args.max,
            })
            .await
            .map_err(status)?
            .into_inner();
        print_services(args.conn.output, vec![out(s)])
    })
}
