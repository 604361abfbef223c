//! The one source of fresh ids: each store owns an [`IdSource`], and its writer draws from
//! it the id of every node registering without one and of every new cluster.
//!
//! Production stores draw from an RNG seeded by the operating system; tests seed it, so a
//! sequence of writes gives the same ids on every run and on every backend.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::id::Id;

/// Draws fresh random 32-byte ids. The caller checks an id is unused (see `apply`).
pub struct IdSource {
    draw: Mutex<Box<dyn FnMut() -> Id + Send>>,
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSource").finish_non_exhaustive()
    }
}

impl IdSource {
    /// Ids from a cryptographic RNG seeded by the operating system.
    pub fn from_os() -> IdSource {
        IdSource::from_rng(rand::make_rng::<StdRng>())
    }

    /// Ids from a cryptographic RNG seeded with `seed`: the same seed gives the same ids.
    /// For tests.
    pub fn seeded(seed: u64) -> IdSource {
        IdSource::from_rng(StdRng::seed_from_u64(seed))
    }

    fn from_rng(mut rng: StdRng) -> IdSource {
        IdSource::from_fn(move || Id::random(&mut rng))
    }

    /// Ids from `draw`, for tests that need particular ids (collisions, say).
    pub(crate) fn from_fn(draw: impl FnMut() -> Id + Send + 'static) -> IdSource {
        IdSource {
            draw: Mutex::new(Box::new(draw)),
        }
    }

    /// The next id.
    pub fn draw(&self) -> Id {
        // A panic while drawing leaves nothing half-done: the lock stays usable.
        let mut draw = self.draw.lock().unwrap_or_else(|p| p.into_inner());
        (*draw)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_sequence_and_the_os_source_differs() {
        let (a, b) = (IdSource::seeded(7), IdSource::seeded(7));
        let first: Vec<Id> = (0..3).map(|_| a.draw()).collect();
        assert_eq!(first, (0..3).map(|_| b.draw()).collect::<Vec<_>>());
        assert_eq!(first[0].as_bytes().len(), 32);
        assert_ne!(first[0], first[1]);
        assert_ne!(IdSource::from_os().draw(), IdSource::from_os().draw());
    }
}
