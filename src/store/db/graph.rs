//! The whole reference graph in memory, for the garbage collector: every valid path with
//! its NAR size, references, deriver and recorded derivation outputs, read with one query
//! per table; and the deletion of a set of paths in one durable transaction.
//!
//! [`Db::collect`] reads the graph and deletes what its chooser returns inside the same
//! `IMMEDIATE` transaction, so no other writer can register a referrer of a chosen path in
//! between; the commit is synced (`synchronous = FULL`) before it returns, because the
//! caller removes the files next and a deletion rolled back by a power loss would leave
//! registered paths without contents. See store-format.md, "Garbage collection".

use std::collections::HashMap;

use rusqlite::{Connection, TransactionBehavior};

use super::{parse_path, Db, DbError};
use crate::format::store_path::StorePath;

/// A dense index into [`PathGraph::nodes`].
pub type NodeIdx = u32;

/// One valid path.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The row id in `valid_paths`.
    pub id: i64,
    pub path: StorePath,
    pub nar_size: u64,
    /// Valid references, without the path itself.
    pub references: Vec<NodeIdx>,
    /// The deriver, when it is recorded and valid.
    pub deriver: Option<NodeIdx>,
    /// The recorded outputs of this derivation that are valid.
    pub outputs: Vec<NodeIdx>,
}

/// Every valid path, as read in one transaction.
#[derive(Debug, Default)]
pub struct PathGraph {
    pub nodes: Vec<GraphNode>,
    by_path: HashMap<StorePath, NodeIdx>,
}

impl PathGraph {
    /// The node of a valid path.
    pub fn index(&self, path: &StorePath) -> Option<NodeIdx> {
        self.by_path.get(path).copied()
    }

    pub fn node(&self, i: NodeIdx) -> &GraphNode {
        &self.nodes[i as usize]
    }

    /// For each node, the nodes that refer to it (not itself).
    pub fn referrers(&self) -> Vec<Vec<NodeIdx>> {
        let mut out = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &r in &n.references {
                out[r as usize].push(i as NodeIdx);
            }
        }
        out
    }

    fn load(conn: &Connection) -> Result<PathGraph, DbError> {
        let mut g = PathGraph::default();
        let mut by_id: HashMap<i64, NodeIdx> = HashMap::new();
        let mut derivers: Vec<(NodeIdx, String)> = Vec::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT id, path, nar_size, deriver FROM valid_paths")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let text: String = r.get(1)?;
                let path = parse_path(&text, &text)?;
                let nar_size: i64 = r.get(2)?;
                let idx = g.nodes.len() as NodeIdx;
                if let Some(d) = r.get::<_, Option<String>>(3)? {
                    derivers.push((idx, d));
                }
                by_id.insert(id, idx);
                g.by_path.insert(path.clone(), idx);
                g.nodes.push(GraphNode {
                    id,
                    path,
                    nar_size: u64::try_from(nar_size).unwrap_or(0),
                    references: Vec::new(),
                    deriver: None,
                    outputs: Vec::new(),
                });
            }
        }
        let corrupt = |what: String| DbError::Corrupt {
            path: "refs".to_owned(),
            what,
        };
        {
            let mut stmt = conn.prepare_cached("SELECT referrer, reference FROM refs")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (a, b): (i64, i64) = (r.get(0)?, r.get(1)?);
                let (Some(&a), Some(&b)) = (by_id.get(&a), by_id.get(&b)) else {
                    return Err(corrupt(format!("reference {a} -> {b} to a missing row")));
                };
                if a != b {
                    g.nodes[a as usize].references.push(b);
                }
            }
        }
        for (idx, d) in derivers {
            if let Ok(p) = d.parse::<StorePath>() {
                g.nodes[idx as usize].deriver = g.by_path.get(&p).copied();
            }
        }
        {
            let mut stmt = conn.prepare_cached("SELECT drv, path FROM derivation_outputs")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let drv: i64 = r.get(0)?;
                let path: String = r.get(1)?;
                let Some(&drv) = by_id.get(&drv) else {
                    continue;
                };
                if let Some(out) = path.parse::<StorePath>().ok().and_then(|p| g.index(&p)) {
                    g.nodes[drv as usize].outputs.push(out);
                }
            }
        }
        Ok(g)
    }
}

impl Db {
    /// Reads the whole graph in one read transaction.
    pub fn load_graph(&mut self) -> Result<PathGraph, DbError> {
        let tx = self.conn.transaction()?;
        let g = PathGraph::load(&tx)?;
        tx.commit()?;
        Ok(g)
    }

    /// Reads the whole graph, lets `choose` pick paths to delete, and deletes them, all in
    /// one `IMMEDIATE` transaction, synced to disk before this returns. A chosen path that
    /// a path not chosen still refers to makes the transaction fail (foreign key), and
    /// nothing is deleted. Returns the graph as read and the chosen nodes.
    pub fn collect<T, E: From<DbError>>(
        &mut self,
        choose: impl FnOnce(&PathGraph) -> Result<(Vec<NodeIdx>, T), E>,
    ) -> Result<(PathGraph, Vec<NodeIdx>, T), E> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(DbError::from)?;
        let result = self.collect_inner(choose);
        let restored = self.conn.pragma_update(None, "synchronous", "NORMAL");
        let out = result?;
        restored.map_err(DbError::from)?;
        Ok(out)
    }

    fn collect_inner<T, E: From<DbError>>(
        &mut self,
        choose: impl FnOnce(&PathGraph) -> Result<(Vec<NodeIdx>, T), E>,
    ) -> Result<(PathGraph, Vec<NodeIdx>, T), E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(DbError::from)?;
        let graph = PathGraph::load(&tx)?;
        let (chosen, extra) = choose(&graph)?;
        if chosen.is_empty() {
            return Ok((graph, chosen, extra));
        }
        {
            let mut del_refs = tx
                .prepare_cached("DELETE FROM refs WHERE referrer = ?1")
                .map_err(DbError::from)?;
            for &i in &chosen {
                del_refs
                    .execute([graph.node(i).id])
                    .map_err(DbError::from)?;
            }
            let mut del_path = tx
                .prepare_cached("DELETE FROM valid_paths WHERE id = ?1")
                .map_err(DbError::from)?;
            for &i in &chosen {
                del_path
                    .execute([graph.node(i).id])
                    .map_err(DbError::from)?;
            }
        }
        tx.commit().map_err(DbError::from)?;
        Ok((graph, chosen, extra))
    }
}
