//! Queues and cohorts: a tree whose leaves hold jobs and whose inner nodes pool unused quota.
//!
//! Every tree node has, per flavor, a nominal quota, an optional borrowing limit (how much more
//! than its own quota it may take from its parent's pool) and an optional lending limit (how much of
//! its unused quota its parent's pool may lend to others), plus a fair-share weight. Quota is kept
//! in thousandths (milli-GPUs, milli-slices) so a queue can hold 2.5 GPUs of shared-GPU quota.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;
use crate::ModelError;

/// Quota for one flavor, as written (`{nominal: 16, borrowing_limit: 8, lending_limit: 4}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// What the queue is entitled to.
    #[serde(default = "zero")]
    pub nominal: Quantity,
    /// Most it may use beyond its nominal quota, from its cohort. Absent: no limit.
    #[serde(default)]
    pub borrowing_limit: Option<Quantity>,
    /// Most of its unused nominal quota others may borrow. Absent: all of it.
    #[serde(default)]
    pub lending_limit: Option<Quantity>,
}

fn zero() -> Quantity {
    Quantity::Number(0.0)
}

fn default_weight() -> f64 {
    1.0
}

/// One node of the queue tree, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Unique name.
    pub name: String,
    /// Parent cohort; absent for a root.
    #[serde(default)]
    pub parent: Option<String>,
    /// Fair-share weight (> 0).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Quota per flavor (`h100-80gb`, `h100-80gb/1g.10gb`).
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaSpec>,
    /// What the queue may do with flavors its `quotas` do not list: `deny` (the default, as in
    /// Kueue: list a flavor, with nominal 0 to only borrow it) or `allow` (the old behaviour:
    /// unlisted flavors are limited only by what the tree's other queues list, or by capacity).
    /// Absent: as the parent says (`deny` at a root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_flavors: Option<UnlistedFlavors>,
}

/// What a queue may do with flavors its quotas do not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum UnlistedFlavors {
    /// Not usable.
    #[default]
    Deny,
    /// Usable, limited only by the tree's pool (when another queue lists the flavor) or capacity.
    Allow,
}

/// A priority class: a value and whether jobs of the class may be preempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityClass {
    /// Name (`inference`, `training`, `batch`, …).
    pub name: String,
    /// Higher runs first and may preempt lower.
    pub value: i32,
    /// Whether jobs of this class may be evicted by preemption.
    #[serde(default = "yes")]
    pub preemptible: bool,
}

fn yes() -> bool {
    true
}

/// The default classes: inference above training above batch; inference is not preemptible.
pub fn default_priority_classes() -> Vec<PriorityClass> {
    vec![
        PriorityClass {
            name: "inference".into(),
            value: 1000,
            preemptible: false,
        },
        PriorityClass {
            name: "training".into(),
            value: 500,
            preemptible: true,
        },
        PriorityClass {
            name: "batch".into(),
            value: 100,
            preemptible: true,
        },
    ]
}

/// A queues document: the tree and optionally the priority classes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesSpec {
    /// Tree nodes in any order.
    #[serde(default)]
    pub queues: Vec<QueueSpec>,
    /// Priority classes; absent: [`default_priority_classes`].
    #[serde(default)]
    pub priority_classes: Option<Vec<PriorityClass>>,
}

/// Validated quota for one flavor, in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quota {
    /// Nominal quota.
    pub nominal: u64,
    /// Borrowing limit, `None` = unlimited.
    pub borrowing_limit: Option<u64>,
    /// Lending limit, `None` = everything unused.
    pub lending_limit: Option<u64>,
}

/// A validated tree node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Index of the parent in [`QueueTree::queues`].
    pub parent: Option<usize>,
    /// Indexes of the children.
    pub children: Vec<usize>,
    /// Fair-share weight.
    pub weight: f64,
    /// Quota per flavor.
    pub quotas: BTreeMap<String, Quota>,
    /// Whether flavors `quotas` does not list are usable (see [`UnlistedFlavors`]), resolved
    /// through the parents.
    #[serde(default)]
    pub allow_unlisted: bool,
}

impl QueueDef {
    /// Whether jobs of this queue may use `flavor`: listed in its quotas, or unlisted flavors
    /// are allowed.
    pub fn may_use(&self, flavor: &str) -> bool {
        self.allow_unlisted || self.quotas.contains_key(flavor)
    }
    /// A leaf holds jobs; an inner node is a cohort.
    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// The validated queue tree and priority classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueTree {
    /// Tree nodes; parents come before their children.
    pub queues: Vec<QueueDef>,
    /// Priority classes by name.
    pub priority_classes: BTreeMap<String, PriorityClass>,
}

/// Longest queue, job, node or class name accepted (Kubernetes' object-name limit).
pub const MAX_NAME_LEN: usize = 253;

/// Check a user-chosen name: non-empty, at most [`MAX_NAME_LEN`] bytes, `[A-Za-z0-9._-]` only.
pub fn check_name(field: &str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(ModelError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ModelError::invalid(
            field,
            format!(
                "{} characters is longer than the limit of {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(ModelError::invalid(
            field,
            format!("{name:?} is not a name (it would be a path); start with a letter or digit"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(ModelError::invalid(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, '-', '.' or '_'"),
        ));
    }
    Ok(())
}

fn quota_amount(q: &Quantity, field: String) -> Result<u64, ModelError> {
    q.gpu_milli().map_err(|r| ModelError::invalid(field, r))
}

impl QueuesSpec {
    /// Validate into a [`QueueTree`].
    ///
    /// # Errors
    /// Bad or duplicate names, an unknown parent, a cycle, a weight that is not positive, a
    /// malformed flavor name, a negative quota, a lending limit above the nominal quota, or a
    /// borrowing limit on a root.
    pub fn build(self) -> Result<QueueTree, ModelError> {
        let mut classes = BTreeMap::new();
        for (i, pc) in self
            .priority_classes
            .unwrap_or_else(default_priority_classes)
            .into_iter()
            .enumerate()
        {
            check_name(&format!("priority_classes[{i}].name"), &pc.name)?;
            if classes.insert(pc.name.clone(), pc).is_some() {
                return Err(ModelError::invalid(
                    format!("priority_classes[{i}].name"),
                    "duplicate priority class",
                ));
            }
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, q) in self.queues.iter().enumerate() {
            check_name(&format!("queues[{i}].name"), &q.name)?;
            if index.insert(&q.name, i).is_some() {
                return Err(ModelError::invalid(
                    format!("queues[{i}].name"),
                    format!("duplicate queue {:?}", q.name),
                ));
            }
        }
        // Parents first: order by depth, keeping the written order among equals.
        let mut depth = vec![0usize; self.queues.len()];
        for (i, q) in self.queues.iter().enumerate() {
            let mut d = 0;
            let mut cur = q.parent.as_deref();
            while let Some(p) = cur {
                let Some(&pi) = index.get(p) else {
                    return Err(ModelError::invalid(
                        format!("queues[{i}].parent"),
                        format!("unknown queue {p:?}"),
                    ));
                };
                d += 1;
                if d > self.queues.len() {
                    return Err(ModelError::invalid(
                        format!("queues[{i}].parent"),
                        "the parents form a cycle",
                    ));
                }
                cur = self.queues[pi].parent.as_deref();
            }
            depth[i] = d;
        }
        let mut order: Vec<usize> = (0..self.queues.len()).collect();
        order.sort_by_key(|&i| (depth[i], i));
        let mut new_index = vec![0usize; self.queues.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut queues: Vec<QueueDef> = Vec::with_capacity(order.len());
        for &old in &order {
            let q = &self.queues[old];
            let field = format!("queues[{old}]");
            if !(q.weight.is_finite() && q.weight > 0.0) {
                return Err(ModelError::invalid(
                    format!("{field}.weight"),
                    format!("must be a positive number, got {}", q.weight),
                ));
            }
            let parent = q.parent.as_deref().map(|p| new_index[index[p]]);
            let mut quotas = BTreeMap::new();
            for (flavor, qs) in &q.quotas {
                let ff = format!("{field}.quotas.{flavor}");
                check_flavor(&ff, flavor)?;
                let nominal = quota_amount(&qs.nominal, format!("{ff}.nominal"))?;
                let borrowing_limit = qs
                    .borrowing_limit
                    .as_ref()
                    .map(|b| quota_amount(b, format!("{ff}.borrowing_limit")))
                    .transpose()?;
                let lending_limit = qs
                    .lending_limit
                    .as_ref()
                    .map(|l| quota_amount(l, format!("{ff}.lending_limit")))
                    .transpose()?;
                if parent.is_none() && borrowing_limit.is_some() {
                    return Err(ModelError::invalid(
                        format!("{ff}.borrowing_limit"),
                        "a root has no cohort to borrow from",
                    ));
                }
                if let Some(l) = lending_limit {
                    if l > nominal {
                        return Err(ModelError::invalid(
                            format!("{ff}.lending_limit"),
                            format!(
                                "{} is more than the nominal quota {}",
                                l as f64 / 1000.0,
                                nominal as f64 / 1000.0
                            ),
                        ));
                    }
                }
                quotas.insert(
                    flavor.clone(),
                    Quota {
                        nominal,
                        borrowing_limit,
                        lending_limit,
                    },
                );
            }
            // Parents come first, so the parent's resolved value is known.
            let allow_unlisted = match q.unlisted_flavors {
                Some(u) => u == UnlistedFlavors::Allow,
                None => parent.is_some_and(|p| queues[p].allow_unlisted),
            };
            queues.push(QueueDef {
                name: q.name.clone(),
                parent,
                children: Vec::new(),
                weight: q.weight,
                quotas,
                allow_unlisted,
            });
        }
        for i in 0..queues.len() {
            if let Some(p) = queues[i].parent {
                queues[p].children.push(i);
            }
        }
        Ok(QueueTree {
            queues,
            priority_classes: classes,
        })
    }
}

/// A flavor is a GPU model (`h100-80gb`) or a model's MIG profile (`h100-80gb/1g.10gb`).
pub fn check_flavor(field: &str, flavor: &str) -> Result<(), ModelError> {
    let mut parts = flavor.split('/');
    let model = parts.next().unwrap_or_default();
    let profile = parts.next();
    if parts.next().is_some() || model.is_empty() || profile == Some("") {
        return Err(ModelError::invalid(
            field,
            format!("{flavor:?} is not a flavor; write a model (h100-80gb) or model/profile (h100-80gb/1g.10gb)"),
        ));
    }
    if model != crate::cluster::normalize_model(model) {
        return Err(ModelError::invalid(
            field,
            format!("flavor {flavor:?} must be lower case without spaces"),
        ));
    }
    Ok(())
}

impl QueueTree {
    /// Find a queue by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.queues.iter().position(|q| q.name == name)
    }

    /// A single flat queue with no quota limits worth the name: for tools that ignore quota.
    pub fn unlimited(name: &str, flavors: impl IntoIterator<Item = String>) -> QueueTree {
        let quotas = flavors
            .into_iter()
            .map(|f| {
                (
                    f,
                    Quota {
                        nominal: u64::MAX / 4,
                        borrowing_limit: None,
                        lending_limit: None,
                    },
                )
            })
            .collect();
        QueueTree {
            queues: vec![QueueDef {
                name: name.to_string(),
                parent: None,
                children: vec![],
                weight: 1.0,
                quotas,
                allow_unlisted: true,
            }],
            priority_classes: default_priority_classes()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::from_yaml;

    const TWO_TEAMS: &str = r#"
queues:
  - name: team-a
    parent: research
    weight: 2
    quotas:
      h100-80gb: {nominal: 16, borrowing_limit: 8, lending_limit: 4}
  - name: research
  - name: team-b
    parent: research
    quotas:
      h100-80gb: {nominal: 16}
      h100-80gb/1g.10gb: {nominal: 14}
"#;

    #[test]
    fn tree_orders_parents_first() {
        let t = from_yaml::<QueuesSpec>(TWO_TEAMS, "q")
            .expect("parse")
            .build()
            .expect("valid");
        assert_eq!(t.queues[0].name, "research");
        assert_eq!(t.queues[0].children, vec![1, 2]);
        let a = &t.queues[t.find("team-a").expect("a")];
        assert!(a.is_leaf());
        assert_eq!(a.weight, 2.0);
        assert_eq!(
            a.quotas["h100-80gb"],
            Quota {
                nominal: 16_000,
                borrowing_limit: Some(8_000),
                lending_limit: Some(4_000)
            }
        );
        assert_eq!(t.priority_classes["inference"].value, 1000);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                TWO_TEAMS.replace("parent: research\n    weight: 2", "parent: nowhere"),
                "queues[0].parent",
            ),
            (
                TWO_TEAMS.replace("weight: 2", "weight: 0"),
                "queues[0].weight",
            ),
            (
                TWO_TEAMS.replace("lending_limit: 4", "lending_limit: 40"),
                "queues[0].quotas.h100-80gb.lending_limit",
            ),
            (
                TWO_TEAMS.replace("h100-80gb/1g.10gb", "h100-80gb/"),
                "queues[2].quotas.h100-80gb/",
            ),
            (
                TWO_TEAMS.replace("name: team-b", "name: team-a"),
                "queues[2].name",
            ),
            (
                TWO_TEAMS.replace("name: research", "name: research\n    parent: team-a"),
                "queues[0].parent",
            ),
        ];
        for (yaml, field) in cases {
            let err = from_yaml::<QueuesSpec>(&yaml, "q")
                .expect("parse")
                .build()
                .expect_err(field);
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("n", "team-a.v2_x").is_ok());
        assert!(check_name("n", "").is_err());
        assert!(check_name("n", "a b").is_err());
        // A name becomes a directory of task output: never one that climbs out.
        for path in [".", ".."] {
            let err = check_name("name", path).expect_err(path);
            assert!(err.to_string().contains("would be a path"), "{err}");
        }
        assert!(check_name("n", "..x").is_ok());
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let err = check_name("jobs[0].name", &long).expect_err("long");
        assert!(err.to_string().contains("254 characters"), "{err}");
    }
}
