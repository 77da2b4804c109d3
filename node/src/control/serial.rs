//! [`Serialized`]: a value whose changing operations run one at a time on blocking
//! threads, while reads run at once, beside them.
//!
//! A host's manager is one: a stage (rebuilding images, running debugfs and e2fsck on a
//! VO's file system) may take minutes, and `vw status` must not wait behind it. The
//! manager is safe to read while it changes (its records are RocksDB batches, its
//! driver's calls are separate programs), so only the operations that change it are
//! serialised.

use std::sync::{Arc, Mutex, PoisonError};

/// `T`, shared, with changes one at a time.
#[derive(Debug)]
pub struct Serialized<T> {
    inner: Arc<T>,
    ops: Arc<Mutex<()>>,
}

impl<T: Send + Sync + 'static> Serialized<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Serialized { inner: Arc::new(inner), ops: Arc::default() }
    }

    /// Runs `f`, which changes things, on a blocking thread after every other such
    /// operation. Not cancel-safe: `f` runs to its end even if the caller goes away.
    pub async fn op<R: Send + 'static>(
        &self,
        f: impl FnOnce(&T) -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        let (inner, ops) = (Arc::clone(&self.inner), Arc::clone(&self.ops));
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = ops.lock().unwrap_or_else(PoisonError::into_inner);
            f(&inner)
        })
        .await
    }

    /// Runs `f`, which only reads, on a blocking thread at once, beside any operation.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&T) -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A read answers while an operation holds the value (a stage running its tools);
    /// a second operation waits for the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_never_waits_behind_an_operation() {
        let value = Arc::new(Serialized::new(7u32));
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let long = {
            let value = Arc::clone(&value);
            tokio::spawn(async move {
                value
                    .op(move |_| {
                        started.send(()).expect("started");
                        held.recv().expect("released");
                    })
                    .await
            })
        };
        running.recv_timeout(Duration::from_secs(30)).expect("the operation started");
        let read = tokio::time::timeout(Duration::from_secs(30), value.read(|v| *v)).await;
        assert_eq!(read.expect("the read did not wait").expect("read"), 7);
        let second = {
            let value = Arc::clone(&value);
            tokio::spawn(async move { value.op(|v| *v + 1).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "a second operation waits for the first");
        release.send(()).expect("release");
        long.await.expect("task").expect("op");
        assert_eq!(second.await.expect("task").expect("op"), 8);
    }
}
