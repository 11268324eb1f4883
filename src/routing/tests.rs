//! Routing with a virtual clock.

use super::*;

const P: Policy =
    Policy { max_active: 2, accept_timeout_secs: 120, wait_alert_secs: 3600, announce_all_waiting: false };

fn router(names: &[&str]) -> Router {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    Router::new(&names)
}

fn invites(routes: &[Route]) -> Vec<(String, String)> {
    routes
        .iter()
        .filter_map(|r| match r {
            Route::Invite { key, counsellor } => Some((key.clone(), counsellor.clone())),
            _ => None,
        })
        .collect()
}

fn inv(k: &str, c: &str) -> (String, String) {
    (k.to_owned(), c.to_owned())
}

#[test]
fn everyone_starts_away_and_unknown_users_are_refused() {
    let mut r = router(&["@a:x"]);
    assert!(!r.counsellors["@a:x"].available);
    assert!(!r.set_available("@stranger:x", true));
    r.enqueue("k1", false, false, 0);
    let out = r.step(0, true, &P);
    assert!(invites(&out).is_empty());
    assert_eq!(out, vec![Route::Position { key: "k1".into(), position: 1, estimate_minutes: None }]);
}

#[test]
fn fewest_active_then_longest_since_last_assignment() {
    let mut r = router(&["@a:x", "@b:x", "@c:x"]);
    for c in ["@a:x", "@b:x", "@c:x"] {
        r.set_available(c, true);
    }
    r.counsellors.get_mut("@a:x").unwrap().last_assigned = 50;
    r.counsellors.get_mut("@b:x").unwrap().last_assigned = 10;
    r.counsellors.get_mut("@c:x").unwrap().last_assigned = 30;
    r.enqueue("k1", false, false, 100);
    assert_eq!(invites(&r.step(100, true, &P)), vec![inv("k1", "@b:x")]);
    assert!(r.accepted("k1", "@b:x"));
    r.enqueue("k2", false, false, 101);
    // b has one case now; c is longest idle of the zero-load pair.
    assert_eq!(invites(&r.step(101, true, &P)), vec![inv("k2", "@c:x")]);
    r.enqueue("k3", false, false, 102);
    assert_eq!(invites(&r.step(102, true, &P)), vec![inv("k3", "@a:x")]);
}

#[test]
fn capacity_is_respected_and_queue_waits() {
    let mut r = router(&["@a:x"]);
    r.set_available("@a:x", true);
    for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
        r.enqueue(k, false, false, i64::try_from(i).unwrap());
    }
    let out = r.step(10, true, &P);
    assert_eq!(invites(&out), vec![inv("k1", "@a:x"), inv("k2", "@a:x")]);
    assert!(out.contains(&Route::Position { key: "k3".into(), position: 1, estimate_minutes: None }));
    assert_eq!(r.status(), Status { available: 1, active: 0, waiting: 3, urgent_waiting: 0 });
    assert!(r.accepted("k1", "@a:x"));
    assert!(invites(&r.step(20, true, &P)).is_empty());
    // Closing one frees a slot.
    assert_eq!(r.release("k1", 30, Some(15)), None);
    assert_eq!(invites(&r.step(30, true, &P)), vec![inv("k3", "@a:x")]);
}

#[test]
fn urgent_jumps_the_queue_and_transfers_go_first_among_equals() {
    let mut r = router(&["@a:x"]);
    r.enqueue("old", false, false, 1);
    r.enqueue("new", false, false, 2);
    r.enqueue("urgent", false, false, 3);
    r.set_urgent("urgent");
    let out = r.step(5, true, &P);
    let positions: Vec<(String, usize)> = out
        .iter()
        .filter_map(|r| match r {
            Route::Position { key, position, .. } => Some((key.clone(), *position)),
            _ => None,
        })
        .collect();
    assert_eq!(positions, vec![("urgent".into(), 1), ("old".into(), 2), ("new".into(), 3)]);
    assert_eq!(r.status().urgent_waiting, 1);
    r.set_available("@a:x", true);
    let out = r.step(6, true, &P);
    assert_eq!(invites(&out), vec![inv("urgent", "@a:x"), inv("old", "@a:x")]);
}

#[test]
fn offer_times_out_moves_on_and_repeated_misses_set_away() {
    let mut r = router(&["@a:x", "@b:x"]);
    r.set_available("@a:x", true);
    r.counsellors.get_mut("@b:x").unwrap().last_assigned = 5;
    r.set_available("@b:x", true);
    r.enqueue("k1", false, false, 0);
    assert_eq!(invites(&r.step(0, true, &P)), vec![inv("k1", "@a:x")]);
    assert_eq!(r.next_deadline(&P, true), Some(120));
    assert!(r.step(119, true, &P).is_empty());
    let out = r.step(120, true, &P);
    assert_eq!(out[0], Route::Withdraw { key: "k1".into(), counsellor: "@a:x".into() });
    assert_eq!(invites(&out), vec![inv("k1", "@b:x")]);
    assert_eq!(r.counsellors["@a:x"].missed, 1);
    // b misses too: the case goes back to a (passed counsellors come last, not never).
    let out = r.step(240, true, &P);
    assert_eq!(invites(&out), vec![inv("k1", "@a:x")]);
    // a misses a 2nd and 3rd time in a row (b takes a turn between): a is set away.
    let out = r.step(360, true, &P);
    assert_eq!(invites(&out), vec![inv("k1", "@b:x")]);
    r.step(480, true, &P);
    let out = r.step(600, true, &P);
    assert!(out.contains(&Route::SetAway { counsellor: "@a:x".into(), missed: 3 }), "{out:?}");
    assert!(!r.counsellors["@a:x"].available);
    // A late join by a counsellor whose offer lapsed is not accepted.
    assert!(!r.accepted("k1", "@a:x"));
}

#[test]
fn declining_passes_over_at_once_until_available_again() {
    let mut r = router(&["@a:x", "@b:x"]);
    r.set_available("@a:x", true);
    r.enqueue("k1", false, false, 0);
    assert_eq!(invites(&r.step(0, true, &P)), vec![inv("k1", "@a:x")]);
    assert!(r.rejected("k1", "@a:x"));
    // Nobody else: the case waits, a is not re-invited.
    assert!(invites(&r.step(1, true, &P)).is_empty());
    r.set_available("@b:x", true);
    assert_eq!(invites(&r.step(2, true, &P)), vec![inv("k1", "@b:x")]);
    assert!(!r.rejected("k1", "@a:x"), "only the offered counsellor can decline");
}

#[test]
fn transfer_puts_case_first_and_records_history() {
    let mut r = router(&["@a:x", "@b:x"]);
    r.set_available("@a:x", true);
    r.enqueue("k1", false, false, 0);
    r.step(0, true, &P);
    assert!(r.accepted("k1", "@a:x"));
    r.set_available("@a:x", false);
    r.enqueue("k2", false, false, 5);
    r.step(5, true, &P);
    assert_eq!(r.transfer("k1", 10), Some("@a:x".into()));
    assert_eq!(r.transfer("k1", 10), None);
    r.step(10, true, &P);
    assert_eq!(r.queue[0].key, "k1");
    r.set_available("@b:x", true);
    assert_eq!(invites(&r.step(11, true, &P)), vec![inv("k1", "@b:x"), inv("k2", "@b:x")]);
}

#[test]
fn positions_are_retold_at_most_once_a_minute() {
    let mut r = router(&["@a:x"]);
    for k in ["k1", "k2", "k3"] {
        r.enqueue(k, false, false, 0);
    }
    assert_eq!(r.step(0, true, &P).len(), 3);
    assert!(r.step(1, true, &P).is_empty());
    r.release("k1", 10, None);
    assert!(r.step(10, true, &P).is_empty(), "held back");
    assert_eq!(r.next_deadline(&P, true), Some(60));
    let out = r.step(60, true, &P);
    assert_eq!(
        out,
        vec![
            Route::Position { key: "k2".into(), position: 1, estimate_minutes: None },
            Route::Position { key: "k3".into(), position: 2, estimate_minutes: None },
        ]
    );
}

#[test]
fn estimate_from_history() {
    let mut r = router(&["@a:x"]);
    r.set_available("@a:x", true);
    assert_eq!(r.estimate_minutes(1, &P), None);
    r.handled.extend([600, 1200]);
    // avg 900 s, position 2, 2 slots: 900 s -> 15 min.
    assert_eq!(r.estimate_minutes(2, &P), Some(15));
    r.set_available("@a:x", false);
    assert_eq!(r.estimate_minutes(2, &P), None);
}

#[test]
fn closed_hours_hold_offers() {
    let mut r = router(&["@a:x"]);
    r.set_available("@a:x", true);
    r.enqueue("k1", false, false, 0);
    assert!(invites(&r.step(0, false, &P)).is_empty());
    assert_eq!(invites(&r.step(1, true, &P)), vec![inv("k1", "@a:x")]);
}

#[test]
fn state_survives_serialization() {
    let mut r = router(&["@a:x", "@b:x"]);
    r.set_available("@a:x", true);
    r.enqueue("k1", true, false, 0);
    r.enqueue("k2", false, false, 1);
    r.step(0, true, &P);
    let json = serde_json::to_string(&r).unwrap();
    let mut back: Router = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    // The deadline still fires after the "restart".
    let out = back.step(500, true, &P);
    assert!(out.contains(&Route::Withdraw { key: "k1".into(), counsellor: "@a:x".into() }));
    // Roster changes keep known state.
    back.sync_roster(&["@a:x".to_owned(), "@c:x".to_owned()]);
    assert!(back.counsellors.contains_key("@c:x") && !back.counsellors.contains_key("@b:x"));
}

#[test]
fn long_waits_alert_staff_once() {
    let p = Policy { wait_alert_secs: 300, ..P };
    let mut r = router(&["@a:x"]);
    r.enqueue("k1", false, false, 0);
    r.step(0, true, &p);
    assert_eq!(r.next_deadline(&p, true), Some(300));
    assert!(!r.step(299, true, &p).iter().any(|x| matches!(x, Route::LongWait { .. })));
    let out = r.step(300, true, &p);
    assert!(out.contains(&Route::LongWait { key: "k1".into(), minutes: 5 }), "{out:?}");
    assert!(!r.step(900, true, &p).iter().any(|x| matches!(x, Route::LongWait { .. })));
    assert_eq!(r.next_deadline(&p, true), None);
}

#[test]
fn urgent_cases_of_one_server_take_turns_with_other_servers() {
    let mut r = router(&["@a:x"]);
    // A flood: five urgent cases from source 7, then a real urgent visitor
    // from source 3 and a plain one from source 3.
    for (i, k) in ["f1", "f2", "f3", "f4", "f5"].iter().enumerate() {
        r.enqueue(k, true, false, i64::try_from(i).unwrap());
        r.set_source(k, 7);
    }
    r.enqueue("real", true, false, 10);
    r.set_source("real", 3);
    r.enqueue("plain", false, false, 11);
    r.set_source("plain", 3);
    r.step(20, true, &P);
    let order: Vec<&str> = r.queue.iter().map(|w| w.key.as_str()).collect();
    // The real visitor is second, not sixth; non-urgent still last.
    assert_eq!(order, ["f1", "real", "f2", "f3", "f4", "f5", "plain"]);
    // Without sources (after a restart, before the edge tells them) the
    // order is as before: urgent first come first served.
    for w in &mut r.queue {
        w.source = 0;
    }
    r.step(21, true, &P);
    let order: Vec<&str> = r.queue.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(order, ["f1", "f2", "f3", "f4", "f5", "real", "plain"]);
}
