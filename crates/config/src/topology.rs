//! The topology as a graph: cycles, entry points, depth and fan-out.

use std::collections::BTreeMap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::model::NodeSpec;

fn graph(nodes: &BTreeMap<String, NodeSpec>) -> (DiGraph<&str, ()>, BTreeMap<&str, NodeIndex>) {
    let mut g = DiGraph::new();
    let index: BTreeMap<&str, NodeIndex> = nodes
        .keys()
        .map(|n| (n.as_str(), g.add_node(n.as_str())))
        .collect();
    for (name, spec) in nodes {
        for b in &spec.backends {
            if let (Some(&from), Some(&to)) = (index.get(name.as_str()), index.get(b.as_str())) {
                g.add_edge(from, to, ());
            }
        }
    }
    (g, index)
}

/// A cycle as node names, first repeated at the end (`["0", "1", "0"]`), if there is one.
pub fn find_cycle(nodes: &BTreeMap<String, NodeSpec>) -> Option<Vec<String>> {
    let (g, _) = graph(nodes);
    for scc in tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk inside the component until a node repeats: that stretch is a cycle.
        let start = *scc
            .iter()
            .min_by_key(|n| g[**n])
            .expect("non-empty component");
        let mut path = vec![start];
        loop {
            let last = *path.last().expect("non-empty");
            let next = g
                .neighbors(last)
                .filter(|n| scc.contains(n))
                .min_by_key(|n| g[*n])
                .expect("in a cycle");
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cycle: Vec<String> =
                    path[pos..].iter().map(|&i| g[i].to_string()).collect();
                cycle.push(g[next].to_string());
                return Some(cycle);
            }
            path.push(next);
        }
    }
    None
}

/// Facts about a (cycle-free) topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Nodes no other node calls: where load tests usually aim.
    pub entry_points: Vec<String>,
    /// Edges (calls from a node to a backend).
    pub edges: usize,
    /// The longest chain of calls, in edges.
    pub depth: usize,
    /// For every node, the backend requests one request to it causes in the whole tree.
    pub backend_requests: BTreeMap<String, u64>,
}

/// Describes a topology; call only on a topology without cycles.
pub fn shape(nodes: &BTreeMap<String, NodeSpec>) -> Shape {
    let called: std::collections::BTreeSet<&str> = nodes
        .values()
        .flat_map(|n| n.backends.iter().map(String::as_str))
        .collect();
    let entry_points = nodes
        .keys()
        .filter(|n| !called.contains(n.as_str()))
        .cloned()
        .collect();
    let edges = nodes.values().map(|n| n.backends.len()).sum();
    let mut depth_memo = BTreeMap::new();
    let mut requests_memo = BTreeMap::new();
    let depth = nodes
        .keys()
        .map(|n| depth_of(n, nodes, &mut depth_memo))
        .max()
        .unwrap_or(0);
    let backend_requests = nodes
        .keys()
        .map(|n| (n.clone(), requests_of(n, nodes, &mut requests_memo)))
        .collect();
    Shape {
        entry_points,
        edges,
        depth,
        backend_requests,
    }
}

fn depth_of(
    node: &str,
    nodes: &BTreeMap<String, NodeSpec>,
    memo: &mut BTreeMap<String, usize>,
) -> usize {
    if let Some(&d) = memo.get(node) {
        return d;
    }
    let d = nodes[node]
        .backends
        .iter()
        .map(|b| 1 + depth_of(b, nodes, memo))
        .max()
        .unwrap_or(0);
    memo.insert(node.to_string(), d);
    d
}

fn requests_of(
    node: &str,
    nodes: &BTreeMap<String, NodeSpec>,
    memo: &mut BTreeMap<String, u64>,
) -> u64 {
    if let Some(&n) = memo.get(node) {
        return n;
    }
    // Saturating: a DAG of a few thousand nodes can cause more requests than a u64
    // holds (each level multiplies); the figure then reads as u64::MAX, not wrapped.
    let n = nodes[node]
        .backends
        .iter()
        .map(|b| requests_of(b, nodes, memo).saturating_add(1))
        .fold(0u64, u64::saturating_add);
    memo.insert(node.to_string(), n);
    n
}

/// Nodes in an order where every node comes after all its backends (leaves first): the
/// order to start them in, so each node knows its backends' addresses.
pub fn leaves_first(nodes: &BTreeMap<String, NodeSpec>) -> Vec<String> {
    let (g, _) = graph(nodes);
    match petgraph::algo::toposort(&g, None) {
        Ok(order) => order.into_iter().rev().map(|i| g[i].to_string()).collect(),
        Err(_) => nodes.keys().cloned().collect(),
    }
}

/// Above this many backend requests per request, a topology is warned about.
pub const AMPLIFICATION_WARNING: u64 = 1_000;

/// The nodes where one request causes too many backend requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Amplification {
    /// More than the limit: a request would never finish, and the nodes would be flooded.
    pub refused: Vec<String>,
    /// More than [`AMPLIFICATION_WARNING`], within the limit.
    pub warnings: Vec<String>,
}

/// Every node where one request causes more than `limit` backend requests (refused), or
/// more than [`AMPLIFICATION_WARNING`] (warned of), each named with its count.
pub fn amplification(nodes: &BTreeMap<String, NodeSpec>, limit: u64) -> Amplification {
    let mut out = Amplification::default();
    for (node, &n) in &shape(nodes).backend_requests {
        let count = if n == u64::MAX {
            "more than 18446744073709551614".to_string()
        } else {
            n.to_string()
        };
        if n > limit {
            out.refused.push(format!(
                "backends_map: one request to node {node:?} causes {count} backend requests, more than --max-amplification {limit}"
            ));
        } else if n > AMPLIFICATION_WARNING {
            out.warnings.push(format!(
                "one request to node {node:?} causes {count} backend requests"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(edges: &[(&str, &[&str])]) -> BTreeMap<String, NodeSpec> {
        let mut nodes = BTreeMap::new();
        for (n, bs) in edges {
            for b in *bs {
                nodes.entry(b.to_string()).or_insert(NodeSpec {
                    backends: vec![],
                    replicas: 1,
                    behaviour: Default::default(),
                    host: None,
                });
            }
            nodes.insert(
                n.to_string(),
                NodeSpec {
                    backends: bs.iter().map(|s| s.to_string()).collect(),
                    replicas: 1,
                    behaviour: Default::default(),
                    host: None,
                },
            );
        }
        nodes
    }

    #[test]
    fn shape_of_a_tree() {
        let t = topo(&[("0", &["1", "2"]), ("1", &["3"]), ("2", &["3"])]);
        let s = shape(&t);
        assert_eq!(s.entry_points, ["0"]);
        assert_eq!((s.edges, s.depth), (4, 2));
        assert_eq!(
            s.backend_requests["0"], 4,
            "3 is called twice, once through each of 1 and 2"
        );
        let order = leaves_first(&t);
        assert!(order.iter().position(|n| n == "3") < order.iter().position(|n| n == "1"));
        assert_eq!(order.last().map(String::as_str), Some("0"));
        assert_eq!(find_cycle(&t), None);
    }

    #[test]
    fn cycles_are_named() {
        let t = topo(&[("0", &["1"]), ("1", &["2"]), ("2", &["0"])]);
        let c = find_cycle(&t).expect("a cycle");
        assert_eq!(c.len(), 4);
        assert_eq!(c.first(), c.last());
        assert_eq!(
            find_cycle(&topo(&[("a", &["a"])])),
            Some(vec!["a".to_string(), "a".to_string()])
        );
    }
}
