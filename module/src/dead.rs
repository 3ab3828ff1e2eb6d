//! A queue's dead-letter list: entries in the order they died (the oldest is evicted first when the
//! cap is reached), with an index from task id to its entries, so the id operations (VT.GET,
//! VT.DELETE, VT.RETRYDEAD with ids) cost O(ids) instead of a scan of the whole list per id.
//!
//! Several entries may share an id (a task re-enqueued under the same id died again); the index
//! points at the newest, and the entries of one id are chained newest → oldest.

use crate::queue::{HashMap, Id};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Dead {
    pub id: Id,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: i64,
    pub error: Vec<u8>,
    pub failed_at: i64,
}

/// No neighbour in an id chain.
const NONE: u64 = u64::MAX;

#[derive(Debug)]
struct Entry {
    dead: Dead,
    /// The next older / newer entry with the same id (or NONE).
    older: u64,
    newer: u64,
}

#[derive(Default, Debug)]
pub struct DeadList {
    /// By death order (a sequence number local to this list; never persisted).
    entries: BTreeMap<u64, Entry>,
    /// id → sequence number of its newest entry.
    newest: HashMap<Id, u64>,
    next_seq: u64,
}

impl DeadList {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Oldest first (`.rev()`: newest first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Dead> + '_ {
        self.entries.values().map(|e| &e.dead)
    }

    /// Appends the newest entry.
    pub fn push_back(&mut self, d: Dead) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let older = match self.newest.get_mut(&d.id) {
            Some(s) => std::mem::replace(s, seq),
            None => {
                self.newest.insert(d.id.clone(), seq);
                NONE
            }
        };
        if let Some(o) = self.entries.get_mut(&older) {
            o.newer = seq;
        }
        self.entries.insert(seq, Entry { dead: d, older, newer: NONE });
    }

    /// Removes the oldest entry (eviction at the cap).
    pub fn pop_front(&mut self) -> Option<Dead> {
        let seq = *self.entries.first_key_value()?.0;
        self.remove(seq)
    }

    /// The newest entry with this id.
    pub fn newest(&self, id: &[u8]) -> Option<&Dead> {
        self.newest.get(id).and_then(|s| self.entries.get(s)).map(|e| &e.dead)
    }

    /// Removes the newest entry with this id.
    pub fn take_newest(&mut self, id: &[u8]) -> Option<Dead> {
        let seq = *self.newest.get(id)?;
        self.remove(seq)
    }

    /// Sequence number of the newest entry with this id (its place in death order).
    pub fn newest_seq(&self, id: &[u8]) -> Option<u64> {
        self.newest.get(id).copied()
    }

    /// Removes every entry with this id; returns how many.
    pub fn remove_all(&mut self, id: &[u8]) -> usize {
        let mut seq = match self.newest.remove(id) {
            Some(s) => s,
            None => return 0,
        };
        let mut n = 0;
        while let Some(e) = self.entries.remove(&seq) {
            n += 1;
            seq = e.older;
        }
        n
    }

    /// Removes, in death order, the newest entry of every id for which `take(id)` is true; the
    /// entries of an id that is not taken, and the older entries of a taken id, stay.
    pub fn take_newest_where(&mut self, mut take: impl FnMut(&[u8]) -> bool) -> Vec<Dead> {
        let seqs: Vec<u64> =
            self.entries.iter().filter(|(_, e)| e.newer == NONE && take(&e.dead.id)).map(|(s, _)| *s).collect();
        seqs.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.newest.clear();
    }

    /// Approximate heap bytes (entries, index, allocator headers), for MEMORY USAGE.
    pub fn mem_usage(&self) -> usize {
        // a BTreeMap slot (key + Entry) with node slack, plus an index slot (id header + seq +
        // control byte + load-factor slack)
        const PER_ENTRY: usize = 200;
        const PER_ID: usize = 56;
        let mut n = self.entries.len() * PER_ENTRY + self.newest.len() * PER_ID;
        for e in self.entries.values() {
            n += e.dead.id.len() + e.dead.payload.len() + e.dead.error.len();
        }
        for id in self.newest.keys() {
            n += id.len();
        }
        n
    }

    /// Removes one entry, keeping its id chain and the index consistent.
    fn remove(&mut self, seq: u64) -> Option<Dead> {
        let e = self.entries.remove(&seq)?;
        if let Some(o) = self.entries.get_mut(&e.older) {
            o.newer = e.newer;
        }
        match self.entries.get_mut(&e.newer) {
            Some(n) => n.older = e.older,
            None => {
                // it was the newest of its id
                if e.older == NONE {
                    self.newest.remove(&e.dead.id);
                } else if let Some(s) = self.newest.get_mut(&e.dead.id) {
                    *s = e.older;
                }
            }
        }
        Some(e.dead)
    }

    /// Checks the index against the entries (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut chains = 0;
        for (id, &seq) in &self.newest {
            let mut s = seq;
            let mut newer = NONE;
            while s != NONE {
                let e = &self.entries[&s];
                assert_eq!(&e.dead.id, id);
                assert_eq!(e.newer, newer);
                chains += 1;
                newer = s;
                s = e.older;
            }
        }
        assert_eq!(chains, self.entries.len(), "every entry is in exactly one id chain");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, n: i64) -> Dead {
        Dead {
            id: id.as_bytes().to_vec(),
            payload: vec![],
            priority: 0,
            attempt: 1,
            max_attempts: 1,
            enqueued_at: 0,
            error: vec![],
            failed_at: n,
        }
    }

    fn order(l: &DeadList) -> Vec<(String, i64)> {
        l.iter().map(|e| (String::from_utf8(e.id.clone()).unwrap(), e.failed_at)).collect()
    }

    #[test]
    fn duplicates_chain_and_every_removal_keeps_the_index() {
        let mut l = DeadList::default();
        for (i, id) in ["a", "b", "a", "c", "a", "b"].iter().enumerate() {
            l.push_back(d(id, i as i64));
            l.check();
        }
        assert_eq!(l.newest(b"a").unwrap().failed_at, 4);
        assert_eq!(l.newest(b"b").unwrap().failed_at, 5);
        // a middle entry of a's chain
        assert_eq!(l.take_newest(b"a").unwrap().failed_at, 4);
        l.check();
        assert_eq!(l.newest(b"a").unwrap().failed_at, 2);
        // eviction of the oldest (the tail of a's chain)
        assert_eq!(l.pop_front().unwrap().failed_at, 0);
        l.check();
        assert_eq!(order(&l), vec![("b".into(), 1), ("a".into(), 2), ("c".into(), 3), ("b".into(), 5)]);
        assert_eq!(l.remove_all(b"b"), 2);
        l.check();
        assert!(l.newest(b"b").is_none());
        assert_eq!(l.remove_all(b"b"), 0);
        l.push_back(d("a", 6));
        let taken = l.take_newest_where(|id| id == b"a");
        assert_eq!(taken.iter().map(|e| e.failed_at).collect::<Vec<_>>(), vec![6]);
        l.check();
        assert_eq!(order(&l), vec![("a".into(), 2), ("c".into(), 3)]);
        assert_eq!(l.iter().next_back().unwrap().failed_at, 3);
        l.clear();
        l.check();
        assert!(l.is_empty() && l.newest(b"a").is_none());
    }

    /// Random operations against a plain Vec model.
    #[test]
    fn matches_a_plain_list() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut l = DeadList::default();
        let mut model: Vec<Dead> = Vec::new();
        for step in 0..20_000i64 {
            let id = format!("t{}", next() % 40);
            match next() % 6 {
                0..=2 => {
                    l.push_back(d(&id, step));
                    model.push(d(&id, step));
                }
                3 => {
                    let got = l.pop_front().map(|e| e.failed_at);
                    let want = if model.is_empty() { None } else { Some(model.remove(0).failed_at) };
                    assert_eq!(got, want);
                }
                4 => {
                    let got = l.take_newest(id.as_bytes()).map(|e| e.failed_at);
                    let want = model.iter().rposition(|e| e.id == id.as_bytes()).map(|i| model.remove(i).failed_at);
                    assert_eq!(got, want);
                }
                _ => {
                    let before = model.len();
                    model.retain(|e| e.id != id.as_bytes());
                    assert_eq!(l.remove_all(id.as_bytes()), before - model.len());
                }
            }
            if step % 500 == 0 {
                l.check();
            }
            assert_eq!(l.len(), model.len());
        }
        l.check();
        let got: Vec<i64> = l.iter().map(|e| e.failed_at).collect();
        assert_eq!(got, model.iter().map(|e| e.failed_at).collect::<Vec<_>>());
    }
}
