//! The queue value: tasks, indexes, dead letters, unique keys, schedules and counters.
//!
//! Everything here is deterministic: every operation takes the clock (`now`), ids, tokens and
//! configs as arguments. The primary resolves those values once and replicates them, so a
//! replica (or an AOF replay) running the same operation reaches the identical state.

use crate::codec::{CResult, R, W};
pub use crate::dead::{Dead, DeadList};
use std::collections::{BTreeMap, BTreeSet};

/// Seeded, fast hash maps/sets (foldhash instead of std's SipHash; see Cargo.toml).
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub use vtasks_protocol::crontab::Cron;

pub type Id = Vec<u8>;

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
    fn from_u8(v: u8) -> CResult<State> {
        Ok(match v {
            0 => State::Ready,
            1 => State::Delayed,
            2 => State::Inflight,
            _ => return Err("bad task state"),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Task {
    pub payload: Vec<u8>,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub seq: u64,
    pub enqueued_at: i64,
    pub run_at: i64,
    pub state: State,
    pub worker: Vec<u8>,
    pub token: u64,
    pub deadline: i64,
    pub error: Vec<u8>,
    pub failed_at: i64,
    pub unique: Option<Vec<u8>>,
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

#[derive(Default)]
pub struct Queue {
    /// Boxed: a table slot is 32 bytes instead of ~190, so inserting into a large (cache-cold)
    /// table writes one line, not three, and growing it moves 6x less memory.
    pub tasks: HashMap<Id, Box<Task>>,
    pub ready: BTreeMap<(i32, u64), Id>,
    pub delayed: BTreeMap<(i64, u64), Id>,
    pub inflight: BTreeMap<(i64, u64), Id>,
    pub by_worker: HashMap<Vec<u8>, HashSet<Id>>,
    pub dead: DeadList,
    pub uniques: HashMap<Vec<u8>, Unique>,
    pub unique_exp: BTreeSet<(i64, Vec<u8>)>,
    pub schedules: BTreeMap<Vec<u8>, Schedule>,
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
            ready: self.ready.len() as i64,
            delayed: self.delayed.len() as i64,
            inflight: self.inflight.len() as i64,
            dead: self.dead.len() as i64,
        }
    }

    /// Earliest time a timer has work on this queue.
    pub fn next_due(&self) -> Option<i64> {
        let mut due = NEVER;
        if let Some(((t, _), _)) = self.delayed.first_key_value() {
            due = due.min(*t);
        }
        if let Some(((t, _), _)) = self.inflight.first_key_value() {
            due = due.min(*t);
        }
        for s in self.schedules.values() {
            due = due.min(s.next_run);
        }
        if due == NEVER {
            None
        } else {
            Some(due)
        }
    }

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

    /// Reassigns the live tasks' sequence numbers to 0..n in their current order (every index is
    /// ordered by `(key, seq)` and seqs are unique, so every index keeps its order) and rebuilds
    /// the indexes. Only reachable after a load of a queue whose sequence numbers are near
    /// [`MAX_SEQ`] (2^62 takes from an empty queue are out of reach).
    fn renumber(&mut self) {
        let mut order: Vec<(u64, Id)> = self.tasks.iter().map(|(id, t)| (t.seq, id.clone())).collect();
        order.sort_unstable();
        self.ready.clear();
        self.delayed.clear();
        self.inflight.clear();
        let n = order.len() as u64;
        for (i, (_, id)) in order.into_iter().enumerate() {
            let t = self.tasks.get_mut(&id).expect("renumber: id from tasks");
            t.seq = i as u64;
            match t.state {
                State::Ready => self.ready.insert((-t.priority, t.seq), id),
                State::Delayed => self.delayed.insert((t.run_at, t.seq), id),
                State::Inflight => self.inflight.insert((t.deadline, t.seq), id),
            };
        }
        self.next_seq = n;
    }

    /// Removes a task's index entries (not the task itself).
    fn unindex(&mut self, id: &[u8], t: &Task) {
        self.modified = true;
        match t.state {
            State::Ready => {
                self.ready.remove(&(-t.priority, t.seq));
            }
            State::Delayed => {
                self.delayed.remove(&(t.run_at, t.seq));
            }
            State::Inflight => {
                self.inflight.remove(&(t.deadline, t.seq));
                if let Some(set) = self.by_worker.get_mut(&t.worker) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_worker.remove(&t.worker);
                    }
                }
            }
        }
    }

    /// Indexes a task according to its current fields.
    fn index(&mut self, id: &[u8], t: &Task) {
        self.modified = true;
        match t.state {
            State::Ready => {
                self.ready.insert((-t.priority, t.seq), id.to_vec());
            }
            State::Delayed => {
                self.delayed.insert((t.run_at, t.seq), id.to_vec());
            }
            State::Inflight => {
                self.inflight.insert((t.deadline, t.seq), id.to_vec());
                self.by_worker.entry(t.worker.clone()).or_default().insert(id.to_vec());
            }
        }
    }

    /// (Re)places a task as ready (run_at <= now) or delayed, with a fresh sequence number.
    fn place(&mut self, id: Id, mut t: Box<Task>, now: i64) {
        t.seq = self.take_seq();
        t.worker.clear();
        t.token = 0;
        t.deadline = 0;
        if t.run_at > now {
            t.state = State::Delayed;
        } else {
            t.state = State::Ready;
            self.became_ready = true;
        }
        self.index(&id, &t);
        self.tasks.insert(id, t);
    }

    pub fn purge_uniques(&mut self, now: i64) {
        while let Some((exp, _)) = self.unique_exp.first() {
            if *exp > now {
                break;
            }
            let (exp, key) = self.unique_exp.pop_first().unwrap();
            if let Some(u) = self.uniques.get(&key) {
                if u.expires_at == exp {
                    let u = self.uniques.remove(&key).unwrap();
                    if let Some(tid) = u.task {
                        if let Some(t) = self.tasks.get_mut(&tid) {
                            if t.unique.as_deref() == Some(&key[..]) {
                                t.unique = None;
                            }
                        }
                    }
                }
            }
        }
    }

    fn release_unique(&mut self, id: &[u8], t: &mut Task) {
        if let Some(k) = t.unique.take() {
            let held = matches!(self.uniques.get(&k), Some(u) if u.task.as_deref() == Some(id));
            if held {
                let u = self.uniques.remove(&k).unwrap();
                self.unique_exp.remove(&(u.expires_at, k));
            }
        }
    }

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
            // What `place` does, through one hash-table probe (entry) instead of two.
            if self.next_seq >= MAX_SEQ {
                self.renumber();
            }
            let slot = match self.tasks.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => continue,
                std::collections::hash_map::Entry::Vacant(v) => v,
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let delayed = o.run_at > o.now;
            let mut t = Box::new(Task {
                payload,
                priority: o.priority,
                attempt: 0,
                max_attempts: o.max_attempts,
                seq,
                enqueued_at: o.now,
                run_at: o.run_at,
                state: if delayed { State::Delayed } else { State::Ready },
                worker: Vec::new(),
                token: 0,
                deadline: 0,
                error: Vec::new(),
                failed_at: 0,
                unique: None,
            });
            if let Some((k, exp)) = o.unique {
                t.unique = Some(k.to_vec());
                self.uniques.insert(k.to_vec(), Unique { expires_at: exp, task: Some(slot.key().clone()) });
                self.unique_exp.insert((exp, k.to_vec()));
            }
            if delayed {
                self.delayed.insert((t.run_at, seq), slot.key().clone());
            } else {
                self.ready.insert((-t.priority, seq), slot.key().clone());
                self.became_ready = true;
            }
            slot.insert(t);
            self.enqueued_total += 1;
            out[i] = true;
            self.modified = true;
        }
        out
    }

    /// Moves due delayed tasks to ready. Returns how many moved.
    pub fn promote(&mut self, now: i64) -> usize {
        let mut n = 0;
        while let Some(((run_at, _), _)) = self.delayed.first_key_value() {
            if *run_at > now {
                break;
            }
            let (_, id) = self.delayed.pop_first().unwrap();
            if let Some(t) = self.tasks.remove(&id) {
                self.place(id, t, now);
                n += 1;
            }
        }
        n
    }

    /// Leases one specific task (ready, or delayed when replaying) to a worker. In place: one
    /// hash lookup, no re-insert (this is the hot path of FETCHBATCH).
    pub fn lease(&mut self, id: &[u8], worker: &[u8], token: u64, deadline: i64) -> Option<&Task> {
        let Queue { tasks, ready, delayed, inflight, by_worker, .. } = self;
        let t = tasks.get_mut(id)?;
        let owned_id = match t.state {
            State::Inflight => return None,
            State::Ready => ready.remove(&(-t.priority, t.seq)),
            State::Delayed => delayed.remove(&(t.run_at, t.seq)),
        }
        .unwrap_or_else(|| id.to_vec());
        t.state = State::Inflight;
        t.attempt = t.attempt.saturating_add(1);
        t.worker.clear();
        t.worker.extend_from_slice(worker);
        t.token = token;
        t.deadline = deadline;
        match by_worker.get_mut(worker) {
            Some(set) => {
                set.insert(owned_id.clone());
            }
            None => {
                by_worker.insert(worker.to_vec(), HashSet::from_iter([owned_id.clone()]));
            }
        }
        inflight.insert((deadline, t.seq), owned_id);
        self.modified = true;
        Some(&*t)
    }

    /// The ids a worker holds, in a deterministic order (by sequence number), so replaying the same
    /// operation on a replica assigns the same sequence numbers.
    fn worker_ids(&self, worker: &[u8]) -> Vec<Id> {
        let mut v: Vec<(u64, Id)> = match self.by_worker.get(worker) {
            Some(s) => s.iter().map(|id| (self.tasks.get(id).map(|t| t.seq).unwrap_or(0), id.clone())).collect(),
            None => return Vec::new(),
        };
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
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
        let mut out = Vec::new();
        while out.len() < count {
            let id = match self.ready.first_key_value() {
                Some((_, id)) => id.clone(),
                None => break,
            };
            let token = tok();
            match self.lease(&id, worker, token, deadline) {
                Some(t) => out.push(Fetched {
                    attempt: t.attempt,
                    payload: t.payload.clone(),
                    id,
                    token,
                }),
                None => {
                    // Index out of sync (should not happen): drop the stale entry.
                    let k = *self.ready.first_key_value().unwrap().0;
                    self.ready.remove(&k);
                }
            }
        }
        out
    }

    fn holds(&self, id: &[u8], token: u64) -> bool {
        matches!(self.tasks.get(id), Some(t) if t.state == State::Inflight && t.token == token)
    }

    pub fn ack(&mut self, id: &[u8], token: Option<u64>) -> bool {
        let token = match token {
            Some(t) => t,
            None => return false,
        };
        if !self.holds(id, token) {
            return false;
        }
        let mut t = self.tasks.remove(id).unwrap();
        self.unindex(id, &t);
        self.release_unique(id, &mut t);
        self.acked_total += 1;
        true
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
    fn dead_letter(&mut self, id: &[u8], error: Vec<u8>, now: i64, cap: usize) {
        if let Some(mut t) = self.tasks.remove(id) {
            self.unindex(id, &t);
            self.release_unique(id, &mut t);
            let d = Dead {
                id: id.to_vec(),
                payload: t.payload,
                priority: t.priority,
                attempt: t.attempt,
                max_attempts: t.max_attempts,
                enqueued_at: t.enqueued_at,
                error,
                failed_at: now,
            };
            self.push_dead(d, cap);
        }
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
        let token = token?;
        if !self.holds(id, token) {
            return None;
        }
        self.failed_total += 1;
        let (attempt, max) = {
            let t = &self.tasks[id];
            (t.attempt, t.max_attempts)
        };
        match retry {
            Some(ms) if attempt < max => {
                let mut t = self.tasks.remove(id).unwrap();
                self.unindex(id, &t);
                t.error = error.to_vec();
                t.failed_at = now;
                t.run_at = now.saturating_add(ms);
                self.place(id.to_vec(), t, now);
                self.retried_total += 1;
                Some("retry")
            }
            _ => {
                self.dead_letter(id, error.to_vec(), now, cap);
                Some("dead")
            }
        }
    }

    fn rescue_one(&mut self, id: &[u8], now: i64, cap: usize, by_worker: bool) -> bool {
        let (attempt, max, worker) = match self.tasks.get(id) {
            Some(t) if t.state == State::Inflight => (t.attempt, t.max_attempts, t.worker.clone()),
            _ => return false,
        };
        if attempt >= max {
            let err = if by_worker {
                format!("rescued from worker {} after {} attempts", String::from_utf8_lossy(&worker), attempt)
            } else {
                format!("lease expired after {attempt} attempts")
            };
            self.dead_letter(id, err.into_bytes(), now, cap);
            false
        } else {
            let mut t = self.tasks.remove(id).unwrap();
            self.unindex(id, &t);
            t.run_at = now;
            self.place(id.to_vec(), t, now);
            self.rescued_total += 1;
            true
        }
    }

    /// Rescues every lease whose deadline has passed. Returns tasks returned to ready.
    pub fn rescue_expired(&mut self, now: i64, cap: usize) -> usize {
        let ids: Vec<Id> = self.inflight.range(..(now.saturating_add(1), 0)).map(|(_, id)| id.clone()).collect();
        ids.iter().filter(|id| self.rescue_one(id, now, cap, false)).count()
    }

    /// Rescues every task a worker holds.
    pub fn rescue_worker(&mut self, worker: &[u8], now: i64, cap: usize) -> usize {
        let ids = self.worker_ids(worker);
        ids.iter().filter(|id| self.rescue_one(id, now, cap, true)).count()
    }

    pub fn extend(&mut self, worker: &[u8], deadline: i64) -> usize {
        let ids = self.worker_ids(worker);
        let mut n = 0;
        for id in ids {
            if let Some(t) = self.tasks.get_mut(&id) {
                if t.state == State::Inflight {
                    let old = (t.deadline, t.seq);
                    t.deadline = deadline;
                    let new = (deadline, t.seq);
                    self.inflight.remove(&old);
                    self.inflight.insert(new, id.clone());
                    n += 1;
                    self.modified = true;
                }
            }
        }
        n
    }

    fn revive(&mut self, d: Dead) {
        let t = Task {
            payload: d.payload,
            priority: d.priority,
            attempt: 0,
            max_attempts: d.max_attempts,
            seq: 0,
            enqueued_at: d.enqueued_at,
            run_at: 0,
            state: State::Ready,
            worker: Vec::new(),
            token: 0,
            deadline: 0,
            error: d.error,
            failed_at: d.failed_at,
            unique: None,
        };
        self.place(d.id, Box::new(t), 0);
    }

    /// Moves dead entries back to ready (all, or the given ids), in the order they died: the
    /// newest entry of each id; an id that is live again keeps its entries dead (as do the older
    /// entries of a revived id). O(ids) with ids (the dead list is indexed by id).
    pub fn retry_dead(&mut self, ids: Option<&[&[u8]]>) -> usize {
        let revive: Vec<Dead> = match ids {
            None => {
                let tasks = &self.tasks;
                self.dead.take_newest_where(|id| !tasks.contains_key(id))
            }
            Some(list) => {
                let mut picked: Vec<(u64, &[u8])> = list
                    .iter()
                    .filter(|id| !self.tasks.contains_key(**id))
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
    pub fn delete(&mut self, ids: &[&[u8]]) -> usize {
        let mut n = 0;
        for id in ids {
            if let Some(t) = self.tasks.get(*id) {
                if t.state != State::Inflight {
                    let mut t = self.tasks.remove(*id).unwrap();
                    self.unindex(id, &t);
                    self.release_unique(id, &mut t);
                    n += 1;
                }
            }
            let dead = self.dead.remove_all(id);
            self.modified |= dead > 0;
            n += dead;
        }
        n
    }

    /// READY: ready+delayed tasks; DEAD: the dead list; ALL: every task and dead entry.
    pub fn clear(&mut self, ready: bool, dead: bool, inflight: bool) -> usize {
        let mut n = 0;
        let mut ids: Vec<Id> = Vec::new();
        if ready {
            ids.extend(self.ready.values().cloned());
            ids.extend(self.delayed.values().cloned());
        }
        if inflight {
            ids.extend(self.inflight.values().cloned());
        }
        for id in ids {
            if let Some(mut t) = self.tasks.remove(&id) {
                self.unindex(&id, &t);
                self.release_unique(&id, &mut t);
                n += 1;
            }
        }
        if dead && !self.dead.is_empty() {
            n += self.dead.len();
            self.dead.clear();
            self.modified = true;
        }
        n
    }

    pub fn schedule_set(&mut self, name: &[u8], s: Schedule) {
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
        self.schedules.iter().filter(|(_, s)| s.next_run <= now).map(|(n, _)| n.clone()).collect()
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
        1 + self.tasks.len() + self.dead.len() + self.unique_exp.len() + self.schedules.len()
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
            .chain(self.delayed.values())
            .chain(self.inflight.values());
        for id in ordered {
            let t = &self.tasks[id];
            let mut w = W::new(b'T');
            w.bytes(id)
                .bytes(&t.payload)
                .i64(t.priority as i64)
                .u64(t.attempt as u64)
                .u64(t.max_attempts as u64)
                .u64(t.seq)
                .i64(t.enqueued_at)
                .i64(t.run_at)
                .u64(t.state as u64)
                .bytes(&t.worker)
                .u64(t.token)
                .i64(t.deadline)
                .bytes(&t.error)
                .i64(t.failed_at)
                .opt(t.unique.as_deref());
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
            out(&w.buf);
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
                let t = Task {
                    payload: r.bytes()?,
                    priority: prio(r.i64()?)?,
                    attempt: u32v(r.u64()?)?,
                    max_attempts: u32v(r.u64()?)?,
                    seq: r.u64()?,
                    enqueued_at: r.i64()?,
                    run_at: r.i64()?,
                    state: State::from_u8(u8::try_from(r.u64()?).map_err(|_| "bad task state")?)?,
                    worker: r.bytes()?,
                    token: r.u64()?,
                    deadline: r.i64()?,
                    error: r.bytes()?,
                    failed_at: r.i64()?,
                    unique: r.opt()?,
                };
                r.done()?;
                if t.max_attempts == 0 || t.seq >= MAX_SEQ {
                    return Err("task field out of range");
                }
                if self.tasks.contains_key(&id) {
                    return Err("duplicate task id");
                }
                let taken = match t.state {
                    State::Ready => self.ready.contains_key(&(-t.priority, t.seq)),
                    State::Delayed => self.delayed.contains_key(&(t.run_at, t.seq)),
                    State::Inflight => self.inflight.contains_key(&(t.deadline, t.seq)),
                };
                let seqs = self.load_seqs.as_mut().ok_or("task record outside a load (no header)")?;
                if taken || !seqs.insert(t.seq) {
                    return Err("duplicate task sequence number");
                }
                self.next_seq = self.next_seq.max(t.seq + 1);
                self.index(&id, &t);
                self.tasks.insert(id, Box::new(t));
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
                let cron = if kind == SchedKind::Cron {
                    let s = std::str::from_utf8(&spec).map_err(|_| "bad cron spec")?;
                    Some(parse_cron(s).map_err(|_| "bad cron spec")?)
                } else {
                    None
                };
                r.done()?;
                self.schedules.insert(name, Schedule { kind, spec, every, priority, payload, next_run, cron });
            }
            _ => return Err("unknown record kind"),
        }
        r.done()
    }

    pub fn mem_usage(&self) -> usize {
        let mut n = std::mem::size_of::<Queue>();
        for (id, t) in &self.tasks {
            n += 3 * id.len() + t.payload.len() + t.error.len() + t.worker.len() + 200;
        }
        n += self.dead.mem_usage();
        for (k, _) in &self.uniques {
            n += 2 * k.len() + 80;
        }
        for s in self.schedules.values() {
            n += s.payload.len() + s.spec.len() + 200;
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
        assert!(!q.ack(b"c", Some(got[0].token)));
        assert_eq!(q.tasks.len(), 3);
        let again = q.fetch(201, b"w", 1, 300, &mut tok);
        assert_eq!(again[0].id, b"c".to_vec());
        assert_eq!(again[0].attempt, 2);
        assert!(q.ack(b"c", Some(again[0].token)));
        assert_eq!(q.tasks.len(), 2);
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
        assert_eq!(kinds.into_iter().collect::<Vec<u8>>(), b"DHSTU".to_vec());
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
        assert!(q.next_seq < MAX_SEQ && q.tasks.values().all(|t| t.seq < q.next_seq));
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
        };
        q.schedule_set(b"s", sched);
        let header_without = q.records()[0].clone();
        assert!(q.skip_schedule(b"s", 1000));
        assert!(!q.skip_schedule(b"nope", 1000));
        assert_eq!((q.tasks.len(), q.schedules[&b"s".to_vec()].next_run, q.schedule_ticks_skipped_total), (0, 1100, 1));
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

    #[test]
    fn cron_parses_five_fields() {
        let s = parse_cron("*/5 * * * *").unwrap();
        let n = cron_next(&s, 0);
        assert_eq!(n, 300_000);
        assert!(parse_cron("nope").is_err());
    }
}
