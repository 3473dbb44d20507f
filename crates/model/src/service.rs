//! Inference services: how a service's replica count follows its load (`autoscale`), the port
//! each replica listens on, and the HTTP path that says a replica is ready.
//!
//! ```yaml
//! name: chat
//! queue: team-a
//! kind: inference
//! replicas: {min: 1, max: 4}
//! tasks: [{gpus: 1}]
//! command: [vllm, serve, my-model, --port, "$PORT"]
//! port: 8000                 # each replica gets PORT: 8000, or the next free one on its node
//! readiness: /health         # the agent probes it; only ready replicas count and get traffic
//! autoscale:
//!   metric: vllm:num_requests_running   # a gauge in each replica's Prometheus text
//!   target: 8                            # per ready replica
//!   scale_up_window: 0s
//!   scale_down_window: 5m
//!   tolerance: 0.1
//!   interval: 5s                         # how often the agent scrapes
//!   # With replicas.min: 0, an idle service goes to zero after the scale-down window and comes
//!   # back, sized for them, when this gauge (read by the server) shows waiting requests:
//!   activation: {url: http://router:9090/metrics, metric: router_queued_requests}
//! ```

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;
use crate::ModelError;

/// What is measured on each ready replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// The metric's current value (in-flight requests, queue length).
    #[default]
    Gauge,
    /// The per-second increase of a counter between two scrapes (requests/s).
    Rate,
}

/// How an inference service's replica count follows its load, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// A metric name in each replica's Prometheus text (summed over its series).
    pub metric: String,
    /// `gauge` (default) or `rate` (per-second increase of a counter).
    #[serde(default, rename = "type")]
    pub metric_type: MetricType,
    /// Where each replica serves its metrics; default `/metrics`.
    #[serde(default)]
    pub path: Option<String>,
    /// The value per ready replica the service is sized for.
    pub target: f64,
    /// A higher replica count is taken only once every recommendation in this window asked for
    /// at least that many; default 0 (at once).
    #[serde(default)]
    pub scale_up_window: Option<Quantity>,
    /// A lower replica count is taken only once every recommendation in this window asked for
    /// at most that many; default 5 minutes.
    #[serde(default)]
    pub scale_down_window: Option<Quantity>,
    /// Load within this fraction of the target changes nothing; default 0.1.
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// How often the agent scrapes each replica; default 5 s.
    #[serde(default)]
    pub interval: Option<Quantity>,
    /// Where requests wait while no replica runs (a router or gateway in front of the
    /// service): with `replicas.min: 0` the service scales to zero when idle and back up when
    /// this gauge shows queued requests.
    #[serde(default)]
    pub activation: Option<ActivationSpec>,
}

/// A queue in front of a service, read by the server (not the agents) while it has no replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationSpec {
    /// `http://host:port/path` serving Prometheus text.
    pub url: String,
    /// A gauge there: requests waiting for the service (summed over its series).
    pub metric: String,
}

/// A validated [`ActivationSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// `host:port`.
    pub host_port: String,
    /// Path with query.
    pub path: String,
    /// Metric name.
    pub metric: String,
}

/// A validated [`AutoscaleSpec`], in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// The queue read while at zero replicas.
    pub activation: Option<Activation>,
    /// Metric name.
    pub metric: String,
    /// Gauge or rate.
    pub metric_type: MetricType,
    /// Metrics path.
    pub path: String,
    /// Target per ready replica (> 0).
    pub target: f64,
    /// Scale-up stabilization window.
    pub scale_up_window_ms: u64,
    /// Scale-down stabilization window.
    pub scale_down_window_ms: u64,
    /// Tolerance (0 ≤ t < 1).
    pub tolerance: f64,
    /// Scrape interval (≥ 100 ms).
    pub interval_ms: u64,
}

/// The default scale-down window (as Kubernetes' HPA).
pub const DEFAULT_SCALE_DOWN_WINDOW_MS: u64 = 300_000;

fn path_field(field: &str, p: &str) -> Result<String, ModelError> {
    if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ModelError::invalid(
            field,
            format!("{p:?} is not an HTTP path (it starts with '/' and has no spaces)"),
        ));
    }
    Ok(p.to_string())
}

/// Check a readiness path (`/health`).
///
/// # Errors
/// Not an absolute HTTP path.
pub fn check_readiness(p: &str) -> Result<String, ModelError> {
    path_field("readiness", p)
}

fn check_metric(field: &str, m: &str) -> Result<(), ModelError> {
    if m.is_empty()
        || !m
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':'))
        || m.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(ModelError::invalid(
            field,
            format!("{m:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    Ok(())
}

impl AutoscaleSpec {
    /// Validate; field names are relative to `autoscale`.
    ///
    /// # Errors
    /// The first bad field, named.
    pub fn validate(&self) -> Result<Autoscale, ModelError> {
        check_metric("metric", &self.metric)?;
        if !(self.target.is_finite() && self.target > 0.0) {
            return Err(ModelError::invalid(
                "target",
                format!("must be a number above 0, got {}", self.target),
            ));
        }
        let tolerance = self.tolerance.unwrap_or(0.1);
        if !(0.0..1.0).contains(&tolerance) {
            return Err(ModelError::invalid(
                "tolerance",
                format!("must be at least 0 and below 1, got {tolerance}"),
            ));
        }
        let ms = |field: &str, q: &Option<Quantity>, default: u64| -> Result<u64, ModelError> {
            match q {
                None => Ok(default),
                Some(q) => q.duration_ms().map_err(|r| ModelError::invalid(field, r)),
            }
        };
        let interval_ms = ms("interval", &self.interval, 5_000)?;
        if interval_ms < 100 {
            return Err(ModelError::invalid(
                "interval",
                format!("{interval_ms} ms is too short; at least 100ms"),
            ));
        }
        let activation = match &self.activation {
            None => None,
            Some(a) => {
                let rest = a.url.strip_prefix("http://").ok_or_else(|| {
                    ModelError::invalid(
                        "activation.url",
                        format!("{:?} is not an http:// URL", a.url),
                    )
                })?;
                let (host_port, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/metrics"),
                };
                let port_ok = host_port
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok {
                    return Err(ModelError::invalid(
                        "activation.url",
                        format!(
                            "{:?} needs a host and a port (http://router:9090/metrics)",
                            a.url
                        ),
                    ));
                }
                check_metric("activation.metric", &a.metric)?;
                Some(Activation {
                    host_port: host_port.to_string(),
                    path: path_field("activation.url", path)?,
                    metric: a.metric.clone(),
                })
            }
        };
        Ok(Autoscale {
            activation,
            metric: self.metric.clone(),
            metric_type: self.metric_type,
            path: path_field("path", self.path.as_deref().unwrap_or("/metrics"))?,
            target: self.target,
            scale_up_window_ms: ms("scale_up_window", &self.scale_up_window, 0)?,
            scale_down_window_ms: ms(
                "scale_down_window",
                &self.scale_down_window,
                DEFAULT_SCALE_DOWN_WINDOW_MS,
            )?,
            tolerance,
            interval_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AutoscaleSpec {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    #[test]
    fn defaults_follow_the_hpa() {
        let a = spec("{metric: 'vllm:num_requests_running', target: 8}")
            .validate()
            .expect("valid");
        assert_eq!(a.path, "/metrics");
        assert_eq!(a.metric_type, MetricType::Gauge);
        assert_eq!(
            (a.scale_up_window_ms, a.scale_down_window_ms, a.interval_ms),
            (0, 300_000, 5_000)
        );
        assert!((a.tolerance - 0.1).abs() < 1e-12);
        let a = spec("{metric: requests_total, type: rate, target: 20, scale_down_window: 30s, interval: 500ms}")
            .validate()
            .expect("valid");
        assert_eq!(a.metric_type, MetricType::Rate);
        assert_eq!((a.scale_down_window_ms, a.interval_ms), (30_000, 500));
    }

    #[test]
    fn bad_fields_are_named() {
        for (yaml, field) in [
            ("{metric: 'no spaces', target: 1}", "metric"),
            ("{metric: m, target: 0}", "target"),
            ("{metric: m, target: 1, tolerance: 1.5}", "tolerance"),
            ("{metric: m, target: 1, interval: 10ms}", "interval"),
            (
                "{metric: m, target: 1, scale_down_window: soon}",
                "scale_down_window",
            ),
            ("{metric: m, target: 1, path: metrics}", "path"),
        ] {
            let e = spec(yaml).validate().expect_err(yaml);
            assert!(
                matches!(&e, ModelError::Invalid { field: f, .. } if f == field),
                "{yaml}: {e}"
            );
        }
        let e = spec("{metric: m, target: 1, activation: {url: 'router:9090/metrics', metric: q}}")
            .validate()
            .expect_err("no scheme");
        assert!(e.to_string().contains("activation.url"), "{e}");
        let a = spec("{metric: m, target: 1, activation: {url: 'http://router:9090/stats?x=1', metric: queued}}")
            .validate()
            .expect("valid");
        let act = a.activation.expect("activation");
        assert_eq!(
            (act.host_port.as_str(), act.path.as_str()),
            ("router:9090", "/stats?x=1")
        );
        assert!(check_readiness("/health").is_ok());
        assert!(check_readiness("health").is_err());
    }
}
