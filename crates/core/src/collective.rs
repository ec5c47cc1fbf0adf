//! In-process collectives for a model split over several backends (tensor/expert parallel).
//!
//! The shards of one model run in one process, one thread each. They find each other by a
//! group name the host hands every backend at creation ([`ShardOptions`]). A host-memory
//! backend sums through [`HostGroup`]; a GPU backend uses [`exchange`] only to pass its
//! communicator's id (NCCL's unique id) from rank 0 to the others.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How long a rank waits for the others before it reports that one of them never came
/// (a shard that failed before reaching the collective).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// Which shard of a split model a backend instance runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardOptions {
    pub rank: usize,
    pub world: usize,
    /// Unique per model instance in this process; the shards of one model share it.
    pub group: String,
}

impl ShardOptions {
    pub fn check(&self) -> Result<()> {
        if self.world == 0 || self.rank >= self.world {
            return Err(Error::Input(format!(
                "shard rank {} of world {} is out of range",
                self.rank, self.world
            )));
        }
        Ok(())
    }
}

/// A fresh group name, unique within this process.
pub fn new_group_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("gptoss-{}-{n}", std::process::id())
}

#[derive(Default)]
struct RoundState {
    /// Each rank's contribution to the current round.
    slots: Vec<Option<Vec<f32>>>,
    /// The sum, once every rank has contributed.
    sum: Option<Vec<f32>>,
    taken: usize,
    /// Steps each rank has begun (`begin_step`); the ranks of a model run steps in lockstep.
    steps: Vec<u64>,
    /// (step, rank, why): that rank failed in that step, so nobody waits for it there.
    aborted: Option<(u64, usize, String)>,
}

impl RoundState {
    /// Why `rank` must stop waiting: another rank failed in the step it is in.
    fn stopped(&self, rank: usize) -> Option<String> {
        match &self.aborted {
            Some((step, failed, why)) if *step == self.steps[rank] => Some(format!(
                "all-reduce: rank {rank} stopped because rank {failed} failed: {why}"
            )),
            _ => None,
        }
    }
}

/// Sums f32 vectors across the ranks of one group, in rank order (deterministic).
pub struct HostGroup {
    world: usize,
    state: Mutex<RoundState>,
    cv: Condvar,
}

impl HostGroup {
    fn new(world: usize) -> HostGroup {
        HostGroup {
            world,
            state: Mutex::new(RoundState {
                slots: vec![None; world],
                steps: vec![0; world],
                ..Default::default()
            }),
            cv: Condvar::new(),
        }
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// `rank` starts a step (an execute of its part of the model).
    pub fn begin_step(&self, rank: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.steps[rank] += 1;
    }

    /// `rank` failed in its current step: the ranks waiting in (or later reaching) an
    /// all-reduce of that step return an error naming it instead of waiting for it; the
    /// step's partial round is dropped. The next step starts clean.
    pub fn abort(&self, rank: usize, why: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let step = s.steps[rank];
        if s.aborted.as_ref().is_some_and(|(a, _, _)| *a == step) {
            return; // the first failure of the step is the one to report
        }
        s.aborted = Some((step, rank, why.to_string()));
        s.slots.iter_mut().for_each(|x| *x = None);
        s.sum = None;
        s.taken = 0;
        self.cv.notify_all();
    }

    /// Replace `data` with the element-wise sum of every rank's `data`. Each rank calls this
    /// the same number of times with vectors of the same length.
    pub fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<()> {
        let timeout = |what: &str| {
            Error::Input(format!(
                "all-reduce: rank {rank} waited {} s for the other ranks {what}; \
                 another shard probably failed",
                RENDEZVOUS_TIMEOUT.as_secs()
            ))
        };
        let lock = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A rank that is a round ahead waits until the previous sum has been read by all.
        let (mut s, w) = self
            .cv
            .wait_timeout_while(lock, RENDEZVOUS_TIMEOUT, |s| {
                (s.sum.is_some() || s.slots[rank].is_some()) && s.stopped(rank).is_none()
            })
            .unwrap_or_else(|p| p.into_inner());
        if let Some(why) = s.stopped(rank) {
            return Err(Error::Input(why));
        }
        if w.timed_out() {
            return Err(timeout("to finish the previous round"));
        }
        if let Some(other) = s.slots.iter().flatten().next() {
            if other.len() != data.len() {
                return Err(Error::Input(format!(
                    "all-reduce: rank {rank} sends {} values, another rank {}",
                    data.len(),
                    other.len()
                )));
            }
        }
        s.slots[rank] = Some(data.to_vec());
        if s.slots.iter().all(Option::is_some) {
            let mut sum = vec![0.0f32; data.len()];
            for slot in s.slots.iter().flatten() {
                for (a, b) in sum.iter_mut().zip(slot) {
                    *a += *b;
                }
            }
            s.sum = Some(sum);
            self.cv.notify_all();
        }
        let (mut s, w) = self
            .cv
            .wait_timeout_while(s, RENDEZVOUS_TIMEOUT, |s| {
                s.sum.is_none() && s.stopped(rank).is_none()
            })
            .unwrap_or_else(|p| p.into_inner());
        if let Some(why) = s.stopped(rank) {
            return Err(Error::Input(why));
        }
        if w.timed_out() {
            s.slots[rank] = None;
            return Err(timeout("to contribute"));
        }
        data.copy_from_slice(s.sum.as_ref().expect("waited for it"));
        s.taken += 1;
        if s.taken == self.world {
            s.taken = 0;
            s.sum = None;
            s.slots.iter_mut().for_each(|x| *x = None);
            self.cv.notify_all();
        }
        Ok(())
    }
}

fn groups() -> &'static Mutex<HashMap<String, Weak<HostGroup>>> {
    static G: OnceLock<Mutex<HashMap<String, Weak<HostGroup>>>> = OnceLock::new();
    G.get_or_init(Default::default)
}

/// The group `shard` belongs to, created by whichever rank asks first.
pub fn host_group(shard: &ShardOptions) -> Result<Arc<HostGroup>> {
    shard.check()?;
    let mut map = groups().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(g) = map.get(&shard.group).and_then(Weak::upgrade) {
        if g.world != shard.world {
            return Err(Error::Input(format!(
                "shard group '{}' has {} ranks, but rank {} says {}",
                shard.group, g.world, shard.rank, shard.world
            )));
        }
        return Ok(g);
    }
    let g = Arc::new(HostGroup::new(shard.world));
    map.insert(shard.group.clone(), Arc::downgrade(&g));
    Ok(g)
}

/// Rank 0 of `shard.group` runs `make` and every rank gets its bytes (e.g. NCCL's unique id,
/// which every rank needs to join the communicator). Blocks until rank 0 has published.
pub fn exchange(shard: &ShardOptions, make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    type Board = (Mutex<HashMap<String, Vec<u8>>>, Condvar);
    static BOARD: OnceLock<Board> = OnceLock::new();
    shard.check()?;
    let (board, cv) = BOARD.get_or_init(Default::default);
    if shard.rank == 0 {
        let bytes = make()?;
        board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard.group.clone(), bytes.clone());
        cv.notify_all();
        return Ok(bytes);
    }
    let lock = board.lock().unwrap_or_else(|p| p.into_inner());
    let (map, w) = cv
        .wait_timeout_while(lock, RENDEZVOUS_TIMEOUT, |m| !m.contains_key(&shard.group))
        .unwrap_or_else(|p| p.into_inner());
    if w.timed_out() {
        return Err(Error::Input(format!(
            "rank {} of shard group '{}' waited {} s for rank 0 to start the group",
            shard.rank,
            shard.group,
            RENDEZVOUS_TIMEOUT.as_secs()
        )));
    }
    Ok(map[&shard.group].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(rank: usize, world: usize, group: &str) -> ShardOptions {
        ShardOptions {
            rank,
            world,
            group: group.into(),
        }
    }

    #[test]
    fn three_ranks_sum_over_many_rounds() {
        let name = new_group_name();
        std::thread::scope(|s| {
            for r in 0..3 {
                let name = name.clone();
                s.spawn(move || {
                    let g = host_group(&shard(r, 3, &name)).unwrap();
                    for round in 0..50 {
                        let mut v = vec![(r * 10 + round) as f32, 1.0];
                        g.all_reduce_sum(r, &mut v).unwrap();
                        // 0+10+20 + 3*round
                        assert_eq!(v, vec![(30 + 3 * round) as f32, 3.0], "round {round}");
                    }
                });
            }
        });
    }

    #[test]
    fn a_failed_rank_stops_the_others_and_the_next_step_works() {
        let name = new_group_name();
        let start = std::time::Instant::now();
        let errors: Vec<Option<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let name = name.clone();
                    s.spawn(move || {
                        let g = host_group(&shard(r, 3, &name)).unwrap();
                        // Step 1: a round, then rank 1 fails before the second round. The
                        // others stop with an error in whichever round they are in (the
                        // first if rank 1 fails before they have read its sum).
                        g.begin_step(r);
                        let mut v = vec![1.0];
                        let first = g.all_reduce_sum(r, &mut v);
                        let failed = if r == 1 {
                            first.unwrap();
                            g.abort(1, "out of memory on device 1");
                            None
                        } else {
                            first
                                .and_then(|_| g.all_reduce_sum(r, &mut v))
                                .err()
                                .map(|e| e.to_string())
                        };
                        // Step 2: everyone again, normally.
                        g.begin_step(r);
                        let mut w = vec![r as f32];
                        g.all_reduce_sum(r, &mut w).unwrap();
                        assert_eq!(w, vec![3.0]);
                        failed
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        for r in [0, 2] {
            let e = errors[r].as_deref().expect("rank stopped with an error");
            assert!(
                e.contains(&format!("rank {r} stopped because rank 1 failed"))
                    && e.contains("out of memory on device 1"),
                "{e}"
            );
        }
    }

    #[test]
    fn exchange_hands_rank0_bytes_to_all() {
        let name = new_group_name();
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .rev()
                .map(|r| {
                    let sh = shard(r, 4, &name);
                    s.spawn(move || exchange(&sh, || Ok(vec![7, 8, 9])).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|g| g == &vec![7, 8, 9]), "{got:?}");
    }

    #[test]
    fn bad_shards_are_refused() {
        assert!(host_group(&shard(2, 2, "x")).is_err());
        let name = new_group_name();
        let _a = host_group(&shard(0, 2, &name)).unwrap();
        let err = host_group(&shard(1, 3, &name)).err().unwrap().to_string();
        assert!(err.contains("has 2 ranks"), "{err}");
    }
}
