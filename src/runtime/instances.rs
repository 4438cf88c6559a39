//! Instance threads: each owns one [`Backend`] and runs the tasks it is handed, one at a time.
//!
//! The batch task hands a task to an instance it knows is idle; the instance reports back on
//! `idle` when the task is done. Dropping the pool ends the threads once their current task is
//! done, and their sessions with them.
//!
//! A task that panics does not take its instance with it: the panic is caught, reported to the
//! pool's [`PanicHook`] (counted and logged by the worker), and the instance goes on with the
//! same backend, reporting itself idle as after any task — so the batch task never hands work
//! to a dead thread. Keeping the backend is sound for ONNX Runtime: a Rust panic cannot unwind
//! through ONNX Runtime's C frames (it would abort the process instead), so a caught panic
//! happened in Rust code before or after a `Run` call, and a session holds no per-run state.
//! The jobs of the panicking task are ended by the task's own wrapper (`batching::task`).
//!
//! An *inline* pool ([`InstancePool::inline`]) has no threads: a task runs on the thread that
//! hands it over (the batch task's), at once. For models whose batch runs in microseconds the
//! hand-off to a thread and back costs more than the run; a panic is caught and reported the
//! same way.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::Backend;

/// Work for an instance: runs on its thread with exclusive use of the backend.
pub type InstanceTask = Box<dyn FnOnce(&mut dyn Backend) + Send>;

/// Called on an instance thread with its index and the panic's message after a task panicked.
pub type PanicHook = Arc<dyn Fn(usize, &str) + Send + Sync>;

/// The text of a panic payload (`&str` or `String`; anything else is "unknown panic").
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The instance threads of one model version.
pub struct InstancePool {
    senders: Vec<mpsc::SyncSender<InstanceTask>>,
    threads: Vec<JoinHandle<()>>,
    /// An inline pool's backends, run on the caller's thread (no threads above).
    inline: Option<Inline>,
}

/// The backends of an inline pool and what each run reports to.
struct Inline {
    name: String,
    backends: Vec<Mutex<Box<dyn Backend>>>,
    idle: UnboundedSender<usize>,
    on_panic: PanicHook,
}

/// Runs `task` on `backend`; a panic is caught, logged and reported to `on_panic`, and the
/// instance goes on (module documentation).
fn run_caught(
    model: &str,
    index: usize,
    task: InstanceTask,
    backend: &mut dyn Backend,
    on_panic: &PanicHook,
) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(backend))) {
        let message = panic_message(payload.as_ref());
        tracing::error!(%model, instance = index, panic = %message, "Inference instance panicked; its batch failed, the instance goes on");
        on_panic(index, &message);
    }
}

impl InstancePool {
    /// Starts one thread per backend, pinned to `cpus[index % cpus.len()]` when `cpus` is
    /// not empty. Each reports its index on `idle` after every task. A panicking task is only
    /// logged; [`InstancePool::start_with`] also reports it. (For tests: the worker always
    /// passes a panic hook.)
    #[cfg(test)]
    pub fn start(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        cpus: &[usize],
        idle: UnboundedSender<usize>,
    ) -> std::io::Result<InstancePool> {
        InstancePool::start_with(name, backends, cpus, idle, Arc::new(|_, _| {}))
    }

    /// [`InstancePool::start`], calling `on_panic` whenever a task panics.
    pub fn start_with(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        cpus: &[usize],
        idle: UnboundedSender<usize>,
        on_panic: PanicHook,
    ) -> std::io::Result<InstancePool> {
        let mut senders = Vec::with_capacity(backends.len());
        let mut threads = Vec::with_capacity(backends.len());
        for (index, mut backend) in backends.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<InstanceTask>(1);
            let idle = idle.clone();
            let on_panic = on_panic.clone();
            let model = name.to_string();
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
                        run_caught(&model, index, task, backend.as_mut(), &on_panic);
                        if idle.send(index).is_err() {
                            break;
                        }
                    }
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(InstancePool {
            senders,
            threads,
            inline: None,
        })
    }

    /// A pool without threads: [`InstancePool::run`] runs the task on the calling thread, then
    /// reports the instance idle on `idle`; `on_panic` is called when a task panics.
    pub fn inline(
        name: &str,
        backends: Vec<Box<dyn Backend>>,
        idle: UnboundedSender<usize>,
        on_panic: PanicHook,
    ) -> InstancePool {
        InstancePool {
            senders: Vec::new(),
            threads: Vec::new(),
            inline: Some(Inline {
                name: name.to_string(),
                backends: backends.into_iter().map(Mutex::new).collect(),
                idle,
                on_panic,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.senders.len() + self.inline.as_ref().map_or(0, |i| i.backends.len())
    }

    /// Hands a task to instance `index`, which must be idle. Gives the task back if the
    /// instance thread is gone.
    pub fn run(&self, index: usize, task: InstanceTask) -> Result<(), InstanceTask> {
        if let Some(inline) = &self.inline {
            let Some(backend) = inline.backends.get(index) else {
                return Err(task);
            };
            // A panic inside the lock poisons it; the backend holds no per-run state (above).
            let mut backend = backend.lock().unwrap_or_else(|e| e.into_inner());
            run_caught(
                &inline.name,
                index,
                task,
                backend.as_mut(),
                &inline.on_panic,
            );
            let _ = inline.idle.send(index);
            return Ok(());
        }
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

    /// An inline pool runs each task on the caller's thread, reports the instance idle after
    /// it, and goes on after a task panicked (reported to the hook).
    #[test]
    fn an_inline_pool_runs_tasks_on_the_calling_thread_and_survives_a_panic() {
        let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel();
        let panics = Arc::new(Mutex::new(Vec::new()));
        let hook: PanicHook = {
            let panics = panics.clone();
            Arc::new(move |index, message: &str| {
                panics.lock().unwrap().push((index, message.to_string()))
            })
        };
        let pool = InstancePool::inline("inline", vec![backend(), backend()], idle_tx, hook);
        assert_eq!(pool.len(), 2);
        let caller = std::thread::current().id();
        let ran_on = Arc::new(Mutex::new(None));
        let record = ran_on.clone();
        let task: InstanceTask = Box::new(move |_| {
            *record.lock().unwrap() = Some(std::thread::current().id());
        });
        assert!(pool.run(1, task).is_ok());
        assert_eq!(*ran_on.lock().unwrap(), Some(caller));
        assert_eq!(idle_rx.try_recv().ok(), Some(1));
        assert!(pool.run(0, Box::new(|_| panic!("boom"))).is_ok());
        assert_eq!(*panics.lock().unwrap(), vec![(0, "boom".to_string())]);
        assert_eq!(idle_rx.try_recv().ok(), Some(0));
        let again = ran_on.clone();
        let task: InstanceTask = Box::new(move |_| *again.lock().unwrap() = None);
        assert!(pool.run(0, task).is_ok());
        assert_eq!(*ran_on.lock().unwrap(), None);
        assert_eq!(idle_rx.try_recv().ok(), Some(0));
        // An index the pool does not have gives the task back.
        assert!(pool.run(2, Box::new(|_| {})).is_err());
        pool.join();
    }
}
