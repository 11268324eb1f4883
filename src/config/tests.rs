//! Loading and validating configs: every problem names its key.

use super::*;

const MINIMAL: &str = r#"
[matrix]
homeserver_url = "http://127.0.0.1:8008"
user_id = "@bot:localhost"
[storage]
data_dir = "data"
[staff]
room = "!abc"
counsellors = ["@c:localhost"]
[[intake.questions]]
id = "q"
kind = "choice"
prompt = { en = "Q?" }
choices = [ { id = "a", label = { en = "A" } } ]
"#;

#[test]
fn minimal_is_valid() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.validate(), Vec::<String>::new());
    assert_eq!(c.staff.accept_timeout_secs, 120);
    assert_eq!(c.safety.emergency_number, "112");
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config.example.toml");
    let c = Config::parse(text).unwrap();
    assert_eq!(c.validate(), Vec::<String>::new());
    assert_eq!(c.intake.questions.len(), 6);
}

#[test]
fn wrong_type_names_key() {
    let t = MINIMAL.replace("counsellors = [\"@c:localhost\"]", "max_active_per_counsellor = \"three\"");
    let e = Config::parse(&t).unwrap_err();
    assert!(e.contains("staff.max_active_per_counsellor"), "{e}");
}

#[test]
fn unknown_key_names_key() {
    let t = MINIMAL.replace("[staff]", "[staff]\nroom_id = \"x\"");
    let e = Config::parse(&t).unwrap_err();
    assert!(e.contains("room_id"), "{e}");
    assert!(e.contains("staff"), "{e}");
}

#[test]
fn choice_without_choices_and_duplicate_id() {
    let t = format!("{MINIMAL}\n[[intake.questions]]\nid = \"q\"\nkind = \"choice\"\nprompt = {{ en = \"again\" }}\n");
    let c = Config::parse(&t).unwrap();
    let p = c.validate();
    assert!(p.iter().any(|l| l.contains("intake.questions[1].id") && l.contains("duplicate")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("intake.questions[1].choices")), "{p:?}");
}

#[test]
fn missing_translation_and_bad_ids() {
    let t = MINIMAL.replace("[staff]", "[intake]\nlanguages = [\"en\", \"nl\"]\n[staff]").replace("!abc", "abc");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("intake.questions[0].prompt.nl")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("intake.questions[0].choices[0].label.nl")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("staff.room")), "{p:?}");
}

#[test]
fn unknown_text_override() {
    let t = format!("{MINIMAL}\n[texts.en]\ngreting = \"hi\"\n");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("texts.en.greting")), "{p:?}");
}

#[test]
fn weekday_names_override_needs_seven() {
    let t = format!("{MINIMAL}\n[texts.en]\nweekdays = \"Mon Tue\"\n");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("texts.en.weekdays") && l.contains("seven")), "{p:?}");
    let t = format!("{MINIMAL}\n[texts.en]\nweekdays = \"Mo Tu We Th Fr Sa Su\"\n");
    assert_eq!(Config::parse(&t).unwrap().validate(), Vec::<String>::new());
}

#[test]
fn metrics_stay_on_loopback_unless_allowed() {
    let t = format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9100\"\n");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("metrics.listen") && l.contains("allow_remote")), "{p:?}");
    let t = format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_remote = true\n");
    assert_eq!(Config::parse(&t).unwrap().validate(), Vec::<String>::new());
    let t = format!("{MINIMAL}\n[metrics]\nlisten = \"[::1]:9100\"\n");
    assert_eq!(Config::parse(&t).unwrap().validate(), Vec::<String>::new());
}

#[test]
fn hours_without_ranges_are_refused() {
    let t = format!("{MINIMAL}\n[hours]\ntimezone = \"Europe/Amsterdam\"\n");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("hours.open") && l.contains("at least one")), "{p:?}");
}

#[test]
fn bad_hours() {
    let t = format!("{MINIMAL}\n[hours]\ntimezone = \"Mars/Base\"\nopen = [\"mon-fri 9-17\"]\n");
    let p = Config::parse(&t).unwrap().validate();
    assert!(p.iter().any(|l| l.contains("hours.timezone")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("hours.open[0]")), "{p:?}");
}

#[test]
fn load_names_file_and_resolves_paths() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bot.toml");
    std::fs::write(&f, MINIMAL).unwrap();
    let c = Config::load(&f).unwrap();
    assert_eq!(c.storage.data_dir, dir.path().join("data"));
    std::fs::write(&f, "[matrix]\nuser_id = 3\n").unwrap();
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(e.contains("bot.toml") && e.contains("matrix"), "{e}");
}

#[test]
fn the_default_questionnaire_wires_up_every_monitor_figure() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let c = Config::load(&path).unwrap();
    let ids: Vec<String> = c.monitor_figures().into_iter().map(|f| f.id).collect();
    assert_eq!(ids, ["minors", "under_15", "still_exploited", "several_perpetrators", "for_themselves"]);
    // A questionnaire without an age question drops the age figures.
    let mut c = c;
    c.intake.questions.retain(|q| q.id != "age");
    assert!(c.monitor_figures().iter().all(|f| f.question != "age"));
}

#[test]
fn configured_monitor_figures_are_checked() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")).unwrap();
    let base = base.replace("min_count = 5", "min_count = 10");
    let bad = format!(
        "{base}\n[[stats.monitor]]\nid = \"x\"\nlabel = \"X\"\nquestion = \"age\"\nchoices = [\"under_12\"]\n[[stats.monitor]]\nid = \"y\"\nlabel = \"Y\"\nquestion = \"shoe_size\"\nchoices = [\"42\"]\n"
    );
    let c = Config::parse(&bad).unwrap();
    let p = c.validate();
    assert!(p.iter().any(|l| l.contains("`stats.monitor[0].choices[0]`") && l.contains("under_12")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("`stats.monitor[1].question`") && l.contains("shoe_size")), "{p:?}");
    assert_eq!(c.stats.min_count, 10);
}

#[test]
fn web_chat_settings_are_checked() {
    let web = "[web]\nlisten = \"127.0.0.1:8090\"\npublic_homeserver_url = \"https://hs.example\"\nquick_exit_url = \"https://weather.example/\"\n";
    let with_token = MINIMAL.replace("[storage]", "admin_token_file = \"token\"\n[storage]");
    let c = Config::parse(&format!("{with_token}{web}")).unwrap();
    assert_eq!(c.validate_web(false), Vec::<String>::new());
    let w = c.web.as_ref().unwrap();
    assert_eq!((w.account_prefix.as_str(), w.signups_per_minute, w.idle_account_minutes), ("web-", 30, 10));
    assert_eq!(w.assets_dir, PathBuf::from("web/dist"));

    // No admin token anywhere: named, with the way out.
    let c = Config::parse(&format!("{MINIMAL}{web}")).unwrap();
    let p = c.validate_web(false);
    assert!(p.len() == 1 && p[0].starts_with("key `matrix.admin_token_file`"), "{p:?}");
    assert_eq!(c.validate_web(true), Vec::<String>::new(), "INTAKE_BOT_ADMIN_TOKEN is enough");

    let bad = web
        .replace("127.0.0.1:8090", "localhost")
        .replace("https://hs.example", "hs.example")
        .replace("https://weather.example/", "javascript:alert(1)")
        + "account_prefix = \"Web Visitor\"\nsignups_per_minute = 0\n";
    let c = Config::parse(&format!("{with_token}{bad}")).unwrap();
    let p = c.validate_web(false);
    for key in [
        "web.listen",
        "web.public_homeserver_url",
        "web.quick_exit_url",
        "web.account_prefix",
        "web.signups_per_minute",
    ] {
        assert!(p.iter().any(|l| l.starts_with(&format!("key `{key}`"))), "{key} not named in {p:?}");
    }
}

#[test]
fn room_names_carry_no_case_id() {
    let c =
        Config::parse(&MINIMAL.replace("[[intake.questions]]", "room_name = \"Chat {case}\"\n[[intake.questions]]"))
            .unwrap();
    let p = c.validate();
    assert!(p.iter().any(|l| l.starts_with("key `staff.room_name`")), "{p:?}");
    assert_eq!(Config::parse(MINIMAL).unwrap().staff.room_name, "Chat");
}

#[test]
fn announce_waiting_is_one_of_two_choices() {
    let with = |v: &str| {
        Config::parse(
            &MINIMAL.replace("[[intake.questions]]", &format!("announce_waiting = {v:?}\n[[intake.questions]]")),
        )
        .unwrap()
    };
    let minimal = Config::parse(MINIMAL).unwrap();
    assert_eq!(minimal.staff.announce_waiting, "unassigned");
    assert!(!minimal.desk_setup().unwrap().policy.announce_all_waiting);
    let always = with("always");
    assert!(always.validate().is_empty(), "{:?}", always.validate());
    assert!(always.desk_setup().unwrap().policy.announce_all_waiting);
    let p = with("sometimes").validate();
    assert!(p.iter().any(|l| l.starts_with("key `staff.announce_waiting`") && l.contains("\"always\"")), "{p:?}");
}

/// Runs `n` cases, or the count in `INTAKE_BOT_FUZZ_CASES` (a long run on
/// request: docs/reliability.md).
fn fuzz_cases(n: usize) -> usize {
    std::env::var("INTAKE_BOT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n)
}

/// Whether a config error tells the operator where: a key or a line.
fn points_somewhere(e: &str) -> bool {
    e.contains("key `") || e.contains("(line ") || e.contains("line ")
}

/// Checks one text: no panic, and every problem names a key or a line.
fn check_config_text(text: &str) -> bool {
    match Config::parse(text) {
        Err(e) => {
            assert!(points_somewhere(&e), "no key or line in: {e}\n--- text ---\n{text}");
            false
        }
        Ok(c) => {
            for p in c.validate() {
                assert!(p.contains("key `") || p.contains("section `"), "no key in: {p}\n--- text ---\n{text}");
            }
            true
        }
    }
}

#[test]
fn truncated_and_mutated_configs_never_panic_and_always_say_where() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let example = include_str!("../../config.example.toml");
    // Every truncation point (on a char boundary) of the example.
    let cuts: Vec<usize> = (0..=example.len()).filter(|i| example.is_char_boundary(*i)).collect();
    // A sample in the suite; every point (and more) on request.
    let n = fuzz_cases(1500);
    let mut rng = StdRng::seed_from_u64(7);
    let (mut parsed, mut refused) = (0usize, 0usize);
    for i in 0..n {
        let cut = if n >= cuts.len() { cuts[i % cuts.len()] } else { cuts[rng.gen_range(0..cuts.len())] };
        if check_config_text(&example[..cut]) { parsed += 1 } else { refused += 1 }
    }
    // Random edits: a byte of TOML syntax, a digit or a quote put anywhere,
    // or a line dropped or doubled.
    let pieces = [
        "\"",
        "'",
        "[",
        "]",
        "[[",
        "=",
        ",",
        "{",
        "}",
        "#",
        "\n",
        "1",
        "-1",
        "99999999999999999999",
        "é",
        "\\",
        "true",
        " ",
    ];
    let lines: Vec<&str> = example.lines().collect();
    for _ in 0..fuzz_cases(1500) {
        let mut text = example.to_owned();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..3) {
                0 => {
                    let at = cuts[rng.gen_range(0..cuts.len())].min(text.len());
                    if text.is_char_boundary(at) {
                        text.insert_str(at, pieces[rng.gen_range(0..pieces.len())]);
                    }
                }
                1 => {
                    let l = rng.gen_range(0..lines.len());
                    text = lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != l)
                        .map(|(_, s)| *s)
                        .collect::<Vec<_>>()
                        .join("\n");
                }
                _ => {
                    let l = rng.gen_range(0..lines.len());
                    let mut v = lines.clone();
                    v.insert(l, lines[l]);
                    text = v.join("\n");
                }
            }
        }
        if check_config_text(&text) { parsed += 1 } else { refused += 1 }
    }
    eprintln!("config fuzz: {parsed} texts accepted, {refused} refused, each refusal naming a key or a line");
    // Both outcomes are reached: the check sees valid and invalid texts.
    assert!(parsed > 0 && refused > 0, "parsed {parsed}, refused {refused}");
}
