//! A hostile producer against a real worker (`infermq worker` as a child process) on the real
//! broker: every poison message of docs/OPERATIONS.md "Poison messages" is published, and each
//! case then checks that the process is alive, did not reconnect, answers a normal iris job
//! within 5 s, answered the hostile job as documented, and kept its memory bounded.
//!
//! One worker per test (a case that breaks a worker must not fail the next one for the wrong
//! reason); the cases of one test share it, each checked right after it is sent.

mod common;

#[path = "hostile/bodies.rs"]
mod bodies;
#[path = "hostile/harness.rs"]
mod harness;
#[path = "hostile/queues.rs"]
mod queues;
#[path = "hostile/raw_amqp.rs"]
mod raw_amqp;
#[path = "hostile/requests.rs"]
mod requests;
#[path = "hostile/routing.rs"]
mod routing;
#[path = "hostile/training.rs"]
mod training;
