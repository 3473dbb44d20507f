//! Where a task may run: node selectors, required node affinity, taints and tolerations, with
//! Kubernetes' semantics, so the same words mean the same thing in every driver.
//!
//! - A **node selector** is a map of labels a node must carry with exactly these values.
//! - **Required node affinity** is a list of terms, ORed; each term is a list of expressions,
//!   ANDed. Operators: `In` and `NotIn` (a list of values; `NotIn` also matches a node without
//!   the label), `Exists` and `DoesNotExist` (no values), `Gt` and `Lt` (one integer value,
//!   compared with the label's integer value; a missing or non-integer label does not match).
//!   An expression on the key `metadata.name` matches the node's name.
//! - A **taint** on a node (`key=value:Effect`) keeps away every task that does not tolerate it
//!   when its effect is `NoSchedule` or `NoExecute`; `PreferNoSchedule` is a preference and never
//!   excludes.
//! - A **toleration** matches a taint when the effects agree (or the toleration names none) and,
//!   with `Equal`, key and value are equal; with `Exists`, the key is equal or the toleration
//!   names no key (then it tolerates every taint).
//!
//! [`NodeConstraints::admits`] answers for one node, with the first reason it is excluded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// An affinity expression's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SelectorOp {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's integer value is greater than the one value.
    Gt,
    /// The label's integer value is less than the one value.
    Lt,
}

/// One expression of an affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    /// Label key (`metadata.name` for the node's name).
    pub key: String,
    /// Operator.
    pub operator: SelectorOp,
    /// Values, as the operator wants them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One affinity term: every expression must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorTerm {
    /// Expressions, ANDed.
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// What a taint does to tasks that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New tasks are kept away.
    NoSchedule,
    /// A preference only: never excludes.
    PreferNoSchedule,
    /// New tasks are kept away (running ones are the driver's business).
    NoExecute,
}

impl TaintEffect {
    fn excludes(self) -> bool {
        !matches!(self, TaintEffect::PreferNoSchedule)
    }

    fn name(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A taint on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    #[serde(default)]
    pub value: String,
    /// Effect.
    pub effect: TaintEffect,
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect.name())
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect.name())
        }
    }
}

impl std::str::FromStr for Taint {
    type Err = String;

    /// `key=value:Effect` or `key:Effect`.
    fn from_str(s: &str) -> Result<Taint, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not a taint; write key=value:NoSchedule"))?;
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            e => {
                return Err(format!(
                    "{e:?} is not a taint effect (NoSchedule, PreferNoSchedule, NoExecute)"
                ))
            }
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(format!("{s:?}: a taint needs a key"));
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
        })
    }
}

/// How a toleration matches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum TolerationOp {
    /// Key and value equal.
    #[default]
    Equal,
    /// The key is present (any value); no key tolerates everything.
    Exists,
}

/// A toleration of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// Key; absent (with `Exists`) tolerates every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    #[serde(default)]
    pub operator: TolerationOp,
    /// Value for `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Effect; absent tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration matches `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOp::Exists => self.key.as_deref().is_none_or(|k| k == taint.key),
            TolerationOp::Equal => {
                self.key.as_deref() == Some(taint.key.as_str())
                    && self.value.as_deref().unwrap_or("") == taint.value
            }
        }
    }
}

/// Where a task may run. Empty: any node without an excluding taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct NodeConstraints {
    /// Labels a node must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: terms ORed, each term's expressions ANDed; empty = any node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<SelectorTerm>,
    /// Taints the task tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Why a node does not admit a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Exclusion {
    /// A selector label is missing or has another value.
    Selector {
        /// The label key.
        key: String,
        /// The value asked for.
        value: String,
    },
    /// No affinity term holds.
    Affinity,
    /// A taint the task does not tolerate.
    Taint(Taint),
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Selector { key, value } => write!(f, "node_selector {key}={value}"),
            Exclusion::Affinity => write!(f, "node affinity"),
            Exclusion::Taint(t) => write!(f, "taint {t}"),
        }
    }
}

impl SelectorRequirement {
    fn holds(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let value = if self.key == "metadata.name" {
            Some(name)
        } else {
            labels.get(&self.key).map(String::as_str)
        };
        let int = |v: &str| v.trim().parse::<i64>().ok();
        match self.operator {
            SelectorOp::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOp::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            SelectorOp::Exists => value.is_some(),
            SelectorOp::DoesNotExist => value.is_none(),
            SelectorOp::Gt | SelectorOp::Lt => {
                let (Some(have), Some(want)) = (
                    value.and_then(int),
                    self.values.first().and_then(|v| int(v)),
                ) else {
                    return false;
                };
                if self.operator == SelectorOp::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }

    fn validate(&self, field: &str) -> Result<(), ModelError> {
        if self.key.is_empty() {
            return Err(ModelError::invalid(
                format!("{field}.key"),
                "must not be empty",
            ));
        }
        match self.operator {
            SelectorOp::In | SelectorOp::NotIn if self.values.is_empty() => {
                Err(ModelError::invalid(
                    format!("{field}.values"),
                    "In and NotIn need at least one value",
                ))
            }
            SelectorOp::Exists | SelectorOp::DoesNotExist if !self.values.is_empty() => {
                Err(ModelError::invalid(
                    format!("{field}.values"),
                    "Exists and DoesNotExist take no values",
                ))
            }
            SelectorOp::Gt | SelectorOp::Lt => {
                if self.values.len() != 1 || self.values[0].trim().parse::<i64>().is_err() {
                    Err(ModelError::invalid(
                        format!("{field}.values"),
                        format!(
                            "Gt and Lt need exactly one integer value, got {:?}",
                            self.values
                        ),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

impl NodeConstraints {
    /// Whether there is anything to check besides taints.
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty()
            && self.node_affinity.is_empty()
            && self.tolerations.is_empty()
    }

    /// Whether a node (its name, labels and taints) admits the task; the first exclusion if not:
    /// an untolerated taint, then the selector, then affinity.
    pub fn admits(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        taints: &[Taint],
    ) -> Result<(), Exclusion> {
        if let Some(t) = taints
            .iter()
            .find(|t| t.effect.excludes() && !self.tolerations.iter().any(|tol| tol.tolerates(t)))
        {
            return Err(Exclusion::Taint(t.clone()));
        }
        if let Some((k, v)) = self
            .node_selector
            .iter()
            .find(|(k, v)| labels.get(*k) != Some(*v))
        {
            return Err(Exclusion::Selector {
                key: k.clone(),
                value: v.clone(),
            });
        }
        if !self.node_affinity.is_empty()
            && !self
                .node_affinity
                .iter()
                .any(|term| term.match_expressions.iter().all(|e| e.holds(name, labels)))
        {
            return Err(Exclusion::Affinity);
        }
        Ok(())
    }

    /// Check the written constraints; fields are relative (`node_affinity[0].match_expressions[1].values`).
    ///
    /// # Errors
    /// An empty key, values the operator does not take, a toleration with a value and `Exists`,
    /// or `Equal` without a key.
    pub fn validate(&self) -> Result<(), ModelError> {
        for k in self.node_selector.keys() {
            if k.is_empty() {
                return Err(ModelError::invalid(
                    "node_selector",
                    "a label key must not be empty",
                ));
            }
        }
        for (i, term) in self.node_affinity.iter().enumerate() {
            if term.match_expressions.is_empty() {
                return Err(ModelError::invalid(
                    format!("node_affinity[{i}].match_expressions"),
                    "a term needs at least one expression",
                ));
            }
            for (j, e) in term.match_expressions.iter().enumerate() {
                e.validate(&format!("node_affinity[{i}].match_expressions[{j}]"))?;
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            match t.operator {
                TolerationOp::Exists if t.value.as_deref().is_some_and(|v| !v.is_empty()) => {
                    return Err(ModelError::invalid(
                        format!("tolerations[{i}].value"),
                        "Exists takes no value",
                    ))
                }
                TolerationOp::Equal if t.key.as_deref().is_none_or(str::is_empty) => {
                    return Err(ModelError::invalid(
                        format!("tolerations[{i}].key"),
                        "Equal needs a key (use operator: Exists to tolerate every taint)",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: SelectorOp, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn affinity(terms: Vec<Vec<SelectorRequirement>>) -> NodeConstraints {
        NodeConstraints {
            node_affinity: terms
                .into_iter()
                .map(|e| SelectorTerm {
                    match_expressions: e,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_affinity_operator() {
        use SelectorOp::*;
        let node = labels(&[("zone", "a"), ("gpus", "8"), ("disk", "ssd")]);
        // (expression, matches the node)
        let cases = [
            (expr("zone", In, &["a", "b"]), true),
            (expr("zone", In, &["b"]), false),
            (expr("missing", In, &["a"]), false),
            (expr("zone", NotIn, &["b"]), true),
            (expr("zone", NotIn, &["a"]), false),
            (expr("missing", NotIn, &["a"]), true),
            (expr("disk", Exists, &[]), true),
            (expr("missing", Exists, &[]), false),
            (expr("missing", DoesNotExist, &[]), true),
            (expr("disk", DoesNotExist, &[]), false),
            (expr("gpus", Gt, &["4"]), true),
            (expr("gpus", Gt, &["8"]), false),
            (expr("gpus", Lt, &["16"]), true),
            (expr("gpus", Lt, &["8"]), false),
            (expr("zone", Gt, &["1"]), false), // not an integer: no match
            (expr("missing", Lt, &["1"]), false),
            (expr("metadata.name", In, &["n1"]), true),
            (expr("metadata.name", NotIn, &["n1"]), false),
        ];
        for (e, want) in cases {
            let c = affinity(vec![vec![e.clone()]]);
            assert_eq!(c.admits("n1", &node, &[]).is_ok(), want, "{e:?}");
        }
    }

    #[test]
    fn terms_are_ored_and_expressions_anded() {
        use SelectorOp::*;
        let node = labels(&[("zone", "a"), ("disk", "hdd")]);
        // (zone=a AND disk=ssd) OR (zone=b): neither term holds.
        let c = affinity(vec![
            vec![expr("zone", In, &["a"]), expr("disk", In, &["ssd"])],
            vec![expr("zone", In, &["b"])],
        ]);
        assert_eq!(c.admits("n", &node, &[]), Err(Exclusion::Affinity));
        // (zone=a AND disk=hdd) OR (zone=b): the first term holds.
        let c = affinity(vec![
            vec![expr("zone", In, &["a"]), expr("disk", In, &["hdd"])],
            vec![expr("zone", In, &["b"])],
        ]);
        assert!(c.admits("n", &node, &[]).is_ok());
    }

    #[test]
    fn selectors_need_the_exact_value() {
        let c = NodeConstraints {
            node_selector: labels(&[("disktype", "ssd")]),
            ..Default::default()
        };
        assert!(c.admits("n", &labels(&[("disktype", "ssd")]), &[]).is_ok());
        let miss = Err(Exclusion::Selector {
            key: "disktype".into(),
            value: "ssd".into(),
        });
        assert_eq!(c.admits("n", &labels(&[("disktype", "hdd")]), &[]), miss);
        assert_eq!(c.admits("n", &labels(&[]), &[]), miss);
    }

    #[test]
    fn taint_effects_and_toleration_forms() {
        let t = |s: &str| s.parse::<Taint>().expect("taint");
        let tol = |key: Option<&str>,
                   op: TolerationOp,
                   value: Option<&str>,
                   effect: Option<TaintEffect>| Toleration {
            key: key.map(Into::into),
            operator: op,
            value: value.map(Into::into),
            effect,
        };
        use TaintEffect::*;
        use TolerationOp::*;
        let none = NodeConstraints::default();
        let no = labels(&[]);
        // Effects: NoSchedule and NoExecute exclude, PreferNoSchedule does not.
        assert!(none.admits("n", &no, &[t("a=b:NoSchedule")]).is_err());
        assert!(none.admits("n", &no, &[t("a=b:NoExecute")]).is_err());
        assert!(none.admits("n", &no, &[t("a=b:PreferNoSchedule")]).is_ok());
        // (toleration, taint, tolerated)
        let cases = [
            (
                tol(Some("a"), Equal, Some("b"), None),
                "a=b:NoSchedule",
                true,
            ),
            (
                tol(Some("a"), Equal, Some("c"), None),
                "a=b:NoSchedule",
                false,
            ),
            (tol(Some("a"), Equal, None, None), "a:NoSchedule", true),
            (tol(Some("a"), Equal, None, None), "a=b:NoSchedule", false),
            (
                tol(Some("a"), Exists, None, None),
                "a=anything:NoExecute",
                true,
            ),
            (tol(Some("x"), Exists, None, None), "a=b:NoSchedule", false),
            (tol(None, Exists, None, None), "a=b:NoExecute", true),
            (
                tol(Some("a"), Equal, Some("b"), Some(NoSchedule)),
                "a=b:NoSchedule",
                true,
            ),
            (
                tol(Some("a"), Equal, Some("b"), Some(NoSchedule)),
                "a=b:NoExecute",
                false,
            ),
            (
                tol(None, Exists, None, Some(NoExecute)),
                "a=b:NoSchedule",
                false,
            ),
        ];
        for (tl, taint, want) in cases {
            let c = NodeConstraints {
                tolerations: vec![tl.clone()],
                ..Default::default()
            };
            assert_eq!(
                c.admits("n", &no, &[t(taint)]).is_ok(),
                want,
                "{tl:?} vs {taint}"
            );
        }
        assert_eq!(
            none.admits("n", &no, &[t("qa-dedicated=yes:NoSchedule")]),
            Err(Exclusion::Taint(t("qa-dedicated=yes:NoSchedule")))
        );
        assert_eq!(
            t("qa-dedicated=yes:NoSchedule").to_string(),
            "qa-dedicated=yes:NoSchedule"
        );
        assert_eq!(t("gpu:NoExecute").to_string(), "gpu:NoExecute");
        assert!("a=b".parse::<Taint>().unwrap_err().contains("not a taint"));
        assert!("a=b:Sometimes"
            .parse::<Taint>()
            .unwrap_err()
            .contains("effect"));
    }

    #[test]
    fn bad_constraints_name_the_field() {
        use SelectorOp::*;
        let cases = [
            (
                affinity(vec![vec![expr("k", In, &[])]]),
                "node_affinity[0].match_expressions[0].values",
            ),
            (
                affinity(vec![vec![expr("k", Exists, &["v"])]]),
                "node_affinity[0].match_expressions[0].values",
            ),
            (
                affinity(vec![vec![expr("k", Gt, &["x"])]]),
                "node_affinity[0].match_expressions[0].values",
            ),
            (
                affinity(vec![vec![expr("", Exists, &[])]]),
                "node_affinity[0].match_expressions[0].key",
            ),
            (affinity(vec![vec![]]), "node_affinity[0].match_expressions"),
            (
                NodeConstraints {
                    tolerations: vec![Toleration {
                        key: Some("a".into()),
                        operator: TolerationOp::Exists,
                        value: Some("b".into()),
                        effect: None,
                    }],
                    ..Default::default()
                },
                "tolerations[0].value",
            ),
            (
                NodeConstraints {
                    tolerations: vec![Toleration::default()],
                    ..Default::default()
                },
                "tolerations[0].key",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate().expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }
}
