//! Built-in texts in Dutch and English, text folding and matching.
//!
//! Texts are short and calm, written for a frightened 14-year-old: no
//! jargon, no questions about identity, the emergency number always in
//! reach. Every text can be overridden per language in `[texts.LANG]`.

use std::collections::BTreeMap;

use unicode_normalization::UnicodeNormalization;

macro_rules! text_keys {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The name of one built-in text.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TextKey { $($variant),* }
        impl TextKey {
            /// Every text, for validation and documentation.
            pub const ALL: &'static [TextKey] = &[$(TextKey::$variant),*];
            /// The key used in `[texts.LANG]`.
            pub fn name(self) -> &'static str {
                match self { $(TextKey::$variant => $name),* }
            }
            /// The text for a `[texts.LANG]` key.
            pub fn from_name(name: &str) -> Option<TextKey> {
                match name { $($name => Some(TextKey::$variant),)* _ => None }
            }
        }
    };
}

text_keys! {
    Greeting => "greeting",
    ChooseLanguage => "choose_language",
    HintChoice => "hint_choice",
    HintText => "hint_text",
    Reask => "reask",
    Finding => "finding_counsellor",
    QueuePosition => "queue_position",
    QueueEstimate => "queue_estimate",
    ClosedHours => "closed_hours",
    WaitingNote => "waiting_note",
    CounsellorJoined => "counsellor_joined",
    Emergency => "emergency",
    Stopped => "stopped",
    Goodbye => "goodbye",
    NonText => "non_text",
    Undecryptable => "undecryptable",
    NoEncryption => "no_encryption",
    GroupRoom => "group_room",
    Busy => "busy",
    BusyOneChat => "busy_one_chat",
    IntruderCounsellor => "intruder_counsellor",
    StaffIntruder => "staff_intruder",
    TooLong => "too_long",
    Flood => "flood",
    SummaryTitle => "summary_title",
    SummarySkipped => "summary_skipped",
    SummaryUrgent => "summary_urgent",
    SummaryHelp => "summary_help",
    SummaryLanguage => "summary_language",
    SummaryWaiting => "summary_waiting",
    SummaryTextLost => "summary_text_lost",
    Weekdays => "weekdays",
    LateJoin => "late_join",
    Online => "staff_online",
    StaffHelp => "staff_help",
    StaffStatus => "staff_status",
    StaffAvailable => "staff_available",
    StaffAway => "staff_away",
    StaffNotCounsellor => "staff_not_counsellor",
    StaffWaiting => "staff_waiting",
    StaffUrgent => "staff_urgent",
    StaffLongWait => "staff_long_wait",
    StaffMissed => "staff_missed",
    CloseUsage => "close_usage",
    Transferred => "transferred",
}

fn builtin_en(k: TextKey) -> &'static str {
    use TextKey::*;
    match k {
        Greeting => {
            "Hi.\nYou are chatting with the helpline. This chat is anonymous: we will not ask your name, and we do not keep what you write. First a few short questions, then a counsellor will talk with you.\nIn danger right now? Call {emergency_number}.\nYou can type stop at any moment to end the chat."
        }
        ChooseLanguage => "Which language do you want to use?\nIn danger right now? Call {emergency_number}.",
        HintChoice => "Type the number of your answer, or skip.",
        HintText => "Type your answer, or skip.",
        Reask => "Sorry, I did not understand that. Please type one of the numbers, or skip.",
        Finding => "Thank you. I am looking for a counsellor for you now.",
        QueuePosition => {
            "All counsellors are busy right now. You are number {position} in line. Please stay in this chat."
        }
        QueueEstimate => "It will probably take about {minutes} minutes.",
        ClosedHours => {
            "The chat is closed right now. It opens again {opens}. Your answers are kept until then, and a counsellor will come to this chat.\nIn danger right now? Call {emergency_number}."
        }
        WaitingNote => "A counsellor will read what you write here when they join.",
        CounsellorJoined => "A counsellor is here now. You can talk with them in this chat.",
        Emergency => {
            "Thank you for telling me.\nIf you are in danger right now, call {emergency_number}. It is free and they answer day and night. I am telling the counsellors that this is urgent."
        }
        Stopped => {
            "The chat has ended. You can come back any time.\nIn danger? Call {emergency_number}.\nTo remove this chat from your phone: leave it, then delete it in your app."
        }
        Goodbye => {
            "The counsellor has ended this chat. Take care. You can start a new chat any time.\nIn danger? Call {emergency_number}.\nTo remove this chat from your phone: leave it, then delete it in your app."
        }
        NonText => "I can only read text. Please type your answer.",
        Undecryptable => "I could not read your last message. Could you send it again?",
        NoEncryption => {
            "This chat is not encrypted, so I will not ask you anything here. Please start a new chat and turn on encryption, then invite me again.\nIn danger right now? Call {emergency_number}."
        }
        GroupRoom => "This chat only works one-to-one. Please start a new chat with just me.",
        Busy => {
            "It is very busy right now. Please try again a little later.\nIn danger right now? Call {emergency_number}."
        }
        BusyOneChat => "You already have a chat open with me. Please go on in that chat.",
        IntruderCounsellor => {
            "This chat is no longer one-to-one, so the bot has ended it and sends nothing more here. Please leave this room."
        }
        StaffIntruder => {
            "Case {case} ended: the chat is no longer one-to-one (someone else came in, or it was opened)."
        }
        TooLong => "That message is very long. Please keep it short.",
        Flood => "I am getting many messages at once. Please wait a moment, then send one message.",
        SummaryTitle => "New chat (case {case})",
        SummarySkipped => "(skipped)",
        SummaryUrgent => "URGENT: the person may be in danger.",
        SummaryHelp => "Type !close <tag> to end the chat ({tags}) or !transfer to hand it back to the queue.",
        SummaryLanguage => "Language: {language}",
        SummaryWaiting => "Written while waiting:",
        SummaryTextLost => "(answered; the text was not kept after a restart)",
        Weekdays => "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
        LateJoin => "This case has moved on to someone else. Please leave this room.",
        Online => "intake-bot is online.",
        StaffHelp => "Commands: !available, !away, !status, !help. In a chat: !close <tag>, !transfer.",
        StaffStatus => {
            "Available counsellors: {available}. Active chats: {active}. Waiting: {waiting} (urgent: {urgent})."
        }
        StaffAvailable => "You are available.",
        StaffAway => "You are away.",
        StaffNotCounsellor => "Only configured counsellors can use staff commands.",
        StaffWaiting => "Case {case} is waiting for a counsellor.",
        StaffUrgent => "URGENT: case {case} may be in danger.",
        StaffLongWait => "Case {case} has been waiting for more than {minutes} minutes.",
        StaffMissed => "A counsellor missed {count} offers in a row and is now set away.",
        CloseUsage => "Usage: !close <tag>, with one of: {tags}.",
        Transferred => "I am finding another counsellor for you. Please stay in this chat.",
    }
}

fn builtin_nl(k: TextKey) -> &'static str {
    use TextKey::*;
    match k {
        Greeting => {
            "Hoi.\nJe chat met de hulplijn. Deze chat is anoniem: we vragen niet naar je naam en we bewaren niet wat je schrijft. Eerst een paar korte vragen, daarna praat een hulpverlener met je.\nNu in gevaar? Bel {emergency_number}.\nJe kunt altijd stop typen om de chat te beëindigen."
        }
        ChooseLanguage => "Welke taal wil je gebruiken?\nNu in gevaar? Bel {emergency_number}.",
        HintChoice => "Typ het nummer van je antwoord, of overslaan.",
        HintText => "Typ je antwoord, of overslaan.",
        Reask => "Sorry, dat begreep ik niet. Typ een van de nummers, of overslaan.",
        Finding => "Dank je. Ik zoek nu een hulpverlener voor je.",
        QueuePosition => "Alle hulpverleners zijn nu bezet. Je bent nummer {position} in de rij. Blijf in deze chat.",
        QueueEstimate => "Het duurt waarschijnlijk ongeveer {minutes} minuten.",
        ClosedHours => {
            "De chat is nu gesloten. Hij gaat weer open {opens}. Je antwoorden blijven tot dan bewaard, en een hulpverlener komt naar deze chat.\nNu in gevaar? Bel {emergency_number}."
        }
        WaitingNote => "Een hulpverlener leest wat je hier schrijft als die erbij komt.",
        CounsellorJoined => "Er is nu een hulpverlener. Je kunt in deze chat met hem of haar praten.",
        Emergency => {
            "Dank je dat je het zegt.\nBen je nu in gevaar? Bel {emergency_number}. Dat is gratis en ze nemen dag en nacht op. Ik laat de hulpverleners weten dat het dringend is."
        }
        Stopped => {
            "De chat is beëindigd. Je kunt altijd terugkomen.\nIn gevaar? Bel {emergency_number}.\nDeze chat van je telefoon halen: verlaat hem en verwijder hem in je app."
        }
        Goodbye => {
            "De hulpverlener heeft deze chat beëindigd. Pas goed op jezelf. Je kunt altijd een nieuwe chat beginnen.\nIn gevaar? Bel {emergency_number}.\nDeze chat van je telefoon halen: verlaat hem en verwijder hem in je app."
        }
        NonText => "Ik kan alleen tekst lezen. Typ je antwoord.",
        Undecryptable => "Ik kon je laatste bericht niet lezen. Wil je het nog een keer sturen?",
        NoEncryption => {
            "Deze chat is niet versleuteld, dus ik vraag je hier niets. Begin een nieuwe chat met versleuteling aan en nodig mij opnieuw uit.\nNu in gevaar? Bel {emergency_number}."
        }
        GroupRoom => "Deze chat werkt alleen met z'n tweeën. Begin een nieuwe chat met alleen mij.",
        Busy => "Het is nu erg druk. Probeer het over een tijdje opnieuw.\nNu in gevaar? Bel {emergency_number}.",
        BusyOneChat => "Je hebt al een chat met mij open. Ga verder in die chat.",
        IntruderCounsellor => {
            "Deze chat is niet meer één-op-één, dus de bot heeft hem beëindigd en stuurt hier niets meer. Verlaat deze kamer."
        }
        StaffIntruder => {
            "Zaak {case} beëindigd: de chat is niet meer één-op-één (er kwam iemand bij, of hij werd opengesteld)."
        }
        TooLong => "Dat bericht is erg lang. Hou het kort.",
        Flood => "Ik krijg veel berichten tegelijk. Wacht even en stuur dan één bericht.",
        SummaryTitle => "Nieuwe chat (zaak {case})",
        SummarySkipped => "(overgeslagen)",
        SummaryUrgent => "DRINGEND: de persoon is mogelijk in gevaar.",
        SummaryHelp => {
            "Typ !close <tag> om de chat te beëindigen ({tags}) of !transfer om hem terug in de rij te zetten."
        }
        SummaryLanguage => "Taal: {language}",
        SummaryWaiting => "Geschreven tijdens het wachten:",
        SummaryTextLost => "(beantwoord; de tekst is na een herstart niet bewaard)",
        Weekdays => "maandag dinsdag woensdag donderdag vrijdag zaterdag zondag",
        LateJoin => "Deze zaak is al naar iemand anders gegaan. Verlaat deze kamer.",
        Online => "intake-bot is online.",
        StaffHelp => "Commando's: !available, !away, !status, !help. In een chat: !close <tag>, !transfer.",
        StaffStatus => {
            "Beschikbare hulpverleners: {available}. Actieve chats: {active}. Wachtend: {waiting} (dringend: {urgent})."
        }
        StaffAvailable => "Je bent beschikbaar.",
        StaffAway => "Je bent afwezig.",
        StaffNotCounsellor => "Alleen ingestelde hulpverleners kunnen staff-commando's gebruiken.",
        StaffWaiting => "Zaak {case} wacht op een hulpverlener.",
        StaffUrgent => "DRINGEND: zaak {case} is mogelijk in gevaar.",
        StaffLongWait => "Zaak {case} wacht al meer dan {minutes} minuten.",
        StaffMissed => "Een hulpverlener heeft {count} aanbiedingen op rij gemist en staat nu op afwezig.",
        CloseUsage => "Gebruik: !close <tag>, met een van: {tags}.",
        Transferred => "Ik zoek een andere hulpverlener voor je. Blijf in deze chat.",
    }
}

/// The name of a language in itself, for the language menu.
pub fn language_name(code: &str) -> &str {
    match code {
        "nl" => "Nederlands",
        "en" => "English",
        "de" => "Deutsch",
        "fr" => "Français",
        "es" => "Español",
        "pl" => "Polski",
        "ar" => "العربية",
        "tr" => "Türkçe",
        "uk" => "Українська",
        "ro" => "Română",
        _ => code,
    }
}

/// Words that skip a question, in any language.
pub const SKIP_WORDS: &[&str] = &["skip", "overslaan", "sla over", "volgende", "next", "pass"];
/// Whole messages that end the chat, in any language.
pub const STOP_WORDS: &[&str] = &["stop", "stoppen", "quit", "exit", "end", "einde", "klaar", "ophouden"];

/// Built-in emergency keywords per language (whole words or phrases, folded).
pub fn default_emergency_keywords(lang: &str) -> &'static [&'static str] {
    match lang {
        "nl" => &["noodgeval", "nood", "sos", "in gevaar", "help me nu", "niet veilig", "onveilig", "112"],
        "en" => &["emergency", "sos", "in danger", "help me now", "not safe", "unsafe", "112", "911"],
        _ => &["sos", "112"],
    }
}

/// All texts of the running bot: built-ins with the config's overrides.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    overrides: BTreeMap<String, BTreeMap<String, String>>,
}

impl Texts {
    /// Texts with `[texts]` overrides.
    pub fn new(overrides: BTreeMap<String, BTreeMap<String, String>>) -> Texts {
        Texts { overrides }
    }

    /// The raw text for `lang`; unknown languages fall back to English.
    pub fn get(&self, lang: &str, key: TextKey) -> &str {
        if let Some(s) = self.overrides.get(lang).and_then(|m| m.get(key.name())) {
            return s;
        }
        match lang {
            "nl" => builtin_nl(key),
            _ => builtin_en(key),
        }
    }

    /// The text with `{name}` placeholders filled in.
    pub fn render(&self, lang: &str, key: TextKey, vars: &[(&str, &str)]) -> String {
        let mut s = self.get(lang, key).to_owned();
        for (name, value) in vars {
            s = s.replace(&format!("{{{name}}}"), value);
        }
        s
    }
}

/// Text made safe to put inside HTML.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A plain notice as HTML: escaped, line breaks kept, the first line in
/// bold when there are several (a title), lines starting `- ` as a list.
pub fn plain_to_html(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = String::new();
    let mut in_list = false;
    for (i, l) in lines.iter().enumerate() {
        if let Some(item) = l.strip_prefix("- ") {
            if !in_list {
                out.push_str("<ul>");
                in_list = true;
            }
            out.push_str(&format!("<li>{}</li>", escape_html(item)));
            continue;
        }
        if in_list {
            out.push_str("</ul>");
            in_list = false;
        } else if i > 0 {
            out.push_str("<br>");
        }
        if i == 0 && lines.len() > 1 {
            out.push_str(&format!("<strong>{}</strong>", escape_html(l)));
        } else {
            out.push_str(&escape_html(l));
        }
    }
    if in_list {
        out.push_str("</ul>");
    }
    out
}

/// Case- and accent-folds text and turns punctuation into single spaces:
/// "  Héllo,  WORLD! " -> "hello world". Matching runs on folded text only.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = true;
    for c in s.nfd() {
        if unicode_normalization::char::is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Whether folded `phrase` occurs as whole words in folded `text`.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    let hay = format!(" {text} ");
    hay.contains(&format!(" {phrase} "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding() {
        assert_eq!(fold("  Héllo,  WORLD! "), "hello world");
        assert_eq!(fold("Ja, ik WEET het niet zéker"), "ja ik weet het niet zeker");
        assert_eq!(fold("15-17"), "15 17");
        assert_eq!(fold("!!!"), "");
        assert_eq!(fold("Ærø ÇA"), "ærø ca");
    }

    #[test]
    fn phrases_are_whole_words() {
        assert!(contains_phrase("i am in danger now", "in danger"));
        assert!(!contains_phrase("endangered", "danger"));
        assert!(!contains_phrase("nood", "noodgeval"));
        assert!(contains_phrase("sos", "sos"));
        assert!(!contains_phrase("anything", ""));
    }

    #[test]
    fn overrides_and_placeholders() {
        let mut o = BTreeMap::new();
        o.insert("en".to_owned(), BTreeMap::from([("stopped".to_owned(), "Bye, call {emergency_number}".to_owned())]));
        let t = Texts::new(o);
        assert_eq!(t.render("en", TextKey::Stopped, &[("emergency_number", "113")]), "Bye, call 113");
        assert!(t.render("nl", TextKey::Stopped, &[("emergency_number", "113")]).contains("113"));
        // Unknown language falls back to English.
        assert!(t.get("xx", TextKey::Greeting).starts_with("Hi."));
    }

    #[test]
    fn every_builtin_names_the_emergency_number_where_it_must() {
        for lang in ["en", "nl"] {
            let t = Texts::default();
            for k in [
                TextKey::Greeting,
                TextKey::ChooseLanguage,
                TextKey::Emergency,
                TextKey::Stopped,
                TextKey::Goodbye,
                TextKey::NoEncryption,
                TextKey::ClosedHours,
            ] {
                assert!(t.get(lang, k).contains("{emergency_number}"), "{lang} {k:?}");
            }
        }
    }

    /// Privacy rule 7: a phone on the table shows the first line of a
    /// message. No first line the visitor gets names what the chat is about
    /// or an emergency.
    #[test]
    fn first_lines_a_visitor_gets_say_nothing_on_a_lock_screen() {
        use TextKey::*;
        let visitor_texts = [
            Greeting,
            ChooseLanguage,
            HintChoice,
            HintText,
            Reask,
            Finding,
            QueuePosition,
            QueueEstimate,
            ClosedHours,
            WaitingNote,
            CounsellorJoined,
            Emergency,
            Stopped,
            Goodbye,
            NonText,
            Undecryptable,
            NoEncryption,
            GroupRoom,
            Busy,
            BusyOneChat,
            TooLong,
            Flood,
            Transferred,
        ];
        let telling = [
            "helpline",
            "hulplijn",
            "danger",
            "gevaar",
            "exploit",
            "uitbuit",
            "traffick",
            "mensenhandel",
            "abuse",
            "misbruik",
            "urgent",
            "dringend",
            "{emergency_number}",
        ];
        for key in visitor_texts {
            for text in [builtin_en(key), builtin_nl(key)] {
                let first = text.lines().next().unwrap_or("").to_lowercase();
                for word in telling {
                    assert!(!first.contains(word), "{key:?}: first line {first:?} says {word:?}");
                }
            }
        }
    }
}
