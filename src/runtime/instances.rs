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
    /// Starts one thread per backend. Each reports its index on `idle` after every task.
    pub fn start(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        idle: UnboundedSender<usize>,
    ) -> std::io::Result<InstancePool> {
        let mut senders = Vec::with_capacity(backends.len());
        let mut threads = Vec::with_capacity(backends.len());
        for (index, mut backend) in backends.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<InstanceTask>(1);
            let idle = idle.clone();
            let thread = std::thread::Builder::new()
                .name(format!("infer-{name}-{index}"))
                .spawn(move || {
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
