//! The autoscaler of inference services: Kubernetes' HPA algorithm as a pure function of what
//! was observed, so the server, the simulator and tests share it.
//!
//! Each evaluation turns the load summed over the ready replicas into a *recommendation*:
//! `ceil(load / target)`, with the replicas that are not ready yet counted at the target when
//! the load asks for fewer (so a scale-up in progress is not undone) and at nothing when it asks
//! for more. A load within `tolerance` of the target recommends the current count. The
//! recommendation is bounded by `min..=max`.
//!
//! Stabilization: the desired count rises to the *lowest* recommendation of the scale-up window
//! and falls to the *highest* of the scale-down window, so a short spike does not scale up (with
//! a non-zero up window) and a short dip does not scale down.

use std::collections::VecDeque;

/// A service's scaling policy, in the engine's units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePolicy {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Load per ready replica the service is sized for (> 0).
    pub target: f64,
    /// Relative deviation from the target that changes nothing.
    pub tolerance: f64,
    /// Scale-up stabilization window.
    pub up_window_ms: u64,
    /// Scale-down stabilization window.
    pub down_window_ms: u64,
}

/// A change of the desired replica count, with what it was based on.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleDecision {
    /// When.
    pub at_ms: u64,
    /// Desired before.
    pub from: u32,
    /// Desired after.
    pub to: u32,
    /// This evaluation's own recommendation (before stabilization).
    pub recommendation: u32,
    /// Ready replicas measured.
    pub ready: u32,
    /// Load per ready replica, when measured.
    pub per_replica: Option<f64>,
    /// In words, with its inputs.
    pub why: String,
}

/// One service's autoscaler: its desired count and its recent recommendations.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    desired: u32,
    history: VecDeque<(u64, u32)>,
    /// When the first evaluation ran and the count it found: that count stands as a
    /// recommendation for the scale-down window, so a fresh autoscaler does not drop a service
    /// before a whole window of low load.
    started: Option<(u64, u32)>,
}

impl Autoscaler {
    /// Start at `desired` replicas.
    pub fn new(desired: u32) -> Autoscaler {
        Autoscaler {
            desired,
            history: VecDeque::new(),
            started: None,
        }
    }

    /// The desired replica count.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Forget the recommendations (the bounds changed, or the count was set by hand).
    pub fn reset(&mut self, desired: u32) {
        self.desired = desired;
        self.history.clear();
        self.started = None;
    }

    /// One evaluation at `now`: `ready` replicas reported `load` in all (none: nothing was
    /// measured). Returns a decision when the desired count changes.
    pub fn observe(
        &mut self,
        p: &ScalePolicy,
        now: u64,
        ready: u32,
        load: Option<f64>,
    ) -> Option<ScaleDecision> {
        let from = self.desired;
        let bounded = from.clamp(p.min, p.max.max(p.min));
        let started = *self.started.get_or_insert((now, bounded));
        let (recommendation, per_replica, basis) = match load {
            Some(total) if ready > 0 && total.is_finite() && total >= 0.0 => {
                let per = total / f64::from(ready);
                let ratio = per / p.target;
                let rec = if (ratio - 1.0).abs() <= p.tolerance {
                    bounded
                } else if ratio > 1.0 {
                    (total / p.target).ceil() as u32
                } else {
                    // Replicas still starting count as if at the target.
                    let starting = f64::from(from.saturating_sub(ready));
                    (total / p.target + starting).ceil() as u32
                };
                (
                    rec.clamp(p.min, p.max.max(p.min)),
                    Some(per),
                    format!(
                        "{per:.2} per ready replica against a target of {} ({ready} ready)",
                        p.target
                    ),
                )
            }
            _ => (bounded, None, format!("no load measured ({ready} ready)")),
        };
        self.history.push_back((now, recommendation));
        let keep = p.up_window_ms.max(p.down_window_ms);
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > keep)
        {
            self.history.pop_front();
        }
        let within = |w: u64| {
            self.history
                .iter()
                .filter(move |&&(t, _)| now.saturating_sub(t) <= w)
                .map(|&(_, r)| r)
        };
        let up = within(p.up_window_ms).min().unwrap_or(recommendation);
        let mut down = within(p.down_window_ms).max().unwrap_or(recommendation);
        if now.saturating_sub(started.0) <= p.down_window_ms {
            down = down.max(started.1);
        }
        let to = if bounded < up {
            up
        } else if bounded > down {
            down
        } else {
            bounded
        };
        self.desired = to;
        (to != from).then(|| ScaleDecision {
            at_ms: now,
            from,
            to,
            recommendation,
            ready,
            per_replica,
            why: if to > from {
                format!("scale up {from} -> {to}: {basis}")
            } else {
                format!("scale down {from} -> {to}: {basis}")
            },
        })
    }
}

impl Autoscaler {
    /// At zero replicas (`min` 0) nothing runs to measure: `queued` requests waiting in front of
    /// the service (a router's gauge) bring it back at once to `ceil(queued / target)` (at least
    /// 1, at most `max`). Returns a decision when it leaves zero.
    pub fn observe_queued(
        &mut self,
        p: &ScalePolicy,
        now: u64,
        queued: Option<f64>,
    ) -> Option<ScaleDecision> {
        if self.desired != 0 {
            return None;
        }
        let q = queued.filter(|q| q.is_finite() && *q > 0.0)?;
        let to = ((q / p.target).ceil() as u32).clamp(1, p.max.max(1));
        self.desired = to;
        self.history.clear();
        self.history.push_back((now, to));
        self.started = Some((now, to));
        Some(ScaleDecision {
            at_ms: now,
            from: 0,
            to,
            recommendation: to,
            ready: 0,
            per_replica: None,
            why: format!(
                "scale up 0 -> {to}: {q} requests queued in front of the service (target {} per replica)",
                p.target
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ScalePolicy = ScalePolicy {
        min: 1,
        max: 4,
        target: 10.0,
        tolerance: 0.1,
        up_window_ms: 0,
        down_window_ms: 30_000,
    };

    /// One evaluation: (time in s, ready replicas, summed load).
    type Step = (u64, u32, Option<f64>);
    /// A case: name, policy, starting count, steps, the desired count after each.
    type Case<'a> = (&'a str, &'a ScalePolicy, u32, &'a [Step], &'a [u32]);

    /// Run (time s, ready, load) steps; the desired count after each.
    fn run(p: &ScalePolicy, start: u32, steps: &[Step]) -> Vec<u32> {
        let mut a = Autoscaler::new(start);
        steps
            .iter()
            .map(|&(t, ready, load)| {
                a.observe(p, t * 1000, ready, load);
                a.desired()
            })
            .collect()
    }

    #[test]
    fn the_table() {
        let up_window = ScalePolicy {
            up_window_ms: 10_000,
            ..POLICY
        };
        let cases: &[Case] = &[
            (
                "steady load at the target keeps the count",
                &POLICY,
                2,
                &[(0, 2, Some(20.0)), (5, 2, Some(21.0)), (10, 2, Some(19.0))],
                &[2, 2, 2],
            ),
            (
                "a step up scales up at once (no up window), to ceil(load / target)",
                &POLICY,
                1,
                &[(0, 1, Some(10.0)), (5, 1, Some(35.0)), (10, 4, Some(35.0))],
                &[1, 4, 4],
            ),
            (
                "a step down waits for the scale-down window",
                &POLICY,
                4,
                &[
                    (0, 4, Some(40.0)),
                    (5, 4, Some(8.0)),
                    (20, 4, Some(8.0)),
                    (30, 4, Some(8.0)),
                    (36, 4, Some(8.0)),
                ],
                &[4, 4, 4, 4, 1],
            ),
            (
                "flapping load is held by the window: never below the window's highest",
                &POLICY,
                3,
                &[
                    (0, 3, Some(30.0)),
                    (5, 3, Some(5.0)),
                    (10, 3, Some(30.0)),
                    (15, 3, Some(5.0)),
                    (20, 3, Some(30.0)),
                ],
                &[3, 3, 3, 3, 3],
            ),
            (
                "a spike shorter than the up window does not scale up",
                &up_window,
                1,
                &[
                    (0, 1, Some(10.0)),
                    (5, 1, Some(40.0)),
                    (10, 1, Some(10.0)),
                    (15, 1, Some(40.0)),
                    (20, 1, Some(40.0)),
                    (26, 1, Some(40.0)),
                ],
                &[1, 1, 1, 1, 1, 4],
            ),
            (
                "bounds: never above max nor below min",
                &POLICY,
                2,
                &[(0, 2, Some(500.0)), (40, 4, Some(0.0)), (80, 4, Some(0.0))],
                &[4, 1, 1],
            ),
            (
                "within the tolerance nothing changes",
                &POLICY,
                3,
                &[(0, 3, Some(32.0)), (40, 3, Some(28.0))],
                &[3, 3],
            ),
            (
                "no measurement keeps the count (and brings it into bounds)",
                &POLICY,
                6,
                &[(0, 0, None), (5, 2, None)],
                &[4, 4],
            ),
            (
                "min 0: an idle service goes to zero once the down window has passed",
                &ScalePolicy { min: 0, ..POLICY },
                2,
                &[
                    (0, 2, Some(0.0)),
                    (20, 2, Some(0.0)),
                    (31, 2, Some(0.0)),
                    (40, 0, None),
                ],
                &[2, 2, 0, 0],
            ),
            (
                "replicas still starting count at the target, so a scale-up is not undone",
                &POLICY,
                4,
                &[(0, 1, Some(5.0)), (40, 1, Some(5.0))],
                &[4, 4],
            ),
        ];
        for (name, p, start, steps, want) in cases {
            assert_eq!(&run(p, *start, steps), want, "{name}");
        }
    }

    #[test]
    fn min_0_with_queued_requests_scales_up_from_zero_at_once() {
        let p = ScalePolicy { min: 0, ..POLICY };
        let mut a = Autoscaler::new(0);
        assert!(
            a.observe_queued(&p, 0, Some(0.0)).is_none(),
            "nothing waits"
        );
        assert!(a.observe_queued(&p, 0, None).is_none(), "nothing measured");
        let d = a.observe_queued(&p, 1000, Some(25.0)).expect("from zero");
        assert_eq!((d.from, d.to), (0, 3));
        assert!(
            d.why.starts_with("scale up 0 -> 3: 25 requests queued"),
            "{}",
            d.why
        );
        // Bounded by max.
        let mut b = Autoscaler::new(0);
        assert_eq!(b.observe_queued(&p, 0, Some(1e6)).map(|d| d.to), Some(4));
        // Once up, the ordinary rule runs: not at zero, queued requests change nothing here.
        assert!(a.observe_queued(&p, 2000, Some(99.0)).is_none());
    }

    #[test]
    fn a_decision_says_what_it_saw() {
        let mut a = Autoscaler::new(1);
        let d = a.observe(&POLICY, 1000, 1, Some(25.0)).expect("a change");
        assert_eq!((d.from, d.to, d.recommendation, d.ready), (1, 3, 3, 1));
        assert_eq!(
            d.why,
            "scale up 1 -> 3: 25.00 per ready replica against a target of 10 (1 ready)"
        );
        assert!(a.observe(&POLICY, 2000, 3, Some(30.0)).is_none());
    }
}
