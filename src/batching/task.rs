//! The task that drives the batching policy for one model version.
//!
//! It owns the [`Batcher`] and the version's [`InstancePool`]: items arrive on `inbox`, idle
//! instances report on `idle`, and whenever the policy says so a batch is turned into an
//! instance task by `make_task` and handed to an idle instance. When `inbox` closes (the
//! version is unloaded or the worker stops) everything already received is still run; the task
//! ends when the last batch is done and the instances are joined.
//!
//! If a batch's task panics, every item of that batch is still ended: before the batch is
//! handed over, `fail` takes from each item what ends it (for a prediction job: failing it as
//! `internal`, so it is requeued or dead-lettered like any internal failure), and those run
//! when the panic is caught. The panic then goes on to the instance thread, which reports it
//! and stays in service (`runtime::instances`); the next batch runs as usual.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::policy::{BatchKey, BatchLimits, Batcher, Decision, Item};
use crate::runtime::instances::{panic_message, InstancePool, InstanceTask};

/// Turns a batch into work for an instance thread.
pub type MakeTask<K, T> = Arc<dyn Fn(Vec<Item<K, T>>) -> InstanceTask + Send + Sync>;

/// What ends one item if its batch panics: called with the panic's message.
pub type FailItem = Box<dyn FnOnce(&str) + Send>;

/// Takes, from an item about to run, what ends it if its batch panics.
pub type FailBatch<K, T> = Arc<dyn Fn(&Item<K, T>) -> FailItem + Send + Sync>;

/// The instance work for `batch`: `make_task`'s, with every item ended by `fail` if it panics.
fn guarded<K, T>(
    batch: Vec<Item<K, T>>,
    make_task: &MakeTask<K, T>,
    fail: &FailBatch<K, T>,
) -> InstanceTask {
    let failers: Vec<FailItem> = batch.iter().map(|item| fail(item)).collect();
    let task = make_task(batch);
    Box::new(move |backend| {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(backend))) {
            let message = format!(
                "inference instance panicked: {}",
                panic_message(payload.as_ref())
            );
            for failer in failers {
                failer(&message);
            }
            resume_unwind(payload);
        }
    })
}

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
    fail: FailBatch<K, T>,
) where
    K: BatchKey + Send + 'static,
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
                    if pool
                        .run(instance, guarded(batch, &make_task, &fail))
                        .is_err()
                    {
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
            Arc::new(|_: &Item<u8, usize>| Box::new(|_: &str| {}) as FailItem),
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

    /// Panics when asked to run the marked input (a tensor named "boom").
    struct PanickingBackend {
        signature: ModelSignature,
    }

    impl Backend for PanickingBackend {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }
        fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            if inputs.iter().any(|t| t.name == "boom") {
                panic!("marked input");
            }
            Ok(vec![])
        }
    }

    /// How an item ended.
    #[derive(Debug, Clone, PartialEq)]
    enum End {
        Ran,
        Failed(String),
    }

    /// A batch whose run panics ends each of its items through `fail` (as an internal failure
    /// would), the instance reports the panic and stays in service, and the next batch runs on
    /// it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_fails_its_items_and_the_instance_runs_the_next() {
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let panics = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
        let seen = panics.clone();
        let backend = Box::new(PanickingBackend {
            signature: ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
        });
        let pool = InstancePool::start_with(
            "panicky",
            vec![backend],
            &[],
            idle_tx,
            Arc::new(move |index, message: &str| {
                seen.lock().unwrap().push((index, message.to_string()))
            }),
        )
        .unwrap();
        let ends = Arc::new(Mutex::new(std::collections::BTreeMap::<usize, End>::new()));
        let ran = ends.clone();
        // Payload: (id, marked). A batch containing a marked item panics.
        let make_task: MakeTask<u8, (usize, bool)> =
            Arc::new(move |batch: Vec<Item<u8, (usize, bool)>>| {
                let ran = ran.clone();
                Box::new(move |backend: &mut dyn Backend| {
                    let inputs: Vec<Tensor> = batch
                        .iter()
                        .map(|i| {
                            Tensor::from_f32(
                                if i.payload.1 { "boom" } else { "x" },
                                vec![1],
                                &[0.0],
                            )
                        })
                        .collect();
                    backend.infer(&inputs).unwrap();
                    for item in &batch {
                        ran.lock().unwrap().insert(item.payload.0, End::Ran);
                    }
                })
            });
        let failed = ends.clone();
        let fail: FailBatch<u8, (usize, bool)> = Arc::new(move |item: &Item<u8, (usize, bool)>| {
            let id = item.payload.0;
            let failed = failed.clone();
            Box::new(move |message: &str| {
                failed
                    .lock()
                    .unwrap()
                    .insert(id, End::Failed(message.to_string()));
            })
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let send = |id: usize, marked: bool| {
            tx.send(Item {
                key: 0u8,
                rows: 1,
                arrived: Instant::now(),
                payload: (id, marked),
            })
            .unwrap();
        };
        // One full batch with the marked item (queued before the task starts, so it is one
        // batch), then, after it has ended, a batch of clean items.
        for (id, marked) in [(0, false), (1, true), (2, false)] {
            send(id, marked);
        }
        let task = tokio::spawn(batch_task(
            BatchLimits::new(3, Duration::from_millis(1), &[]),
            rx,
            pool,
            idle_rx,
            make_task,
            fail,
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ends.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "the panicking batch never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for id in 3..6 {
            send(id, false);
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("batch task ended")
            .unwrap();
        let ends = ends.lock().unwrap().clone();
        for id in 0..3 {
            assert!(
                matches!(&ends[&id], End::Failed(m) if m.contains("inference instance panicked: marked input")),
                "item {id}: {:?}",
                ends[&id]
            );
        }
        for id in 3..6 {
            assert_eq!(ends[&id], End::Ran, "item {id} after the panic");
        }
        assert_eq!(
            *panics.lock().unwrap(),
            vec![(0, "marked input".to_string())]
        );
    }
}
