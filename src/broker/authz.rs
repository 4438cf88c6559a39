//! Who may send a job: the decision, apart from I/O.
//!
//! RabbitMQ refuses a message whose AMQP `user_id` property differs from the user of the
//! connection that published it (it closes the channel with `PRECONDITION_FAILED`), so a
//! `user_id` that reaches a worker names the producer's broker user and can be trusted. A job
//! without `user_id` names nobody. `training.allowed_users` (training jobs) and a model's
//! `allowed_users` in its `config.toml` (prediction jobs) are checked here; an empty list lets
//! anyone in.

/// Longest `user_id` echoed back in an error message.
const ECHO_LIMIT: usize = 128;

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("user_id: missing; {what} accepts jobs only from {allowed} (set user_id to the broker user that publishes)")]
    Missing { what: &'static str, allowed: String },
    #[error("user_id: {user:?} may not send jobs to {what}; allowed: {allowed}")]
    NotListed {
        what: &'static str,
        user: String,
        allowed: String,
    },
}

/// Accepts the job when `allowed` is empty or lists `user_id`. `what` names the list in the
/// message (e.g. `"training (training.allowed_users)"`).
pub fn authorize(
    user_id: Option<&str>,
    allowed: &[String],
    what: &'static str,
) -> Result<(), AuthzError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let listed = || {
        let mut names = allowed.join(", ");
        if names.len() > ECHO_LIMIT {
            names.truncate(crate::protocol::text::prefix(&names, ECHO_LIMIT).len());
            names.push('…');
        }
        format!("[{names}]")
    };
    match user_id {
        None | Some("") => Err(AuthzError::Missing {
            what,
            allowed: listed(),
        }),
        Some(user) if allowed.iter().any(|a| a == user) => Ok(()),
        Some(user) => Err(AuthzError::NotListed {
            what,
            user: user.chars().take(ECHO_LIMIT).collect(),
            allowed: listed(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// (case, user_id, allowed, Ok or the start of the message).
    type Case<'a> = (&'a str, Option<&'a str>, &'a [String], Result<(), &'a str>);

    #[test]
    fn decisions() {
        let trainers = names(&["trainer", "ops"]);
        let cases: [Case; 6] = [
            ("empty list: anyone", None, &[], Ok(())),
            ("empty list: any user", Some("x"), &[], Ok(())),
            ("listed", Some("ops"), &trainers, Ok(())),
            ("missing", None, &trainers, Err("user_id: missing")),
            (
                "empty user_id is missing",
                Some(""),
                &trainers,
                Err("user_id: missing"),
            ),
            (
                "not listed",
                Some("producer"),
                &trainers,
                Err("user_id: \"producer\" may not"),
            ),
        ];
        for (name, user, allowed, expected) in cases {
            let got = authorize(user, allowed, "training (training.allowed_users)");
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(start)) => {
                    let text = e.to_string();
                    assert!(text.starts_with(start), "{name}: {text}");
                    assert!(text.contains("training.allowed_users"), "{name}: {text}");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn echo_is_bounded() {
        let long = "u".repeat(10_000);
        let allowed = vec!["a".repeat(10_000)];
        let text = authorize(Some(&long), &allowed, "model m")
            .unwrap_err()
            .to_string();
        assert!(text.len() < 1024, "{} bytes", text.len());
    }
}
