//! A byte budget shared by many streams: bytes received but not yet
//! written somewhere slower wait within it, so memory stays bounded by a
//! configured figure however many uploads run at once. Who cannot take
//! room waits, and so does its client's stream (HTTP/2 flow control).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Room for bytes in flight, counted in KiB; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    room: Arc<Semaphore>,
    /// The whole budget, in KiB (a larger piece takes all of it).
    kib: u32,
}

impl ByteBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX >> 3);
        ByteBudget {
            room: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// Room for `len` bytes (all of it for a piece larger than the budget),
    /// held until the permit is dropped; None only if the budget is closed.
    pub(crate) async fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.kib);
        self.room.clone().acquire_many_owned(kib).await.ok()
    }

    /// KiB free now (tests watch a budget fill).
    #[cfg(test)]
    pub(crate) fn free_kib(&self) -> usize {
        self.room.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_piece_waits_until_room_is_given_back() {
        let budget = ByteBudget::new(4096);
        let held = budget.take(3000).await.unwrap();
        assert_eq!(budget.free_kib(), 1);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(2048).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "took room the budget did not have");
        drop(held);
        waiting.await.unwrap().unwrap();
        // A piece larger than the whole budget takes all of it.
        let all = budget.take(1 << 20).await.unwrap();
        assert_eq!(budget.free_kib(), 0);
        drop(all);
        assert_eq!(budget.free_kib(), 4);
    }
}
