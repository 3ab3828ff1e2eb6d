//! The queue value: tasks, indexes, dead letters, unique keys, schedules and counters.
//!
//! Everything here is deterministic: every operation takes the clock (`now`), ids, tokens and
//! configs as arguments. The primary resolves those values once and replicates them, so a
//! replica (or an AOF replay) running the same operation reaches the identical state.
//!
//! Memory layout (issue 11 §4): each live task is stored once, in a slot of `tasks::Slab`, and
//! every index holds its 4-byte handle: ready tasks in one FIFO per priority (sequence order),
//! delayed and in-flight tasks in binary heaps ordered by (run_at, seq) / (deadline, seq), a
//! worker's leases in a list threaded through the slots. Everything shrinks as the queue does.

use crate::codec::{CResult, R, W};
pub use crate::dead::{Dead, DeadList};
pub use crate::flows::{FlowNode, Flows, Waiting};
pub use crate::tasks::State;
use crate::tasks::{alloc_size, Handle, IdIndex, Slab, Task, MAX_STORED_ID, NIL};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Seeded, fast hash maps/sets (foldhash instead of std's SipHash; see Cargo.toml).
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub use vtasks_protocol::crontab::Cron;

pub type Id = Vec<u8>;

/// A live task as commands see it (VT.GET, VT.PEEK).
#[derive(Clone, Debug)]
pub struct TaskView<'a> {
    pub id: &'a [u8],
    pub payload: &'a [u8],
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub seq: u64,
    pub enqueued_at: i64,
    pub run_at: i64,
    pub state: State,
    pub worker: &'a [u8],
    pub token: u64,
    pub deadline: i64,
    pub error: &'a [u8],
    pub failed_at: i64,
    pub unique: Option<&'a [u8]>,
    /// Set on an in-flight task by `VT.CANCEL`: the error it is dead-lettered with.
    pub cancel: Option<&'a [u8]>,
}

/// What few tasks have (a last error, a failure time, a unique key, a cancellation request):
/// kept beside the slab.
#[derive(Default, Debug)]
struct Extra {
    error: Box<[u8]>,
    failed_at: i64,
    unique: Option<Box<[u8]>>,
    /// `VT.CANCEL` of an in-flight task: the error it ends with (see `vtasks_protocol::cancel`).
    cancel: Option<Box<[u8]>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.error.is_empty() && self.failed_at == 0 && self.unique.is_none() && self.cancel.is_none()
    }
}

/// A worker holding leases: the head of its list (threaded through `Task::wprev/wnext`).
#[derive(Debug)]
struct Leases {
    name: Box<[u8]>,
    head: Handle,
    count: u32,
}

#[derive(Clone, Debug)]
pub struct Unique {
    pub expires_at: i64,
    pub task: Option<Id>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SchedKind {
    Every = 0,
    Cron = 1,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub kind: SchedKind,
    /// The cron expression as given, or the interval in ms (decimal) for EVERY.
    pub spec: Vec<u8>,
    pub every: i64,
    pub priority: i32,
    pub payload: Vec<u8>,
    pub next_run: i64,
    pub cron: Option<Cron>,
    /// Paused at runtime (`VT.SCHEDULE PAUSE`): no ticks fire until `VT.SCHEDULE RESUME`.
    pub paused: bool,
}

pub const NEVER: i64 = i64::MAX;
/// Bound of task sequence numbers (exclusive) and of a queue's `next_seq` (inclusive), enforced
/// by the record loader and kept by `take_seq`.
pub const MAX_SEQ: u64 = 1 << 62;

/// Parses a cron expression (crontab's reading, see `vtasks_protocol::crontab`).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    Cron::parse(expr)
}

/// First cron tick strictly after `after_ms` ([`NEVER`] if none).
pub fn cron_next(s: &Cron, after_ms: i64) -> i64 {
    s.next_after(after_ms).unwrap_or(NEVER)
}

impl Schedule {
    /// Next tick after a fire at `now` (coalescing missed ticks).
    pub fn next_after_fire(&self, now: i64) -> i64 {
        match self.kind {
            SchedKind::Every => {
                let n = self.next_run.saturating_add(self.every);
                if n <= now {
                    now.saturating_add(self.every)
                } else {
                    n
                }
            }
            SchedKind::Cron => match &self.cron {
                Some(c) => cron_next(c, now.max(self.next_run)),
                None => NEVER,
            },
        }
    }
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub ready: i64,
    pub delayed: i64,
    pub inflight: i64,
    pub dead: i64,
}

// ---------- ordering indexes over handles ----------

type KeyFn = fn(&Task) -> (i64, u64);

fn delayed_key(t: &Task) -> (i64, u64) {
    (t.run_at, t.seq)
}

fn inflight_key(t: &Task) -> (i64, u64) {
    (t.deadline, t.seq)
}

/// A binary min-heap of handles by `key`; each task knows its position (`Task::pos`), so any
/// task is removed in O(log n). Keys are unique (sequence numbers are).
struct Heap;

impl Heap {
    fn set(h: &mut [Handle], slab: &mut Slab, i: usize, x: Handle) {
        h[i] = x;
        slab.get_mut(x).pos = i as u32;
    }
    fn sift_up(h: &mut [Handle], slab: &mut Slab, key: KeyFn, mut i: usize) {
        let x = h[i];
        let kx = key(slab.get(x));
        while i > 0 {
            let p = (i - 1) / 2;
            if key(slab.get(h[p])) <= kx {
                break;
            }
            let hp = h[p];
            Heap::set(h, slab, i, hp);
            i = p;
        }
        Heap::set(h, slab, i, x);
    }
    fn sift_down(h: &mut [Handle], slab: &mut Slab, key: KeyFn, mut i: usize) {
        let n = h.len();
        let x = h[i];
        let kx = key(slab.get(x));
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let mut c = l;
            let mut kc = key(slab.get(h[l]));
            if l + 1 < n {
                let kr = key(slab.get(h[l + 1]));
                if kr < kc {
                    c = l + 1;
                    kc = kr;
                }
            }
            if kc >= kx {
                break;
            }
            let hc = h[c];
            Heap::set(h, slab, i, hc);
            i = c;
        }
        Heap::set(h, slab, i, x);
    }
    fn push(h: &mut Vec<Handle>, slab: &mut Slab, key: KeyFn, x: Handle) {
        h.push(x);
        let i = h.len() - 1;
        Heap::sift_up(h, slab, key, i);
    }
    fn remove(h: &mut Vec<Handle>, slab: &mut Slab, key: KeyFn, x: Handle) {
        let i = slab.get(x).pos as usize;
        debug_assert_eq!(h.get(i), Some(&x), "heap position out of sync");
        if h.get(i) != Some(&x) {
            return;
        }
        let last = h.pop().expect("non-empty heap");
        if i < h.len() {
            Heap::set(h, slab, i, last);
            Heap::sift_down(h, slab, key, i);
            let j = slab.get(last).pos as usize;
            Heap::sift_up(h, slab, key, j);
        }
        shrink_vec(h);
    }
    fn min(h: &[Handle], slab: &Slab, key: KeyFn) -> Option<(i64, u64)> {
        h.first().map(|x| key(slab.get(*x)))
    }
    /// The `k` first handles in key order (VT.PEEK: O(n + k log k)).
    fn first_k(h: &[Handle], slab: &Slab, key: KeyFn, k: usize) -> Vec<Handle> {
        let mut v = h.to_vec();
        if k < v.len() {
            v.select_nth_unstable_by_key(k, |x| key(slab.get(*x)));
            v.truncate(k);
        }
        v.sort_unstable_by_key(|x| key(slab.get(*x)));
        v
    }
    /// The handles in key order (for records; O(n log n)).
    fn sorted(h: &[Handle], slab: &Slab, key: KeyFn) -> Vec<Handle> {
        let mut v = h.to_vec();
        v.sort_unstable_by_key(|x| key(slab.get(*x)));
        v
    }
}

/// Gives a vector's memory back once it is mostly empty (amortized: after as many removals as
/// the halving frees).
fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.is_empty() {
        *v = Vec::new();
    } else if v.capacity() > 64 && v.len() * 4 < v.capacity() {
        v.shrink_to(v.len() * 2);
    }
}

fn shrink_deque<T>(v: &mut VecDeque<T>) {
    if v.capacity() > 64 && v.len() * 4 < v.capacity() {
        v.shrink_to(v.len() * 2);
    }
}

#[derive(Default)]
pub struct Queue {
    slab: Slab,
    ids: IdIndex,
    /// Ready tasks: one FIFO per priority (key: -priority, so the highest priority comes first),
    /// handles in sequence order.
    ready: BTreeMap<i8, VecDeque<Handle>>,
    ready_len: usize,
    /// Heap by (run_at, seq).
    delayed: Vec<Handle>,
    /// Heap by (deadline, seq).
    inflight: Vec<Handle>,
    /// Workers holding leases (`Task::worker` indexes `leases`; freed entries are None).
    leases: Vec<Option<Leases>>,
    lease_free: Vec<u32>,
    worker_ids: HashMap<Box<[u8]>, u32>,
    extras: HashMap<Handle, Extra>,
    pub dead: DeadList,
    pub uniques: HashMap<Vec<u8>, Unique>,
    pub unique_exp: BTreeSet<(i64, Vec<u8>)>,
    pub schedules: BTreeMap<Vec<u8>, Schedule>,
    /// Tasks waiting for other tasks of this queue (chains, group callbacks; see flows.rs).
    pub flows: Flows,
    pub next_seq: u64,
    pub enqueued_total: u64,
    pub acked_total: u64,
    pub failed_total: u64,
    pub retried_total: u64,
    pub rescued_total: u64,
    pub dead_total: u64,
    pub dead_evicted: u64,
    /// Schedule ticks skipped because the server was over maxmemory.
    pub schedule_ticks_skipped_total: u64,
    /// The rate limit (`VT.RATELIMIT`, see ratelimit.rs), persisted and replicated.
    pub rate: Option<crate::ratelimit::RateLimit>,
    /// When a fetch left short of tokens wants blocked fetchers woken (primary only, not
    /// persisted: a fetcher that comes back after a restart sets it again).
    pub rate_wake: Option<i64>,
    /// Set whenever a task became ready; the command layer signals blocked clients and clears it.
    pub became_ready: bool,
    /// Set by every operation that changed the queue; the keyspace layer then signals the key as
    /// modified (WATCH, client tracking, keyspace notifications) and clears it. A command that
    /// changed nothing (an empty fetch, an ack of an unknown id) leaves it unset.
    pub modified: bool,
    /// Sequence numbers seen while loading records (duplicates are rejected); `None` outside a load.
    pub load_seqs: Option<HashSet<u64>>,
}

pub struct EnqOpts<'a> {
    pub now: i64,
    pub priority: i32,
    pub run_at: i64,
    pub max_attempts: u32,
    /// (key, expires_at)
    pub unique: Option<(&'a [u8], i64)>,
}

pub struct Fetched {
    pub id: Id,
    pub token: u64,
    pub attempt: u32,
    pub payload: Vec<u8>,
}

pub use vtasks_protocol::token::{fmt_token, fmt_token_buf, parse_token};

impl Queue {
    pub fn sizes(&self) -> Sizes {
        Sizes {
            ready: self.ready_len as i64,
            delayed: self.delayed.len() as i64,
            inflight: self.inflight.len() as i64,
            dead: self.dead.len() as i64,
        }
    }

    /// Live tasks (ready, delayed and in flight).
    pub fn task_count(&self) -> usize {
        self.slab.len()
    }

    /// Whether `id` names a live task (ready, delayed, in flight) or a waiting one.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids.get(id, &self.slab).is_some() || self.flows.contains(id)
    }

    /// Whether a delayed task is due at `now`.
    pub fn has_due_delayed(&self, now: i64) -> bool {
        matches!(Heap::min(&self.delayed, &self.slab, delayed_key), Some((t, _)) if t <= now)
    }

    /// Whether a lease has expired at `now`.
    pub fn has_expired_lease(&self, now: i64) -> bool {
        matches!(Heap::min(&self.inflight, &self.slab, inflight_key), Some((t, _)) if t <= now)
    }

    /// Earliest time a timer has work on this queue.
    pub fn next_due(&self) -> Option<i64> {
        let mut due = NEVER;
        if let Some((t, _)) = Heap::min(&self.delayed, &self.slab, delayed_key) {
            due = due.min(t);
        }
        if let Some((t, _)) = Heap::min(&self.inflight, &self.slab, inflight_key) {
            due = due.min(t);
        }
        for s in self.schedules.values().filter(|s| !s.paused) {
            due = due.min(s.next_run);
        }
        if let Some(t) = self.rate_wake {
            due = due.min(t);
        }
        if due == NEVER {
            None
        } else {
            Some(due)
        }
    }

    // ---------- views ----------

    fn view(&self, h: Handle) -> TaskView<'_> {
        let t = self.slab.get(h);
        let x = self.extras.get(&h);
        TaskView {
            id: t.id(),
            payload: t.payload(),
            priority: t.priority as i32,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            seq: t.seq,
            enqueued_at: t.enqueued_at,
            run_at: t.run_at,
            state: t.state,
            worker: self.worker_name(t),
            token: t.token,
            deadline: t.deadline,
            error: x.map(|x| &x.error[..]).unwrap_or(b""),
            failed_at: x.map(|x| x.failed_at).unwrap_or(0),
            unique: x.and_then(|x| x.unique.as_deref()),
            cancel: x.and_then(|x| x.cancel.as_deref()),
        }
    }

    pub fn get_task(&self, id: &[u8]) -> Option<TaskView<'_>> {
        self.ids.get(id, &self.slab).map(|h| self.view(h))
    }

    /// Every live task (in no particular order).
    pub fn tasks(&self) -> impl Iterator<Item = TaskView<'_>> {
        self.slab.iter().map(|(h, _)| self.view(h))
    }

    /// Tasks of one state in the order they leave it (0 ready, 1 delayed, 2 in flight).
    pub fn peek(&self, state: State, offset: usize, count: usize) -> Vec<TaskView<'_>> {
        let hs: Vec<Handle> = match state {
            State::Ready => self.ready.values().flatten().skip(offset).take(count).copied().collect(),
            State::Delayed => Heap::first_k(&self.delayed, &self.slab, delayed_key, offset.saturating_add(count)),
            State::Inflight => Heap::first_k(&self.inflight, &self.slab, inflight_key, offset.saturating_add(count)),
        };
        let hs: Vec<Handle> = match state {
            State::Ready => hs,
            _ => hs.into_iter().skip(offset).take(count).collect(),
        };
        hs.into_iter().map(|h| self.view(h)).collect()
    }

    fn worker_name(&self, t: &Task) -> &[u8] {
        match self.leases.get(t.worker as usize) {
            Some(Some(l)) if t.worker != NIL => &l.name,
            _ => b"",
        }
    }

    // ---------- sequence numbers ----------

    /// Next sequence number. Never reaches [`MAX_SEQ`] (the bound the record loader accepts): at
    /// the bound the live tasks are renumbered 0..n first, so whatever a queue saves loads again.
    fn take_seq(&mut self) -> u64 {
        if self.next_seq >= MAX_SEQ {
            self.renumber();
        }
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Reassigns the live tasks' sequence numbers to 0..n in their current order. Every index is
    /// ordered by `(key, seq)` and seqs are unique, so every index keeps its order (no rebuild).
    /// Only reachable after a load of a queue whose sequence numbers are near [`MAX_SEQ`] (2^62
    /// takes from an empty queue are out of reach).
    fn renumber(&mut self) {
        let mut order: Vec<(u64, Handle)> = self.slab.iter().map(|(h, t)| (t.seq, h)).collect();
        order.sort_unstable();
        let n = order.len() as u64;
        for (i, (_, h)) in order.into_iter().enumerate() {
            self.slab.get_mut(h).seq = i as u64;
        }
        self.next_seq = n;
    }

    // ---------- indexes ----------

    fn ready_push(&mut self, h: Handle) {
        let (prio, seq) = {
            let t = self.slab.get(h);
            (t.priority, t.seq)
        };
        let slab = &self.slab;
        let d = self.ready.entry(-prio).or_default();
        match d.back() {
            Some(b) if slab.get(*b).seq > seq => {
                // only a load delivers tasks out of order
                let at = d.partition_point(|x| slab.get(*x).seq < seq);
                d.insert(at, h);
            }
            _ => d.push_back(h),
        }
        self.ready_len += 1;
    }

    fn ready_remove(&mut self, h: Handle) {
        let (prio, seq) = {
            let t = self.slab.get(h);
            (t.priority, t.seq)
        };
        let slab = &self.slab;
        let Some(d) = self.ready.get_mut(&-prio) else { return };
        if d.front() == Some(&h) {
            d.pop_front();
        } else {
            // not the next one (VT.DELETE): O(n) in this priority's FIFO
            let at = d.partition_point(|x| slab.get(*x).seq < seq);
            if d.get(at) != Some(&h) {
                return;
            }
            d.remove(at);
        }
        self.ready_len -= 1;
        if d.is_empty() {
            self.ready.remove(&-prio);
        } else {
            shrink_deque(d);
        }
    }

    fn ready_first(&self) -> Option<Handle> {
        self.ready.values().next().and_then(|d| d.front().copied())
    }

    fn intern_worker(&mut self, worker: &[u8]) -> u32 {
        if let Some(w) = self.worker_ids.get(worker) {
            return *w;
        }
        let l = Leases { name: worker.into(), head: NIL, count: 0 };
        let w = match self.lease_free.pop() {
            Some(w) => {
                self.leases[w as usize] = Some(l);
                w
            }
            None => {
                self.leases.push(Some(l));
                (self.leases.len() - 1) as u32
            }
        };
        self.worker_ids.insert(worker.into(), w);
        w
    }

    fn worker_link(&mut self, h: Handle, w: u32) {
        let l = self.leases[w as usize].as_mut().expect("interned worker");
        let head = l.head;
        l.head = h;
        l.count += 1;
        let t = self.slab.get_mut(h);
        t.worker = w;
        t.wprev = NIL;
        t.wnext = head;
        if head != NIL {
            self.slab.get_mut(head).wprev = h;
        }
    }

    fn worker_unlink(&mut self, h: Handle) {
        let (w, prev, next) = {
            let t = self.slab.get_mut(h);
            let r = (t.worker, t.wprev, t.wnext);
            t.worker = NIL;
            t.wprev = NIL;
            t.wnext = NIL;
            r
        };
        if w == NIL {
            return;
        }
        if prev != NIL {
            self.slab.get_mut(prev).wnext = next;
        }
        if next != NIL {
            self.slab.get_mut(next).wprev = prev;
        }
        let Some(Some(l)) = self.leases.get_mut(w as usize) else { return };
        if prev == NIL {
            l.head = next;
        }
        l.count -= 1;
        if l.count == 0 {
            let l = self.leases[w as usize].take().expect("worker entry");
            self.worker_ids.remove(&l.name);
            self.lease_free.push(w);
            if self.worker_ids.is_empty() {
                self.leases = Vec::new();
                self.lease_free = Vec::new();
                self.worker_ids = HashMap::default();
            }
        }
    }

    /// Removes a task's index entries (not the task itself).
    fn unindex(&mut self, h: Handle) {
        self.modified = true;
        match self.slab.get(h).state {
            State::Ready => self.ready_remove(h),
            State::Delayed => Heap::remove(&mut self.delayed, &mut self.slab, delayed_key, h),
            State::Inflight => {
                Heap::remove(&mut self.inflight, &mut self.slab, inflight_key, h);
                self.worker_unlink(h);
            }
        }
    }

    /// Indexes a task according to its current fields (an in-flight one under worker `w`).
    fn index(&mut self, h: Handle, w: u32) {
        self.modified = true;
        match self.slab.get(h).state {
            State::Ready => self.ready_push(h),
            State::Delayed => Heap::push(&mut self.delayed, &mut self.slab, delayed_key, h),
            State::Inflight => {
                Heap::push(&mut self.inflight, &mut self.slab, inflight_key, h);
                self.worker_link(h, w);
            }
        }
    }

    /// (Re)places an unindexed task as ready (run_at <= now) or delayed, with a fresh sequence
    /// number.
    fn place(&mut self, h: Handle, now: i64) {
        let seq = self.take_seq();
        let t = self.slab.get_mut(h);
        t.seq = seq;
        t.token = 0;
        t.deadline = 0;
        if t.run_at > now {
            t.state = State::Delayed;
        } else {
            t.state = State::Ready;
            self.became_ready = true;
        }
        self.index(h, NIL);
    }

    fn extra_mut(&mut self, h: Handle) -> &mut Extra {
        self.extras.entry(h).or_default()
    }

    fn drop_empty_extra(&mut self, h: Handle) {
        if matches!(self.extras.get(&h), Some(x) if x.is_empty()) {
            self.extras.remove(&h);
        }
    }

    /// Frees an unindexed task's slot, id and side data.
    fn free(&mut self, h: Handle) {
        self.ids.remove(self.slab.get(h).id(), &self.slab);
        self.extras.remove(&h);
        self.slab.remove(h);
    }

    /// Gives memory back after removals (amortized O(1) per removal): compacts the slab when
    /// under a quarter of it is live, and shrinks the side tables. Handles change here, so only
    /// public operations call it, at their end.
    fn tidy(&mut self) {
        if self.slab.sparse() {
            let map = self.slab.compact();
            let m = |h: &mut Handle| {
                if *h != NIL {
                    *h = map[*h as usize]
                }
            };
            self.ids.remap(&map);
            self.ready.values_mut().flatten().for_each(m);
            self.delayed.iter_mut().for_each(m);
            self.inflight.iter_mut().for_each(m);
            for l in self.leases.iter_mut().flatten() {
                m(&mut l.head);
            }
            let hs: Vec<Handle> = self.slab.iter().map(|(h, _)| h).collect();
            for h in hs {
                let t = self.slab.get_mut(h);
                m(&mut t.wprev);
                m(&mut t.wnext);
            }
            self.extras = std::mem::take(&mut self.extras).into_iter().map(|(h, x)| (map[h as usize], x)).collect();
        }
        if self.extras.is_empty() {
            if self.extras.capacity() > 0 {
                self.extras = HashMap::default();
            }
        } else if self.extras.len() * 4 < self.extras.capacity() {
            self.extras.shrink_to(self.extras.len() * 2);
        }
        if self.uniques.is_empty() && self.uniques.capacity() > 0 {
            self.uniques = HashMap::default();
        } else if self.uniques.len() * 4 < self.uniques.capacity() {
            self.uniques.shrink_to(self.uniques.len() * 2);
        }
    }

    // ---------- unique keys ----------

    pub fn purge_uniques(&mut self, now: i64) {
        while let Some((exp, _)) = self.unique_exp.first() {
            if *exp > now {
                break;
            }
            let (exp, key) = self.unique_exp.pop_first().unwrap();
            if let Some(u) = self.uniques.get(&key) {
                if u.expires_at == exp {
                    let u = self.uniques.remove(&key).unwrap();
                    if let Some(h) = u.task.and_then(|tid| self.ids.get(&tid, &self.slab)) {
                        if let Some(x) = self.extras.get_mut(&h) {
                            if x.unique.as_deref() == Some(&key[..]) {
                                x.unique = None;
                                self.drop_empty_extra(h);
                            }
                        }
                    }
                }
            }
        }
    }

    fn release_unique(&mut self, h: Handle) {
        let Some(k) = self.extras.get_mut(&h).and_then(|x| x.unique.take()) else { return };
        self.drop_empty_extra(h);
        let id = self.slab.get(h).id();
        let held = matches!(self.uniques.get(&k[..]), Some(u) if u.task.as_deref() == Some(id));
        if held {
            let u = self.uniques.remove(&k[..]).unwrap();
            self.unique_exp.remove(&(u.expires_at, k.into_vec()));
        }
    }

    // ---------- operations ----------

    /// Adds tasks; returns, per item, whether it was added.
    pub fn enqueue(&mut self, o: &EnqOpts, items: Vec<(Id, Vec<u8>)>) -> Vec<bool> {
        self.purge_uniques(o.now);
        let mut out = vec![false; items.len()];
        let unique_held = match o.unique {
            Some((k, _)) => self.uniques.contains_key(k),
            None => false,
        };
        for (i, (id, payload)) in items.into_iter().enumerate() {
            if o.unique.is_some() && (i > 0 || unique_held) {
                continue;
            }
            if self.contains(&id) {
                continue;
            }
            let seq = self.take_seq();
            let delayed = o.run_at > o.now;
            let mut t = Task::new(&id, &payload);
            t.priority = o.priority as i8;
            t.max_attempts = o.max_attempts;
            t.seq = seq;
            t.enqueued_at = o.now;
            t.run_at = o.run_at;
            t.state = if delayed { State::Delayed } else { State::Ready };
            let h = self.slab.insert(t);
            self.ids.insert(&id, h);
            if let Some((k, exp)) = o.unique {
                self.extra_mut(h).unique = Some(k.into());
                self.uniques.insert(k.to_vec(), Unique { expires_at: exp, task: Some(id) });
                self.unique_exp.insert((exp, k.to_vec()));
            }
            if !delayed {
                self.became_ready = true;
            }
            self.index(h, NIL);
            self.enqueued_total += 1;
            out[i] = true;
        }
        out
    }

    /// Moves due delayed tasks to ready. Returns how many moved.
    pub fn promote(&mut self, now: i64) -> usize {
        let mut n = 0;
        while self.has_due_delayed(now) {
            let h = self.delayed[0];
            Heap::remove(&mut self.delayed, &mut self.slab, delayed_key, h);
            self.place(h, now);
            n += 1;
        }
        n
    }

    /// Leases a task (ready, or delayed when replaying) to a worker; None if it is in flight.
    fn lease_handle(&mut self, h: Handle, worker: &[u8], token: u64, deadline: i64) -> Option<&Task> {
        if self.slab.get(h).state == State::Inflight {
            return None;
        }
        self.unindex(h);
        let w = self.intern_worker(worker);
        let t = self.slab.get_mut(h);
        t.state = State::Inflight;
        t.attempt = t.attempt.saturating_add(1);
        t.token = token;
        t.deadline = deadline;
        self.index(h, w);
        Some(self.slab.get(h))
    }

    /// Leases one specific task (ready, or delayed when replaying) to a worker; returns its
    /// attempt number.
    pub fn lease(&mut self, id: &[u8], worker: &[u8], token: u64, deadline: i64) -> Option<u32> {
        let h = self.ids.get(id, &self.slab)?;
        self.lease_handle(h, worker, token, deadline).map(|t| t.attempt)
    }

    /// The handles a worker holds, in a deterministic order (by sequence number), so replaying
    /// the same operation on a replica assigns the same sequence numbers.
    fn worker_handles(&self, worker: &[u8]) -> Vec<Handle> {
        let Some(w) = self.worker_ids.get(worker) else { return Vec::new() };
        let mut v = Vec::new();
        let mut h = self.leases[*w as usize].as_ref().map(|l| l.head).unwrap_or(NIL);
        while h != NIL {
            let t = self.slab.get(h);
            v.push((t.seq, h));
            h = t.wnext;
        }
        v.sort_unstable();
        v.into_iter().map(|(_, h)| h).collect()
    }

    /// Promotes due tasks, then leases up to `count` ready tasks in fetch order.
    pub fn fetch(
        &mut self,
        now: i64,
        worker: &[u8],
        count: usize,
        deadline: i64,
        tok: &mut dyn FnMut() -> u64,
    ) -> Vec<Fetched> {
        self.promote(now);
        let allowed = self.rate_allowance(now);
        let short = count > allowed && self.ready_len > allowed;
        let count = count.min(allowed);
        let mut out = Vec::new();
        while out.len() < count {
            let Some(h) = self.ready_first() else { break };
            let token = tok();
            let t = self.lease_handle(h, worker, token, deadline).expect("a ready task leases");
            out.push(Fetched { id: t.id().to_vec(), payload: t.payload().to_vec(), attempt: t.attempt, token });
        }
        self.rate_take(now, out.len());
        if short {
            // short of tokens: wake blocked fetchers when the next one is there
            self.rate_wake = self.rate.map(|r| r.next_token_at(now).max(now + 1));
        }
        out
    }

    fn holds(&self, id: &[u8], token: u64) -> Option<Handle> {
        let h = self.ids.get(id, &self.slab)?;
        let t = self.slab.get(h);
        (t.state == State::Inflight && t.token == token).then_some(h)
    }

    /// Acks a task at `now`: the tasks that waited only for it are released in the same step
    /// (ready, or delayed until their run time).
    pub fn ack(&mut self, now: i64, id: &[u8], token: Option<u64>) -> bool {
        let Some(h) = token.and_then(|t| self.holds(id, t)) else { return false };
        self.unindex(h);
        self.release_unique(h);
        self.free(h);
        self.acked_total += 1;
        if self.flows.has_children(id) {
            for (cid, w) in self.flows.parent_done(id) {
                self.release(cid, w, now);
            }
        }
        self.tidy();
        true
    }

    // ---------- flows (the store is flows.rs) ----------

    /// Adds a flow at `now`: nodes without parents as tasks, the others waiting. The flow is
    /// added whole or not at all: false (nothing added) when one of its ids is already a live or
    /// waiting task. The caller checked the nodes (ids unique, parents are earlier nodes).
    pub fn add_flow(&mut self, now: i64, nodes: Vec<FlowNode>) -> bool {
        if nodes.iter().any(|n| self.contains(&n.id)) {
            return false;
        }
        for n in nodes {
            if n.parents.is_empty() {
                self.insert_task(&n.id, &n.payload, n.priority, n.max_attempts, now, n.run_at, now);
                self.enqueued_total += 1;
            } else {
                let w = Waiting::new(n.payload, n.priority, n.max_attempts, now, n.run_at, n.parents);
                self.flows.insert(n.id, w);
                self.enqueued_total += 1;
            }
        }
        self.modified = true;
        true
    }

    /// Moves a released waiting task into the queue.
    fn release(&mut self, id: Id, w: Waiting, now: i64) {
        if self.ids.get(&id, &self.slab).is_some() {
            return; // (only a corrupt load could hold the id twice)
        }
        self.insert_task(&id, &w.payload, w.priority, w.max_attempts, w.enqueued_at, w.run_at, now);
    }

    /// Adds a task (its id is new) as ready, or delayed when `run_at` is after `now`.
    #[allow(clippy::too_many_arguments)]
    fn insert_task(
        &mut self,
        id: &[u8],
        payload: &[u8],
        priority: i32,
        max_attempts: u32,
        enqueued_at: i64,
        run_at: i64,
        now: i64,
    ) {
        let mut t = Task::new(id, payload);
        t.priority = priority as i8;
        t.max_attempts = max_attempts;
        t.enqueued_at = enqueued_at;
        t.run_at = run_at;
        let h = self.slab.insert(t);
        self.ids.insert(id, h);
        self.place(h, now);
    }

    /// A task left the queue without succeeding: every task that waits for it (transitively)
    /// is dead-lettered with a reason naming it (`dead`) or removed (`!dead`). Returns how many.
    fn drop_dependents(&mut self, id: &[u8], dead: bool, now: i64, cap: usize) -> usize {
        if !self.flows.has_children(id) {
            return 0;
        }
        let gone = self.flows.remove_descendants(id);
        let n = gone.len();
        let why = format!("not run: task {} that it waits for failed", String::from_utf8_lossy(id));
        for (cid, w) in gone {
            if dead {
                let d = Dead {
                    id: cid,
                    payload: w.payload,
                    priority: w.priority,
                    attempt: 0,
                    max_attempts: w.max_attempts,
                    enqueued_at: w.enqueued_at,
                    error: why.clone().into_bytes(),
                    failed_at: now,
                };
                self.push_dead(d, cap);
            }
        }
        self.modified = true;
        n
    }

    fn push_dead(&mut self, d: Dead, cap: usize) {
        self.modified = true;
        self.dead.push_back(d);
        self.dead_total += 1;
        while self.dead.len() > cap {
            self.dead.pop_front();
            self.dead_evicted += 1;
        }
    }

    /// Removes a live task and appends it to the dead-letter list.
    fn dead_letter(&mut self, h: Handle, error: Vec<u8>, now: i64, cap: usize) {
        self.unindex(h);
        self.release_unique(h);
        let t = self.slab.get(h);
        let d = Dead {
            id: t.id().to_vec(),
            payload: t.payload().to_vec(),
            priority: t.priority as i32,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            enqueued_at: t.enqueued_at,
            error,
            failed_at: now,
        };
        self.free(h);
        let id = d.id.clone();
        self.push_dead(d, cap);
        self.drop_dependents(&id, true, now, cap);
    }

    pub fn fail(
        &mut self,
        now: i64,
        cap: usize,
        id: &[u8],
        token: Option<u64>,
        error: &[u8],
        retry: Option<i64>,
    ) -> Option<&'static str> {
        let h = self.holds(id, token?)?;
        self.failed_total += 1;
        let (attempt, max) = {
            let t = self.slab.get(h);
            (t.attempt, t.max_attempts)
        };
        let cancelled = self.cancel_of(h).is_some();
        let r = match retry {
            Some(ms) if attempt < max && !cancelled => {
                self.unindex(h);
                let x = self.extra_mut(h);
                x.error = error.into();
                x.failed_at = now;
                self.drop_empty_extra(h);
                let t = self.slab.get_mut(h);
                t.run_at = now.saturating_add(ms);
                self.place(h, now);
                self.retried_total += 1;
                "retry"
            }
            _ => {
                self.dead_letter(h, error.to_vec(), now, cap);
                "dead"
            }
        };
        self.tidy();
        Some(r)
    }

    fn rescue_one(&mut self, h: Handle, now: i64, cap: usize, by_worker: bool) -> bool {
        let t = self.slab.get(h);
        if t.state != State::Inflight {
            return false;
        }
        let attempt = t.attempt;
        if let Some(e) = self.cancel_of(h) {
            // a cancelled task never runs again: its lease ended, so does the task
            let e = e.to_vec();
            self.dead_letter(h, e, now, cap);
            return false;
        }
        if attempt >= t.max_attempts {
            let err = if by_worker {
                let w = String::from_utf8_lossy(self.worker_name(t)).into_owned();
                format!("rescued from worker {w} after {attempt} attempts")
            } else {
                format!("lease expired after {attempt} attempts")
            };
            self.dead_letter(h, err.into_bytes(), now, cap);
            false
        } else {
            self.unindex(h);
            self.slab.get_mut(h).run_at = now;
            self.place(h, now);
            self.rescued_total += 1;
            true
        }
    }

    /// Rescues every lease whose deadline has passed, in (deadline, seq) order. Returns tasks
    /// returned to ready.
    pub fn rescue_expired(&mut self, now: i64, cap: usize) -> usize {
        let mut n = 0;
        while self.has_expired_lease(now) {
            let h = self.inflight[0];
            n += self.rescue_one(h, now, cap, false) as usize;
        }
        self.tidy();
        n
    }

    /// Rescues every task a worker holds.
    pub fn rescue_worker(&mut self, worker: &[u8], now: i64, cap: usize) -> usize {
        let hs = self.worker_handles(worker);
        let n = hs.into_iter().filter(|h| self.rescue_one(*h, now, cap, true)).count();
        self.tidy();
        n
    }

    /// Moves the deadline of every lease `worker` holds to `deadline`, except cancelled tasks'
    /// (VT.CANCEL): those keep theirs and are listed (ids, in sequence order).
    pub fn extend(&mut self, worker: &[u8], deadline: i64) -> (usize, Vec<Id>) {
        let mut n = 0;
        let mut cancelled = Vec::new();
        for h in self.worker_handles(worker) {
            if self.cancel_of(h).is_some() {
                cancelled.push(self.slab.get(h).id().to_vec());
                continue;
            }
            Heap::remove(&mut self.inflight, &mut self.slab, inflight_key, h);
            self.slab.get_mut(h).deadline = deadline;
            Heap::push(&mut self.inflight, &mut self.slab, inflight_key, h);
            n += 1;
        }
        self.modified |= n > 0;
        (n, cancelled)
    }

    fn cancel_of(&self, h: Handle) -> Option<&[u8]> {
        self.extras.get(&h).and_then(|x| x.cancel.as_deref())
    }

    /// `VT.CANCEL`: a ready or delayed task is dead-lettered with `error` at once (`removed`); an
    /// in-flight one is flagged (`flagged`): its lease is no longer extended, a `FAIL ... RETRY`
    /// dead-letters it, and a rescue dead-letters it with `error` instead of running it again.
    /// None when no live task has this id.
    pub fn cancel(&mut self, now: i64, cap: usize, id: &[u8], error: &[u8]) -> Option<&'static str> {
        let h = self.ids.get(id, &self.slab)?;
        let r = if self.slab.get(h).state == State::Inflight {
            if self.cancel_of(h).is_none() {
                self.extra_mut(h).cancel = Some(error.into());
                self.modified = true;
            }
            "flagged"
        } else {
            self.dead_letter(h, error.to_vec(), now, cap);
            "removed"
        };
        self.tidy();
        Some(r)
    }

    fn revive(&mut self, d: Dead) {
        let mut t = Task::new(&d.id, &d.payload);
        t.priority = d.priority as i8;
        t.max_attempts = d.max_attempts;
        t.enqueued_at = d.enqueued_at;
        let h = self.slab.insert(t);
        self.ids.insert(&d.id, h);
        let x = self.extra_mut(h);
        x.error = d.error.into();
        x.failed_at = d.failed_at;
        self.drop_empty_extra(h);
        self.place(h, 0);
    }

    /// Moves dead entries back to ready (all, or the given ids), in the order they died: the
    /// newest entry of each id; an id that is live again keeps its entries dead (as do the older
    /// entries of a revived id). O(ids) with ids (the dead list is indexed by id).
    pub fn retry_dead(&mut self, ids: Option<&[&[u8]]>) -> usize {
        let revive: Vec<Dead> = match ids {
            None => {
                let (index, slab) = (&self.ids, &self.slab);
                self.dead.take_newest_where(|id| index.get(id, slab).is_none())
            }
            Some(list) => {
                let mut picked: Vec<(u64, &[u8])> = list
                    .iter()
                    .filter(|id| !self.contains(id))
                    .filter_map(|id| self.dead.newest_seq(id).map(|s| (s, *id)))
                    .collect();
                picked.sort_unstable();
                picked.dedup_by_key(|p| p.0);
                picked.into_iter().filter_map(|(_, id)| self.dead.take_newest(id)).collect()
            }
        };
        let n = revive.len();
        for d in revive {
            self.revive(d);
        }
        n
    }

    /// Removes ready/delayed tasks and dead entries with these ids.
    /// Removing a ready task from the middle of its FIFO moves the entries after it, so many ids
    /// are removed in one pass over the FIFOs they hit (O(ready + ids) instead of O(ready × ids)).
    pub fn delete(&mut self, ids: &[&[u8]]) -> usize {
        /// `Task::pos` (unused while ready) marks a ready task doomed by this call.
        const DOOMED: u32 = u32::MAX;
        let batch = ids.len() > 16;
        let mut doomed: Vec<Handle> = Vec::new();
        let mut n = 0;
        for id in ids {
            let mut removed = false;
            if let Some(h) = self.ids.get(id, &self.slab) {
                let t = self.slab.get_mut(h);
                if batch && t.state == State::Ready {
                    if t.pos != DOOMED {
                        t.pos = DOOMED;
                        doomed.push(h);
                        n += 1;
                    }
                    removed = true;
                } else if t.state != State::Inflight {
                    self.unindex(h);
                    self.release_unique(h);
                    self.free(h);
                    n += 1;
                    removed = true;
                }
            } else if self.flows.remove(id).is_some() {
                self.modified = true;
                n += 1;
                removed = true;
            }
            if removed {
                // what waits for a deleted task can never run: removed with it
                n += self.drop_dependents(id, false, 0, 0);
            }
            let dead = self.dead.remove_all(id);
            self.modified |= dead > 0;
            n += dead;
        }
        if !doomed.is_empty() {
            let prios: BTreeSet<i8> = doomed.iter().map(|h| -self.slab.get(*h).priority).collect();
            for p in prios {
                let slab = &self.slab;
                if let Some(d) = self.ready.get_mut(&p) {
                    d.retain(|h| slab.get(*h).pos != DOOMED);
                    if d.is_empty() {
                        self.ready.remove(&p);
                    } else {
                        shrink_deque(d);
                    }
                }
            }
            self.ready_len -= doomed.len();
            self.modified = true;
            for h in doomed {
                self.release_unique(h);
                self.free(h);
            }
        }
        self.tidy();
        n
    }

    /// READY: ready+delayed tasks; DEAD: the dead list; ALL: every task and dead entry.
    pub fn clear(&mut self, ready: bool, dead: bool, inflight: bool) -> usize {
        let mut hs: Vec<Handle> = Vec::new();
        if ready {
            hs.extend(self.ready.values().flatten());
            hs.extend(self.delayed.iter());
        }
        if inflight {
            hs.extend(self.inflight.iter());
        }
        let mut n = hs.len();
        for h in hs {
            self.unindex(h);
            self.release_unique(h);
            self.free(h);
        }
        if ready && !self.flows.is_empty() {
            // waiting tasks are not ready yet, but wait for tasks a READY clear may remove
            n += self.flows.clear();
            self.modified = true;
        }
        if dead && !self.dead.is_empty() {
            n += self.dead.len();
            self.dead.clear();
            self.modified = true;
        }
        self.tidy();
        n
    }

    /// Sets a schedule; a paused one stays paused (pause is runtime state, settings re-apply).
    pub fn schedule_set(&mut self, name: &[u8], mut s: Schedule) {
        s.paused |= self.schedules.get(name).is_some_and(|old| old.paused);
        self.schedules.insert(name.to_vec(), s);
        self.modified = true;
    }

    /// Removes a schedule; false if there was none.
    pub fn schedule_del(&mut self, name: &[u8]) -> bool {
        let gone = self.schedules.remove(name).is_some();
        self.modified |= gone;
        gone
    }

    /// Names of schedules due at `now`, in name order.
    pub fn due_schedules(&self, now: i64) -> Vec<Vec<u8>> {
        self.schedules.iter().filter(|(_, s)| !s.paused && s.next_run <= now).map(|(n, _)| n.clone()).collect()
    }

    /// Fires one schedule tick: enqueues its payload under `id` and computes the next tick.
    pub fn fire_schedule(&mut self, name: &[u8], id: Id, now: i64, max_attempts: u32) -> bool {
        let (prio, payload, next) = match self.schedules.get(name) {
            Some(s) => (s.priority, s.payload.clone(), s.next_after_fire(now)),
            None => return false,
        };
        let o = EnqOpts { now, priority: prio, run_at: now, max_attempts, unique: None };
        let added = self.enqueue(&o, vec![(id, payload)]);
        if let Some(s) = self.schedules.get_mut(name) {
            s.next_run = next;
        }
        self.modified = true;
        added[0]
    }

    /// Pauses (or un-pauses) a schedule; `next` (resume) is its next tick. False if none.
    pub fn schedule_pause(&mut self, name: &[u8], paused: bool, next: Option<i64>) -> bool {
        match self.schedules.get_mut(name) {
            Some(s) => {
                s.paused = paused;
                if let Some(n) = next {
                    s.next_run = n;
                }
                self.modified = true;
                true
            }
            None => false,
        }
    }

    /// Enqueues one task from schedule `name` now (`VT.SCHEDULE RUN`), leaving its ticks as they
    /// are. False if there is no such schedule.
    pub fn schedule_run(&mut self, name: &[u8], id: Id, now: i64, max_attempts: u32) -> bool {
        let Some((prio, payload)) = self.schedules.get(name).map(|s| (s.priority, s.payload.clone())) else {
            return false;
        };
        let o = EnqOpts { now, priority: prio, run_at: now, max_attempts, unique: None };
        self.enqueue(&o, vec![(id, payload)])[0]
    }

    /// Skips a due tick of schedule `name` at `now` (nothing is enqueued): the schedule moves to
    /// its next tick as after a fire, and the skip is counted.
    pub fn skip_schedule(&mut self, name: &[u8], now: i64) -> bool {
        match self.schedules.get_mut(name) {
            Some(s) => {
                s.next_run = s.next_after_fire(now);
                self.schedule_ticks_skipped_total += 1;
                self.modified = true;
                true
            }
            None => false,
        }
    }

    // ---------- persistence: the queue as a sequence of self-describing records ----------

    pub fn record_count(&self) -> usize {
        1 + self.slab.len()
            + self.dead.len()
            + self.unique_exp.len()
            + self.schedules.len()
            + self.flows.len()
            + self.rate.is_some() as usize
    }

    pub fn records(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.record_count());
        self.visit_records(&mut |r| out.push(r.to_vec()));
        out
    }

    /// Calls `out` with every record (header first); exactly `record_count()` calls.
    pub fn visit_records(&self, out: &mut dyn FnMut(&[u8])) {
        let mut h = W::new(b'H');
        h.u64(1) // record-format version inside the encver
            .u64(self.next_seq)
            .u64(self.enqueued_total)
            .u64(self.acked_total)
            .u64(self.failed_total)
            .u64(self.retried_total)
            .u64(self.rescued_total)
            .u64(self.dead_total)
            .u64(self.dead_evicted);
        // optional trailing total (absent when 0, so such a queue still loads in older modules)
        if self.schedule_ticks_skipped_total > 0 {
            h.u64(self.schedule_ticks_skipped_total);
        }
        out(&h.buf);
        // Tasks in a stable order (by state index) so rewrites are reproducible.
        let ordered = self
            .ready
            .values()
            .flatten()
            .copied()
            .chain(Heap::sorted(&self.delayed, &self.slab, delayed_key))
            .chain(Heap::sorted(&self.inflight, &self.slab, inflight_key));
        for h in ordered {
            let t = self.view(h);
            let mut w = W::new(b'T');
            w.bytes(t.id)
                .bytes(t.payload)
                .i64(t.priority as i64)
                .u64(t.attempt as u64)
                .u64(t.max_attempts as u64)
                .u64(t.seq)
                .i64(t.enqueued_at)
                .i64(t.run_at)
                .u64(t.state as u64)
                .bytes(t.worker)
                .u64(t.token)
                .i64(t.deadline)
                .bytes(t.error)
                .i64(t.failed_at)
                .opt(t.unique);
            // optional trailing field (absent unless cancelled, so such a queue still loads in
            // older modules)
            if let Some(c) = t.cancel {
                w.bytes(c);
            }
            out(&w.buf);
        }
        for d in self.dead.iter() {
            let mut w = W::new(b'D');
            w.bytes(&d.id)
                .bytes(&d.payload)
                .i64(d.priority as i64)
                .u64(d.attempt as u64)
                .u64(d.max_attempts as u64)
                .i64(d.enqueued_at)
                .bytes(&d.error)
                .i64(d.failed_at);
            out(&w.buf);
        }
        for (exp, k) in &self.unique_exp {
            let task = self.uniques.get(k).and_then(|u| u.task.as_deref());
            let mut w = W::new(b'U');
            w.bytes(k).i64(*exp).opt(task);
            out(&w.buf);
        }
        for (name, s) in &self.schedules {
            let mut w = W::new(b'S');
            w.bytes(name)
                .u64(s.kind as u64)
                .bytes(&s.spec)
                .i64(s.every)
                .i64(s.priority as i64)
                .bytes(&s.payload)
                .i64(s.next_run);
            // optional trailing flag (absent when not paused, as older modules write it)
            if s.paused {
                w.u64(1);
            }
            out(&w.buf);
        }
        if let Some(r) = &self.rate {
            let mut w = W::new(b'R');
            w.i64(r.limit).i64(r.per_ms).i64(r.burst).i64(r.credit).i64(r.at);
            out(&w.buf);
        }
        for (id, w) in self.flows.iter() {
            out(&Flows::record(id, w));
        }
    }

    /// Ends a load: drops the duplicate-detection set.
    pub fn finish_load(&mut self) {
        self.load_seqs = None;
        self.modified = false; // a loaded value is not a change of the keyspace
    }

    /// Applies one record. A 'H' record must come first (it is applied to a fresh queue). Values
    /// outside the protocol's ranges and colliding sequence numbers are rejected (a corrupt RDB/AOF
    /// must fail to load rather than produce a queue whose next save is corrupt).
    pub fn apply_record(&mut self, rec: &[u8]) -> CResult<()> {
        let r = self.apply_one_record(rec);
        self.modified |= r.is_ok();
        r
    }

    fn apply_one_record(&mut self, rec: &[u8]) -> CResult<()> {
        fn prio(v: i64) -> CResult<i32> {
            if (-100..=100).contains(&v) {
                Ok(v as i32)
            } else {
                Err("priority out of range")
            }
        }
        fn u32v(v: u64) -> CResult<u32> {
            u32::try_from(v).map_err(|_| "count out of range")
        }
        let mut r = R::new(rec);
        match r.u8()? {
            b'H' => {
                // validate the whole record into locals first: a rejected header changes nothing
                if r.u64()? != 1 {
                    return Err("unknown queue record version");
                }
                let next_seq = r.u64()?;
                // `take_seq` keeps next_seq <= MAX_SEQ and task seqs < MAX_SEQ (a task with seq
                // MAX_SEQ - 1 makes next_seq MAX_SEQ): accept exactly what a save can write
                if next_seq > MAX_SEQ {
                    return Err("sequence number out of range");
                }
                let mut totals = [0u64; 7];
                for v in totals.iter_mut() {
                    *v = r.u64()?;
                }
                let skipped = if r.done().is_ok() { 0 } else { r.u64()? };
                r.done()?;
                let [enq, acked, failed, retried, rescued, dead, evicted] = totals;
                self.next_seq = next_seq;
                self.load_seqs = Some(HashSet::default());
                self.enqueued_total = enq;
                self.acked_total = acked;
                self.failed_total = failed;
                self.retried_total = retried;
                self.rescued_total = rescued;
                self.dead_total = dead;
                self.dead_evicted = evicted;
                self.schedule_ticks_skipped_total = skipped;
            }
            b'T' => {
                let id = r.bytes()?;
                let payload = r.bytes()?;
                let priority = prio(r.i64()?)?;
                let attempt = u32v(r.u64()?)?;
                let max_attempts = u32v(r.u64()?)?;
                let seq = r.u64()?;
                let enqueued_at = r.i64()?;
                let run_at = r.i64()?;
                let state = State::from_u8(u8::try_from(r.u64()?).map_err(|_| "bad task state")?)?;
                let worker = r.bytes()?;
                let token = r.u64()?;
                let deadline = r.i64()?;
                let error = r.bytes()?;
                let failed_at = r.i64()?;
                let unique = r.opt()?;
                let cancel = if r.done().is_ok() { None } else { Some(r.bytes()?) };
                r.done()?;
                if cancel.is_some() && state != State::Inflight {
                    return Err("cancellation of a task not in flight");
                }
                if max_attempts == 0 || seq >= MAX_SEQ || id.len() > MAX_STORED_ID {
                    return Err("task field out of range");
                }
                if self.contains(&id) {
                    return Err("duplicate task id");
                }
                let seqs = self.load_seqs.as_mut().ok_or("task record outside a load (no header)")?;
                if !seqs.insert(seq) {
                    return Err("duplicate task sequence number");
                }
                self.next_seq = self.next_seq.max(seq + 1);
                let mut t = Task::new(&id, &payload);
                t.priority = priority as i8;
                t.attempt = attempt;
                t.max_attempts = max_attempts;
                t.seq = seq;
                t.enqueued_at = enqueued_at;
                t.run_at = run_at;
                t.state = state;
                t.token = token;
                t.deadline = deadline;
                let h = self.slab.insert(t);
                self.ids.insert(&id, h);
                if !error.is_empty() || failed_at != 0 || unique.is_some() || cancel.is_some() {
                    let x = Extra {
                        error: error.into(),
                        failed_at,
                        unique: unique.map(Into::into),
                        cancel: cancel.map(Into::into),
                    };
                    self.extras.insert(h, x);
                }
                // a worker is only kept for a task in flight (others have none)
                let w = if state == State::Inflight { self.intern_worker(&worker) } else { NIL };
                self.index(h, w);
            }
            b'D' => {
                let d = Dead {
                    id: r.bytes()?,
                    payload: r.bytes()?,
                    priority: prio(r.i64()?)?,
                    attempt: u32v(r.u64()?)?,
                    max_attempts: u32v(r.u64()?)?,
                    enqueued_at: r.i64()?,
                    error: r.bytes()?,
                    failed_at: r.i64()?,
                };
                r.done()?;
                // VT.RETRYDEAD turns the entry back into a task: it must pass the 'T' checks
                if d.max_attempts == 0 {
                    return Err("dead entry field out of range");
                }
                self.dead.push_back(d);
            }
            b'U' => {
                let k = r.bytes()?;
                let exp = r.i64()?;
                let task = r.opt()?;
                r.done()?;
                if let Some(old) = self.uniques.insert(k.clone(), Unique { expires_at: exp, task }) {
                    self.unique_exp.remove(&(old.expires_at, k.clone()));
                }
                self.unique_exp.insert((exp, k));
            }
            b'S' => {
                let name = r.bytes()?;
                let kind = match r.u64()? {
                    0 => SchedKind::Every,
                    1 => SchedKind::Cron,
                    _ => return Err("bad schedule kind"),
                };
                let spec = r.bytes()?;
                let every = r.i64()?;
                let priority = prio(r.i64()?)?;
                if kind == SchedKind::Every && every < 1 {
                    return Err("schedule interval out of range");
                }
                let payload = r.bytes()?;
                let next_run = r.i64()?;
                let paused = match if r.done().is_ok() { 0 } else { r.u64()? } {
                    0 => false,
                    1 => true,
                    _ => return Err("bad schedule pause flag"),
                };
                let cron = if kind == SchedKind::Cron {
                    let s = std::str::from_utf8(&spec).map_err(|_| "bad cron spec")?;
                    Some(parse_cron(s).map_err(|_| "bad cron spec")?)
                } else {
                    None
                };
                r.done()?;
                self.schedules.insert(name, Schedule { kind, spec, every, priority, payload, next_run, cron, paused });
            }
            b'R' => {
                let rl = crate::ratelimit::RateLimit {
                    limit: r.i64()?,
                    per_ms: r.i64()?,
                    burst: r.i64()?,
                    credit: r.i64()?,
                    at: r.i64()?,
                };
                r.done()?;
                if !rl.valid() {
                    return Err("rate limit out of range");
                }
                self.rate = Some(rl);
            }
            b'W' => {
                let (id, w) = Flows::read_record(&mut r)?;
                if self.load_seqs.is_none() {
                    return Err("waiting task record outside a load (no header)");
                }
                if self.contains(&id) {
                    return Err("duplicate task id");
                }
                self.flows.insert(id, w);
            }
            _ => return Err("unknown record kind"),
        }
        r.done()
    }

    /// Bytes this queue holds, for MEMORY USAGE: what the indexes and buffers have allocated
    /// (capacities, allocator rounding), computed from sizes kept up to date, plus one pass over
    /// the small side tables.
    pub fn mem_usage(&self) -> usize {
        const MAP_ENTRY_OVERHEAD: usize = 1; // hashbrown control byte
        let mut n = std::mem::size_of::<Queue>() + self.slab.mem_usage() + self.ids.mem_usage();
        for d in self.ready.values() {
            n += 64 + alloc_size(d.capacity() * 4);
        }
        n += if self.delayed.capacity() > 0 { alloc_size(self.delayed.capacity() * 4) } else { 0 };
        n += if self.inflight.capacity() > 0 { alloc_size(self.inflight.capacity() * 4) } else { 0 };
        n += self.leases.capacity() * std::mem::size_of::<Option<Leases>>();
        for name in self.worker_ids.keys() {
            n += 2 * alloc_size(name.len()) + 24 + 4 + MAP_ENTRY_OVERHEAD;
        }
        n += self.extras.capacity() * (std::mem::size_of::<(Handle, Extra)>() + MAP_ENTRY_OVERHEAD);
        for x in self.extras.values() {
            n += alloc_size(x.error.len()) + x.unique.as_ref().map(|u| alloc_size(u.len())).unwrap_or(0);
            n += x.cancel.as_ref().map(|c| alloc_size(c.len())).unwrap_or(0);
        }
        n += self.dead.mem_usage() + self.flows.mem_usage();
        for (k, u) in &self.uniques {
            n += 2 * alloc_size(k.len()) + u.task.as_ref().map(|t| alloc_size(t.len())).unwrap_or(0) + 80;
        }
        for s in self.schedules.values() {
            n += s.payload.len() + s.spec.len() + 200;
        }
        if let Some(s) = &self.load_seqs {
            n += s.capacity() * 9;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(now: i64) -> EnqOpts<'static> {
        EnqOpts { now, priority: 0, run_at: now, max_attempts: 3, unique: None }
    }

    #[test]
    fn fifo_priority_ack_and_stale_token() {
        let mut q = Queue::default();
        q.enqueue(&opts(1), vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        let o = EnqOpts { priority: 5, ..opts(1) };
        q.enqueue(&o, vec![(b"c".to_vec(), b"3".to_vec())]);
        let mut t = 10u64;
        let mut tok = || {
            t += 1;
            t
        };
        let got = q.fetch(2, b"w", 2, 100, &mut tok);
        assert_eq!(got.iter().map(|f| f.id.clone()).collect::<Vec<_>>(), vec![b"c".to_vec(), b"a".to_vec()]);
        // rescue then stale ack
        assert_eq!(q.rescue_expired(200, 10), 2);
        assert!(!q.ack(200, b"c", Some(got[0].token)));
        assert_eq!(q.task_count(), 3);
        let again = q.fetch(201, b"w", 1, 300, &mut tok);
        assert_eq!(again[0].id, b"c".to_vec());
        assert_eq!(again[0].attempt, 2);
        assert!(q.ack(202, b"c", Some(again[0].token)));
        assert_eq!(q.task_count(), 2);
    }

    #[test]
    fn records_roundtrip() {
        let mut q = Queue::default();
        let o = EnqOpts { unique: Some((b"u", 1000)), ..opts(1) };
        q.enqueue(&o, vec![(b"a".to_vec(), b"1".to_vec())]);
        q.enqueue(&EnqOpts { run_at: 50, ..opts(1) }, vec![(b"d".to_vec(), b"2".to_vec())]);
        let mut tok = || 7u64;
        q.fetch(2, b"w", 1, 100, &mut tok);
        q.fail(3, 10, b"a", Some(7), b"boom", None);
        let mut q2 = Queue::default();
        for r in q.records() {
            q2.apply_record(&r).unwrap();
        }
        assert_eq!(q.sizes(), q2.sizes());
        assert_eq!(q.records(), q2.records());
    }

    #[test]
    fn loader_rejects_colliding_seqs_and_out_of_range_fields() {
        let mut q = Queue::default();
        q.enqueue(&opts(1), vec![(b"a".to_vec(), b"1".to_vec()), (b"d".to_vec(), b"2".to_vec())]);
        let recs = q.records();
        // gauntlet F1: two tasks with the same seq
        let mut dup = recs[2].clone();
        let seq_at = 1 + 8 + 1 + 8 + 1 + 8 + 8 + 8; // kind, id(len+1), payload(len+1), prio, attempt, max
        dup[seq_at..seq_at + 8].copy_from_slice(&recs[1][seq_at..seq_at + 8]);
        let mut q2 = Queue::default();
        q2.apply_record(&recs[0]).unwrap();
        q2.apply_record(&recs[1]).unwrap();
        assert!(q2.apply_record(&dup).is_err());
        // gauntlet F2: priority i32::MIN, state 0xFA_0000_0000
        let prio_at = 1 + 8 + 1 + 8 + 1;
        let mut bad = recs[1].clone();
        bad[prio_at..prio_at + 8].copy_from_slice(&(i32::MIN as i64).to_le_bytes());
        let mut q3 = Queue::default();
        q3.apply_record(&recs[0]).unwrap();
        assert!(q3.apply_record(&bad).is_err());
        let state_at = seq_at + 8 + 8 + 8;
        let mut bad = recs[1].clone();
        bad[state_at..state_at + 8].copy_from_slice(&0xFA_0000_0000u64.to_le_bytes());
        assert!(q3.apply_record(&bad).is_err());
        // a task record without a header is refused
        assert!(Queue::default().apply_record(&recs[1]).is_err());
        // header next_seq near u64::MAX
        let mut h = recs[0].clone();
        h[9..17].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Queue::default().apply_record(&h).is_err());
    }

    /// gauntlet F1b (fuzz `rdb_records`, artifact crash-1a5258647ff9965cf22a8f6abbd008a3745801f8):
    /// a header with next_seq 18446744065119617034 was rejected *after* next_seq was stored, so the
    /// queue then saved a header that does not load. A rejected record must change nothing.
    #[test]
    fn rejected_record_leaves_queue_unchanged() {
        let mut q = Queue::default();
        q.enqueue(&opts(1), vec![(b"a".to_vec(), b"1".to_vec())]);
        let recs = q.records();
        let mut bad_h = recs[0].clone();
        bad_h[9..17].copy_from_slice(&18446744065119617034u64.to_le_bytes());
        let mut fresh = Queue::default();
        assert_eq!(fresh.apply_record(&bad_h), Err("sequence number out of range"));
        assert_eq!(fresh.records(), Queue::default().records());
        assert!(fresh.load_seqs.is_none(), "a rejected header must not start a load");
        let mut q2 = Queue::default();
        for r in &recs {
            q2.apply_record(r).unwrap();
        }
        assert!(q2.apply_record(&bad_h).is_err());
        assert_eq!(q2.records(), recs);
        // every record kind with a trailing byte is rejected without a partial insert
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 1..40 {
            let srecs = crate::fuzzing::sample_queue(seed).records();
            let mut q3 = Queue::default();
            for r in &srecs {
                q3.apply_record(r).unwrap();
            }
            for r in &srecs {
                kinds.insert(r[0]);
                let mut long = r.clone();
                long.push(0);
                assert!(q3.apply_record(&long).is_err(), "record {} with a trailing byte loaded", r[0] as char);
                assert_eq!(q3.records(), srecs, "rejected record {} changed the queue", r[0] as char);
            }
        }
        assert_eq!(kinds.into_iter().collect::<Vec<u8>>(), b"DHRSTUW".to_vec());
    }

    /// Save and load agree on the sequence bound: a task with seq MAX_SEQ - 1 loads and makes
    /// next_seq MAX_SEQ, so the header we then write (next_seq == MAX_SEQ) must load too (it was
    /// rejected: "after load: a record we wrote does not load: sequence number out of range"), and
    /// the next requeue renumbers instead of leaving the loader's range.
    #[test]
    fn seqs_at_the_bound_round_trip_and_renumber_in_order() {
        let mut q = Queue::default();
        let items = [b"a", b"b", b"c"].iter().map(|k| (k.to_vec(), b"1".to_vec())).collect();
        q.enqueue(&opts(1), items);
        let mut recs = q.records();
        let seq_at = 1 + 8 + 1 + 8 + 1 + 8 + 8 + 8;
        let ids: Vec<u8> = recs[1..].iter().map(|r| r[9]).collect();
        for r in recs[1..].iter_mut() {
            let off = match r[9] {
                b'a' => 3,
                b'b' => 2,
                _ => 1,
            };
            r[seq_at..seq_at + 8].copy_from_slice(&(MAX_SEQ - off).to_le_bytes());
        }
        assert_eq!(ids.len(), 3);
        let load = |recs: &[Vec<u8>]| {
            let mut q = Queue::default();
            for r in recs {
                q.apply_record(r).unwrap_or_else(|e| panic!("record does not load: {e}"));
            }
            q
        };
        let mut q = load(&recs);
        assert_eq!(q.next_seq, MAX_SEQ);
        assert_eq!(load(&q.records()).records(), q.records());
        // a header at the bound loads, one past it does not
        let mut h = q.records()[0].clone();
        h[9..17].copy_from_slice(&(MAX_SEQ + 1).to_le_bytes());
        assert!(Queue::default().apply_record(&h).is_err());
        // a requeue needs a fresh seq: renumbered, order kept, still loadable
        let mut t = 0u64;
        let mut tok = || {
            t += 1;
            t
        };
        let got = q.fetch(2, b"w", 1, 100, &mut tok);
        assert_eq!(got[0].id, b"a".to_vec());
        assert_eq!(q.fail(2, 10, b"a", Some(got[0].token), b"x", Some(0)), Some("retry"));
        assert!(q.next_seq < MAX_SEQ && q.tasks().all(|t| t.seq < q.next_seq));
        let back = load(&q.records());
        assert_eq!(back.records(), q.records());
        let order: Vec<Id> = q.fetch(3, b"w", 3, 100, &mut tok).into_iter().map(|f| f.id).collect();
        assert_eq!(order, vec![b"b".to_vec(), b"c".to_vec(), b"a".to_vec()]);
    }

    /// Fuzz `rdb_records` (artifact crash-e4c7c7dca0fdba13e1fff2e351ba02a2f451acce): a dead entry
    /// with max_attempts 0 loaded, VT.RETRYDEAD turned it into a task, and the task record written
    /// next failed to load ("task field out of range"). The 'D' loader applies the 'T' bound.
    #[test]
    fn dead_entry_with_zero_max_attempts_is_rejected() {
        let mut q = Queue::default();
        q.enqueue(&EnqOpts { max_attempts: 1, ..opts(1) }, vec![(b"a".to_vec(), b"1".to_vec())]);
        let mut t = 0u64;
        let got = q.fetch(2, b"w", 1, 100, &mut || {
            t += 1;
            t
        });
        assert_eq!(q.fail(2, 10, b"a", Some(got[0].token), b"x", None), Some("dead"));
        let recs = q.records();
        let d = recs.iter().position(|r| r[0] == b'D').unwrap();
        let max_at = 1 + 8 + 1 + 8 + 1 + 8 + 8; // kind, id, payload, priority, attempt
        assert_eq!(recs[d][max_at..max_at + 8], 1u64.to_le_bytes());
        let mut bad = recs.clone();
        bad[d][max_at..max_at + 8].copy_from_slice(&0u64.to_le_bytes());
        let mut q2 = Queue::default();
        q2.apply_record(&bad[0]).unwrap();
        assert!(q2.apply_record(&bad[d]).is_err());
        assert!(q2.dead.is_empty());
        // the valid entry round-trips through VT.RETRYDEAD
        let mut q3 = Queue::default();
        for r in &recs {
            q3.apply_record(r).unwrap();
        }
        assert_eq!(q3.retry_dead(None), 1);
        let mut q4 = Queue::default();
        for r in &q3.records() {
            q4.apply_record(r).unwrap();
        }
        assert_eq!(q4.records(), q3.records());
    }

    #[test]
    fn skipped_tick_moves_the_schedule_and_is_counted_and_kept() {
        let mut q = Queue::default();
        let sched = Schedule {
            kind: SchedKind::Every,
            spec: b"100".to_vec(),
            every: 100,
            priority: 0,
            payload: b"p".to_vec(),
            next_run: 1000,
            cron: None,
            paused: false,
        };
        q.schedule_set(b"s", sched);
        let header_without = q.records()[0].clone();
        assert!(q.skip_schedule(b"s", 1000));
        assert!(!q.skip_schedule(b"nope", 1000));
        assert_eq!(
            (q.task_count(), q.schedules[&b"s".to_vec()].next_run, q.schedule_ticks_skipped_total),
            (0, 1100, 1)
        );
        // late by several ticks: skipped once, next tick computed from now (as after a fire)
        assert!(q.skip_schedule(b"s", 1550));
        assert_eq!((q.schedules[&b"s".to_vec()].next_run, q.schedule_ticks_skipped_total), (1650, 2));
        let mut q2 = Queue::default();
        for r in q.records() {
            q2.apply_record(&r).unwrap();
        }
        assert_eq!(q2.schedule_ticks_skipped_total, 2);
        assert_eq!(q.records(), q2.records());
        // a zero counter is not written: the header stays what older modules read
        let mut q3 = Queue::default();
        q3.apply_record(&header_without).unwrap();
        assert_eq!(q3.schedule_ticks_skipped_total, 0);
        assert_eq!(q3.records()[0], header_without);
        assert_eq!(q2.records()[0].len(), header_without.len() + 8);
        // anything after the optional counter is still rejected
        let mut bad = q.records()[0].clone();
        bad.extend_from_slice(&[0; 8]);
        assert!(Queue::default().apply_record(&bad).is_err());
    }

    /// Random operations over thousands of tasks (enough to grow, compact and shrink the slab):
    /// after each round every index agrees with the tasks, orders are the documented ones, every
    /// id is found, and the records load back into the same queue.
    #[test]
    fn random_operations_keep_indexes_consistent_through_compaction() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut q = Queue::default();
        let mut next_id = 0u64;
        let mut now = 1_000i64;
        let mut tokens: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut tok = 0u64;
        for round in 0..60 {
            now += 10;
            let grow = round % 20 < 12;
            for _ in 0..(if grow { 400 } else { 40 }) {
                let prio = rnd(5) as i32 - 2;
                let run_at = if rnd(4) == 0 { now + rnd(50) as i64 } else { now };
                let uniq = format!("u{}", rnd(50));
                let unique = (rnd(10) == 0).then(|| (uniq.as_bytes(), now + 100));
                let o = EnqOpts { now, priority: prio, run_at, max_attempts: 1 + rnd(3) as u32, unique };
                next_id += 1;
                q.enqueue(&o, vec![(format!("id{next_id}").into_bytes(), vec![b'p'; rnd(40) as usize])]);
            }
            let worker = format!("w{}", rnd(4)).into_bytes();
            let got = q.fetch(
                now,
                &worker,
                rnd(if grow { 300 } else { 600 }) as usize,
                now + 20 + rnd(30) as i64,
                &mut || {
                    tok += 1;
                    tok
                },
            );
            tokens.extend(got.into_iter().map(|f| (f.id, f.token)));
            let mut keep = Vec::new();
            for (id, t) in tokens.drain(..) {
                match rnd(6) {
                    0..=2 => {
                        assert!(q.ack(now, &id, Some(t)) || !q.contains(&id) || q.get_task(&id).unwrap().token != t)
                    }
                    3 => {
                        q.fail(now, 50, &id, Some(t), b"boom", (rnd(2) == 0).then_some(5));
                    }
                    _ => keep.push((id, t)),
                }
            }
            tokens = keep;
            match rnd(6) {
                0 => {
                    q.rescue_expired(now, 50);
                }
                1 => {
                    q.rescue_worker(b"w1", now, 50);
                }
                2 => {
                    q.extend(b"w2", now + 100);
                }
                3 => {
                    let ids: Vec<Vec<u8>> = (0..20).map(|_| format!("id{}", 1 + rnd(next_id)).into_bytes()).collect();
                    q.delete(&ids.iter().map(|i| &i[..]).collect::<Vec<_>>());
                }
                4 => {
                    q.retry_dead(None);
                }
                _ => {
                    if rnd(8) == 0 {
                        q.clear(true, false, false);
                    }
                }
            }
            // orders
            let key = |t: &TaskView| match t.state {
                State::Ready => (-(t.priority as i64), t.seq as i64),
                State::Delayed => (t.run_at, t.seq as i64),
                State::Inflight => (t.deadline, t.seq as i64),
            };
            let sz = q.sizes();
            let mut total = 0;
            for (st, n) in [(State::Ready, sz.ready), (State::Delayed, sz.delayed), (State::Inflight, sz.inflight)] {
                let v = q.peek(st, 0, usize::MAX);
                assert_eq!(v.len() as i64, n);
                assert!(v.iter().all(|t| t.state == st));
                assert!(v.windows(2).all(|w| key(&w[0]) < key(&w[1])), "{st:?} out of order");
                for t in &v {
                    assert_eq!(q.get_task(t.id).unwrap().seq, t.seq);
                    assert_eq!(t.worker.is_empty(), st != State::Inflight);
                }
                total += v.len();
                let part: Vec<u64> = q.peek(st, 3, 5).iter().map(|t| t.seq).collect();
                let want: Vec<u64> = v.iter().skip(3).take(5).map(|t| t.seq).collect();
                assert_eq!(part, want, "{st:?} page");
            }
            assert_eq!(total, q.task_count());
            // worker lists hold exactly the worker's leases
            for w in 0..4 {
                let name = format!("w{w}").into_bytes();
                let hs = q.worker_handles(&name);
                let n = q.tasks().filter(|t| t.state == State::Inflight && t.worker == &name[..]).count();
                assert_eq!(hs.len(), n);
            }
            let mut back = Queue::default();
            for r in q.records() {
                back.apply_record(&r).unwrap();
            }
            back.finish_load();
            assert_eq!(back.records(), q.records());
        }
        // drain everything: nothing stays allocated
        q.clear(true, true, true);
        assert_eq!((q.task_count(), q.slab.capacity(), q.ids.mem_usage()), (0, 0, 0));
        assert!(q.ready.is_empty() && q.delayed.capacity() == 0 && q.inflight.capacity() == 0);
        assert!(q.worker_ids.is_empty() && q.leases.is_empty() && q.extras.is_empty());
    }

    #[test]
    fn cancel_removes_waiting_and_flags_running_tasks() {
        let mut q = Queue::default();
        let delayed = EnqOpts { run_at: 1_000, ..opts(1) };
        q.enqueue(&opts(1), vec![(b"r".to_vec(), b"1".to_vec()), (b"f".to_vec(), b"2".to_vec())]);
        q.enqueue(&delayed, vec![(b"d".to_vec(), b"3".to_vec())]);
        assert_eq!(q.cancel(2, 10, b"r", b"cancelled"), Some("removed"));
        assert_eq!(q.cancel(2, 10, b"d", b"cancelled: x"), Some("removed"));
        assert_eq!(q.dead.newest(b"d").map(|d| d.error.clone()), Some(b"cancelled: x".to_vec()));
        let mut tok = || 7u64;
        let got = q.fetch(3, b"w", 5, 100, &mut tok);
        assert_eq!(got.len(), 1);
        assert_eq!(q.cancel(4, 10, b"f", b"cancelled"), Some("flagged"));
        assert_eq!(q.cancel(4, 10, b"nope", b"cancelled"), None);
        // the flag survives a save and a load
        let mut back = Queue::default();
        for r in q.records() {
            back.apply_record(&r).unwrap();
        }
        back.finish_load();
        assert_eq!(back.records(), q.records());
        assert_eq!(back.get_task(b"f").and_then(|t| t.cancel.map(|c| c.to_vec())), Some(b"cancelled".to_vec()));
        // extend skips it and names it; a retry dead-letters it
        assert_eq!(q.extend(b"w", 500), (0, vec![b"f".to_vec()]));
        assert_eq!(q.fail(5, 10, b"f", Some(7), b"boom", Some(0)), Some("dead"));
        // an expired cancelled lease is dead-lettered with the cancel error, not run again
        assert_eq!(back.rescue_expired(200, 10), 0);
        assert_eq!(back.dead.newest(b"f").map(|d| d.error.clone()), Some(b"cancelled".to_vec()));
        assert_eq!(back.task_count(), 0);
    }

    #[test]
    fn cron_parses_five_fields() {
        let s = parse_cron("*/5 * * * *").unwrap();
        let n = cron_next(&s, 0);
        assert_eq!(n, 300_000);
        assert!(parse_cron("nope").is_err());
    }
}
