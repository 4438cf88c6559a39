//! The task that drives the batching policy for one model version.
//!
//! It owns the [`Batcher`] and the version's [`InstancePool`]: items arrive on `inbox`, idle
//! instances report on `idle`, and whenever the policy says so a batch is turned into an
//! instance task by `make_task` and handed to an idle instance. When `inbox` closes (the
//! version is unloaded or the worker stops) everything already received is still run; the task
//! ends when the last batch is done and the instances are joined.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::policy::{BatchLimits, Batcher, Decision, Item};
use crate::runtime::instances::{InstancePool, InstanceTask};

/// Turns a batch into work for an instance thread.
pub type MakeTask<K, T> = Arc<dyn Fn(Vec<Item<K, T>>) -> InstanceTask + Send + Sync>;

/// Items drained from the inbox in one go before the policy is asked again, so a flood of
/// arrivals cannot starve dispatching.
const DRAIN_LIMIT: usize = 1024;

/// Runs until `inbox` is closed and every received item has been dispatched and run.
pub async fn batch_task<K, T>(
    limits: BatchLimits,
    mut inbox: mpsc::UnboundedReceiver<Item<K, T>>,
    pool: InstancePool,
    mut idle_rx: mpsc::UnboundedReceiver<usize>,
    make_task: MakeTask<K, T>,
) where
    K: PartialEq + Clone + Send + 'static,
    T: Send + 'static,
{
    let instances = pool.len();
    let mut idle: Vec<usize> = (0..instances).rev().collect();
    let mut batcher: Batcher<K, T> = Batcher::new(limits);
    let mut open = true;
    loop {
        let mut deadline = None;
        loop {
            match batcher.decide(Instant::now(), idle.len()) {
                Decision::Dispatch => {
                    let batch = batcher.take();
                    let Some(instance) = idle.pop() else { break };
                    if pool.run(instance, make_task(batch)).is_err() {
                        tracing::error!(instance, "Inference instance stopped; its batch is dropped and will be redelivered");
                    }
                }
                Decision::WaitUntil(at) => {
                    deadline = Some(at);
                    break;
                }
                Decision::Idle => break,
            }
        }
        if !open && batcher.is_empty() && idle.len() == instances {
            break;
        }
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(index) = idle_rx.recv() => idle.push(index),
            item = inbox.recv(), if open => match item {
                Some(item) => {
                    batcher.push(item);
                    for _ in 0..DRAIN_LIMIT {
                        match inbox.try_recv() {
                            Ok(item) => batcher.push(item),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            () = sleep => {}
        }
    }
    tokio::task::spawn_blocking(move || pool.join()).await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ModelSignature, Tensor};
    use crate::runtime::{Backend, RuntimeError};
    use std::sync::Mutex;
    use std::time::Duration;

    struct CountingBackend {
        signature: ModelSignature,
    }

    impl Backend for CountingBackend {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }
        fn infer(&mut self, _inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            std::thread::sleep(Duration::from_millis(2));
            Ok(vec![])
        }
    }

    fn backend() -> Box<dyn Backend> {
        Box::new(CountingBackend {
            signature: ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
        })
    }

    /// Every item is run exactly once, batches respect the limit, and a burst forms batches
    /// larger than one while the single instance is busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_every_item_once_and_batches_under_load() {
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let pool = InstancePool::start("test", vec![backend()], &[], idle_tx).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let record = seen.clone();
        let make_task: MakeTask<u8, usize> = Arc::new(move |batch: Vec<Item<u8, usize>>| {
            let record = record.clone();
            Box::new(move |backend: &mut dyn Backend| {
                backend.infer(&[]).unwrap();
                record
                    .lock()
                    .unwrap()
                    .push(batch.into_iter().map(|i| i.payload).collect());
            })
        });
        let task = tokio::spawn(batch_task(
            BatchLimits::new(8, Duration::from_millis(5), &[]),
            rx,
            pool,
            idle_rx,
            make_task,
        ));
        for id in 0..200 {
            tx.send(Item {
                key: 0u8,
                rows: 1,
                arrived: Instant::now(),
                payload: id,
            })
            .unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let batches = seen.lock().unwrap().clone();
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        assert_eq!(all.len(), 200);
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 8));
        assert!(
            batches.iter().any(|b| b.len() > 1),
            "no batching under a burst: {batches:?}"
        );
    }
}
