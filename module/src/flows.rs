//! Flows: tasks that wait in their queue for other tasks of the same queue (a chain's next step,
//! a group's callback) until the broker releases them.
//!
//! A waiting task is not fetchable and has no timer. It names the parents it still waits for;
//! the ACK of its last parent moves it into the queue (ready, or delayed until its `run_at`) in
//! the same command, so no crash can come between the parent's removal and the release. A parent
//! that leaves the queue any other way takes its dependents with it: dead-lettered (they are
//! dead-lettered too, with a reason naming the parent), deleted or cleared (they are removed).
//! The queue-level operations are in `queue.rs` (they move tasks in and out of the slab); this
//! file keeps the store: waiting tasks by id and, per parent, the tasks that wait for it.

use crate::codec::{CResult, R, W};
use crate::queue::{HashMap, Id};
use crate::tasks::alloc_size;
use std::collections::BTreeMap;

/// Most tasks one flow (one `VT.FLOW`) adds: memory per command is bounded.
pub use vtasks_protocol::limits::MAX_FLOW_TASKS;

/// One task of a flow as `VT.FLOW` gives it (values resolved: max attempts set, run time
/// absolute). `parents` name earlier tasks of the same flow.
#[derive(Clone, Debug)]
pub struct FlowNode {
    pub id: Id,
    pub priority: i32,
    pub max_attempts: u32,
    pub run_at: i64,
    pub parents: Vec<Id>,
    pub payload: Vec<u8>,
}

/// A task waiting for its parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub enqueued_at: i64,
    /// Earliest run time once released (the flow's enqueue time when it gave none).
    pub run_at: i64,
    /// The parents, in the order the flow named them, and which of them were acked: an ack
    /// marks its place in O(1) (the children index holds it), so a group callback's N acks cost
    /// O(N), not O(N²).
    parents: Vec<Id>,
    acked: Vec<bool>,
    /// Parents not acked yet (never 0 while waiting).
    left: u32,
}

impl Waiting {
    pub fn new(
        payload: Vec<u8>,
        priority: i32,
        max_attempts: u32,
        enqueued_at: i64,
        run_at: i64,
        parents: Vec<Id>,
    ) -> Waiting {
        let n = parents.len();
        Waiting { payload, priority, max_attempts, enqueued_at, run_at, acked: vec![false; n], left: n as u32, parents }
    }

    /// The parents not acked yet, in flow order.
    pub fn pending(&self) -> impl Iterator<Item = &Id> {
        self.parents.iter().zip(&self.acked).filter(|(_, a)| !**a).map(|(p, _)| p)
    }
}

#[derive(Default)]
pub struct Flows {
    /// Waiting tasks by id (ordered: records and releases are deterministic).
    waiting: BTreeMap<Id, Waiting>,
    /// Parent id → (id of a waiting task that still waits for it, the parent's place in that
    /// task's parents).
    children: HashMap<Id, Vec<(Id, u32)>>,
}

impl Flows {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.waiting.contains_key(id)
    }

    pub fn get(&self, id: &[u8]) -> Option<&Waiting> {
        self.waiting.get(id)
    }

    /// Whether some waiting task waits for `parent` (O(1): checked on every ack).
    pub fn has_children(&self, parent: &[u8]) -> bool {
        !self.children.is_empty() && self.children.contains_key(parent)
    }

    /// Waiting tasks in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Waiting)> {
        self.waiting.iter()
    }

    /// Adds a waiting task (the caller checked that the id is free and `pending` is not empty).
    pub fn insert(&mut self, id: Id, w: Waiting) {
        for (i, p) in w.parents.iter().enumerate() {
            if !w.acked[i] {
                self.children.entry(p.clone()).or_default().push((id.clone(), i as u32));
            }
        }
        self.waiting.insert(id, w);
    }

    /// `parent` was acked: it leaves the pending list of each of its children. Returns the
    /// children that wait for nothing more, removed from the store, in id order.
    pub fn parent_done(&mut self, parent: &[u8]) -> Vec<(Id, Waiting)> {
        let Some(mut kids) = self.children.remove(parent) else { return Vec::new() };
        kids.sort_unstable();
        let mut out = Vec::new();
        for (k, at) in kids {
            let Some(w) = self.waiting.get_mut(&k) else { continue };
            match w.acked.get_mut(at as usize) {
                Some(a) if !*a => *a = true,
                _ => continue,
            }
            w.left -= 1;
            if w.left == 0 {
                let w = self.waiting.remove(&k).expect("present");
                out.push((k, w));
            }
        }
        self.shrink();
        out
    }

    /// Removes the waiting tasks that wait for `parent`, and every task that waits for those,
    /// transitively; returns them in removal order (breadth first, id order within a level).
    pub fn remove_descendants(&mut self, parent: &[u8]) -> Vec<(Id, Waiting)> {
        let mut out = Vec::new();
        let mut next: Vec<Id> = match self.children.remove(parent) {
            Some(k) => k.into_iter().map(|(k, _)| k).collect(),
            None => return out,
        };
        while !next.is_empty() {
            next.sort_unstable();
            next.dedup();
            let mut level = Vec::new();
            for k in next {
                if let Some(w) = self.remove(&k) {
                    if let Some(kk) = self.children.remove(&k) {
                        level.extend(kk.into_iter().map(|(k, _)| k));
                    }
                    out.push((k, w));
                }
            }
            next = level;
        }
        self.shrink();
        out
    }

    /// Removes one waiting task and unlinks it from the parents it still waits for (its own
    /// children are left to the caller).
    pub fn remove(&mut self, id: &[u8]) -> Option<Waiting> {
        let w = self.waiting.remove(id)?;
        for p in w.pending() {
            if let Some(kids) = self.children.get_mut(p) {
                kids.retain(|(k, _)| k != id);
                if kids.is_empty() {
                    self.children.remove(p);
                }
            }
        }
        Some(w)
    }

    pub fn clear(&mut self) -> usize {
        let n = self.waiting.len();
        *self = Flows::default();
        n
    }

    fn shrink(&mut self) {
        if self.children.is_empty() && self.children.capacity() > 0 {
            self.children = HashMap::default();
        } else if self.children.len() * 4 < self.children.capacity() {
            self.children.shrink_to(self.children.len() * 2);
        }
    }

    // ---------- persistence ----------

    /// The 'W' record of a waiting task: its fields and the parents it still waits for (the
    /// acked ones are not kept).
    pub fn record(id: &[u8], w: &Waiting) -> Vec<u8> {
        let mut r = W::new(b'W');
        r.bytes(id)
            .bytes(&w.payload)
            .i64(w.priority as i64)
            .u64(w.max_attempts as u64)
            .i64(w.enqueued_at)
            .i64(w.run_at)
            .u64(w.left as u64);
        for p in w.pending() {
            r.bytes(p);
        }
        r.buf
    }

    /// Reads a 'W' record (after its kind byte) into (id, waiting), checking the ranges.
    pub fn read_record(r: &mut R) -> CResult<(Id, Waiting)> {
        let id = r.bytes()?;
        let payload = r.bytes()?;
        let priority = r.i64()?;
        let max_attempts = r.u64()?;
        let enqueued_at = r.i64()?;
        let run_at = r.i64()?;
        let n = r.u64()?;
        if !(-100..=100).contains(&priority)
            || max_attempts == 0
            || max_attempts > u32::MAX as u64
            || n == 0
            || n > MAX_FLOW_TASKS as u64
            || id.is_empty()
            || id.len() > crate::tasks::MAX_STORED_ID
        {
            return Err("waiting task field out of range");
        }
        let mut parents = Vec::with_capacity(n as usize);
        for _ in 0..n {
            parents.push(r.bytes()?);
        }
        r.done()?;
        let mut sorted: Vec<&Id> = parents.iter().collect();
        sorted.sort_unstable();
        if sorted.windows(2).any(|x| x[0] == x[1]) {
            return Err("waiting task names a parent twice");
        }
        Ok((id, Waiting::new(payload, priority as i32, max_attempts as u32, enqueued_at, run_at, parents)))
    }

    /// Bytes held (MEMORY USAGE).
    pub fn mem_usage(&self) -> usize {
        let mut n = 0;
        for (id, w) in &self.waiting {
            n += 80 + alloc_size(id.len()) + alloc_size(w.payload.len().max(1));
            n += alloc_size(w.parents.capacity() * 24) + alloc_size(w.acked.capacity().max(1));
            n += w.parents.iter().map(|p| alloc_size(p.len())).sum::<usize>();
        }
        for (p, kids) in &self.children {
            n += 48 + alloc_size(p.len()) + alloc_size(kids.capacity() * 32);
            n += kids.iter().map(|(k, _)| alloc_size(k.len())).sum::<usize>();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pending: &[&str]) -> Waiting {
        Waiting::new(b"p".to_vec(), 0, 3, 1, 1, pending.iter().map(|p| p.as_bytes().to_vec()).collect())
    }

    #[test]
    fn release_after_the_last_parent_and_cascade_removal() {
        let mut f = Flows::default();
        f.insert(b"cb".to_vec(), w(&["a", "b"]));
        f.insert(b"next".to_vec(), w(&["cb"]));
        assert!(f.parent_done(b"a").is_empty());
        let got = f.parent_done(b"b");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"cb".to_vec());
        assert!(f.has_children(b"cb"));
        let gone = f.remove_descendants(b"cb");
        assert_eq!(gone.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), vec![b"next".to_vec()]);
        assert!(f.is_empty() && f.children.is_empty());
    }

    #[test]
    fn a_dead_parent_unlinks_its_children_from_the_other_parents() {
        let mut f = Flows::default();
        f.insert(b"cb".to_vec(), w(&["a", "b", "c"]));
        f.insert(b"after".to_vec(), w(&["cb"]));
        let gone = f.remove_descendants(b"b");
        assert_eq!(gone.len(), 2);
        assert!(!f.has_children(b"a") && !f.has_children(b"c"));
        assert!(f.parent_done(b"a").is_empty());
        assert!(f.is_empty());
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let x = w(&["a", "b"]);
        let rec = Flows::record(b"id", &x);
        let mut r = R::new(&rec);
        assert_eq!(r.u8().unwrap(), b'W');
        assert_eq!(Flows::read_record(&mut r).unwrap(), (b"id".to_vec(), x.clone()));
        // an acked parent is not kept: the record reads back as a task waiting for the others
        let mut f = Flows::default();
        f.insert(b"id".to_vec(), x);
        f.parent_done(b"a");
        let rec = Flows::record(b"id", f.get(b"id").unwrap());
        let mut r = R::new(&rec);
        r.u8().unwrap();
        let (_, back) = Flows::read_record(&mut r).unwrap();
        assert_eq!(back.pending().collect::<Vec<_>>(), vec![&b"b".to_vec()]);
        let bad = Flows::record(b"id", &w(&[]));
        let mut r = R::new(&bad);
        r.u8().unwrap();
        assert!(Flows::read_record(&mut r).is_err());
        for cut in 0..rec.len() {
            let mut r = R::new(&rec[..cut]);
            let _ = r.u8().map(|_| Flows::read_record(&mut r));
        }
    }
}
