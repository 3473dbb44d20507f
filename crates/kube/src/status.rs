//! What the API shows of each job, computed from the [`Mirror`] after a cycle: pods'
//! `PodScheduled=False` conditions with the reason they wait, PodGroup phases and conditions,
//! Queue statuses. Each is written only when it differs from what the API shows.
//!
//! PodGroup phases, in the order a gang usually goes through them:
//!
//! | phase | when | message |
//! |---|---|---|
//! | `Pending` | fewer than `minMember` pods exist (and none is bound) | how many exist |
//! | `Inqueue` | complete, waiting in its queue | the engine's reason, or the disruption budget that blocks its preemption |
//! | `Preempting` | placed, waiting for preempted (or deleted) pods to release its devices | how many pods wait |
//! | `Nominated` | placed, binds sent and not yet confirmed | how many |
//! | `Running` | placed and every pod bound | |
//! | `Preempted` | evicted for a preemptor, no pod of it left running | by whom |
//! | `Succeeded` | every pod succeeded | |
//! | `Failed` | no pod running and some failed | how many |
//!
//! Conditions: `Scheduled` (`True` while Running or Succeeded; otherwise `False` with the phase
//! as reason and its message), and `Preempted` (`True` from the eviction until the group runs
//! again). A condition keeps its `lastTransitionTime` while its status stays the same.

use std::collections::{BTreeMap, HashMap};

use gantry_engine::JobPhase;

use crate::crd::{GroupCondition, PodGroupPhase, PodGroupStatus, QueueStatus};
use crate::mirror::{rfc3339, Actions, Mirror, PodCondition, Regarding};
use crate::translate::{JobKey, PodKey, PodState};

/// What decides a PodGroup's phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GroupFacts {
    /// Pods that exist.
    pub pods: usize,
    /// Pods not finished, not terminating.
    pub live: usize,
    /// Live pods bound (the watch shows `spec.nodeName`).
    pub bound: usize,
    /// Binds sent and not confirmed.
    pub binding: usize,
    /// Binds waiting for preempted or deleted pods to go.
    pub held: usize,
    /// Pods that succeeded.
    pub succeeded: usize,
    /// Pods that failed.
    pub failed: usize,
    /// Pods being deleted.
    pub terminating: usize,
    /// `spec.minMember`.
    pub min_member: u32,
    /// The engine placed it.
    pub placed: bool,
    /// Why it waits, when it waits.
    pub reason: Option<String>,
    /// The disruption budget that blocks its preemption.
    pub budget: Option<String>,
    /// Who preempted it.
    pub preempted: Option<String>,
}

/// The phase and its message.
pub(crate) fn group_phase(f: &GroupFacts) -> (PodGroupPhase, String) {
    if f.live == 0 {
        if let Some(by) = &f.preempted {
            return (PodGroupPhase::Preempted, by.clone());
        }
        if f.pods == 0 {
            let why = f.reason.clone().unwrap_or_else(|| "no pods yet".into());
            return (PodGroupPhase::Pending, why);
        }
        if f.succeeded == f.pods {
            return (PodGroupPhase::Succeeded, String::new());
        }
        if f.failed > 0 {
            let msg = format!("{} of {} pods failed", f.failed, f.pods);
            return (PodGroupPhase::Failed, msg);
        }
        let msg = format!("{} pods terminating", f.terminating);
        return (PodGroupPhase::Pending, msg);
    }
    if f.placed {
        if f.held > 0 {
            let msg = format!(
                "placed; {} pods wait for preempted or deleted pods to release their devices",
                f.held
            );
            return (PodGroupPhase::Preempting, msg);
        }
        if f.binding > 0 {
            return (
                PodGroupPhase::Nominated,
                format!("binding {} pods", f.binding),
            );
        }
        return (PodGroupPhase::Running, String::new());
    }
    if (f.live as u32) < f.min_member && f.bound == 0 {
        let why = f.reason.clone().unwrap_or_else(|| {
            format!(
                "{} of {} pods exist; waiting for minMember",
                f.live, f.min_member
            )
        });
        return (PodGroupPhase::Pending, why);
    }
    if let Some(b) = &f.budget {
        return (PodGroupPhase::Inqueue, b.clone());
    }
    (PodGroupPhase::Inqueue, f.reason.clone().unwrap_or_default())
}

/// The conditions for `phase`; see the module docs.
pub(crate) fn conditions_for(
    phase: PodGroupPhase,
    message: &str,
    preempted: Option<&str>,
    observed: &[GroupCondition],
    now_ms: u64,
) -> Vec<GroupCondition> {
    let cond = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let old = observed.iter().find(|c| c.type_ == type_);
        let time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => rfc3339(now_ms),
        };
        GroupCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: time,
        }
    };
    let scheduled = matches!(phase, PodGroupPhase::Running | PodGroupPhase::Succeeded);
    let mut out = vec![cond(
        "Scheduled",
        scheduled,
        if scheduled {
            "Scheduled"
        } else {
            phase.as_str()
        },
        message,
    )];
    match preempted {
        Some(by) => out.push(cond("Preempted", true, "Preempted", by)),
        None if observed.iter().any(|c| c.type_ == "Preempted") => {
            out.push(cond("Preempted", false, phase.as_str(), ""));
        }
        None => {}
    }
    out
}

fn fmt_milli(v: u64) -> String {
    if v.is_multiple_of(1000) {
        (v / 1000).to_string()
    } else {
        format!("{:.2}", v as f64 / 1000.0)
    }
}

impl Mirror {
    /// Every status that differs from what the API shows, into `actions`.
    pub(crate) fn statuses(&mut self, now_ms: u64, actions: &mut Actions) {
        self.pod_statuses(now_ms, actions);
        self.group_statuses(now_ms, actions);
        self.queue_statuses(actions);
        self.deletion_costs(actions);
    }

    /// Inference replicas (lone pods of class `inference`, bound): their
    /// `controller.kubernetes.io/pod-deletion-cost` is the GPUs the other pods on their node
    /// hold, so when the HPA scales a Deployment down, the ReplicaSet deletes the replica on the
    /// freest node first and whole nodes come back for waiting gangs.
    fn deletion_costs(&mut self, actions: &mut Actions) {
        let mut used: HashMap<&str, u32> = HashMap::new();
        for p in self.pods.values() {
            if let (Some(n), true) = (&p.node, p.state.holds()) {
                *used.entry(n.as_str()).or_default() += p.demand.gpus;
            }
        }
        let mut writes = Vec::new();
        for (key, p) in &self.pods {
            let (Some(n), JobKey::Pod(_)) = (&p.node, &p.job) else {
                continue;
            };
            if p.priority_class.as_deref() != Some("inference") || p.state != PodState::Live {
                continue;
            }
            let cost = used
                .get(n.as_str())
                .copied()
                .unwrap_or(0)
                .saturating_sub(p.demand.gpus)
                .to_string();
            if p.deletion_cost.as_ref() == Some(&cost) {
                continue;
            }
            if self.cost_written.get(key) == Some(&cost) {
                continue;
            }
            writes.push((key.clone(), cost));
        }
        for (key, cost) in writes {
            self.cost_written.insert(key.clone(), cost.clone());
            actions.pod_costs.push((key, cost));
        }
    }

    /// Pods: `PodScheduled=False` with the reason of their job, or of their own spec, and a
    /// `FailedScheduling` event each time the reason changes.
    fn pod_statuses(&mut self, now_ms: u64, actions: &mut Actions) {
        let mut want: Vec<(PodKey, String)> = Vec::new();
        for (key, (why, _)) in &self.bad_pods {
            want.push((
                key.clone(),
                format!("gantry cannot schedule this pod: {why}"),
            ));
        }
        for (jkey, pods) in &self.pods_of {
            let Some(e) = self.jobs.get(jkey) else {
                continue;
            };
            let Some(why) = &e.reason else { continue };
            for pk in pods {
                let Some(p) = self.pods.get(pk) else { continue };
                if p.node.is_none() && p.state == PodState::Live && !self.in_flight.contains_key(pk)
                {
                    want.push((pk.clone(), why.clone()));
                }
            }
        }
        for (pk, why) in want {
            let observed = self.observed_pod_reason.get(&pk);
            if observed.is_some_and(|o| o.0 == why) {
                continue;
            }
            let since = observed
                .map(|o| o.1.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| rfc3339(now_ms));
            self.observed_pod_reason
                .insert(pk.clone(), (why.clone(), since.clone()));
            let ev = self.event(
                Regarding::Pod(pk.clone()),
                true,
                "FailedScheduling",
                why.clone(),
            );
            actions.events.push(ev);
            actions.pod_conditions.push(PodCondition {
                pod: pk,
                message: why,
                since,
            });
        }
    }

    fn group_facts(&self, gk: &(String, String)) -> GroupFacts {
        let jkey = JobKey::Group(gk.0.clone(), gk.1.clone());
        let mut f = GroupFacts {
            min_member: self.groups.get(gk).map_or(0, |(s, _)| s.min_member),
            ..GroupFacts::default()
        };
        for p in self
            .pods_of
            .get(&jkey)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
        {
            f.pods += 1;
            match p.state {
                PodState::Live => {
                    f.live += 1;
                    if p.node.is_some() {
                        f.bound += 1;
                    } else if self.held.contains_key(&p.key) {
                        f.held += 1;
                    } else if self.in_flight.contains_key(&p.key) {
                        f.binding += 1;
                    }
                }
                PodState::Terminating => f.terminating += 1,
                PodState::Succeeded => f.succeeded += 1,
                PodState::Gone => f.failed += 1,
            }
        }
        let entry = self.jobs.get(&jkey);
        f.placed = entry
            .and_then(|e| e.id)
            .is_some_and(|id| self.snap.job_phase(id) == JobPhase::Running);
        f.reason = entry.and_then(|e| e.reason.clone());
        f.budget = self.budget_wait.get(&jkey).cloned();
        f.preempted = self.preempted.get(&jkey).cloned();
        f
    }

    fn group_statuses(&mut self, now_ms: u64, actions: &mut Actions) {
        let keys: Vec<(String, String)> = self.groups.keys().cloned().collect();
        for gk in keys {
            let f = self.group_facts(&gk);
            let (phase, message) = group_phase(&f);
            let observed = self.observed_group.get(&gk);
            let conditions = conditions_for(
                phase,
                &message,
                f.preempted.as_deref(),
                observed.map(|o| o.conditions.as_slice()).unwrap_or(&[]),
                now_ms,
            );
            let want = PodGroupStatus {
                phase,
                conditions,
                running: (f.bound + f.binding) as u32,
                message: message.clone(),
            };
            if observed == Some(&want) {
                continue;
            }
            if phase == PodGroupPhase::Inqueue
                && !message.is_empty()
                && observed.is_none_or(|o| o.message != message)
            {
                let ev = self.event(
                    Regarding::PodGroup(gk.0.clone(), gk.1.clone()),
                    true,
                    "FailedScheduling",
                    message.clone(),
                );
                actions.events.push(ev);
            }
            self.observed_group.insert(gk.clone(), want.clone());
            actions.group_statuses.push((gk, want));
        }
    }

    /// Nominal quota of a queue and, for a cohort, of its whole subtree.
    fn subtree_nominal(
        &self,
        name: &str,
        flavor: gantry_engine::FlavorId,
        children: &BTreeMap<&str, Vec<&str>>,
        depth: usize,
    ) -> u64 {
        let own = self
            .snap
            .queue_by_name(name)
            .map_or(0, |q| self.snap.queue_nominal(q, flavor));
        if depth > 64 {
            return own;
        }
        own + children
            .get(name)
            .into_iter()
            .flatten()
            .map(|c| self.subtree_nominal(c, flavor, children, depth + 1))
            .sum::<u64>()
    }

    fn queue_statuses(&mut self, actions: &mut Actions) {
        let mut admitted: BTreeMap<String, u32> = BTreeMap::new();
        for e in self.jobs.values() {
            if let Some(id) = e.id {
                if self.snap.job_phase(id) == JobPhase::Running {
                    let q = self.snap.job_queue(id);
                    *admitted
                        .entry(self.snap.queue_name(q).to_string())
                        .or_default() += 1;
                }
            }
        }
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, q) in &self.queues {
            if let Some(p) = q.spec.parent.as_deref() {
                children.entry(p).or_default().push(name.as_str());
            }
        }
        let mut wants = Vec::new();
        for name in self.queues.keys() {
            if let Some(why) = self.invalid_queues.get(name) {
                wants.push((
                    name.clone(),
                    QueueStatus {
                        message: why.clone(),
                        ..QueueStatus::default()
                    },
                ));
                continue;
            }
            let Some(q) = self.snap.queue_by_name(name) else {
                continue;
            };
            let mut usage = BTreeMap::new();
            let mut share: f64 = 0.0;
            let mut summary = Vec::new();
            for f in self.snap.flavors() {
                let used = self.snap.queue_usage(q, f);
                let nominal = self.snap.queue_nominal(q, f);
                // A cohort's own nominal is usually 0; what it shares is its subtree's.
                let total = self.subtree_nominal(name, f, &children, 0);
                if used == 0 && total == 0 {
                    continue;
                }
                let flavor = self.snap.flavor_name(f).to_string();
                usage.insert(flavor.clone(), used as f64 / 1000.0);
                if nominal > 0 {
                    share = share.max(used as f64 / nominal as f64);
                }
                summary.push(format!("{flavor} {}/{}", fmt_milli(used), fmt_milli(total)));
            }
            wants.push((
                name.clone(),
                QueueStatus {
                    usage,
                    pending: self.snap.queue_pending(q) as u32,
                    admitted: admitted.get(name).copied().unwrap_or(0),
                    share: (share * 1000.0).round() / 1000.0,
                    summary: summary.join(", "),
                    message: String::new(),
                },
            ));
        }
        for (name, want) in wants {
            if self.observed_queue.get(&name) != Some(&want) {
                self.observed_queue.insert(name.clone(), want.clone());
                actions.queue_statuses.push((name, want));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> GroupFacts {
        GroupFacts {
            min_member: 2,
            ..GroupFacts::default()
        }
    }

    /// Every phase, from the facts that lead to it.
    #[test]
    fn each_phase_follows_from_its_facts() {
        type Row = (&'static str, GroupFacts, PodGroupPhase, &'static str);
        let rows: Vec<Row> = vec![
            ("no pods", facts(), PodGroupPhase::Pending, "no pods yet"),
            (
                "one of two",
                GroupFacts {
                    pods: 1,
                    live: 1,
                    ..facts()
                },
                PodGroupPhase::Pending,
                "1 of 2 pods exist; waiting for minMember",
            ),
            (
                "complete, waiting",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    reason: Some("queue q is at its quota".into()),
                    ..facts()
                },
                PodGroupPhase::Inqueue,
                "queue q is at its quota",
            ),
            (
                "blocked by a budget",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    reason: Some("no capacity".into()),
                    budget: Some("waiting on a PodDisruptionBudget".into()),
                    ..facts()
                },
                PodGroupPhase::Inqueue,
                "waiting on a PodDisruptionBudget",
            ),
            (
                "placed on a victim's devices",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    held: 2,
                    placed: true,
                    ..facts()
                },
                PodGroupPhase::Preempting,
                "placed; 2 pods wait for preempted or deleted pods to release their devices",
            ),
            (
                "binds in flight",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    bound: 1,
                    binding: 1,
                    placed: true,
                    ..facts()
                },
                PodGroupPhase::Nominated,
                "binding 1 pods",
            ),
            (
                "all bound",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    bound: 2,
                    placed: true,
                    ..facts()
                },
                PodGroupPhase::Running,
                "",
            ),
            (
                "evicted for another",
                GroupFacts {
                    pods: 2,
                    terminating: 2,
                    preempted: Some("preempted by ml/train (Priority)".into()),
                    ..facts()
                },
                PodGroupPhase::Preempted,
                "preempted by ml/train (Priority)",
            ),
            (
                "evicted and gone",
                GroupFacts {
                    preempted: Some("preempted by ml/train (Priority)".into()),
                    ..facts()
                },
                PodGroupPhase::Preempted,
                "preempted by ml/train (Priority)",
            ),
            (
                "preempted, pods re-created",
                GroupFacts {
                    pods: 2,
                    live: 2,
                    reason: Some("no capacity".into()),
                    preempted: Some("preempted by ml/train (Priority)".into()),
                    ..facts()
                },
                PodGroupPhase::Inqueue,
                "no capacity",
            ),
            (
                "done",
                GroupFacts {
                    pods: 2,
                    succeeded: 2,
                    ..facts()
                },
                PodGroupPhase::Succeeded,
                "",
            ),
            (
                "a pod failed",
                GroupFacts {
                    pods: 2,
                    succeeded: 1,
                    failed: 1,
                    ..facts()
                },
                PodGroupPhase::Failed,
                "1 of 2 pods failed",
            ),
        ];
        for (what, f, phase, msg) in rows {
            assert_eq!(group_phase(&f), (phase, msg.to_string()), "{what}");
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let c1 = conditions_for(PodGroupPhase::Inqueue, "no capacity", None, &[], 1_000);
        assert_eq!(c1.len(), 1);
        assert_eq!(
            (
                c1[0].type_.as_str(),
                c1[0].status.as_str(),
                c1[0].reason.as_str()
            ),
            ("Scheduled", "False", "Inqueue")
        );
        let c2 = conditions_for(PodGroupPhase::Preempting, "placed", None, &c1, 5_000);
        assert_eq!(c2[0].last_transition_time, c1[0].last_transition_time);
        assert_eq!(c2[0].reason, "Preempting");
        let c3 = conditions_for(PodGroupPhase::Running, "", None, &c2, 9_000);
        assert_eq!(c3[0].status, "True");
        assert_ne!(c3[0].last_transition_time, c1[0].last_transition_time);
        // Preempted: True while it lasts, then False (kept, so its time says when it ended).
        let c4 = conditions_for(PodGroupPhase::Preempted, "by x", Some("by x"), &c3, 10_000);
        assert_eq!(c4[1].type_, "Preempted");
        assert_eq!(c4[1].status, "True");
        let c5 = conditions_for(PodGroupPhase::Running, "", None, &c4, 20_000);
        assert_eq!(c5[1].status, "False");
        assert_eq!(fmt_milli(2500), "2.50");
    }
}
