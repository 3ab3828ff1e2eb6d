//! A queue's dead-letter list: entries in the order they died (the oldest is evicted first when the
//! cap is reached), with an index from task id to its entries, so the id operations (VT.GET,
//! VT.DELETE, VT.RETRYDEAD with ids) cost O(ids) instead of a scan of the whole list per id.
//!
//! Entries sit in a ring in death order; an entry removed from the middle leaves an empty slot
//! (compacted once empty slots outnumber entries), so an entry's place never moves and the index
//! can hold it. The index maps a seeded 64-bit hash of the id (not a copy of the id: ~20 bytes an
//! entry instead of ~90) to the newest entry with that hash; the entries of one hash are chained
//! newest → oldest and compared by id, so several entries may share an id (a task re-enqueued
//! under the same id died again) and a hash collision costs a step, never a wrong answer.

use crate::queue::{HashMap, Id};
use std::collections::VecDeque;
use std::hash::BuildHasher;

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
    /// The next older / newer entry whose id has the same hash (sequence numbers, or NONE).
    older: u64,
    newer: u64,
}

#[derive(Default)]
pub struct DeadList {
    /// `slots[i]` holds the entry with sequence number `base + i` (death order), `None` where one
    /// was removed. The first and last slots are never `None`.
    slots: VecDeque<Option<Entry>>,
    base: u64,
    live: usize,
    /// id hash → sequence number of the newest entry whose id has that hash.
    heads: HashMap<u64, u64>,
    hasher: foldhash::fast::RandomState,
    /// Tests: every id hashes to 0 (one chain), to show collisions only cost steps.
    #[cfg(test)]
    collide: bool,
}

impl DeadList {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Oldest first (`.rev()`: newest first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Dead> + '_ {
        self.slots.iter().filter_map(|s| s.as_ref().map(|e| &e.dead))
    }

    /// Appends the newest entry.
    pub fn push_back(&mut self, d: Dead) {
        let seq = self.base + self.slots.len() as u64;
        let older = self.heads.insert(self.hash_id(&d.id), seq).unwrap_or(NONE);
        if let Some(o) = self.get_mut(older) {
            o.newer = seq;
        }
        self.slots.push_back(Some(Entry { dead: d, older, newer: NONE }));
        self.live += 1;
    }

    /// Removes the oldest entry (eviction at the cap).
    pub fn pop_front(&mut self) -> Option<Dead> {
        self.remove(self.base)
    }

    /// The newest entry with this id.
    pub fn newest(&self, id: &[u8]) -> Option<&Dead> {
        self.newest_seq(id).and_then(|s| self.get(s)).map(|e| &e.dead)
    }

    /// Removes the newest entry with this id.
    pub fn take_newest(&mut self, id: &[u8]) -> Option<Dead> {
        let seq = self.newest_seq(id)?;
        self.remove(seq)
    }

    /// Sequence number of the newest entry with this id (its place in death order).
    pub fn newest_seq(&self, id: &[u8]) -> Option<u64> {
        self.seqs_of(id).next()
    }

    /// Removes every entry with this id; returns how many.
    pub fn remove_all(&mut self, id: &[u8]) -> usize {
        let seqs: Vec<u64> = self.seqs_of(id).collect();
        let n = seqs.into_iter().filter(|s| self.unlink(*s).is_some()).count();
        self.compact_if_sparse();
        n
    }

    /// Removes, in death order, the newest entry of every id for which `take(id)` is true; the
    /// entries of an id that is not taken, and the older entries of a taken id, stay.
    pub fn take_newest_where(&mut self, mut take: impl FnMut(&[u8]) -> bool) -> Vec<Dead> {
        let base = self.base;
        let seqs: Vec<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|e| (base + i as u64, e)))
            .filter(|(_, e)| self.is_newest_of_its_id(e) && take(&e.dead.id))
            .map(|(s, _)| s)
            .collect();
        let out = seqs.into_iter().filter_map(|s| self.unlink(s)).collect();
        self.compact_if_sparse();
        out
    }

    pub fn clear(&mut self) {
        *self = DeadList::default();
    }

    /// Approximate bytes (ring, index, the entries' buffers with allocator headers), for MEMORY
    /// USAGE.
    pub fn mem_usage(&self) -> usize {
        const ALLOC_HEADER: usize = 16;
        let mut n = self.slots.capacity() * std::mem::size_of::<Option<Entry>>()
            + self.heads.capacity() * (std::mem::size_of::<(u64, u64)>() + 1);
        for e in self.iter() {
            n += e.id.capacity() + e.payload.capacity() + e.error.capacity() + 3 * ALLOC_HEADER;
        }
        n
    }

    fn hash_id(&self, id: &[u8]) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        self.hasher.hash_one(id)
    }

    /// Sequence numbers of the entries with this id, newest first.
    fn seqs_of<'a>(&'a self, id: &'a [u8]) -> impl Iterator<Item = u64> + 'a {
        let mut next = self.heads.get(&self.hash_id(id)).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            while let Some(e) = self.get(next) {
                let seq = next;
                next = e.older;
                if e.dead.id == id {
                    return Some(seq);
                }
            }
            None
        })
    }

    /// No newer entry has the same id (usually: no newer entry has the same hash).
    fn is_newest_of_its_id(&self, e: &Entry) -> bool {
        let mut next = e.newer;
        while let Some(n) = self.get(next) {
            if n.dead.id == e.dead.id {
                return false;
            }
            next = n.newer;
        }
        true
    }

    fn get(&self, seq: u64) -> Option<&Entry> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// Removes one entry, keeping its hash chain, the index and the ring's invariants.
    fn remove(&mut self, seq: u64) -> Option<Dead> {
        let d = self.unlink(seq);
        self.compact_if_sparse();
        d
    }

    /// [`remove`](Self::remove) without the compaction, which renumbers entries: for removing
    /// several sequence numbers collected beforehand.
    fn unlink(&mut self, seq: u64) -> Option<Dead> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let e = self.slots.get_mut(i)?.take()?;
        self.live -= 1;
        if let Some(o) = self.get_mut(e.older) {
            o.newer = e.newer;
        }
        match self.get_mut(e.newer) {
            Some(n) => n.older = e.older,
            None => {
                // it was the newest of its hash chain
                let h = self.hash_id(&e.dead.id);
                if e.older == NONE {
                    self.heads.remove(&h);
                } else {
                    self.heads.insert(h, e.older);
                }
            }
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
        Some(e.dead)
    }

    fn compact_if_sparse(&mut self) {
        if self.slots.len() > 2 * self.live + 64 {
            self.compact();
        }
    }

    /// Drops the empty slots: renumbers the entries from `base` in death order and rebuilds the
    /// links and the index (amortised: runs once empty slots outnumber entries).
    fn compact(&mut self) {
        let entries: Vec<Dead> = std::mem::take(&mut self.slots).into_iter().flatten().map(|e| e.dead).collect();
        self.heads.clear();
        self.live = 0;
        for d in entries {
            self.push_back(d);
        }
    }

    /// Checks the index and the ring against the entries (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut chains = 0;
        for (&h, &seq) in &self.heads {
            let mut s = seq;
            let mut newer = NONE;
            while s != NONE {
                let e = self.get(s).expect("a chained entry exists");
                assert_eq!(self.hash_id(&e.dead.id), h);
                assert_eq!(e.newer, newer);
                chains += 1;
                newer = s;
                s = e.older;
            }
        }
        assert_eq!(chains, self.live, "every entry is in exactly one id chain");
        assert_eq!(self.slots.iter().flatten().count(), self.live);
        assert!(self.slots.front().is_none_or(|s| s.is_some()) && self.slots.back().is_none_or(|s| s.is_some()));
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

    #[test]
    fn removals_from_the_middle_are_compacted_in_order() {
        let mut l = DeadList::default();
        let mut model = Vec::new();
        for i in 0..1000i64 {
            let id = format!("t{}", i % 300);
            l.push_back(d(&id, i));
            model.push((id, i));
        }
        for k in (1..300).filter(|k| k % 50 != 0) {
            let id = format!("t{k}");
            assert_eq!(l.remove_all(id.as_bytes()), model.iter().filter(|(m, _)| *m == id).count());
            model.retain(|(m, _)| *m != id);
            l.check();
        }
        assert!(l.slots.len() <= 2 * l.live + 64, "empty slots were compacted");
        assert_eq!(order(&l), model);
        assert_eq!(l.newest(b"t50").unwrap().failed_at, 950);
        assert_eq!(l.take_newest(b"t0").unwrap().failed_at, 900);
        l.push_back(d("t0", 1000));
        l.check();
        assert_eq!(l.newest(b"t0").unwrap().failed_at, 1000);
    }

    #[test]
    fn matches_a_plain_list() {
        matches_a_plain_list_with(false);
    }

    #[test]
    fn matches_a_plain_list_when_every_id_hash_collides() {
        matches_a_plain_list_with(true);
    }

    /// Random operations against a plain Vec model.
    fn matches_a_plain_list_with(collide: bool) {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut l = DeadList { collide, ..DeadList::default() };
        let mut model: Vec<Dead> = Vec::new();
        for step in 0..20_000i64 {
            let id = format!("t{}", next() % 40);
            match next() % 7 {
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
                5 => {
                    // the newest entry of every id t<n> with n % 4 == k, in death order
                    let k = next() % 4;
                    let pick = |id: &[u8]| std::str::from_utf8(&id[1..]).unwrap().parse::<u64>().unwrap() % 4 == k;
                    let got: Vec<i64> = l.take_newest_where(pick).iter().map(|e| e.failed_at).collect();
                    let mut newest: Vec<usize> = (0..model.len())
                        .filter(|&i| pick(&model[i].id) && !model[i + 1..].iter().any(|e| e.id == model[i].id))
                        .collect();
                    assert_eq!(got, newest.iter().map(|&i| model[i].failed_at).collect::<Vec<_>>());
                    newest.reverse();
                    for i in newest {
                        model.remove(i);
                    }
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
