use super::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[test]
fn parses_the_specification_example() {
    let p = TraceParent::parse(VALID).expect("valid");
    assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
    assert!(p.sampled());
    assert_eq!(p.header_value(), VALID);
}

#[test]
fn refuses_malformed_traceparents() {
    let cases = [
        ("empty", ""),
        (
            "short",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ),
        (
            "v00 too long",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
        ),
        (
            "upper case",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ),
        (
            "version ff",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "zero trace id",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        (
            "zero span id",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ),
        (
            "bad separator",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "non-hex",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ),
        (
            "bad flags",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ),
        (
            "future, no dash",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ),
        (
            "non-ASCII",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ),
    ];
    for (name, value) in cases {
        assert_eq!(TraceParent::parse(value), None, "{name}: {value:?}");
    }
    let huge = format!("01{}", "-ab".repeat(1000));
    assert_eq!(TraceParent::parse(&huge), None, "over the length bound");
}

#[test]
fn reads_a_later_version_by_its_prefix_and_writes_version_00() {
    let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds";
    let p = TraceParent::parse(later).expect("a later version parses");
    // Only the sampled bit is written back (09 has an unknown bit set).
    assert_eq!(p.header_value(), VALID);
}

#[test]
fn tracestate_rules() {
    let good = [
        "rojo=00f067aa0ba902b7",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        " rojo=1 , ,congo=2 ",
        "tenant1@vendor=x y",
        "a*b/c_d-e=!\"#",
    ];
    for value in good {
        assert!(valid_tracestate(value), "{value:?} is valid");
    }
    let bad = [
        ("no equals", "rojo"),
        ("upper-case key", "Rojo=1"),
        ("duplicate key", "rojo=1,rojo=2"),
        ("empty value", "rojo="),
        ("space in key", "ro jo=1"),
        ("equals in value", "rojo=a=b"),
        ("control character", "rojo=a\u{1}b"),
        ("system too long", "t@abcdefghijklmnop=1"),
    ];
    for (name, value) in bad {
        assert!(!valid_tracestate(value), "{name}: {value:?}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert!(!valid_tracestate(&many.join(",")), "33 members");
    let long = format!("k={}", "v".repeat(MAX_TRACESTATE));
    assert!(!valid_tracestate(&long), "over {MAX_TRACESTATE} bytes");
}

#[test]
fn reads_headers_in_any_case_and_keeps_a_valid_tracestate() {
    let headers = table(&[
        ("TraceParent", text(VALID)),
        ("tracestate", text("rojo=00f067aa0ba902b7")),
        ("x-other", AMQPValue::LongLongInt(3)),
    ]);
    let ctx = TraceContext::from_headers(Some(&headers)).expect("context");
    assert_eq!(ctx.parent.header_value(), VALID);
    assert_eq!(ctx.state, "rojo=00f067aa0ba902b7");

    let short = table(&[(
        "traceparent",
        AMQPValue::ShortString(ShortString::from(VALID)),
    )]);
    assert!(TraceContext::from_headers(Some(&short)).is_some());
}

#[test]
fn ignores_what_is_not_a_single_valid_string() {
    assert_eq!(TraceContext::from_headers(None), None);
    let cases = [
        ("absent", table(&[("x", text(VALID))])),
        (
            "integer",
            table(&[("traceparent", AMQPValue::LongLongInt(1))]),
        ),
        (
            "not UTF-8",
            table(&[(
                "traceparent",
                AMQPValue::LongString(LongString::from(vec![0xffu8; 55])),
            )]),
        ),
        (
            "duplicated in two cases",
            table(&[("traceparent", text(VALID)), ("Traceparent", text(VALID))]),
        ),
        (
            "huge",
            table(&[("traceparent", text(&"0".repeat(1 << 20)))]),
        ),
    ];
    for (name, headers) in cases {
        assert_eq!(TraceContext::from_headers(Some(&headers)), None, "{name}");
    }
    // An invalid tracestate is dropped, the traceparent kept.
    let headers = table(&[("traceparent", text(VALID)), ("tracestate", text("Bad=1"))]);
    let ctx = TraceContext::from_headers(Some(&headers)).expect("context");
    assert_eq!(ctx.state, "");
}

#[test]
fn injects_and_reads_back() {
    let ctx = TraceContext {
        parent: TraceParent::parse(VALID).unwrap(),
        state: "congo=t61rcWkgMzE".into(),
    };
    let mut headers = table(&[("traceparent", text("stale")), ("x-error", text("kept"))]);
    ctx.inject(&mut headers);
    assert_eq!(
        TraceContext::from_headers(Some(&headers)),
        Some(ctx.clone())
    );
    assert!(headers.inner().contains_key("x-error"));

    let mut bare = FieldTable::default();
    TraceContext {
        state: String::new(),
        ..ctx
    }
    .inject(&mut bare);
    assert!(
        !bare.inner().contains_key(TRACESTATE),
        "no empty tracestate"
    );
}
