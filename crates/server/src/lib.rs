//! # gantry-server
//!
//! `gantry serve`: the standalone control plane. A tour, from the disk up:
//! - [`store`]: one redb file in the data directory; a single writer task makes every change
//!   durable in order and batches concurrent writes into one transaction (group commit). A
//!   submission is acknowledged only after its commit.
//! - [`record`]: what is stored — queue specs, job records with their tasks' exact nodes and
//!   device uuids, node inventories.
//! - [`state`]: records plus the engine's snapshot, kept in step; rebuilt from the records on
//!   start and when nodes or queues change, with running tasks put back by
//!   `Snapshot::restore` so no device is allocated twice.
//! - [`server`]: the tokio side — the debounced scheduling loop, the lease reaper, and the
//!   tonic services of `gantry.v1` (queues, jobs, nodes, cluster) over TCP.
//! - [`agent`]: the node agent — registers an inventory, heartbeats, runs assigned tasks as
//!   processes with `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES`, reports exits, stops tasks.
//! - [`tasklog`] and [`logs`]: task output — captured on the node into capped, rotating files,
//!   pushed to the server, which keeps its own copy and serves it (`TaskLogs`, `gantry logs`).
//! - [`services`]: inference services — replica ports, what agents' probes report, the
//!   autoscaler loop (the engine's HPA algorithm) and the bounds users set.
//! - [`client`]: how clients and agents dial the server, over plain HTTP/2 or TLS (rustls).
//! - [`auth`]: bearer tokens from a file; admins and team-scoped members.
//! - [`metrics`]: prometheus `/metrics`, `/healthz`, `/readyz` over HTTP.
//! - [`error`]: [`ServerError`], whose messages name the refused field and which maps to gRPC
//!   codes.

pub mod agent;
pub mod auth;
pub mod client;
pub mod conn;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod record;
pub mod server;
pub mod services;
pub mod state;
pub mod store;
pub mod tasklog;

pub use error::ServerError;
pub use server::{Config, Running, Server, TlsIdentity};
