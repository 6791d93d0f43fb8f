//! Picks the backend for a statement: the primary for writes, a replica by weight for reads.
//! Pure functions of the cluster snapshot; no I/O.

use pgpilot_protocol::classify::Target;

use crate::config::Role;
use crate::control::{ClusterState, Status};

/// The backend id for `target`; `roll` is a uniformly random number for the weighted pick.
/// Reads go to the primary when no replica with weight is up.
pub fn pick(state: &ClusterState, target: Target, roll: u64) -> Option<usize> {
    let usable = |b: &&crate::control::BackendState| b.status == Status::Up && b.addr.is_some();
    if target == Target::Replica {
        let total: u64 = state
            .backends
            .iter()
            .filter(usable)
            .filter(|b| b.role == Role::Replica)
            .map(|b| u64::from(b.weight))
            .sum();
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
    state.primary().filter(usable).map(|b| b.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::BackendState;

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
        assert_eq!(pick(&s, Target::Primary, 7), Some(0));
        let mut counts = [0; 3];
        for roll in 0..400 {
            counts[pick(&s, Target::Replica, roll).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 100, 300]);
    }

    #[test]
    fn reads_fall_back_to_the_primary() {
        let s = state(&[
            (Role::Primary, 0, Status::Up),
            (Role::Replica, 1, Status::Down),
            (Role::Replica, 0, Status::Up),
        ]);
        assert_eq!(pick(&s, Target::Replica, 3), Some(0));
    }
}
