//! Picks the backend for a statement: the primary for writes, a replica by weight for reads.
//! Pure functions of the cluster snapshot; no I/O.

use pgpilot_protocol::classify::Target;

use crate::config::Role;
use crate::control::{BackendState, ClusterState};

/// The backend id for `target`; `roll` is a uniformly random number for the weighted pick;
/// `benched` says which backends this core saw fail a moment ago. Reads go to the primary when
/// no replica with weight is usable.
pub fn pick(
    state: &ClusterState,
    target: Target,
    roll: u64,
    benched: impl Fn(usize) -> bool,
) -> Option<usize> {
    let reachable = |b: &&BackendState| b.addr.is_some() && !benched(b.id);
    let usable = |b: &&BackendState| b.status.takes_reads() && reachable(b);
    if target == Target::Replica {
        let total = read_weight(state, &benched);
        if total > 0 {
            let mut at = roll % total;
            for b in state
                .backends
                .iter()
                .filter(usable)
                .filter(|b| b.role == Role::Replica)
            {
                if at < u64::from(b.weight) {
                    return Some(b.id);
                }
                at -= u64::from(b.weight);
            }
        }
    }
    // The primary is never detached: whatever its checks say, work that needs it goes there
    // (the platform fails it over, and the proxy follows its name).
    state.primary().filter(reachable).map(|b| b.id)
}

/// The weight of the replicas that take reads now: 0 when reads would go to the primary.
pub fn read_weight(state: &ClusterState, benched: impl Fn(usize) -> bool) -> u64 {
    state
        .backends
        .iter()
        .filter(|b| b.role == Role::Replica && b.status.takes_reads())
        .filter(|b| b.addr.is_some() && !benched(b.id))
        .map(|b| u64::from(b.weight))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Status;

    fn state(weights: &[(Role, u32, Status)]) -> ClusterState {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(id, &(role, weight, status))| BackendState {
                id,
                name: format!("b{id}"),
                addr: Some(([127, 0, 0, 1], 5432 + id as u16).into()),
                role,
                weight,
                status,
                lsn: None,
            })
            .collect();
        ClusterState { epoch: 1, backends }
    }

    #[test]
    fn writes_go_to_the_primary_and_reads_follow_weights() {
        let s = state(&[
            (Role::Primary, 0, Status::Up),
            (Role::Replica, 1, Status::Up),
            (Role::Replica, 3, Status::Up),
        ]);
        assert_eq!(pick(&s, Target::Primary, 7, |_| false), Some(0));
        let mut counts = [0; 3];
        for roll in 0..400 {
            counts[pick(&s, Target::Replica, roll, |_| false).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 100, 300]);
    }

    #[test]
    fn benched_replicas_are_skipped() {
        let s = state(&[
            (Role::Primary, 0, Status::Up),
            (Role::Replica, 1, Status::Up),
            (Role::Replica, 1, Status::Up),
        ]);
        for roll in 0..10 {
            assert_eq!(pick(&s, Target::Replica, roll, |id| id == 1), Some(2));
        }
        assert_eq!(pick(&s, Target::Replica, 0, |id| id != 0), Some(0));
    }

    #[test]
    fn reads_fall_back_to_the_primary() {
        let s = state(&[
            (Role::Primary, 0, Status::Up),
            (Role::Replica, 1, Status::Down),
            (Role::Replica, 0, Status::Up),
        ]);
        assert_eq!(pick(&s, Target::Replica, 3, |_| false), Some(0));
    }
}
