//! Instance threads: each owns one [`Backend`] and runs the tasks it is handed, one at a time.
//!
//! The batch task hands a task to an instance it knows is idle; the instance reports back on
//! `idle` when the task is done. Dropping the pool ends the threads once their current task is
//! done, and their sessions with them.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::Backend;

/// Work for an instance: runs on its thread with exclusive use of the backend.
pub type InstanceTask = Box<dyn FnOnce(&mut dyn Backend) + Send>;

/// The instance threads of one model version.
pub struct InstancePool {
    senders: Vec<mpsc::SyncSender<InstanceTask>>,
    threads: Vec<JoinHandle<()>>,
}

impl InstancePool {
    /// Starts one thread per backend, pinned to `cpus[index % cpus.len()]` when `cpus` is
    /// not empty. Each reports its index on `idle` after every task.
    pub fn start(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        cpus: &[usize],
        idle: UnboundedSender<usize>,
    ) -> std::io::Result<InstancePool> {
        let mut senders = Vec::with_capacity(backends.len());
        let mut threads = Vec::with_capacity(backends.len());
        for (index, mut backend) in backends.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<InstanceTask>(1);
            let idle = idle.clone();
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("infer-{name}-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(error) = super::affinity::pin_current_thread(&[cpu]) {
                            tracing::warn!(cpu, %error, "Could not pin the instance thread");
                        }
                    }
                    for task in rx {
                        task(backend.as_mut());
                        if idle.send(index).is_err() {
                            break;
                        }
                    }
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(InstancePool { senders, threads })
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Hands a task to instance `index`, which must be idle. Gives the task back if the
    /// instance thread is gone.
    pub fn run(&self, index: usize, task: InstanceTask) -> Result<(), InstanceTask> {
        match self.senders.get(index) {
            Some(sender) => sender.try_send(task).map_err(|e| match e {
                mpsc::TrySendError::Full(t) | mpsc::TrySendError::Disconnected(t) => t,
            }),
            None => Err(task),
        }
    }

    /// Stops accepting tasks and waits for the threads to finish their current one.
    pub fn join(self) {
        drop(self.senders);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ModelSignature, Tensor};
    use crate::runtime::{affinity, RuntimeError};

    struct Idle(ModelSignature);

    impl Backend for Idle {
        fn signature(&self) -> &ModelSignature {
            &self.0
        }
        fn infer(&mut self, _: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            Ok(vec![])
        }
    }

    fn backend() -> Box<dyn Backend> {
        Box::new(Idle(ModelSignature {
            inputs: vec![],
            outputs: vec![],
        }))
    }

    /// Instance `i` runs its tasks on `cpus[i % len]`; without CPUs, on all of them.
    #[test]
    fn instance_threads_are_pinned_round_robin() {
        let all = affinity::current_thread_cpus().unwrap();
        let cpus = [*all.last().unwrap(), all[0]];
        for (given, expected) in [
            (&cpus[..], vec![vec![cpus[0]], vec![cpus[1]], vec![cpus[0]]]),
            (&[][..], vec![all.clone(); 3]),
        ] {
            let (idle_tx, _idle_rx) = tokio::sync::mpsc::unbounded_channel();
            let pool =
                InstancePool::start("pin", vec![backend(), backend(), backend()], given, idle_tx)
                    .unwrap();
            let (tx, rx) = mpsc::channel();
            for index in 0..3 {
                let tx = tx.clone();
                pool.run(
                    index,
                    Box::new(move |_| {
                        tx.send((index, affinity::current_thread_cpus().unwrap()))
                            .unwrap();
                    }),
                )
                .unwrap_or_else(|_| panic!("instance {index} gone"));
            }
            let mut seen: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
            seen.sort();
            let seen: Vec<_> = seen.into_iter().map(|(_, cpus)| cpus).collect();
            assert_eq!(seen, expected);
            pool.join();
        }
    }
}
